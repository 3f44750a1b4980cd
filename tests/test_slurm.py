"""Runs on a real SLURM cluster (scripts/slurm/up.sh brings up a single-node one; .ci/run does it
before the suite): submit with ``python -m engine submit --launcher slurm``, see runs complete
with their metrics, cancel one (CANCELLED in sacct, ``cancelled`` in the run folder with its best
weights), kill one with ``scancel --signal=KILL`` (``failed`` with the scheduler's reason).
Skipped, with the reason, where SLURM is not installed or the cluster is not up."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine import jobs, runs

pytestmark = pytest.mark.slurm
ROOT = Path(__file__).resolve().parent.parent


def _why_not() -> str | None:
    if not shutil.which("sinfo") or not shutil.which("sbatch"):
        return "SLURM is not installed here (no sinfo/sbatch); scripts/slurm/up.sh sets up a test cluster"
    try:
        import submitit  # noqa: F401
    except ImportError:
        return "submitit is not installed (requirements.txt)"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError) as exc:
        return f"sinfo failed: {exc}"
    states = out.stdout.split()
    if out.returncode != 0 or not any(
        s.rstrip("*") in ("idle", "mixed", "allocated") for s in states
    ):
        first = (out.stderr.strip().splitlines() or [""])[0]
        return f"the SLURM cluster is not up (sinfo: {states or first!r}); run scripts/slurm/up.sh"
    acct = subprocess.run(["sacct", "-n", "-X", "-j", "1"], capture_output=True, timeout=10)
    if acct.returncode != 0:
        return "SLURM accounting (slurmdbd) is not up: sacct fails"
    return None


@pytest.fixture(scope="module")
def cluster():
    why = _why_not()
    if why:
        pytest.skip(why)


def _submit(data: str, *extra: str) -> Path:
    out = subprocess.run(
        [sys.executable, "-m", "engine", "submit", "--launcher", "slurm", "--data", data, *extra],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    return Path(out.stdout.strip().splitlines()[-1])


def _sacct_state(job_id: str, want: str, timeout: float = 40) -> str:
    t0, state = time.time(), ""
    while time.time() - t0 < timeout:
        out = subprocess.run(
            ["sacct", "-n", "-P", "-X", "-j", job_id, "-o", "State"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        state = out.stdout.strip()
        if state.startswith(want):
            return state
        time.sleep(0.5)
    return state


def _running(run_dir: Path, timeout: float = 120) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        st = jobs.status(run_dir)
        if st.get("state") == "running" and (st.get("epoch") or 0) >= 1:
            return st
        assert st.get("state") in runs.ACTIVE, st
        time.sleep(0.3)
    raise AssertionError(f"{run_dir.name} never ran: {jobs.status(run_dir)}")


LONG = ("--model", "mlp", "--label-key", "cell_type", "--epochs", "5000", "--patience", "5000")


def test_slurm_runs_complete_with_metrics(cluster, separable_file):
    a = _submit(
        separable_file, "--model", "logreg", "--label-key", "label", "--epochs", "2", "--lr", "0.05"
    )
    b = _submit(
        separable_file, "--model", "mlp", "--label-key", "label", "--epochs", "2", "--lr", "0.05"
    )
    for run_dir in (a, b):
        st = jobs.wait(run_dir, timeout=180)
        assert st["state"] == "completed", (st, _logs(run_dir))
        assert st["launcher"] == "slurm" and st["job_id"] and st["host"]
        assert runs.read_json(run_dir / "metrics.json")["test_accuracy"] > 0.8
        assert runs.read_metrics_csv(run_dir)["epoch"].tolist() == [1, 2]
        assert (run_dir / "results.h5ad").exists() and (run_dir / "model.pt").exists()
        assert _sacct_state(st["job_id"], "COMPLETED").startswith("COMPLETED")
    rows = {r["id"]: r for r in jobs.list_jobs()}
    assert rows[a.name]["launcher"] == "slurm" and rows[a.name]["job_id"]
    listed = subprocess.run(
        [sys.executable, "-m", "engine", "runs", "--json"], capture_output=True, text=True, cwd=ROOT
    )
    ids = {r["id"]: r["job_id"] for r in json.loads(listed.stdout)}
    assert ids[b.name] == runs.read_status(b)["job_id"]


def test_slurm_cancel_ends_cancelled_in_sacct_and_keeps_best_weights(cluster, lognorm_file):
    run_dir = _submit(lognorm_file, *LONG)
    st = _running(run_dir)
    out = subprocess.run(
        [sys.executable, "-m", "engine", "cancel", run_dir.name],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert out.returncode == 0 and "cancelling" in out.stdout, out.stderr
    st = jobs.wait(run_dir, timeout=90)
    assert st["state"] == "cancelled", (st, _logs(run_dir))
    assert (run_dir / "model.pt").exists() and (run_dir / "metrics.json").exists()
    assert runs.read_metrics_csv(run_dir)["epoch"].max() < 5000
    assert _sacct_state(st["job_id"], "CANCELLED").startswith("CANCELLED")


def test_slurm_kill_ends_failed_with_the_schedulers_reason(cluster, lognorm_file):
    run_dir = _submit(lognorm_file, *LONG)
    st = _running(run_dir)
    subprocess.run(["scancel", "--signal=KILL", st["job_id"]], check=True, timeout=10)
    t0 = time.time()
    while jobs.status(run_dir)["state"] in runs.ACTIVE and time.time() - t0 < 60:
        time.sleep(0.5)
    shown = jobs.status(run_dir)  # computed by a reader, without writing
    assert shown["state"] == "failed", shown
    assert f"SLURM job {st['job_id']} ended CANCELLED" in shown["error"]
    assert runs.read_json(run_dir / "status.json")["state"] == "running"  # listing never writes
    st = jobs.wait(run_dir, timeout=10)  # wait records it
    assert st["state"] == "failed" and "SLURM job" in st["error"]
    assert runs.read_json(run_dir / "status.json")["state"] == "failed"


def test_slurm_parameters_come_from_settings_read_at_call_time(monkeypatch, lognorm_file):
    """No cluster needed: what the launcher asks SLURM for follows the environment now."""
    from engine import launchers
    from engine.spec import RunSpec

    spec = RunSpec(model="mlp", data=lognorm_file, label_key="cell_type", devices=2, device="cuda")
    monkeypatch.setenv("SCWB_SLURM_PARTITION", "gpu")
    monkeypatch.setenv("SCWB_SLURM_TIME", "90")
    monkeypatch.setenv("SCWB_SLURM_CPUS", "4")
    monkeypatch.setenv("SCWB_SLURM_MEM", "16G")
    monkeypatch.setenv("SCWB_SLURM_NODES", "2")
    p = launchers.Slurm().parameters(spec)
    assert p["slurm_partition"] == "gpu" and p["timeout_min"] == 90
    assert p["slurm_cpus_per_task"] == 4 and p["slurm_mem"] == "16G"
    assert p["nodes"] == 2 and p["tasks_per_node"] == 2 and p["gpus_per_node"] == 2
    cpu = RunSpec(model="sk_logreg", data=lognorm_file, label_key="cell_type")
    assert "gpus_per_node" not in launchers.Slurm().parameters(cpu)


def _logs(run_dir: Path) -> str:
    text = ""
    for f in sorted((run_dir / "slurm").glob("*/*.err"))[-1:]:
        text += f.read_text(errors="replace")[-1500:]
    return text


def test_slurm_cancel_of_a_pending_job_is_immediate(cluster, separable_file):
    cpus = subprocess.run(["sinfo", "-h", "-o", "%c"], capture_output=True, text=True).stdout
    blocker = subprocess.run(
        # its log goes nowhere: by default SLURM writes slurm-<id>.out into the working tree
        ["sbatch", "--parsable", "-o", "/dev/null", "-c", cpus.split()[0].rstrip("+")]
        + ["--wrap", "sleep 120"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    try:
        run_dir = _submit(separable_file, "--model", "logreg", "--label-key", "label")
        st = jobs.status(run_dir)
        assert st["state"] == "queued" and st["job_id"], st
        time.sleep(1.0)
        assert jobs.cancel(run_dir) == "cancelled"  # at once: it never started
        assert runs.read_status(run_dir)["state"] == "cancelled"
        assert _sacct_state(st["job_id"], "CANCELLED").startswith("CANCELLED")
        assert not (run_dir / "model.pt").exists()
    finally:
        subprocess.run(["scancel", blocker], timeout=10)


def test_slurm_launcher_without_slurm_is_one_line_and_leaves_nothing(
    workspace, separable_file, tmp_path
):
    """No cluster needed: where SLURM's commands are missing, submit refuses with one line."""
    import os

    env = {**os.environ, "PATH": str(tmp_path / "empty")}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "submit",
            "--launcher",
            "slurm",
            "--data",
            separable_file,
            "--model",
            "logreg",
            "--label-key",
            "label",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert out.returncode == 2, out
    assert out.stderr.startswith("error: ") and "sbatch" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert jobs.list_jobs() == []
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "engine",
            "submit",
            "--data",
            separable_file,
            "--model",
            "logreg",
            "--label-key",
            "label",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "SCWB_LAUNCHER": "cloud"},
        cwd=ROOT,
    )
    assert bad.returncode == 2 and "Unknown launcher 'cloud'" in bad.stderr


