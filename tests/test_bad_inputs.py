"""A corpus of bad and odd-but-valid inputs for every reader, the GloVe loader, checkpoints, sweep
specs and the CLI's output paths.

The promise (README): bad input gets one line naming the file and line (or the spec field), exit
status 2 from the CLI, and nothing half-written; odd but valid input (a byte-order mark, CRLF,
non-ASCII spaces inside a token, a trailing tab) loads, and loads to what it says.

Each case is data: a name, the bytes of a file, the reader, and the outcome: `Loads(...)` with the
exact words and tags (or vector) it must give, or `Fails(line, words)`: a one-line error naming
the file, that line, and containing `words`.
"""
from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from core.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from core.data import DataError, Sentence, Vocab, build_vocabs, read_conll2003, read_conllu, read_supertags, read_word_tag

ROOT = Path(__file__).resolve().parent.parent
BOM = b"\xef\xbb\xbf"


@dataclass(frozen=True)
class Loads:
    sentences: tuple  # ((words...), (tags...)) per sentence


@dataclass(frozen=True)
class Fails:
    line: int | None  # the line the message must name (None: the file only)
    words: str = ""  # must appear in the message (case-insensitive)


def conll_en(path):
    return read_conll2003(path, lang="en")


def conll_de(path):
    return read_conll2003(path, lang="de")


def conllu(path):
    return read_conllu(path)


U = "1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n2\tdog\tdog\tNOUN\tNN\t_\t0\troot\t_\t_\n"
UD = ((("The", "dog"), ("DET", "NOUN")),)

