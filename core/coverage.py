"""Where a tagger's errors are, by what its word table knew: the diagnostic behind the word-vector
gaps of Tu & Gimpel's tables (issue 14).

Every token of a split falls in one class by its vocabulary key (the word as the model looked it up:
lowercased, @mentions and URLs normalised when the vocabulary does so):

    "vectors and training"  the key has a pretrained vector and occurs in the training split
    "vectors only"          a pretrained vector, never seen in training
    "training only"         seen in training, no pretrained vector (learned or random row)
    "neither"               UNK, or a row no signal ever reached

Per class: the share of tokens, token accuracy (as core.metrics.token_accuracy: gold `*` is never
correct, so the classes' accuracies weighted by their shares give the split's accuracy), and the
accuracy over gold entity tokens (gold tag not "O"; meaningful for NER, where most tokens are "O").

Reading it: the accuracy of "vectors and training" is roughly what the split would score if every
word were as well known as those. It is an optimistic bound on what better word vectors alone
could buy (they reach uncovered words, not context errors, and covered words are also the frequent,
easier ones): a gap to a paper's number larger than that bound is not about vocabulary coverage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

from core.data import WRONG_TAG, Vocab
from core.embeddings import glove_words

CLASSES = ("vectors and training", "vectors only", "training only", "neither")
OUTSIDE = "O"


@dataclass(frozen=True)
class CoverageRow:
    name: str
    tokens: int
    share: float  # of all tokens of the split
    accuracy: float  # token accuracy; nan when the class is empty
    entity_tokens: int  # gold tag != "O"
    entity_accuracy: float  # nan when there are none


def coverage_class(key: str, vector_words: set[str], train_keys: set[str]) -> str:
    in_vectors, in_train = key in vector_words, key in train_keys
    if in_vectors:
        return CLASSES[0] if in_train else CLASSES[1]
    return CLASSES[2] if in_train else CLASSES[3]


def _ratio(num: int, den: int) -> float:
    return num / den if den else float("nan")


def coverage_breakdown(words: Sequence[Sequence[str]], gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]],
                       key: Callable[[str], str], train_keys: set[str], vector_words: set[str]) -> list[CoverageRow]:
    """One row per class (CLASSES order) for a split's sentences `words`, gold and predicted tags."""
    if not (len(words) == len(gold) == len(pred)):
        raise ValueError(f"coverage_breakdown: {len(words)} sentences, {len(gold)} gold, {len(pred)} predicted")
    counts = {name: [0, 0, 0, 0] for name in CLASSES}  # tokens, correct, entity tokens, entity correct
    for i, (ws, gs, ps) in enumerate(zip(words, gold, pred)):
        if not (len(ws) == len(gs) == len(ps)):
            raise ValueError(f"coverage_breakdown: sentence {i} has {len(ws)} words, {len(gs)} gold, {len(ps)} predicted tags")
        for w, g, p in zip(ws, gs, ps):
            c = counts[coverage_class(key(w), vector_words, train_keys)]
            c[0] += 1
            correct = g == p and g != WRONG_TAG  # as core.metrics.token_accuracy
            c[1] += correct
            if g != OUTSIDE:
                c[2] += 1
                c[3] += correct
    total = sum(c[0] for c in counts.values())
    return [CoverageRow(name, c[0], _ratio(c[0], total), _ratio(c[1], c[0]), c[2], _ratio(c[3], c[2]))
            for name, c in counts.items()]


def flat_metrics(rows: Sequence[CoverageRow]) -> dict[str, float]:
    """`coverage.<class>.{share,accuracy,entity_accuracy}` (class names with spaces as underscores), for
    `beamtune decode --by-coverage`."""
    out: dict[str, float] = {}
    for r in rows:
        name = r.name.replace(" ", "_")
        out.update({f"coverage.{name}.share": r.share, f"coverage.{name}.accuracy": r.accuracy,
                    f"coverage.{name}.entity_accuracy": r.entity_accuracy})
    return out


def split_coverage(sentences, pred: Sequence[Sequence[str]], train, vocab: Vocab,
                   embeddings: str | None) -> list[CoverageRow]:
    """`coverage_breakdown` for a model's word vocabulary `vocab`: a key "has a vector" when it is a
    vocabulary row the GloVe file `embeddings` filled (core.embeddings.load_glove's lowercase match),
    "occurs in training" when it is a row some training sentence reaches (a word below min_count is
    UNK there, so it is not)."""
    vector_words: set[str] = set()
    if embeddings:
        glove = {w.lower() for w in glove_words(embeddings)}
        vector_words = {k for k in vocab.itos if k.lower() in glove}
    train_keys = {vocab.key(w) for s in train for w in s.words} & set(vocab.stoi)
    return coverage_breakdown([s.words for s in sentences], [s.tags for s in sentences], pred, vocab.key,
                              train_keys, vector_words)
