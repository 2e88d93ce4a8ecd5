"""Metrics: token accuracy and span F1, the latter checked against a port of conlleval's counting."""
from __future__ import annotations

import random

import pytest

from core.metrics import evaluate, span_f1, token_accuracy


# -- an independent port of conlleval.pl's chunk counting (reference for the tests only) -------
def _split(tag: str) -> tuple[str, str]:
    return tuple(tag.split("-", 1)) if "-" in tag else (tag, "")  # type: ignore[return-value]


def _end_of_chunk(prev_tag, tag, prev_type, type_):
    return (
        prev_tag in ("E", "S")
        or (prev_tag == "B" and tag in ("B", "S", "O"))
        or (prev_tag == "I" and tag in ("B", "S", "O"))
        or (prev_tag not in ("O", ".") and prev_type != type_)
    )


def _start_of_chunk(prev_tag, tag, prev_type, type_):
    return (
        tag in ("B", "S")
        or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
        or (tag not in ("O", ".") and prev_type != type_)
    )


def conlleval_f1(gold, pred) -> float:
    correct = found_gold = found_pred = 0
    in_correct = False
    last_g, last_gt, last_p, last_pt = "O", "", "O", ""
    stream = []
    for g_sent, p_sent in zip(gold, pred):
        stream += list(zip(g_sent, p_sent)) + [("O", "O")]  # a blank line ends every chunk
    for g_tag, p_tag in stream:
        g, gt = _split(g_tag)
        p, pt = _split(p_tag)
        if in_correct:
            g_end = _end_of_chunk(last_g, g, last_gt, gt)
            p_end = _end_of_chunk(last_p, p, last_pt, pt)
            if g_end and p_end and last_gt == last_pt:
                in_correct = False
                correct += 1
            elif g_end != p_end or gt != pt:
                in_correct = False
        g_start = _start_of_chunk(last_g, g, last_gt, gt)
        p_start = _start_of_chunk(last_p, p, last_pt, pt)
        if g_start and p_start and gt == pt:
            in_correct = True
        found_gold += g_start
        found_pred += p_start
        last_g, last_gt, last_p, last_pt = g, gt, p, pt
    if in_correct:
        correct += 1
    precision = correct / found_pred if found_pred else 0.0
    recall = correct / found_gold if found_gold else 0.0
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def _random_tags(rng: random.Random, n: int, prefixes: str) -> list[str]:
    tags = []
    for _ in range(n):
        p = rng.choice(prefixes + "OO")
        tags.append("O" if p == "O" else f"{p}-{rng.choice(['PER', 'LOC', 'ORG'])}")
    return tags


class TestTokenAccuracy:
    def test_counts_matches(self):
        assert token_accuracy([["A", "B"], ["C"]], [["A", "X"], ["C"]]) == pytest.approx(2 / 3)

    def test_wrong_tag_gold_is_always_wrong(self):
        # CCG top-400: a gold '*' cannot be right even when '*' is predicted.
        assert token_accuracy([["*", "N"]], [["*", "N"]]) == pytest.approx(0.5)

    def test_misaligned_input_names_the_sentence(self):
        with pytest.raises(ValueError, match="sentence 1"):
            token_accuracy([["A"], ["B", "C"]], [["A"], ["B"]])


class TestSpanF1:
    def test_hand_example(self):
        gold = [["B-PER", "E-PER", "O", "S-LOC"]]
        pred = [["B-PER", "E-PER", "O", "S-ORG"]]
        result = span_f1(gold, pred)
        assert result["precision"] == pytest.approx(0.5)
        assert result["recall"] == pytest.approx(0.5)
        assert result["f1"] == pytest.approx(0.5)
        # per type: PER 1.0, LOC 0 (missed), ORG 0 (spurious) -> macro 1/3
        assert result["macro_f1"] == pytest.approx(1 / 3)

    @pytest.mark.parametrize("prefixes", ["BIES", "BI", "I"])  # BIOES, BIO, IOB1-like, incl. invalid sequences
    def test_equals_conlleval_on_random_sequences(self, prefixes):
        rng = random.Random(len(prefixes))
        for _ in range(200):
            lengths = [rng.randint(1, 8) for _ in range(rng.randint(1, 5))]
            gold = [_random_tags(rng, n, prefixes) for n in lengths]
            pred = [_random_tags(rng, n, prefixes) for n in lengths]
            assert span_f1(gold, pred)["f1"] == pytest.approx(conlleval_f1(gold, pred), abs=1e-12)

    def test_evaluate_picks_main_metric(self):
        gold = [["B-PER", "E-PER", "O"]]
        assert evaluate(gold, gold, "span_f1")["score"] == 1.0
        assert evaluate([["N", "V"]], [["N", "N"]], "accuracy")["score"] == 0.5
        with pytest.raises(ValueError, match="unknown metric"):
            evaluate(gold, gold, "bleu")


