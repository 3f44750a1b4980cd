"""Jobs run in their own processes; the queue, cancel, faults and recovery keep state true."""

import os
import signal
import subprocess
import threading
import time

import pytest
import torch

from engine import jobs, queue, runs, workspace
from engine.device import usable_cores
from engine.spec import RunSpec

LONG = dict(
    model="scgen",
    condition_key="condition",
    ctrl="control",
    stim="stimulated",
    cell_type_key="cell_type",
    predict="B cell",
    epochs=5000,
    patience=5000,
    params={"n_hidden": 64, "n_latent": 8},
)


def _wait_state(run_dir, states, timeout=90):
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = runs.read_status(run_dir)
        if st.get("state") in states and (
            st.get("state") != "running" or st.get("epoch", 0) > 0 or "running" not in states
        ):
            return st
        time.sleep(0.2)
    raise AssertionError(f"{run_dir.name} stayed {runs.read_status(run_dir)}")


def test_submit_returns_at_once_and_completes(workspace, lognorm_file):
    t0 = time.time()
    run_dir = jobs.submit(RunSpec(model="mlp", data=lognorm_file, label_key="cell_type", epochs=3))
    assert time.time() - t0 < 2.0, "submit must not wait for training"
    assert run_dir.parent == workspace / "runs"
    st = jobs.wait(run_dir, timeout=120)
    assert st["state"] == "completed", st
    assert st["cells_per_s"] > 0 and st["epoch"] == 3 and st["pid"] and st["device"]
    for f in ("metrics.json", "metrics.csv", "results.h5ad", "model.pt", "split.npz"):
        assert (run_dir / f).exists()
    assert [r["id"] for r in jobs.list_jobs()] == [run_dir.name]
    # the training process records its peak memory with its end
    assert 100 < st["peak_memory_mb"] < 4096


def test_one_slot_runs_jobs_in_order(monkeypatch, lognorm_file):
    monkeypatch.setenv("SCWB_SLOTS", "1")
    a = jobs.submit(RunSpec(model="mlp", data=lognorm_file, label_key="cell_type", epochs=20))
    b = jobs.submit(RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=2))
    _wait_state(a, {"running"})
    assert runs.read_status(b)["state"] == "queued"
    assert jobs.wait(a, timeout=120)["state"] == "completed"
    assert jobs.wait(b, timeout=120)["state"] == "completed"
    assert runs.read_status(b)["started"] >= runs.read_status(a)["finished"]


def test_cancel_running_job_keeps_best_weights(lognorm_file):
    run_dir = jobs.submit(RunSpec(data=lognorm_file, **LONG))
    _wait_state(run_dir, {"running"})
    assert jobs.cancel(run_dir.name) == "cancelling"
    st = jobs.wait(run_dir, timeout=60)
    assert st["state"] == "cancelled", st
    assert (run_dir / "model.pt").exists() and (run_dir / "metrics.json").exists()
    assert runs.read_metrics_csv(run_dir)["epoch"].max() < 5000


def test_cancel_queued_job(monkeypatch, lognorm_file):
    monkeypatch.setenv("SCWB_SLOTS", "1")
    a = jobs.submit(RunSpec(data=lognorm_file, **LONG))
    b = jobs.submit(RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=2))
    _wait_state(a, {"running"})
    assert jobs.cancel(b) == "cancelled"  # at once: it had not started (the app's toast says so)
    assert jobs.wait(b, timeout=30)["state"] == "cancelled"
    assert jobs.cancel(a) == "cancelling"
    assert jobs.wait(a, timeout=60)["state"] == "cancelled"


def test_sigkill_of_worker_is_failed_with_reason(lognorm_file):
    run_dir = jobs.submit(RunSpec(data=lognorm_file, **LONG))
    st = _wait_state(run_dir, {"running"})
    os.kill(st["pid"], signal.SIGKILL)
    st = jobs.wait(run_dir, timeout=30)
    assert st["state"] == "failed" and "SIGKILL" in st["error"]


