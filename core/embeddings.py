"""Pretrained word vectors (GloVe text format) for the word vocabulary.

The GloVe 6B file has 400,000 lines (171 MB uncompressed). Both functions
stream it line by line and parse numbers only for vocabulary words, so loading
needs memory for the vocabulary's rows only.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from core.data import PAD, UNK, DataError, Vocab, _iter_lines


def _glove_lines(path: Path) -> Iterator[tuple[int, str, str]]:
    """Yield ``(line_number, word, values_text)`` for each non-blank line.

    Words are split from their values at the first ASCII space only: GloVe words may contain
    non-breaking spaces. A word2vec-style ``"COUNT DIM"`` first line is an error, not a word.
    """
    first = True
    for lineno, line in _iter_lines(path, "utf-8"):
        if not line.strip(" \t"):
            continue
        word, sep, values = line.rstrip(" \t").partition(" ")
        if not sep:
            raise DataError(f"{path}:{lineno}: expected 'word v1 ... vd', got no values")
        if first and word.isdigit() and values.isdigit():
            raise DataError(f"{path}:{lineno}: a word2vec header ({line!r}); GloVe text files have none: "
                            "remove the first line")
        first = False
        yield lineno, word, values


def load_glove(
    path: str | os.PathLike,
    vocab: Vocab,
    *,
    dim: int | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """Embedding matrix for ``vocab`` from a GloVe text file (``.gz`` read transparently).

    Returns ``(matrix, found)``: ``matrix`` is ``(len(vocab), d)`` float32 and
    ``found`` is the number of vocabulary words (specials excluded) that have a
    vector in the file. ``d`` is inferred from the first line (``dim``, if given,
    must agree).

    GloVe 6B is lowercased, so a vocabulary word is matched by its lowercase
    form. Rows without a vector get N(0, std^2) noise from a generator seeded by
    ``seed``, where std is that of the vectors found (an estimate of the file's
    std that avoids parsing all 400k lines); the PAD row is zeros.

    A line with the wrong number of values raises ``DataError("path:line: ...")``.
    Values are parsed only for vocabulary words, so a non-number is reported
    only on those lines.
    """
    path = Path(path)
    # Vocabulary rows wanted for each lowercase word form (several rows when a
    # case-keeping vocabulary has "Paris" and "paris"). Specials keep their init.
    wanted: dict[str, list[int]] = {}
    for index, token in enumerate(vocab.itos):
        if token not in (PAD, UNK):
            wanted.setdefault(token.lower(), []).append(index)

    vectors: dict[int, np.ndarray] = {}
    d = dim
    for lineno, word, values in _glove_lines(path):
        n_values = values.count(" ") + 1
        if d is None:
            d = n_values
        if n_values != d:
            raise DataError(f"{path}:{lineno}: expected {d} values after the word, got {n_values}")
        rows = wanted.get(word.lower())
        if rows is None:
            continue
        try:
            with np.errstate(over="ignore"):  # a value past float32's range becomes inf, refused below
                vector = np.array(values.split(" "), dtype=np.float32)
        except ValueError:
            raise DataError(f"{path}:{lineno}: non-numeric value in the vector of {word!r}") from None
        if not np.isfinite(vector).all():
            # A NaN or inf vector would turn the first training loss into NaN; catch it at its line.
            raise DataError(f"{path}:{lineno}: non-finite value (nan or inf) in the vector of {word!r}")
        for row in rows:
            vectors.setdefault(row, vector)  # first line wins if a file repeats a word
    if d is None:
        raise DataError(f"{path}:1: no vectors in file")

    found = np.stack(list(vectors.values())) if vectors else np.zeros((0, d), np.float32)
    std = float(found.std()) if found.size > 1 else 0.1
    generator = torch.Generator().manual_seed(seed)
    matrix = torch.randn(len(vocab), d, generator=generator) * std
    for row, vector in vectors.items():
        matrix[row] = torch.from_numpy(vector)
    if PAD in vocab.stoi:
        matrix[vocab.stoi[PAD]] = 0.0
    return matrix, len(vectors)


def glove_words(path: str | os.PathLike) -> set[str]:
    """All words of a GloVe text file (e.g. for ``build_vocabs(extra_words=...)``)."""
    return {word for _, word, _ in _glove_lines(Path(path))}
