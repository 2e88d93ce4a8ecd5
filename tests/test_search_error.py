"""The seq2seq tagger's search error from model scores (Goyal et al. 2018; issue 13's CCG table):
core.decoding.sequence_scores against exhaustive search on tiny cases, and the shares of
core.metrics.beam_search_errors against a direct count."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from core.data import Sentence, build_vocabs, make_batches
from core.decoding import sequence_scores
from core.metrics import beam_search_errors
from core.search.beam import beam_search, greedy_decode
from core.seq2seq import Memory
from helpers import tiny_tagger

TAGS = ("A", "B", "C")


def tiny_task(seed: int, n: int = 12) -> list[Sentence]:
    rng = random.Random(seed)
    return [Sentence(tuple(rng.choice("abcdefg") for _ in range(m)), tuple(rng.choice(TAGS) for _ in range(m)))
            for m in (rng.randint(1, 5) for _ in range(n))]


def model_for(sentences: list[Sentence], seed: int):
    vocabs = build_vocabs(sentences)
    assert vocabs.labels.itos == list(TAGS)
    return tiny_tagger(n_labels=len(TAGS), seed=seed, n_words=len(vocabs.words), n_chars=len(vocabs.chars)), vocabs


def all_scores(model, sentence: Sentence, vocabs) -> dict[tuple[str, ...], float]:
    """The model score of every one of the L^n tag sequences of one sentence (brute force)."""
    batch = make_batches([sentence], vocabs, 1)[0]
    n = len(sentence.words)
    candidates = torch.tensor(list(itertools.product(range(len(TAGS)), repeat=n)))  # (L^n, n)
    with torch.no_grad():
        memory = model.encode(batch.words, batch.chars, batch.lengths)
        many = Memory(memory.states.expand(len(candidates), -1, -1), memory.mask.expand(len(candidates), -1))
        scores = model.sequence_score(many, candidates)  # (L^n,)
    return {tuple(TAGS[i] for i in seq): s for seq, s in zip(candidates.tolist(), scores.tolist())}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_are_the_model_scores_of_each_search_output_and_of_gold(seed):
    sentences = tiny_task(seed)
    model, vocabs = model_for(sentences, seed)
    out = sequence_scores(model, sentences, vocabs, beam_size=2, batch_size=5)
    for i, sentence in enumerate(sentences):
        table = all_scores(model, sentence, vocabs)
        batch = make_batches([sentence], vocabs, 1)[0]
        with torch.no_grad():
            memory = model.encode(batch.words, batch.chars, batch.lengths)
            greedy = tuple(TAGS[y] for y in greedy_decode(model, memory).labels[0].tolist())
            beam = tuple(TAGS[y] for y in beam_search(model, memory, 2).labels[0].tolist())
        assert out["greedy"][i] == pytest.approx(table[greedy], abs=1e-5)
        assert out["beam"][i] == pytest.approx(table[beam], abs=1e-5)
        assert out["gold"][i] == pytest.approx(table[sentence.tags], abs=1e-5)


@pytest.mark.parametrize("seed", [3, 4, 5])  # seeds where k = 1 and k = 2 both miss some preferred gold
def test_exhaustive_search_has_no_search_error_and_narrow_beams_are_counted_right(seed):
    """A beam as wide as all L^n sequences is exact search: its score is the brute-force maximum,
    and no sentence's gold outscores it. For k = 1 and 2 the shares equal a direct count over the
    brute-force scores."""
    sentences = tiny_task(seed, n=60)
    model, vocabs = model_for(sentences, seed)
    tables = [all_scores(model, s, vocabs) for s in sentences]
    # every other sentence gets the model's own favourite as gold, which narrow beams can miss
    sentences = [Sentence(s.words, max(t, key=t.get)) if i % 2 else s for i, (s, t) in enumerate(zip(sentences, tables))]
    exact = sequence_scores(model, sentences, vocabs, beam_size=len(TAGS) ** 5)
    assert exact["beam"] == pytest.approx([max(t.values()) for t in tables], abs=1e-5)
    assert beam_search_errors(exact["greedy"], exact["beam"], exact["gold"])["search_error"] == 0.0
    for k in (1, 2):
        out = sequence_scores(model, sentences, vocabs, beam_size=k)
        stats = beam_search_errors(out["greedy"], out["beam"], out["gold"])
        gold = [t[s.tags] for t, s in zip(tables, sentences)]
        assert stats["search_error"] == pytest.approx(sum(g > b + 1e-5 for g, b in zip(gold, out["beam"])) / len(gold))
        assert stats["model_error"] == pytest.approx(sum(g < b - 1e-5 for g, b in zip(gold, out["beam"])) / len(gold))
        if k == 1:  # a beam of one is greedy search
            assert out["beam"] == out["greedy"] and stats["beam_minus_greedy"] == 0.0 and stats["beam_better"] == 0.0
        assert 0 < stats["search_error"] < 1 and 0 < stats["model_error"] < 1  # both kinds occur


def test_gold_with_a_tag_never_seen_in_training_is_unreachable():
    train = tiny_task(0)
    model, vocabs = model_for(train, 0)
    dev = [Sentence(("a", "b"), ("A", "Z")), Sentence(("a",), ("B",))]  # Z: not a training tag
    out = sequence_scores(model, dev, vocabs, beam_size=2)
    assert out["gold"][0] == -math.inf and math.isfinite(out["gold"][1])
    stats = beam_search_errors(out["greedy"], out["beam"], out["gold"])
    assert stats["gold_unreachable"] == 0.5 and stats["model_error"] + stats["search_error"] + stats["beam_is_gold"] == 0.5


def test_shares_on_hand_numbers():
    stats = beam_search_errors(greedy=[-3.0, -2.0, -1.0, -4.0], beam=[-2.0, -2.0, -1.0, -3.0],
                               gold=[-1.0, -2.0, -5.0, -math.inf])
    assert stats["beam_minus_greedy"] == pytest.approx(0.5) and stats["beam_better"] == 0.5 and stats["beam_worse"] == 0
    assert (stats["search_error"], stats["beam_is_gold"], stats["model_error"], stats["gold_unreachable"]) == (
        0.25, 0.25, 0.25, 0.25)
    assert stats["mean_gold_minus_beam"] == pytest.approx((1.0 + 0.0 - 4.0) / 3)
    with pytest.raises(ValueError, match="2 greedy, 1 beam and 1 gold"):
        beam_search_errors([0.0, 0.0], [0.0], [0.0])
