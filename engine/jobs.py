"""Background jobs: each run in its own OS process (or SLURM job), all state on disk.

``submit`` writes the run folder (state ``queued``) and hands it to its launcher
(``engine.launchers``): ``local`` queues it for this host's dispatcher (queued runs cost no
process), ``slurm`` submits it to the cluster with submitit. Nothing lives in memory, so the
app, the CLI and a notebook all see the same jobs.

Reading never writes: ``list_jobs`` and ``status`` show a run whose process is gone as it would
be recorded (``interrupted``, or ``failed`` with the scheduler's reason) without touching the
folder; ``recover`` (explicit) and ``wait`` persist it.

Slots (local): ``$SCWB_SLOTS`` or one per GPU (one on a CPU-only machine); slot ``i`` runs on
GPU ``i``. scikit-learn baselines use their own light lane (``$SCWB_LIGHT_SLOTS``, default 1).
At most ``$SCWB_MAX_QUEUED`` (default 100) runs wait at once per workspace.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from engine import launchers, runs, workspace
from engine.errors import ScwbError
from engine.launchers import pid_alive  # noqa: F401 - kept for callers of jobs.pid_alive
from engine.spec import RunSpec

START_GRACE_S = launchers.START_GRACE_S


def cancel_grace_s() -> float:
    return float(os.environ.get("SCWB_CANCEL_GRACE_S", "20"))


def __getattr__(name: str) -> Any:  # CANCEL_GRACE_S, read when used (settings at call time)
    if name == "CANCEL_GRACE_S":
        return cancel_grace_s()
    raise AttributeError(name)


_GPU_COUNT: dict[str | None, int] = {}


def gpu_count() -> int:
    """GPUs visible to workers, without importing torch: ``CUDA_VISIBLE_DEVICES`` when set,
    else ``nvidia-smi -L`` asked once per process (cached, never polled)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return len([v for v in visible.split(",") if v.strip() and v.strip() != "-1"])
    if None not in _GPU_COUNT:
        n = 0
        if shutil.which("nvidia-smi"):
            try:
                out = subprocess.run(
                    ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10
                )
                n = sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))
            except (OSError, subprocess.SubprocessError):
                n = 0
        _GPU_COUNT[None] = n
    return _GPU_COUNT[None]


def n_slots() -> int:
    env = os.environ.get("SCWB_SLOTS")
    if env:
        return max(1, int(env))
    return max(1, gpu_count())


def n_light_slots() -> int:
    return max(1, int(os.environ.get("SCWB_LIGHT_SLOTS", "1")))


def max_queued() -> int:
    return max(1, int(os.environ.get("SCWB_MAX_QUEUED", "100")))


def resolve_run(run: str | Path, root: Path | None = None) -> Path:
    """A run id (inside the workspace) or a run folder path."""
    p = Path(run)
    if p.is_dir() and (p / "run.json").exists():
        return p
    candidate = workspace.inside(root or workspace.runs_dir(), str(run))
    if not candidate.is_dir():
        raise ScwbError(f"No run {run!r} in {root or workspace.runs_dir()}.")
    return candidate


# ----------------------------------------------------------------------------- the queue
# A queued run has a marker file ``RUNS/.queue/<host or slurm>/<submitted_ns>-<lane>-<devices>-<id>``:
# the dispatcher reads this small folder, never the whole workspace.
def _marker_name(ns: int, lane: str, devices: int, run_id: str) -> str:
    return f"{ns:020d}-{lane}-{devices}-{run_id}"


def marker_run(marker: Path) -> str:
    return marker.name.split("-", 3)[3]


def marker_lane(marker: Path) -> str:
    return marker.name.split("-", 3)[1]


def marker_devices(marker: Path) -> int:
    return int(marker.name.split("-", 3)[2])


def queue_items(qdir: Path) -> list[Path]:
    try:
        return sorted(p for p in Path(qdir).iterdir() if not p.name.startswith("."))
    except OSError:
        return []


def unqueue(run_dir: Path) -> None:
    """Remove the queue marker(s) of ``run_dir`` (it started, or ended while queued)."""
    base = Path(run_dir).parent / ".queue"
    with contextlib.suppress(OSError):
        for q in base.iterdir():
            for m in q.glob(f"*-{Path(run_dir).name}"):
                with contextlib.suppress(OSError):
                    m.unlink()


def queued_marker(run_dir: Path) -> Path | None:
    """The queue marker of ``run_dir``, if it is still in a queue."""
    base = Path(run_dir).parent / ".queue"
    with contextlib.suppress(OSError):
        for q in base.iterdir():
            for m in q.glob(f"*-{Path(run_dir).name}"):
                return m
    return None


