"""Greedy decoding and hard beam search against brute-force enumeration."""
from __future__ import annotations

import pytest
import torch

from core.search.beam import beam_search, greedy_decode
from helpers import brute_force_best, encode, tiny_tagger

ATTENTIONS = ["fixed", "dot", "general", "mlp"]


class TestGreedyDecode:
    @pytest.mark.parametrize("attention", ATTENTIONS)
    def test_equals_beam_of_size_one(self, attention):
        model = tiny_tagger(n_labels=5, attention=attention)
        memory = encode(model, [6, 3, 1, 5])
        greedy = greedy_decode(model, memory)
        beam = beam_search(model, memory, beam_size=1)
        assert torch.equal(greedy.labels, beam.labels)
        torch.testing.assert_close(greedy.scores, beam.scores)

    def test_score_is_the_model_score_of_its_output(self):
        model = tiny_tagger(n_labels=4)
        memory = encode(model, [5, 2, 4])
        result = greedy_decode(model, memory)
        torch.testing.assert_close(result.scores, model.sequence_score(memory, result.labels))

    def test_padding_is_zero(self):
        model = tiny_tagger(n_labels=4)
        memory = encode(model, [5, 2])
        labels = greedy_decode(model, memory).labels
        assert labels[1, 2:].eq(0).all()


class TestBeamSearch:
    @pytest.mark.parametrize("attention", ATTENTIONS)
    def test_full_width_beam_finds_exhaustive_argmax(self, attention):
        model = tiny_tagger(n_labels=3, attention=attention, seed=1)
        lengths = [4, 2, 3, 1]
        memory = encode(model, lengths, seed=2)
        best, best_scores = brute_force_best(model, memory)
        result = beam_search(model, memory, beam_size=3**4)
        for b, n in enumerate(lengths):
            assert result.labels[b, :n].tolist() == best[b]
        torch.testing.assert_close(result.scores, best_scores)

    def test_beam_entries_are_distinct_sorted_and_scored(self):
        model = tiny_tagger(n_labels=4, seed=3)
        memory = encode(model, [5, 3], seed=4)
        k = 6
        result = beam_search(model, memory, beam_size=k)
        assert torch.all(result.beam_scores[:, :-1] >= result.beam_scores[:, 1:])
        for b in range(2):
            n = int(memory.mask[b].sum())
            rows = {tuple(result.beam_labels[b, i, :n].tolist()) for i in range(k)}
            assert len(rows) == k, "the initial beam must not produce duplicate hypotheses"
            for i in range(k):
                labels = result.beam_labels[b, i].unsqueeze(0)
                one = type(memory)(memory.states[b : b + 1], memory.mask[b : b + 1])
                torch.testing.assert_close(model.sequence_score(one, labels), result.beam_scores[b, i : i + 1])

    def test_more_entries_than_hypotheses_leaves_minus_inf(self):
        model = tiny_tagger(n_labels=2)
        memory = encode(model, [2])
        result = beam_search(model, memory, beam_size=6)  # only 2^2 = 4 sequences exist
        assert torch.isfinite(result.beam_scores[0, :4]).all()
        assert torch.isinf(result.beam_scores[0, 4:]).all()

    def test_batch_padding_does_not_change_results(self):
        model = tiny_tagger(n_labels=4, seed=5)
        lengths = [3, 7, 5]
        batched = beam_search(model, encode(model, lengths, seed=6), beam_size=3)
        from helpers import tiny_inputs

        words, chars, lengths_t = tiny_inputs(lengths, seed=6)
        for b, n in enumerate(lengths):
            alone = model.encode(words[b : b + 1, :n], chars[b : b + 1, :n], lengths_t[b : b + 1])
            single = beam_search(model, alone, beam_size=3)
            assert single.labels[0].tolist() == batched.labels[b, :n].tolist()
            torch.testing.assert_close(single.scores, batched.scores[b : b + 1], rtol=1e-5, atol=1e-5)

    def test_beam_beats_greedy_somewhere(self):
        # A check that the tests above can fail: on random peaked models, k = 3 finds a better
        # sequence than greedy on some sentences (and never a worse one at full width).
        model = tiny_tagger(n_labels=5, seed=7)
        memory = encode(model, [6] * 40, seed=8)
        greedy = greedy_decode(model, memory)
        beam = beam_search(model, memory, beam_size=3)
        assert (beam.scores > greedy.scores + 1e-6).any()

    def test_rejects_bad_beam_size(self):
        model = tiny_tagger()
        with pytest.raises(ValueError, match="beam_size"):
            beam_search(model, encode(model, [2]), beam_size=0)
