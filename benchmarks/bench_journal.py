"""Cost of journaling a trial's MLflow writes (storage.tracking.TrialRun: append + fsync + replay)
against writing them straight to MLflow (`MlflowClient.log_batch`), both on one SQLite store, in one
process, round-robin (one epoch's metrics of each in turn, so both see the same machine load).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_journal.py --epochs 100

Prints the median and p90 milliseconds per epoch write of each, and the load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--metrics", type=int, default=12, help="metrics per epoch (a CE trial logs about 12)")
    args = parser.parse_args()

    from mlflow.entities import Metric

    from storage import tracking

    tmp = Path(tempfile.mkdtemp(prefix="bench-journal-"))
    uri = f"sqlite:///{tmp}/mlflow.db"
    experiment = tracking.ensure_experiment(uri, "bench")
    parent = tracking.start_parent(uri, experiment, "bench", {}, "name: bench\n")
    journaled = tracking.TrialRun.open(uri, experiment, parent, "journaled", "journaled", None, {}, tmp / "spool")
    client = tracking.client(uri)
    direct = client.create_run(experiment, run_name="direct", tags={tracking.PARENT_TAG: parent}).info.run_id
    times: dict[str, list[float]] = {"journaled": [], "direct": []}
    load_before = os.getloadavg()
    for epoch in range(1, args.epochs + 1):
        metrics = {f"m{i}": epoch + i / 100 for i in range(args.metrics)}
        began = time.perf_counter()
        journaled.log_metrics(metrics, step=epoch)
        times["journaled"].append(time.perf_counter() - began)
        began = time.perf_counter()
        now = int(time.time() * 1000)
        client.log_batch(direct, metrics=[Metric(k, v, now, epoch) for k, v in metrics.items()])
        times["direct"].append(time.perf_counter() - began)
    assert not journaled.spool.pending()
    assert len(client.get_metric_history(journaled.run_id, "m0")) == args.epochs
    for name, values in times.items():
        values = sorted(values)
        print(f"{name:9s} median {1000 * statistics.median(values):7.2f} ms  p90 "
              f"{1000 * values[int(0.9 * len(values))]:7.2f} ms per epoch write ({args.metrics} metrics)")
    print(f"load average before {' '.join(f'{x:.2f}' for x in load_before)}, after "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
