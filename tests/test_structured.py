"""Training and decoding BLSTM-CRF, local baselines and inference networks on the synthetic task."""
from __future__ import annotations

import json
import math

import pytest
import torch

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.data import Vocab, Vocabs, load_task
from core.decoding import STRUCTURED_DECODERS, score_decoder
from core.loading import load_crf, load_for_decoding, load_infnet
from core.oracle import oracle_grid
from core.train import TrainConfig, train

pytestmark = pytest.mark.slow  # trains several models (seconds each)

SMALL = dict(task="synthetic", epochs=1, model={"hidden": 8, "word_dim": 8, "char_filters": 5}, threads=1, progress=False,
             batch_size=64)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("structured")
    crf = train(TrainConfig(out=str(root / "crf"), objective="crf", **SMALL))
    inf = train(TrainConfig(out=str(root / "inf"), objective="infnet", arch="blstm",
                                            energy=str(root / "crf"), lam="decay:1:0.01", **SMALL))
    return root, crf, inf


class TestTraining:
    def test_crf_and_infnet_checkpoints_and_metrics(self, trained):
        root, crf, inf = trained
        assert 0 < crf["test"]["viterbi"]["score"] <= 1
        assert crf["test"]["viterbi"]["search_error"] == pytest.approx(0.0, abs=1e-4)
        assert load_checkpoint(root / "crf").meta["kind"] == "crf"
        meta = load_checkpoint(root / "inf").meta
        assert meta["kind"] == "infnet" and meta["energy"] == str((root / "crf").resolve())
        test = inf["test"]["infnet"]
        assert test["energy"] >= test["viterbi_energy"] - 1e-4 and "relaxed_energy" in test
        assert json.loads((root / "inf" / "metrics.json").read_text())["objective"] == "infnet"

    def test_lambda_annealing_reported_per_epoch(self, tmp_path, trained):
        root, _, _ = trained
        seen = {}
        train(TrainConfig(out=str(tmp_path), objective="infnet", arch="cnn13", energy=str(root / "crf"),
                          lam="decay:2:0.01", **{**SMALL, "epochs": 2}), lambda epoch, metrics, last: seen.update({epoch: metrics["lam"]}))
        assert seen == pytest.approx({1: 2 * math.exp(-0.01), 2: 2 * math.exp(-0.02)})

    def test_structured_runs_resume_like_any_other(self, tmp_path, trained):
        # The shared epoch loop gives CRF training the same out/last state and exact resumption.
        root, _, _ = trained
        whole = train(TrainConfig(out=str(tmp_path / "whole"), objective="crf", **{**SMALL, "epochs": 2}))
        resumed = train(TrainConfig(out=str(tmp_path / "split"), objective="crf", resume_from=str(root / "crf" / "last"),
                                    **{**SMALL, "epochs": 2}))
        assert resumed["test"]["viterbi"]["score"] == whole["test"]["viterbi"]["score"]

    def test_default_learning_rate_learns_in_one_epoch(self, tmp_path):
        # Issue 14: at the old default (Adam 1e-3) every structured run was under-trained; one epoch on
        # the synthetic task gave Viterbi accuracy 0.28 (0.70 at the new default 1e-2).
        config = TrainConfig(out=str(tmp_path), objective="crf", **SMALL)
        assert config.lr == 1e-2
        assert TrainConfig(out=str(tmp_path), objective="crf", optimizer="sgd", **SMALL).lr == 1e-3
        assert TrainConfig(out=str(tmp_path), objective="ce", **SMALL).lr == 1e-3
        assert train(config)["test"]["viterbi"]["score"] > 0.5

    @pytest.mark.parametrize("objective,arch", [("crf+", "blstm"), ("local", "cnn15"), ("local", "seq2seq")])
    def test_other_objectives(self, tmp_path, objective, arch):
        result = train(TrainConfig(out=str(tmp_path), objective=objective, arch=arch, plus=True, **SMALL))
        decoder = "viterbi" if objective == "crf+" else "infnet"
        assert 0 < result["test"][decoder]["score"] <= 1

    def test_config_errors(self, tmp_path):
        with pytest.raises(ValueError, match="needs energy"):
            TrainConfig(task="synthetic", out=str(tmp_path), objective="infnet")
        with pytest.raises(ValueError, match="arch must be one of"):
            TrainConfig(task="synthetic", out=str(tmp_path), objective="local", arch="cnn")


