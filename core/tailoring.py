"""Instance-tailored inference networks (Tu & Gimpel 2019, §4.2.1): for each test sentence, a
fresh copy of the trained inference network takes N momentum-SGD steps on E_Theta(x, A_Psi(x))
alone (the local loss weight lambda = 0), and its output after the steps is the prediction.

`tailor_trace` records the outputs after several step counts N of one trajectory (Table 6's
N = 3, 5, 10 cost 10 steps, not 18).

Shapes: B sentences, T positions, L labels.
"""
from __future__ import annotations

import copy
from typing import Sequence

import torch
from torch.func import functional_call, grad, vmap

from core.infnets import InfnetOutput
from core.lstm import unrolled_lstms
from core.masks import lengths_to_mask
from core.objectives import infnet_loss


def instance_tailor(net, crf, words, chars, lengths, unary, steps: int, lr: float, momentum: float = 0.9):
    """§4.2.1: for each sentence, copy the trained inference network and run `steps` SGD steps
    (momentum) on E(x, A_Psi(x)) alone; return the tailored outputs as one InfnetOutput for the
    batch (logits, probs (B, T, L), labels (B, T)). `net` itself is not changed."""
    if steps < 0 or lr <= 0:
        raise ValueError(f"instance tailoring needs steps >= 0 and lr > 0, got {steps} and {lr}")
    return tailor_trace(net, crf, words, chars, lengths, unary, (steps,), lr, momentum)[0]


def tailor_trace(net, crf, words, chars, lengths, unary, steps: Sequence[int], lr: float,
                 momentum: float = 0.9) -> list[InfnetOutput]:
    """instance_tailor's outputs after each N in `steps` (strictly increasing, >= 0), all from one
    trajectory per sentence: a list of InfnetOutput, one per N.

    The batch is tailored at once where that is faster (`batched_is_faster`): the B copies'
    parameters are stacked on a leading axis and torch.func.vmap runs every copy's forward and
    gradient as one tensor program. The recurrent networks run their LSTMs unrolled there
    (core.lstm.unrolled_lstms: packing needs the lengths' values and torch's fused LSTM kernels
    have no batching rule), with backpropagation through time written out so that the per-copy
    recurrent weights' gradients are one GEMM per layer, not one outer product per step.
    Otherwise one sentence at a time (`_tailor_one_by_one`: a deep copy and torch.optim.SGD per
    sentence), which is also the reference the batched path is tested against."""
    steps = tuple(int(n) for n in steps)
    if not steps or list(steps) != sorted(set(steps)) or steps[0] < 0 or lr <= 0:
        raise ValueError(f"instance tailoring needs increasing steps >= 0 and lr > 0, got {steps} and {lr}")
    tailor = _tailor_batched if batched_is_faster(net, words.device) else _tailor_one_by_one
    return tailor(net, crf, words, chars, lengths, unary, steps, lr, momentum)


# Recurrent networks on the CPU are tailored as a batch up to this H (per direction): every step
# reads each copy's own W_hh (4H x H) from memory, where the loop keeps its one copy in cache.
# Measured (benchmarks/RESULTS.md "Batched recurrent tailoring", session 14): H = 100, NER's
# networks, 1.5-2.5x faster batched; H = 200 0.6-0.7x (BLSTM) and H = 400 0.3-0.4x.
CPU_BATCHED_MAX_HIDDEN = 100


def batched_is_faster(net, device: torch.device) -> bool:
    """Whether tailor_trace tailors `net`'s copies as one vmapped batch on `device`: CNNs always
    (session 3), recurrent networks off the CPU or up to CPU_BATCHED_MAX_HIDDEN."""
    if net.config.arch in ("cnn13", "cnn15") or device.type != "cpu":
        return True
    return net.config.hidden <= CPU_BATCHED_MAX_HIDDEN


