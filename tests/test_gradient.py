"""Gradient-descent inference, oracle tuning, instance tailoring and search error (Tu & Gimpel 2019)."""
from __future__ import annotations

import math

import pytest
import torch

from core.crf import BLSTMCRF, CRFConfig, LinearChainCRF, crf_energy
from core.data import Sentence, build_vocabs
from core.metrics import instance_scores, search_errors
from core.oracle import oracle_choice, per_step_choice, run_oracle_grid
from core.search.gradient import GRID_LRS, INIT_STD, gradient_descent
from core.tailoring import instance_tailor
from helpers import brute_force, prefix_mask, tiny_infnet, tiny_inputs


def tiny_problem(B=4, T=4, L=3, seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    crf = LinearChainCRF(L).to(dtype)
    with torch.no_grad():
        crf.transitions.normal_(0, 1.5)
        crf.start.normal_(0, 1)
        crf.end.normal_(0, 1)
    unary = torch.randn(B, T, L, dtype=dtype) * 2  # (B, T, L)
    mask = prefix_mask([T, 1, T - 1, 2][:B], T)
    return crf, unary, mask


class TestGradientDescent:
    def test_reaches_the_viterbi_optimum(self):
        # E(softmax(y)) is not convex in y, so a single start can stall in a local minimum; the
        # best over a few learning rates and random starts reaches the exact optimum.
        for seed in range(3):
            crf, unary, mask = tiny_problem(seed=seed)
            exact = brute_force(unary, crf.transitions.detach(), crf.start.detach(), crf.end.detach(), mask)
            traces = [gradient_descent(crf, unary, mask, steps=(200,), lrs=(100.0, 10.0, 1.0, 0.1), seed=start)
                      for start in range(4)]
            discrete = torch.cat([t.discrete_energy[-1] for t in traces])  # (4 starts * 4 lrs, B)
            relaxed = torch.cat([t.energy[-1] for t in traces])  # (16, B)
            labels = torch.cat([t.labels[-1] for t in traces])  # (16, B, T)
            best = discrete.min(dim=0)  # (B,)
            torch.testing.assert_close(best.values, torch.tensor([-r[3] for r in exact], dtype=torch.float64))
            for b, (positions, _, argmax, _) in enumerate(exact):
                assert [int(labels[best.indices[b], b, t]) for t in positions] == list(argmax)
            # The relaxed energy gets there too (the softmax saturates at the vertex).
            assert (relaxed.min(dim=0).values - best.values).abs().max() < 1e-2

    def test_random_start_is_near_uniform(self):
        # A N(0, 1) start scales each label's gradient by its random initial probability and the
        # softmax saturates on it: over the whole lr grid GD stalls far above the Viterbi energy.
        # The default near-uniform start (INIT_STD) gets close to it on every seed.
        for seed in range(3):
            torch.manual_seed(seed)
            B, T, L = 64, 12, 12
            crf = LinearChainCRF(L).double()
            with torch.no_grad():
                crf.transitions.normal_(0, 0.3)
                crf.start.normal_(0, 0.3)
                crf.end.normal_(0, 0.3)
            unary = torch.randn(B, T, L, dtype=torch.float64) * 1.5  # (B, T, L)
            mask = prefix_mask([T] * B, T)
            viterbi = -crf.viterbi(unary, mask).scores  # (B,)
            gaps = {}
            for std in (INIT_STD, 1.0):
                trace = gradient_descent(crf, unary, mask, steps=(0, 100), lrs=GRID_LRS, init_std=std)
                gaps[std] = float((trace.discrete_energy[-1].min(dim=0).values - viterbi).mean())
            assert gaps[INIT_STD] < 0.3 and gaps[1.0] > 2.0, gaps
        start = gradient_descent(crf, unary, mask, steps=(0,), lrs=(1.0,)).logits[0]  # (B, T, L)
        assert 0.005 < float(start.std()) < 0.02
        with pytest.raises(ValueError, match="init_std"):
            gradient_descent(crf, unary, mask, steps=(1,), init_std=-1.0)

    def test_batched_learning_rates_equal_separate_runs(self):
        crf, unary, mask = tiny_problem(B=3, T=5, L=4, seed=4)
        steps = (5, 10, 20)
        batched = gradient_descent(crf, unary, mask, steps=steps, lrs=GRID_LRS, seed=1)
        for r, lr in enumerate(GRID_LRS):
            alone = gradient_descent(crf, unary, mask, steps=steps, lrs=(lr,), seed=1)
            assert torch.equal(batched.labels[:, r], alone.labels[:, 0])
            torch.testing.assert_close(batched.energy[:, r], alone.energy[:, 0])
            torch.testing.assert_close(batched.logits[r], alone.logits[0])

    def test_steps_are_prefixes_and_match_torch_sgd(self):
        crf, unary, mask = tiny_problem(B=2, T=3, L=3, seed=5)
        init = torch.randn(2, 3, 3, dtype=torch.float64)
        trace = gradient_descent(crf, unary, mask, steps=(0, 3, 7), lrs=(0.5,), momentum=0.9, init=init)
        y = init.clone().requires_grad_(True)
        optimizer = torch.optim.SGD([y], lr=0.5, momentum=0.9)
        for n in range(7):
            if n in (0, 3):
                expected = crf_energy(unary, crf.transitions, crf.start, crf.end, y.softmax(-1), mask).detach()
                torch.testing.assert_close(trace.energy[(0, 3).index(n), 0], expected)
            optimizer.zero_grad()
            crf_energy(unary, crf.transitions.detach(), crf.start.detach(), crf.end.detach(), y.softmax(-1), mask).sum().backward()
            optimizer.step()
        torch.testing.assert_close(trace.logits[0], y.detach())

    def test_start_from_given_logits(self):
        crf, unary, mask = tiny_problem(seed=6)
        vit = crf.viterbi(unary, mask)
        init = torch.nn.functional.one_hot(vit.labels, 3).double() * 20  # (B, T, L): Viterbi as logits
        trace = gradient_descent(crf, unary, mask, steps=(0, 5), lrs=(1.0,), init=init)
        assert torch.equal(trace.labels[0, 0], vit.labels)
        assert torch.equal(trace.labels[1, 0], vit.labels)

    def test_errors(self):
        crf, unary, mask = tiny_problem()
        with pytest.raises(ValueError, match="strictly increasing"):
            gradient_descent(crf, unary, mask, steps=(10, 5))
        with pytest.raises(ValueError, match="learning rates must be > 0"):
            gradient_descent(crf, unary, mask, steps=(5,), lrs=(0.0,))
        with pytest.raises(ValueError, match="init logits must have the shape"):
            gradient_descent(crf, unary, mask, steps=(5,), init=unary[:, :2])


class TestOracle:
    def test_hand_case(self):
        # K = 2 step counts, R = 3 learning rates, B = 3 sentences.
        scores = torch.tensor([
            [[0.5, 1.0, 0.2], [0.9, 1.0, 0.2], [0.1, 0.3, 0.2]],  # N = steps[0]
            [[0.5, 0.8, 0.7], [0.9, 1.0, 0.2], [0.1, 0.3, 0.2]],  # N = steps[1]
        ])
        energies = torch.tensor([
            [[-1.0, -5.0, -1.0], [-2.0, -6.0, -1.0], [-1.0, -1.0, -1.0]],
            [[-1.0, -1.0, -1.0], [-3.0, -6.0, -1.0], [-1.0, -1.0, -1.0]],
        ])
        k, r = oracle_choice(scores, energies)
        # Sentence 0: best 0.9 at (k0, r1) and (k1, r1): lower energy -3 at (k1, r1).
        # Sentence 1: best 1.0 at (k0, r0), (k0, r1), (k1, r1): energies -5, -6, -6: first of the -6s.
        # Sentence 2: best 0.7 at (k1, r0) only.
        assert k.tolist() == [1, 0, 1] and r.tolist() == [1, 1, 0]
        assert per_step_choice(scores, energies).tolist() == [[1, 1, 0], [1, 1, 0]]

    def test_instance_scores(self):
        gold = [["B-PER", "E-PER", "O"], ["O", "O"], ["S-LOC", "O"]]
        pred = [["B-PER", "E-PER", "O"], ["O", "O"], ["O", "S-LOC"]]
        assert instance_scores(gold, pred, "span_f1") == [1.0, 1.0, 0.0]
        assert instance_scores(gold, pred, "accuracy") == [1.0, 1.0, 0.0]
        assert instance_scores([["*", "A"]], [["*", "A"]], "accuracy") == [0.5]
        with pytest.raises(ValueError, match="unknown metric"):
            instance_scores(gold, pred, "bleu")

    def test_search_errors(self):
        result = search_errors(torch.tensor([1.0, 3.0, 2.0, 6.0]), torch.zeros(4), torch.tensor([2, 4, 3, 9]),
                               likelihood=[4.0, 3.0, 2.0, 1.0])
        assert result["errors"] == [1.0, 3.0, 2.0, 6.0]
        assert result["rho_length"] == pytest.approx(1.0)
        assert result["rho_likelihood"] == pytest.approx(-0.8)
        assert math.isnan(search_errors(torch.ones(3), torch.zeros(3), torch.tensor([1, 2, 3]))["rho_length"])


class TestInstanceTailoring:
    @staticmethod
    def setup_case():
        torch.manual_seed(0)
        crf = LinearChainCRF(4)
        with torch.no_grad():
            crf.transitions.normal_(0, 1)
        words, chars, lengths = tiny_inputs([5, 3, 4])
        return crf, words, chars, lengths, prefix_mask([5, 3, 4], 5), torch.randn(3, 5, 4) * 2

    @pytest.mark.parametrize("arch", ["cnn13", "cnn15", "blstm", "seq2seq"])
    def test_lowers_energy_and_is_per_sentence(self, arch):
        crf, words, chars, lengths, mask, unary = self.setup_case()
        net = tiny_infnet(arch)
        before = net(words, chars, lengths)
        after = instance_tailor(net, crf, words, chars, lengths, unary, steps=10, lr=0.05)
        e_before = crf.energy(unary, before.probs, mask)
        e_after = crf.energy(unary, after.probs, mask)
        assert (e_after < e_before).all()
        # A sentence tailored alone gets the same network as in a batch (its own copy either way).
        alone = instance_tailor(net, crf, words[1:2], chars[1:2], lengths[1:2], unary[1:2], steps=10, lr=0.05)
        torch.testing.assert_close(after.logits[1:2, :3], alone.logits[:, :3])
        assert (after.logits[1, 3:] == 0).all() and (after.labels[1, 3:] == 0).all()  # padding
        # The trained network itself is untouched.
        torch.testing.assert_close(net(words, chars, lengths).logits, before.logits)

    @pytest.mark.parametrize("arch,options", [("cnn13", {}), ("cnn15", {}), ("blstm", {}), ("blstm", {"layers": 2}),
                                              ("seq2seq", {}), ("blstm", {"finetune_embeddings": False}),
                                              ("seq2seq", {"finetune_embeddings": False})])
    def test_batched_equals_one_copy_at_a_time(self, arch, options):
        from core.tailoring import _tailor_batched, _tailor_one_by_one

        crf, words, chars, lengths, mask, unary = self.setup_case()
        words[0, 3] = words[0, 1]  # a repeated word: both positions train one row of the table
        words[2, 0] = words[0, 1]  # ... and a word shared by two sentences, whose copies differ
        net = tiny_infnet(arch, **options)
        batched = _tailor_batched(net, crf, words, chars, lengths, unary, (0, 3, 7), 0.05, 0.9)
        looped = _tailor_one_by_one(net, crf, words, chars, lengths, unary, (0, 3, 7), 0.05, 0.9)
        for b, l in zip(batched, looped):
            torch.testing.assert_close(b.logits, l.logits, atol=1e-5, rtol=1e-4)
            assert torch.equal(b.labels, l.labels)
        assert not torch.allclose(batched[0].logits, batched[2].logits)  # the steps moved the network

    def test_batched_where_measured_faster(self):
        from core.tailoring import CPU_BATCHED_MAX_HIDDEN, batched_is_faster

        cpu, cuda = torch.device("cpu"), torch.device("cuda")
        big = CPU_BATCHED_MAX_HIDDEN + 1
        for arch in ("blstm", "seq2seq"):
            assert batched_is_faster(tiny_infnet(arch, hidden=CPU_BATCHED_MAX_HIDDEN), cpu)
            assert not batched_is_faster(tiny_infnet(arch, hidden=big), cpu)
            assert batched_is_faster(tiny_infnet(arch, hidden=big), cuda)
        assert batched_is_faster(tiny_infnet("cnn15", hidden=big), cpu)

    def test_own_rows_share_a_repeated_word(self):
        from core.tailoring import _own_rows

        words = torch.tensor([[7, 3, 7, 0], [3, 3, 5, 9]])
        assert _own_rows(words).tolist() == [[1, 2, 1, 0], [1, 1, 3, 4]]

    @pytest.mark.parametrize("arch", ["cnn13", "blstm", "seq2seq"])
    def test_trace_records_every_n_of_one_trajectory(self, arch):
        # The outputs after N = 0, 2, 5 steps of one trajectory are those of three separate runs.
        from core.tailoring import tailor_trace

        crf, words, chars, lengths, mask, unary = self.setup_case()
        net = tiny_infnet(arch)
        trace = tailor_trace(net, crf, words, chars, lengths, unary, (0, 2, 5), lr=0.05)
        assert len(trace) == 3
        for n, out in zip((0, 2, 5), trace):
            alone = instance_tailor(net, crf, words, chars, lengths, unary, steps=n, lr=0.05)
            torch.testing.assert_close(out.logits, alone.logits)
            assert torch.equal(out.labels, alone.labels)
            # ... and the paper's procedure written out for sentence 1: a fresh copy, n SGD steps.
            import copy

            from core.objectives import infnet_loss

            own = copy.deepcopy(net)
            optimizer = torch.optim.SGD([p for p in own.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
            args = (words[1:2, :3], chars[1:2, :3], lengths[1:2])
            for _ in range(n):
                optimizer.zero_grad()
                logits = own(*args).logits  # (1, 3, L)
                infnet_loss(crf, unary[1:2, :3], logits, logits.argmax(-1), mask[1:2, :3], lam=0.0).sum().backward()
                optimizer.step()
            torch.testing.assert_close(out.logits[1, :3], own(*args).logits[0].detach(), atol=1e-5, rtol=1e-4)
        assert not torch.equal(trace[0].logits, trace[2].logits)  # the steps moved the network
        with pytest.raises(ValueError, match="increasing steps"):
            tailor_trace(net, crf, words, chars, lengths, unary, (5, 2), lr=0.05)

    def test_zero_steps_is_the_network(self):
        crf, words, chars, lengths, mask, unary = self.setup_case()
        net = tiny_infnet("cnn13")
        out = instance_tailor(net, crf, words, chars, lengths, unary, steps=0, lr=0.05)
        torch.testing.assert_close(out.logits, net(words, chars, lengths).logits * mask.unsqueeze(-1))


class TestOracleGrid:
    def test_small_grid_end_to_end(self):
        sentences = [Sentence(("a", "b", "c"), ("X", "Y", "X")), Sentence(("b", "a"), ("Y", "Y")),
                     Sentence(("c",), ("X",))]
        vocabs = build_vocabs(sentences)
        torch.manual_seed(0)
        model = BLSTMCRF(CRFConfig(n_words=len(vocabs.words), n_chars=len(vocabs.chars), n_labels=2, word_dim=4, hidden=3))
        result = run_oracle_grid(model, sentences, vocabs, "accuracy", steps=(1, 5), lrs=(10.0, 1.0), batch_size=2)
        assert [row["sentence"] for row in result["rows"]] == [0, 1, 2]
        assert {row["steps"] for row in result["rows"]} <= {1, 5}
        assert [t["steps"] for t in result["table6"]] == [1, 5]
        # The oracle is at least as good as any fixed N.
        assert result["oracle"]["score"] >= max(t["score"] for t in result["table6"]) - 1e-12
        assert result["cost"]["optimizer_steps"] == 5 * 3 * 2
        for row in result["rows"]:
            assert row["discrete_energy"] >= row["viterbi_energy"] - 1e-5
