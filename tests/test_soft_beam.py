"""Soft beam search (Goyal et al. 2018, Alg. 2-3) against its hard limit, brute force and gradcheck."""
from __future__ import annotations

import itertools

import pytest
import torch

from core.objectives import direct_loss, hamming_cost, hamming_o2_cost, soft_hinge_loss
from core.search.beam import beam_search, greedy_decode
import core.search.soft_beam as soft_beam_module
from core.search.soft_beam import SoftTopKMix, continuous_top_k_argmax, soft_beam_search, underflow_exponent
from core.seq2seq import Memory
import soft_beam_reference as reference
from helpers import encode, tiny_tagger

HARD = 1e12  # "alpha -> infinity" in float64: resolves candidate near-ties down to ~3e-6 apart
# (seen here: two beam candidates 5.6e-5 apart still mix 4.5% at alpha = 1e9). Convergence needs no ties.


@pytest.fixture
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def _gold(lengths, n_labels, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = max(lengths)
    gold = torch.randint(0, n_labels, (len(lengths), T), generator=g)
    mask = torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    return gold * mask


class TestContinuousTopKArgmax:
    def test_argmax_of_each_p_i_is_the_ith_topk_index(self):
        g = torch.Generator().manual_seed(0)
        # Distinct values at least 0.25 apart: at small alpha, nearer neighbours round to the same
        # float32 probability, a tie in p that is not a tie in the scores.
        scores = torch.stack([torch.randperm(40, generator=g) for _ in range(50)]).float() * 0.25
        for alpha in (0.5, 1.0, 10.0, 1e4):
            p = continuous_top_k_argmax(scores, 5, alpha)  # (50, 5, 40)
            assert torch.equal(p.argmax(dim=-1), scores.topk(5, dim=-1).indices)

    @pytest.mark.parametrize("alpha", [0.1, 1.0, 100.0, 1e4, 1e6])
    def test_stable_and_normalised(self, alpha):
        g = torch.Generator().manual_seed(1)
        scores = torch.randn(8, 30, generator=g) * 50 - 200  # large, negative, log-prob-like
        p = continuous_top_k_argmax(scores, 3, alpha)
        assert torch.isfinite(p).all()
        torch.testing.assert_close(p.sum(-1), torch.ones(8, 3))

    def test_hard_limit_is_one_hot(self):
        scores = torch.tensor([[0.3, 2.0, -1.0, 1.1]])
        p = continuous_top_k_argmax(scores, 2, 1e6)
        torch.testing.assert_close(p, torch.tensor([[[0.0, 1, 0, 0], [0, 0, 0, 1]]]))

    def test_gradcheck(self, float64):
        scores = torch.randn(2, 7, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s: continuous_top_k_argmax(s, 3, 2.0), (scores,))

    def test_rejects_bad_arguments(self):
        with pytest.raises(ValueError, match="k must be"):
            continuous_top_k_argmax(torch.zeros(1, 3), 4, 1.0)
        with pytest.raises(ValueError, match="alpha"):
            continuous_top_k_argmax(torch.zeros(1, 3), 2, 0.0)


class TestSoftBeamSearch:
    @pytest.mark.parametrize("seed", range(4))
    def test_hard_limit_equals_beam_search(self, float64, seed):
        model = tiny_tagger(n_labels=5, seed=seed)
        lengths = [6, 3, 1, 5]
        memory = encode(model, lengths, seed=seed + 10)
        hard = beam_search(model, memory, beam_size=3)
        soft = soft_beam_search(model, memory, 3, HARD)
        assert torch.equal(soft.labels, hard.labels)
        torch.testing.assert_close(soft.scores, hard.beam_scores, rtol=1e-6, atol=1e-6)

    @pytest.mark.parametrize("attention", ["general", "mlp"])
    def test_hard_limit_with_learned_attention(self, float64, attention):
        # Learned attention has no step cache: the search reads the (B*k, T, S) repeated memory.
        model = tiny_tagger(n_labels=5, attention=attention, seed=17)
        memory = encode(model, [5, 2, 4], seed=18)
        assert model.step_cache(memory) is None
        hard = beam_search(model, memory, beam_size=3)
        soft = soft_beam_search(model, memory, 3, HARD)
        assert torch.equal(soft.labels, hard.labels)
        torch.testing.assert_close(soft.scores, hard.beam_scores, rtol=1e-6, atol=1e-6)

    def test_k1_hard_limit_is_greedy(self, float64):
        model = tiny_tagger(n_labels=4, seed=3)
        memory = encode(model, [5, 2, 4], seed=4)
        soft = soft_beam_search(model, memory, 1, HARD)
        greedy = greedy_decode(model, memory)
        assert torch.equal(soft.labels, greedy.labels)
        torch.testing.assert_close(soft.scores[:, 0], greedy.scores)

    def test_small_alpha_differs_from_hard_beam(self, float64):
        # The relaxation is real: with a soft alpha, scores are mixtures, not hard beam scores.
        model = tiny_tagger(n_labels=5, seed=5)
        memory = encode(model, [6, 6], seed=6)
        soft = soft_beam_search(model, memory, 3, 0.5)
        hard = beam_search(model, memory, beam_size=3)
        assert not torch.allclose(soft.scores, hard.beam_scores, atol=1e-3)

    def test_batch_padding_does_not_change_results(self, float64):
        model = tiny_tagger(n_labels=4, seed=7)
        lengths = [3, 7, 5]
        from helpers import tiny_inputs

        words, chars, lengths_t = tiny_inputs(lengths, seed=8)
        batched = soft_beam_search(model, model.encode(words, chars, lengths_t), 3, 2.0)
        for b, n in enumerate(lengths):
            alone = model.encode(words[b : b + 1, :n], chars[b : b + 1, :n], lengths_t[b : b + 1])
            single = soft_beam_search(model, alone, 3, 2.0)
            torch.testing.assert_close(single.scores, batched.scores[b : b + 1])
            assert single.labels[0].tolist() == batched.labels[b, :n].tolist()

    def test_rejects_beam_wider_than_label_set(self):
        model = tiny_tagger(n_labels=3)
        with pytest.raises(ValueError, match="beam_size"):
            soft_beam_search(model, encode(model, [2]), 4, 1.0)


class TestDirectLoss:
    @pytest.mark.parametrize("seed", range(3))
    def test_hard_limit_is_hamming_loss_of_beam_output(self, float64, seed):
        model = tiny_tagger(n_labels=5, seed=seed)
        lengths = [6, 4, 1]
        memory = encode(model, lengths, seed=seed + 20)
        gold = _gold(lengths, 5, seed)
        hard = beam_search(model, memory, beam_size=3).labels
        hamming = ((hard != gold) & memory.mask).sum(dim=1).to(torch.float64)
        torch.testing.assert_close(direct_loss(model, memory, gold, 3, HARD), hamming, rtol=1e-6, atol=1e-6)

    def test_o2_cost_doubles_wrong_outside(self, float64):
        gold = torch.tensor([[0, 2]])  # label 2 plays `O`
        table = hamming_o2_cost(outside_label=2)(gold, 3)
        assert table[0, 0].tolist() == [0.0, 1.0, 2.0]  # predicting O on an entity costs 2
        assert table[0, 1].tolist() == [1.0, 1.0, 0.0]

    def test_unseen_gold_is_always_wrong(self):
        assert hamming_cost(torch.tensor([[-1]]), 3)[0, 0].tolist() == [1.0, 1.0, 1.0]

    def test_gradcheck_through_the_soft_beam(self, float64):
        model = tiny_tagger(n_labels=4, seed=9)
        memory = encode(model, [3, 2], seed=10)
        gold = _gold([3, 2], 4, seed=1)
        states = memory.states.detach().clone().requires_grad_(True)
        loss = lambda s: direct_loss(model, Memory(s, memory.mask), gold, 3, 1.5)  # noqa: E731
        assert torch.autograd.gradcheck(loss, (states,))

    def test_gradient_reaches_every_parameter_group(self):
        model = tiny_tagger(n_labels=4, seed=11).train()
        from helpers import tiny_inputs

        words, chars, lengths = tiny_inputs([5, 3], seed=12)
        memory = model.encode(words, chars, lengths)
        direct_loss(model, memory, _gold([5, 3], 4), 3, 1.0).sum().backward()
        for name in ("label_embedding.weight", "decoder.weight_hh", "output.weight", "encoder.lstm.weight_ih_l0"):
            grad = dict(model.named_parameters())[name].grad
            assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


class TestSoftHingeLoss:
    def test_hard_limit_equals_brute_force_cost_augmented_max(self, float64):
        # With k = V and T = 2 the beam keeps every prefix, so its best entry is the exact
        # cost-augmented argmax over all V^2 sequences.
        V = 3
        model = tiny_tagger(n_labels=V, seed=13)
        memory = encode(model, [2, 2, 2], seed=14)
        gold = _gold([2, 2, 2], V, seed=2)
        sequences = torch.tensor(list(itertools.product(range(V), repeat=2)))  # (9, 2)
        expected = []
        for b in range(3):
            one = Memory(memory.states[b : b + 1].expand(9, -1, -1), memory.mask[b : b + 1].expand(9, -1))
            augmented = model.sequence_score(one, sequences) + (sequences != gold[b]).sum(1)
            gold_score = model.sequence_score(Memory(memory.states[b : b + 1], memory.mask[b : b + 1]), gold[b : b + 1])
            expected.append(torch.relu(augmented.max() - gold_score[0]))
        torch.testing.assert_close(soft_hinge_loss(model, memory, gold, V, HARD), torch.stack(expected))

    def test_zero_when_gold_wins_by_the_margin(self, float64):
        # Make the model's greedy output the gold and give it a huge margin: the hinge vanishes.
        model = tiny_tagger(n_labels=4, seed=15)
        memory = encode(model, [4], seed=16)
        gold = greedy_decode(model, memory).labels
        with torch.no_grad():
            model.output.weight.mul_(50.0)
            model.output.bias.zero_()
        gold = greedy_decode(model, memory).labels
        assert soft_hinge_loss(model, memory, gold, 2, HARD).item() == pytest.approx(0.0, abs=1e-9)


class TestFusedAgainstReference:
    """The issue-13 implementation (fused top-k-argmax node, split output projection, one mixing
    bmm) against the pre-issue-13 formulas kept in tests/soft_beam_reference.py: same values, same
    gradients for every parameter, at soft and hard alphas, for both losses."""

    @pytest.mark.parametrize("k_old,k,alpha", [(1, 3, 1.0), (3, 3, 0.7), (2, 4, 5.0), (3, 1, 1.0), (3, 2, 1e6)])
    def test_soft_top_k_mix_matches_algorithm_2(self, float64, k_old, k, alpha):
        g = torch.Generator().manual_seed(k_old * 10 + k)
        B, V = 4, 6
        candidates = (torch.randn(B, k_old * V, generator=g) * 2).requires_grad_(True)
        back, contrib, scores, top = SoftTopKMix.apply(candidates, k, k_old, alpha)
        p = continuous_top_k_argmax(candidates, k, alpha).view(B, k, k_old, V)
        expected = (p.sum(-1), p.sum(2), (p * candidates.view(B, 1, k_old, V)).sum(dim=(-1, -2)))
        for got, want in zip((back, contrib, scores), expected):
            torch.testing.assert_close(got, want)
        assert torch.equal(top, candidates.topk(k, dim=-1).indices)
        weights = [torch.randn(x.shape, generator=g) for x in expected]
        grad = torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, (back, contrib, scores))), candidates)[0]
        want = torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, expected)), candidates)[0]
        torch.testing.assert_close(grad, want)

    def test_soft_top_k_mix_gradcheck(self, float64):
        candidates = torch.randn(3, 2 * 5, requires_grad=True)
        assert torch.autograd.gradcheck(lambda s: SoftTopKMix.apply(s, 3, 2, 1.5)[:3], (candidates,))

    def test_soft_top_k_mix_partial_outputs(self, float64):
        # Only some outputs used: autograd passes None for the others.
        candidates = torch.randn(2, 8, requires_grad=True)
        back, _, _, _ = SoftTopKMix.apply(candidates, 2, 2, 2.0)
        grad = torch.autograd.grad(back[..., 0].sum(), candidates)[0]
        p = continuous_top_k_argmax(candidates, 2, 2.0).view(2, 2, 2, 4)
        torch.testing.assert_close(grad, torch.autograd.grad(p.sum(-1)[..., 0].sum(), candidates)[0])

    @pytest.mark.parametrize("objective", ["dl", "hinge"])
    @pytest.mark.parametrize("alpha", [0.5, 3.0, HARD])
    def test_losses_and_gradients_match_reference(self, float64, objective, alpha):
        model = tiny_tagger(n_labels=6, seed=21).train()
        from helpers import tiny_inputs

        lengths = [5, 2, 4, 1]
        words, chars, lengths_t = tiny_inputs(lengths, seed=22)
        gold = _gold(lengths, 6, seed=3)
        fast_fn, ref_fn = (direct_loss, reference.direct_loss) if objective == "dl" else (soft_hinge_loss, reference.soft_hinge_loss)
        results = []
        for fn in (fast_fn, ref_fn):
            model.zero_grad()
            loss = fn(model, model.encode(words, chars, lengths_t), gold, 3, alpha, hamming_cost)  # (B,)
            loss.sum().backward()
            results.append((loss.detach(), {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}))
        (fast, fast_grads), (ref, ref_grads) = results
        torch.testing.assert_close(fast, ref)
        assert fast_grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(fast_grads[name], ref_grads[name], msg=name)

    def test_search_matches_reference_in_float32(self):
        # The training dtype: scores, costs and labels agree with the unfused search.
        model = tiny_tagger(n_labels=7, seed=23)
        lengths = [6, 3, 5]
        memory = encode(model, lengths, seed=24)
        table = hamming_cost(_gold(lengths, 7, seed=4), 7) * memory.mask.unsqueeze(-1)
        for alpha in (1.0, 10.0):
            fast = soft_beam_search(model, memory, 3, alpha, cost_table=table)
            scores, costs, labels = reference.soft_beam_search(model, memory, 3, alpha, cost_table=table)
            torch.testing.assert_close(fast.scores, scores)
            torch.testing.assert_close(fast.costs, costs)
            assert torch.equal(fast.labels, labels)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    @pytest.mark.parametrize("alpha", [0.3, 1.0, 10.0, 1e4])
    def test_sparse_gather_equals_dense(self, monkeypatch, dtype, alpha):
        # Peaked candidates like a trained tagger's (spread over ~60 nats): the survivors of
        # s~ >= m_k - sqrt(C / alpha) are gathered or not; values and gradients must agree.
        g = torch.Generator().manual_seed(int(alpha * 10))
        B, k_old, V, k = 5, 3, 40, 3
        candidates = (torch.randn(B, k_old * V, generator=g, dtype=dtype) * 15).requires_grad_(True)
        weights = [torch.randn(s, generator=g, dtype=dtype) for s in ((B, k, k_old), (B, k, V), (B, k))]
        runs = []
        for fraction in (1.0, -1.0):  # always gather / never gather
            monkeypatch.setattr(soft_beam_module, "SPARSE_FRACTION", fraction)
            outputs = SoftTopKMix.apply(candidates, k, k_old, alpha)
            grad = torch.autograd.grad(sum((w * x).sum() for w, x in zip(weights, outputs[:3])), candidates)[0]
            runs.append((outputs, grad))
        (sparse, sparse_grad), (dense, dense_grad) = runs
        for a, b in zip(sparse, dense):
            torch.testing.assert_close(a, b)
        torch.testing.assert_close(sparse_grad, dense_grad)

    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
    def test_candidates_left_out_have_exactly_zero_probability(self, dtype):
        # The claim the sparse gather rests on: past the radius, the dense p_i underflows to 0.
        g = torch.Generator().manual_seed(5)
        candidates = torch.randn(6, 300, generator=g, dtype=dtype) * 40
        for alpha in (1.0, 7.0, 100.0):
            p = continuous_top_k_argmax(candidates, 3, alpha)  # (6, 3, 300)
            m_k = candidates.topk(3, dim=-1).values[:, -1:]  # (6, 1)
            dropped = candidates < m_k - (underflow_exponent(dtype) / alpha) ** 0.5  # (6, 300)
            assert dropped.any()
            assert torch.equal(p.masked_select(dropped.unsqueeze(1)), torch.zeros((), dtype=dtype).expand(int(dropped.sum()) * 3))

    def test_cross_entropy_matches_reference(self, float64):
        # teacher_forced_scores now goes through the step cache too (split output projection).
        model = tiny_tagger(n_labels=6, seed=25).train()
        from helpers import tiny_inputs
        from core.objectives import cross_entropy_loss

        lengths = [5, 2, 4]
        words, chars, lengths_t = tiny_inputs(lengths, seed=26)
        gold = _gold(lengths, 6, seed=5)
        results = []
        for fn in (cross_entropy_loss, reference.cross_entropy_loss):
            model.zero_grad()
            loss = fn(model, model.encode(words, chars, lengths_t), gold)
            loss.backward()
            results.append((loss.detach(), {n: q.grad.clone() for n, q in model.named_parameters() if q.grad is not None}))
        torch.testing.assert_close(results[0][0], results[1][0])
        for name, grad in results[1][1].items():
            torch.testing.assert_close(results[0][1][name], grad, msg=name)