# (name, reader, file name, bytes, outcome)
READER_CASES = [
    # --- CoNLL-2003 English: odd but valid -------------------------------------------------------
    ("conll-bom-before-docstart", conll_en, "eng.testa", BOM + b"-DOCSTART- -X- -X- O\n\nEU NNP B-NP I-ORG\n",
     Loads(((("EU",), ("I-ORG",)),))),
    ("conll-bom-before-token", conll_en, "eng.testa", BOM + b"EU NNP B-NP I-ORG\n", Loads(((("EU",), ("I-ORG",)),))),
    ("conll-crlf", conll_en, "eng.testa", b"EU NNP B-NP I-ORG\r\nrejects VBZ B-VP O\r\n\r\nPeter NNP B-NP I-PER\r\n",
     Loads(((("EU", "rejects"), ("I-ORG", "O")), (("Peter",), ("I-PER",))))),
    ("conll-nbsp-in-token", conll_en, "eng.testa", "New\u00a0York NNP B-NP I-LOC\n".encode(),
     Loads(((("New\u00a0York",), ("I-LOC",)),))),
    ("conll-ideographic-space-in-token", conll_en, "eng.testa", "東京\u3000都 NNP B-NP I-LOC\n".encode(),
     Loads(((("東京\u3000都",), ("I-LOC",)),))),
    ("conll-trailing-spaces-and-tab", conll_en, "eng.testa", b"EU NNP B-NP I-ORG \t\n", Loads(((("EU",), ("I-ORG",)),))),
    ("conll-tab-separated", conll_en, "eng.testa", b"EU\tNNP\tB-NP\tI-ORG\n", Loads(((("EU",), ("I-ORG",)),))),
    ("conll-no-final-newline-blank-lines", conll_en, "eng.testa", b"\n\n \nEU NNP B-NP I-ORG\n \n\nPeter NNP B-NP I-PER",
     Loads(((("EU",), ("I-ORG",)), (("Peter",), ("I-PER",))))),
    ("conll-adjacent-same-type-iob1", conll_en, "eng.testa", b"Bob NNP B-NP I-PER\nAl NNP B-NP B-PER\n",
     Loads(((("Bob", "Al"), ("I-PER", "B-PER")),))),
    # --- CoNLL-2003 English: malformed --------------------------------------------------------------
    ("conll-bioes-prefix-in-iob1", conll_en, "eng.testa", b"EU NNP B-NP S-ORG\n", Fails(1, "S-ORG")),
    ("conll-bioes-end-prefix-in-iob1", conll_en, "eng.testa", b"EU NNP B-NP I-ORG\nx NN I-NP E-ORG\n", Fails(2, "E-ORG")),
    ("conll-tag-without-prefix", conll_en, "eng.testa", b"EU NNP B-NP I-ORG\n\nx NN I-NP ORG\n", Fails(3, "ORG")),
    ("conll-tag-without-type", conll_en, "eng.testa", b"x NN I-NP B-\n", Fails(1, "B-")),
    ("conll-lowercase-prefix", conll_en, "eng.testa", b"x NN I-NP i-PER\n", Fails(1, "i-PER")),
    ("conll-nul-in-token", conll_en, "eng.testa", b"E\x00U NNP B-NP I-ORG\n", Fails(1, "control character")),
    ("conll-control-char-in-token", conll_en, "eng.testa", b"ok NN I-NP O\nE\x1bU NNP B-NP I-ORG\n", Fails(2, "control character")),
    ("conll-old-mac-line-ends", conll_en, "eng.testa", b"EU NNP B-NP I-ORG\rrejects VBZ B-VP O\r", Fails(1, "0x0d")),
    ("conll-bom-mid-file", conll_en, "eng.testa", b"EU NNP B-NP I-ORG\n\n" + BOM + b"-DOCSTART- -X- -X- O\n",
     Fails(3, "byte-order mark")),
    ("conll-three-columns", conll_en, "eng.testa", b"EU NNP I-ORG\n", Fails(1, "expected 4 columns")),
    ("conll-not-utf8", conll_en, "eng.testa", b"M\xfcnster NNP B-NP I-LOC\n", Fails(1, "utf-8")),
    ("conll-empty-file", conll_en, "eng.testa", b"", Fails(1, "no sentences")),
    ("conll-only-docstart", conll_en, "eng.testa", b"-DOCSTART- -X- -X- O\n\n", Fails(None, "no sentences")),
    # --- CoNLL-2003 German (Latin-1) ------------------------------------------------------------
    ("deu-latin1", conll_de, "deu.testa", b"M\xfcnster M\xfcnster NE I-NC I-LOC\n",
     Loads(((("Münster",), ("I-LOC",)),))),
    ("deu-utf8-bom-in-latin1-file", conll_de, "deu.testa", BOM + b"Ja ja ADV O O\n", Fails(1, "utf-8")),
    ("deu-bioes-prefix", conll_de, "deu.testa", b"Ja ja ADV O S-LOC\n", Fails(1, "S-LOC")),
    # --- ARK Twitter POS (word<TAB>tag) ----------------------------------------------------------
    ("twitter-bom", read_word_tag, "oct27.test", BOM + b"the\tD\ndog\tN\n", Loads(((("the", "dog"), ("D", "N")),))),
    ("twitter-trailing-tab", read_word_tag, "oct27.test", b"the\tD\t\ndog\tN\n", Loads(((("the", "dog"), ("D", "N")),))),
    ("twitter-crlf", read_word_tag, "oct27.test", b"the\tD\r\ndog\tN\r\n", Loads(((("the", "dog"), ("D", "N")),))),
    ("twitter-nbsp-in-token", read_word_tag, "oct27.test", "a\u00a0b\tN\n".encode(), Loads(((("a\u00a0b",), ("N",)),))),
    ("twitter-nbsp-only-token", read_word_tag, "oct27.test", "\u00a0\tG\nok\t!\n".encode(), Loads(((("\u00a0", "ok"), ("G", "!")),))),
    ("twitter-nul-in-token", read_word_tag, "oct27.test", b"the\tD\nd\x00g\tN\n", Fails(2, "control character")),
    ("twitter-one-column", read_word_tag, "oct27.test", b"the\tD\ndog\n", Fails(2, "expected 2")),
    ("twitter-space-separated", read_word_tag, "oct27.test", b"the D\n", Fails(1, "tab")),
    ("twitter-bom-mid-file", read_word_tag, "oct27.test", b"the\tD\n\n" + BOM + b"dog\tN\n", Fails(3, "byte-order mark")),
    # --- CoNLL-U -----------------------------------------------------------------------------------
    ("conllu-bom-before-comment", conllu, "x.conllu", BOM + b"# sent_id = 1\n" + U.encode(), Loads(UD)),
    ("conllu-bom-before-token", conllu, "x.conllu", BOM + U.encode(), Loads(UD)),
    ("conllu-trailing-tab", conllu, "x.conllu", U.replace("_\n", "_\t\n").encode(), Loads(UD)),
    ("conllu-crlf", conllu, "x.conllu", U.replace("\n", "\r\n").encode(), Loads(UD)),
    ("conllu-space-in-form", conllu, "x.conllu", U.replace("\tdog\t", "\tdog\u00a0house\t").encode(),
     Loads(((("The", "dog\u00a0house"), ("DET", "NOUN")),))),
    ("conllu-multiword-and-empty-node", conllu, "x.conllu",
     ("1-2\tThedog\t_\t_\t_\t_\t_\t_\t_\t_\n" + U + "2.1\tx\tx\tX\tX\t_\t_\t_\t_\t_\n").encode(), Loads(UD)),
    ("conllu-nul", conllu, "x.conllu", U.replace("dog\tdog", "d\x00g\tdog").encode(), Fails(2, "control character")),
    ("conllu-nine-columns", conllu, "x.conllu", b"1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\n", Fails(1, "expected 10")),
    ("conllu-no-upos", conllu, "x.conllu", U.replace("DET", "_").encode(), Fails(1, "UPOS")),
    ("conllu-bad-id", conllu, "x.conllu", U.replace("2\tdog", "x\tdog").encode(), Fails(2, "token id")),
    # --- CCG supertags -------------------------------------------------------------------------
    ("ccg-bom", read_supertags, "dev.tsv", BOM + b"Pierre\tNNP\tN/N\n", Loads(((("Pierre",), ("N/N",)),))),
    ("ccg-trailing-tab", read_supertags, "dev.tsv", b"Pierre\tNNP\tN/N\t\n", Loads(((("Pierre",), ("N/N",)),))),
    ("ccg-nul", read_supertags, "dev.tsv", b"Pierre\tNNP\tN/\x00N\n", Fails(1, "control character")),
    ("ccg-two-columns", read_supertags, "dev.tsv", b"Pierre\tN/N\n", Fails(1, "expected 3")),
    ("ccg-empty-column", read_supertags, "dev.tsv", b"Pierre\t\tN/N\n", Fails(1, "empty column")),
]


