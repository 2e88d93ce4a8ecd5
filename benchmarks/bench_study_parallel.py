"""`beamtune study run` one stage at a time against `--parallel`, side by side, on one study of the
synthetic task shaped like Tu & Gimpel's: a one-trial energy stage (`crf`-like) that two other
stages warm-start from, beside an independent chain (`local`-like, one trial, and its dependant).
Both runs use a fresh local Ray of --cpus CPUs, a fresh SQLite store; reports each wall time and
whether the two reports' tables are identical.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_study_parallel.py --epochs 6 --cpus 2
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

BEAMTUNE = Path(sys.executable).with_name("beamtune")
TINY = {"encoder_hidden": 16, "decoder_hidden": 16, "label_dim": 8, "word_dim": 16, "char_filters": 4, "batch_size": 32,
        "patience": 0}


def study(epochs: int) -> dict:
    def ce() -> dict:
        return {"task": "synthetic", "stage": "ce", "epochs": epochs, "fixed": dict(TINY), "space": {"seed": {"grid": [1]}},
                "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"}, "max_concurrent": 2}

    def dl() -> dict:
        return {"task": "synthetic", "stage": "dl", "epochs": epochs, "fixed": {"batch_size": 32, "beam_size": 2, "patience": 0},
                "space": {"alpha": {"grid": ["1"]}}, "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"},
                "max_concurrent": 2}

    return {"name": "bench", "stages": {"energy": {"spec": ce()}, "chain": {"spec": ce()},
                                        "from_energy": {"spec": dl(), "warm_start": {"stage": "energy"}},
                                        "from_energy2": {"spec": dl(), "warm_start": {"stage": "energy"}},
                                        "from_chain": {"spec": dl(), "warm_start": {"stage": "chain"}}}}


def run(folder: Path, study_file: Path, cpus: int, parallel: bool) -> tuple[float, str]:
    env = {**os.environ, "RAY_ADDRESS": "local", "OMP_NUM_THREADS": "1"}
    command = [str(BEAMTUNE), "study", "run", str(study_file), "--storage", str(folder / "sweeps"), "--tracking-uri",
               f"sqlite:///{folder}/m.db", "--num-cpus", str(cpus), "--out", str(folder / "report")]
    start = time.perf_counter()
    done = subprocess.run(command + (["--parallel"] if parallel else []), env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode:
        sys.exit(f"{'--parallel' if parallel else 'serial'} run failed:\n{done.stderr[-3000:]}")
    rows = [line for line in (folder / "report" / "report.md").read_text().splitlines() if line.startswith("| ")]
    return seconds, "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--cpus", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        study_file = Path(tmp) / "study.yaml"
        study_file.write_text(yaml.safe_dump(study(args.epochs), sort_keys=False))
        serial, serial_rows = run(Path(tmp) / "serial", study_file, args.cpus, parallel=False)
        parallel, parallel_rows = run(Path(tmp) / "parallel", study_file, args.cpus, parallel=True)
    print(f"5 stages (2 chains), 1 trial each, {args.epochs} epochs, {args.cpus} CPUs")
    print(f"one stage at a time: {serial:7.1f} s")
    print(f"--parallel:          {parallel:7.1f} s   ({serial / parallel:.2f}x)")
    print(f"report tables identical: {serial_rows == parallel_rows}")


if __name__ == "__main__":
    main()
