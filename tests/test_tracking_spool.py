"""The journal of MLflow writes (storage.spool, storage.tracking.JournaledRun) against a real
SQLite MLflow store: order kept, a failed replay resumed where it stopped, a repeated replay (a
process killed between MLflow's answer and the acknowledgement) without duplicates, a line cut
short by a killed writer dropped, an operation MLflow refuses for good set aside."""
from __future__ import annotations

import json

import pytest

from storage import tracking
from storage.spool import Spool


@pytest.fixture(scope="module")
def database(tmp_path_factory):
    """One SQLite store for the module (creating one runs every MLflow migration: seconds)."""
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow')}/mlflow.db"
    return uri, tracking.ensure_experiment(uri, "e")


@pytest.fixture
def store(database, tmp_path):
    """A fresh parent run and journal folder per test."""
    uri, experiment = database
    return uri, experiment, tracking.start_parent(uri, experiment, "s", {}, "name: s\n"), tmp_path / "spool"


def _open(store, trial="t1"):
    uri, experiment, parent, journals = store
    return tracking.TrialRun.open(uri, experiment, parent, trial, f"trial_{trial}", None, {"k": "v"}, journals)


def _steps(uri, run_id, key="x"):
    return sorted((m.step, m.value) for m in tracking.client(uri).get_metric_history(run_id, key))


def test_appends_are_numbered_and_a_torn_line_is_dropped(tmp_path):
    spool = Spool(tmp_path, "k")
    assert [spool.append("tags", tags={"a": "1"}), spool.append("tags", tags={"a": "2"})] == [1, 2]
    with open(spool.path, "a") as handle:
        handle.write('{"seq": 3, "op": "ta')  # a writer killed mid-line
    assert [op["seq"] for op in spool.ops()] == [1, 2]
    assert spool.append("tags", tags={"a": "3"}) == 3
    assert [op["tags"]["a"] for op in spool.ops()] == ["1", "2", "3"]
    assert all(line.startswith("{") for line in spool.path.read_text().splitlines())


def test_replay_stops_at_a_failure_and_resumes_in_order(tmp_path):
    spool = Spool(tmp_path, "k")
    for i in range(1, 5):
        spool.append("n", value=i)
    seen, fail_at = [], {3}

    def apply(op, state):
        if op["value"] in fail_at:
            raise ConnectionError("server down")
        seen.append(op["value"])

    assert spool.replay(apply) is False
    assert seen == [1, 2] and spool.state()["acked"] == 2 and "ConnectionError: server down" in spool.last_error()
    fail_at.clear()
    assert spool.replay(apply) is True
    assert seen == [1, 2, 3, 4] and spool.pending() == [] and spool.last_error() is None
    assert spool.replay(apply) is True and seen == [1, 2, 3, 4]  # nothing sent twice


@pytest.mark.slow  # a real MLflow store (its migrations take seconds)
def test_trial_run_reaches_mlflow_once_in_order(store):
    uri = store[0]
    run = _open(store)
    run.log_params({"lr": 0.1, "model": {"hidden": 8}})
    for step in (1, 2, 3):
        run.log_metrics({"x": float(step), "nested": {"y": 2.0 * step}}, step=step)
    run.finish("FINISHED")
    got = tracking.client(uri).get_run(run.run_id)
    assert got.info.status == "FINISHED" and got.data.params == {"lr": "0.1", "model.hidden": "8"}
    assert got.data.tags["k"] == "v" and got.data.tags[tracking.TRIAL_TAG] == "t1"
    assert _steps(uri, run.run_id) == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert run.logged_steps("x") == {1, 2, 3} and run.logged_steps("z") == set()

    # A process killed after MLflow took the operations but before it recorded that: all replayed again.
    state = run.spool.state()
    run.spool._write_state({**state, "acked": 0})
    assert run.flush(force=True) is True
    assert _steps(uri, run.run_id) == [(1, 1.0), (2, 2.0), (3, 3.0)]  # no duplicate rows
    assert _steps(uri, run.run_id, "nested.y") == [(1, 2.0), (2, 4.0), (3, 6.0)]
    assert len(tracking.child_runs(uri, store[1], store[2])) == 1  # and no second run


@pytest.mark.slow  # a real MLflow store (its migrations take seconds)
def test_a_retried_trial_reopens_its_one_run(store):
    uri = store[0]
    first = _open(store)
    first.log_metrics({"x": 1.0}, step=1)
    first.finish("FAILED", "RuntimeError: boom")
    assert tracking.client(uri).get_run(first.run_id).data.tags[tracking.ERROR_TAG] == "RuntimeError: boom"
    second = _open(store)  # the retry: same trial id, no checkpoint
    assert second.run_id == first.run_id
    got = tracking.client(uri).get_run(second.run_id)
    assert got.info.status == "RUNNING" and tracking.ERROR_TAG not in got.data.tags
    assert second.logged_steps("x") == {1}