def _write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def assert_one_line_error(error: Exception, path: Path, line: int | None, words: str) -> None:
    message = str(error)
    assert "\n" not in message, message
    assert str(path) in message, message
    if line is not None:
        assert f"{path}:{line}:" in message, message
    assert words.lower() in message.lower(), message


@pytest.mark.parametrize("name, reader, filename, data, outcome", READER_CASES, ids=[c[0] for c in READER_CASES])
def test_reader_case(tmp_path, name, reader, filename, data, outcome):
    path = _write(tmp_path, filename, data)
    if isinstance(outcome, Loads):
        got = reader(path)
        assert got == [Sentence(words, tags) for words, tags in outcome.sentences]
    else:
        with pytest.raises(DataError) as error:
            reader(path)
        assert_one_line_error(error.value, path, outcome.line, outcome.words)


@pytest.mark.parametrize("name, reader, filename, data, outcome",
                         [c for c in READER_CASES if isinstance(c[4], Loads)],
                         ids=[c[0] for c in READER_CASES if isinstance(c[4], Loads)])
def test_reader_case_gzipped(tmp_path, name, reader, filename, data, outcome):
    """The same odd-but-valid files, gzip-compressed (large training files are)."""
    path = _write(tmp_path, filename + ".gz", gzip.compress(data))
    assert reader(path) == [Sentence(words, tags) for words, tags in outcome.sentences]


def test_truncated_gzip_names_the_file(tmp_path):
    path = _write(tmp_path, "train.tsv.gz", gzip.compress(b"Pierre\tNNP\tN/N\n" * 1000)[:-30])
    with pytest.raises(DataError) as error:
        read_supertags(path)
    assert_one_line_error(error.value, path, None, "cannot read")


def test_bioes_task_tags_from_iob1_file(tmp_path):
    """load_task converts the file's IOB1 to BIOES: adjacent same-type and single-token entities."""
    from core.data import load_task

    folder = tmp_path / "conll2003_en"
    folder.mkdir()
    text = b"Bob NNP B-NP I-PER\nAl NNP B-NP B-PER\nand CC O O\nNew NNP B-NP I-LOC\nYork NNP I-NP I-LOC\n"
    for name in ("eng.train", "eng.testa", "eng.testb"):
        (folder / name).write_bytes(BOM + text if name == "eng.testa" else text)
    task = load_task("conll2003_en", tmp_path)
    assert task.dev == task.train == [Sentence(("Bob", "Al", "and", "New", "York"), ("S-PER", "S-PER", "O", "B-LOC", "E-LOC"))]


# ----------------------------------------------------------------------------------------------
# GloVe vectors.

GLOVE_CASES = [
    ("glove-bom", BOM + b"the 0.5 -1\ndog 1 2\n", Loads({"the": [0.5, -1.0], "dog": [1.0, 2.0]})),
    ("glove-crlf", b"the 0.5 -1\r\ndog 1 2\r\n", Loads({"the": [0.5, -1.0], "dog": [1.0, 2.0]})),
    ("glove-trailing-space", b"the 0.5 -1 \ndog 1 2\n", Loads({"the": [0.5, -1.0], "dog": [1.0, 2.0]})),
    ("glove-nbsp-in-word", "new\u00a0york 3 4\nthe 0.5 -1\n".encode(), Loads({"the": [0.5, -1.0], "new\u00a0york": [3.0, 4.0]})),
    ("glove-nan", b"the 0.5 -1\ndog nan 2\n", Fails(2, "non-finite")),
    ("glove-inf", b"the 0.5 -1\ndog 1 inf\n", Fails(2, "non-finite")),
    ("glove-overflow", b"the 0.5 -1\ndog 1 1e39\n", Fails(2, "non-finite")),
    ("glove-wrong-count", b"the 0.5 -1\ndog 1\n", Fails(2, "expected 2 values")),
    ("glove-not-a-number", b"the 0.5 -1\ndog 1 x\n", Fails(2, "non-numeric")),
    ("glove-word2vec-header", b"2 2\nthe 0.5 -1\ndog 1 2\n", Fails(1, "header")),
    ("glove-nul", b"the 0.5 -1\nd\x00g 1 2\n", Fails(2, "control character")),
    ("glove-no-values", b"the\n", Fails(1, "no values")),
    ("glove-empty", b"", Fails(1, "no vectors")),
    ("glove-not-utf8", b"the 0.5 -1\nd\xffg 1 2\n", Fails(2, "utf-8")),
]


