"""Data layer: corpus readers, tag schemes, tasks, vocabularies and batches.

Reading order for a newcomer:

1. ``DataError`` and ``Sentence``: what every reader returns or raises.
2. Readers (``read_conll2003``, ``read_word_tag``, ``read_conllu``, ``read_supertags``).
   They all go through ``_read_sentences``, which handles gzip, decoding and
   ``path:line`` error messages in one place.
3. Tag schemes (IOB1 -> BIO -> BIOES and back).
4. The synthetic task (a seeded generator where search matters).
5. Tasks: ``load_task`` maps a task name to files under the data root
   (see the data folder's README.md for formats and counts).
6. ``Vocab`` / ``Vocabs`` and ``Batch`` / ``make_batches``: from strings to tensors.
"""

from __future__ import annotations

import gzip
import math
import os
import random
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import torch

from core.masks import lengths_to_mask


class DataError(ValueError):
    """Bad or missing input data.

    The message is one line and names the file and, where there is one, the line,
    e.g. ``"eng.train:1234: expected 4 columns, got 3"``, so the CLI can print it
    without a traceback.
    """


@dataclass(frozen=True)
class Sentence:
    """One tagged sentence; ``words`` and ``tags`` have the same length (>= 1)."""

    words: tuple[str, ...]
    tags: tuple[str, ...]


# ---------------------------------------------------------------------------
# Readers
# ---------------------------------------------------------------------------


class _LineError(Exception):
    """Raised by a line parser; ``_read_sentences`` prefixes it with ``path:line``."""


def _open_binary(path: Path):
    """Open ``path`` for reading bytes, decompressing when the name ends in ``.gz``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


# C0 control characters other than tab, and DEL: never part of a token in any corpus here (a NUL
# is a sign of a binary or corrupt file), so they are an error rather than silently a new word.
_CONTROL_BYTES = bytes([*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F])
_BOM = "\ufeff"
# Field separators: ASCII space and tab only. str.split() with no argument also splits at a
# non-breaking or ideographic space, which real tokens contain ("New\u00a0York").
_ASCII_SPACE = " \t"


def _iter_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` with the newline stripped; line numbers start at 1.

    Lines are decoded one at a time so a decoding error can name its line. A UTF-8
    byte-order mark at the start of the file is dropped (editors on Windows write one); one
    anywhere else (files concatenated?) and control characters are errors naming the line.
    """
    lineno = 0
    try:
        with _open_binary(path) as f:
            for lineno, raw in enumerate(f, start=1):
                try:
                    text = raw.decode(encoding)
                except UnicodeDecodeError as e:
                    raise DataError(
                        f"{path}:{lineno}: cannot decode byte 0x{raw[e.start]:02x} as {encoding} "
                        f"(the file is expected to be {encoding})"
                    ) from None
                # Latin-1 decodes any byte, so a UTF-8 file given as Latin-1 would silently
                # turn "ß" into "ÃŸ". Real Latin-1 German text almost never forms valid
                # multi-byte UTF-8, so a non-ASCII line that is valid UTF-8 gives it away.
                if encoding == "latin-1" and not raw.isascii() and _is_utf8(raw):
                    raise DataError(
                        f"{path}:{lineno}: line is UTF-8 but the file is expected to be "
                        "latin-1 (ISO-8859-1); was it re-encoded?"
                    )
                if lineno == 1 and text.startswith(_BOM):
                    text = text[1:]
                if _BOM in text:
                    raise DataError(f"{path}:{lineno}: byte-order mark (U+FEFF) inside the file, not at its "
                                    "start (were files concatenated?)")
                control = _control_char(raw)
                if control is not None:
                    raise DataError(f"{path}:{lineno}: control character 0x{control:02x} in the line "
                                    "(binary or corrupt file?)")
                yield lineno, text.rstrip("\r\n")
    except (OSError, EOFError) as e:  # corrupt or truncated gzip, unreadable file
        raise DataError(f"{path}:{lineno + 1}: cannot read: {e}") from None


