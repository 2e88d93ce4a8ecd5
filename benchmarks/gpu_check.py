"""One command for a short GPU slot: correctness on the device, then the speed and memory figures,
printed as one Markdown block to paste into benchmarks/RESULTS.md.

    python benchmarks/gpu_check.py --device cuda [--out gpu_check.md]        # ~5 min on one GPU
    python benchmarks/gpu_check.py --device cpu                               # tiny sizes (CI)

Sections (each timed; a failing section is reported in the block and makes the exit status 1,
the others still run):
  1. correctness: the brute-force and hard-limit tests of beam search, soft beam (alpha -> inf
     equals hard beam), CRF log Z / Viterbi, gradient descent, instance tailoring and
     the unrolled LSTMs it runs (tests/test_lstm.py), run by pytest with their tensors
     on the device (BEAMTUNE_TEST_DEVICE, tests/device_mode.py); host-device syncs per call of each
     search loop at two sentence lengths (core/syncs.py: a count that grows with T is a sync
     inside the loop); bfloat16 autocast against float32 (the code has no autocast switch of its
     own: this says what one would give).
  2. soft-beam training cost against CE (same model, data and batches; k = 1, 3, 5) in float32
     and under bf16 autocast, with peak memory per batch (benchmarks/bench_soft_beam.py).
  3. CRF log Z and Viterbi against pytorch-crf on the device (benchmarks/bench_crf.py's timing).
  4. inference examples/s per method at batch 10 and 256, Tu & Gimpel's Table 3 layout
     (random-weight models: speed does not depend on the weights; core.speed's timing, as bench_inference.py and the speed stage).
  5. a 4-trial sweep with `gpu: 0.25` on one local Ray node: the trials run at once and share the
     GPU (processes seen on it by nvidia-smi while the sweep runs). On the CPU Ray is told of one
     fake GPU, and the trials fall back to the CPU with one logged line each.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

CORRECTNESS_TESTS = ["tests/test_beam.py", "tests/test_soft_beam.py", "tests/test_crf.py", "tests/test_gradient.py",
                     "tests/test_lstm.py"]
# The CPU run (CI) proves the script, not the maths again: the brute-force and hard-limit tests only.
TINY_TESTS = "brute_force or hard_limit or exhaustive or pytorch or viterbi_optimum or equals_beam_of_size_one"


@dataclass(frozen=True)
class Sizes:
    tests: str | None  # pytest -k expression; None: every test of CORRECTNESS_TESTS
    train_sentences: int
    train_batch: int
    train_repeats: int
    model: dict
    crf_cells: tuple  # (L, B) pairs
    crf_length: int
    crf_repeats: int
    infer_sentences: int
    infer_hidden: int
    gd_steps: int
    infer_repeats: int
    sweep_epochs: int
    sweep_fixed: dict


FULL = Sizes(tests=None, train_sentences=640, train_batch=32, train_repeats=3, model={},
             crf_cells=((17, 32), (17, 256), (400, 32), (400, 256)), crf_length=30, crf_repeats=5,
             infer_sentences=300, infer_hidden=100, gd_steps=20, infer_repeats=3,
             sweep_epochs=2, sweep_fixed={"train_limit": 500, "batch_size": 32})
TINY = Sizes(tests=TINY_TESTS, train_sentences=32, train_batch=16, train_repeats=1,
             model={"encoder_hidden": 8, "decoder_hidden": 8, "label_dim": 8, "word_dim": 8, "char_filters": 4},
             crf_cells=((5, 4), (17, 8)), crf_length=8, crf_repeats=1,
             infer_sentences=24, infer_hidden=8, gd_steps=3, infer_repeats=1,
             sweep_epochs=1, sweep_fixed={"train_limit": 32, "batch_size": 32, "encoder_hidden": 8, "decoder_hidden": 8,
                                          "label_dim": 8, "word_dim": 8, "char_filters": 4, "patience": 0})


def log(message: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


# ----------------------------------------------------------------------------------------------
# 1. Correctness on the device


def run_tests(device: torch.device, sizes: Sizes) -> list[str]:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not slow", *CORRECTNESS_TESTS]
    if sizes.tests:
        command += ["-k", sizes.tests]
    env = {**os.environ, "BEAMTUNE_TEST_DEVICE": str(device), "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    lines = [f"pytest on {device} ({' '.join(Path(t).name for t in CORRECTNESS_TESTS)}"
             + (f", -k '{sizes.tests}'" if sizes.tests else ", all tests but `slow`") + f"): **{summary}** "
             f"in {time.perf_counter() - began:.0f} s"]
    if done.returncode != 0:
        failed = [line for line in done.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
        lines += ["", "```", *(failed[:20] or done.stdout.splitlines()[-30:]), "```"]
        raise SectionFailed(lines)
    return lines


def sync_audit(device: torch.device) -> list[str]:
    """Host syncs per call of each search routine at T and 2T; a count that grows with T is a sync
    inside the per-position loop. The gradient routines' backward passes are included."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import encode, tiny_tagger

    from core.crf import LinearChainCRF
    from core.objectives import direct_loss, hamming_cost
    from core.search.beam import beam_search, greedy_decode
    from core.search.gradient import gradient_descent
    import core.search.soft_beam as soft_beam_module
    from core.search.soft_beam import soft_beam_search
    from core.syncs import host_syncs

    # On the CPU the soft beam's sparse path reads its survivor count on the host each step (free
    # there, SPARSE_DEVICES); audit the path a GPU takes, which is the dense one.
    sparse_devices, soft_beam_module.SPARSE_DEVICES = soft_beam_module.SPARSE_DEVICES, ()
    try:
        counts = _count_syncs(device, host_syncs, encode, tiny_tagger, LinearChainCRF, direct_loss, hamming_cost,
                              beam_search, greedy_decode, gradient_descent, soft_beam_search)
    finally:
        soft_beam_module.SPARSE_DEVICES = sparse_devices
    return _sync_table(counts)


