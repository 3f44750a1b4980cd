"""Faults while a run writes: a full disk, a worker killed mid-epoch (see test_jobs), an app
restart (see test_jobs). Nothing finished is lost and every state shown is true."""

import errno

import pytest

from engine import jobs, runs, train
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
