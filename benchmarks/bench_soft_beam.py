"""Speed and memory of soft-beam training (G~_DL at k = 1, 3, 5 and G~_hinge at k = 3) against
cross-entropy: same model, data and batches, measured side by side in one run.

    python benchmarks/bench_soft_beam.py --task synthetic [--data-root DIR] [--sentences 640]
        [--batch-size 32] [--repeats 3] [--device cpu|cuda] [--threads 1]
        [--model KEY=VALUE ...] [--variants "CE,DL k=3"] [--reference] [--init CKPT] [--alpha 1]

--model overrides the tagger's sizes (TaggerConfig fields, as TrainConfig.model), e.g. the reduced
CCG configuration: --model encoder_hidden=128 decoder_hidden=128 label_dim=64 char_filters=0
dropout=0.25. --reference adds the soft-beam variants again, run through the pre-issue-13
implementation kept in tests/soft_beam_reference.py, interleaved with the others (before/after in
one run). --init times a trained tagger (e.g. the CE checkpoint the soft-beam rows warm-start
from): its peaked distributions let the soft beam gather only the candidates whose p_i do not
underflow (core/search/soft_beam.py), which a fresh, near-uniform tagger never allows.

Speed: sentences/s of one training pass (forward + backward + Adam step), median of --repeats,
per wall-clock second and per CPU second of this process (the latter is steadier on a shared,
oversubscribed machine: time spent descheduled does not count; with --threads 1 the two agree on an
idle one).
Memory: on CUDA, the allocator's peak per batch (torch.cuda.max_memory_allocated); on CPU, the
bytes of tensors autograd saves for the backward pass (the activation memory that grows with k),
taken with torch.autograd.graph.saved_tensors_hooks, the largest over the batches.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(1, str(Path(__file__).resolve().parents[1] / "tests"))  # the reference implementation

from core.data import load_task, make_batches  # noqa: E402
from core.objectives import hamming_cost  # noqa: E402
from core.config import resolve_device, seed_everything  # noqa: E402
from core.loading import load_tagger  # noqa: E402
from core.stages.seq2seq import batch_loss, build_model  # noqa: E402
from core.train import TrainConfig  # noqa: E402


def saved_bytes(fn) -> int:
    """Run fn() and return the bytes of distinct storages autograd saved for backward."""
    seen: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


VARIANTS = [("CE", "ce", 1), ("DL k=1", "dl", 1), ("DL k=3", "dl", 3), ("DL k=5", "dl", 5), ("hinge k=3", "hinge", 3)]


def parse_overrides(items: list[str], parser: argparse.ArgumentParser) -> dict:
    """["label_dim=64", "dropout=0.25"] -> {"label_dim": 64, "dropout": 0.25} (ints, floats, else strings)."""
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            parser.error(f"--model: expected KEY=VALUE, got {item!r}")
        for kind in (int, float):
            try:
                overrides[key] = kind(value)
                break
            except ValueError:
                continue
        else:
            overrides[key] = value
    return overrides


def timed_pass(model, optimizer, batches, config: TrainConfig, device: torch.device, loss_fn=batch_loss,
               alpha: float = 1.0, autocast: torch.dtype | None = None) -> tuple[float, float, int]:
    """One training pass (forward + backward + optimizer step per batch) over `batches` with
    `config`'s objective at `alpha`: (sentences/s wall, sentences per CPU-second, peak memory per
    batch in bytes: on CUDA the allocator's peak above what was allocated before the batch, on the
    CPU the bytes autograd saved). `autocast`: the forward pass under torch.autocast in that dtype."""
    peak, sentences = 0, sum(len(b.lengths) for b in batches)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start, start_cpu = time.perf_counter(), time.process_time()
    for batch in batches:
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
        holder = {}

        def measure():
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                return holder.setdefault("loss", loss_fn(model, batch, config, alpha, hamming_cost))

        activation = saved_bytes(measure) if device.type == "cpu" else (measure(), 0)[1]
        optimizer.zero_grad(set_to_none=True)
        holder["loss"].backward()
        optimizer.step()
        if device.type == "cuda":
            activation = torch.cuda.max_memory_allocated() - before
        peak = max(peak, activation)
    if device.type == "cuda":
        torch.cuda.synchronize()
    wall, cpu = time.perf_counter() - start, time.process_time() - start_cpu
    return sentences / wall, sentences / max(cpu, 1e-9), peak


def train_pass(model, optimizer, batches, config: TrainConfig, device: torch.device,
               autocast: torch.dtype | None = None) -> tuple[float, int]:
    """(sentences/s, peak memory per batch) of one training pass at alpha = 1 (benchmarks/gpu_check.py)."""
    speed, _, peak = timed_pass(model, optimizer, batches, config, device, autocast=autocast)
    return speed, peak


def reference_batch_loss(model, batch, config: TrainConfig, alpha: float, cost) -> torch.Tensor:
    """`core.train.batch_loss` for ce (gold feed) / dl / hinge through the pre-issue-13 implementation."""
    import soft_beam_reference as reference

    memory = model.encode(batch.words, batch.chars, batch.lengths)
    if config.objective == "ce":
        return reference.cross_entropy_loss(model, memory, batch.labels)
    per_sentence = reference.direct_loss if config.objective == "dl" else reference.soft_hinge_loss
    return per_sentence(model, memory, batch.labels, config.beam_size, alpha, cost).sum() / batch.lengths.sum()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="synthetic")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--sentences", type=int, default=640)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--model", nargs="*", default=[], metavar="KEY=VALUE",
                        help="tagger size overrides (TaggerConfig fields), e.g. char_filters=0 label_dim=64")
    parser.add_argument("--variants", default="", help="comma-separated subset of: " + ", ".join(n for n, _, _ in VARIANTS))
    parser.add_argument("--init", default=None, help="time a trained tagger (a seq2seq checkpoint directory) instead of a fresh one")
    parser.add_argument("--alpha", type=float, default=1.0, help="soft beam alpha (default 1, where a schedule starts)")
    parser.add_argument("--reference", action="store_true", help="also time the pre-issue-13 soft beam (tests/soft_beam_reference.py)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = resolve_device(args.device)
    task = load_task(args.task, args.data_root)
    seed_everything(0)
    overrides = parse_overrides(args.model, parser)
    base = TrainConfig(task=args.task, out="/dev/null", data_root=args.data_root, progress=False, model=overrides)
    if args.init:
        if args.model:
            parser.error("--model and --init: the checkpoint fixes the sizes")
        model, vocabs, _ = load_tagger(args.init, device=str(device))
        model.train()  # dropout as in training
    else:
        try:
            model, vocabs = build_model(base, task)
        except (TypeError, ValueError) as error:  # a bad --model field or value
            parser.error(f"--model: {error}")
    model.to(device)
    sentences = task.train[: args.sentences]
    batches = [b.to(device) for b in make_batches(sentences, vocabs, args.batch_size, shuffle=True, seed=0)]
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(chosen) - {n for n, _, _ in VARIANTS}
    if unknown:
        parser.error(f"--variants: unknown {sorted(unknown)}")
    variants = [v for v in VARIANTS if (not chosen or v[0] in chosen) and v[2] <= model.n_labels]
    if args.reference:
        variants += [(f"{name} (before)", objective, k) for name, objective, k in variants]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def one_pass(config: TrainConfig, loss_fn) -> tuple[float, float, int]:
        return timed_pass(model, optimizer, batches, config, device, loss_fn, args.alpha)

    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name, _, _ in variants}
    for _ in range(args.repeats):  # interleaved, so drifts in machine load hit every variant alike
        for name, objective, k in variants:
            config = TrainConfig(task=args.task, out="/dev/null", objective=objective, beam_size=k, init="-", progress=False)
            results[name].append(one_pass(config, reference_batch_loss if name.endswith("(before)") else batch_loss))

    def summary(name: str) -> tuple[float, float, int]:  # median wall speed, median CPU speed, peak memory
        runs = results[name]
        return statistics.median(s for s, _, _ in runs), statistics.median(c for _, c, _ in runs), max(m for _, _, m in runs)

    memory_kind = "CUDA peak allocated" if device.type == "cuda" else "autograd saved tensors"
    tokens = sum(int(b.lengths.sum()) for b in batches)
    print(f"task={args.task} device={device} threads={torch.get_num_threads()} sentences={len(sentences)} "
          f"tokens={tokens} batch={args.batch_size} labels={model.n_labels} repeats={args.repeats} memory={memory_kind} "
          f"alpha={args.alpha} init={args.init or 'fresh'}")
    print(f"model={model.config}")
    print(f"load average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    print("Ratios against CE; a '(before)' row against CE (before), the pre-issue-13 code throughout.")
    print("| objective | sentences/s (wall) | slowdown vs CE | sentences per CPU-s | slowdown vs CE (CPU) "
          "| peak memory per batch (MB) | memory vs CE |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, _, _ in variants:
        ce_speed, ce_cpu, ce_memory = summary("CE (before)" if name.endswith("(before)") else "CE")
        speed, cpu, memory = summary(name)
        print(f"| {name} | {speed:,.0f} | {ce_speed / speed:.2f}x | {cpu:,.0f} | {ce_cpu / cpu:.2f}x "
              f"| {memory / 2**20:.1f} | {memory / ce_memory:.2f}x |")


if __name__ == "__main__":
    main()
