"""Gradient-descent inference on a CRF energy (Tu & Gimpel 2019, §3, §4.2, §5.2, appendix).

- `gradient_descent`: minimise E(x, softmax(y)) over y in R^{T x L} with momentum, from a random
  start or from an inference network's logits (warm start, §4.2.2). Many learning rates run as
  one tensor program: rows are (learning rate, sentence) pairs, so the 9 learning rates of the
  oracle grid cost one batched trajectory, and every N of the grid is a prefix of it (recorded
  on the way, not re-run).
- `oracle_choice` / `per_step_choice`: per-instance oracle tuning of (N, lr), or of lr for each
  fixed N (Table 6), maximising the instance's metric (ties: lower energy, then smaller N).
- `instance_tailor`: instance-tailored inference networks (§4.2.1): a fresh copy of the trained
  network per sentence, N momentum-SGD steps on E(x, A_Psi(x)).
- `instance_scores`, `search_errors`: per-sentence accuracy / span F1 and E(x, y) - E(x, y_Viterbi)
  with its Spearman correlation against sentence length (§6.2).
- `run_oracle_grid`: the whole grid over a split, one row per sentence, and Table-6 averages.

Shapes: B sentences, T positions, L labels, R learning rates, K recorded step counts.
"""
from __future__ import annotations

import copy
import time
from typing import Any, NamedTuple, Sequence

import torch

from core.crf import crf_energy, crf_score

GRID_STEPS = (5, 10, 20, 30, 40, 50, 100, 500, 1000)
GRID_LRS = (1e4, 5e3, 1e3, 500.0, 100.0, 50.0, 10.0, 5.0, 1.0)
# Scale of the random start y ~ N(0, INIT_STD^2). Near 0 the softmax is near uniform, so the first
# gradient ranks labels by their energy alone. From a N(0, 1) start the gradient of each label is
# scaled by its random initial probability, the softmax saturates within a few steps at large
# learning rates, and GD stalls far above the Viterbi energy (twitter_pos test, BLSTM-CRF+: best
# lr after 300 steps -138 vs Viterbi -176.5 on 64 tweets; from N(0, 0.01^2): -176.48).
INIT_STD = 0.01


class GDTrace(NamedTuple):
    steps: tuple[int, ...]  # (K,) recorded step counts N, increasing
    lrs: tuple[float, ...]  # (R,)
    labels: torch.Tensor  # (K, R, B, T) argmax of y after N steps (0 past each length)
    energy: torch.Tensor  # (K, R, B) relaxed energy E(x, softmax(y))
    discrete_energy: torch.Tensor  # (K, R, B) energy of the argmax labels
    logits: torch.Tensor  # (R, B, T, L) y after the last step


def check_grid(steps: Sequence[int], lrs: Sequence[float]) -> tuple[tuple[int, ...], tuple[float, ...]]:
    steps = tuple(int(n) for n in steps)
    lrs = tuple(float(r) for r in lrs)
    if not steps or any(n < 0 for n in steps) or list(steps) != sorted(set(steps)):
        raise ValueError(f"steps must be a non-empty, strictly increasing sequence of counts >= 0, got {steps}")
    if not lrs or any(not r > 0 for r in lrs):
        raise ValueError(f"learning rates must be > 0, got {lrs}")
    return steps, lrs


