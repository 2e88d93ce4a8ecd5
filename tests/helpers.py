"""Small builders and brute-force oracles shared by the tests (random tiny taggers, inference
networks and inputs; exhaustive CRF scoring). Test modules import them as `from helpers import ...`
(pytest puts tests/ on sys.path), and never import one another."""
from __future__ import annotations

import itertools
import math

import torch

from core.infnets import InferenceNetwork, InfnetConfig
from core.seq2seq import Memory, Seq2SeqTagger, TaggerConfig


def tiny_tagger(n_labels: int = 3, attention: str = "fixed", seed: int = 0, **overrides) -> Seq2SeqTagger:
    """A random, untrained tagger in eval mode. Its label distributions are far from uniform
    (large output weights), so beam search and greedy decoding genuinely differ."""
    torch.manual_seed(seed)
    options = dict(n_words=20, n_chars=10, n_labels=n_labels, word_dim=8, char_dim=4, char_filters=5,
                   encoder_hidden=6, decoder_hidden=12 if attention == "dot" else 7, label_dim=5,
                   attention=attention, dropout=0.0)
    options.update(overrides)
    model = Seq2SeqTagger(TaggerConfig(**options))
    with torch.no_grad():
        model.output.weight.mul_(6.0)
        model.label_embedding.weight.mul_(3.0)
    return model.eval()


def tiny_inputs(lengths: list[int], seed: int = 0, n_words: int = 20, n_chars: int = 10, max_chars: int = 4):
    """Random (words (B, T), chars (B, T, C), lengths (B,)) with zero padding past each length."""
    g = torch.Generator().manual_seed(seed)
    B, T = len(lengths), max(lengths)
    lengths_t = torch.tensor(lengths)
    mask = torch.arange(T).unsqueeze(0) < lengths_t.unsqueeze(1)  # (B, T)
    words = torch.randint(2, n_words, (B, T), generator=g) * mask
    chars = torch.randint(2, n_chars, (B, T, max_chars), generator=g) * mask.unsqueeze(-1)
    return words, chars, lengths_t


def encode(model: Seq2SeqTagger, lengths: list[int], seed: int = 0) -> Memory:
    words, chars, lengths_t = tiny_inputs(lengths, seed)
    with torch.no_grad():
        return model.encode(words, chars, lengths_t)


def brute_force_best(model: Seq2SeqTagger, memory: Memory) -> tuple[list[list[int]], torch.Tensor]:
    """Exhaustive argmax over all L^T label sequences of each sentence, scored by
    `sequence_score` (a teacher-forced pass): (best sequences, their scores (B,))."""
    lengths = memory.mask.sum(dim=1).tolist()
    best_seqs, best_scores = [], []
    for b, n in enumerate(lengths):
        candidates = torch.tensor(list(itertools.product(range(model.n_labels), repeat=n)))  # (L^n, n)
        one = Memory(memory.states[b : b + 1, :n].expand(len(candidates), -1, -1),
                     memory.mask[b : b + 1, :n].expand(len(candidates), -1))
        with torch.no_grad():
            scores = model.sequence_score(one, candidates)  # (L^n,)
        i = int(scores.argmax())
        best_seqs.append(candidates[i].tolist())
        best_scores.append(scores[i])
    return best_seqs, torch.stack(best_scores)


def tiny_infnet(arch: str, seed: int = 0, **overrides) -> InferenceNetwork:
    torch.manual_seed(seed)
    options = dict(arch=arch, n_words=20, n_chars=10, n_labels=4, word_dim=8, char_dim=4, char_filters=5,
                   hidden=6, label_dim=5, dropout=0.0)
    options.update(overrides)
    return InferenceNetwork(InfnetConfig(**options)).eval()


def prefix_mask(lengths: list[int], T: int) -> torch.Tensor:
    return torch.arange(T).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)  # (B, T)


