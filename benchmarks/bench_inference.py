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
Per cell: the median of --repeats runs after one warm-up, as examples (sentences) per second; the
cells are timed round-robin (each round runs every method and batch size once), so load changes
on a shared machine fall on all of them alike.
The timing is core.speed's, which the `speed` sweep stage (Table 3 and Fig. 2 in reports) also uses.
The GD cost of the oracle grid (9 lrs, N up to 1000) is measured by `beamtune gd-oracle`.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.data import load_task  # noqa: E402
from core.loading import load_crf, load_infnet  # noqa: E402
from core.speed import structured_methods, time_methods  # noqa: E402


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
    methods = {}
    for spec in args.infnet:
        name, _, directory = spec.partition("=")
        net, net_vocabs, _ = load_infnet(directory, args.device)
        if net_vocabs.labels.itos != vocabs.labels.itos or net_vocabs.words.itos != vocabs.words.itos:
            raise SystemExit(f"{directory}: vocabularies differ from the CRF's {args.crf}")
        methods[name] = structured_methods(crf, net, args.gd_steps, args.gd_lr)["infnet"]
    crf_methods = structured_methods(crf, None, args.gd_steps, args.gd_lr)
    methods["viterbi"] = crf_methods["viterbi"]
    methods[f"gd(N={args.gd_steps})"] = crf_methods["gd"]
    sizes = [int(s) for s in args.batch_sizes.split(",")]

    print(f"# {task.name} {args.split}: {len(sentences)} sentences, L = {len(vocabs.labels)}, "
          f"threads {args.threads}, device {device}, torch {torch.__version__}")
    print("method," + ",".join(f"b{b}" for b in sizes))
    measured, _ = time_methods(methods, sentences, vocabs, sizes, args.repeats, device)  # round-robin
    rows = [{k: r[k] for k in ("method", "batch_size", "seconds", "examples_per_second")} for r in measured]
    for name in methods:
        print(name + "," + ",".join(f"{r['examples_per_second']:.0f}" for r in rows if r["method"] == name))
    if args.json:
        args.json.write_text(json.dumps({"task": task.name, "split": args.split, "threads": args.threads,
                                         "device": str(device), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
