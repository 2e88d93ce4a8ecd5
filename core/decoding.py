"""Decoding a split with a trained model and scoring it against its gold tags.

    predict / score_split          the seq2seq tagger: greedy | beam | soft-beam (Goyal et al. 2018)
    sequence_scores                its model scores of the greedy, beam and gold sequences (search error)
    decode_batches / score_decoder the structured models: viterbi | infnet | gd | tailored | infnet-gd
                                   (Tu & Gimpel 2019), with energies and search error
    scatter_tags                   label ids of a (length-sorted) batch -> tag strings in input order

Shapes: B sentences, T positions, L labels.
"""
from __future__ import annotations

import math
import time
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from core.crf import BLSTMCRF
from core.data import UNSEEN_LABEL, Batch, Sentence, Vocabs, make_batches
from core.infnet_gd import infnet_started_gd
from core.infnets import InferenceNetwork
from core.metrics import evaluate, search_errors
from core.search.beam import beam_search, greedy_decode
from core.search.gradient import gradient_descent
from core.search.soft_beam import soft_beam_search
from core.seq2seq import Memory, Seq2SeqTagger
from core.tailoring import instance_tailor

DECODERS = ("greedy", "beam", "soft-beam")  # the seq2seq tagger's
STRUCTURED_DECODERS = ("viterbi", "infnet", "gd", "tailored", "infnet-gd")  # "crf" / "infnet" checkpoints'
# Step sizes when none is given: gradient descent moves the relaxed output (the oracle grid's large
# rates suit it); instance tailoring moves the inference network's weights, which lr 0.1 already
# wrecks (twitter_pos dev accuracy 51.7%); 0.01 was chosen on twitter_pos dev.
DEFAULT_LR = {"gd": 100.0, "infnet-gd": 100.0, "tailored": 0.01}


def scatter_tags(out: list, labels: torch.Tensor, batch: Batch, sentences: Sequence[Sentence], itos: Sequence[str]) -> None:
    """Write the tags of `labels` (B, T) into `out` at each row's input position (batch.index),
    each cut to its sentence's length. make_batches sorts by length; this restores input order."""
    ids = labels.cpu().tolist()
    for row, i in enumerate(batch.index.tolist()):
        out[i] = [itos[y] for y in ids[row][: len(sentences[i].words)]]


@torch.no_grad()
def predict(
    model: Seq2SeqTagger,
    sentences: Sequence[Sentence],
    vocabs: Vocabs,
    decoder: str = "greedy",
    beam_size: int = 1,
    batch_size: int = 64,
    progress: bool = False,
    alpha: float = 1.0,
) -> list[list[str]]:
    """Decode `sentences` with greedy, hard beam or soft beam search (at temperature `alpha`)
    and return predicted tag strings, in input order."""
    if decoder not in DECODERS:
        raise ValueError(f"decoder must be one of {DECODERS}, got {decoder!r}")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: list[list[str] | None] = [None] * len(sentences)
    batches = make_batches(sentences, vocabs, batch_size, shuffle=False)
    for batch in tqdm(batches, desc=f"decode {decoder}", disable=not progress, leave=False):
        batch = batch.to(device)
        memory = model.encode(batch.words, batch.chars, batch.lengths)
        if decoder == "greedy":
            labels = greedy_decode(model, memory).labels
        elif decoder == "beam":
            labels = beam_search(model, memory, beam_size).labels
        else:
            labels = soft_beam_search(model, memory, beam_size, alpha).labels
        scatter_tags(out, labels, batch, sentences, vocabs.labels.itos)
    model.train(was_training)
    return out  # type: ignore[return-value]