def reference_score(unary_b, trans, start, end, positions, seq) -> float:
    """Score of one labelling written out from the formula, one sentence at a time."""
    if not positions:
        return 0.0
    s = float(start[seq[0]]) + float(end[seq[-1]])
    for k, (t, y) in enumerate(zip(positions, seq)):
        s += float(unary_b[t, y])
        if k:
            s += float(trans[seq[k - 1], y])
    return s


def brute_force(unary, trans, start, end, mask):
    """Per sentence: log Z, the best labelling (over on-positions) and its score."""
    B, T, L = unary.shape
    out = []
    for b in range(B):
        positions = [t for t in range(T) if mask[b, t]]
        scores = {seq: reference_score(unary[b], trans, start, end, positions, seq)
                  for seq in itertools.product(range(L), repeat=len(positions))}
        log_z = math.log(sum(math.exp(s) for s in scores.values())) if positions else 0.0
        best = max(scores, key=scores.get)
        out.append((positions, log_z, best, scores[best]))
    return out


def fake_sweep(storage, name: str, metric: str = "dev_score", value: float = 0.5):
    """A sweep folder under `storage` laid out as `beamtune sweep` leaves it (storage.best), with
    one trial and one checkpoint: what a spec that warm-starts from sweep `name` is checked against."""
    import json
    from pathlib import Path

    from storage.best import SPEC_FILE, TRIAL_SIDECAR

    root = Path(storage) / name
    checkpoint = root / "trial_00000" / "checkpoint_000000"
    checkpoint.mkdir(parents=True)
    (root / SPEC_FILE).write_text(f"name: {name}\nmetric: {metric}\nmode: max\n")
    (checkpoint / "checkpoint.json").write_text(json.dumps({"files": {}}))
    (checkpoint / TRIAL_SIDECAR).write_text(json.dumps({"trial_id": "t0", "trial_name": "trial_00000", "epoch": 1,
                                                        "metrics": {metric: value}, "params": {}}))
    return checkpoint


def latest_checkpoints(directory) -> dict[str, dict]:
    """trial id -> the sidecar of its latest checkpoint so far under a sweep folder (files may vanish
    or be half-written while Ray copies and prunes them: skipped)."""
    import json

    from storage.best import TRIAL_SIDECAR

    latest: dict[str, dict] = {}
    for path in directory.glob(f"*/checkpoint_*/{TRIAL_SIDECAR}"):
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if info["epoch"] > latest.get(info["trial_id"], {}).get("epoch", -1):
            latest[info["trial_id"]] = info
    return latest


def sweep_in_thread(spec, storage, uri: str, start: bool = True):
    """Run sweeps.launch.run_sweep(spec) in a daemon thread, for tests that act on the cluster while
    it runs: (thread, result), result["outcome"] or result["error"] once the thread has ended."""
    import threading

    from sweeps.launch import run_sweep

    result: dict = {}

    def sweep():
        try:
            result["outcome"] = run_sweep(spec, storage=storage, tracking_uri=uri, verbose=0)
        except BaseException as error:  # noqa: BLE001 - reported by the test's own thread
            result["error"] = error

    thread = threading.Thread(target=sweep, daemon=True)
    if start:
        thread.start()
    return thread, result


def processes_with(marker: str) -> list[int]:
    """Pids of this user's processes whose command line or environment contains `marker`."""
    import os
    from pathlib import Path

    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if entry.stat().st_uid != os.getuid():
                continue
            text = (entry / "cmdline").read_bytes() + b"\0" + (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in text:
            found.append(int(entry.name))
    return found


TINY_STRUCTURED = {"hidden": 8, "word_dim": 8}


def train_tiny(out, objective: str, **extra):
    """A one-epoch structured model (crf, infnet, ...) on 200 synthetic sentences, saved at `out`."""
    from core.train import TrainConfig, train

    train(TrainConfig(task="synthetic", out=str(out), objective=objective, epochs=1, progress=False,
                      model=dict(TINY_STRUCTURED), batch_size=64, threads=1, train_limit=200, **extra))
    return out
