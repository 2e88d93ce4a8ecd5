"""A local, append-only journal of one MLflow run's writes, replayed in order when tracking answers.

Training never waits on the tracking server: every write a trial (or the driver, for it) makes to
its MLflow run is first appended here, then the pending part is replayed. A failed replay leaves
the operations pending for the next one; nothing is dropped and nothing is sent twice.

    DIR/KEY.jsonl       one operation a line: {"seq": 1, "op": "metrics", ...}, seq = 1, 2, 3, ...;
                        each line is fsync'd before `append` returns
    DIR/KEY.state.json  {"acked": N, "run_id": ...}: operations 1..N are in MLflow (atomic replace)
    DIR/KEY.error       the last replay failure while one is outstanding (for the driver's warning)
    DIR/KEY.files/SEQ/  copies of the files an artifact operation uploads (removed once acked)
    DIR/KEY.lock, DIR/KEY.replay.lock   flocks: one appender, and one replayer, at a time

DIR lives in the sweep storage (a path every node shares), so a trial retried on another node,
or resumed by a new driver, continues the same journal. Replaying an operation twice (a process
killed between MLflow's answer and the state write) does no harm: metrics carry their own step
and timestamp and MLflow's SQL store ignores an identical metric row; params and tags are
idempotent; an artifact upload overwrites the same file.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator


class Spool:
    def __init__(self, directory: str | os.PathLike, key: str):
        self.directory, self.key = Path(directory), key
        self.path = self.directory / f"{key}.jsonl"
        self.state_path = self.directory / f"{key}.state.json"
        self.error_path = self.directory / f"{key}.error"
        self.files_dir = self.directory / f"{key}.files"

    @contextlib.contextmanager
    def _locked(self, name: str = "lock", blocking: bool = True) -> Iterator[bool]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / f"{self.key}.{name}", "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    # -- the journal ----------------------------------------------------------------------------

    def ops(self) -> list[dict[str, Any]]:
        """Every complete operation, in order (a line cut short by a killed writer is not one)."""
        if not self.path.is_file():
            return []
        text = self.path.read_text()
        lines = text.split("\n")[:-1]  # the part after the last newline is incomplete
        return [json.loads(line) for line in lines if line.strip()]

    def append(self, op: str, files: list[Path] | None = None, **payload: Any) -> int:
        """Journal one operation (durably) and return its sequence number. `files` are copied into
        the journal, so the originals may go before the operation is replayed."""
        with self._locked():
            self._drop_torn_tail()
            ops = self.ops()
            seq = ops[-1]["seq"] + 1 if ops else 1
            record = {"seq": seq, "op": op, "time": time.time(), **payload}
            if files:
                target = self.files_dir / str(seq)
                shutil.rmtree(target, ignore_errors=True)  # a copy left by a writer killed before its line
                target.mkdir(parents=True)
                for path in files:
                    shutil.copy2(path, target / Path(path).name)
                record["files"] = sorted(Path(path).name for path in files)
            with open(self.path, "a") as handle:
                handle.write(json.dumps(record, default=str) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        return seq

    def _drop_torn_tail(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    # -- replay ---------------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        if not self.state_path.is_file():
            return {"acked": 0, "run_id": None}
        return json.loads(self.state_path.read_text())

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_name(self.state_path.name + ".tmp")
        with open(tmp, "w") as handle:
            handle.write(json.dumps(state))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.state_path)

    def pending(self) -> list[dict[str, Any]]:
        acked = self.state()["acked"]
        return [op for op in self.ops() if op["seq"] > acked]

    def replay(self, apply: Callable[[dict[str, Any], dict[str, Any]], None], wait: float = 0.0) -> bool | None:
        """Apply the pending operations in order, recording each one acknowledged. `apply(op,
        state)` may set state["run_id"]. Returns True when nothing is pending any more, False when
        an operation failed (it and the ones after it stay pending; the error is in `error_path`),
        None when another process has been replaying this journal for `wait` seconds (a trial
        still ending while its sweep ends) and still is."""
        deadline = time.monotonic() + wait
        while True:
            with self._locked("replay.lock", blocking=False) as locked:
                if locked:
                    return self._replay_locked(apply)
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.2)

    def _replay_locked(self, apply: Callable[[dict[str, Any], dict[str, Any]], None]) -> bool:
        state = self.state()
        for op in self.ops():
            if op["seq"] <= state["acked"]:
                continue
            try:
                apply(op, state)
            except Exception as error:  # kept for the caller's one-line warning; retried later
                self.error_path.write_text(f"{type(error).__name__}: {error}".splitlines()[0][:500])
                return False
            state["acked"] = op["seq"]
            self._write_state(state)
            if op.get("files"):
                shutil.rmtree(self.files_dir / str(op["seq"]), ignore_errors=True)
        self.error_path.unlink(missing_ok=True)
        return True

    def last_error(self) -> str | None:
        try:
            return self.error_path.read_text()
        except FileNotFoundError:
            return None


def spools(directory: str | os.PathLike) -> list[Spool]:
    """Every journal in `directory`."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [Spool(directory, path.name[:-len(".jsonl")]) for path in sorted(directory.glob("*.jsonl"))]
