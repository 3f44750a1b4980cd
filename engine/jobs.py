"""Background jobs: each run in its own OS process, a queue with device slots, all state on disk.

``submit`` writes the run folder (state ``queued``) and starts a detached supervisor process
(``python -m engine.worker RUN_DIR``) that waits for its turn and a free slot, then starts the
training process and watches it: a worker that dies ends as ``failed`` with the reason; one whose
supervisor vanished (app or machine restart) is marked ``interrupted`` by ``recover``. Nothing
lives in memory, so the app, the CLI and a notebook all see the same jobs.

Slots: ``$SCWB_SLOTS`` or one per GPU (one on a CPU-only machine); slot ``i`` runs on GPU ``i``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine import runs, workspace
from engine.errors import ScwbError
from engine.spec import RunSpec

CANCEL_GRACE_S = float(os.environ.get("SCWB_CANCEL_GRACE_S", "20"))
START_GRACE_S = 30.0


def gpu_count() -> int:
    """GPUs visible to workers, without importing torch in the app process."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10)
            return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
        except (OSError, subprocess.SubprocessError):
            return 0
    return 0


def n_slots() -> int:
    env = os.environ.get("SCWB_SLOTS")
    if env:
        return max(1, int(env))
    return max(1, gpu_count())


def resolve_run(run: str | Path, root: Path | None = None) -> Path:
    """A run id (inside the workspace) or a run folder path."""
    p = Path(run)
    if p.is_dir() and (p / "run.json").exists():
        return p
    candidate = workspace.inside(root or workspace.runs_dir(), str(run))
    if not candidate.is_dir():
        raise ScwbError(f"No run {run!r} in {root or workspace.runs_dir()}.")
    return candidate


def submit(spec: RunSpec, root: Path | None = None) -> Path:
    """Queue ``spec`` and return its run folder at once."""
    root = Path(root or workspace.runs_dir())
    root.mkdir(parents=True, exist_ok=True)
    if spec.devices > n_slots():
        raise ScwbError(
            f"The run asks for {spec.devices} devices and this machine has {n_slots()} slot(s) (one per GPU; SCWB_SLOTS sets it)."
        )
    run_dir = root / runs.new_run_id(spec.model)
    run_dir.mkdir()
    spec.out = str(run_dir)
    runs.write_json(
        run_dir / "run.json",
        {**spec.to_dict(), "created": runs.now(), "submitted_ns": time.time_ns()},
    )
    runs.write_json(
        run_dir / "status.json",
        {
            "state": "queued",
            "submitted": runs.now(),
            "updated": runs.now(),
            "epoch": 0,
            "max_epochs": spec.epochs,
        },
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
        "PYTHONUNBUFFERED": "1",
    }
    with open(run_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "engine.worker", str(run_dir)],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # detached: survives the app and its browser tabs
            env=env,
            close_fds=True,
        )
    runs.update_status(run_dir, supervisor_pid=proc.pid)
    return run_dir


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether ``pid`` runs (and, where /proc exists, is ours: its command line names ``marker``)."""
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    cmdline = Path(f"/proc/{pid}/cmdline")
    if marker and cmdline.exists():
        try:
            text = cmdline.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = Path(f"/proc/{pid}/stat").read_text().split()
            if len(stat) > 2 and stat[2] == "Z":  # a zombie has finished
                return False
            return marker in text
        except OSError:
            return False
    return True


def recover(root: Path | None = None) -> list[str]:
    """Mark active runs whose supervisor is gone as ``interrupted``; return their ids."""
    root = Path(root or workspace.runs_dir())
    marked = []
    for p in root.iterdir() if root.exists() else []:
        if not p.is_dir():
            continue
        st = runs.read_status(p)
        if st.get("state") not in runs.ACTIVE or st.get("corrupt"):
            continue
        pid = st.get("supervisor_pid")
        if pid is None and _age_s(p) < START_GRACE_S:
            continue
        if not pid_alive(pid, p.name):
            runs.update_status(
                p,
                state="interrupted",
                finished=runs.now(),
                error="The worker process ended without finishing (app or machine restart?); submit the run again.",
            )
            marked.append(p.name)
    return marked


def _age_s(run_dir: Path) -> float:
    try:
        return time.time() - (run_dir / "status.json").stat().st_mtime
    except OSError:
        return 0.0


def list_jobs(root: Path | None = None) -> list[dict[str, Any]]:
    """Every run, newest first, after marking orphans ``interrupted``."""
    root = Path(root or workspace.runs_dir())
    recover(root)
    return runs.list_runs(root)


def status(run: str | Path, root: Path | None = None) -> dict[str, Any]:
    return runs.read_status(resolve_run(run, root))


def cancel(run: str | Path, root: Path | None = None) -> str:
    """Ask a run to stop: the training loop stops at its next step and keeps its best weights;
    the supervisor kills it if it has not stopped after ``SCWB_CANCEL_GRACE_S`` seconds."""
    run_dir = resolve_run(run, root)
    st = runs.read_status(run_dir)
    if st.get("state") not in runs.ACTIVE:
        raise ScwbError(f"Run {run_dir.name} is already {st.get('state')}.")
    runs.atomic_write_text(run_dir / "cancel", runs.now())
    if not pid_alive(st.get("supervisor_pid"), run_dir.name):
        runs.update_status(run_dir, state="cancelled", finished=runs.now())
    return "cancelling"


def delete(run: str | Path, root: Path | None = None) -> None:
    run_dir = resolve_run(run, root)
    if runs.read_status(run_dir).get("state") in runs.ACTIVE:
        raise ScwbError(f"Run {run_dir.name} is still active: cancel it first.")
    shutil.rmtree(run_dir)


def wait(
    run: str | Path, timeout: float | None = None, root: Path | None = None, poll: float = 0.2
) -> dict[str, Any]:
    """Block until the run leaves ``queued``/``running`` (or ``timeout`` seconds pass)."""
    run_dir = resolve_run(run, root)
    t0 = time.time()
    while True:
        st = runs.read_status(run_dir)
        if st.get("state") not in runs.ACTIVE:
            return st
        if not pid_alive(st.get("supervisor_pid"), run_dir.name) and _age_s(run_dir) > 2:
            recover(run_dir.parent)
            return runs.read_status(run_dir)
        if timeout is not None and time.time() - t0 > timeout:
            return st
        time.sleep(poll)