class TestDecoding:
    @pytest.mark.parametrize("decoder", STRUCTURED_DECODERS)
    def test_every_decoder(self, trained, decoder):
        root, _, _ = trained
        crf, infnet, vocabs, _ = load_for_decoding(root / "inf", None)
        sentences = load_task("synthetic").test[:20]
        result = score_decoder(sentences, vocabs, "accuracy", decoder, crf=crf, infnet=infnet, steps=5, lr=1.0 if decoder == "tailored" else 50.0)
        assert len(result["_pred"]) == 20 and 0 <= result["score"] <= 1
        assert result["energy"] >= result["viterbi_energy"] - 1e-4

    def test_oracle_grid(self, trained):
        root, _, _ = trained
        result = oracle_grid(root / "inf", infnet_start=True, steps=(1, 3), lrs=(10.0, 1.0))
        assert len(result["rows"]) == len(load_task("synthetic").test) and result["cost"]["infnet_start"]

    def test_wrong_kind_is_one_clear_error(self, trained):
        root, _, _ = trained
        with pytest.raises(CheckpointError, match="holds a 'infnet' model, expected 'crf'"):
            load_crf(root / "inf")
        with pytest.raises(CheckpointError, match="holds a 'crf' model, expected 'infnet'"):
            load_infnet(root / "crf")

    def test_mismatched_label_sets(self, trained, tmp_path):
        root, _, _ = trained
        crf, vocabs, meta = load_crf(root / "crf")
        other = Vocabs(vocabs.words, vocabs.chars, Vocab(list(reversed(vocabs.labels.itos))))
        save_checkpoint(tmp_path / "crf2", crf, {**meta, "vocabs": other.to_dict()})
        with pytest.raises(CheckpointError, match="label sets differ"):
            load_for_decoding(root / "inf", tmp_path / "crf2")
        seq2seq = tmp_path / "s2s"
        save_checkpoint(seq2seq, torch.nn.Linear(1, 1), {"kind": "seq2seq"})
        with pytest.raises(CheckpointError, match="expected 'crf' or 'infnet'"):
            load_for_decoding(seq2seq, None)


@pytest.fixture(scope="module")
def glove(tmp_path_factory):
    words = sorted({w.lower() for s in load_task("synthetic").train for w in s.words})
    path = tmp_path_factory.mktemp("glove") / "tiny.txt"
    path.write_text("".join(f"{w} {' '.join(str((i + j) % 7 / 10) for j in range(8))}\n" for i, w in enumerate(words)))
    return str(path)


class TestEmbeddingFineTuning:
    """Tu & Gimpel §2.1 and §7: pretrained vectors stay fixed for every model of the BLSTM-CRF setting
    (the CRF, local baselines, inference networks) and are fine-tuned in the "+" setting."""

    @staticmethod
    def finetuned(directory) -> bool:
        model, _, _ = (load_crf if load_checkpoint(directory).meta["kind"] == "crf" else load_infnet)(directory)
        return model.config.finetune_embeddings

    def test_fixed_without_plus_finetuned_with_plus(self, tmp_path, glove):
        small = {**SMALL, "model": {"hidden": 8, "char_filters": 5}, "embeddings": glove}
        train(TrainConfig(out=str(tmp_path / "crf"), objective="crf", **small))
        train(TrainConfig(out=str(tmp_path / "crf+"), objective="crf+", **small))
        train(TrainConfig(out=str(tmp_path / "inf"), objective="infnet", arch="cnn13", energy=str(tmp_path / "crf"), **SMALL))
        train(TrainConfig(out=str(tmp_path / "inf+"), objective="infnet", arch="cnn13", plus=True,
                          energy=str(tmp_path / "crf+"), **SMALL))
        train(TrainConfig(out=str(tmp_path / "local"), objective="local", arch="cnn13", **small))
        train(TrainConfig(out=str(tmp_path / "local+"), objective="local", arch="cnn13", plus=True, **small))
        train(TrainConfig(out=str(tmp_path / "random"), objective="local", arch="cnn13", **SMALL))  # no vectors: trained
        got = {name: self.finetuned(tmp_path / name) for name in ("crf", "crf+", "inf", "inf+", "local", "local+", "random")}
        assert got == {"crf": False, "crf+": True, "inf": False, "inf+": True, "local": False, "local+": True, "random": True}
        crf, _, _ = load_crf(tmp_path / "crf")
        inf, _, _ = load_infnet(tmp_path / "inf")
        assert torch.equal(inf.word_embedding().weight, crf.encoder.word_embedding.weight)  # fixed: still the CRF's
