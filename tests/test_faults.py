"""Faults while a run writes: a full disk, a worker killed mid-epoch (see test_jobs), an app
restart (see test_jobs). Nothing finished is lost and every state shown is true."""

import errno
import os

import pytest

from engine import jobs, procs, runs, train
from engine.spec import RunSpec
from engine.worker import train_child


def test_disk_full_while_writing_fails_with_reason_and_keeps_earlier_files(
    tmp_path, lognorm_file, monkeypatch
):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = RunSpec(
        model="mlp", data=lognorm_file, label_key="cell_type", epochs=3, out=str(run_dir)
    )
    runs.write_json(run_dir / "run.json", spec.to_dict())
    runs.write_json(run_dir / "status.json", {"state": "running"})
    done = train.run(
        RunSpec(
            model="logreg",
            data=lognorm_file,
            label_key="cell_type",
            epochs=1,
            out=str(tmp_path / "finished"),
        )
    )

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs, "write_metrics_csv", full)
    assert train_child(run_dir) == 1
    st = runs.read_status(run_dir)
    assert st["state"] == "failed" and "disk is full" in st["error"]
    assert (run_dir / "run.json").exists()
    assert runs.read_json(tmp_path / "finished" / "metrics.json")["test_accuracy"] == pytest.approx(
        done["test_accuracy"]
    )


def test_missing_status_json_is_listed_not_fatal(workspace, lognorm_file):
    run_dir = jobs.submit(
        RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=1)
    )
    jobs.wait(run_dir, timeout=120)
    (run_dir / "status.json").unlink()
    rows = {r["id"]: r for r in jobs.list_jobs()}
    assert (
        rows[run_dir.name]["state"] == "failed"
        and "missing or corrupt" in rows[run_dir.name]["error"]
    )
    assert (run_dir / "metrics.json").exists() and (run_dir / "results.h5ad").exists()


# ----------------------------------------------------------------------------- real faults
LONG_MLP = dict(model="mlp", label_key="cell_type", epochs=5000, patience=5000)


def _files(folder):
    return {
        str(p): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else b"")
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_listing_never_writes_and_recover_persists(workspace):
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = workspace / "runs" / "20260101-000000-mlp-dead"
    orphan.mkdir(parents=True)
    runs.write_json(orphan / "run.json", {"model": "mlp", "created": "2026-01-01T00:00:00"})
    runs.write_json(
        orphan / "status.json", {"state": "running", "supervisor_pid": dead.pid, "epoch": 3}
    )
    before = _files(workspace)
    rows = {r["id"]: r for r in jobs.list_jobs()}
    assert rows[orphan.name]["state"] == "interrupted"
    assert jobs.status(orphan.name)["state"] == "interrupted"
    assert _files(workspace) == before, "listing wrote to the workspace"
    assert jobs.recover() == [orphan.name]
    assert runs.read_json(orphan / "status.json")["state"] == "interrupted"


@pytest.fixture
def small_fs(tmp_path):
    """A 6 MB tmpfs the test owns (skipped where mounting is not allowed)."""
    import shutil
    import subprocess

    mnt = tmp_path / "small"
    mnt.mkdir()
    if not shutil.which("mount"):
        pytest.skip("no mount command here")
    out = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=6m", "tmpfs", str(mnt)],
        capture_output=True,
        text=True,
    )
    if out.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here: {out.stderr.strip()[:120]}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(folder):
    """Write until the filesystem is full; return the filler file."""
    filler = folder / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    try:  # the last few bytes too
        with open(folder / "filler2", "wb") as fh:
            while True:
                fh.write(b"\0" * 512)
                fh.flush()
    except OSError:
        pass
    return filler


def test_real_disk_full_fails_the_run_lists_without_writing_and_leaks_nothing(
    small_fs, monkeypatch, lognorm_file
):
    home = small_fs / "scwb"
    monkeypatch.setenv("SCWB_HOME", str(home))
    run_dir = jobs.submit(RunSpec(data=lognorm_file, **LONG_MLP))
    try:
        _disk_full_scenario(small_fs, home, run_dir, lognorm_file)
    finally:  # never leave its supervisor retrying on a filesystem that goes away
        pid = runs.read_status(run_dir).get("supervisor_pid")
        if pid and procs.pid_alive(pid, run_dir.name):
            os.kill(pid, 9)