def _control_char(raw: bytes) -> int | None:
    """The first control byte of a raw line (a CR only when not part of its line end), or None.
    bytes.translate runs at memory speed: a regex here made reading GloVe 2.5x slower."""
    if len(raw.translate(None, _CONTROL_BYTES)) != len(raw):
        return next(b for b in raw if b in _CONTROL_BYTES)
    cr = raw.find(b"\r")
    if cr >= 0 and raw[cr:] not in (b"\r", b"\r\n"):
        return 0x0D
    return None


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _read_sentences(
    path: str | os.PathLike,
    parse: Callable[[str], tuple[str, str] | None],
    *,
    encoding: str = "utf-8",
) -> list[Sentence]:
    """Split a one-token-per-line file into sentences at blank lines.

    ``parse(line)`` returns ``(word, tag)``, or ``None`` for a line to skip
    (comments, ``-DOCSTART-``, multi-word tokens), or raises ``_LineError``.
    Blocks that end up with no tokens (e.g. the blank line after ``-DOCSTART-``)
    are dropped, so every returned sentence has at least one token.
    """
    path = Path(path)
    sentences: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []
    lineno = 0
    for lineno, line in _iter_lines(path, encoding):
        if not line.strip(_ASCII_SPACE):
            if words:
                sentences.append(Sentence(tuple(words), tuple(tags)))
                words, tags = [], []
            continue
        try:
            item = parse(line)
        except _LineError as e:
            raise DataError(f"{path}:{lineno}: {e}") from None
        if item is not None:
            words.append(item[0])
            tags.append(item[1])
    if words:  # last sentence without a trailing blank line
        sentences.append(Sentence(tuple(words), tuple(tags)))
    if not sentences:
        raise DataError(f"{path}:{max(lineno, 1)}: no sentences in file ({lineno} lines read)")
    return sentences


def _split(line: str, sep: str | None, expected: int, names: str) -> list[str]:
    """Split ``line`` into exactly ``expected`` non-empty fields or raise ``_LineError``.

    Trailing spaces, and tabs after the last column, are not a column (editors leave them)."""
    fields = line.rstrip(" ").split(sep)
    while len(fields) > expected and not fields[-1].strip(_ASCII_SPACE):
        fields.pop()
    if len(fields) != expected:
        what = "tab-separated" if sep == "\t" else "space-separated"
        raise _LineError(f"expected {expected} {what} columns, got {len(fields)} ({names})")
    if any(not f for f in fields):
        raise _LineError(f"empty column in {line!r} (expected {names})")
    return fields


def read_conll2003(path: str | os.PathLike, *, lang: str = "en") -> list[Sentence]:
    """Read a CoNLL-2003 NER file; tags are returned as in the file (IOB1), and a tag that is
    not IOB1 (a BIOES ``S-``/``E-`` prefix, no type) is an error naming its line.

    ``lang="en"``: 4 space-separated columns ``word POS chunk NER``, ASCII/UTF-8.
    ``lang="de"``: 5 columns ``word lemma POS chunk NER``, Latin-1.
    ``-DOCSTART-`` lines are skipped.
    """
    if lang == "en":
        ncols, encoding, names = 4, "utf-8", "word POS chunk NER"
    elif lang == "de":
        ncols, encoding, names = 5, "latin-1", "word lemma POS chunk NER"
    else:
        raise DataError(f"{path}: unknown CoNLL-2003 language {lang!r} (expected 'en' or 'de')")

    def parse(line: str) -> tuple[str, str] | None:
        if line.startswith("-DOCSTART-"):
            return None
        # Columns are separated by single spaces (some copies use tabs); a non-ASCII space is
        # part of its token. Trailing spaces are tolerated.
        fields = re.split(r"[ \t]+", line.strip(_ASCII_SPACE))
        if len(fields) != ncols:
            raise _LineError(f"expected {ncols} columns, got {len(fields)} ({names})")
        return fields[0], _iob1_tag(fields[-1])

    return _read_sentences(path, parse, encoding=encoding)


def _iob1_tag(tag: str) -> str:
    """``tag`` if it is an IOB1 entity tag (``O``, ``I-TYPE`` or ``B-TYPE``), else ``_LineError``."""
    prefix, sep, kind = tag.partition("-")
    if tag == "O" or (sep and kind and prefix in ("B", "I")):
        return tag
    hint = " (E-/S- are BIOES prefixes)" if sep and kind and prefix in ("E", "S") else ""
    raise _LineError(f"entity tag {tag!r} is not IOB1: expected O, I-TYPE or B-TYPE{hint}")


def read_word_tag(path: str | os.PathLike) -> list[Sentence]:
    """Read ARK Twitter POS data: ``word<TAB>tag`` per line, UTF-8."""

    def parse(line: str) -> tuple[str, str]:
        word, tag = _split(line, "\t", 2, "word, tag")
        return word, tag

    return _read_sentences(path, parse)


