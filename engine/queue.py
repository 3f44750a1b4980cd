"""The run queue on disk: one marker file per waiting run under ``RUNS/.queue/<lane owner>/``,
ordered by submission time, and the dispatcher process that starts queued runs when a slot
frees (one per host, started on demand, gone when the queue is empty)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from engine import procs, settings, workspace
from engine.procs import child_env


def queue_dir(runs_root: Path, name: str) -> Path:
    return Path(runs_root) / ".queue" / name


def _marker_name(ns: int, lane: str, devices: int, run_id: str) -> str:
    return f"{ns:020d}-{lane}-{devices}-{run_id}"


def marker_run(marker: Path) -> str:
    return marker.name.split("-", 3)[3]


def marker_lane(marker: Path) -> str:
    return marker.name.split("-", 3)[1]


def marker_devices(marker: Path) -> int:
    return int(marker.name.split("-", 3)[2])


# what _marker_name writes: anything else in a queue folder is not a queued run (a stray
# notes.txt stopped every submit and the dispatcher: a hostile-input pass)
_MARKER = re.compile(r"[0-9]{20}-[^-/]+-[0-9]{1,4}-[^/]+")


def queue_items(qdir: Path) -> list[Path]:
    try:
        return sorted(
            p
            for p in Path(qdir).iterdir()
            if not p.name.startswith(".") and _MARKER.fullmatch(p.name)
        )
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


def _lock_held(path: Path) -> bool:
    """Whether another open file holds ``path``'s ``flock`` (a probe: released at once)."""
    try:
        fh = open(path, "a")  # noqa: SIM115 - closed below
    except OSError:
        return False
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        fh.close()


def dispatcher_alive(root: Path) -> bool:
    """Whether a dispatcher serves ``root``'s queue on this host.

    The answer is the dispatcher's lock, not its pid: a dispatcher that has let go of its lock
    may still be alive for a moment on its way out, after its last look at the queue, and a run
    queued in that moment would wait until the next submit. A dispatcher holding the lock looks
    at the queue again after letting go, so a marker written before this probe is always seen
    (by it, or by the one the caller starts)."""
    return _lock_held(queue_dir(root, settings.get().host) / ".dispatcher.lock")


def ensure_dispatcher(root: Path | None = None) -> None:
    """Start this host's dispatcher for ``root`` unless one holds its lock (it exits by itself
    when the queue is empty; a second one exits at once, so racing starts are harmless)."""
    root = Path(root or workspace.runs_dir())
    if dispatcher_alive(root):
        return  # it sees the new marker in its loop, or in its look after letting go
    qdir = queue_dir(root, settings.get().host)
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
            env=child_env(),
            close_fds=True,
        )
    finally:
        if log is not subprocess.DEVNULL:
            log.close()


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
    return settings.get().slots or max(1, gpu_count())


def n_light_slots() -> int:
    return settings.get().light_slots


def clean_partial(root: Path, older_than_s: float = 60.0) -> None:
    """Remove submits that never finished writing (``.*.partial`` folders)."""
    with contextlib.suppress(OSError):
        for p in Path(root).iterdir():
            if p.name.startswith(".") and p.name.endswith(".partial"):
                age = procs.file_age_s(p)
                if age is not None and age > older_than_s:
                    shutil.rmtree(p, ignore_errors=True)


def slots_dir(runs_root: Path) -> Path:
    """This host's slot locks (hosts sharing one workspace never share slots)."""
    runs_root = Path(runs_root)
    base = runs_root.parent / "slots" if runs_root.name == "runs" else runs_root / ".slots"
    return base / settings.get().host


def gpu_ids(slots: list[int]) -> str:
    """``CUDA_VISIBLE_DEVICES`` for these slots: slot i is the i-th GPU this process may use
    (the i-th entry of an inherited ``CUDA_VISIBLE_DEVICES``, such as a scheduler's "2,3"), else
    GPU i."""
    visible = [
        v.strip()
        for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
        if v.strip() and v.strip() != "-1"
    ]
    return ",".join(visible[i] if i < len(visible) else str(i) for i in slots)