def _disk_full_scenario(small_fs, home, run_dir, lognorm_file):
    import time

    from engine.errors import ScwbError

    t0 = time.time()
    while runs.read_status(run_dir).get("epoch", 0) < 1 and time.time() - t0 < 120:
        time.sleep(0.2)
    assert runs.read_status(run_dir)["state"] == "running"
    filler = _fill(small_fs)

    t0 = time.time()  # the run cannot write: every reader sees it failed, at once
    while jobs.status(run_dir)["state"] in runs.ACTIVE and time.time() - t0 < 60:
        time.sleep(0.3)
    st = jobs.status(run_dir)
    assert st["state"] == "failed" and "disk is full" in st["error"], st
    rows = jobs.list_jobs()  # listing works on a full disk (it never writes)
    assert [r["state"] for r in rows] == ["failed"]
    with pytest.raises(ScwbError, match="disk is full") as exc:
        jobs.submit(RunSpec(model="logreg", data=lognorm_file, label_key="cell_type", epochs=1))
    assert "\n" not in str(exc.value)
    assert [r["id"] for r in jobs.list_jobs()] == [run_dir.name]  # no empty folder listed
    assert not [p for p in (home / "runs").iterdir() if p.name.endswith(".partial")]

    filler.unlink()
    (small_fs / "filler2").unlink(missing_ok=True)
    t0 = time.time()  # as soon as space allows, status.json itself says so
    while runs.read_json(run_dir / "status.json", {}).get("state") != "failed":
        assert time.time() - t0 < 30, runs.read_json(run_dir / "status.json")
        time.sleep(0.3)
    assert "disk is full" in runs.read_json(run_dir / "status.json")["error"]
    leaked = [str(p) for p in home.rglob("*.tmp")]
    assert not leaked, leaked


def test_run_records_of_the_wrong_type_or_not_files_are_listed_not_fatal(workspace):
    """Found by a hostile-input pass: a run.json holding ``7`` (valid JSON, not an object) or
    a model of the wrong type broke every listing; a named pipe in place of status.json or
    run.json blocked the listing forever (and a pipe as model.pt blocked predict)."""
    from engine import toolkit
    from engine import workspace as ws
    from engine.errors import ScwbError

    root = ws.runs_dir()
    good = root / "good"
    good.mkdir()
    runs.write_json(good / "run.json", {"model": "mlp", "created": "2026"})
    runs.write_json(good / "status.json", {"state": "completed"})
    for name, spec in (("seven", 7), ("text", "x"), ("nested", {"model": {"a": 1}})):
        d = root / name
        d.mkdir()
        runs.write_json(d / "run.json", spec)
        runs.write_json(d / "status.json", {"state": "completed"})
    pipe = root / "pipe"
    pipe.mkdir()
    os.mkfifo(pipe / "status.json")
    os.mkfifo(pipe / "run.json")
    rows = {r["id"]: r for r in jobs.list_jobs()}
    assert rows["good"]["model"] == "mlp" and rows["seven"]["model"] == "?"
    assert rows["nested"]["model"] == "{'a': 1}"  # shown as text, never formatted as a dict
    assert rows["pipe"]["state"] == "failed"  # status.json unreadable: listed as corrupt
    assert runs.read_json(pipe / "run.json", {}) == {}
    assert runs.read_json(root / "seven" / "run.json", {}) == {}  # the type the caller wants
    assert runs.read_json(root / "seven" / "run.json") == 7  # no default: whatever it holds
    os.mkfifo(good / "model.pt")
    with pytest.raises(ScwbError, match="not a regular file"):
        toolkit.load_weights(good / "model.pt")


@pytest.mark.parametrize(
    "damage, said",
    [
        ("{", "run.json is unreadable or incomplete (no model or data)"),
        ('{"model": "mlp"}', "run.json is unreadable or incomplete (no data)"),
        ('{"model": "mlp", "data": "x.h5ad", "epochs": "many"}', "epochs"),
    ],
)
def test_a_queued_run_whose_run_json_was_damaged_fails_with_one_line(
    tmp_path, lognorm_file, damage, said
):
    """A hostile pass: a queued run whose run.json was damaged before it started failed with
    'TypeError: RunSpec.__init__() missing 2 required positional arguments' as its reason and
    a traceback in its log; the reason now names run.json."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(damage)
    runs.write_json(run_dir / "status.json", {"state": "running"})
    assert train_child(run_dir) == 1
    st = runs.read_status(run_dir)
    assert st["state"] == "failed" and said in st["error"], st["error"]
    assert "TypeError" not in st["error"] and "Traceback" not in str(st.get("log_tail") or "")