@pytest.mark.parametrize("name, data, outcome", GLOVE_CASES, ids=[c[0] for c in GLOVE_CASES])
@pytest.mark.parametrize("compress", [False, True], ids=["txt", "gz"])
def test_glove_case(tmp_path, name, data, outcome, compress):
    from core.embeddings import load_glove

    path = _write(tmp_path, "glove.txt" + (".gz" if compress else ""), gzip.compress(data) if compress else data)
    vocab = Vocab(["<pad>", "<unk>", "the", "dog", "new\u00a0york"], lowercase=False)
    if isinstance(outcome, Loads):
        matrix, found = load_glove(path, vocab)
        assert found == len(outcome.sentences)
        for word, vector in outcome.sentences.items():
            assert matrix[vocab.stoi[word]].tolist() == vector
    else:
        with pytest.raises(DataError) as error:
            load_glove(path, vocab)
        assert_one_line_error(error.value, path, outcome.line, outcome.words)


# ----------------------------------------------------------------------------------------------
# Checkpoints.


def _checkpoint(directory: Path) -> Path:
    from core.seq2seq import Seq2SeqTagger, TaggerConfig

    train = [Sentence(("the", "dog"), ("D", "N")), Sentence(("a", "cat"), ("D", "V"))]
    vocabs = build_vocabs(train)
    config = TaggerConfig(n_words=len(vocabs.words), n_chars=len(vocabs.chars), n_labels=len(vocabs.labels),
                          word_dim=4, char_filters=0, encoder_hidden=4, decoder_hidden=4, label_dim=4)
    torch.manual_seed(0)
    model = Seq2SeqTagger(config)
    meta = {"kind": "seq2seq", "model_config": config.to_dict(), "vocabs": vocabs.to_dict(),
            "task": {"name": "synthetic", "metric": "accuracy", "scheme": "pos"}}
    return save_checkpoint(directory, model, meta, {"progress": {"epoch": 1}, "optimizer": {}})


def _resave_weights(directory: Path, change) -> None:
    """Rewrite the weights with `change` applied, keeping the manifest's checksums consistent (the
    file is not corrupt: the numbers in it are bad)."""
    from core.seq2seq import Seq2SeqTagger, TaggerConfig

    checkpoint = load_checkpoint(directory)
    model = Seq2SeqTagger(TaggerConfig.from_dict(checkpoint.meta["model_config"]))
    model.load_state_dict(checkpoint.weights)
    with torch.no_grad():
        change(model)
    save_checkpoint(directory, model, checkpoint.meta, checkpoint.training_state)


def _edit_manifest(directory: Path, change) -> None:
    path = directory / "checkpoint.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def _nan(model):
    model.output.weight[1, 2] = float("nan")


def _inf(model):
    model.encoder.word_embedding.weight[0, 0] = float("-inf")


CHECKPOINT_CASES = [
    ("nan-weight", lambda d: _resave_weights(d, _nan), "output.weight"),
    ("inf-weight", lambda d: _resave_weights(d, _inf), "encoder.word_embedding.weight"),
    ("truncated-label-vocabulary", lambda d: _edit_manifest(d, lambda m: m["vocabs"]["labels"]["itos"].pop()), "labels"),
    ("truncated-word-vocabulary", lambda d: _edit_manifest(d, lambda m: m["vocabs"]["words"]["itos"].pop()), "words"),
    ("manifest-entry-without-checksum", lambda d: _edit_manifest(d, lambda m: m["files"]["weights"].pop("sha256")), "sha256"),
    ("manifest-files-not-a-table", lambda d: _edit_manifest(d, lambda m: m.update(files=["weights.pt"])), "files"),
    ("manifest-file-outside-directory", lambda d: _edit_manifest(d, lambda m: m["files"]["weights"].update(file="../x.pt")), "file"),
    ("manifest-not-json", lambda d: (d / "checkpoint.json").write_text("{not json"), "not valid JSON"),
    ("manifest-not-utf8", lambda d: (d / "checkpoint.json").write_bytes(b"\xff\xfe{}"), "checkpoint.json"),
    ("weights-corrupt", lambda d: next(d.glob("weights-*.pt")).write_bytes(b"junk"), "corrupt"),
    ("weights-missing", lambda d: next(d.glob("weights-*.pt")).unlink(), "missing"),
    ("model-config-missing", lambda d: _edit_manifest(d, lambda m: m.pop("model_config")), "model_config"),
]


@pytest.mark.parametrize("name, damage, words", CHECKPOINT_CASES, ids=[c[0] for c in CHECKPOINT_CASES])
def test_checkpoint_case(tmp_path, name, damage, words):
    from core.loading import load_tagger

    directory = _checkpoint(tmp_path / "ckpt")
    damage(directory)
    with pytest.raises(CheckpointError) as error:
        load_tagger(directory)
    message = str(error.value)
    assert "\n" not in message and str(directory) in message and words in message, message


def test_checkpoint_nan_in_training_state_names_it(tmp_path):
    directory = _checkpoint(tmp_path / "ckpt")
    checkpoint = load_checkpoint(directory)
    from core.seq2seq import Seq2SeqTagger, TaggerConfig

    model = Seq2SeqTagger(TaggerConfig.from_dict(checkpoint.meta["model_config"]))
    model.load_state_dict(checkpoint.weights)
    save_checkpoint(directory, model, checkpoint.meta, {"optimizer": {"state": {0: {"exp_avg": torch.tensor([1.0, math.nan])}}}})
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(directory)
    assert "optimizer.state.0.exp_avg" in str(error.value), error.value