def _count_syncs(device, host_syncs, encode, tiny_tagger, LinearChainCRF, direct_loss, hamming_cost, beam_search,
                 greedy_decode, gradient_descent, soft_beam_search) -> dict[str, list]:
    counts: dict[str, list] = {}
    for T in (6, 12):
        torch.manual_seed(0)
        model = tiny_tagger(n_labels=5).to(device)
        memory = encode(model.cpu(), [T, T - 1, 2])
        model.to(device)
        memory = type(memory)(memory.states.to(device), memory.mask.to(device))
        labels = torch.randint(0, 5, (3, T), device=device)
        crf = LinearChainCRF(5).to(device)
        unary = torch.randn(3, T, 5, device=device)
        mask = memory.mask
        routines = {
            "greedy_decode": lambda: greedy_decode(model, memory),
            "beam_search k=3": lambda: beam_search(model, memory, 3),
            "soft_beam_search k=3": lambda: soft_beam_search(model, memory, 3, 10.0),
            "direct_loss k=3 + backward": lambda: direct_loss(model, memory, labels, 3, 1.0, hamming_cost).sum().backward(),
            "crf viterbi": lambda: crf.viterbi(unary, mask),
            "crf log Z": lambda: crf.log_partition(unary, mask),
            "crf nll + backward": lambda: crf.nll(unary.detach().requires_grad_(), labels, mask).sum().backward(),
            "gradient_descent N=(3,6), 2 lrs": lambda: gradient_descent(crf, unary, mask, steps=(3, 6), lrs=(1.0, 10.0)),
        }
        for name, fn in routines.items():
            with host_syncs() as found:
                fn()
            counts.setdefault(name, []).append(found)
    return counts


def _sync_table(counts: dict[str, list]) -> list[str]:
    rows, in_loop = [], []
    for name, (short, long) in counts.items():
        where = ", ".join(sorted({key for key in long.counts})) or "-"
        rows.append([name, short.total, long.total, where])
        if long.total > short.total:
            in_loop.append(name)
    lines = ["Host-device syncs per call (`core/syncs.py`), sentences of length T = 6 and 12:", ""]
    lines += table(["routine", "T = 6", "T = 12", "where"], rows)
    if in_loop:
        raise SectionFailed(lines + ["", f"**syncs inside the per-position loop of: {', '.join(in_loop)}**"])
    return lines