def test_train_page_submits_to_slurm_and_runs_page_shows_the_job(cluster, lognorm_adata):
    from streamlit.testing.v1 import AppTest

    from engine import datasets, workspace

    key = datasets.save(lognorm_adata, "syn", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": key})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/train.py").run()
    next(r for r in at.radio if r.label == "Task").set_value("classify").run()
    next(m for m in at.multiselect if m.label.startswith("Models")).set_value(["sk_logreg"]).run()
    next(r for r in at.radio if r.label == "Where runs train").set_value("slurm").run()
    next(b for b in at.button if b.label == "Submit").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    (row,) = jobs.list_jobs()
    assert json.loads((Path(row["path"]) / "run.json").read_text())["launcher"] == "slurm"
    st = jobs.wait(row["path"], timeout=120)
    assert st["state"] == "completed", st
    at.switch_page("pages/runs.py").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert "job_id" in table.columns and str(st["job_id"]) in set(table["job_id"].astype(str))


def test_slurm_preemption_requeues_and_resumes_from_the_last_checkpoint(cluster, lognorm_file):
    run = _submit(
        lognorm_file,
        "--model", "mlp", "--label-key", "cell_type", "--epochs", "300",
        "--batch-size", "8", "--patience", "1000",
    )  # fmt: skip
    t0 = time.time()
    while len(runs.read_metrics_csv(run)) < 3:
        assert time.time() - t0 < 120, runs.read_status(run)
        time.sleep(0.5)
    job_id = runs.read_status(run)["job_id"]
    before = len(runs.read_metrics_csv(run))
    # what SLURM sends before a preemption or time limit: submitit checkpoints and requeues
    subprocess.run(["scancel", "--signal=USR2", str(job_id)], check=True, timeout=15)
    t0 = time.time()
    while runs.read_status(run).get("state") != "queued":  # submitit checkpointed and requeued
        assert time.time() - t0 < 60, runs.read_status(run)
        time.sleep(0.5)
    # SLURM holds a requeued job for a while (Reason=BeginTime): let it start now, once SLURM
    # shows it pending and the node has cleaned up its first run. Asked at once (0.4 s after the
    # requeue), SLURM started it while its credential was still revoked and killed it; asked
    # once too early on a loaded machine, the update did not hold. So: asked while it pends.
    nudged = 0.0
    while not runs.read_status(run).get("resumed_after_epoch"):
        assert time.time() - t0 < 180, runs.read_status(run)
        state = subprocess.run(
            ["squeue", "-h", "-j", str(job_id), "-o", "%T"],
            capture_output=True, text=True, timeout=15,
        ).stdout.strip()  # fmt: skip
        if state == "PENDING" and time.time() - nudged > 5:
            time.sleep(2)
            subprocess.run(
                ["scontrol", "update", f"JobId={job_id}", "StartTime=now"],
                timeout=15,
                capture_output=True,
            )
            nudged = time.time()
        time.sleep(0.5)
    while len(runs.read_metrics_csv(run)) < before + 2:
        assert time.time() - t0 < 240, runs.read_status(run)
        time.sleep(0.5)
    jobs.cancel(run)
    st = jobs.wait(run, timeout=120)
    epochs = runs.read_metrics_csv(run)["epoch"].tolist()
    assert st["state"] == "cancelled" and int(st.get("requeued") or 0) >= 1
    assert epochs == list(range(1, len(epochs) + 1)), "resumed, not restarted at epoch 1"
    assert st["resumed_after_epoch"] >= 3 and (run / "model.pt").exists()
