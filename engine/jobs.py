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
import time
from pathlib import Path
from typing import Any

from engine import launchers, queue, runs, settings, workspace
from engine.errors import ScwbError
from engine.launchers import pid_alive  # noqa: F401 - kept for callers of procs.pid_alive
from engine.queue import (  # noqa: F401 - gpu_count, n_slots: part of the jobs API
    _marker_name,
    clean_partial,
    dispatcher_alive,
    ensure_dispatcher,
    gpu_count,
    marker_run,
    n_light_slots,
    n_slots,
    queue_items,
    unqueue,
)
from engine.spec import RunSpec

START_GRACE_S = launchers.START_GRACE_S


def cancel_grace_s() -> float:
    return settings.get().cancel_grace_s


def __getattr__(name: str) -> Any:  # CANCEL_GRACE_S, read when used (settings at call time)
    if name == "CANCEL_GRACE_S":
        return cancel_grace_s()
    raise AttributeError(name)


def max_queued() -> int:
    return settings.get().max_queued


def resolve_run(run: str | Path, root: Path | None = None) -> Path:
    """A run id (the exact name of a folder in the workspace's runs) or a run folder path.
    The id is never cleaned up nor followed through a link: 'my run' was read as 'my_run', a
    link as the run it points to, and Delete removed that other run (a hostile-input pass)."""
    base = Path(root or workspace.runs_dir())
    name = str(run)
    p = Path(run)
    if len(p.parts) > 1 or p.is_absolute():  # a path, typed on the command line
        if p.is_dir() and (p / "run.json").exists():
            return p
        raise ScwbError(f"No run folder at {name!r}.")
    if name in ("", ".", "..") or "\x00" in name:
        raise ScwbError(f"{name!r} is not a run id.")
    candidate = base / name
    if candidate.is_symlink():
        raise ScwbError(f"{name!r} in {base} is a link, not a run folder: act on the run itself.")
    if not candidate.is_dir():
        if p.is_dir() and (p / "run.json").exists() and not p.is_symlink():
            return p  # a run folder in the current folder, named without a path
        raise ScwbError(f"No run {name!r} in {base}.")
    return candidate


# ----------------------------------------------------------------------------- the queue
# A queued run has a marker file ``RUNS/.queue/<host or slurm>/<submitted_ns>-<lane>-<devices>-<id>``:
# the dispatcher reads this small folder, never the whole workspace.
def resume_queue(root: Path | None = None) -> bool:
    """Start this host's dispatcher when runs wait in its queue and none serves it (after an
    app or machine restart). Returns whether one was started."""
    root = Path(root or workspace.runs_dir())
    if queue_items(queue.queue_dir(root, launchers.host())) and not dispatcher_alive(root):
        ensure_dispatcher(root)
        return True
    return False


def _queued_count(root: Path) -> int:
    """Runs of this workspace still waiting (all hosts and launchers), from the queue markers."""
    waiting = []
    with contextlib.suppress(OSError):
        for q in (root / ".queue").iterdir():
            for m in queue_items(q):
                run_dir = root / marker_run(m)
                st = runs.read_status(run_dir)
                if st.get("state") == "queued":
                    waiting.append((run_dir, st))
    ids = [st.get("job_id") for _, st in waiting if st.get("launcher") == "slurm"]
    if any(ids):
        launchers.scheduler_states([i for i in ids if i])  # one scheduler call for all
    return sum(effective_status(d, st).get("state") == "queued" for d, st in waiting)


# ----------------------------------------------------------------------------- submit
def _disk_full(exc: OSError) -> ScwbError:
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return ScwbError(
            "The disk is full: the run could not be queued; free space where SCWB_HOME lives."
        )
    return ScwbError(f"The run could not be queued: {exc.strerror or exc}.")


def check_room(n: int, root: Path | None = None) -> None:
    """Refuse ``n`` runs submitted together (seeds, models) unless all of them can wait: the
    limit checked run by run queued part of a group and then refused the rest."""
    root = Path(root or workspace.runs_dir())
    waiting = _queued_count(root) if root.exists() else 0
    if n > 1 and waiting + n > max_queued():
        raise ScwbError(
            f"{n} runs would wait beside the {waiting} already waiting, more than "
            f"{max_queued()} (SCWB_MAX_QUEUED): submit fewer, or wait for some to start "
            "(nothing was submitted)."
        )


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
        qdir = queue.queue_dir(root, launchers.host() if name == "local" else "slurm")
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
    # a queued run that had not started ends at once; a running one stops at its next step
    return "cancelled" if runs.read_status(run_dir).get("state") == "cancelled" else "cancelling"


def delete(run: str | Path, root: Path | None = None) -> None:
    """Remove a finished run's folder; never one that holds the workspace's runs or another
    run (a run made with ``--out`` at the runs folder took every run with it)."""
    run_dir = resolve_run(run, root)
    if Path(root or workspace.runs_dir()).resolve().is_relative_to(run_dir.resolve()):
        raise ScwbError(f"{run_dir} holds the workspace's runs: it is not deleted as one run.")
    inner = next((p.parent for p in run_dir.rglob("run.json") if p.parent != run_dir), None)
    if inner is not None:
        raise ScwbError(
            f"{run_dir} holds another run ({inner}): delete that one first, or remove the "
            "folder by hand."
        )
    if effective_status(run_dir).get("state") in runs.ACTIVE:
        raise ScwbError(f"Run {run_dir.name} is still active: cancel it first.")
    unqueue(run_dir)
    # renamed out of the listing first (one atomic step), then removed: of two deletes at
    # once, the second found files vanishing under it ('unexpected FileNotFoundError')
    trash = run_dir.with_name(f".deleting-{run_dir.name}-{os.getpid()}-{time.monotonic_ns()}")
    try:
        os.rename(run_dir, trash)
    except FileNotFoundError:
        raise ScwbError(f"Run {run_dir.name} was deleted meanwhile.") from None
    try:
        shutil.rmtree(trash)
    except OSError as exc:
        raise ScwbError(
            f"Run {run_dir.name} is out of the list, but some of its files could not be "
            f"removed ({exc.strerror or exc}): they are in {trash}."
        ) from None


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