_CONLLU_COLUMNS = {"upos": 3, "xpos": 4}


def read_conllu(path: str | os.PathLike, *, column: str = "upos") -> list[Sentence]:
    """Read a CoNLL-U file, tagging syntactic words with UPOS (column 4) or XPOS (column 5).

    Comment lines (``#``), multi-word-token ranges (``1-2``) and empty nodes
    (``8.1``) are skipped, matching the README's word counts.
    """
    if column not in _CONLLU_COLUMNS:
        raise DataError(f"{path}: unknown CoNLL-U column {column!r} (expected 'upos' or 'xpos')")
    tag_index = _CONLLU_COLUMNS[column]

    def parse(line: str) -> tuple[str, str] | None:
        if line.startswith("#"):
            return None
        fields = _split(line, "\t", 10, "ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC")
        token_id = fields[0]
        if "-" in token_id or "." in token_id:
            return None
        if not token_id.isdigit():
            raise _LineError(f"bad token id {token_id!r}")
        tag = fields[tag_index]
        if tag == "_":
            raise _LineError(f"no {column.upper()} tag (column is '_')")
        return fields[1], tag

    return _read_sentences(path, parse)


WRONG_TAG = "*"  # CCG top-400 catch-all; always counts as wrong at evaluation


def read_supertags(path: str | os.PathLike, *, top_tags: set[str] | None = None) -> list[Sentence]:
    """Read CCG supertags: ``word<TAB>POS<TAB>supertag`` per line.

    With ``top_tags``, every supertag outside that set becomes ``WRONG_TAG`` ("*"),
    the 400-tag setting of Tu & Gimpel (2019).
    """

    def parse(line: str) -> tuple[str, str]:
        word, _pos, tag = _split(line, "\t", 3, "word, POS, supertag")
        if top_tags is not None and tag not in top_tags:
            tag = WRONG_TAG
        return word, tag

    return _read_sentences(path, parse)


# ---------------------------------------------------------------------------
# Tag schemes
# ---------------------------------------------------------------------------


def _split_tag(tag: str) -> tuple[str, str]:
    """``"B-PER"`` -> ``("B", "PER")``; ``"O"`` -> ``("O", "")``."""
    if tag == "O":
        return "O", ""
    prefix, sep, kind = tag.partition("-")
    if not sep or prefix not in ("B", "I", "E", "S") or not kind:
        raise ValueError(f"malformed entity tag {tag!r} (expected O or B-/I-/E-/S-TYPE)")
    return prefix, kind


def iob1_to_bio(tags: Sequence[str]) -> list[str]:
    """IOB1 -> BIO (IOB2): every entity starts with ``B-``.

    In IOB1 ``B-X`` only appears between two adjacent entities of type X, and an
    entity otherwise starts with ``I-X``; so ``I-X`` starts an entity unless the
    previous token is inside an X entity.
    """
    out: list[str] = []
    prev_kind = ""
    for tag in tags:
        prefix, kind = _split_tag(tag)
        if prefix == "I" and kind != prev_kind:
            out.append(f"B-{kind}")
        else:
            out.append(tag)
        prev_kind = kind
    return out


def bio_to_bioes(tags: Sequence[str]) -> list[str]:
    """BIO -> BIOES: single-token entities become ``S-``, last tokens become ``E-``.

    An ``I-X`` that does not continue an X entity (invalid BIO) is treated as
    starting one, like ``iob1_to_bio`` does.
    """
    parsed = [_split_tag(t) for t in tags]
    out: list[str] = []
    for i, (prefix, kind) in enumerate(parsed):
        if prefix == "O":
            out.append("O")
            continue
        begins = prefix == "B" or i == 0 or parsed[i - 1][1] != kind
        next_prefix, next_kind = parsed[i + 1] if i + 1 < len(parsed) else ("O", "")
        ends = not (next_prefix == "I" and next_kind == kind)
        if begins:
            out.append(f"{'S' if ends else 'B'}-{kind}")
        else:
            out.append(f"{'E' if ends else 'I'}-{kind}")
    return out


def bioes_to_bio(tags: Sequence[str]) -> list[str]:
    """BIOES -> BIO: ``S-X`` -> ``B-X``, ``E-X`` -> ``I-X``."""
    out = []
    for tag in tags:
        prefix, kind = _split_tag(tag)
        out.append({"S": f"B-{kind}", "E": f"I-{kind}"}.get(prefix, tag))
    return out