# -- IOB1 (the CoNLL-2003 files' own scheme, Goyal et al.'s label space) against tests/conlleval.py --
def _lines(gold, pred) -> list[str]:
    out = []
    for g_sent, p_sent in zip(gold, pred):
        out += [f"w {g} {p}" for g, p in zip(g_sent, p_sent)] + [""]
    return out


def _only(tags, kind: str) -> list[str]:
    return ["O" if t == "O" or t.split("-", 1)[1] != kind else t for t in tags]


def conlleval_macro_f1(gold, pred) -> float:
    """Mean over entity types (gold or predicted) of conlleval's F1 on that type alone (the other
    types' tags read as O, which leaves this type's chunk boundaries as conlleval sees them)."""
    from tests.conlleval import conlleval

    kinds = sorted({t.split("-", 1)[1] for sents in (gold, pred) for s in sents for t in s if t != "O"})
    scores = [conlleval(_lines([_only(s, k) for s in gold], [_only(s, k) for s in pred]))["f1"] for k in kinds]
    return sum(scores) / len(scores) if scores else 0.0  # no entity anywhere: seqeval's 0


class TestSpanF1IOB1:
    def test_adjacent_same_type_and_single_token_entities(self):
        from tests.conlleval import conlleval

        # gold: PER "John", PER "Mary" (B- marks the second of two adjacent PERs), LOC "Paris"
        gold = [["I-PER", "B-PER", "O", "I-LOC"]]
        pred = [["I-PER", "I-PER", "O", "I-LOC"]]  # the two PERs merged into one
        result = span_f1(gold, pred)
        assert result["precision"] == pytest.approx(1 / 2) and result["recall"] == pytest.approx(1 / 3)
        assert result["f1"] == pytest.approx(0.4) == conlleval(_lines(gold, pred))["f1"]
        assert result["macro_f1"] == pytest.approx(0.5) == conlleval_macro_f1(gold, pred)  # PER 0, LOC 1
        assert span_f1(gold, gold)["f1"] == 1.0 and conlleval(_lines(gold, gold))["found_correct"] == 3

    def test_iob1_and_bioes_give_the_same_chunks(self):
        from core.data import bio_to_bioes, iob1_to_bio

        gold = [["I-PER", "B-PER", "I-PER", "O", "I-LOC", "I-ORG", "B-ORG"]]
        pred = [["I-PER", "I-PER", "I-PER", "O", "I-LOC", "I-ORG", "I-ORG"]]
        bioes = lambda tags: [bio_to_bioes(iob1_to_bio(s)) for s in tags]  # noqa: E731
        assert span_f1(gold, pred) == span_f1(bioes(gold), bioes(pred))

    def test_micro_and_macro_equal_conlleval_on_random_iob1(self):
        from tests.conlleval import conlleval

        rng = random.Random(13)
        for _ in range(300):
            lengths = [rng.randint(1, 8) for _ in range(rng.randint(1, 5))]
            gold = [_random_tags(rng, n, "IIB") for n in lengths]  # IOB1: mostly I-, B- between same types
            pred = [_random_tags(rng, n, "IIB") for n in lengths]
            result = span_f1(gold, pred)
            assert result["f1"] == pytest.approx(conlleval(_lines(gold, pred))["f1"], abs=1e-12)
            assert result["macro_f1"] == pytest.approx(conlleval_macro_f1(gold, pred), abs=1e-12)
