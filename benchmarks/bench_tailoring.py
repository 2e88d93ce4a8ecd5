"""Instance-tailored inference networks (Tu & Gimpel 2019, §4.2.1): the batched (torch.func.vmap)
path against one network copy at a time, on a trained infnet and its CRF, in one run.

For each batch of the split, both paths tailor the same sentences (N steps, lr, momentum 0.9);
reports sentences/s of each, their ratio, the largest logit difference and whether the labels agree.
Every architecture: the recurrent ones run their LSTMs unrolled in the batched path (core.lstm).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_tailoring.py --checkpoint runs/pos-infplus-cnn13 \\
        --split test --steps 3 --lr 1e-2
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, help="a trained infnet (its checkpoint names its CRF)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--limit", type=int, default=0, help="only the first N sentences (0: all)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from core.data import load_task, make_batches
    from core.tailoring import _tailor_batched, _tailor_one_by_one, batched_is_faster
    from core.loading import load_crf, load_infnet

    infnet, vocabs, meta = load_infnet(args.checkpoint)
    crf, _, _ = load_crf(meta["energy"])
    infnet.eval(), crf.eval()
    task = load_task(meta["task"]["name"], meta["task"].get("data_root"))
    sentences = getattr(task, args.split)
    if args.limit:
        sentences = sentences[: args.limit]
    seconds = {"batched": 0.0, "one_by_one": 0.0}
    max_diff, same_labels, tokens = 0.0, 0, 0
    # Untimed: both paths once on a few sentences, so that neither pays torch's first-call costs
    # in the figures (a 32-sentence, 2-step run read 0.32x batched with them, 1.4x over 128 x 10).
    warm = next(iter(make_batches(sentences[:4], vocabs, 4)))
    with torch.no_grad():
        warm_unary = crf.unary(warm.words, warm.chars, warm.lengths)  # (4, T, L)
    for path in (_tailor_batched, _tailor_one_by_one):
        path(infnet, crf.crf, warm.words, warm.chars, warm.lengths, warm_unary, (1,), args.lr, 0.9)
    for batch in make_batches(sentences, vocabs, args.batch_size):
        with torch.no_grad():
            unary = crf.unary(batch.words, batch.chars, batch.lengths)  # (B, T, L)
        call = (infnet, crf.crf, batch.words, batch.chars, batch.lengths, unary, (args.steps,), args.lr, 0.9)
        start = time.perf_counter()
        [batched] = _tailor_batched(*call)
        seconds["batched"] += time.perf_counter() - start
        start = time.perf_counter()
        [looped] = _tailor_one_by_one(*call)
        seconds["one_by_one"] += time.perf_counter() - start
        max_diff = max(max_diff, (batched.logits - looped.logits).abs().max().item())
        same_labels += int(((batched.labels == looped.labels) & batch.mask).sum())
        tokens += int(batch.mask.sum())
    n = len(sentences)
    layers = f", {infnet.config.layers} layers" if infnet.config.arch == "blstm" else ""
    print(f"# {args.checkpoint} ({infnet.config.arch}{layers}, H = {infnet.config.hidden}), {meta['task']['name']} {args.split}: {n} sentences, "
          f"N = {args.steps}, lr {args.lr}, batch {args.batch_size}, {args.threads} thread(s)")
    print("| path | sentences/s |")
    print("| --- | ---: |")
    for path, s in seconds.items():
        print(f"| {path} | {n / s:.1f} |")
    print(f"| batched / one-by-one speed | {seconds['one_by_one'] / seconds['batched']:.2f}x |")
    print(f"| max logit difference | {max_diff:.2e} |")
    print(f"| labels agreeing | {100 * same_labels / tokens:.3f} % of {tokens} tokens |")
    choice = "batched" if batched_is_faster(infnet, next(infnet.parameters()).device) else "one_by_one"
    print(f"| tailor_trace's path for this network here | {choice} |")


if __name__ == "__main__":
    main()