# ---------------------------------------------------------------------------
# Synthetic task
# ---------------------------------------------------------------------------
#
# A hidden-Markov generator with a latent sentence-level "mode" z, built so that
# greedy left-to-right decoding and exact (or beam) search disagree:
#
# * z = A with probability 0.45, z = B with probability 0.55.
# * Tag 1 is OPEN_A or OPEN_B (it *is* the mode); both emit the same opener
#   words ("so", "well", ...) with the same probabilities, so word 1 says nothing
#   about z.
# * Tags 2..n follow a Markov chain over categories DET / NOUN / VERB / POOL that
#   is the same in both modes. A POOL position gets tag X, Y or Z:
#   nearly always X in mode A (0.96), spread almost uniformly in mode B
#   (0.40 / 0.33 / 0.27). X, Y and Z emit the same "pool" words, whose
#   distribution differs mildly between the modes: the only evidence about z,
#   weak and spread over the sentence.
# * Ordinary ambiguity: "run", "walk", ... are emitted by both NOUN and VERB.
#
# Why search matters: greedy takes argmax p(tag 1 | words), usually OPEN_B
# (posterior near 0.55), and is then locked into mode B, where each POOL position
# multiplies the sequence probability by at most 0.40. The single most probable
# sequence is often the mode-A one (0.45 * 0.96^k), which beam search (k >= 2)
# keeps alive and greedy cannot reach.

SYNTHETIC_MODE_PRIOR = {"A": 0.45, "B": 0.55}
_SYN_LENGTHS = (4, 20)  # inclusive, uniform
_SYN_OPENERS = ("so", "well", "ok", "now", "then", "yes")
_SYN_DETS = ("the", "a", "this", "that", "every", "some")
_SYN_NOUNS = ("dog", "cat", "bird", "house", "tree", "car", "city", "river", "man",
              "woman", "child", "road", "stone", "boat", "hill", "song", "door", "field")
_SYN_VERBS = ("sees", "likes", "finds", "takes", "makes", "keeps", "hears", "moves",
              "holds", "leaves", "calls", "meets", "wants", "gives")
_SYN_AMBIG = ("run", "walk", "book", "watch", "play", "fish")  # NOUN or VERB
_SYN_POOL = ("blip", "zork", "quux", "frob", "wug", "dax", "toma", "gazzer", "fep", "kiki")
# Pool-word weights per mode: mild differences, so z is only weakly visible.
_SYN_POOL_WEIGHTS = {
    "A": (14, 12, 11, 10, 10, 10, 9, 9, 8, 7),
    "B": (7, 8, 9, 10, 10, 10, 11, 11, 12, 12),
}
_SYN_POOL_TAGS = {"A": {"X": 0.96, "Y": 0.02, "Z": 0.02}, "B": {"X": 0.40, "Y": 0.33, "Z": 0.27}}
# Category transitions for positions 2..n (same in both modes).
_SYN_TRANSITIONS = {
    "OPEN": {"DET": 0.5, "NOUN": 0.2, "POOL": 0.3},
    "DET": {"NOUN": 0.9, "POOL": 0.1},
    "NOUN": {"VERB": 0.5, "POOL": 0.3, "DET": 0.1, "NOUN": 0.1},
    "VERB": {"DET": 0.5, "POOL": 0.3, "NOUN": 0.2},
    "POOL": {"NOUN": 0.3, "VERB": 0.3, "DET": 0.2, "POOL": 0.2},
}


def _syn_emissions(mode: str) -> dict[str, dict[str, float]]:
    """Emission probabilities p(word | tag) in ``mode``: tag -> word -> prob."""

    def uniform(words: Sequence[str], mass: float = 1.0) -> dict[str, float]:
        return {w: mass / len(words) for w in words}

    pool_total = sum(_SYN_POOL_WEIGHTS[mode])
    pool = {w: c / pool_total for w, c in zip(_SYN_POOL, _SYN_POOL_WEIGHTS[mode])}
    return {
        f"OPEN_{mode}": uniform(_SYN_OPENERS),
        "DET": uniform(_SYN_DETS),
        "NOUN": {**uniform(_SYN_NOUNS, 0.8), **uniform(_SYN_AMBIG, 0.2)},
        "VERB": {**uniform(_SYN_VERBS, 0.7), **uniform(_SYN_AMBIG, 0.3)},
        "X": pool, "Y": pool, "Z": pool,
    }