def test_exception_in_worker_is_failed_with_message(tmp_path):
    bad = tmp_path / "bad.h5ad"
    bad.write_text("not hdf5")
    run_dir = jobs.submit(RunSpec(model="mlp", data=str(bad), label_key="x", epochs=1))
    st = jobs.wait(run_dir, timeout=60)
    assert st["state"] == "failed" and "not a readable .h5ad" in st["error"]


def test_restart_marks_orphans_interrupted_and_keeps_finished(workspace, lognorm_file):
    done = jobs.submit(RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=1))
    jobs.wait(done, timeout=60)
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = workspace / "runs" / "20260101-000000-mlp-dead"
    orphan.mkdir(parents=True)
    runs.write_json(orphan / "run.json", {"model": "mlp", "created": "2026-01-01T00:00:00"})
    runs.write_json(
        orphan / "status.json", {"state": "running", "supervisor_pid": dead.pid, "epoch": 3}
    )
    rows = {r["id"]: r for r in jobs.list_jobs()}
    assert rows[orphan.name]["state"] == "interrupted"
    assert rows[done.name]["state"] == "completed"


def test_concurrent_submissions_from_threads(monkeypatch, lognorm_file):
    monkeypatch.setenv("SCWB_SLOTS", "2")
    out: list = []

    def go():
        out.append(
            jobs.submit(RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=1))
        )

    threads = [threading.Thread(target=go) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(set(out)) == 4
    assert all(jobs.wait(r, timeout=180)["state"] == "completed" for r in out)


def test_corrupt_run_folder_does_not_break_listing(workspace):
    (workspace / "runs" / "broken").mkdir(parents=True)
    (workspace / "runs" / "broken" / "status.json").write_text("{half a json")
    (workspace / "runs" / "empty").mkdir()
    rows = {r["id"]: r for r in jobs.list_jobs()}
    assert rows["broken"]["state"] == "failed" and "corrupt" in rows["broken"]["error"]
    assert rows["empty"]["state"] == "failed"


def test_delete_refuses_active_and_removes_finished(lognorm_file):
    from engine.errors import ScwbError

    run_dir = jobs.submit(RunSpec(data=lognorm_file, **LONG))
    with pytest.raises(ScwbError, match="still active"):
        jobs.delete(run_dir)
    jobs.cancel(run_dir)
    jobs.wait(run_dir, timeout=60)
    jobs.delete(run_dir)
    assert not run_dir.exists()


def test_two_deletes_of_one_run_at_once(monkeypatch):
    """A hostile-input pass: of two deletes of one run at once, the second failed with
    'unexpected FileNotFoundError' (files vanishing under its rmtree): the run is renamed out
    of the listing in one step first, and the second delete says it is gone."""
    from engine import runs, workspace
    from engine.errors import ScwbError

    run_dir = workspace.runs_dir() / "done-run"
    run_dir.mkdir(parents=True)
    runs.write_json(run_dir / "run.json", {"model": "mlp"})
    runs.update_status(run_dir, state="completed")
    real = jobs.os.rename

    def other_delete_first(src, dst):  # the other process renames it between check and act
        real(src, str(dst) + "-other")
        real(src, dst)

    monkeypatch.setattr(jobs.os, "rename", other_delete_first)
    with pytest.raises(ScwbError, match="done-run was deleted meanwhile"):
        jobs.delete(run_dir)
    monkeypatch.setattr(jobs.os, "rename", real)
    assert [r["id"] for r in runs.list_runs(workspace.runs_dir())] == []


def test_resolve_run_refuses_escape():
    from engine.errors import ScwbError

    with pytest.raises(ScwbError):
        jobs.resolve_run("../../etc")


def test_a_run_id_names_its_own_folder_never_a_cleaned_or_linked_one():
    """A hostile-input pass: with runs 'my run' and 'my_run', Delete on 'my run' removed
    'my_run' (the id was cleaned up to a safe name first), and a link's id deleted the run it
    points to."""
    from engine.errors import ScwbError

    base = workspace.runs_dir()
    for name in ("my run", "my_run"):
        (base / name).mkdir()
        runs.write_json(base / name / "run.json", {"model": "mlp"})
        runs.update_status(base / name, state="completed")
    assert jobs.resolve_run("my run") == base / "my run"
    (base / "alias").symlink_to(base / "my_run", target_is_directory=True)
    with pytest.raises(ScwbError, match="is a link, not a run folder"):
        jobs.resolve_run("alias")
    with pytest.raises(ScwbError, match="is a link"):
        jobs.delete("alias")
    assert "alias" not in [r["id"] for r in runs.list_runs(base)]  # not listed as a run
    jobs.delete("my run")
    assert not (base / "my run").exists() and (base / "my_run" / "run.json").exists()
    with pytest.raises(ScwbError, match="No run 'nope'"):
        jobs.resolve_run("nope")


@pytest.mark.skipif(usable_cores() < 2, reason="two CPU devices need two cores")
def test_one_run_on_two_devices_ddp(monkeypatch, lognorm_file):
    """Data-parallel training (Lightning DDP; here two CPU processes with gloo, on GPUs one per
    slot): the run holds two slots, each rank trains a disjoint half, rank 0 writes."""
    monkeypatch.setenv("SCWB_SLOTS", "2")
    run_dir = jobs.submit(
        RunSpec(
            model="mlp", data=lognorm_file, label_key="cell_type", epochs=3, devices=2, device="cpu"
        )
    )
    st = jobs.wait(run_dir, timeout=180)
    assert st["state"] == "completed", (st, (run_dir / "worker.log").read_text()[-2000:])
    assert st["slots"] == [0, 1]
    assert runs.read_metrics_csv(run_dir)["epoch"].tolist() == [1, 2, 3]
    assert runs.read_json(run_dir / "metrics.json")["test_accuracy"] > 0.5


def test_more_devices_than_slots_is_refused(lognorm_file):
    from engine.errors import ScwbError

    with pytest.raises(ScwbError, match="asks for 4 devices"):
        jobs.submit(RunSpec(model="mlp", data=lognorm_file, label_key="cell_type", devices=4))


def test_batches_shard_disjointly_across_ranks():
    import numpy as np

    from engine.data import Batches

    x = torch.arange(103, dtype=torch.float32).reshape(-1, 1)
    seen = [
        torch.cat(
            [
                b["x"]
                for b in Batches(
                    {"x": x}, np.arange(103), 10, shuffle=True, seed=3, rank=r, world=2
                )
            ]
        )
        for r in (0, 1)
    ]
    assert (
        len(seen[0]) == len(seen[1]) == 50
    )  # 51 each; a last batch of one cell is skipped (BatchNorm)
    assert not set(seen[0].flatten().tolist()) & set(seen[1].flatten().tolist())


# ----------------------------------------------------------------------------- queue, lanes, hosts
LONG_MLP = dict(model="mlp", label_key="cell_type", epochs=5000, patience=5000)


def _procs() -> list[str]:
    return subprocess.run(
        ["ps", "-eww", "-o", "args"], capture_output=True, text=True
    ).stdout.splitlines()


def test_queued_runs_cost_no_process_and_the_queue_is_capped(workspace, monkeypatch, lognorm_file):
    from engine.errors import ScwbError

    monkeypatch.setenv("SCWB_SLOTS", "1")
    monkeypatch.setenv("SCWB_MAX_QUEUED", "3")
    a = jobs.submit(RunSpec(data=lognorm_file, **LONG_MLP))
    _wait_state(a, {"running"})
    queued = [
        jobs.submit(RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=1))
        for _ in range(3)
    ]
    with pytest.raises(ScwbError, match="3 runs are already waiting") as exc:
        jobs.submit(RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=1))
    assert "SCWB_MAX_QUEUED" in str(exc.value) and "\n" not in str(exc.value)
    time.sleep(1.0)
    procs = _procs()
    assert not [p for p in procs if any(q.name in p for q in queued)], "a queued run has a process"
    dispatchers = [p for p in procs if "--dispatch" in p and str(workspace) in p]
    assert len(dispatchers) == 1, dispatchers
    assert [runs.read_status(q)["state"] for q in queued] == ["queued"] * 3
    for q in queued:
        jobs.cancel(q)
        assert runs.read_status(q)["state"] == "cancelled"  # at once: nothing was running
    jobs.cancel(a)
    assert jobs.wait(a, timeout=60)["state"] == "cancelled"
    t0 = time.time()  # the dispatcher leaves once the queue is empty
    while [p for p in _procs() if "--dispatch" in p and str(workspace) in p]:
        assert time.time() - t0 < 20, "the dispatcher outlived its queue"
        time.sleep(0.3)