def test_checkpoint_odd_but_valid_manifest_loads(tmp_path):
    """A manifest a user opened and saved again (a BOM, CRLF line ends) still loads."""
    from core.loading import load_tagger

    directory = _checkpoint(tmp_path / "ckpt")
    text = (directory / "checkpoint.json").read_text()
    (directory / "checkpoint.json").write_bytes(BOM + text.replace("\n", "\r\n").encode())
    model, vocabs, meta = load_tagger(directory)
    assert len(vocabs.labels) == model.n_labels == 3


# ----------------------------------------------------------------------------------------------
# Sweep specs.

SPEC = "name: t\ntask: synthetic\nstage: ce\nepochs: 2\nspace:\n  lr: {loguniform: [1.0e-3, 1.0e-2]}\n"


def _grid(n_params: int, n_values: int) -> str:
    lines = "".join(f"  {name}: {{grid: {list(range(1, n_values + 1))}}}\n"
                    for name in ("batch_size", "eval_beam_size", "seed", "decoder_hidden", "label_dim", "encoder_hidden")[:n_params])
    return "name: t\ntask: synthetic\nstage: ce\nepochs: 2\nsearch: {algorithm: grid}\nspace:\n" + lines


# (name, bytes, None for "loads" or (the start of the one problem line, words it must contain))
SPEC_CASES = [
    ("bom", BOM + SPEC.encode(), None),
    ("crlf", SPEC.replace("\n", "\r\n").encode(), None),
    ("tabs-after-values", SPEC.replace("epochs: 2", "epochs: 2\t").encode(), None),
    ("tabs-after-values-crlf", SPEC.replace("epochs: 2", "epochs: 2 \t").replace("\n", "\r\n").encode(), None),
    ("duplicate-top-level-key", (SPEC + "epochs: 3\n").encode(), ("spec", ["line 7", "epochs", "duplicate"])),
    ("duplicate-nested-key", (SPEC + "  lr: {choice: [0.1]}\n").encode(), ("spec", ["line 7", "lr", "duplicate"])),
    ("yaml-syntax-error", SPEC.replace("epochs: 2", "epochs: [2").encode(), ("spec", ["line"])),
    ("yaml-bad-indentation", (SPEC + "    oops: 1\n").encode(), ("spec", ["line 7"])),
    ("not-utf8", SPEC.replace("name: t", "name: t  # caf\xe9").encode("latin-1"), ("spec", ["utf-8", "line 1"])),
    ("empty-file", b"", ("spec", ["mapping"])),
    ("empty-space", SPEC.split("space:")[0].encode() + b"space: {}\n", ("space", ["empty"])),
    ("null-space", SPEC.split("space:")[0].encode() + b"space:\n", ("space", [])),
    ("float-for-int-fixed", (SPEC + "fixed: {batch_size: 32.5}\n").encode(), ("fixed.batch_size", ["integer"])),
    ("whole-float-for-int-fixed", (SPEC + "fixed: {batch_size: 32.0}\n").encode(), ("fixed.batch_size", ["integer"])),
    ("bool-for-int-fixed", (SPEC + "fixed: {batch_size: true}\n").encode(), ("fixed.batch_size", ["integer"])),
    ("float-for-int-choice", (SPEC + "  decoder_hidden: {choice: [16, 32.5]}\n").encode(), ("space.decoder_hidden", ["integer"])),
    ("float-for-int-epochs", SPEC.replace("epochs: 2", "epochs: 2.0").encode(), ("epochs", [])),
    ("float-for-int-num-samples", (SPEC + "num_samples: 2.5\n").encode(), ("num_samples", [])),
    ("string-for-float", (SPEC + "fixed: {clip: high}\n").encode(), ("fixed.clip", ["number"])),
    ("lr-overflows-float32", SPEC.replace("1.0e-2", "1.0e+40").encode(), ("space.lr", ["lr"])),
    ("cpu-tiny", (SPEC + "resources: {cpu: 1.0e-9}\n").encode(), ("resources.cpu", ["0.0001"])),
    ("cpu-infinite", (SPEC + "resources: {cpu: .inf}\n").encode(), ("resources.cpu", ["finite"])),
    ("cpu-nan", (SPEC + "resources: {cpu: .nan}\n").encode(), ("resources.cpu", [])),
    ("gpu-infinite", (SPEC + "resources: {gpu: .inf}\n").encode(), ("resources.gpu", [])),
    ("custom-resource-infinite", (SPEC + "resources: {custom: {slot: .inf}}\n").encode(), ("resources.custom", ["slot", "finite"])),
    ("custom-resource-named-cpu", (SPEC + "resources: {custom: {CPU: 1}}\n").encode(), ("resources.custom", ["CPU", "resources.cpu"])),
    ("grid-of-a-million", _grid(6, 10).encode(), ("space", ["1000000 trials", "max_trials"])),
    ("samples-times-grid", (_grid(2, 10) + "num_samples: 20\n").encode(), ("space", ["2000 trials", "max_trials"])),
    ("grid-confirmed", (_grid(2, 10) + "num_samples: 20\nmax_trials: 2000\n").encode(), None),
    ("max-trials-beyond-hard-cap", (_grid(6, 10) + "max_trials: 1000000\n").encode(), ("max_trials", [])),
]


