"""The process behind one job: ``python -m engine.worker RUN_DIR``.

As supervisor it waits its turn in the queue and for a device slot (an ``flock`` that the OS
releases if the process dies), starts the training process (``--train``) on that slot's GPU, and
watches it: a cancel that is not honoured in time is enforced, and a training process that dies
leaves ``failed`` with the reason and the last log lines. It never imports torch itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from engine import jobs, runs

POLL_S = 0.25


def _queue_position(run_dir: Path) -> int:
    """How many live queued runs were submitted before this one."""
    me = runs.read_json(run_dir / "run.json", {}).get("submitted_ns", 0)
    ahead = 0
    for p in run_dir.parent.iterdir():
        if p == run_dir or not p.is_dir():
            continue
        st = runs.read_status(p)
        if st.get("state") != "queued":
            continue
        ns = runs.read_json(p / "run.json", {}).get("submitted_ns", 0)
        if (ns, p.name) < (me, run_dir.name) and jobs.pid_alive(st.get("supervisor_pid"), p.name):
            ahead += 1
    return ahead


def _acquire_slots(run_dir: Path, needed: int) -> list:
    """Wait for this run's turn and ``needed`` free slots; return their (index, locked file)
    pairs, or [] when the run is cancelled while it waits. All or nothing: a run never holds
    some slots while it waits for more."""
    slots_dir = (
        run_dir.parent.parent / "slots"
        if run_dir.parent.name == "runs"
        else run_dir.parent / ".slots"
    )
    slots_dir.mkdir(exist_ok=True)
    while True:
        if (run_dir / "cancel").exists():
            return []
        if _queue_position(run_dir) == 0:
            held = []
            for i in range(jobs.n_slots()):
                fh = open(slots_dir / f"slot-{i}.lock", "w")  # noqa: SIM115 - held until the run ends
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append((i, fh))
                    if len(held) == needed:
                        return held
                except BlockingIOError:
                    fh.close()
            for _, fh in held:
                fh.close()
        time.sleep(POLL_S)


def _tail(path: Path, n: int = 8) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return "\n".join(lines[-n:])
    except OSError:
        return ""


def _fail(run_dir: Path, error: str, with_log: bool = True) -> None:
    """End a run as ``failed`` with a one-line reason (and the last log lines when useful)."""
    extra = {"log_tail": _tail(run_dir / "worker.log")} if with_log else {}
    runs.update_status(run_dir, state="failed", finished=runs.now(), error=error, **extra)


def supervise(run_dir: Path) -> int:
    needed = int(runs.read_json(run_dir / "run.json", {}).get("devices") or 1)
    held = _acquire_slots(run_dir, needed)
    if not held:
        runs.update_status(run_dir, state="cancelled", finished=runs.now())
        return 0
    slots = [i for i, _ in held]
    env = dict(os.environ)
    if jobs.gpu_count() > 0 and "SCWB_SLOTS" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, slots))  # slot i is GPU i
    runs.update_status(run_dir, state="running", slot=slots[0], slots=slots, started=runs.now())
    child = subprocess.Popen(
        [sys.executable, "-m", "engine.worker", "--train", str(run_dir)],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    runs.update_status(run_dir, pid=child.pid)
    cancel_seen = None
    while child.poll() is None:
        if (run_dir / "cancel").exists():
            cancel_seen = cancel_seen or time.time()
            if time.time() - cancel_seen > jobs.CANCEL_GRACE_S:
                child.kill()
                child.wait()
                runs.update_status(
                    run_dir,
                    state="cancelled",
                    finished=runs.now(),
                    error="stopped by force after the cancel grace period",
                )
                return 0
        time.sleep(POLL_S)
    rc = child.returncode
    state = runs.read_status(run_dir).get("state")
    if state in runs.ACTIVE:  # the training process did not record an end: it died
        if rc < 0:
            name = signal.Signals(-rc).name
            reason = f"The training process was killed by {name}" + (
                " (out of memory?)" if name == "SIGKILL" else ""
            )
        else:
            reason = f"The training process exited with code {rc}"
        _fail(run_dir, reason)
    for _, fh in held:
        fh.close()
    return 0


def train_child(run_dir: Path) -> int:
    import warnings

    warnings.filterwarnings("ignore")
    try:  # die with the supervisor, never orphaned (Linux)
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    from engine.errors import ScwbError
    from engine.spec import RunSpec
    from engine.train import run

    try:
        spec = RunSpec.from_dict(runs.read_json(run_dir / "run.json", {}))
        spec.out = str(run_dir)
        run(spec)
        return 0
    except ScwbError as exc:
        _fail(run_dir, str(exc), with_log=False)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        import errno

        msg = (
            "The disk is full: free space where SCWB_HOME lives, then submit the run again."
            if exc.errno == errno.ENOSPC
            else f"OSError: {exc.strerror or exc}"
        )
        traceback.print_exc()
        with contextlib.suppress(OSError):  # else the supervisor records it from the exit code
            _fail(run_dir, msg)
        return 1
    except Exception as exc:  # unexpected: one line in status, the traceback in worker.log
        traceback.print_exc()
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        _fail(run_dir, msg)
        return 1


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--train":
        return train_child(Path(argv[1]))
    return supervise(Path(argv[0]))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