def test_sklearn_baselines_never_wait_behind_long_runs(monkeypatch, lognorm_file):
    monkeypatch.setenv("SCWB_SLOTS", "1")
    a = jobs.submit(RunSpec(data=lognorm_file, **LONG_MLP))
    _wait_state(a, {"running"})
    b = jobs.submit(RunSpec(model="sk_logreg", data=lognorm_file, label_key="cell_type"))
    st = jobs.wait(b, timeout=120)
    assert st["state"] == "completed" and st["lane"] == "light", st
    assert runs.read_status(a)["state"] == "running"  # the long run holds the only device slot
    jobs.cancel(a)
    assert jobs.wait(a, timeout=60)["state"] == "cancelled"


def _foreign_run(root, name, state, **status):
    d = root / name
    d.mkdir(parents=True)
    runs.write_json(d / "run.json", {"model": "mlp", "created": "2026-01-01T00:00:00"})
    runs.write_json(d / "status.json", {"state": state, "launcher": "local", **status})
    return d


def test_two_hosts_sharing_a_workspace_never_interrupt_each_others_live_runs(workspace):
    from engine import launchers

    root = workspace / "runs"
    live = _foreign_run(
        root, "20260101-000001-mlp-live", "running", host="other-host", supervisor_pid=os.getpid()
    )
    (live / "heartbeat").write_text("1")
    gone = _foreign_run(
        root, "20260101-000002-mlp-gone", "running", host="other-host", supervisor_pid=os.getpid()
    )
    (gone / "heartbeat").write_text("1")
    old = time.time() - 3600
    os.utime(gone / "heartbeat", (old, old))  # its host stopped beating an hour ago
    waiting = _foreign_run(root, "20260101-000003-mlp-wait", "queued", host="other-host")
    qdir = queue.queue_dir(root, "other-host")
    qdir.mkdir(parents=True)
    runs.write_json(qdir / ".dispatcher.json", {"pid": 1, "host": "other-host"})

    rows = {r["id"]: r for r in jobs.list_jobs()}
    assert rows[live.name]["state"] == "running"  # a pid is never checked across hosts
    assert rows[waiting.name]["state"] == "queued"
    assert rows[gone.name]["state"] == "interrupted"
    assert "other-host" in rows[gone.name]["error"] and rows[gone.name]["host"] == "other-host"
    assert jobs.recover() == [gone.name]
    assert runs.read_status(live)["state"] == "running"
    assert queue.slots_dir(root).name == launchers.host()  # slot locks are per host


