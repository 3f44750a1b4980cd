"""Where a run's process lives: the launcher seam behind ``engine.jobs``.

Each launcher has ``start(run_dir, spec)`` (called once the run folder is written, state
``queued``), ``cancel(run_dir, status)`` (after the ``cancel`` file is written) and
``alive(run_dir, status)``: ``None`` while the run's process lives (or may still start), else
the fields that describe its end as a reader would record it (``state``, ``error``). ``alive``
never writes.

- ``local``: this machine. Queued runs cost no process: one dispatcher per host and workspace
  (``python -m engine.worker --dispatch RUNS``, flock-guarded) starts them in order when device
  slots free up (one slot per GPU, flock per slot, per host; scikit-learn baselines in their own
  light lane) and exits when the queue is empty. Each started run has a supervisor process.
- ``slurm``: the same entry point (training of one run folder) submitted with ``submitit`` to a
  SLURM cluster; the scheduler places GPUs (no slot locks); liveness from ``sacct``/``squeue``,
  or the run's heartbeat where the scheduler cannot be asked from this host.

Settings are environment variables read at call time: ``SCWB_LAUNCHER`` (default ``local``),
``SCWB_SLURM_PARTITION``, ``SCWB_SLURM_TIME`` (minutes), ``SCWB_SLURM_CPUS`` (per task),
``SCWB_SLURM_MEM`` (e.g. ``8G``), ``SCWB_SLURM_GPUS_PER_NODE``, ``SCWB_SLURM_NODES``,
``SCWB_SLURM_ACCOUNT``, ``SCWB_SLURM_QOS``, ``SCWB_SLURM_CONSTRAINT``, ``SCWB_SLURM_SETUP``
(shell lines run before the job, ';'-separated), ``SCWB_HEARTBEAT_S``.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from engine import queue, runs, settings
from engine.errors import ScwbError
from engine.procs import Heartbeat, child_env, file_age_s, pid_alive, repo_root, scancel, touch  # noqa: F401

NAMES = ("local", "slurm")
START_GRACE_S = 30.0


# ----------------------------------------------------------------------------- settings
def host() -> str:
    return settings.get().host


def default_name() -> str:
    name = settings.get().launcher
    if name not in NAMES:
        raise ScwbError(f"SCWB_LAUNCHER={name!r} is not a launcher; use one of {', '.join(NAMES)}.")
    return name


def heartbeat_s() -> float:
    return settings.get().heartbeat_s


def heartbeat_timeout_s() -> float:
    """How old a heartbeat may be before its run counts as gone (6 beats, at least 30 s)."""
    return max(30.0, 6 * heartbeat_s())


def slurm_available() -> bool:
    """Whether this host can submit to SLURM (its client commands are installed)."""
    return shutil.which("sbatch") is not None and shutil.which("sinfo") is not None


# ----------------------------------------------------------------------------- helpers
def _submitted_age_s(run_dir: Path, st: dict[str, Any]) -> float:
    ns = (runs.read_json(run_dir / "run.json", {}) or {}).get("submitted_ns")
    if isinstance(ns, int | float) and not isinstance(ns, bool) and 0 < ns < time.time() * 2e9:
        return time.time() - ns / 1e9  # a hand-edited "yesterday" or 1e30 is not a time
    return file_age_s(run_dir / "status.json") or 0.0


_GONE = (
    "The worker process ended without finishing (app or machine restart?); submit the run again."
)


# ----------------------------------------------------------------------------- local
class Local:
    name = "local"

    def start(self, run_dir: Path, spec: Any) -> None:

        queue.ensure_dispatcher(run_dir.parent)

    def cancel(self, run_dir: Path, st: dict[str, Any]) -> None:
        """A queued run ends at once (the dispatcher skips it); a running one is stopped by its
        training loop, or by its supervisor after the grace period."""
        if st.get("state") == "queued" and not pid_alive(st.get("supervisor_pid"), run_dir.name):
            runs.record_end(run_dir, state="cancelled")

            queue.unqueue(run_dir)

    def alive(self, run_dir: Path, st: dict[str, Any]) -> dict[str, Any] | None:
        pid = st.get("supervisor_pid")
        if st.get("state") == "queued" and not pid:
            # waiting costs no process: it waits as long as its queue marker does (a dispatcher
            # of its host starts it; after a restart, the next submit or app start does)

            if queue.queued_marker(run_dir) or _submitted_age_s(run_dir, st) < START_GRACE_S:
                return None
            return {"state": "interrupted", "error": _GONE}
        if (st.get("host") or host()) == host():
            if pid:
                return (
                    None
                    if pid_alive(pid, run_dir.name)
                    else {"state": "interrupted", "error": _GONE}
                )
            # no supervisor (a run started by ``engine train`` into the workspace): by its writes
            age = file_age_s(run_dir / "status.json")
            if age is not None and age < START_GRACE_S:
                return None
            return {"state": "interrupted", "error": _GONE}
        # another host: a pid means nothing here; its supervisor's heartbeat decides
        beat = file_age_s(run_dir / "heartbeat")
        if beat is None and _submitted_age_s(run_dir, st) < heartbeat_timeout_s():
            return None
        if beat is not None and beat < heartbeat_timeout_s():
            return None
        return {
            "state": "interrupted",
            "error": f"No heartbeat from host {st.get('host')} for over {heartbeat_timeout_s():.0f} s: "
            "its worker ended without finishing (machine restart?); submit the run again.",
        }


# ----------------------------------------------------------------------------- slurm
_ALIVE_STATES = {
    "PENDING",
    "RUNNING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "CONFIGURING",
    "COMPLETING",
    "SIGNALING",
    "STAGE_OUT",
    "STOPPED",
    "RESV_DEL_HOLD",
    "SPECIAL_EXIT",
}
_SCHED_CACHE: dict[str, tuple[float, dict[str, str] | None]] = {}
_SCHED_LOCK = threading.Lock()
SCHED_TTL_S = 2.0


def _ask(cmd: list[str]) -> list[list[str]] | None:
    """The ``|``-separated rows a SLURM client command prints, or None when it cannot answer."""
    if not shutil.which(cmd[0]):
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return [line.split("|") for line in out.stdout.splitlines()]


def _sacct(ids: list[str]) -> dict[str, dict[str, str]] | None:
    """The scheduler's record of each job (``State``, ``Reason``, ``ExitCode``), or None when
    this host cannot ask (no sacct, no accounting)."""
    rows = _ask(
        ["sacct", "-n", "-P", "-X", "-j", ",".join(ids), "-o", "JobID,State,Reason,ExitCode"]
    )
    if rows is None:
        return None
    return {
        p[0].split("_")[0].split(".")[0]: {"state": p[1], "reason": p[2], "exit_code": p[3]}
        for p in rows
        if len(p) >= 4
    }


def _squeue(ids: list[str]) -> dict[str, dict[str, str]] | None:
    rows = _ask(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r"])
    if rows is None:
        return None
    return {
        p[0]: {"state": p[1], "reason": p[2], "exit_code": ""}
        for p in rows
        if len(p) >= 3 and p[0] in ids
    }


def scheduler_states(ids: list[str], fresh: bool = False) -> dict[str, dict[str, str] | None]:
    """Job id -> the scheduler's record (None when unknown or the scheduler cannot be asked),
    one ``sacct`` call for all ids not asked in the last ``SCHED_TTL_S`` seconds."""
    ids = [str(i) for i in ids if i]
    now = time.time()
    with _SCHED_LOCK:
        todo = [
            i
            for i in ids
            if fresh or i not in _SCHED_CACHE or now - _SCHED_CACHE[i][0] > SCHED_TTL_S
        ]
    if todo:
        found = _sacct(todo)
        missing = [i for i in todo if not found or i not in found]
        if missing:  # accounting lags, or is absent: ask the controller
            q = _squeue(missing)
            if q:
                found = {**(found or {}), **q}
        with _SCHED_LOCK:
            for i in todo:
                _SCHED_CACHE[i] = (now, (found or {}).get(i))
    with _SCHED_LOCK:
        return {i: _SCHED_CACHE.get(i, (0, None))[1] for i in ids}


def describe_end(job_id: str, rec: dict[str, str]) -> str:
    state = rec.get("state", "?")
    bits = [f"the SLURM job {job_id} ended {state}"]
    if rec.get("reason") and rec["reason"] not in ("None", ""):
        bits.append(f"reason {rec['reason']}")
    if rec.get("exit_code") and rec["exit_code"] not in ("0:0", ""):
        bits.append(f"exit code {rec['exit_code']}")
    text = ", ".join(bits)
    return text[0].upper() + text[1:] + " before the run recorded its end."


class Slurm:
    name = "slurm"

    def parameters(self, spec: Any) -> dict[str, Any]:
        """submitit ``slurm_*`` parameters for one run, from the settings read now."""
        from engine import models

        slurm = settings.get().slurm

        def env(name: str, default: str = "") -> str:
            return slurm.get(name.removeprefix("SCWB_SLURM_"), default)

        light = models.get(spec.model).kind == "sklearn"
        wants_gpu = not light and spec.device != "cpu"
        gpus = int(env("SCWB_SLURM_GPUS_PER_NODE", "0") or 0) if wants_gpu else 0
        if gpus and spec.device in ("cuda", "gpu"):
            gpus = max(gpus, spec.devices)
        elif wants_gpu and spec.device in ("cuda", "gpu"):
            gpus = spec.devices
        p: dict[str, Any] = {
            "slurm_job_name": f"scwb-{spec.model}",
            "timeout_min": int(float(env("SCWB_SLURM_TIME", "60"))),
            "slurm_cpus_per_task": int(env("SCWB_SLURM_CPUS", "1")),
            "nodes": int(env("SCWB_SLURM_NODES", "1")),
            # one task per device: Lightning takes its ranks from SLURM's environment
            "tasks_per_node": max(1, spec.devices),
            "slurm_setup": [
                f"export PYTHONPATH={repo_root()}${{PYTHONPATH:+:$PYTHONPATH}}",
                "export PYTHONUNBUFFERED=1",
                *[s for s in env("SCWB_SLURM_SETUP", "").split(";") if s.strip()],
            ],
        }
        if gpus:
            p["gpus_per_node"] = gpus
        for key, var in (
            ("slurm_partition", "SCWB_SLURM_PARTITION"),
            ("slurm_mem", "SCWB_SLURM_MEM"),
            ("slurm_account", "SCWB_SLURM_ACCOUNT"),
            ("slurm_qos", "SCWB_SLURM_QOS"),
            ("slurm_constraint", "SCWB_SLURM_CONSTRAINT"),
        ):
            if env(var):
                p[key] = env(var)
        return p

    def start(self, run_dir: Path, spec: Any) -> None:
        if not slurm_available():
            raise ScwbError(
                "The slurm launcher needs SLURM's commands (sbatch, sinfo) on this host; use --launcher local."
            )
        try:
            import submitit

            from engine.launchers_slurm import SlurmRun
        except ImportError as exc:
            raise ScwbError(
                f"The slurm launcher needs submitit (pip install -r requirements.txt): {exc}"
            ) from exc
        try:
            # a time limit ends the run (failed, TIMEOUT); preemption requeues it
            executor = submitit.AutoExecutor(
                folder=str(run_dir / "slurm" / "%j"), cluster="slurm", slurm_max_num_timeout=0
            )
            executor.update_parameters(**self.parameters(spec))
            job = executor.submit(SlurmRun(), str(run_dir))
        except Exception as exc:  # sbatch refused, or a bad setting: one line
            lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
            msg = next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "")
            raise ScwbError(f"SLURM refused the job: {msg or type(exc).__name__}") from exc
        runs.update_status(run_dir, job_id=str(job.job_id))

    def cancel(self, run_dir: Path, st: dict[str, Any]) -> None:
        """Pending: scancel now, the run ends cancelled. Running: the training stops at its next
        step and keeps its best weights; a detached reaper scancels the job once the run has
        ended, or after the grace period."""
        job = st.get("job_id")
        rec = scheduler_states([job], fresh=True).get(job) if job else None
        pending = st.get("state") == "queued" and (rec is None or rec["state"] == "PENDING")
        if pending:
            scancel(job)
            runs.record_end(run_dir, state="cancelled")

            queue.unqueue(run_dir)
            return
        subprocess.Popen(
            [sys.executable, "-m", "engine.worker", "--reap", str(run_dir)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=child_env(),
            close_fds=True,
        )

    def alive(self, run_dir: Path, st: dict[str, Any]) -> dict[str, Any] | None:
        job = st.get("job_id")
        if not job:  # still being submitted
            return (
                None
                if _submitted_age_s(run_dir, st) < START_GRACE_S
                else {
                    "state": "failed",
                    "error": "The run was never handed to SLURM (the submitting process ended first).",
                }
            )
        rec = scheduler_states([job]).get(job)
        if rec is None:
            # the scheduler cannot be asked from here (or forgot the job): the heartbeat decides
            if st.get("state") == "queued":
                return None
            beat = file_age_s(run_dir / "heartbeat")
            if beat is not None and beat < heartbeat_timeout_s():
                return None
            if beat is None and _submitted_age_s(run_dir, st) < heartbeat_timeout_s():
                return None
            return {
                "state": "interrupted",
                "error": f"SLURM job {job}: no heartbeat for over {heartbeat_timeout_s():.0f} s and "
                "the scheduler cannot be asked from this host.",
            }
        state = rec["state"].split()[0]
        if state in _ALIVE_STATES:
            return None
        if state == "CANCELLED" and (run_dir / "cancel").exists():
            return {"state": "cancelled", "error": None}
        return {"state": "failed", "error": describe_end(job, rec), "scheduler": rec}


LAUNCHERS = {"local": Local(), "slurm": Slurm()}


def get(name: str | None) -> Local | Slurm:
    name = (name or "local").lower()
    if name not in LAUNCHERS:
        raise ScwbError(f"Unknown launcher {name!r}; use one of {', '.join(NAMES)}.")
    return LAUNCHERS[name]