@pytest.mark.parametrize("name, data, outcome", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_spec_case(tmp_path, name, data, outcome):
    from sweeps.spec import SpecError, load_spec

    path = _write(tmp_path, "spec.yaml", data)
    if outcome is None:
        assert load_spec(path, storage=tmp_path).name == "t"
        return
    field, words = outcome
    with pytest.raises(SpecError) as error:
        load_spec(path, storage=tmp_path)
    problems = error.value.problems
    assert len(problems) == 1 and "\n" not in problems[0], problems
    assert problems[0].startswith(f"{field}:"), problems
    for word in words:
        assert word.lower() in problems[0].lower(), problems


# ----------------------------------------------------------------------------------------------
# The command line: exit 2, one line, nothing written, before the expensive part.

SMALL = ["--encoder-hidden", "8", "--decoder-hidden", "8", "--label-dim", "4", "--word-dim", "8", "--char-filters", "0",
         "--threads", "1", "--quiet"]


def beamtune(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "sweeps.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)


def assert_cli_error(result: subprocess.CompletedProcess, *words: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    for word in words:
        assert word in lines[0], lines[0]


def _conll_root(root: Path) -> Path:
    folder = root / "conll2003_en"
    folder.mkdir(parents=True)
    sentences = ["-DOCSTART- -X- -X- O\n",
                 "Bob NNP B-NP I-PER\nAl NNP B-NP B-PER\nmet VBD B-VP O\nSue NNP B-NP I-PER\n",
                 "EU NNP B-NP I-ORG\nrejects VBZ B-VP O\nGerman JJ B-NP I-MISC\ncall NN I-NP O\n",
                 "New NNP B-NP I-LOC\nYork NNP I-NP I-LOC\nand CC O O\nParis NNP B-NP I-LOC\nParis NNP B-NP B-LOC\n"]
    for name in ("eng.train", "eng.testa", "eng.testb"):
        (folder / name).write_text("\n".join(sentences * (8 if name == "eng.train" else 1)))
    return root


def _train_ner(base: Path, task: str) -> tuple[Path, Path]:
    root = _conll_root(base / "data")
    out = base / "model"
    result = beamtune("train", "--task", task, "--data-root", root, "--epochs", "2", "--out", out, *SMALL)
    assert result.returncode == 0, result.stderr[-2000:]
    return root, out


@pytest.fixture(scope="module")
def ner_model(tmp_path_factory):
    """A tiny NER tagger trained on a CoNLL-2003-format root with adjacent same-type entities."""
    return _train_ner(tmp_path_factory.mktemp("ner"), "conll2003_en")


@pytest.mark.slow  # a subprocess that trains, or imports Ray
@pytest.mark.parametrize("task", ["conll2003_en", "conll2003_en_iob1"])  # trained in BIOES / in the files' IOB1
def test_decode_predictions_are_conlleval_input(task, ner_model, tmp_path):
    """The predictions file is in the data's own scheme (IOB1), so the original conlleval reads it
    to the F1 `decode` reports, and its gold column is the file's own tags."""
    from tests.conlleval import conlleval

    root, model = ner_model if task == "conll2003_en" else _train_ner(tmp_path, task)
    file = tmp_path / "pred.txt"
    result = beamtune("decode", "--checkpoint", model, "--data-root", root, "--split", "test", "--predictions", file,
                      "--json", "--quiet", "--threads", "1")
    assert result.returncode == 0, result.stderr[-2000:]
    reported = json.loads(result.stdout)
    lines = file.read_text().splitlines()
    gold_file = [line.split()[-1] for line in (root / "conll2003_en" / "eng.testb").read_text().splitlines()
                 if line.strip() and not line.startswith("-DOCSTART-")]
    assert [line.split()[1] for line in lines if line.strip()] == gold_file
    assert conlleval(lines)["f1"] == pytest.approx(reported["f1"], abs=1e-12)


@pytest.mark.slow  # a subprocess that trains, or imports Ray
def test_decode_missing_predictions_folder_fails_before_decoding(ner_model, tmp_path):
    root, model = ner_model
    target = tmp_path / "no" / "such" / "pred.txt"
    result = beamtune("decode", "--checkpoint", model, "--data-root", root, "--predictions", target, "--quiet")
    assert_cli_error(result, str(target.parent))
    assert not (tmp_path / "no").exists()


@pytest.mark.slow  # a subprocess that trains, or imports Ray
def test_decode_predictions_path_is_a_directory(ner_model, tmp_path):
    root, model = ner_model
    result = beamtune("decode", "--checkpoint", model, "--data-root", root, "--predictions", tmp_path, "--quiet")
    assert_cli_error(result, str(tmp_path))


@pytest.mark.slow  # a CLI subprocess: importing torch and the CLI takes seconds
def test_gd_oracle_out_in_missing_folder_fails_before_the_grid(tmp_path):
    target = tmp_path / "no" / "oracle.parquet"
    result = beamtune("gd-oracle", "--checkpoint", tmp_path / "any", "--out", target, "--quiet")
    assert_cli_error(result, str(target.parent))


@pytest.mark.slow  # a CLI subprocess: importing torch and the CLI takes seconds
def test_train_out_is_an_existing_file(tmp_path):
    out = tmp_path / "model"
    out.write_text("keep me")
    result = beamtune("train", "--task", "synthetic", "--epochs", "1", "--out", out, *SMALL)
    assert_cli_error(result, str(out))
    assert out.read_text() == "keep me"


@pytest.mark.slow  # a CLI subprocess: importing torch and the CLI takes seconds
def test_train_lr_that_overflows_float32(tmp_path):
    result = beamtune("train", "--task", "synthetic", "--epochs", "1", "--lr", "1e40", "--out", tmp_path / "m", *SMALL)
    assert_cli_error(result, "lr")
    assert not (tmp_path / "m").exists()


@pytest.mark.slow  # a CLI subprocess: importing torch and the CLI takes seconds
@pytest.mark.parametrize("name, damage, words", CHECKPOINT_CASES[:3], ids=[c[0] for c in CHECKPOINT_CASES[:3]])
def test_decode_bad_checkpoint(tmp_path, name, damage, words):
    directory = _checkpoint(tmp_path / "ckpt")
    damage(directory)
    result = beamtune("decode", "--checkpoint", directory, "--quiet", "--threads", "1")
    assert_cli_error(result, str(directory), words)


def _sweep_spec(tmp_path: Path, **changes) -> Path:
    data = {"name": "t", "task": "synthetic", "stage": "ce", "epochs": 1, "fixed": {"batch_size": 8}, **changes}
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.slow  # a subprocess that trains, or imports Ray
def test_sweep_with_unparsable_data_fails_before_ray(tmp_path):
    root = tmp_path / "data" / "twitter_pos"
    root.mkdir(parents=True)
    (root / "oct27.traindev").write_text("the\tD\ndog\tN\n")
    (root / "oct27.test").write_text("the\tD\ndog\n")  # line 2: one column
    (root / "daily547.conll").write_text("the\tD\n")
    spec = _sweep_spec(tmp_path, task="twitter_pos", data_root=str(tmp_path / "data"))
    result = beamtune("sweep", spec, "--storage", tmp_path / "sweeps", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--quiet")
    assert_cli_error(result, f"{root / 'oct27.test'}:2:")
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "m.db").exists()


def test_embeddings_file_resolved_under_the_data_root(tmp_path, monkeypatch):
    """A spec's embeddings path as a trial resolves it (as given, else under the data root); one
    line per missing file, fixed or searched."""
    from sweeps.preflight import embeddings_problems
    from sweeps.spec import parse_spec

    (tmp_path / "data" / "embeddings").mkdir(parents=True)
    (tmp_path / "data" / "embeddings" / "g.txt").write_text("the 0.1 0.2\n")
    monkeypatch.setenv("BEAMTUNE_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)

    def problems(**changes):
        return embeddings_problems(parse_spec({"name": "t", "task": "synthetic", "stage": "ce", "epochs": 1, **changes}))

    assert problems(fixed={"embeddings": "embeddings/g.txt"}) == []
    assert problems(fixed={"embeddings": str(tmp_path / "data" / "embeddings" / "g.txt")}) == []
    assert problems(fixed={"embeddings": "embeddings/G.txt"}) == [
        f"fixed.embeddings: embeddings/G.txt: no such file (as given, or under the data root {tmp_path / 'data'})"]
    assert problems(space={"embeddings": {"grid": ["embeddings/g.txt", "nope.txt"]}}, search={"algorithm": "grid"}) == [
        f"space.embeddings: nope.txt: no such file (as given, or under the data root {tmp_path / 'data'})"]


@pytest.mark.slow  # a subprocess that imports Ray
def test_sweep_with_missing_embeddings_fails_before_ray(tmp_path):
    spec = _sweep_spec(tmp_path, fixed={"batch_size": 8, "embeddings": "embeddings/glove.nope.txt.gz"}, data_root=str(tmp_path))
    result = beamtune("sweep", spec, "--storage", tmp_path / "sweeps", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--quiet")
    assert_cli_error(result, "fixed.embeddings", "embeddings/glove.nope.txt.gz: no such file")
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.slow  # a subprocess that trains, or imports Ray
def test_sweep_with_corrupt_warm_start_fails_before_ray(tmp_path):
    checkpoint = _checkpoint(tmp_path / "ce")
    next(checkpoint.glob("weights-*.pt")).write_bytes(b"junk")
    spec = _sweep_spec(tmp_path, warm_start={"checkpoint": str(checkpoint)})
    result = beamtune("sweep", spec, "--storage", tmp_path / "sweeps", "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--quiet")
    assert_cli_error(result, "warm_start.checkpoint", "corrupt")
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "m.db").exists()


@pytest.mark.slow  # a subprocess that trains, or imports Ray
def test_sweep_asking_more_cpus_than_local_ray_has(tmp_path):
    spec = _sweep_spec(tmp_path, resources={"cpu": 64})
    result = beamtune("sweep", spec, "--num-cpus", "2", "--storage", tmp_path / "sweeps",
                      "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--quiet", timeout=120)
    assert_cli_error(result, "resources.cpu", "64")
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_sweep_asking_for_a_gpu_device_without_gpus_is_a_spec_error(tmp_path):
    spec = _sweep_spec(tmp_path, fixed={"batch_size": 8, "device": "cuda:0"})
    result = beamtune("sweep", spec, "--storage", tmp_path / "sweeps", "--tracking-uri", f"sqlite:///{tmp_path}/m.db")
    assert_cli_error(result, "fixed.device", "resources.gpu")
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.slow
def test_sweep_whose_every_trial_fails_exits_nonzero(tmp_path):
    """A failure no pre-flight check can see (here a loss that diverges: SGD at the largest rate a
    spec accepts, no clipping) still must not end in exit status 0 when no trial produced anything."""
    spec = _sweep_spec(tmp_path, fixed={"batch_size": 8, "optimizer": "sgd", "lr": 3.0e37, "clip": 0.0},
                       max_failures=0)
    result = beamtune("sweep", spec, "--num-cpus", "1", "--storage", tmp_path / "sweeps",
                      "--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--quiet", timeout=600)
    assert result.returncode == 1, (result.returncode, result.stderr[-3000:])
    assert "error: all 1 trials failed: " in result.stderr and "loss is" in result.stderr  # the cause, in one line


@pytest.mark.slow  # a CLI subprocess: importing torch and the CLI takes seconds
def test_sweep_spec_syntax_error_one_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes(b"name: t\ntask: synthetic\nstage: [ce\nepochs: 1\n")
    result = beamtune("sweep", path, "--storage", tmp_path / "sweeps")
    assert_cli_error(result, str(path), "line")


@pytest.mark.slow  # a CLI subprocess: importing torch and the CLI takes seconds
def test_sweep_spec_not_utf8_one_line(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_bytes("name: t  # caf\xe9\ntask: synthetic\nstage: ce\nepochs: 1\n".encode("latin-1"))
    result = beamtune("sweep", path, "--storage", tmp_path / "sweeps")
    assert_cli_error(result, str(path), "UTF-8")


# ----------------------------------------------------------------------------------------------
# Predictions files: tags conlleval can read.

ADJACENT = [  # gold BIOES, predicted BIOES (predictions may be invalid BIOES)
    (["S-PER", "S-PER", "O", "B-LOC", "E-LOC", "B-LOC", "E-LOC"], ["S-PER", "S-PER", "O", "B-LOC", "E-LOC", "S-LOC", "O"]),
    (["S-PER", "B-PER", "E-PER", "S-PER"], ["B-PER", "E-PER", "S-PER", "S-PER"]),
    (["S-ORG"], ["S-ORG"]),
    (["O", "S-MISC", "S-MISC", "S-MISC"], ["I-MISC", "E-MISC", "E-MISC", "B-MISC"]),
]


def test_conlleval_cannot_read_bioes():
    """Why the file must not hold BIOES: the original script merges adjacent same-type entities."""
    from tests.conlleval import conlleval

    assert conlleval(["Bob S-PER S-PER", "Al S-PER S-PER"])["found_correct"] == 1  # two entities, counted as one


@pytest.mark.parametrize("scheme", ["iob1", "iob2"])
@pytest.mark.parametrize("gold, pred", ADJACENT)
def test_file_tags_keep_the_entities(scheme, gold, pred):
    """Converted gold and predicted tags, read by conlleval, give exactly the chunks span F1 counts."""
    from core.metrics import file_tags, span_f1
    from tests.conlleval import conlleval

    lines = [f"w {g} {p}" for g, p in zip(file_tags(gold, scheme), file_tags(pred, scheme))]
    assert conlleval(lines)["f1"] == pytest.approx(span_f1([gold], [pred])["f1"], abs=1e-12)
    assert conlleval(lines)["found_correct"] == sum(t[0] in "BS" for t in gold)


def test_file_tags_every_short_sequence():
    """Brute force: every tag sequence of length 3 over two types, valid or not, as a prediction
    against valid gold sequences: conlleval on the IOB1 / IOB2 file equals span F1 on BIOES."""
    import itertools

    from core.metrics import file_tags, span_f1
    from tests.conlleval import conlleval

    alphabet = ["O", "B-A", "I-A", "E-A", "S-A", "B-B", "E-B", "S-B"]
    golds = [["S-A", "S-A", "S-B"], ["B-A", "E-A", "S-A"], ["O", "S-B", "S-B"], ["B-B", "I-B", "E-B"]]
    for gold in golds:
        for pred in itertools.product(alphabet, repeat=len(gold)):
            expected = span_f1([gold], [list(pred)])
            for scheme in ("iob1", "iob2"):
                lines = [f"w {g} {p}" for g, p in zip(file_tags(gold, scheme), file_tags(list(pred), scheme))]
                got = conlleval(lines)
                assert (got["precision"], got["recall"]) == pytest.approx((expected["precision"], expected["recall"])), (gold, pred, scheme)
