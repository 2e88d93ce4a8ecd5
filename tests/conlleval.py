"""A line-for-line port of the chunk counting in the original `conlleval` Perl script (CoNLL-2000,
revised 2004), the reference NER papers cite. Tests read `decode --predictions` files with it.

It knows IOB1, IOB2 (BIO) and IOE tags, not BIOES: `S-` is not a chunk boundary to it and `E-` is
the IOE "end between two same-type chunks" tag, so BIOES input merges adjacent same-type entities.
"""
from __future__ import annotations


def _split(tag: str) -> tuple[str, str]:
    # conlleval: if ($guessed =~ /^([^-]*)-(.*)$/) { ($guessed, $guessedType) = ($1, $2) } else { type "" }
    prefix, sep, kind = tag.partition("-")
    return (prefix, kind) if sep else (tag, "")


def end_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    end = (prev_tag, tag) in {("B", "B"), ("B", "O"), ("I", "B"), ("I", "O"), ("E", "E"), ("E", "I"), ("E", "O")}
    if prev_tag not in ("O", ".") and prev_type != type_:
        end = True
    return end or prev_tag in ("]", "[")


def start_of_chunk(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    start = (prev_tag, tag) in {("B", "B"), ("I", "B"), ("O", "B"), ("O", "I"), ("E", "E"), ("E", "I"), ("O", "E")}
    if tag not in ("O", ".") and prev_type != type_:
        start = True
    return start or tag in ("[", "]")


def conlleval(lines: list[str]) -> dict[str, float]:
    """Chunk counts and precision / recall / F1 (fractions) of `token ... gold guessed` lines;
    a blank line or -DOCSTART- is a boundary, as in the script."""
    correct_chunk = found_correct = found_guessed = 0
    in_correct = False
    last_correct, last_correct_type, last_guessed, last_guessed_type = "O", "", "O", ""
    for line in lines + [""]:
        features = line.split()
        if not features or features[0] == "-DOCSTART-":
            features = ["-X-", "O", "O"]
        correct, correct_type = _split(features[-2])
        guessed, guessed_type = _split(features[-1])
        if in_correct:
            end_c = end_of_chunk(last_correct, correct, last_correct_type, correct_type)
            end_g = end_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
            if end_c and end_g and last_guessed_type == last_correct_type:
                in_correct = False
                correct_chunk += 1
            elif end_c != end_g or guessed_type != correct_type:
                in_correct = False
        start_c = start_of_chunk(last_correct, correct, last_correct_type, correct_type)
        start_g = start_of_chunk(last_guessed, guessed, last_guessed_type, guessed_type)
        if start_c and start_g and guessed_type == correct_type:
            in_correct = True
        found_correct += start_c
        found_guessed += start_g
        last_correct, last_correct_type, last_guessed, last_guessed_type = correct, correct_type, guessed, guessed_type
    if in_correct:
        correct_chunk += 1
    precision = correct_chunk / found_guessed if found_guessed else 0.0
    recall = correct_chunk / found_correct if found_correct else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"correct": correct_chunk, "found_correct": found_correct, "found_guessed": found_guessed,
            "precision": precision, "recall": recall, "f1": f1}