def autocast_agreement(device: torch.device) -> list[str]:
    """bf16 autocast against float32 on the same random inputs: agreement of the discrete outputs
    and the largest relative difference of the scores."""
    sys.path.insert(0, str(ROOT / "tests"))
    from helpers import tiny_inputs, tiny_tagger

    from core.crf import LinearChainCRF
    from core.search.beam import beam_search
    from core.search.gradient import gradient_descent
    from core.search.soft_beam import soft_beam_search

    torch.manual_seed(0)
    lengths = [20] * 16 + [7] * 16
    model = tiny_tagger(n_labels=9, encoder_hidden=32, decoder_hidden=32).to(device)
    words, chars, lens = (t.to(device) for t in tiny_inputs(lengths))
    crf = LinearChainCRF(17).to(device)
    unary = torch.randn(len(lengths), 20, 17, device=device) * 3
    mask = torch.arange(20, device=device).unsqueeze(0) < lens.unsqueeze(1)

    def outputs():
        with torch.no_grad():
            memory = model.encode(words, chars, lens)
            beam = beam_search(model, memory, 3)
            soft = soft_beam_search(model, memory, 3, 1e4)
            return {"beam search k=3": (beam.labels, beam.scores), "soft beam k=3, alpha=1e4": (soft.labels, soft.scores[:, 0]),
                    "crf viterbi L=17": tuple(crf.viterbi(unary, mask)),
                    "crf log Z L=17": (None, crf.log_partition(unary, mask)),
                    "gradient descent N=20": (gradient_descent(crf, unary, mask, steps=(20,), lrs=(1.0,)).labels[0, 0], None)}

    reference = outputs()
    with torch.autocast(device.type, dtype=torch.bfloat16):
        low = outputs()
    rows = []
    for name, (labels, scores) in reference.items():
        agree = "-" if labels is None else f"{(labels == low[name][0]).all(dim=1).float().mean().item():.0%}"
        diff = "-" if scores is None else f"{((scores - low[name][1].float()).abs() / scores.abs().clamp_min(1e-6)).max().item():.1e}"
        rows.append([name, agree, diff])
    return ["bf16 autocast against float32 (32 sentences; same outputs = the whole sequence equal):", ""] + \
        table(["routine", "same outputs", "max relative score difference"], rows)


# ----------------------------------------------------------------------------------------------
# 2. Soft-beam training cost against CE


