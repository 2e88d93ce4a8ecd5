"""Throughput of cross-entropy training and of greedy / beam decoding, measured side by side.

    python benchmarks/bench_ce.py --task twitter_pos [--data-root DIR] [--embeddings FILE]
        [--batch-size 32] [--beam-sizes 1,3,5] [--repeats 3] [--device cpu]

Prints one markdown table: sentences/s of one CE training epoch and of decoding the dev split with
greedy and beam search, each the median of --repeats runs, and the ratio of each to greedy
decoding (ratios taken within this one run, since these machines are noisy).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.data import load_task, make_batches  # noqa: E402
from core.config import resolve_device, seed_everything  # noqa: E402
from core.decoding import predict  # noqa: E402
from core.stages.seq2seq import Seq2SeqStage  # noqa: E402
from core.train import TrainConfig, run_epoch  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--task", default="synthetic")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--embeddings", default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--decode-batch-size", type=int, default=64)
    parser.add_argument("--beam-sizes", default="1,3,5")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-sentences", type=int, default=2000, help="cap on training sentences per timed epoch")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    seed_everything(0)
    device = resolve_device(args.device)
    config = TrainConfig(task=args.task, out="/dev/null", data_root=args.data_root, embeddings=args.embeddings,
                         batch_size=args.batch_size, progress=False)
    task = load_task(args.task, args.data_root)
    stage = Seq2SeqStage(config, task, device)
    model, vocabs = stage.model, stage.vocabs
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    train = task.train[: args.train_sentences]
    dev = task.dev

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    rows: dict[str, list[float]] = {}
    for repeat in range(args.repeats):
        batches = make_batches(train, vocabs, args.batch_size, shuffle=True, seed=repeat)
        seconds = timed(lambda: run_epoch(stage, optimizer, batches, config, repeat + 1, device))
        rows.setdefault("CE training epoch", []).append(len(train) / seconds)
    # Decoders interleaved round by round, so drifts in machine load hit each alike.
    beam_sizes = [int(k) for k in args.beam_sizes.split(",")]
    for repeat in range(args.repeats):
        seconds = timed(lambda: predict(model, dev, vocabs, "greedy", batch_size=args.decode_batch_size))
        rows.setdefault("greedy decoding", []).append(len(dev) / seconds)
        for k in beam_sizes:
            seconds = timed(lambda: predict(model, dev, vocabs, "beam", k, batch_size=args.decode_batch_size))
            rows.setdefault(f"beam k={k} decoding", []).append(len(dev) / seconds)

    greedy = statistics.median(rows["greedy decoding"])
    print(f"task={args.task} device={device} threads={torch.get_num_threads()} train_batch={args.batch_size} "
          f"decode_batch={args.decode_batch_size} train_sentences={len(train)} dev_sentences={len(dev)} "
          f"params={sum(p.numel() for p in model.parameters())}")
    print("| what | sentences/s (median) | ratio to greedy decoding |")
    print("| --- | ---: | ---: |")
    for name, values in rows.items():
        median = statistics.median(values)
        print(f"| {name} | {median:,.0f} | {median / greedy:.2f} |")


if __name__ == "__main__":
    main()