def gradient_descent(
    crf,
    unary: torch.Tensor,
    mask: torch.Tensor,
    steps: Sequence[int] = GRID_STEPS,
    lrs: Sequence[float] = GRID_LRS,
    momentum: float = 0.9,
    init: torch.Tensor | None = None,
    seed: int = 0,
    init_std: float = INIT_STD,
) -> GDTrace:
    """Momentum GD on y for every (lr, sentence) pair at once; records the output after each N
    in `steps`. The update is torch.optim.SGD's: v <- momentum * v + g; y <- y - lr * v.

    crf: a LinearChainCRF (its parameters are held fixed), unary (B, T, L), mask (B, T),
    init: (B, T, L) logits (warm start) or None for y ~ N(0, init_std^2) drawn from `seed` (the
    same start for every learning rate; see INIT_STD)."""
    steps, lrs = check_grid(steps, lrs)
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
    if not init_std >= 0.0:
        raise ValueError(f"init_std must be >= 0, got {init_std}")
    B, T, L = unary.shape
    R = len(lrs)
    if init is not None and init.shape != unary.shape:
        raise ValueError(f"init logits must have the shape of unary {tuple(unary.shape)}, got {tuple(init.shape)}")
    if init is None:
        g = torch.Generator(device="cpu").manual_seed(seed)
        init = (init_std * torch.randn(B, T, L, generator=g)).to(unary.device, unary.dtype)  # (B, T, L)
    transitions, start, end = crf.transitions.detach(), crf.start.detach(), crf.end.detach()
    unary_r = unary.detach().repeat(R, 1, 1)  # (R*B, T, L): row r*B + b is (lr r, sentence b)
    mask_r = mask.repeat(R, 1)  # (R*B, T)
    rate = torch.tensor(lrs, dtype=unary.dtype, device=unary.device).repeat_interleave(B).view(R * B, 1, 1)  # (R*B, 1, 1)
    y = init.detach().to(unary.dtype).repeat(R, 1, 1).clone()  # (R*B, T, L)
    velocity = torch.zeros_like(y)  # (R*B, T, L)
    labels, energy, discrete = [], [], []

    def record() -> None:
        with torch.no_grad():
            probs = y.softmax(dim=-1)  # (R*B, T, L)
            argmax = probs.argmax(dim=-1) * mask_r  # (R*B, T)
            labels.append(argmax.view(R, B, T))
            energy.append(-crf_score(unary_r, transitions, start, end, probs, mask_r).view(R, B))
            # The discrete energy as the relaxed one at one-hot labels (equal by definition): the
            # long-label path checks the labels' range on the host, a device sync at every record.
            one_hot = torch.nn.functional.one_hot(argmax, L).to(y.dtype)  # (R*B, T, L)
            discrete.append(crf_energy(unary_r, transitions, start, end, one_hot, mask_r).view(R, B))

    done = 0
    for n in steps:
        for _ in range(n - done):
            with torch.enable_grad():
                y.requires_grad_(True)
                total = -crf_score(unary_r, transitions, start, end, y.softmax(dim=-1), mask_r).sum()  # ()
                (grad,) = torch.autograd.grad(total, y)  # (R*B, T, L)
            y = y.detach()
            velocity.mul_(momentum).add_(grad) if momentum else velocity.copy_(grad)
            y -= rate * velocity
        done = n
        record()
    return GDTrace(steps, lrs, torch.stack(labels), torch.stack(energy), torch.stack(discrete), y.view(R, B, T, L))


# ---------------------------------------------------------------------------------------------
# Oracle tuning
# ---------------------------------------------------------------------------------------------


def _best_index(scores: torch.Tensor, energies: torch.Tensor) -> torch.Tensor:
    """scores, energies (C, B) over C candidates -> (B,) index of the highest score, ties broken by
    the lowest energy, then by the first candidate."""
    best = scores.max(dim=0, keepdim=True).values  # (1, B)
    candidates = scores >= best  # (C, B)
    masked = torch.where(candidates, energies, torch.full_like(energies, float("inf")))  # (C, B)
    low = masked.min(dim=0, keepdim=True).values  # (1, B)
    first = (candidates & (masked <= low)).to(torch.int8).argmax(dim=0)  # (B,): first True
    return first