def test_gpu_count_is_asked_once_per_process(monkeypatch):
    from types import SimpleNamespace

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.setattr(queue, "_GPU_COUNT", {})
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd)
        return SimpleNamespace(stdout="GPU 0: H100 (UUID: a)\nGPU 1: H100 (UUID: b)\n")

    monkeypatch.setattr(queue.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(queue.subprocess, "run", fake_run)
    assert [jobs.gpu_count() for _ in range(5)] == [2] * 5
    assert [jobs.n_slots() for _ in range(3)] == [2] * 3
    assert calls == [["nvidia-smi", "-L"]]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert jobs.gpu_count() == 1 and len(calls) == 1


def test_listing_many_runs_is_cached_and_cheap(workspace, monkeypatch):
    import json

    root = workspace / "runs"
    root.mkdir(parents=True, exist_ok=True)
    for i in range(3000):
        d = root / f"20260101-{i:06d}-mlp-x"
        d.mkdir()
        (d / "run.json").write_text(json.dumps({"model": "mlp", "created": f"2026-01-01 {i:06d}"}))
        (d / "status.json").write_text(json.dumps({"state": "completed", "epoch": 3}))
        os.utime(d, (time.time() - 3600, time.time() - 3600))  # written long ago
    os.utime(root, (time.time() - 3600, time.time() - 3600))
    t0 = time.perf_counter()
    first = jobs.list_jobs()
    t1 = time.perf_counter()
    again = jobs.list_jobs()
    t2 = time.perf_counter()
    assert len(first) == len(again) == 3000 and first == again
    assert t2 - t1 < 0.5 and t2 - t1 < (t1 - t0) / 3, (t1 - t0, t2 - t1)
    new = root / "20270101-000000-mlp-new"  # a new run is seen at once (the folder's mtime moved)
    new.mkdir()
    runs.write_json(new / "run.json", {"model": "mlp", "created": "2027-01-01"})
    runs.write_json(new / "status.json", {"state": "completed"})
    assert jobs.list_jobs()[0]["id"] == new.name
    monkeypatch.setattr(runs, "RESCAN_S", 0.0)  # a finished run edited in place: at the next rescan
    (root / first[5]["id"] / "status.json").unlink()
    runs.write_json(root / first[6]["id"] / "status.json", {"state": "failed", "error": "x"})
    rows = {r["id"]: r for r in jobs.list_jobs()}
    assert rows[first[5]["id"]]["state"] == "failed" and rows[first[6]["id"]]["error"] == "x"


def test_runs_left_queued_by_a_restart_wait_and_resume(monkeypatch, lognorm_file):
    from engine import launchers

    real = queue.ensure_dispatcher
    queue.ensure_dispatcher = lambda root=None: None  # as if the dispatcher died with the machine
    try:
        run_dir = jobs.submit(
            RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=1)
        )
    finally:
        queue.ensure_dispatcher = real
    monkeypatch.setattr(launchers, "START_GRACE_S", 0.0)
    assert jobs.status(run_dir)["state"] == "queued"  # still in its queue: nothing was lost
    assert jobs.resume_queue() is True  # the app's sidebar calls this once per process
    assert jobs.wait(run_dir, timeout=120)["state"] == "completed"