_SYN_EMIT = {mode: _syn_emissions(mode) for mode in SYNTHETIC_MODE_PRIOR}
_SYN_CATEGORY = {"OPEN_A": "OPEN", "OPEN_B": "OPEN", "DET": "DET", "NOUN": "NOUN",
                 "VERB": "VERB", "X": "POOL", "Y": "POOL", "Z": "POOL"}
SYNTHETIC_TAGS: tuple[str, ...] = tuple(sorted(_SYN_CATEGORY))


def _syn_sentence(rng: random.Random) -> Sentence:
    """Draw one sentence from the generator described above."""

    def draw(dist: dict[str, float]) -> str:
        return rng.choices(list(dist), weights=list(dist.values()))[0]

    mode = draw(SYNTHETIC_MODE_PRIOR)
    emit = _SYN_EMIT[mode]
    length = rng.randint(*_SYN_LENGTHS)
    tags = [f"OPEN_{mode}"]
    for _ in range(length - 1):
        category = draw(_SYN_TRANSITIONS[_SYN_CATEGORY[tags[-1]]])
        tags.append(draw(_SYN_POOL_TAGS[mode]) if category == "POOL" else category)
    words = [draw(emit[tag]) for tag in tags]
    return Sentence(tuple(words), tuple(tags))


def synthetic_sequence_logprob(words: Sequence[str], tags: Sequence[str]) -> float:
    """Exact log p(words, tags) under the synthetic generator (``-inf`` if impossible).

    Includes the mode prior and the uniform length prior, so for fixed ``words``
    it is log p(tags | words) plus a constant: tests use it to find the true
    most probable tag sequence and the true greedy one.
    """
    if len(words) != len(tags) or not tags or not tags[0].startswith("OPEN_"):
        return -math.inf
    low, high = _SYN_LENGTHS
    if not low <= len(tags) <= high:
        return -math.inf
    mode = tags[0][len("OPEN_"):]
    prob = SYNTHETIC_MODE_PRIOR[mode] / (high - low + 1)
    emit = _SYN_EMIT[mode]
    prev = tags[0]
    prob *= emit[prev].get(words[0], 0.0)
    for word, tag in zip(words[1:], tags[1:]):
        if tag not in _SYN_CATEGORY or tag.startswith("OPEN_"):
            return -math.inf
        category = _SYN_CATEGORY[tag]
        prob *= _SYN_TRANSITIONS[_SYN_CATEGORY[prev]].get(category, 0.0)
        if category == "POOL":
            prob *= _SYN_POOL_TAGS[mode][tag]
        prob *= emit[tag].get(word, 0.0)
        prev = tag
    return math.log(prob) if prob > 0 else -math.inf


def synthetic_task_splits(seed: int = 0, sizes: tuple[int, int, int] = (2000, 300, 300)
                          ) -> tuple[list[Sentence], list[Sentence], list[Sentence]]:
    """Train/dev/test sentences for the synthetic task, deterministic given ``seed``."""
    rng = random.Random(seed)
    train, dev, test = ([_syn_sentence(rng) for _ in range(n)] for n in sizes)
    return train, dev, test


# ---------------------------------------------------------------------------
# Tasks
# ---------------------------------------------------------------------------


@dataclass
class TaskData:
    """The three splits of one task plus how it is evaluated."""

    name: str
    train: list[Sentence]
    dev: list[Sentence]
    test: list[Sentence]
    metric: str  # "accuracy" or "span_f1" (NER tasks)
    scheme: str  # "pos" (plain tags), "bioes" (NER, converted) or "iob1" (NER, the files' own tags)


TASKS: tuple[str, ...] = (
    "synthetic", "twitter_pos", "conll2003_en", "conll2003_de", "conll2003_en_iob1", "conll2003_de_iob1",
    "ccgbank", "ccgbank400", "ud_en_ewt",
)
# The tag scheme each NER task trains and predicts in. BIOES by default (a tagger then knows where
# every entity ends); the `_iob1` variants keep the files' own IOB1 tags, as Goyal et al. (2018,
# §3.1: "no preprocessing", a label space of 10 = 9 IOB1 tags + the decoder's start symbol) do.
# The task name is the one source of truth: checkpoints record it, and decode/eval reload it.
NER_SCHEMES: dict[str, str] = {"conll2003_en": "bioes", "conll2003_de": "bioes",
                               "conll2003_en_iob1": "iob1", "conll2003_de_iob1": "iob1"}

