"""The compact live view of a sweep (the default; `--verbose` shows Ray's own tables instead):
one line per event a person watches for, and a status line every `every` seconds.

    [quickstart] trial ce lr=0.0023 seed=161 started
    [quickstart] ce lr=0.0023 seed=161  epoch 2/4  dev_score 0.8412  (best 0.8412)
    [quickstart] trial ce lr=0.0061 seed=7 stopped by the scheduler after epoch 1
    [quickstart] trial ce lr=0.0050 seed=3 stopped early after epoch 9 (no dev improvement for `patience` epochs)
    [quickstart] 2 running, 3 done, 0 failed; best so far 0.8512 (ce lr=0.0061 seed=7)
    [quickstart] trial ce lr=0.0023 seed=161 failed: TrainingError: loss is nan at epoch 3
    [quickstart] 2 trials pending: waiting 45 s for {CPU: 1, GPU: 0.25} (autoscaler: 1 node launching)

Trials are named as their MLflow runs (storage.tracking.trial_label), so the terminal and the UI
agree on names; "best" is the best dev score any trial has reported, the same ranking that
`beamtune best` applies to checkpoints.

Trials that wait for resources (PENDING) are named once the oldest has waited `every` seconds,
then every `every` seconds while any waits: how many, how long, what they ask for and why they
wait: the autoscaler is launching nodes (sweeps.ray_private.autoscaler_launching), no node has
that much at all (nothing is launching it), they queue behind the running trials, Ray is
starting them, or, when none of this sweep's trials runs and the resources have not been free for
longer than Ray takes to start an actor, other jobs on the cluster hold them (another sweep).
"""
from __future__ import annotations

import sys
import time
from typing import Any, Callable

from ray.tune import Callback

from storage.tracking import trial_label
from sweeps.ray_private import autoscaler_launching


# How long a trial may stay PENDING while Ray starts its actor on resources already reserved for
# it (seconds; seen: under 10 on a loaded 2-core machine). Past it, with no free resources and no
# trial of this sweep running, the resources are held by other jobs on the cluster.
ACTOR_START_S = 60.0


def say_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class CompactProgress(Callback):
    def __init__(self, sweep: str, stage: str, epochs: int, metric: str, mode: str, searched: list[str],
                 say: Callable[[str], None] | None = None, every: float = 30.0):
        self._args = dict(sweep=sweep, stage=stage, epochs=epochs, metric=metric, mode=mode, searched=searched,
                          every=every)
        self.sweep, self.stage, self.epochs = sweep, stage, epochs
        self.metric, self.sign = metric, 1 if mode == "max" else -1
        self.epoch: dict[str, int] = {}  # last epoch each trial reported
        self.patience_exhausted: dict[str, bool] = {}  # its last report ended it by early stopping
        self.searched, self.every = searched, every
        self.say = say or say_stderr  # a module-level function: Tune pickles its callbacks with the sweep
        self.best: tuple[float, str] | None = None
        self.running: set[str] = set()
        self.done = self.failed = 0
        self.last_status = time.monotonic()
        self.pending_since: dict[str, float] = {}  # trial id -> when it was first seen PENDING
        self.last_pending = -float("inf")

    # Tune pickles its callbacks with the sweep and restores them on resume: keep only the
    # constructor's arguments, so a resumed sweep gets a fresh view built by the current code.
    def __getstate__(self) -> dict[str, Any]:
        return {"_args": self._args}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(**state["_args"])

    def _name(self, trial: Any) -> str:
        return trial_label(self.stage, trial.config, self.searched)

    def _line(self, text: str) -> None:
        self.say(f"[{self.sweep}] {text}")

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self._line(f"trial {self._name(trial)} started")

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is None:
            return
        name = self._name(trial)
        if self.best is None or self.sign * value > self.sign * self.best[0]:
            self.best = (value, name)
        epoch = result.get("epoch", result.get("training_iteration"))
        self.epoch[trial.trial_id] = epoch
        self.patience_exhausted[trial.trial_id] = bool(result.get("patience_exhausted"))
        self._line(f"{name}  epoch {epoch}/{self.epochs}  {self.metric} {value:.4f}  (best {self.best[0]:.4f})")
        self._status()

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.done += 1
        epoch = self.epoch.get(trial.trial_id, 0)
        if epoch >= self.epochs:
            ended = "done"
        elif self.patience_exhausted.get(trial.trial_id):
            ended = f"stopped early after epoch {epoch} (no dev improvement for `patience` epochs)"
        else:
            ended = f"stopped by the scheduler after epoch {epoch}"
        self._line(f"trial {self._name(trial)} {ended}")

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self.failed += 1
        error = str(trial.error_file or "") and _last_line(trial)
        self._line(f"trial {self._name(trial)} failed" + (f": {error}" if error else ""))

    def on_step_begin(self, iteration, trials, **info):
        now = time.monotonic()
        pending = [t for t in trials if t.status == "PENDING"]
        self.pending_since = {t.trial_id: self.pending_since.get(t.trial_id, now) for t in pending}
        if not pending:
            return
        waited = now - min(self.pending_since.values())
        if waited < self.every or now - self.last_pending < self.every:
            return
        self.last_pending = now
        self._line(pending_line(pending, waited, len(self.running)))

    def _status(self) -> None:
        if time.monotonic() - self.last_status < self.every:
            return
        self.last_status = time.monotonic()
        best = f"; best so far {self.best[0]:.4f} ({self.best[1]})" if self.best else ""
        self._line(f"{len(self.running)} running, {self.done} done, {self.failed} failed{best}")


def _last_line(trial: Any) -> str:
    try:
        with open(trial.error_file) as handle:
            lines = [line.strip() for line in handle if line.strip()]
    except OSError:
        return ""
    return lines[-1][:200] if lines else ""


def pending_line(pending: list, waited: float, running: int) -> str:
    """'2 trials pending: waiting 45 s for {CPU: 1, GPU: 0.25} (why)'; the trials' requests are
    Tune's placement-group sums (a sweep's trials all ask for the same)."""
    requests = []
    for trial in pending:
        request = {k: v for k, v in trial.placement_group_factory.required_resources.items() if v}
        if request not in requests:
            requests.append(request)
    asked = " or ".join("{" + ", ".join(f"{k}: {v:g}" for k, v in sorted(r.items())) + "}" for r in requests)
    count = f"{len(pending)} trial{'s' if len(pending) != 1 else ''}"
    return f"{count} pending: waiting {waited:.0f} s for {asked} ({_why_pending(requests, running, len(pending), waited)})"


def _why_pending(requests: list[dict[str, float]], running: int, pending: int, waited: float) -> str:
    import ray

    launching = autoscaler_launching()
    if launching:
        return f"autoscaler: {launching} node{'s' if launching != 1 else ''} launching"
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    fits = any(all(node.get(k, 0) >= v for k, v in r.items()) for r in requests for node in nodes)
    if not fits:
        return "no node has that much" + ("; the autoscaler is launching none" if launching == 0 else "")
    free = ray.available_resources()
    if not any(all(free.get(k, 0) >= v for k, v in r.items()) for r in requests):
        if running:
            return f"behind {running} running trial{'s' if running != 1 else ''}"
        if waited > ACTOR_START_S:
            return "no trial of this sweep runs: other jobs on the cluster hold the resources"
    return f"Ray is starting {'them' if pending > 1 else 'it'}"  # free, or held by a trial whose actor is starting
