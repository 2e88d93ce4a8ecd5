"""core/search_correlation.py (Tu & Gimpel §6.2) on the synthetic task."""
from __future__ import annotations

import pytest
import torch

from core.data import load_task
from core.decoding import decode_batches
from core.lm import LMConfig, sentence_perplexities, train_lm
from core.loading import load_for_decoding
from core.metrics import spearman
from core.search_correlation import search_error_correlations
from core.train import TrainConfig, train

pytestmark = pytest.mark.slow  # trains a CRF, an inference network and two language models (seconds)

SMALL = dict(task="synthetic", epochs=1, model={"hidden": 8, "word_dim": 8, "char_filters": 0}, threads=1, progress=False,
             batch_size=64)
LM = LMConfig(embedding_dim=8, hidden=16, epochs=2)


@pytest.fixture(scope="module")
def infnet(tmp_path_factory):
    root = tmp_path_factory.mktemp("sc")
    train(TrainConfig(out=str(root / "crf"), objective="crf", **SMALL))
    train(TrainConfig(out=str(root / "inf"), objective="infnet", arch="blstm", energy=str(root / "crf"), **SMALL))
    return str(root / "inf")


def test_correlations_are_those_of_the_per_sentence_search_errors(infnet):
    result = search_error_correlations(infnet, split="dev", gd_steps=5, lm=LM)
    # recompute independently: the LMs are seeded, decoding is deterministic
    crf, net, vocabs, _ = load_for_decoding(infnet, None, "cpu")
    task = load_task("synthetic")
    ppl = sentence_perplexities(train_lm([s.words for s in task.train], LM), [s.words for s in task.dev])
    out = decode_batches(task.dev, vocabs, "infnet", crf=crf, infnet=net)
    errors = (torch.tensor(out["energy"]) - torch.tensor(out["viterbi_energy"])).tolist()
    assert min(errors) > -1e-4  # Viterbi is exact: no discrete output has a lower energy
    assert result["infnet"]["rho_word_perplexity"] == pytest.approx(spearman(ppl, errors))
    assert result["infnet"]["mean_search_error"] == pytest.approx(sum(errors) / len(errors))
    for method in ("infnet", "gd"):
        row = result[method]
        assert row["mean_search_error"] > -1e-4 and 0.0 <= row["share_with_search_error"] <= 1.0
        assert all(-1.0 <= row[k] <= 1.0 for k in ("rho_word_perplexity", "rho_label_perplexity", "rho_length"))
    assert result["gd"]["steps"] == 5 and result["sentences"] == len(task.dev)
    assert result["lm"]["mean_word_perplexity"] >= 1.0


def test_a_crf_checkpoint_alone_is_one_clear_error(infnet, tmp_path):
    crf = infnet[: -len("inf")] + "crf"
    with pytest.raises(ValueError, match="needs an inference network and its CRF energy"):
        search_error_correlations(crf, lm=LM)