def training_cost(device: torch.device, sizes: Sizes) -> list[str]:
    from bench_soft_beam import train_pass

    from core.data import load_task, make_batches
    from core.config import seed_everything
    from core.stages.seq2seq import build_model
    from core.train import TrainConfig

    task = load_task("synthetic")
    seed_everything(0)
    model, vocabs = build_model(TrainConfig(task="synthetic", out="/dev/null", progress=False, model=sizes.model), task)
    model.to(device)
    batches = [b.to(device) for b in make_batches(task.train[: sizes.train_sentences], vocabs, sizes.train_batch, shuffle=True, seed=0)]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    variants = [("CE", "ce", 1), ("DL k=1", "dl", 1), ("DL k=3", "dl", 3), ("DL k=5", "dl", 5)]
    dtypes = [("fp32", None), ("bf16 autocast", torch.bfloat16)]
    results: dict = {}
    for _ in range(sizes.train_repeats):  # round-robin: load drift hits every variant alike
        for name, objective, k in variants:
            config = TrainConfig(task="synthetic", out="/dev/null", objective=objective, beam_size=k, init="-", progress=False)
            for dname, dtype in dtypes:
                results.setdefault((name, dname), []).append(train_pass(model, optimizer, batches, config, device, dtype))
    memory_kind = "CUDA peak allocated per batch" if device.type == "cuda" else "autograd saved tensors per batch (CPU)"
    rows = []
    for dname, _ in dtypes:
        ce = sorted(s for s, _ in results[("CE", dname)])[len(results[("CE", dname)]) // 2]
        for name, _, _ in variants:
            speeds = sorted(s for s, _ in results[(name, dname)])
            speed, peak = speeds[len(speeds) // 2], max(m for _, m in results[(name, dname)])
            rows.append([name, dname, f"{speed:,.0f}", f"{ce / speed:.2f}x", f"{peak / 2**20:.1f}"])
    lines = [f"synthetic task, {sizes.train_sentences} sentences, batch {sizes.train_batch}, L = {model.n_labels}, "
             f"median of {sizes.train_repeats}; memory: {memory_kind}. Target on a GPU: DL k=3 at most 1.5x CE.", ""]
    return lines + table(["objective", "precision", "sentences/s", "time vs CE", "peak memory (MB)"], rows)


# ----------------------------------------------------------------------------------------------
# 3. CRF against pytorch-crf


def crf_against_pytorch_crf(device: torch.device, sizes: Sizes) -> list[str]:
    import torchcrf
    from bench_crf import interleaved

    from core.crf import crf_log_partition, crf_viterbi

    T, rows, wrong = sizes.crf_length, [], []
    for L, B in sizes.crf_cells:
        g = torch.Generator().manual_seed(L * 1000 + B)
        unary = (torch.randn(B, T, L, generator=g) * 3).to(device)
        trans, start, end = (torch.randn(*shape, generator=g).to(device) for shape in ((L, L), (L,), (L,)))
        mask = torch.ones(B, T, dtype=torch.bool, device=device)
        ref = torchcrf.CRF(L, batch_first=True).to(device)
        with torch.no_grad():
            ref.transitions.copy_(trans), ref.start_transitions.copy_(start), ref.end_transitions.copy_(end)
        fns = {"ours_logz": lambda: crf_log_partition(unary, trans, start, end, mask),
               "ours_viterbi": lambda: crf_viterbi(unary, trans, start, end, mask),
               "torchcrf_logz": lambda: ref._compute_normalizer(unary.transpose(0, 1), mask.t()),
               "torchcrf_viterbi": lambda: ref.decode(unary, mask)}
        with torch.no_grad():
            medians, out = interleaved(fns, {name: sizes.crf_repeats for name in fns}, {name: 5 if L < 100 else 1 for name in fns})
        logz_ok = bool(torch.allclose(out["ours_logz"], out["torchcrf_logz"], rtol=1e-3, atol=1e-3))
        paths_ok = out["ours_viterbi"].labels.tolist() == out["torchcrf_viterbi"]
        if not (logz_ok and paths_ok):
            wrong.append(f"L={L} B={B}")
        rows.append([L, B, f"{medians['ours_logz'] * 1e3:.2f}", f"{medians['torchcrf_logz'] * 1e3:.2f}",
                     f"{medians['torchcrf_logz'] / medians['ours_logz']:.1f}x", f"{medians['ours_viterbi'] * 1e3:.2f}",
                     f"{medians['torchcrf_viterbi'] * 1e3:.2f}", f"{medians['torchcrf_viterbi'] / medians['ours_viterbi']:.1f}x",
                     "yes" if logz_ok and paths_ok else "**NO**"])
    lines = [f"T = {T}, all sentences full length, median ms per call ({sizes.crf_repeats} rounds, round-robin):", ""]
    lines += table(["L", "B", "log Z ours", "log Z pytorch-crf", "speed-up", "Viterbi ours", "Viterbi pytorch-crf",
                    "speed-up", "same log Z and paths"], rows)
    if wrong:
        raise SectionFailed(lines + ["", f"**outputs differ from pytorch-crf at {', '.join(wrong)}**"])
    return lines


# ----------------------------------------------------------------------------------------------
# 4. Inference speed, Tu & Gimpel Table 3 layout


def inference_speed(device: torch.device, sizes: Sizes) -> list[str]:
    """Table 3's methods timed by core.speed (round-robin over methods and batch sizes, medians),
    the same timing as the `speed` stage and benchmarks/bench_inference.py."""
    from core.crf import BLSTMCRF, CRFConfig
    from core.data import build_vocabs, load_task
    from core.infnets import InferenceNetwork, InfnetConfig
    from core.speed import structured_methods, time_methods

    task = load_task("synthetic")
    vocabs = build_vocabs(task.train)
    sentences = task.test[: sizes.infer_sentences]
    shape = dict(n_words=len(vocabs.words), n_chars=len(vocabs.chars), n_labels=len(vocabs.labels))
    torch.manual_seed(0)
    crf = BLSTMCRF(CRFConfig(**shape, hidden=sizes.infer_hidden)).to(device).eval()
    methods = {}
    for arch in ("cnn13", "blstm", "seq2seq"):
        net = InferenceNetwork(InfnetConfig(arch=arch, **shape, hidden=sizes.infer_hidden)).to(device).eval()
        methods[f"infnet {arch}"] = lambda batch, net=net: net(batch.words, batch.chars, batch.lengths).labels
    structured = structured_methods(crf, None, sizes.gd_steps, 100.0)
    methods["Viterbi"], methods[f"GD (N={sizes.gd_steps})"] = structured["viterbi"], structured["gd"]
    timings, _ = time_methods(methods, sentences, vocabs, (10, 256), sizes.infer_repeats, device)
    speed = {(row["method"], row["batch_size"]): row["examples_per_second"] for row in timings}
    rows = [[name] + [f"{speed[(name, b)]:,.0f}" for b in (10, 256)] for name in methods]
    lines = [f"examples/s, synthetic test split ({len(sentences)} sentences, L = {len(vocabs.labels)}), random-weight "
             f"BLSTM-CRF and inference networks (H = {sizes.infer_hidden}), median of {sizes.infer_repeats}, "
             "timed round-robin:", ""]
    return lines + table(["method", "batch 10", "batch 256"], rows)


# ----------------------------------------------------------------------------------------------
# 5. Four trials sharing one GPU


class GpuProcesses(threading.Thread):
    """Polls nvidia-smi for the compute processes on the GPU; keeps the most seen at once."""

    def __init__(self):
        super().__init__(daemon=True)
        self.most, self.stop = 0, threading.Event()
        self.available = shutil.which("nvidia-smi") is not None

    def run(self) -> None:
        while self.available and not self.stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                                 capture_output=True, text=True).stdout
            self.most = max(self.most, len([line for line in out.splitlines() if line.strip()]))
            self.stop.wait(0.5)


def shared_gpu_sweep(device: torch.device, sizes: Sizes) -> list[str]:
    import json

    import ray

    from sweeps.launch import OBJECT_STORE_BYTES, run_sweep
    from sweeps.spec import validate

    cpus = min(os.cpu_count() or 2, 8)
    work = Path(tempfile.mkdtemp(prefix="gpu-check-sweep-"))
    spec = validate({"name": "gpu_share", "task": "synthetic", "stage": "ce", "epochs": sizes.sweep_epochs,
                     "fixed": {**sizes.sweep_fixed, "device": "auto"}, "space": {"lr": {"grid": [0.001, 0.003, 0.01, 0.03]}},
                     "search": {"algorithm": "grid"}, "scheduler": {"type": "fifo"}, "num_samples": 1,
                     "resources": {"cpu": cpus / 4, "gpu": 0.25}}, storage=work)
    ray.shutdown()
    # One GPU for Ray: the real one on a GPU machine, a fake one (the trials fall back) on the CPU.
    ray.init(address="local", num_cpus=cpus, num_gpus=1, include_dashboard=False, object_store_memory=OBJECT_STORE_BYTES,
             log_to_driver=False)
    watcher = GpuProcesses()
    watcher.start()
    try:
        outcome = run_sweep(spec, storage=work, tracking_uri=f"sqlite:///{work}/mlflow.db", verbose=0)
        session = Path(ray._private.worker._global_node.get_session_dir_path())
    finally:
        watcher.stop.set()
        ray.shutdown()
    spans = []
    for result in (work / "gpu_share").glob("*/result.json"):
        last = json.loads(result.read_text().strip().splitlines()[-1])
        spans.append((last["timestamp"] - last["time_total_s"], last["timestamp"]))
    overlap = max(sum(s <= t < e for s, e in spans) for t, _ in spans) if spans else 0
    fallbacks = sum(p.read_text(errors="replace").count("no usable CUDA; running on the CPU")
                    for p in (session / "logs").glob("worker-*.err"))
    shutil.rmtree(work, ignore_errors=True)
    gpu_seen = f"{watcher.most} processes on the GPU at once (nvidia-smi)" if watcher.available else \
        f"no GPU here: Ray's GPU is fake, {fallbacks} CPU-fallback line(s) logged by the trials"
    lines = [f"4 trials x {sizes.sweep_epochs} epoch(s), `resources: {{cpu: {cpus / 4:g}, gpu: 0.25}}`, one Ray node with "
             f"1 GPU: {outcome.trials} trials, {outcome.errors} errors, statuses {sorted(set(outcome.statuses.values()))}, "
             f"up to {overlap} trials running at once, {gpu_seen}, sweep wall {outcome.seconds:.0f} s."]
    if outcome.errors or outcome.trials != 4 or overlap < 2 or (watcher.available and watcher.most < 2):
        raise SectionFailed(lines + ["", "**the trials did not share the GPU**"])
    return lines


# ----------------------------------------------------------------------------------------------


class SectionFailed(Exception):
    def __init__(self, lines: list[str]):
        super().__init__("\n".join(lines))
        self.lines = lines


def environment(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        what = (f"{props.name}, {props.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}, "
                f"cuDNN {torch.backends.cudnn.version()} (enabled: {torch.backends.cudnn.enabled})")
    else:
        what = f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} torch threads)"
    return f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {what}, {platform.node()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (cpu: tiny sizes unless --full)")
    parser.add_argument("--full", action="store_true", help="full sizes on the CPU too")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes on a GPU too")
    parser.add_argument("--sections", default="tests,syncs,autocast,train,crf,inference,sweep",
                        help="comma-separated subset of the sections, in this order")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown block here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from core.device import resolve_device

    device = resolve_device(args.device)
    sizes = TINY if (device.type == "cpu" and not args.full) or args.tiny else FULL
    sections = {
        "tests": ("Correctness on the device", lambda: run_tests(device, sizes)),
        "syncs": ("Host-device syncs in the search loops", lambda: sync_audit(device)),
        "autocast": ("bfloat16 autocast", lambda: autocast_agreement(device)),
        "train": ("Soft-beam training cost against CE", lambda: training_cost(device, sizes)),
        "crf": ("CRF against pytorch-crf", lambda: crf_against_pytorch_crf(device, sizes)),
        "inference": ("Inference speed (Tu & Gimpel Table 3 layout)", lambda: inference_speed(device, sizes)),
        "sweep": ("Four trials on one GPU (`gpu: 0.25`)", lambda: shared_gpu_sweep(device, sizes)),
    }
    chosen = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in sections]
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; choose from {', '.join(sections)}")
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    out = [f"### GPU check: {'tiny' if sizes is TINY else 'full'} sizes on {device}", "",
           f"`{command.strip()}`; {environment(device)}.", ""]
    failed, began = [], time.perf_counter()
    for key in chosen:
        title, fn = sections[key]
        log(f"{title} ...")
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(sys.stderr):  # stdout carries the Markdown block alone
                lines = fn()
        except SectionFailed as error:
            lines, status = error.lines, "FAILED"
            failed.append(key)
        except Exception as error:  # reported in the block and in the exit status; the other sections still run
            lines, status = [f"**{type(error).__name__}: {error}**"], "FAILED"
            failed.append(key)
        else:
            status = "ok"
        seconds = time.perf_counter() - start
        log(f"{title}: {status} in {seconds:.0f} s")
        out += [f"#### {title} ({status}, {seconds:.0f} s)", "", *lines, ""]
    out.append(f"Total {time.perf_counter() - began:.0f} s; " + (f"FAILED: {', '.join(failed)}." if failed else "all sections ok."))
    block = "\n".join(out)
    print(block)
    if args.out:
        args.out.write_text(block + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