# Files of each real task relative to the data root, in (train, dev, test) order.
_TASK_FILES: dict[str, tuple[str, str, str]] = {
    "twitter_pos": ("twitter_pos/oct27.traindev", "twitter_pos/oct27.test", "twitter_pos/daily547.conll"),
    "conll2003_en": ("conll2003_en/eng.train", "conll2003_en/eng.testa", "conll2003_en/eng.testb"),
    "conll2003_de": ("conll2003_de/deu.train", "conll2003_de/deu.testa", "conll2003_de/deu.testb"),
    "conll2003_en_iob1": ("conll2003_en/eng.train", "conll2003_en/eng.testa", "conll2003_en/eng.testb"),
    "conll2003_de_iob1": ("conll2003_de/deu.train", "conll2003_de/deu.testa", "conll2003_de/deu.testb"),
    "ccgbank": ("ccgbank/supertags/train.tsv.gz", "ccgbank/supertags/dev.tsv", "ccgbank/supertags/test.tsv"),
    "ccgbank400": ("ccgbank/supertags/train.tsv.gz", "ccgbank/supertags/dev.tsv", "ccgbank/supertags/test.tsv"),
    "ud_en_ewt": ("ud_english_ewt/en_ewt-ud-train.conllu.gz", "ud_english_ewt/en_ewt-ud-dev.conllu",
                  "ud_english_ewt/en_ewt-ud-test.conllu"),
}
_CCG_TOP400 = "ccgbank/supertags/top400_tags.txt"
# The tag scheme of each NER task's files (NER_SCHEMES: what tasks use inside): `decode --predictions`
# writes tags back in it, so the file is input for the original conlleval script, which cannot read BIOES.
FILE_SCHEMES: dict[str, str] = {name: "iob1" for name in NER_SCHEMES}


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """The data folder: ``explicit`` if given, else ``$BEAMTUNE_DATA``; it must exist."""
    value = explicit if explicit is not None else os.environ.get("BEAMTUNE_DATA")
    if not value:
        raise DataError("no data root: pass --data-root or set BEAMTUNE_DATA")
    root = Path(value)
    if not root.is_dir():
        raise DataError(f"{root}: data root is not a directory")
    return root


_resolve_data_root = data_root  # load_task's `data_root` parameter shadows the function


def load_task(name: str, data_root: str | os.PathLike | None = None, *, seed: int = 0) -> TaskData:
    """Load the train/dev/test splits of task ``name`` (one of ``TASKS``).

    ``seed`` only affects the synthetic task; real tasks are read from
    ``data_root`` (see ``data_root()``). NER tags are converted IOB1 -> BIOES, except for the
    ``_iob1`` tasks, which keep the files' IOB1 tags (``NER_SCHEMES``).
    A missing file raises ``DataError`` naming it before anything is read.
    """
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; valid tasks: {', '.join(TASKS)}")
    if name == "synthetic":
        train, dev, test = synthetic_task_splits(seed)
        return TaskData(name, train, dev, test, metric="accuracy", scheme="pos")

    root = _resolve_data_root(data_root)
    needed = list(_TASK_FILES[name]) + ([_CCG_TOP400] if name == "ccgbank400" else [])
    for relative in needed:
        if not (root / relative).is_file():
            raise DataError(
                f"{root / relative}: missing file for task {name!r} "
                f"(see {root / 'README.md'}: it lists which files exist and why some are missing)"
            )
    train_path, dev_path, test_path = (root / p for p in _TASK_FILES[name])

    top_tags = None
    if name == "ccgbank400":
        top_path = root / _CCG_TOP400
        top_tags = {line.strip() for _, line in _iter_lines(top_path, "utf-8") if line.strip()}
        if len(top_tags) != 400:
            raise DataError(f"{top_path}: expected 400 distinct tags, got {len(top_tags)}")

    def read(path: Path) -> list[Sentence]:
        if name == "twitter_pos":
            return read_word_tag(path)
        if name in NER_SCHEMES:
            sentences = read_conll2003(path, lang=name.split("_")[1])
            if NER_SCHEMES[name] == "iob1":
                return sentences
            return [Sentence(s.words, tuple(bio_to_bioes(iob1_to_bio(s.tags)))) for s in sentences]
        if name == "ccgbank":
            return read_supertags(path)
        if name == "ccgbank400":
            return read_supertags(path, top_tags=top_tags)
        return read_conllu(path, column="upos")

    is_ner = name in NER_SCHEMES
    return TaskData(
        name, read(train_path), read(dev_path), read(test_path),
        metric="span_f1" if is_ner else "accuracy",
        scheme=NER_SCHEMES.get(name, "pos"),
    )


