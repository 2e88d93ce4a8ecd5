"""Linear-chain CRF: energies, log Z, Viterbi and the BLSTM-CRF, against brute-force enumeration
of all L^T labellings and against pytorch-crf."""
from __future__ import annotations


import pytest
import torch

import core.crf as crf_module
from core.crf import (
    BLSTMCRF,
    CRFConfig,
    LinearChainCRF,
    crf_energy,
    crf_log_partition,
    crf_nll,
    crf_score,
    crf_viterbi,
)
from helpers import brute_force, prefix_mask, reference_score, tiny_inputs


def random_crf(B: int, T: int, L: int, seed: int = 0, scale: float = 2.0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    unary = torch.randn(B, T, L, generator=g, dtype=dtype) * scale  # (B, T, L)
    trans = torch.randn(L, L, generator=g, dtype=dtype) * scale  # (L, L)
    start = torch.randn(L, generator=g, dtype=dtype)  # (L,)
    end = torch.randn(L, generator=g, dtype=dtype)  # (L,)
    return unary, trans, start, end


MASKS = {
    "prefix": lambda: prefix_mask([4, 1, 3, 2], 4),
    "with_empty_row": lambda: prefix_mask([3, 0, 4, 1], 4),
    "left_padded": lambda: torch.tensor([[0, 1, 1, 1], [0, 0, 0, 1], [1, 1, 1, 1], [0, 0, 1, 1]], dtype=torch.bool),
    "gaps": lambda: torch.tensor([[1, 0, 1, 1], [0, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=torch.bool),
}


class TestScore:
    @pytest.mark.parametrize("mask_name", sorted(MASKS))
    def test_discrete_score_matches_formula(self, mask_name):
        mask = MASKS[mask_name]()
        unary, trans, start, end = random_crf(4, 4, 3, seed=1)
        g = torch.Generator().manual_seed(5)
        labels = torch.randint(0, 3, (4, 4), generator=g)
        got = crf_score(unary, trans, start, end, labels, mask)
        for b in range(4):
            positions = [t for t in range(4) if mask[b, t]]
            seq = [int(labels[b, t]) for t in positions]
            assert float(got[b]) == pytest.approx(reference_score(unary[b], trans, start, end, positions, seq), abs=1e-9)

    def test_energy_is_minus_score(self):
        unary, trans, start, end = random_crf(2, 3, 3)
        labels = torch.tensor([[0, 1, 2], [2, 2, 0]])
        mask = prefix_mask([3, 2], 3)
        torch.testing.assert_close(crf_energy(unary, trans, start, end, labels, mask),
                                   -crf_score(unary, trans, start, end, labels, mask))

    @pytest.mark.parametrize("mask_name", sorted(MASKS))
    def test_relaxed_equals_discrete_at_one_hot(self, mask_name):
        mask = MASKS[mask_name]()
        unary, trans, start, end = random_crf(4, 4, 5, seed=2)
        labels = torch.randint(0, 5, (4, 4), generator=torch.Generator().manual_seed(3))
        one_hot = torch.nn.functional.one_hot(labels, 5).double()  # (B, T, L)
        torch.testing.assert_close(crf_energy(unary, trans, start, end, one_hot, mask),
                                   crf_energy(unary, trans, start, end, labels, mask))

    def test_relaxed_energy_is_bilinear_in_neighbours(self):
        # For distributions, the pair term is p_{t-1}^T W p_t: check against an explicit sum.
        unary, trans, start, end = random_crf(1, 3, 4, seed=4)
        probs = torch.randn(1, 3, 4, dtype=torch.float64).softmax(-1)
        mask = torch.ones(1, 3, dtype=torch.bool)
        p = probs[0]
        expected = (p * unary[0]).sum() + p[0] @ trans @ p[1] + p[1] @ trans @ p[2] + p[0] @ start + p[2] @ end
        torch.testing.assert_close(crf_score(unary, trans, start, end, probs, mask)[0], expected)

    def test_relaxed_energy_has_gradients(self):
        unary, trans, start, end = random_crf(2, 3, 4)
        logits = torch.zeros(2, 3, 4, dtype=torch.float64, requires_grad=True)
        crf_energy(unary, trans, start, end, logits.softmax(-1), prefix_mask([3, 2], 3)).sum().backward()
        assert logits.grad is not None and torch.isfinite(logits.grad).all()
        assert logits.grad[1, 2].abs().max() == 0  # off positions get no gradient

    def test_errors(self):
        unary, trans, start, end = random_crf(2, 3, 4)
        mask = prefix_mask([3, 2], 3)
        with pytest.raises(ValueError, match="3 dimensions"):
            crf_score(unary[0], trans, start, end, torch.zeros(3, dtype=torch.long), mask)
        with pytest.raises(ValueError, match="last dimension of unary to be 4"):
            crf_score(unary[..., :3], trans, start, end, torch.zeros(2, 3, dtype=torch.long), mask)
        with pytest.raises(ValueError, match="unary and mask must match"):
            crf_score(unary, trans, start, end, torch.zeros(2, 3, dtype=torch.long), mask[:, :2])
        with pytest.raises(ValueError, match="unary and labels must match"):
            crf_score(unary, trans, start, end, torch.zeros(2, 2, dtype=torch.long), mask)
        with pytest.raises(ValueError, match="relaxed labels"):
            crf_score(unary, trans, start, end, torch.zeros(2, 3, 3, dtype=torch.float64), mask)
        with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
            crf_score(unary, trans, start, end, torch.tensor([[0, -1, 0], [0, 0, 0]]), mask)
        with pytest.raises(ValueError, match="start scores must have shape"):
            crf_score(unary, trans, start[:3], end, torch.zeros(2, 3, dtype=torch.long), mask)
        with pytest.raises(ValueError, match="mask must be bool"):
            crf_score(unary, trans, start, end, torch.zeros(2, 3, dtype=torch.long), mask.double())
        # A label out of range at an *off* position is fine (padding).
        crf_score(unary, trans, start, end, torch.tensor([[0, 1, 2], [0, 1, -1]]), mask)


class TestLogPartition:
    @pytest.mark.parametrize("method", ["matmul", "logsumexp", "scan"])
    @pytest.mark.parametrize("mask_name", sorted(MASKS))
    def test_matches_brute_force(self, method, mask_name):
        mask = MASKS[mask_name]()
        unary, trans, start, end = random_crf(4, 4, 3, seed=7)
        got = crf_log_partition(unary, trans, start, end, mask, method=method)
        expected = torch.tensor([r[1] for r in brute_force(unary, trans, start, end, mask)], dtype=torch.float64)
        torch.testing.assert_close(got, expected)

    @pytest.mark.parametrize("method", ["matmul", "logsumexp", "scan"])
    def test_float32_long_sentences_agree(self, method):
        unary, trans, start, end = random_crf(5, 37, 6, seed=8, dtype=torch.float32)
        mask = prefix_mask([37, 1, 20, 36, 5], 37)
        reference = crf_log_partition(unary.double(), trans.double(), start.double(), end.double(), mask, "logsumexp")
        torch.testing.assert_close(crf_log_partition(unary, trans, start, end, mask, method=method).double(),
                                   reference, rtol=1e-5, atol=1e-3)

    def test_gradient_is_marginals(self):
        # d log Z / d unary[t, j] = P(y_t = j): marginals sum to one at on-positions, zero elsewhere.
        unary, trans, start, end = random_crf(2, 4, 3, seed=9)
        unary.requires_grad_(True)
        mask = prefix_mask([4, 2], 4)
        crf_log_partition(unary, trans, start, end, mask).sum().backward()
        torch.testing.assert_close(unary.grad.sum(-1), mask.double())

    @pytest.mark.parametrize("method", ["matmul", "scan"])
    @pytest.mark.parametrize("mask_name", sorted(MASKS))
    def test_gradients_match_logsumexp(self, method, mask_name):
        mask = MASKS[mask_name]()
        grads = {}
        for name in ("logsumexp", method):
            unary, trans, start, end = random_crf(4, 4, 3, seed=11)
            params = (unary, trans, start, end)
            for p in params:
                p.requires_grad_(True)
            crf_log_partition(unary, trans, start, end, mask, method=name).sum().backward()
            grads[name] = [p.grad for p in params]
        for expected, got in zip(grads["logsumexp"], grads[method]):
            torch.testing.assert_close(got, expected)

    def test_matmul_exact_in_float32_with_wide_unary_scores(self):
        # Unary scores spanning hundreds of nats per position do not underflow the
        # probability-space recursion: only the transitions' span matters.
        unary, trans, start, end = random_crf(6, 25, 7, seed=12, scale=1.0)
        unary = unary * 60  # spread ~300 nats per position
        mask = prefix_mask([25, 1, 13, 24, 7, 0], 25)
        reference = crf_log_partition(unary, trans, start, end, mask, "logsumexp")  # float64
        got = crf_log_partition(unary.float(), trans.float(), start.float(), end.float(), mask)
        torch.testing.assert_close(got.double(), reference, rtol=1e-6, atol=1e-3)

    def test_matmul_exact_in_float32_within_its_range(self):
        # A hard case for the probability-space recursion: all mass sits on a label whose every
        # outgoing transition costs the full span, ~20 nats, within exact_span (21.1 at T = 30, L = 5).
        unary, trans, start, end = random_crf(4, 30, 5, seed=3, scale=1.0)
        trans, start, end = ((x * 0.5).clamp(-1.0, 1.0) for x in (trans, start, end))
        trans[0, :] = -19.0  # leaving label 0 (or staying) costs 18-20 nats more than anything else
        unary[:, :, 0] += 30.0  # ... yet label 0 is the best label everywhere
        mask = prefix_mask([30, 17, 2, 29], 30)
        scores = torch.cat([trans.flatten(), start, end])
        assert scores.max() - scores.min() < crf_module.exact_span(torch.float32, 30, 5, 2)  # the fast path runs
        reference = crf_log_partition(unary, trans, start, end, mask, "logsumexp")  # float64
        got = crf_log_partition(unary.float(), trans.float(), start.float(), end.float(), mask)
        torch.testing.assert_close(got.double(), reference, rtol=1e-6, atol=1e-3)

    @pytest.mark.parametrize("method", ["matmul", "logsumexp", "scan"])
    def test_exact_with_forbidden_transitions(self, method):
        # Transitions spanning 10^4 nats (hard constraints) and unary scores that fight them:
        # out of the probability-space range, so matmul and scan hand over to logsumexp.
        # (tests/test_crf_exact.py covers spans from 1 to 1e4 nats against brute force.)
        unary, trans, start, end = random_crf(3, 12, 5, seed=13, scale=1.0, dtype=torch.float32)
        trans[0, 1:] = -1e4  # label 0 may only be followed by itself
        unary[:, :, 0] += 200.0  # ... and is by far the best label, so paths enter it early
        unary[:, 1::2, 1:] += 400.0  # while every other position wants a label it cannot reach
        mask = prefix_mask([12, 5, 9], 12)
        reference = crf_log_partition(unary.double(), trans.double(), start.double(), end.double(), mask, "logsumexp")
        got = crf_log_partition(unary, trans, start, end, mask, method)
        torch.testing.assert_close(got.double(), reference, rtol=1e-6, atol=1e-2)

    def test_without_autograd_returns_a_normal_tensor(self):
        # Without gradients the recursion runs under inference_mode; same values, normal output.
        unary, trans, start, end = random_crf(3, 5, 4, seed=14)
        mask = prefix_mask([5, 2, 4], 5)
        unary.requires_grad_(True)
        with_grad = crf_log_partition(unary, trans, start, end, mask)
        with torch.no_grad():
            without = crf_log_partition(unary, trans, start, end, mask)
        assert with_grad.requires_grad and not without.requires_grad and not without.is_inference()
        torch.testing.assert_close(without, with_grad.detach())
        (with_grad - without).sum().backward()  # usable next to autograd tensors

    def test_unknown_method(self):
        unary, trans, start, end = random_crf(1, 2, 2)
        with pytest.raises(ValueError, match="method must be one of"):
            crf_log_partition(unary, trans, start, end, torch.ones(1, 2, dtype=torch.bool), method="fast")


class TestNLL:
    def test_is_log_z_minus_score_and_positive(self):
        unary, trans, start, end = random_crf(3, 4, 3, seed=10)
        mask = prefix_mask([4, 3, 1], 4)
        labels = torch.randint(0, 3, (3, 4), generator=torch.Generator().manual_seed(0))
        nll = crf_nll(unary, trans, start, end, labels, mask)
        torch.testing.assert_close(nll, crf_log_partition(unary, trans, start, end, mask)
                                   - crf_score(unary, trans, start, end, labels, mask))
        assert (nll > 0).all()


class TestViterbi:
    @pytest.mark.parametrize("outer_max_labels", [256, 0], ids=["outer_reduction", "inner_reduction"])
    @pytest.mark.parametrize("mask_name", sorted(MASKS))
    def test_matches_brute_force(self, mask_name, outer_max_labels, monkeypatch):
        monkeypatch.setattr(crf_module, "VITERBI_OUTER_MAX_LABELS", outer_max_labels)
        mask = MASKS[mask_name]()
        for seed in range(3):
            unary, trans, start, end = random_crf(4, 4, 3, seed=20 + seed)
            result = crf_viterbi(unary, trans, start, end, mask)
            assert result.labels.shape == (4, 4) and result.labels.dtype == torch.long
            for b, (positions, _, best, best_score) in enumerate(brute_force(unary, trans, start, end, mask)):
                assert [int(result.labels[b, t]) for t in positions] == list(best)
                assert float(result.scores[b]) == pytest.approx(best_score, abs=1e-9)
                assert all(int(result.labels[b, t]) == 0 for t in range(4) if not mask[b, t])
            # The returned score is the energy of the returned path.
            torch.testing.assert_close(result.scores, crf_score(unary, trans, start, end, result.labels, mask))

    def test_outputs_are_normal_tensors(self):
        # Viterbi runs under inference_mode; its outputs must still work in autograd afterwards.
        unary, trans, start, end = random_crf(2, 5, 4, seed=31)
        mask = prefix_mask([5, 3], 5)
        result = crf_viterbi(unary, trans, start, end, mask)
        assert not result.labels.is_inference() and not result.scores.is_inference()
        unary.requires_grad_(True)
        crf_score(unary, trans, start, end, result.labels, mask).sum().backward()
        assert unary.grad is not None

    def test_lower_energy_than_any_relaxed_point_on_vertices(self):
        unary, trans, start, end = random_crf(2, 5, 4, seed=30)
        mask = prefix_mask([5, 3], 5)
        result = crf_viterbi(unary, trans, start, end, mask)
        for seed in range(20):
            labels = torch.randint(0, 4, (2, 5), generator=torch.Generator().manual_seed(seed))
            assert (crf_energy(unary, trans, start, end, labels, mask) >= -result.scores - 1e-9).all()


class TestModules:
    def test_linear_chain_crf_binds_parameters(self):
        crf = LinearChainCRF(4).double()
        unary = torch.randn(2, 3, 4, dtype=torch.float64)
        mask = prefix_mask([3, 1], 3)
        labels = crf.viterbi(unary, mask).labels
        torch.testing.assert_close(crf.energy(unary, labels, mask),
                                   crf_energy(unary, crf.transitions, crf.start, crf.end, labels, mask))
        with pytest.raises(ValueError, match="n_labels must be >= 1"):
            LinearChainCRF(0)

    def test_blstm_crf_plain_and_plus(self):
        words, chars, lengths = tiny_inputs([4, 2, 3])
        plain = BLSTMCRF(CRFConfig(n_words=20, n_chars=10, n_labels=5, word_dim=8, hidden=6))
        assert plain.encoder.char_cnn is None and not plain.encoder.word_embedding.weight.requires_grad
        plus = BLSTMCRF(CRFConfig.plus(n_words=20, n_chars=10, n_labels=5, word_dim=8, hidden=6))
        assert plus.encoder.char_cnn is not None and plus.encoder.word_embedding.weight.requires_grad
        assert plus.config.dropout == 0.5
        mask = prefix_mask(lengths.tolist(), 4)
        for model in (plain, plus):
            model.eval()
            unary = model.unary(words, chars, lengths)
            assert unary.shape == (3, 4, 5)
            labels = model.viterbi(unary, mask).labels
            nll = model.nll(unary, labels, mask)
            assert nll.shape == (3,) and (nll > 0).all()
            nll.sum().backward()
        assert plain.encoder.word_embedding.weight.grad is None

    def test_config_round_trip_and_errors(self):
        config = CRFConfig.plus(n_words=20, n_chars=10, n_labels=5, hidden=7)
        assert CRFConfig.from_dict(config.to_dict()) == config
        with pytest.raises(ValueError, match="unknown fields"):
            CRFConfig.from_dict({**config.to_dict(), "layers": 2})
        with pytest.raises(ValueError, match="dropout"):
            CRFConfig(n_words=2, n_chars=2, n_labels=2, dropout=1.0)


class TestAgainstPytorchCRF:
    """Same log-likelihood and decoded paths as pytorch-crf on random float32 inputs."""

    @pytest.fixture(autouse=True)
    def _torchcrf(self):
        self.torchcrf = pytest.importorskip("torchcrf")

    @pytest.mark.parametrize("L", [5, 17])
    def test_same_log_likelihood_and_paths(self, L):
        torch.manual_seed(L)
        reference = self.torchcrf.CRF(L, batch_first=True)
        with torch.no_grad():
            for p in (reference.transitions, reference.start_transitions, reference.end_transitions):
                p.normal_(0, 1)
        ours = LinearChainCRF(L)
        with torch.no_grad():
            ours.transitions.copy_(reference.transitions)
            ours.start.copy_(reference.start_transitions)
            ours.end.copy_(reference.end_transitions)
        lengths = [12, 1, 7, 12, 3, 9]
        unary = torch.randn(6, 12, L) * 3
        mask = prefix_mask(lengths, 12)
        labels = torch.randint(0, L, (6, 12)) * mask
        expected_llh = reference(unary, labels, mask, reduction="none")
        for method in ("matmul", "logsumexp", "scan"):
            torch.testing.assert_close(-ours.nll(unary, labels, mask, method=method), expected_llh, rtol=1e-5, atol=1e-4)
        paths = reference.decode(unary, mask)
        result = ours.viterbi(unary, mask)
        assert [result.labels[b, :n].tolist() for b, n in enumerate(lengths)] == paths


class TestEdgeCases:
    def test_zero_length_batch(self):
        unary, trans, start, end = random_crf(2, 0, 3)
        mask = torch.zeros(2, 0, dtype=torch.bool)
        for method in ("matmul", "logsumexp", "scan"):
            assert crf_log_partition(unary, trans, start, end, mask, method=method).tolist() == [0.0, 0.0]
        result = crf_viterbi(unary, trans, start, end, mask)
        assert result.labels.shape == (2, 0) and result.scores.tolist() == [0.0, 0.0]
        assert crf_energy(unary, trans, start, end, torch.zeros(2, 0, dtype=torch.long), mask).tolist() == [0.0, 0.0]

    def test_integer_mask_accepted(self):
        unary, trans, start, end = random_crf(2, 3, 3)
        mask = prefix_mask([3, 2], 3)
        torch.testing.assert_close(crf_log_partition(unary, trans, start, end, mask.long()),
                                   crf_log_partition(unary, trans, start, end, mask))


class TestCompile:
    def test_log_partition_and_viterbi_compile(self):
        # Both run under inference_mode when no gradient is wanted; torch.compile cannot trace
        # inference tensors, so under compilation they must fall back to no_grad.
        unary, trans, start, end = random_crf(3, 5, 4, seed=40, dtype=torch.float32)
        mask = prefix_mask([5, 2, 4], 5)
        with torch.no_grad():
            log_z = torch.compile(crf_log_partition, backend="aot_eager")(unary, trans, start, end, mask)
            result = torch.compile(crf_viterbi, backend="aot_eager")(unary, trans, start, end, mask)
        torch.testing.assert_close(log_z, crf_log_partition(unary, trans, start, end, mask))
        assert torch.equal(result.labels, crf_viterbi(unary, trans, start, end, mask).labels)