def resume_queue(root: Path | None = None) -> bool:
    """Start this host's dispatcher when runs wait in its queue and none serves it (after an
    app or machine restart). Returns whether one was started."""
    root = Path(root or workspace.runs_dir())
    if queue_items(launchers.queue_dir(root, launchers.host())) and not dispatcher_alive(root):
        ensure_dispatcher(root)
        return True
    return False


def _queued_count(root: Path) -> int:
    n = 0
    base = root / ".queue"
    with contextlib.suppress(OSError):
        for q in base.iterdir():
            for m in queue_items(q):
                st = status(root / marker_run(m))
                if st.get("state") == "queued":
                    n += 1
    return n


def dispatcher_alive(root: Path, host: str | None = None) -> bool:
    info = runs.read_json(launchers.queue_dir(root, host or launchers.host()) / ".dispatcher.json")
    return isinstance(info, dict) and pid_alive(info.get("pid"), "--dispatch")


def ensure_dispatcher(root: Path | None = None) -> None:
    """Start this host's dispatcher for ``root`` unless one runs (it exits by itself when the
    queue is empty; a second one exits at once, so racing starts are harmless)."""
    root = Path(root or workspace.runs_dir())
    if dispatcher_alive(root):
        return  # it sees the new marker in its loop, or in its last look before leaving
    qdir = launchers.queue_dir(root, launchers.host())
    try:
        log = open(qdir / ".dispatcher.log", "ab")  # noqa: SIM115 - handed to the child
    except OSError:
        log = subprocess.DEVNULL
    try:
        subprocess.Popen(
            [sys.executable, "-m", "engine.worker", "--dispatch", str(root)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env=launchers.child_env(),
            close_fds=True,
        )
    finally:
        if log is not subprocess.DEVNULL:
            log.close()


def clean_partial(root: Path, older_than_s: float = 60.0) -> None:
    """Remove submits that never finished writing (``.*.partial`` folders)."""
    with contextlib.suppress(OSError):
        for p in Path(root).iterdir():
            if p.name.startswith(".") and p.name.endswith(".partial"):
                age = launchers.file_age_s(p)
                if age is not None and age > older_than_s:
                    shutil.rmtree(p, ignore_errors=True)


# ----------------------------------------------------------------------------- submit
def _disk_full(exc: OSError) -> ScwbError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ScwbError(
            "The disk is full: the run could not be queued; free space where SCWB_HOME lives."
        )
    return ScwbError(f"The run could not be queued: {exc.strerror or exc}.")


def submit(spec: RunSpec, root: Path | None = None) -> Path:
    """Queue ``spec`` and return its run folder at once."""
    root = Path(root or workspace.runs_dir())
    root.mkdir(parents=True, exist_ok=True)
    from engine import models

    name = launchers.get(spec.launcher).name
    launcher = launchers.get(name)
    if name == "local" and spec.devices > n_slots():
        raise ScwbError(
            f"The run asks for {spec.devices} devices and this machine has {n_slots()} slot(s) (one per GPU; SCWB_SLOTS sets it)."
        )
    if name == "slurm" and not launchers.slurm_available():
        raise ScwbError(
            "The slurm launcher needs SLURM's commands (sbatch, sinfo) on this host; use --launcher local."
        )
    if _queued_count(root) >= max_queued():
        raise ScwbError(
            f"{max_queued()} runs are already waiting in this workspace (SCWB_MAX_QUEUED): "
            "wait for some to start, or cancel some, before submitting more."
        )
    lane = "light" if models.get(spec.model).kind == "sklearn" else "heavy"
    run_id = runs.new_run_id(spec.model)
    run_dir = root / run_id
    partial = root / f".{run_id}.partial"  # never listed; renamed once complete
    ns = time.time_ns()
    spec.out = str(run_dir)
    try:
        partial.mkdir()
        runs.write_json(
            partial / "run.json",
            {**spec.to_dict(), "created": runs.now(), "submitted_ns": ns},
        )
        runs.write_json(
            partial / "status.json",
            {
                "state": "queued",
                "submitted": runs.now(),
                "updated": runs.now(),
                "epoch": 0,
                "max_epochs": spec.epochs,
                "launcher": name,
                "host": launchers.host() if name == "local" else None,
                "submit_host": launchers.host(),
                "job_id": None,
                "lane": lane,
            },
        )
        os.replace(partial, run_dir)
        qdir = launchers.queue_dir(root, launchers.host() if name == "local" else "slurm")
        qdir.mkdir(parents=True, exist_ok=True)
        (qdir / _marker_name(ns, lane, spec.devices, run_id)).touch()
    except OSError as exc:
        shutil.rmtree(partial, ignore_errors=True)
        if run_dir.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            unqueue(run_dir)
        raise _disk_full(exc) from exc
    try:
        launcher.start(run_dir, spec)
    except ScwbError:
        unqueue(run_dir)
        shutil.rmtree(run_dir, ignore_errors=True)
        raise
    return run_dir


# ----------------------------------------------------------------------------- reading
def effective_status(run_dir: Path, st: dict[str, Any] | None = None) -> dict[str, Any]:
    """``status.json`` as it stands, or, for an active run whose process is gone, as it would be
    recorded (``computed: True``). Never writes."""
    run_dir = Path(run_dir)
    st = runs.read_status(run_dir) if st is None else st
    if st.get("state") not in runs.ACTIVE or st.get("corrupt"):
        return st
    try:
        verdict = launchers.get(st.get("launcher")).alive(run_dir, st)
    except ScwbError:
        verdict = None
    if verdict is None:
        return st
    again = runs.read_status(run_dir)  # it may have ended meanwhile
    if again.get("state") not in runs.ACTIVE:
        return again
    return {**again, **verdict, "computed": True}


def status(run: str | Path, root: Path | None = None) -> dict[str, Any]:
    return effective_status(resolve_run(run, root))


def list_jobs(root: Path | None = None) -> list[dict[str, Any]]:
    """Every run, newest first; a run whose process is gone shows as it will be recorded.
    Cached (a finished run's row is read once per process) and write-free."""
    root = Path(root or workspace.runs_dir())
    rows = runs.list_runs(root)
    active = [r for r in rows if r["state"] in runs.ACTIVE]
    jobs_ids = [r.get("job_id") for r in active if r.get("launcher") == "slurm" and r.get("job_id")]
    if jobs_ids:
        launchers.scheduler_states(jobs_ids)  # one sacct call for all of them
    for r in active:
        st = effective_status(Path(r["path"]))
        if st.get("state") != r["state"] or st.get("computed"):
            r.update(
                {
                    k: st.get(k)
                    for k in ("state", "error", "epoch", "job_id", "host")
                    if k in st or k in ("state", "error")
                }
            )
    return rows


def recover(root: Path | None = None) -> list[str]:
    """Persist the end of active runs whose process is gone (``interrupted``, or ``failed``
    with the scheduler's reason) and restart this host's queue if nobody serves it; return the
    ids marked. An explicit act, never part of listing."""
    root = Path(root or workspace.runs_dir())
    resume_queue(root)
    marked = []
    for r in runs.list_runs(root):
        if r["state"] not in runs.ACTIVE:
            continue
        if _persist_computed(Path(r["path"])):
            marked.append(r["id"])
    return marked


def _persist_computed(run_dir: Path) -> bool:
    st = effective_status(run_dir)
    if not st.get("computed"):
        return False
    fields = {k: st.get(k) for k in ("state", "error") if k in st}
    runs.record_end(run_dir, **fields)
    unqueue(run_dir)
    return True


# ----------------------------------------------------------------------------- actions
def cancel(run: str | Path, root: Path | None = None) -> str:
    """Ask a run to stop: the training loop stops at its next step and keeps its best weights;
    after ``SCWB_CANCEL_GRACE_S`` seconds it is stopped by force (its supervisor kills it, or
    scancel for a SLURM job)."""
    run_dir = resolve_run(run, root)
    st = effective_status(run_dir)
    if st.get("state") not in runs.ACTIVE:
        raise ScwbError(f"Run {run_dir.name} is already {st.get('state')}.")
    try:
        runs.atomic_write_text(run_dir / "cancel", runs.now())
    except OSError as exc:
        raise ScwbError(f"Could not ask the run to stop: {exc.strerror or exc}.") from exc
    launchers.get(st.get("launcher")).cancel(run_dir, st)
    return "cancelling"


def delete(run: str | Path, root: Path | None = None) -> None:
    run_dir = resolve_run(run, root)
    if effective_status(run_dir).get("state") in runs.ACTIVE:
        raise ScwbError(f"Run {run_dir.name} is still active: cancel it first.")
    unqueue(run_dir)
    shutil.rmtree(run_dir)


def wait(
    run: str | Path, timeout: float | None = None, root: Path | None = None, poll: float = 0.2
) -> dict[str, Any]:
    """Block until the run leaves ``queued``/``running`` (or ``timeout`` seconds pass); an end
    computed from a vanished process is persisted."""
    run_dir = resolve_run(run, root)
    t0 = time.time()
    while True:
        st = effective_status(run_dir)
        if st.get("state") not in runs.ACTIVE:
            if st.get("computed"):
                with contextlib.suppress(OSError):
                    _persist_computed(run_dir)
            return st
        if timeout is not None and time.time() - t0 > timeout:
            return st
        time.sleep(poll)