# ---------------------------------------------------------------------------
# Vocabularies
# ---------------------------------------------------------------------------

PAD, UNK = "<pad>", "<unk>"
UNSEEN_LABEL = -1  # dev/test gold tag never seen in training; training data never contains it
MENTION, URL = "<@mention>", "<url>"
_MENTION_RE = re.compile(r"@\w")
_URL_RE = re.compile(r"(?:https?://|www\.)", re.IGNORECASE)


def word_shape_key(token: str) -> str:
    """``<@mention>`` for an @mention, ``<url>`` for a URL, else ``token``.

    Why: in Twitter POS, 6 % of test tokens are @mentions (always tag ``@``) and URLs (always
    ``U``), nearly all unseen in training and absent from GloVe, so without this they all shared
    the UNK vector and a model without a character CNN tagged half of them wrongly (issue 14).
    """
    if _MENTION_RE.match(token):
        return MENTION
    if _URL_RE.match(token):
        return URL
    return token


@dataclass
class Vocab:
    """A string <-> id mapping; ids follow ``itos`` (specials first).

    With ``lowercase=True`` tokens are lowercased before lookup; with
    ``normalize=True`` every @mention becomes ``<@mention>`` and every URL
    ``<url>`` first (``word_shape_key``). Tokens not in the vocabulary map to
    ``UNK`` when it is in ``itos``; otherwise (labels) ``encode`` raises
    ``KeyError``.
    """

    itos: list[str]
    lowercase: bool = False
    normalize: bool = False
    stoi: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.stoi = {s: i for i, s in enumerate(self.itos)}
        if len(self.stoi) != len(self.itos):
            raise ValueError("Vocab.itos has duplicate entries")

    @classmethod
    def build(
        cls,
        tokens: Iterable[str],
        *,
        min_count: int = 1,
        specials: Sequence[str] = (PAD, UNK),
        lowercase: bool = False,
        normalize: bool = False,
    ) -> "Vocab":
        """Specials, then every token seen ``>= min_count`` times, sorted (deterministic ids)."""
        vocab = cls(list(specials), lowercase=lowercase, normalize=normalize)  # for its key()
        counts = Counter(vocab.key(t) for t in tokens)
        kept = sorted(t for t, c in counts.items() if c >= min_count and t not in specials)
        return cls(list(specials) + kept, lowercase=lowercase, normalize=normalize)

    def key(self, token: str) -> str:
        """The string ``token`` is looked up as."""
        if self.normalize:
            token = word_shape_key(token)
        return token.lower() if self.lowercase else token

    def encode(self, token: str) -> int:
        key = self.key(token)
        index = self.stoi.get(key)
        if index is not None:
            return index
        if UNK in self.stoi:
            return self.stoi[UNK]
        raise KeyError(token)

    def __contains__(self, token: str) -> bool:
        return self.key(token) in self.stoi

    def __len__(self) -> int:
        return len(self.itos)

    def to_dict(self) -> dict:
        return {"itos": list(self.itos), "lowercase": self.lowercase, "normalize": self.normalize}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocab":
        # Checkpoints from before `normalize` existed looked tokens up as they are.
        return cls(list(d["itos"]), lowercase=bool(d["lowercase"]), normalize=bool(d.get("normalize", False)))


