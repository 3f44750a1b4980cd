"""The processes behind jobs (``python -m engine.worker ...``); none imports torch itself except
the training.

- ``--dispatch RUNS``: the local dispatcher, one per host and workspace (an ``flock`` makes sure
  of it). Queued runs cost no process: it starts them in submission order when device slots are
  free (one ``flock`` per slot, per host; scikit-learn baselines in their own light lane, so they
  never wait behind long runs), hands the slot locks to the run's supervisor, and exits when the
  queue is empty.
- ``--supervise RUN_DIR``: holds the run's slots (inherited lock files), starts the training
  process on those GPUs and watches it: a cancel that is not honoured in time is enforced, a
  training process that dies leaves ``failed`` with the reason and the last log lines, and an end
  that cannot be written (a full disk) is recorded in place and written as soon as space allows.
  It beats the run's heartbeat (for readers on other hosts).
- ``--train RUN_DIR``: the training itself (``engine.train.run``).
- ``--reap RUN_DIR``: after a cancel of a SLURM run: scancel once the run has ended, or after the
  grace period.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from engine import procs, queue, runs, settings

POLL_S = 0.25


def _tail(path: Path, n: int = 8) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return "\n".join(lines[-n:])
    except OSError:
        return ""


def _fail(run_dir: Path, error: str, with_log: bool = True) -> bool:
    """End a run as ``failed`` with a one-line reason (and the last log lines when useful)."""
    extra = {"log_tail": _tail(run_dir / "worker.log")} if with_log else {}
    return runs.record_end(run_dir, state="failed", error=error, **extra)


DISK_FULL = "The disk is full: free space where SCWB_HOME lives, then submit the run again."


# ----------------------------------------------------------------------------- dispatcher
def _try_lock(path: Path):
    fh = open(path, "a")  # noqa: SIM115 - held while dispatching / running
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return fh
    except BlockingIOError:
        fh.close()
        return None


def _lane_slots(lane: str) -> list[str]:
    if lane == "light":
        return [f"light-{i}" for i in range(queue.n_light_slots())]
    return [f"slot-{i}" for i in range(queue.n_slots())]


def _start(runs_root: Path, marker: Path, held: list) -> None:
    """Start the supervisor of a queued run, handing it the locked slot files."""
    run_dir = runs_root / queue.marker_run(marker)
    fds = [fh.fileno() for _, fh in held]
    with open(run_dir / "worker.log", "ab") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.worker",
                "--supervise",
                str(run_dir),
                json.dumps({name: fh.fileno() for name, fh in held}),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # detached: survives the app and its browser tabs
            env=procs.child_env(),
            pass_fds=fds,
        )
    runs.update_status(run_dir, supervisor_pid=proc.pid)
    for _, fh in held:
        fh.close()  # the supervisor holds the locks now
    with contextlib.suppress(OSError):
        marker.unlink()


def _dispatch_round(runs_root: Path, qdir: Path, sdir: Path) -> bool:
    """One look at this host's queue; start each lane's head when its slots are free. Returns
    whether queued runs remain."""
    items = queue.queue_items(qdir)
    heads: dict[str, Path] = {}
    for m in items:
        run_dir = runs_root / queue.marker_run(m)
        st = runs.read_status(run_dir)
        if st.get("state") != "queued" or st.get("supervisor_pid"):
            with contextlib.suppress(OSError):
                m.unlink()  # cancelled, deleted or started meanwhile
            continue
        if (run_dir / "cancel").exists():
            runs.record_end(run_dir, state="cancelled")
            with contextlib.suppress(OSError):
                m.unlink()
            continue
        heads.setdefault(queue.marker_lane(m), m)
    for lane, m in heads.items():
        needed = queue.marker_devices(m) if lane == "heavy" else 1
        held = []
        for name in _lane_slots(lane):
            fh = _try_lock(sdir / f"{name}.lock")
            if fh:
                held.append((name, fh))
                if len(held) == needed:
                    break
        if len(held) == needed:
            _start(runs_root, m, held)
        else:  # all or nothing: never hold some slots while waiting for more
            for _, fh in held:
                fh.close()
    return bool(queue.queue_items(qdir))


def dispatch(runs_root: Path) -> int:
    runs_root = Path(runs_root)
    qdir = queue.queue_dir(runs_root, settings.get().host)
    qdir.mkdir(parents=True, exist_ok=True)
    sdir = queue.slots_dir(runs_root)
    sdir.mkdir(parents=True, exist_ok=True)
    while True:
        lock = _try_lock(qdir / ".dispatcher.lock")
        if lock is None:
            return 0  # another dispatcher serves this host
        try:
            runs.write_json(
                qdir / ".dispatcher.json",
                {"pid": os.getpid(), "host": settings.get().host, "started": runs.now()},
            )
            queue.clean_partial(runs_root)
            beat = 0.0
            while _dispatch_round(runs_root, qdir, sdir):
                if time.time() - beat > settings.get().heartbeat_s:
                    procs.touch(qdir / ".dispatcher.json")
                    beat = time.time()
                time.sleep(POLL_S)
        except OSError as exc:  # a full disk: the queue waits; the next submit restarts us
            print(f"dispatcher: {exc}", file=sys.stderr)
            return 1
        finally:
            lock.close()
        # a submit that found our lock held (queue.dispatcher_alive) relies on this second
        # look; one that finds it free starts a dispatcher of its own
        if not queue.queue_items(qdir):
            return 0


# ----------------------------------------------------------------------------- supervisor
def _persist_end(run_dir: Path, fields: dict, patience_s: float = 3600.0) -> None:
    """Write the end into status.json, retrying until space allows (the end is already visible
    to readers through ``.end.json``)."""
    t0 = time.time()
    while time.time() - t0 < patience_s:
        try:
            runs.update_status(run_dir, **fields)
            runs.clean_tmp(run_dir)
            return
        except OSError:
            time.sleep(5)


def _wait_handshake(run_dir: Path, timeout: float = 5.0) -> None:
    """Wait until the dispatcher has recorded our pid (so our status writes do not race its)."""
    t0 = time.time()
    while time.time() - t0 < timeout:
        if runs.read_status(run_dir).get("supervisor_pid") == os.getpid():
            return
        time.sleep(0.02)


def supervise(run_dir: Path, slot_fds: dict[str, int]) -> int:
    _wait_handshake(run_dir)
    runs.clean_tmp(run_dir)
    runs.reserve_end(run_dir)
    if (run_dir / "cancel").exists():
        runs.record_end(run_dir, state="cancelled")
        return 0
    heavy = sorted(int(n.split("-")[1]) for n in slot_fds if n.startswith("slot-"))
    # a local run is ours alone, even when the app itself runs inside a SLURM allocation:
    # Lightning must not take its ranks from that allocation's environment
    env = {k: v for k, v in procs.child_env().items() if not k.startswith("SLURM_")}
    if heavy and queue.gpu_count() > 0 and "SCWB_SLOTS" not in os.environ:
        env["CUDA_VISIBLE_DEVICES"] = queue.gpu_ids(heavy)  # slot i is the i-th visible GPU
    runs.update_status(
        run_dir,
        state="running",
        slot=heavy[0] if heavy else None,
        slots=heavy,
        lane="heavy" if heavy else "light",
        host=settings.get().host,
        launcher="local",
        started=runs.now(),
    )
    with procs.Heartbeat(run_dir / "heartbeat"):
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
                if time.time() - cancel_seen > settings.get().cancel_grace_s:
                    child.kill()
                    child.wait()
                    runs.clean_tmp(run_dir)
                    fields = {
                        "state": "cancelled",
                        "finished": runs.now(),
                        "error": "stopped by force after the cancel grace period",
                    }
                    if not runs.record_end(run_dir, **fields):
                        _release(slot_fds)
                        _persist_end(run_dir, fields)
                    return 0
            time.sleep(POLL_S)
        rc = child.returncode
        runs.clean_tmp(run_dir)  # the training process is gone: any temporary file is garbage
        st = runs.read_status(run_dir)
        if st.get("state") in runs.ACTIVE:  # the training process did not record an end
            if rc < 0:
                name = signal.Signals(-rc).name
                reason = f"The training process was killed by {name}" + (
                    " (out of memory?)" if name == "SIGKILL" else ""
                )
            else:
                reason = f"The training process exited with code {rc}"
            if not _fail(run_dir, reason):
                _release(slot_fds)
                _persist_end(run_dir, {"state": "failed", "error": reason, "finished": runs.now()})
        elif (run_dir / runs.END_FILE).exists() and st.get("state") not in runs.ACTIVE:
            raw = runs.read_json(run_dir / "status.json", {}) or {}
            if raw.get("state") in runs.ACTIVE:  # the end lives only in .end.json: persist it
                _release(slot_fds)
                end = runs.read_json(run_dir / runs.END_FILE, {}) or {}
                _persist_end(run_dir, end)
    if "peak_memory_mb" not in runs.read_status(run_dir):  # the training process died first
        with contextlib.suppress(OSError):
            runs.update_status(run_dir, peak_memory_mb=runs.peak_memory_mb(children=True))
    return 0


def _release(slot_fds: dict[str, int]) -> None:
    for fd in slot_fds.values():
        with contextlib.suppress(OSError):
            os.close(fd)
    slot_fds.clear()


# ----------------------------------------------------------------------------- training
def run_training(run_dir: Path) -> int:
    """Train the run folder in this process; every end is recorded (0: done or cancelled).
    In a multi-device run every rank calls this and only rank 0 records the end."""
    from engine import quiet

    quiet.library_warnings_off()
    if procs.rank() != 0:  # the extra ranks only help to train; rank 0 writes the run folder
        return _train_quietly(run_dir)
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
        msg = f"error: {exc}"
        _log(lambda: print(msg, file=sys.stderr))
        return 1
    except OSError as exc:
        msg = DISK_FULL if exc.errno == errno.ENOSPC else f"OSError: {exc.strerror or exc}"
        _log(traceback.print_exc)
        with contextlib.suppress(OSError):  # else the supervisor records it
            _fail(run_dir, msg, with_log=exc.errno != errno.ENOSPC)
        return 1
    except Exception as exc:  # unexpected: one line in status, the traceback in worker.log
        _log(traceback.print_exc)
        if disk_full(run_dir):  # e.g. torch.save's "failed writing file" on a full disk
            with contextlib.suppress(OSError):
                _fail(run_dir, DISK_FULL, with_log=False)
            return 1
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        _fail(run_dir, msg)
        return 1


def _train_quietly(run_dir: Path) -> int:
    from engine.spec import RunSpec
    from engine.train import run

    try:
        spec = RunSpec.from_dict(runs.read_json(run_dir / "run.json", {}))
        spec.out = str(run_dir)
        run(spec)
        return 0
    except Exception:  # rank 0 meets the same failure and records it
        _log(traceback.print_exc)
        return 1


def _log(fn) -> None:
    """Write to worker.log unless it cannot be written (a full disk must not hide the end)."""
    with contextlib.suppress(OSError, ValueError):
        fn()


def disk_full(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except OSError:
        return False


def train_child(run_dir: Path) -> int:
    try:  # die with the supervisor, never orphaned (Linux)
        import ctypes

        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    return run_training(run_dir)


# ----------------------------------------------------------------------------- SLURM cancel
def reap(run_dir: Path) -> int:
    """A SLURM run was asked to stop: give its training the grace period to stop gracefully,
    then make sure the scheduler ends the job (CANCELLED in sacct)."""
    t0 = time.time()
    job = runs.read_status(run_dir).get("job_id")
    while time.time() - t0 < settings.get().cancel_grace_s:
        if runs.read_status(run_dir).get("state") not in runs.ACTIVE:
            break
        time.sleep(POLL_S)
    if runs.read_status(run_dir).get("state") in runs.ACTIVE:
        runs.record_end(
            run_dir,
            state="cancelled",
            error="stopped by force after the cancel grace period (scancel)",
        )
    procs.scancel(job)
    return 0


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--train":
        return train_child(Path(argv[1]))
    if argv and argv[0] == "--dispatch":
        return dispatch(Path(argv[1]))
    if argv and argv[0] == "--supervise":
        return supervise(Path(argv[1]), {k: int(v) for k, v in json.loads(argv[2]).items()})
    if argv and argv[0] == "--reap":
        return reap(Path(argv[1]))
    raise SystemExit("usage: python -m engine.worker --dispatch RUNS | --supervise RUN_DIR FDS")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
