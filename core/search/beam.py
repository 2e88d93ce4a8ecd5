"""Greedy decoding and hard beam search (Goyal et al. 2018, Algorithm 1), batched.

All sentences of a batch advance together, one position per decoder step; beam entries ride in
the batch dimension as N = B*k rows. A sentence that has ended (t >= its length) is *frozen*: each
of its beam entries may only extend itself with a zero-score dummy move, so its scores and
ranking no longer change while longer sentences of the batch continue.

Scores are sums of log p(y_t | y_<t, x), the model's own sequence score.

Shapes: B sentences, T positions, L labels, k beam size.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from core.seq2seq import Memory, Seq2SeqTagger


class SearchResult(NamedTuple):
    labels: torch.Tensor  # (B, T) long: best sequence, 0 past each length
    scores: torch.Tensor  # (B,) its model score
    beam_labels: torch.Tensor  # (B, k, T) long: all final beam entries, best first
    beam_scores: torch.Tensor  # (B, k) their scores, sorted descending (-inf: fewer than k hypotheses exist)


@torch.no_grad()
def greedy_decode(model: Seq2SeqTagger, memory: Memory) -> SearchResult:
    """Take the argmax label at every position and feed it back.

    memory: Memory with (B, T, S) states and (B, T) mask -> SearchResult with k = 1.
    """
    B, T = memory.mask.shape
    state = model.initial_state(B, memory.states.device)
    prev = model.start_embedding(B)  # (B, E)
    labels = torch.zeros(B, T, dtype=torch.long, device=memory.states.device)
    total = torch.zeros(B, device=memory.states.device)
    for t in range(T):
        state, scores = model.step(state, prev, t, memory)  # scores: (B, L)
        best, label = scores.max(dim=-1)  # (B,), (B,)
        live = memory.mask[:, t]  # (B,)
        labels[:, t] = torch.where(live, label, torch.zeros_like(label))
        total = total + torch.where(live, best, torch.zeros_like(best))
        prev = model.embed_labels(label)  # (B, E)
    return SearchResult(labels, total, labels.unsqueeze(1), total.unsqueeze(1))


@torch.no_grad()
def beam_search(model: Seq2SeqTagger, memory: Memory, beam_size: int) -> SearchResult:
    """Hard beam search (Alg. 1) with k = beam_size entries per sentence.

    memory: Memory with (B, T, S) states and (B, T) mask -> SearchResult with all k entries.
    """
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    B, T = memory.mask.shape
    k, L = beam_size, model.n_labels
    device = memory.states.device
    lengths = memory.mask.sum(dim=1)  # (B,)
    beam_memory = memory.repeat_beams(k)  # (B*k, T, S)

    state = model.initial_state(B * k, device)
    prev = model.start_embedding(B * k)  # (B*k, E)
    # At t = 0 all k entries are the same empty hypothesis; only entry 0 is live so that the
    # first expansion yields k *distinct* hypotheses (not k copies of the best one).
    beam_scores = torch.full((B, k), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0
    backpointers = torch.zeros(T, B, k, dtype=torch.long, device=device)
    chosen = torch.zeros(T, B, k, dtype=torch.long, device=device)
    # A frozen sentence's candidate table: entry i may only continue as (i, label 0) at no cost.
    frozen_moves = torch.full((k, L), float("-inf"), device=device)
    frozen_moves[:, 0] = 0.0
    first_row = torch.arange(B, device=device).unsqueeze(1) * k  # (B, 1): row of each sentence's entry 0

    for t in range(T):
        state, scores = model.step(state, prev, t, beam_memory)  # scores: (B*k, L)
        moves = scores.view(B, k, L)  # (B, k, L)
        done = (t >= lengths).view(B, 1, 1)  # (B, 1, 1)
        moves = torch.where(done, frozen_moves, moves)  # (B, k, L)
        candidates = beam_scores.unsqueeze(-1) + moves  # (B, k, L): s~_t[i, v] = s_t,i + f(h_t,i, v)
        beam_scores, flat = candidates.view(B, k * L).topk(k, dim=-1)  # (B, k) each, sorted
        back = flat // L  # (B, k): which entry each new hypothesis extends
        label = flat % L  # (B, k)
        backpointers[t], chosen[t] = back, label
        # Reorder decoder states to follow their hypotheses, then feed the chosen labels.
        rows = (back + first_row).view(-1)  # (B*k,)
        state = type(state)(state.h[rows], state.c[rows])
        prev = model.embed_labels(label.view(-1))  # (B*k, E)

    # Follow backpointers from the last position to recover every entry's sequence.
    beam_labels = torch.zeros(B, k, T, dtype=torch.long, device=device)
    entry = torch.arange(k, device=device).expand(B, k)  # (B, k)
    for t in range(T - 1, -1, -1):
        beam_labels[:, :, t] = chosen[t].gather(1, entry)
        entry = backpointers[t].gather(1, entry)
    beam_labels = beam_labels * memory.mask.unsqueeze(1)  # frozen dummy moves -> 0 padding
    return SearchResult(beam_labels[:, 0], beam_scores[:, 0], beam_labels, beam_scores)
