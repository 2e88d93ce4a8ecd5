"""core/lm.py: the §6.2 language models, against brute force and their limits."""
from __future__ import annotations

import math

import pytest
import torch

from core.lm import EOS, LMConfig, build_itos, sentence_perplexities, train_lm

CORPUS = [["the", "cat", "sat"], ["the", "dog", "sat"], ["a", "cat", "ran"], ["the", "cat", "ran", "far"]] * 8
TINY = LMConfig(embedding_dim=8, hidden=16, epochs=1, batch_size=8, dropout=0.0)


class TestPerplexity:
    def test_equals_the_product_of_next_token_probabilities(self):
        # brute force: feed each prefix separately through the model and multiply p(s_t | s_<t)
        model = train_lm(CORPUS, TINY)
        sentence = ["the", "cat", "ran", "zebra"]  # an unseen word -> <unk>
        ids = model.encode(sentence)
        log_p = 0.0
        with torch.no_grad():
            for t in range(1, len(ids)):
                prefix = torch.tensor([ids[:t]])  # (1, t)
                hidden, _ = model.lstm(model.embedding(prefix))  # (1, t, H)
                log_p += model.output(hidden[0, -1]).log_softmax(-1)[ids[t]].item()
        expected = math.exp(-log_p / (len(ids) - 1))
        assert sentence_perplexities(model, [sentence, ["a"]])[0] == pytest.approx(expected, rel=1e-5)

    def test_uniform_model_gives_the_vocabulary_size(self):
        model = train_lm(CORPUS, TINY)
        with torch.no_grad():
            model.output.weight.zero_()
            model.output.bias.zero_()
        ppl = sentence_perplexities(model, [["the"], ["a", "cat", "sat", "far", "away"]])
        assert ppl == pytest.approx([len(model.itos)] * 2)

    def test_training_lowers_perplexity_on_seen_patterns(self):
        before = sentence_perplexities(train_lm(CORPUS, TINY), [["the", "cat", "sat"]])[0]
        after = sentence_perplexities(train_lm(CORPUS, LMConfig(**{**TINY.__dict__, "epochs": 30})), [["the", "cat", "sat"]])[0]
        assert after < before / 2  # 11 symbols; the best model of this corpus has PPL ~1.5 here

    def test_batching_and_order_do_not_change_a_sentence_s_perplexity(self):
        model = train_lm(CORPUS, TINY)
        sentences = [["the", "cat"], ["a", "dog", "ran", "far", "far"], ["the"]]
        one_by_one = [sentence_perplexities(model, [s])[0] for s in sentences]
        assert sentence_perplexities(model, sentences, batch_size=2) == pytest.approx(one_by_one, rel=1e-5)


class TestVocabulary:
    def test_specials_first_and_min_count(self):
        itos = build_itos([["A", "b"], ["a"]], LMConfig(min_count=2))
        assert itos[:4] == ["<pad>", "<unk>", "<s>", EOS] and itos[4:] == ["a"]

    def test_bad_config_and_input(self):
        with pytest.raises(ValueError, match="LMConfig.hidden must be >= 1"):
            LMConfig(hidden=0)
        with pytest.raises(ValueError, match="no empty sequences"):
            train_lm([["a"], []], TINY)