@pytest.mark.slow  # a real MLflow store (its migrations take seconds)
def test_an_operation_mlflow_refuses_is_set_aside(store, capsys):
    uri = store[0]
    run = _open(store)
    run.finish("FINISHED")
    tracking.client(uri).delete_run(run.run_id)
    run.log_metrics({"x": 1.0}, step=1)  # MLflow refuses writes to a deleted run, now and later
    run.set_tags({"after": "1"})
    assert run.spool.pending() == []
    rejected = (run.spool.directory / "t1.rejected").read_text().splitlines()
    assert len(rejected) == 2 and "rejected by MLflow" in rejected[0]
    assert capsys.readouterr().err.count("rejected by MLflow") == 2


@pytest.mark.slow  # a real MLflow store (its migrations take seconds)
def test_record_start_counts_and_settle_ends_once(store):
    uri, experiment, parent, journals = store
    ids = (uri, journals, experiment, parent, "t2", "trial_t2")
    assert [tracking.record_start(*ids), tracking.record_start(*ids)] == [1, 2]
    assert tracking.settle(*ids, "FAILED", "worker died") is True
    assert tracking.settle(*ids, "FAILED", "again") is False  # already ended since its last start
    assert tracking.replay_all(uri, journals) == {}
    (child,) = tracking.child_runs(uri, experiment, parent)
    assert child.info.status == "FAILED" and child.data.tags[tracking.ATTEMPTS_TAG] == "2"
    assert child.data.tags[tracking.ERROR_TAG] == "worker died"
    lines = [json.loads(line) for line in (journals / "t2.jsonl").read_text().splitlines()]
    assert [op["op"] for op in lines] == ["tags", "tags", "finish"]


@pytest.mark.slow  # a real MLflow store (its migrations take seconds)
def test_nothing_raises_while_the_server_is_down(tmp_path):
    """A trial's writes against a tracking server that refuses connections: journaled, nothing
    raised (so a trial's own error stays the one Ray reports), each attempt over in well under
    MLflow's default retry window of minutes."""
    import socket
    import time

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    began = time.monotonic()
    run = tracking.TrialRun.open(url, "0", "p" * 32, "t9", "trial_t9", None, {}, tmp_path / "spool")
    run.log_params({"lr": 0.1})
    run.log_metrics({"x": 1.0}, step=1)
    run.finish("FAILED", "TrainingError: epoch 1, batch 3: loss is nan")
    assert time.monotonic() - began < 60
    assert run.run_id is None and [op["op"] for op in run.spool.pending()] == ["open", "params", "metrics", "finish"]
    assert "Connection refused" in run.spool.last_error() or "Max retries" in run.spool.last_error()


def test_a_new_sweep_does_not_inherit_the_journals_of_a_removed_one(database, tmp_path):
    # A failed study stage is restarted by removing its sweep folder; the journals live beside it
    # (tracking.spool_dir), and the parent's journal of the old sweep used to keep its run id, so the
    # new sweep's parent-run writes went to the old (or a deleted) run and the new one stayed RUNNING.
    import shutil

    from sweeps.launch import start_tracking
    from sweeps.spec import parse_spec

    uri, _ = database
    spec = parse_spec({"name": "again", "task": "synthetic", "stage": "ce", "epochs": 1})
    root = tmp_path / "sweeps"
    directory = root / spec.name
    first = start_tracking(spec, root, directory, uri)
    tracking.parent_run(uri, tracking.spool_dir(directory), first["parent_run_id"]).write("tags", tags={"x": "1"})
    shutil.rmtree(directory)
    second = start_tracking(spec, root, directory, uri)
    tracking.parent_run(uri, tracking.spool_dir(directory), second["parent_run_id"]).write("tags", tags={"y": "2"})
    client = tracking.client(uri)
    assert second["parent_run_id"] != first["parent_run_id"]
    assert client.get_run(second["parent_run_id"]).data.tags.get("y") == "2"
    assert "y" not in client.get_run(first["parent_run_id"]).data.tags
    kept = list(tracking.spool_dir(directory).parent.glob("spool.replaced-*"))
    assert len(kept) == 1 and any(kept[0].rglob("*"))  # the old journals kept, not deleted