def score_split(
    model: Seq2SeqTagger,
    sentences: Sequence[Sentence],
    vocabs: Vocabs,
    metric: str,
    decoder: str = "greedy",
    beam_size: int = 1,
    progress: bool = False,
    alpha: float = 1.0,
) -> dict[str, float]:
    """Decode a split and evaluate it against its gold tags."""
    start = time.perf_counter()
    pred = predict(model, sentences, vocabs, decoder, beam_size, progress=progress, alpha=alpha)
    seconds = time.perf_counter() - start
    result = evaluate([s.tags for s in sentences], pred, metric)
    result["sentences_per_second"] = len(sentences) / seconds
    return result


@torch.no_grad()
def sequence_scores(
    model: Seq2SeqTagger, sentences: Sequence[Sentence], vocabs: Vocabs, beam_size: int = 3, batch_size: int = 64,
    progress: bool = False,
) -> dict[str, list[float]]:
    """Per sentence, in input order, the model score s(y) = sum_t log p(y_t | y_<t, x) of the greedy
    output, the hard beam's (k = `beam_size`) output and the gold sequence: {"greedy", "beam", "gold"}.

    All three are scored by one teacher-forced pass (`Seq2SeqTagger.sequence_score`), and a sequence
    equal to another gets that one's score exactly, so "beam found gold" is an equality, not a
    float tolerance. A gold sequence with a tag never seen in training (UNSEEN_LABEL) scores -inf:
    the model cannot produce it.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out: dict[str, list[float]] = {name: [math.nan] * len(sentences) for name in ("greedy", "beam", "gold")}
    for batch in tqdm(make_batches(sentences, vocabs, batch_size), desc="search error", disable=not progress, leave=False):
        batch = batch.to(device)
        memory = model.encode(batch.words, batch.chars, batch.lengths)
        greedy = greedy_decode(model, memory).labels  # (B, T)
        beam = beam_search(model, memory, beam_size).labels  # (B, T)
        gold = batch.labels.masked_fill(~batch.mask, 0)  # (B, T), UNSEEN_LABEL kept on real tokens
        B = gold.shape[0]
        stacked = torch.cat([greedy, beam, gold.clamp(min=0)])  # (3B, T)
        tripled = Memory(memory.states.repeat(3, 1, 1), memory.mask.repeat(3, 1))  # (3B, T, S)
        scores = model.sequence_score(tripled, stacked).view(3, B)  # (3, B)
        same = lambda a, b: ((a == b) | ~batch.mask).all(dim=1)  # noqa: E731  (B,): equal on the real tokens
        greedy_s = scores[0]  # (B,)
        beam_s = torch.where(same(beam, greedy), greedy_s, scores[1])  # (B,)
        gold_s = torch.where(same(gold, beam), beam_s, torch.where(same(gold, greedy), greedy_s, scores[2]))  # (B,)
        gold_s = gold_s.masked_fill((gold == UNSEEN_LABEL).any(dim=1), -math.inf)  # (B,)
        rows = zip(batch.index.tolist(), greedy_s.tolist(), beam_s.tolist(), gold_s.tolist())
        for i, *values in rows:
            out["greedy"][i], out["beam"][i], out["gold"][i] = values
    model.train(was_training)
    return out


def _check_structured(decoder: str, crf, infnet) -> None:
    if decoder not in STRUCTURED_DECODERS:
        raise ValueError(f"decoder must be one of {STRUCTURED_DECODERS}, got {decoder!r}")
    if decoder in ("viterbi", "gd") and crf is None:
        raise ValueError(f"decoder {decoder!r} needs a CRF")
    if decoder in ("infnet", "tailored", "infnet-gd") and infnet is None:
        raise ValueError(f"decoder {decoder!r} needs an inference network")
    if decoder in ("tailored", "infnet-gd") and crf is None:
        raise ValueError(f"decoder {decoder!r} needs the CRF energy (--energy)")


def structured_labels(decoder: str, batch: Batch, unary, crf, infnet, steps, lr, momentum, seed):
    """One batch -> (labels (B, T), relaxed output (B, T, L) or None)."""
    if decoder == "viterbi":
        return crf.viterbi(unary, batch.mask).labels, None
    if decoder == "infnet":
        out = infnet(batch.words, batch.chars, batch.lengths)
        return out.labels, out.probs
    if decoder == "tailored":
        out = instance_tailor(infnet, crf.crf, batch.words, batch.chars, batch.lengths, unary, steps, lr, momentum)
        return out.labels, out.probs
    if decoder == "infnet-gd":
        trace = infnet_started_gd(crf, infnet, batch, unary, steps, lr, momentum, seed)
    else:
        trace = gradient_descent(crf.crf, unary, batch.mask, steps=(steps,), lrs=(lr,), momentum=momentum, seed=seed)
    return trace.labels[0, 0], trace.logits[0].softmax(dim=-1)


@torch.no_grad()
def decode_batches(
    sentences, vocabs: Vocabs, decoder: str, crf: BLSTMCRF | None = None, infnet: InferenceNetwork | None = None,
    steps: int = 20, lr: float | None = None, momentum: float = 0.9, batch_size: int = 64, seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
    """Decode `sentences` -> {"pred": tag strings, "energy": E(x, y) of the discrete output,
    "relaxed_energy": E(x, relaxed output) where there is one, "viterbi_energy"} (lists per
    sentence; energies need a CRF). `lr` None: the decoder's DEFAULT_LR."""
    _check_structured(decoder, crf, infnet)
    lr = DEFAULT_LR.get(decoder, 0.0) if lr is None else lr
    device = next((crf or infnet).parameters()).device
    n = len(sentences)
    pred: list[Any] = [None] * n
    energy, relaxed, viterbi_energy = [math.nan] * n, [math.nan] * n, [math.nan] * n
    for batch in tqdm(make_batches(sentences, vocabs, batch_size), desc=decoder, disable=not progress, leave=False):
        batch = batch.to(device)
        unary = crf.unary(batch.words, batch.chars, batch.lengths) if crf is not None else None  # (B, T, L)
        labels, probs = structured_labels(decoder, batch, unary, crf, infnet, steps, lr, momentum, seed)
        scatter_tags(pred, labels, batch, sentences, vocabs.labels.itos)
        if crf is not None:
            rows = batch.index.tolist()
            e = crf.energy(unary, labels, batch.mask).tolist()
            v = (-crf.viterbi(unary, batch.mask).scores).tolist()
            r = crf.energy(unary, probs, batch.mask).tolist() if probs is not None else [math.nan] * len(rows)
            for row, i in enumerate(rows):
                energy[i], viterbi_energy[i], relaxed[i] = e[row], v[row], r[row]
    return {"pred": pred, "energy": energy, "relaxed_energy": relaxed, "viterbi_energy": viterbi_energy}


def score_decoder(sentences, vocabs, metric: str, decoder: str, **kwargs) -> dict[str, Any]:
    """Decode and evaluate a split: metric, mean energies, search error, sentences per second."""
    start = time.perf_counter()
    out = decode_batches(sentences, vocabs, decoder, **kwargs)
    seconds = time.perf_counter() - start
    result: dict[str, Any] = evaluate([s.tags for s in sentences], out["pred"], metric)
    result["sentences_per_second"] = len(sentences) / seconds
    if not math.isnan(out["energy"][0]):
        lengths = torch.tensor([len(s.words) for s in sentences])
        result["energy"] = sum(out["energy"]) / len(sentences)
        result["viterbi_energy"] = sum(out["viterbi_energy"]) / len(sentences)
        if not math.isnan(out["relaxed_energy"][0]):
            result["relaxed_energy"] = sum(out["relaxed_energy"]) / len(sentences)
        errors = search_errors(torch.tensor(out["energy"]), torch.tensor(out["viterbi_energy"]), lengths)
        result["search_error"] = errors["mean"]
        result["search_error_rho_length"] = errors["rho_length"]
    result["_pred"] = out["pred"]
    return result
