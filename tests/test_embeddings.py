"""Tests for core/embeddings.py on tiny GloVe files and (if present) the real GloVe 6B 50d."""

from __future__ import annotations

import gzip
import os
import time
from pathlib import Path

import pytest
import torch

from core.data import PAD, UNK, DataError, Vocab
from core.embeddings import glove_words, load_glove

GLOVE = "the 0.1 0.2 0.3\ncat 1 2 3\nparis -1 -2 -3.5e-1\nzebra 4 5 6\n"


def glove_file(tmp_path: Path, text: str = GLOVE, name: str = "glove.txt") -> Path:
    path = tmp_path / name
    data = text.encode()
    path.write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    return path


class TestLoadGlove:
    def test_found_rows_pad_and_shape(self, tmp_path):
        vocab = Vocab([PAD, UNK, "cat", "dog", "the"], lowercase=True)
        matrix, found = load_glove(glove_file(tmp_path), vocab)
        assert matrix.shape == (5, 3) and matrix.dtype == torch.float32
        assert found == 2
        assert torch.equal(matrix[0], torch.zeros(3))
        assert matrix[2].tolist() == [1.0, 2.0, 3.0]
        assert torch.allclose(matrix[4], torch.tensor([0.1, 0.2, 0.3]))
        assert matrix[1].abs().sum() > 0 and matrix[3].abs().sum() > 0  # random, not zeros

    def test_random_rows_are_seeded(self, tmp_path):
        vocab = Vocab([PAD, UNK, "dog"], lowercase=True)
        path = glove_file(tmp_path)
        assert torch.equal(load_glove(path, vocab)[0], load_glove(path, vocab)[0])
        assert not torch.equal(load_glove(path, vocab)[0], load_glove(path, vocab, seed=1)[0])

    def test_lowercase_aware_lookup_and_gzip(self, tmp_path):
        vocab = Vocab([PAD, UNK, "Paris", "CAT"], lowercase=False)
        matrix, found = load_glove(glove_file(tmp_path, name="glove.txt.gz"), vocab)
        assert found == 2
        assert torch.allclose(matrix[2], torch.tensor([-1.0, -2.0, -0.35]))

    def test_dim_must_agree(self, tmp_path):
        with pytest.raises(DataError, match=r"glove.txt:1: expected 50 values after the word, got 3"):
            load_glove(glove_file(tmp_path), Vocab([PAD, UNK]), dim=50)

    def test_wrong_number_of_values(self, tmp_path):
        path = glove_file(tmp_path, "the 0.1 0.2 0.3\ncat 1 2\n")
        with pytest.raises(DataError, match=r"glove.txt:2: expected 3 values after the word, got 2"):
            load_glove(path, Vocab([PAD, UNK, "cat"]))

    def test_non_float_value(self, tmp_path):
        path = glove_file(tmp_path, "the 0.1 0.2 0.3\ncat 1 x 3\n")
        with pytest.raises(DataError, match=r"glove.txt:2: non-numeric"):
            load_glove(path, Vocab([PAD, UNK, "cat"]))

    def test_empty_file(self, tmp_path):
        with pytest.raises(DataError, match=r"glove.txt:1: no vectors"):
            load_glove(glove_file(tmp_path, ""), Vocab([PAD, UNK]))


class TestGloveWords:
    def test_words(self, tmp_path):
        assert glove_words(glove_file(tmp_path)) == {"the", "cat", "paris", "zebra"}


class TestRealGlove:
    def test_glove_6b_50d_few_words(self):
        root = Path(os.environ.get("BEAMTUNE_DATA") or Path(__file__).resolve().parents[1] / ".." / "shared" / "data")
        path = root / "embeddings" / "glove.6B.50d.txt.gz"
        if not path.is_file():
            pytest.skip(f"GloVe not found at {path}")
        vocab = Vocab([PAD, UNK, "the", "Paris", "qwzxkjv-not-a-word"], lowercase=False)
        start = time.perf_counter()
        matrix, found = load_glove(path, vocab)
        assert time.perf_counter() - start < 15
        assert matrix.shape == (5, 50) and found == 2
        assert matrix[2, 0].item() == pytest.approx(0.418)  # first value of "the" in the file
        assert torch.equal(matrix[0], torch.zeros(50))
        # Unfound rows use the found vectors' spread, not a fixed tiny std.
        assert 0.05 < matrix[4].std().item() < 2.0