@dataclass
class Vocabs:
    """Word, character and label vocabularies of one training set."""

    words: Vocab  # specials (PAD, UNK), lowercased by default
    chars: Vocab  # specials (PAD, UNK), case kept
    labels: Vocab  # no specials: ids 0..L-1 are exactly the training tags, sorted

    def to_dict(self) -> dict:
        return {"words": self.words.to_dict(), "chars": self.chars.to_dict(), "labels": self.labels.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabs":
        return cls(Vocab.from_dict(d["words"]), Vocab.from_dict(d["chars"]), Vocab.from_dict(d["labels"]))


def build_vocabs(
    train: list[Sentence],
    *,
    min_count: int = 1,
    lowercase: bool = True,
    extra_words: Iterable[str] = (),
) -> Vocabs:
    """Build vocabularies from training sentences only.

    Words seen only in dev/test map to UNK, except ``extra_words`` (e.g. the
    pretrained-embedding words that occur in dev/test), which get their own ids
    after the training words so their pretrained vectors are used.
    """
    words = Vocab.build((w for s in train for w in s.words), min_count=min_count, lowercase=lowercase, normalize=True)
    extra = sorted({words.key(w) for w in extra_words} - set(words.itos))
    if extra:
        words = Vocab(words.itos + extra, lowercase=lowercase, normalize=True)
    chars = Vocab.build(c for s in train for w in s.words for c in w)
    labels = Vocab.build((t for s in train for t in s.tags), specials=())
    return Vocabs(words, chars, labels)


# ---------------------------------------------------------------------------
# Batches
# ---------------------------------------------------------------------------

MAX_WORD_CHARS = 30  # longer words keep their first 30 characters in `Batch.chars`


@dataclass
class Batch:
    """Padded tensors for B sentences of up to T tokens."""

    words: torch.Tensor  # (B, T) long, PAD id 0 beyond length
    chars: torch.Tensor  # (B, T, C) long, C = longest word in batch (capped at 30), PAD 0
    labels: torch.Tensor  # (B, T) long, 0 beyond length, UNSEEN_LABEL for unseen dev/test tags
    lengths: torch.Tensor  # (B,) long, every length >= 1
    mask: torch.Tensor  # (B, T) bool, True on real tokens
    index: torch.Tensor  # (B,) long, position of each sentence in the input list

    def to(self, device: torch.device | str) -> "Batch":
        """The batch on `device`. Bound for a GPU, the host tensors go through page-locked memory
        and the copies do not block the host (core.device.pinned)."""
        from core.device import pinned

        device = torch.device(device)
        blocking = device.type != "cuda"
        move = lambda t: pinned(t, device).to(device, non_blocking=not blocking)  # noqa: E731
        return Batch(move(self.words), move(self.chars), move(self.labels), move(self.lengths), move(self.mask),
                     move(self.index))


def encode_batch(sentences: Sequence[Sentence], index: Sequence[int], vocabs: Vocabs) -> Batch:
    """Encode ``sentences`` (``index[i]`` is the position of ``sentences[i]`` in its split)."""
    assert PAD == vocabs.words.itos[0] == vocabs.chars.itos[0], "PAD must have id 0"
    lengths = [len(s.words) for s in sentences]
    if not sentences or min(lengths) < 1:
        raise ValueError("encode_batch needs at least one sentence, each with >= 1 token")
    T = max(lengths)
    C = min(MAX_WORD_CHARS, max(len(w) for s in sentences for w in s.words))
    # Build padded Python lists and convert once: much faster than filling
    # tensors token by token (this runs over the whole training set every epoch).
    char_ids: dict[str, list[int]] = {}  # per word type, already padded to C

    def chars_of(word: str) -> list[int]:
        if word not in char_ids:
            ids = [vocabs.chars.encode(c) for c in word[:C]]
            char_ids[word] = ids + [0] * (C - len(ids))
        return char_ids[word]

    label_ids = vocabs.labels.stoi
    words, chars, labels = [], [], []
    for sentence, n in zip(sentences, lengths):
        pad = T - n
        words.append([vocabs.words.encode(w) for w in sentence.words] + [0] * pad)
        chars.append([chars_of(w) for w in sentence.words] + [[0] * C] * pad)
        labels.append([label_ids.get(t, UNSEEN_LABEL) for t in sentence.tags] + [0] * pad)
    lengths_t = torch.tensor(lengths, dtype=torch.long)
    mask = lengths_to_mask(lengths_t, T)  # (B, T)
    return Batch(
        words=torch.tensor(words, dtype=torch.long),
        chars=torch.tensor(chars, dtype=torch.long),
        labels=torch.tensor(labels, dtype=torch.long),
        lengths=lengths_t,
        mask=mask,
        index=torch.tensor(list(index), dtype=torch.long),
    )


def make_batches(
    sentences: Sequence[Sentence],
    vocabs: Vocabs,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    bucket: bool = True,
) -> list[Batch]:
    """Split ``sentences`` into batches; ``Batch.index`` restores the input order.

    ``bucket=True`` sorts by length before chunking so little padding is wasted.
    With ``shuffle=True`` the order is randomised by ``seed`` only: pass
    ``seed + epoch`` for a new but reproducible order each epoch. (Shuffling
    before the stable length sort also varies which equal-length sentences
    share a batch.)
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = random.Random(seed)
    order = list(range(len(sentences)))
    if shuffle:
        rng.shuffle(order)
    if bucket:
        order.sort(key=lambda i: len(sentences[i].words))
    chunks = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    if shuffle and bucket:
        rng.shuffle(chunks)
    return [encode_batch([sentences[i] for i in chunk], chunk, vocabs) for chunk in chunks]
