"""Sweep overhead on the embedded default: local Ray started by beamtune, SQLite MLflow.

Runs N trials (default 16) of a CE model on the synthetic task, sized so one trial trains ~20 s,
`max_concurrent` at a time with 1 CPU each (FIFO, no early stopping), through `sweeps.launch.run_sweep`,
then reads each trial's times back from what the sweep recorded:

    trial start   the trainable's first line (the `attempts[0].time` in its checkpoint sidecar)
    first report  the MLflow timestamp of its epoch-1 metrics (start -> first report = start-up
                  latency of the trial: checkpoint/MLflow setup, data, model, plus epoch 1 itself)
    trial end     its MLflow run's end time (after the final dev/test scoring and artifact upload)

and reports: summed trial time vs. sweep wall time (ideal wall = summed / concurrency; overhead =
wall / ideal - 1), the queueing gap between a trial ending and the next one starting on the freed
slot, and each trial's start-up latency. `--bare K` also trains K trials of the same config with
core.train alone (no Ray, no MLflow; `max_concurrent` processes at a time) as the in-trial reference.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_sweep.py --trials 16 --epochs 25 --bare 2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MODEL = {"encoder_hidden": 32, "decoder_hidden": 32, "label_dim": 16, "word_dim": 32, "char_filters": 16}
FIXED = {**MODEL, "batch_size": 32, "patience": 0, "lr": 0.003}


def bare_trial(args: tuple[int, int, str]) -> float:
    """One trial of the same config with core.train only; returns its seconds."""
    epochs, seed, out = args
    import torch

    from core.train import TrainConfig, train

    torch.set_num_threads(1)
    start = time.perf_counter()
    train(TrainConfig(task="synthetic", out=out, epochs=epochs, progress=False, model=dict(MODEL), threads=1,
                      batch_size=FIXED["batch_size"], patience=0, lr=FIXED["lr"], seed=seed))
    return time.perf_counter() - start


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--bare", type=int, default=0, help="also time this many bare core.train trials")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()

    from storage import tracking
    from storage.best import TRIAL_SIDECAR
    from sweeps.launch import run_sweep
    from sweeps.spec import validate

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-sweep-"))
    storage, uri = work / "sweeps", f"sqlite:///{work}/mlflow.db"
    spec = validate({"name": "bench", "task": "synthetic", "stage": "ce", "epochs": args.epochs, "fixed": FIXED,
                     "space": {"seed": {"grid": list(range(args.trials))}}, "search": {"algorithm": "grid"},
                     "scheduler": {"type": "fifo"}, "num_samples": 1, "max_concurrent": args.concurrent,
                     "resources": {"cpu": 1}, "max_failures": 0}, storage=storage)
    load_before = loadavg()
    t0 = time.time()
    # As `beamtune sweep` runs it: run_sweep starts local Ray itself (and warms its workers while
    # MLflow and Tune set up) and stops it at the end.
    outcome = run_sweep(spec, storage=storage, tracking_uri=uri, num_cpus=args.concurrent, verbose=0)
    wall = time.time() - t0
    load_after = loadavg()
    assert outcome.errors == 0 and outcome.trials == args.trials, outcome

    # Per-trial times from the sidecars (trial start) and MLflow (first report, end).
    starts: dict[str, float] = {}
    for path in (storage / "bench").glob(f"*/checkpoint_*/{TRIAL_SIDECAR}"):
        info = json.loads(path.read_text())
        starts[info["trial_id"]] = info["attempts"][0]["time"]
    client = tracking.client(uri)
    rows = []
    for run in tracking.child_runs(uri, outcome.experiment_id, outcome.parent_run_id):
        tid = run.data.tags[tracking.TRIAL_TAG]
        history = sorted(client.get_metric_history(run.info.run_id, "dev_score"), key=lambda m: m.step)
        stamps = [m.timestamp / 1000 for m in history]
        epochs = [b - a for a, b in zip(stamps, stamps[1:])]
        rows.append({"trial": tid, "start": starts[tid], "first": stamps[0], "end": run.info.end_time / 1000,
                     "epoch": statistics.median(epochs) if epochs else float("nan")})
    rows.sort(key=lambda r: r["start"])
    summed = sum(r["end"] - r["start"] for r in rows)
    span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    ideal = summed / args.concurrent
    ends = sorted(r["end"] for r in rows)
    gaps = [r["start"] - ends[i] for i, r in enumerate(rows[args.concurrent:])]  # slot freed -> next trial starts

    print(f"# bench_sweep: {args.trials} trials x {args.epochs} epochs, {args.concurrent} concurrent, 1 CPU each; "
          f"load average before {load_before}, after {load_after}")
    print("| trial | queue wait from sweep start (s) | start-up: start -> first report (s) | median epoch (s) "
          "| start-up minus one epoch (s) | trial time (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for i, r in enumerate(rows):
        startup = r["first"] - r["start"]
        print(f"| {i:2d} | {r['start'] - t0:6.1f} | {startup:5.2f} | {r['epoch']:5.2f} | {startup - r['epoch']:5.2f} "
              f"| {r['end'] - r['start']:5.1f} |")
    startup = [r["first"] - r["start"] - r["epoch"] for r in rows]
    print()
    print("| measure | value |")
    print("| --- | ---: |")
    print(f"| summed trial time (start -> MLflow run end) | {summed:.1f} s |")
    print(f"| mean trial time | {summed / len(rows):.1f} s |")
    print(f"| ideal wall = summed / {args.concurrent} | {ideal:.1f} s |")
    print(f"| sweep wall: run_sweep (Ray start, MLflow setup, Tune, Ray stop, best selection) | {wall:.1f} s |")
    print(f"| sweep span, first trial start -> last trial end | {span:.1f} s |")
    print(f"| overhead, whole call: wall / ideal - 1 | {100 * (wall / ideal - 1):.1f} % |")
    print(f"| overhead, trial span: span / ideal - 1 | {100 * (span / ideal - 1):.1f} % |")
    print(f"| sweep start -> first trial start | {rows[0]['start'] - t0:.2f} s |")
    phases = outcome.phases
    print(f"| of which: local Ray start (ray.init) | {phases['ray_start']:.2f} s |")
    print(f"| MLflow setup (database, experiment, parent run; overlaps Ray's start) | {phases['tracking_setup']:.2f} s |")
    print(f"| Ray up -> first trial start (Tune set-up, trial actor start) | "
          f"{rows[0]['start'] - t0 - phases['ray_start']:.2f} s |")
    print(f"| last trial end -> Tune returns | {t0 + wall - phases['finish'] - phases['ray_shutdown'] - phases['score_stopped'] - ends[-1]:.2f} s |")
    print(f"| ray.shutdown; MLflow bookkeeping after it | {phases['ray_shutdown']:.2f} s; {phases['finish']:.2f} s |")
    if gaps:
        print(f"| slot freed -> next trial starts: median / max | {statistics.median(gaps):.2f} / {max(gaps):.2f} s |")
    print(f"| trial start-up beyond one epoch: median / max | {statistics.median(startup):.2f} / {max(startup):.2f} s |")

    if args.bare:
        outs = [(args.epochs, seed, str(work / f"bare-{seed}")) for seed in range(args.bare)]
        with ProcessPoolExecutor(args.concurrent) as pool:
            bare = list(pool.map(bare_trial, outs))
        mean_bare = statistics.mean(bare)
        print(f"| bare core.train trial ({args.bare} run, {args.concurrent} at a time), mean | {mean_bare:.1f} s |")
        print(f"| in-trial overhead: mean sweep trial / mean bare trial - 1 | "
              f"{100 * (summed / len(rows) / mean_bare - 1):.1f} % |")
    print(f"\nload average at the end {loadavg()}; work dir {work}")


if __name__ == "__main__":
    main()