def test_a_run_queued_while_the_dispatcher_leaves_still_starts(lognorm_file):
    """A dispatcher that has taken its last look at the queue is still alive for a moment on its
    way out; a run queued then waited for the next submit (a CI run saw one stay queued for
    120 s). The pid is not the test: the dispatcher's lock is."""
    import subprocess
    import sys

    from engine import launchers, runs, workspace

    qdir = queue.queue_dir(workspace.runs_dir(), launchers.host())
    qdir.mkdir(parents=True, exist_ok=True)
    # a process named like a dispatcher, alive, recorded as the dispatcher, holding no lock
    leaving = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "--dispatch"])
    try:
        runs.write_json(qdir / ".dispatcher.json", {"pid": leaving.pid})
        assert not queue.dispatcher_alive(workspace.runs_dir())
        run_dir = jobs.submit(
            RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=1)
        )
        assert jobs.wait(run_dir, timeout=120)["state"] == "completed"
    finally:
        leaving.kill()
        leaving.wait()


def test_a_dispatcher_holding_its_lock_is_not_doubled(monkeypatch):
    """While a dispatcher holds its lock, submits leave the queue to it (no second process)."""
    import fcntl

    from engine import launchers, workspace

    qdir = queue.queue_dir(workspace.runs_dir(), launchers.host())
    qdir.mkdir(parents=True, exist_ok=True)
    started = []
    monkeypatch.setattr(queue.subprocess, "Popen", lambda *a, **k: started.append(a))
    with open(qdir / ".dispatcher.lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert queue.dispatcher_alive(workspace.runs_dir())
        queue.ensure_dispatcher()
        assert started == []
    queue.ensure_dispatcher()  # let go (and gone): a new one is started
    assert len(started) == 1


def test_slots_map_to_the_gpus_this_process_may_use(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert queue.gpu_ids([0, 1]) == "0,1"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # e.g. a scheduler's allocation
    assert (
        queue.gpu_ids([0]) == "2" and queue.gpu_ids([1]) == "3" and queue.gpu_ids([0, 1]) == "2,3"
    )
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-aaa,GPU-bbb")
    assert queue.gpu_ids([1]) == "GPU-bbb"


def test_runs_of_one_submission_are_listed_together_in_submission_order(tmp_path):
    """A browser pass: 3 models x 3 seeds submitted in one click were listed sk_logreg 2, 1, 0,
    mlp 1, 2, 0, logreg 2, 0, 1 (sorted by the second they were created, then by their random
    ids). Newest submission first; one submission's runs in the order they were submitted."""
    import random

    root = tmp_path / "runs"
    order = [(m, s) for m in ("sk_logreg", "mlp", "logreg") for s in (0, 1, 2)]
    ns = 1_000_000_000
    made = []
    for i, (model, seed) in enumerate(order):
        rid = f"20261128-1036-{model}-{random.Random(i).getrandbits(16):04x}"
        made.append(rid)
        spec = {"model": model, "seed": seed, "group": "seeds-1", "created": "2026-11-28T10:36:26"}
        (root / rid).mkdir(parents=True)
        runs.write_json(root / rid / "run.json", spec | {"submitted_ns": ns + i})
        runs.update_status(root / rid, state="queued")
    for rid, created, n in (("old", "2026-11-28T09:00:00", 1), ("new", "2026-11-28T11:00:00", 2)):
        (root / rid).mkdir()
        runs.write_json(
            root / rid / "run.json", {"model": "mlp", "created": created, "submitted_ns": n}
        )
        runs.update_status(root / rid, state="completed")
    listed = [r["id"] for r in runs.list_runs(root)]
    assert listed == ["new", *made, "old"], listed
    assert [(r["model"], r["seed"]) for r in runs.list_runs(root)[1:10]] == order
    # the group's name given again an hour later (submit --group): another submission, listed
    # as the newest, not under the first one's date (a review)
    for rid, n in (("again-0", 3600), ("again-1", 3601)):
        (root / rid).mkdir()
        spec = {"model": "mlp", "group": "seeds-1", "created": "2026-11-28T11:36:26"}
        runs.write_json(root / rid / "run.json", spec | {"submitted_ns": ns + n * 10**9})
        runs.update_status(root / rid, state="queued")
    listed = [r["id"] for r in runs.list_runs(root)]
    assert listed == ["again-0", "again-1", "new", *made, "old"], listed


def test_a_finished_run_keeps_its_submission_time(lognorm_file):
    """The run's record was written again when it started, without its submission time: once
    finished, one click's runs fell back to the order of their random ids (a browser check)."""
    run = jobs.submit(RunSpec(model="sk_logreg", data=lognorm_file, label_key="cell_type"))
    ns = runs.read_json(run / "run.json")["submitted_ns"]
    assert jobs.wait(run, timeout=180)["state"] == "completed"
    record = runs.read_json(run / "run.json")
    assert record["submitted_ns"] == ns and record["data_fingerprint"]  # rewritten, kept


def test_run_files_are_strict_json_and_an_undefined_metric_reads_back_as_nan(tmp_path):
    """A browser pass: a scGen run's metrics.json (and its download) held NaN, which is not
    JSON: R's jsonlite, JavaScript's JSON.parse and jq refused it. Non-finite numbers are
    written null, numpy's too, and a metric written null reads back as NaN."""
    import json
    import math

    import numpy as np

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in strict JSON"))

    metrics = {
        "r2": 0.93,
        "pearson_delta": float("nan"),
        "ratio": float("inf"),
        "f32": np.float32("nan"),
        "per_class": {"B": np.float64("-inf"), "T": 1.0},
        "curve": np.array([0.5, np.nan]),
        "n": np.int64(3),
    }
    runs.write_json(tmp_path / "metrics.json", metrics)
    on_disk = strict((tmp_path / "metrics.json").read_text())
    assert on_disk["pearson_delta"] is None and on_disk["f32"] is None
    assert on_disk["per_class"] == {"B": None, "T": 1.0} and on_disk["curve"] == [0.5, None]
    assert on_disk["n"] == 3
    back = runs.read_metrics(tmp_path / "metrics.json", {})
    assert math.isnan(back["pearson_delta"]) and math.isnan(back["per_class"]["B"])
    assert back["r2"] == 0.93 and back["per_class"]["T"] == 1.0
    assert strict(runs.json_text(back)) == on_disk  # the Results page's download: the same
