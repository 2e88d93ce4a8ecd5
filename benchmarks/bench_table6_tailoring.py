"""Table 6's dev tuning of instance tailoring, side by side in one run (round-robin): one decode per
(N, lr) (`score_decoder(..., "tailored")`, as before) against one trajectory per lr recording every
N (core.table6.tailored_grid). Checks that both give the same scores and energies.

    BEAMTUNE_DATA=../shared/data OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_table6_tailoring.py \\
        --checkpoint runs/pos-infplus-cnn13 [--split dev] [--steps 3,5,10] [--lrs 1e-3,1e-2] [--reps 2]
"""
from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    from core.data import load_task
    from core.decoding import score_decoder
    from core.loading import load_for_decoding
    from core.table6 import tailored_grid

    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True, help="an infnet checkpoint (its energy as recorded)")
    parser.add_argument("--split", default="dev")
    parser.add_argument("--steps", default="3,5,10")
    parser.add_argument("--lrs", default="1e-3,1e-2")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    torch.set_num_threads(1)
    steps = tuple(int(v) for v in args.steps.split(","))
    lrs = tuple(float(v) for v in args.lrs.split(","))
    crf, infnet, vocabs, meta = load_for_decoding(args.checkpoint, None)
    task = load_task(meta["task"]["name"])
    sentences = getattr(task, args.split)
    seconds = {"one decode per (N, lr)": [], "one trajectory per lr": []}
    for _ in range(args.reps):
        start = time.perf_counter()
        separate = {(n, lr): score_decoder(sentences, vocabs, task.metric, "tailored", crf=crf, infnet=infnet, steps=n,
                                           lr=lr, batch_size=args.batch_size) for n in steps for lr in lrs}
        seconds["one decode per (N, lr)"].append(time.perf_counter() - start)
        start = time.perf_counter()
        grid = tailored_grid(crf, infnet, sentences, vocabs, task.metric, steps, lrs, 0.9, args.batch_size)
        seconds["one trajectory per lr"].append(time.perf_counter() - start)
    worst = max(max(abs(e["score"] - separate[(e["steps"], e["lr"])]["score"]),
                    abs(e["discrete_energy"] - separate[(e["steps"], e["lr"])]["energy"])) for e in grid)
    print(f"# {args.checkpoint}, {task.name} {args.split}: {len(sentences)} sentences, N {steps}, lr {lrs}, "
          f"batch {args.batch_size}, 1 thread, {args.reps} rep(s) round-robin")
    print("| path | seconds per rep |")
    print("| --- | ---: |")
    for path, values in seconds.items():
        print(f"| {path} | {' / '.join(f'{v:.1f}' for v in values)} |")
    print(f"largest difference in score or mean discrete energy: {worst:.2e}")


if __name__ == "__main__":
    main()
