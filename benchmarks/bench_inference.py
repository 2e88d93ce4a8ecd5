"""Seed 001 Table 3: test-time inference speed (examples/s) of inference networks, Viterbi and
gradient descent on a trained BLSTM-CRF, at batch size 10 (the paper's setting) and other sizes.

    OMP_NUM_THREADS=1 BEAMTUNE_DATA=... .venv/bin/python benchmarks/bench_inference.py \
        --crf RUNS/pos-crf --infnet cnn=RUNS/pos-inf-cnn13 --infnet blstm=RUNS/pos-inf-blstm \
        --infnet seq2seq=RUNS/pos-inf-seq2seq --split test --batch-sizes 10,32,128,547 \
        --gd-steps 20 --gd-lr 100 --threads 1 [--json OUT.json]

What is timed: the model's forward work for the whole split, batches pre-built (bucketed by
length, as `beamtune decode` does) so corpus reading and vocab lookup are excluded.
  - infnet: A_Psi(x) -> argmax labels;
  - Viterbi: BLSTM features (unary) + batched Viterbi;
  - GD: BLSTM features + N momentum steps on E(x, softmax(y)) at one lr (one trajectory, random
    start), then argmax.
Per cell: the median of --repeats runs after one warm-up, as examples (sentences) per second.
The GD cost of the oracle grid (9 lrs, N up to 1000) is measured by `beamtune gd-oracle`.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.data import load_task, make_batches  # noqa: E402
from core.search.gradient import gradient_descent  # noqa: E402
from core.loading import load_crf, load_infnet  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--crf", required=True, help="'crf' checkpoint directory")
    parser.add_argument("--infnet", action="append", default=[], help="NAME=DIR of an 'infnet' checkpoint (repeatable)")
    parser.add_argument("--split", choices=("dev", "test"), default="test")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--batch-sizes", default="10,32,128,512")
    parser.add_argument("--gd-steps", type=int, default=20)
    parser.add_argument("--gd-lr", type=float, default=100.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    crf, vocabs, meta = load_crf(args.crf, args.device)
    task = load_task(meta["task"]["name"], args.data_root)
    sentences = task.dev if args.split == "dev" else task.test
    nets = {}
    for spec in args.infnet:
        name, _, directory = spec.partition("=")
        net, net_vocabs, _ = load_infnet(directory, args.device)
        if net_vocabs.labels.itos != vocabs.labels.itos or net_vocabs.words.itos != vocabs.words.itos:
            raise SystemExit(f"{directory}: vocabularies differ from the CRF's {args.crf}")
        nets[name] = net
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    methods = {}
    for name, net in nets.items():
        methods[name] = lambda batch, net=net: net(batch.words, batch.chars, batch.lengths).labels

    def viterbi(batch):
        unary = crf.unary(batch.words, batch.chars, batch.lengths)
        return crf.viterbi(unary, batch.mask).labels

    def gd(batch):
        unary = crf.unary(batch.words, batch.chars, batch.lengths)
        return gradient_descent(crf.crf, unary, batch.mask, steps=(args.gd_steps,), lrs=(args.gd_lr,)).labels

    methods["viterbi"] = viterbi
    methods[f"gd(N={args.gd_steps})"] = gd

    rows = []
    print(f"# {task.name} {args.split}: {len(sentences)} sentences, L = {len(vocabs.labels)}, "
          f"threads {args.threads}, device {device}, torch {torch.__version__}")
    print("method," + ",".join(f"b{b}" for b in sizes))
    for name, fn in methods.items():
        cells = []
        for b in sizes:
            batches = [batch.to(device) for batch in make_batches(sentences, vocabs, b)]

            def run(fn=fn, batches=batches):
                with torch.no_grad():
                    for batch in batches:
                        fn(batch)

            seconds = timed(run, args.repeats, device)
            cells.append(len(sentences) / seconds)
            rows.append({"method": name, "batch_size": b, "seconds": seconds, "examples_per_second": len(sentences) / seconds})
        print(name + "," + ",".join(f"{c:.0f}" for c in cells), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"task": task.name, "split": args.split, "threads": args.threads,
                                         "device": str(device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
