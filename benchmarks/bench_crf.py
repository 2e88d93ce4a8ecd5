"""CRF log Z and Viterbi: core.crf against pytorch-crf and torch-struct on the same inputs.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_crf.py [--threads 1] [--repeats 3]
        [--struct-budget 60] [--device cpu] [--compile] [--only-l 17]

Cells: L in {17 (NER BIOES), 400 (CCG top-400)} x batch {32, 256}, T = 30, every sentence full
length (torch-struct's end scores are folded into the last edge, which needs equal lengths).
Per cell: median seconds per call of each implementation, timed in round-robin (a block of calls of each per
round) so that load drift hits all alike, the speed-up ratios (theirs / ours), and
whether outputs agree (log Z within 1e-3 relative, identical Viterbi paths), and our log Z's
largest error (nats) against the float64 logsumexp recursion, also with hard constraints (one
transition at -1e4: `ours_logz_constrained`, which takes the logsumexp path). torch-struct's
parallel scan does O(B T L^3) work and holds (B, T, L, L) potentials; a cell whose estimated
time (from one timed run at batch 1) exceeds --struct-budget seconds is reported as skipped.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from core.crf import crf_log_partition, crf_viterbi  # noqa: E402


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def interleaved(fns: dict, rounds: dict, block: dict) -> tuple[dict, dict]:
    """Median seconds per call and last output of each callable, timed in round-robin so that load
    drift hits every implementation alike. In each round each callable runs `block[name]` times
    in a row (timed together, so a millisecond call is not measured right after another
    library's large allocations); rounds[name] caps how many rounds a slow one takes part in."""
    outputs = {name: fn() for name, fn in fns.items()}  # warm-up
    sync()
    times: dict = {name: [] for name in fns}
    for round_ in range(max(rounds.values())):
        for name, fn in fns.items():
            if round_ >= rounds[name]:
                continue
            start = time.perf_counter()
            for _ in range(block[name]):
                outputs[name] = fn()
            sync()
            times[name].append((time.perf_counter() - start) / block[name])
    return {name: statistics.median(t) for name, t in times.items()}, outputs


def struct_potentials(unary, trans, start, end):
    """(B, T, L) unary + (L, L) transitions -> torch-struct edge potentials (B, T-1, L, L) with
    phi[b, n, z_{n+1}, z_n] = W[z_n, z_{n+1}] + U[n+1, z_{n+1}] (+ start + U[0] on edge 0, + end on the last)."""
    phi = trans.t().unsqueeze(0).unsqueeze(0) + unary[:, 1:].unsqueeze(3)  # (B, T-1, L_next, L_prev)
    phi = phi.clone()
    phi[:, 0] += (start + unary[:, 0]).unsqueeze(1)  # (B, 1, L_prev)
    phi[:, -1] += end.view(1, -1, 1)  # (1, L_next, 1)
    return phi


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--struct-budget", type=float, default=60.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--only-l", type=int, default=None, help="run only the cells with this L")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(crf_log_partition, dynamic=True); its first call (the compile) is reported apart")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    import torchcrf

    try:
        import torch_struct
    except ImportError:
        torch_struct = None
    T = 30
    rows = []
    compiled = torch.compile(crf_log_partition, dynamic=True) if args.compile else None
    for L in (17, 400) if args.only_l is None else (args.only_l,):
        for B in (32, 256):
            g = torch.Generator().manual_seed(L * 1000 + B)
            unary = (torch.randn(B, T, L, generator=g) * 3).to(device)
            trans = torch.randn(L, L, generator=g).to(device)
            start, end = torch.randn(L, generator=g).to(device), torch.randn(L, generator=g).to(device)
            mask = torch.ones(B, T, dtype=torch.bool, device=device)
            ref = torchcrf.CRF(L, batch_first=True).to(device)
            with torch.no_grad():
                ref.transitions.copy_(trans), ref.start_transitions.copy_(start), ref.end_transitions.copy_(end)
            row = {"L": L, "B": B, "T": T}
            # Small cells take ~1 ms a call and are noisy: blocks of 10 calls, many rounds.
            # pytorch-crf and torch-struct take seconds at L = 400 (torch-struct at any large B):
            # one call per round, and one round (pytorch-crf at L = 400) or --repeats.
            # Hard constraints (one forbidden transition at -1e4): out of matmul's exact range, so
            # log Z takes the logsumexp recursion; pytorch-crf's cost does not depend on the values.
            constrained = trans.clone()
            constrained[0, 1] = -1e4
            fns = {
                "ours_logz": lambda: crf_log_partition(unary, trans, start, end, mask),
                "ours_logz_constrained": lambda: crf_log_partition(unary, constrained, start, end, mask),
                "ours_viterbi": lambda: crf_viterbi(unary, trans, start, end, mask),
                "torchcrf_logz": lambda: ref._compute_normalizer(unary.transpose(0, 1), mask.t()),
                "torchcrf_viterbi": lambda: ref.decode(unary, mask),
            }
            small = L == 17
            rounds = {name: args.repeats if small or name.startswith("ours") else 1 for name in fns}
            block = {name: 10 if small else 1 for name in fns}
            if compiled is not None:
                t0 = time.perf_counter()
                compiled(unary, trans, start, end, mask)
                row["compiled_first_call_s"] = time.perf_counter() - t0
                fns["compiled_logz"] = lambda: compiled(unary, trans, start, end, mask)
                rounds["compiled_logz"], block["compiled_logz"] = args.repeats, block["ours_logz"]
            if torch_struct is not None:
                one = struct_potentials(unary[:1], trans, start, end)
                t0 = time.perf_counter()
                torch_struct.LinearChainCRF(one).partition
                estimate = (time.perf_counter() - t0) * B * 2
                if estimate > args.struct_budget:
                    row["torchstruct"] = f"skipped: estimated {estimate:.0f}s per call (> {args.struct_budget:.0f}s budget)"
                else:
                    phi = struct_potentials(unary, trans, start, end)
                    fns["torchstruct_logz"] = lambda: torch_struct.LinearChainCRF(phi).partition
                    # Timed: the argmax edge indicators only; from_parts (a Python loop) is not timed.
                    fns["torchstruct_viterbi"] = lambda: torch_struct.LinearChainCRF(phi).argmax
                    rounds["torchstruct_logz"] = rounds["torchstruct_viterbi"] = args.repeats
                    block["torchstruct_logz"] = block["torchstruct_viterbi"] = 1
            with torch.no_grad():
                medians, out = interleaved(fns, rounds, block)
            for name, seconds in medians.items():
                row[f"{name}_s"] = seconds
            z, vit = out["ours_logz"], out["ours_viterbi"]
            row["logz_match_torchcrf"] = bool(torch.allclose(z, out["torchcrf_logz"], rtol=1e-3, atol=1e-3))
            row["paths_match_torchcrf"] = vit.labels.tolist() == out["torchcrf_viterbi"]
            row["logz_constrained_speedup_vs_torchcrf"] = row["torchcrf_logz_s"] / row["ours_logz_constrained_s"]
            # Exactness first: max |log Z - float64 logsumexp log Z| over the batch, in nats.
            exact = {name: crf_log_partition(*(x.double() for x in (unary, w, start, end)), mask, method="logsumexp")
                     for name, w in (("", trans), ("_constrained", constrained))}
            for name, reference in (("ours_logz", exact[""]), ("ours_logz_constrained", exact["_constrained"])):
                row[f"{name}_max_error"] = float((out[name].double() - reference).abs().max())
            for other in ("torchcrf", "torchstruct"):
                for what in ("logz", "viterbi"):
                    if f"{other}_{what}_s" in row:
                        row[f"{what}_speedup_vs_{other}"] = row[f"{other}_{what}_s"] / row[f"ours_{what}_s"]
            if compiled is not None:
                row["logz_match_compiled"] = bool(torch.allclose(z, out["compiled_logz"], rtol=1e-3, atol=1e-3))
                row["compiled_logz_speedup_vs_torchcrf"] = row["torchcrf_logz_s"] / row["compiled_logz_s"]
            if "torchstruct_logz" in out:
                ts_labels = torch_struct.LinearChain.from_parts(out["torchstruct_viterbi"])[0].to(vit.labels.device)
                row["logz_match_torchstruct"] = bool(torch.allclose(z, out["torchstruct_logz"], rtol=1e-3, atol=1e-3))
                row["paths_match_torchstruct"] = bool(torch.equal(ts_labels, vit.labels))
            rows.append(row)
            print(json.dumps({k: (round(v, 5) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
    meta = {"torch": torch.__version__, "threads": args.threads, "device": str(device), "cpu_count": os.cpu_count(),
            "loadavg_at_end": os.getloadavg()}
    print(json.dumps({"loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}), flush=True)
    if args.json:
        args.json.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
