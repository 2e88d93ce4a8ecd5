"""core.coverage: token accuracy by what the word table knew (vectors / training)."""
from __future__ import annotations

import math

import pytest

from core.coverage import CLASSES, coverage_breakdown, coverage_class, flat_metrics, split_coverage
from core.data import Sentence, Vocab
from core.metrics import token_accuracy


class TestCoverageClass:
    @pytest.mark.parametrize("key,expected", [("the", CLASSES[0]), ("paris", CLASSES[1]), ("lol", CLASSES[2]),
                                              ("zzz", CLASSES[3])])
    def test_each_class(self, key, expected):
        assert coverage_class(key, vector_words={"the", "paris"}, train_keys={"the", "lol"}) == expected


class TestCoverageBreakdown:
    WORDS = [("The", "cat", "lol"), ("Paris", "zzz")]
    GOLD = [("O", "O", "B-X"), ("B-LOC", "O")]
    PRED = [("O", "B-X", "B-X"), ("O", "O")]

    def rows(self):
        return {r.name: r for r in coverage_breakdown(self.WORDS, self.GOLD, self.PRED, str.lower,
                                                      train_keys={"the", "cat", "lol"}, vector_words={"the", "cat", "paris"})}

    def test_counts_shares_and_accuracies(self):
        rows = self.rows()
        both, vec, train, neither = (rows[name] for name in CLASSES)
        assert (both.tokens, both.share, both.accuracy) == (2, 0.4, 0.5)  # The right, cat wrong
        assert (vec.tokens, vec.accuracy, vec.entity_tokens, vec.entity_accuracy) == (1, 0.0, 1, 0.0)  # Paris
        assert (train.tokens, train.accuracy, train.entity_accuracy) == (1, 1.0, 1.0)  # lol
        assert (neither.tokens, neither.accuracy) == (1, 1.0) and math.isnan(neither.entity_accuracy)  # zzz: O
        assert math.isnan(both.entity_accuracy) and both.entity_tokens == 0

    def test_shares_weight_to_the_split_accuracy(self):
        rows = self.rows().values()
        assert sum(r.share for r in rows) == pytest.approx(1.0)
        weighted = sum(r.share * r.accuracy for r in rows if r.tokens)
        assert weighted == pytest.approx(token_accuracy(self.GOLD, self.PRED))

    def test_gold_star_is_never_correct(self):
        (row,) = [r for r in coverage_breakdown([("a",)], [("*",)], [("*",)], str, {"a"}, {"a"}) if r.tokens]
        assert row.accuracy == 0.0 == token_accuracy([("*",)], [("*",)])

    def test_empty_class_is_nan(self):
        rows = coverage_breakdown([("a",)], [("O",)], [("O",)], str, train_keys=set(), vector_words=set())
        assert [r.tokens for r in rows] == [0, 0, 0, 1] and math.isnan(rows[0].accuracy) and rows[0].share == 0.0

    @pytest.mark.parametrize("gold,pred,message", [
        ([("O",)], [("O",), ("O",)], "1 sentences, 1 gold, 2 predicted"),
        ([("O", "O")], [("O",)], "sentence 0 has 1 words, 2 gold, 1 predicted tags"),
    ])
    def test_misaligned_input_raises(self, gold, pred, message):
        with pytest.raises(ValueError, match=message):
            coverage_breakdown([("a",)], gold, pred, str, set(), set())


class TestSplitCoverage:
    def test_vectors_are_the_rows_glove_filled_and_training_the_rows_it_reaches(self, tmp_path):
        glove = tmp_path / "g.txt"
        glove.write_text("the 0.1 0.2\nParis 0.3 0.4\n")  # a case-keeping file still matches by lowercase
        train = [Sentence(("The", "cat", "cat", "dog"), ("D", "N", "N", "N"))]
        vocab = Vocab.build([w for s in train for w in s.words], min_count=1, lowercase=True)
        vocab = Vocab(vocab.itos + ["paris"], lowercase=True)  # a dev/test GloVe word, as build_vocabs adds
        test = [Sentence(("the", "Paris", "cat", "emu"), ("D", "N", "N", "N"))]
        rows = {r.name: r for r in split_coverage(test, [("D", "N", "D", "N")], train, vocab, str(glove))}
        assert [rows[name].tokens for name in CLASSES] == [1, 1, 1, 1]
        assert rows["training only"].accuracy == 0.0 and rows["neither"].accuracy == 1.0

    def test_below_min_count_is_not_training_and_no_vectors_means_no_vector_class(self):
        train = [Sentence(("cat", "cat", "dog"), ("N", "N", "N"))]
        vocab = Vocab.build([w for s in train for w in s.words], min_count=2)
        rows = {r.name: r for r in split_coverage(train, [("N", "N", "N")], train, vocab, None)}
        assert rows["training only"].tokens == 2 and rows["neither"].tokens == 1  # dog is UNK
        assert rows["vectors and training"].tokens == rows["vectors only"].tokens == 0


class TestFlatMetrics:
    def test_one_key_per_class_and_field(self):
        rows = coverage_breakdown([("a",)], [("O",)], [("O",)], str, {"a"}, {"a"})
        metrics = flat_metrics(rows)
        assert len(metrics) == 3 * len(CLASSES)
        assert metrics["coverage.vectors_and_training.accuracy"] == 1.0
        assert math.isnan(metrics["coverage.training_only.accuracy"])