def _tailor_batched(net, crf, words, chars, lengths, unary, steps, lr, momentum):
    B, T = words.shape
    mask = lengths_to_mask(lengths, T, words.device)  # (B, T)
    was_training = net.training
    net.eval()
    trainable = {name: p.detach() for name, p in net.named_parameters() if p.requires_grad}
    fixed = {name: p.detach() for name, p in net.named_parameters() if not p.requires_grad}
    fixed.update(dict(net.named_buffers()))
    # One copy of every trainable tensor per sentence: (B, *shape); SGD momentum buffers alike.
    table = next(name for name, p in net.named_parameters() if p is net.word_embedding().weight)
    params = {name: p.unsqueeze(0).expand(B, *p.shape).clone() for name, p in trainable.items() if name != table}
    if table in trainable:
        # A copy of the whole word-embedding table per sentence would dwarf the rest of the
        # network, and only the rows of a sentence's own words can change its output: each copy
        # holds row 0 (padding) and one row per position, and the words are renumbered into them.
        rows = trainable[table]  # (V, D)
        params[table] = torch.cat([rows[:1].expand(B, 1, -1), rows[words]], dim=1)  # (B, 1 + T, D)
        words = _own_rows(words)  # (B, T)
    velocity = {name: torch.zeros_like(p) for name, p in params.items()}

    def energy(p, w, c, n, u, m):
        """One sentence: its copy p, w (T,), c (T, C), n (), u (T, L), m (T,) -> energy, logits (T, L)."""
        out = functional_call(net, {**p, **fixed}, (w[None], c[None], n[None]))
        return infnet_loss(crf, u[None], out.logits, out.labels, m[None], lam=0.0).sum(), out.logits[0]

    # grad with the logits as aux: every call also gives the logits at the parameters it was given,
    # so the output after i steps comes with the (i + 1)-th gradient, at no extra cost.
    step = vmap(grad(energy, has_aux=True))
    recorded = []
    try:
        for i in range(steps[-1] + 1):
            with torch.enable_grad(), unrolled_lstms():
                gradients, logits = step(params, words, chars, lengths, unary, mask)  # logits (B, T, L)
            if i in steps:
                recorded.append(_output(logits.detach(), mask))
            if i == steps[-1]:
                break
            for name in params:  # torch.optim.SGD's momentum rule: v <- mu v + g, p <- p - lr v
                velocity[name] = momentum * velocity[name] + gradients[name]
                params[name] = params[name] - lr * velocity[name]
    finally:
        net.train(was_training)
    return recorded


def _own_rows(words: torch.Tensor) -> torch.Tensor:
    """words (B, T) -> each position's row in its sentence's own table (row 0 padding, row 1 + t
    position t): a repeated word reads, and so trains, the row of its first occurrence, as it
    reads one row of the full table."""
    same = words.unsqueeze(2) == words.unsqueeze(1)  # (B, T, T)
    first = same.int().argmax(dim=-1)  # (B, T): argmax returns the first of equal maxima
    return torch.where(words == 0, 0, 1 + first)  # (B, T)


def _output(logits: torch.Tensor, mask: torch.Tensor) -> InfnetOutput:
    """logits (B, T, L) -> InfnetOutput with logits, probabilities and labels zero past each length."""
    logits = logits * mask.unsqueeze(-1)  # (B, T, L)
    return InfnetOutput(logits, logits.softmax(dim=-1), logits.argmax(dim=-1) * mask)


def _tailor_one_by_one(net, crf, words, chars, lengths, unary, steps, lr, momentum):
    B, T = words.shape
    mask = lengths_to_mask(lengths, T, words.device)  # (B, T)
    logits: list[list[torch.Tensor]] = [[] for _ in steps]  # per N: (T, L) per sentence
    host_lengths = lengths.tolist()  # one device sync here, not one per sentence
    for b in range(B):
        n = host_lengths[b]
        tailored = copy.deepcopy(net).eval()
        params = [p for p in tailored.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
        args = (words[b : b + 1, :n], chars[b : b + 1, :n], lengths[b : b + 1])
        for i in range(steps[-1] + 1):
            with torch.enable_grad():
                out = tailored(*args)
            if i in steps:  # the output after i steps
                logits[steps.index(i)].append(torch.nn.functional.pad(out.logits[0].detach(), (0, 0, 0, T - n)))  # (T, L)
            if i == steps[-1]:
                break
            with torch.enable_grad():
                loss = infnet_loss(crf, unary[b : b + 1, :n], out.logits, out.labels, mask[b : b + 1, :n], lam=0.0).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
    return [_output(torch.stack(per_n), mask) for per_n in logits]  # (B, T, L) each
