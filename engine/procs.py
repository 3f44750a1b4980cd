"""Process and file helpers the job system shares: the environment a child process gets,
whether a pid is alive (and ours), file ages and touches."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from engine import settings


def rank() -> int:
    """This process's rank in a multi-device run (0 when alone), from the variables Lightning,
    torchrun and SLURM set (torch-free, as Lightning's own ``_get_rank``)."""
    for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        value = os.environ.get(key)
        if value is not None and value.strip().isdigit():
            return int(value)
    return 0


def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def child_env() -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [p for p in (str(repo_root()), os.environ.get("PYTHONPATH", "")) if p]
        ),
        "PYTHONUNBUFFERED": "1",
    }


def pid_alive(pid: int | None, marker: str | None = None) -> bool:
    """Whether ``pid`` runs on this host (and, where /proc exists, is ours: its command line
    names ``marker``)."""
    try:
        pid = int(pid)
    except (ValueError, TypeError, OverflowError):
        return False
    if not 0 < pid < 2**31:  # 0 and -1 name process groups: os.kill(-1, 0) succeeds as root
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, ValueError, TypeError, OverflowError):
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


def file_age_s(path: Path) -> float | None:
    try:
        return time.time() - Path(path).stat().st_mtime
    except OSError:
        return None


def touch(path: Path) -> None:
    """Refresh a heartbeat file (its mtime is the beat; touching an existing file writes no data)."""
    with contextlib.suppress(OSError):
        try:
            os.utime(path)
        except FileNotFoundError:
            Path(path).write_text(str(os.getpid()))


class Heartbeat:
    """A daemon thread that touches ``path`` every ``SCWB_HEARTBEAT_S`` seconds."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="scwb-heartbeat")

    def _run(self) -> None:
        while not self._stop.is_set():
            touch(self.path)
            self._stop.wait(settings.get().heartbeat_s)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()


# a SLURM job id: 12345, or an array task 12345_7 (what status.json may hold, nothing else)
JOB_ID = re.compile(r"[0-9][0-9_]{0,40}")


def scancel(job_id: str | None, *args: str) -> bool:
    """Cancel SLURM job ``job_id`` (a number, or an array task ``12345_7``, nothing else: a
    job id of '--me' read from a damaged status.json cancelled every job of the user)."""
    if not job_id or not shutil.which("scancel"):
        return False
    if not JOB_ID.fullmatch(str(job_id)):
        return False
    try:
        return (
            subprocess.run(
                ["scancel", *args, str(job_id)], capture_output=True, timeout=15
            ).returncode
            == 0
        )
    except (OSError, subprocess.SubprocessError):
        return False
