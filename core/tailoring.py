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

    CNN networks are tailored for the whole batch at once: the B copies' parameters are stacked on
    a leading axis and torch.func.vmap runs every copy's forward and gradient as one tensor program.
    BLSTM and seq2seq networks go one sentence at a time: vmap cannot run their packed LSTMs
    (packing depends on the lengths' values), and even unpacked, on sentences of one length,
    torch has no batching rule for the LSTM layer; its fallback loops over the copies and was
    2.5x slower than this loop in a prototype."""
    steps = tuple(int(n) for n in steps)
    if not steps or list(steps) != sorted(set(steps)) or steps[0] < 0 or lr <= 0:
        raise ValueError(f"instance tailoring needs increasing steps >= 0 and lr > 0, got {steps} and {lr}")
    if net.config.arch in ("cnn13", "cnn15"):
        return _tailor_batched(net, crf, words, chars, lengths, unary, steps, lr, momentum)
    return _tailor_one_by_one(net, crf, words, chars, lengths, unary, steps, lr, momentum)


def _tailor_batched(net, crf, words, chars, lengths, unary, steps, lr, momentum):
    B, T = words.shape
    mask = lengths_to_mask(lengths, T, words.device)  # (B, T)
    was_training = net.training
    net.eval()
    trainable = {name: p.detach() for name, p in net.named_parameters() if p.requires_grad}
    fixed = {name: p.detach() for name, p in net.named_parameters() if not p.requires_grad}
    fixed.update(dict(net.named_buffers()))
    # A copy of the whole word-embedding table per sentence would dwarf the rest of the network:
    # only the rows of the batch's words can change the outputs, so the copies hold just those
    # (id 0, the padding row, stays row 0) and the words are renumbered into them.
    table = next(name for name, p in net.named_parameters() if p is net.word_embedding().weight)
    vocab = torch.unique(torch.cat([words.new_zeros(1), words.flatten()]))  # (U,) sorted, vocab[0] = 0
    words = torch.searchsorted(vocab, words)  # (B, T) ids into the reduced table
    trainable, fixed = ({name: (p[vocab] if name == table else p) for name, p in group.items()} for group in (trainable, fixed))
    # One copy of every trainable tensor per sentence: (B, *shape); SGD momentum buffers alike.
    params = {name: p.unsqueeze(0).expand(B, *p.shape).clone() for name, p in trainable.items()}
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
            with torch.enable_grad():
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
