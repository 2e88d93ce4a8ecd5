"""The soft beam as it was before issue 13's speed-up, kept verbatim in its maths as a reference:
the unfused Algorithm 2 (full (B, k, k_old*V) distance and softmax tensors under autograd), the
decoder step with the whole output projection W [h_t; s_t] per beam entry, and the losses on top.
tests/test_soft_beam.py checks the fast implementation against it (values and gradients), and
benchmarks/bench_soft_beam.py --reference times it side by side. Fixed attention only.
"""
from __future__ import annotations

import torch

from core.seq2seq import DecoderState, Memory, Seq2SeqTagger


def continuous_top_k_argmax(scores: torch.Tensor, k: int, alpha: float) -> torch.Tensor:
    """Algorithm 2: scores (B, n) -> p (B, k, n)."""
    m = scores.topk(k, dim=-1).values  # (B, k)
    distance = (scores.unsqueeze(1) - m.unsqueeze(2)) ** 2  # (B, k, n)
    return torch.softmax(-alpha * distance, dim=-1)  # (B, k, n)


def step(model: Seq2SeqTagger, state: DecoderState, prev: torch.Tensor, t: int, memory: Memory):
    """The pre-issue-13 decoder step: (N, H) state, (N, E) input, memory (N, T, S) -> (state, (N, L))."""
    h, c = model.decoder(prev, (state.h, state.c))  # (N, H) each
    logits = model.output(torch.cat([h, memory.states[:, t]], dim=-1))  # (N, L)
    return DecoderState(h, c), logits.log_softmax(dim=-1)


def soft_beam_search(model, memory, beam_size, alpha, cost_table=None, cost_augmented=False):
    """Algorithm 3 -> (scores (B, k), costs (B, k), labels (B, T))."""
    B, T = memory.mask.shape
    V, k = model.n_labels, beam_size
    lengths = memory.mask.sum(dim=1)  # (B,)
    label_matrix = model.label_embedding.weight[:V]  # (V, E)
    k_old, rows = 1, memory
    state = model.initial_state(B, memory.states.device)
    prev = model.start_embedding(B)  # (B, E)
    beam_scores = torch.zeros(B, 1, dtype=memory.states.dtype)  # (B, k_old)
    beam_costs = torch.zeros(B, 1, dtype=memory.states.dtype)  # (B, k_old)
    back_hard = torch.zeros(T, B, k, dtype=torch.long)
    label_hard = torch.zeros(T, B, k, dtype=torch.long)
    beam_memory = memory.repeat_beams(k)
    for t in range(T):
        state, log_probs = step(model, state, prev, t, rows)  # (B*k_old, V)
        f = log_probs.view(B, k_old, V)
        d = cost_table[:, t].unsqueeze(1) if cost_table is not None else None  # (B, 1, V)
        candidates = beam_scores.unsqueeze(-1) + f  # (B, k_old, V)
        if cost_augmented:
            candidates = candidates + d
        p = continuous_top_k_argmax(candidates.reshape(B, k_old * V), k, alpha).view(B, k, k_old, V)
        soft_back = p.sum(dim=-1)  # (B, k, k_old)
        contrib = p.sum(dim=2)  # (B, k, V)
        new_scores = (p * candidates.unsqueeze(1)).sum(dim=(-1, -2))  # (B, k)
        new_costs = soft_back @ beam_costs.unsqueeze(-1)  # (B, k, 1)
        if d is not None and not cost_augmented:
            new_costs = new_costs + contrib @ d.transpose(1, 2)
        new_costs = new_costs.squeeze(-1)  # (B, k)
        h = soft_back @ state.h.view(B, k_old, -1)  # (B, k, H)
        c = soft_back @ state.c.view(B, k_old, -1)  # (B, k, H)
        prev = (contrib @ label_matrix).view(B * k, -1)  # (B*k, E)
        flat_best = p.view(B, k, k_old * V).argmax(dim=-1)  # (B, k)
        back, label = flat_best // V, flat_best % V
        if t == 0:
            beam_scores, beam_costs = new_scores, new_costs
        else:
            live = (t < lengths).unsqueeze(1)  # (B, 1)
            beam_scores = torch.where(live, new_scores, beam_scores)
            beam_costs = torch.where(live, new_costs, beam_costs)
            back = torch.where(live, back, torch.arange(k))
        back_hard[t], label_hard[t] = back, label
        state = DecoderState(h.reshape(B * k, -1), c.reshape(B * k, -1))
        k_old, rows = k, beam_memory
    labels = torch.zeros(B, T, dtype=torch.long)
    entry = beam_scores.argmax(dim=-1, keepdim=True)  # (B, 1)
    for t in range(T - 1, -1, -1):
        labels[:, t : t + 1] = label_hard[t].gather(1, entry)
        entry = back_hard[t].gather(1, entry)
    return beam_scores, beam_costs, labels * memory.mask


def pick_softly(values, scores, alpha):
    return (torch.softmax(alpha * scores, dim=-1) * values).sum(dim=-1)


def sequence_score(model, memory, labels):
    """sum_t log p(y_t | y_<t, x), teacher-forced through the old step: (B,)."""
    B, T = labels.shape
    state, prev, total = model.initial_state(B), model.start_embedding(B), 0.0
    for t in range(T):
        state, scores = step(model, state, prev, t, memory)  # (B, L)
        picked = scores.gather(-1, labels[:, t : t + 1].clamp(min=0)).squeeze(-1)  # (B,)
        total = total + picked * memory.mask[:, t]
        prev = model.embed_labels(labels[:, t].clamp(min=0))
    return total


def direct_loss(model, memory, gold, beam_size, alpha, cost):
    table = cost(gold, model.n_labels).to(memory.states.dtype) * memory.mask.unsqueeze(-1)  # (B, T, V)
    scores, costs, _ = soft_beam_search(model, memory, beam_size, alpha, cost_table=table)
    return pick_softly(costs, scores, alpha)


def soft_hinge_loss(model, memory, gold, beam_size, alpha, cost):
    table = cost(gold, model.n_labels).to(memory.states.dtype) * memory.mask.unsqueeze(-1)  # (B, T, V)
    scores, _, _ = soft_beam_search(model, memory, beam_size, alpha, cost_table=table, cost_augmented=True)
    return torch.relu(pick_softly(scores, scores, alpha) - sequence_score(model, memory, gold))


def cross_entropy_loss(model, memory, labels):
    """Token-level CE through the old step (teacher forcing with gold labels): a scalar."""
    B, T = labels.shape
    state, prev, out = model.initial_state(B), model.start_embedding(B), []
    for t in range(T):
        state, scores = step(model, state, prev, t, memory)  # (B, L)
        out.append(scores)
        prev = model.embed_labels(labels[:, t].clamp(min=0))
    scores = torch.stack(out, dim=1)  # (B, T, L)
    targets = labels.masked_fill(~memory.mask, -1)  # (B, T)
    return torch.nn.functional.nll_loss(scores.flatten(0, 1), targets.flatten(), ignore_index=-1)