def oracle_choice(scores: torch.Tensor, energies: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per instance, the (N, lr) pair with the best metric. scores, energies: (K, R, B) ->
    (k (B,), r (B,)) indices into the step and learning-rate grids (ties: lower energy, then the
    smaller N, then the earlier learning rate)."""
    K, R, B = scores.shape
    flat = _best_index(scores.reshape(K * R, B), energies.reshape(K * R, B))  # (B,)
    return flat // R, flat % R


def per_step_choice(scores: torch.Tensor, energies: torch.Tensor) -> torch.Tensor:
    """For each fixed N, the per-instance best learning rate (Table 6): (K, R, B) -> r (K, B)."""
    return torch.stack([_best_index(scores[k], energies[k]) for k in range(scores.shape[0])])


# ---------------------------------------------------------------------------------------------
# Per-instance metrics and search error
# ---------------------------------------------------------------------------------------------


def instance_scores(gold: Sequence[Sequence[str]], pred: Sequence[Sequence[str]], metric: str) -> list[float]:
    """Per-sentence metric: token accuracy (gold `*` never correct), or span F1 with conlleval's
    chunks (a sentence with no gold and no predicted chunk scores 1)."""
    from core.data import WRONG_TAG

    if len(gold) != len(pred):
        raise ValueError(f"gold has {len(gold)} sentences but predictions have {len(pred)}")
    out = []
    if metric == "accuracy":
        for g, p in zip(gold, pred):
            out.append(sum(a == b and a != WRONG_TAG for a, b in zip(g, p)) / len(g))
        return out
    if metric != "span_f1":
        raise ValueError(f"unknown metric {metric!r}: expected 'accuracy' or 'span_f1'")
    from seqeval.metrics.sequence_labeling import get_entities

    for g, p in zip(gold, pred):
        gs, ps = set(get_entities(list(g))), set(get_entities(list(p)))
        if not gs and not ps:
            out.append(1.0)
            continue
        correct = len(gs & ps)
        out.append(2.0 * correct / (len(gs) + len(ps)))
    return out


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho (scipy), NaN when either side is constant or has < 2 points."""
    from scipy.stats import spearmanr

    if len(x) < 2 or len(set(x)) < 2 or len(set(y)) < 2:
        return float("nan")
    return float(spearmanr(x, y).statistic)


def search_errors(energy: torch.Tensor, viterbi_energy: torch.Tensor, lengths: torch.Tensor,
                  likelihood: Sequence[float] | None = None) -> dict[str, Any]:
    """E(x, y_method) - E(x, y_Viterbi) per sentence (>= 0 up to rounding for discrete outputs) and
    Spearman's rho with the sentence length (and with a language-model likelihood when given)."""
    errors = (energy - viterbi_energy).tolist()
    result = {"errors": errors, "mean": sum(errors) / max(len(errors), 1), "rho_length": spearman(lengths.tolist(), errors)}
    if likelihood is not None:
        result["rho_likelihood"] = spearman(list(likelihood), errors)
    return result


# ---------------------------------------------------------------------------------------------
# Instance-tailored inference networks
# ---------------------------------------------------------------------------------------------


def instance_tailor(net, crf, words, chars, lengths, unary, steps: int, lr: float, momentum: float = 0.9):
    """§4.2.1: for each sentence, copy the trained inference network and run `steps` SGD steps
    (momentum) on E(x, A_Psi(x)) alone; return the tailored outputs as one InfnetOutput for the
    batch (logits, probs (B, T, L), labels (B, T)). `net` itself is not changed.

    CNN networks are tailored for the whole batch at once: the B copies' parameters are stacked on
    a leading axis and torch.func.vmap runs every copy's forward and gradient as one tensor program.
    BLSTM and seq2seq networks go one sentence at a time: vmap cannot run their packed LSTMs
    (packing depends on the lengths' values), and even unpacked, on sentences of one length,
    torch has no batching rule for the LSTM layer; its fallback loops over the copies and was
    2.5x slower than this loop in a prototype."""
    if steps < 0 or lr <= 0:
        raise ValueError(f"instance tailoring needs steps >= 0 and lr > 0, got {steps} and {lr}")
    if net.config.arch in ("cnn13", "cnn15"):
        return _tailor_batched(net, crf, words, chars, lengths, unary, steps, lr, momentum)
    return _tailor_one_by_one(net, crf, words, chars, lengths, unary, steps, lr, momentum)


def _tailor_batched(net, crf, words, chars, lengths, unary, steps, lr, momentum):
    from torch.func import functional_call, grad, vmap

    from core.infnets import InfnetOutput
    from core.objectives import infnet_loss

    B, T = words.shape
    mask = torch.arange(T, device=words.device).unsqueeze(0) < lengths.to(words.device).unsqueeze(1)  # (B, T)
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

    # grad with the logits as aux: every call also gives the logits at the parameters it was given.
    step = vmap(grad(energy, has_aux=True))
    try:
        for _ in range(steps):
            with torch.enable_grad():
                gradients, _ = step(params, words, chars, lengths, unary, mask)
            for name in params:  # torch.optim.SGD's momentum rule: v <- mu v + g, p <- p - lr v
                velocity[name] = momentum * velocity[name] + gradients[name]
                params[name] = params[name] - lr * velocity[name]
        with torch.enable_grad():
            _, logits = step(params, words, chars, lengths, unary, mask)  # (B, T, L)
    finally:
        net.train(was_training)
    logits = logits.detach() * mask.unsqueeze(-1)  # (B, T, L): zero past each length
    return InfnetOutput(logits, logits.softmax(dim=-1), logits.argmax(dim=-1) * mask)


def _tailor_one_by_one(net, crf, words, chars, lengths, unary, steps, lr, momentum):
    from core.infnets import InfnetOutput
    from core.objectives import infnet_loss

    B, T = words.shape
    mask = torch.arange(T, device=words.device).unsqueeze(0) < lengths.to(words.device).unsqueeze(1)  # (B, T)
    logits = []
    host_lengths = lengths.tolist()  # one device sync here, not one per sentence
    for b in range(B):
        n = host_lengths[b]
        tailored = copy.deepcopy(net).eval()
        params = [p for p in tailored.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(params, lr=lr, momentum=momentum)
        args = (words[b : b + 1, :n], chars[b : b + 1, :n], lengths[b : b + 1])
        for _ in range(steps):
            with torch.enable_grad():
                out = tailored(*args)
                loss = infnet_loss(crf, unary[b : b + 1, :n], out.logits, out.labels, mask[b : b + 1, :n], lam=0.0).sum()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            optimizer.step()
        with torch.no_grad():
            final = tailored(*args).logits[0]  # (n, L)
        logits.append(torch.nn.functional.pad(final, (0, 0, 0, T - n)))  # (T, L)
    stacked = torch.stack(logits)  # (B, T, L)
    return InfnetOutput(stacked, stacked.softmax(dim=-1), stacked.argmax(dim=-1) * mask)


# ---------------------------------------------------------------------------------------------
# The oracle grid over a split
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def run_oracle_grid(
    model,
    sentences,
    vocabs,
    metric: str,
    steps: Sequence[int] = GRID_STEPS,
    lrs: Sequence[float] = GRID_LRS,
    momentum: float = 0.9,
    batch_size: int = 256,
    seed: int = 0,
    infnet=None,
    progress: bool = False,
) -> dict[str, Any]:
    """Run the GD grid on every sentence of a split with a trained BLSTMCRF `model` (random
    starts, or warm starts from `infnet`'s logits). Returns

      rows:    one dict per sentence (id, length, chosen N and lr, metric, energies, Viterbi energy)
      table6:  per N: corpus metric and mean energy with the per-instance best lr
      oracle:  corpus metric with the per-instance best (N, lr); viterbi: its corpus metric
      cost:    optimizer steps and wall seconds."""
    from tqdm.auto import tqdm

    from core.data import make_batches
    from core.metrics import evaluate

    steps, lrs = check_grid(steps, lrs)
    model.eval()
    device = next(model.parameters()).device
    itos = vocabs.labels.itos
    gold = [list(s.tags) for s in sentences]
    n_sent = len(sentences)
    K, R = len(steps), len(lrs)
    # Per sentence: predictions for every (N, lr) as label ids; energies (K, R).
    all_labels: list[Any] = [None] * n_sent
    all_energy = torch.zeros(K, R, n_sent)
    all_discrete = torch.zeros(K, R, n_sent)
    viterbi_labels: list[Any] = [None] * n_sent
    viterbi_energy = torch.zeros(n_sent)
    start = time.perf_counter()
    for host in tqdm(make_batches(sentences, vocabs, batch_size), desc="gd grid", disable=not progress, leave=False):
        batch = host.to(device)
        unary = model.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
        init = infnet(batch.words, batch.chars, batch.lengths).logits if infnet is not None else None
        trace = gradient_descent(model.crf, unary, batch.mask, steps, lrs, momentum, init=init, seed=seed)
        vit = model.viterbi(unary, batch.mask)
        # One copy to the host per output and batch (not one per sentence), indices from the host batch.
        trace_labels, vit_labels = trace.labels.cpu(), vit.labels.tolist()  # (K, R, B, T), B lists
        for row, i in enumerate(host.index.tolist()):
            n = len(sentences[i].words)
            all_labels[i] = trace_labels[:, :, row, :n]  # (K, R, n)
            viterbi_labels[i] = vit_labels[row][:n]
        all_energy[:, :, host.index] = trace.energy.cpu()
        all_discrete[:, :, host.index] = trace.discrete_energy.cpu()
        viterbi_energy[host.index] = -vit.scores.cpu()
    seconds = time.perf_counter() - start

    def tags(ids) -> list[str]:
        return [itos[y] for y in ids]

    scores = torch.zeros(K, R, n_sent)
    for k in range(K):
        for r in range(R):
            pred = [tags(all_labels[i][k, r].tolist()) for i in range(n_sent)]
            scores[k, r] = torch.tensor(instance_scores(gold, pred, metric))
    best_k, best_r = oracle_choice(scores, all_discrete)  # (n,), (n,)
    per_n = per_step_choice(scores, all_discrete)  # (K, n)
    columns = torch.arange(n_sent)
    table6 = []
    for k, n_steps in enumerate(steps):
        pred = [tags(all_labels[i][k, int(per_n[k, i])].tolist()) for i in range(n_sent)]
        table6.append({
            "steps": n_steps,
            "score": evaluate(gold, pred, metric)["score"],
            "energy": float(all_energy[k, per_n[k], columns].mean()),
            "discrete_energy": float(all_discrete[k, per_n[k], columns].mean()),
        })
    oracle_pred = [tags(all_labels[i][int(best_k[i]), int(best_r[i])].tolist()) for i in range(n_sent)]
    viterbi_pred = [tags(v) for v in viterbi_labels]
    viterbi_scores = instance_scores(gold, viterbi_pred, metric)
    rows = []
    for i, s in enumerate(sentences):
        k, r = int(best_k[i]), int(best_r[i])
        rows.append({
            "sentence": i, "length": len(s.words), "steps": steps[k], "lr": lrs[r],
            "metric": float(scores[k, r, i]), "energy": float(all_energy[k, r, i]),
            "discrete_energy": float(all_discrete[k, r, i]), "viterbi_energy": float(viterbi_energy[i]),
            "viterbi_metric": viterbi_scores[i],
        })
    chosen_discrete = all_discrete[best_k, best_r, columns]  # (n,)
    lengths = torch.tensor([len(s.words) for s in sentences])
    return {
        "rows": rows,
        "table6": table6,
        "oracle": {"score": evaluate(gold, oracle_pred, metric)["score"], "energy": float(all_energy[best_k, best_r, columns].mean()),
                   "discrete_energy": float(chosen_discrete.mean())},
        "viterbi": {"score": evaluate(gold, viterbi_pred, metric)["score"], "energy": float(viterbi_energy.mean())},
        "search_error": {k: v for k, v in search_errors(chosen_discrete, viterbi_energy, lengths).items() if k != "errors"},
        "cost": {"optimizer_steps": max(steps) * n_sent * R, "trajectories": R, "seconds": seconds,
                 "sentences": n_sent, "warm_start": infnet is not None},
    }
