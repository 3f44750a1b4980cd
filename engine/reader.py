"""Reading untrusted files in a short-lived child process with a memory cap.

Uploads and files named on the command line are read, described and (for uploads) written to the
workspace by ``python -m engine.reader`` with ``RLIMIT_AS`` set from the budget, after the
structural checks of ``engine.checks``. Whatever slips past the checks costs one child, and the
parent gets one line (a crash by signal too).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from engine import checks
from engine.checks import _first_line, human, memory_budget
from engine.errors import ScwbError

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- child process
def child_memory_limit() -> int:
    """RLIMIT_AS for a reader child: the budget three times over (reading copies) plus 2 GB for
    the interpreter and its libraries."""
    return 2 * 2**30 + 3 * memory_budget()


def _limit_memory(limit: int) -> None:
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def reader_slots() -> int:
    """How many reader children may run at once on this machine: ``$SCWB_READERS``, else as
    many as three quarters of its memory holds at their cap (``child_memory_limit``), at
    least one. Two tabs uploading at once ran two readers of 3.7 GB each, and a third would
    have exhausted the machine (a hostile-input pass)."""
    given = os.environ.get("SCWB_READERS", "").strip()
    if given.isdigit() and int(given) > 0:
        return int(given)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1
    return max(1, int(0.75 * total // child_memory_limit()))


@contextlib.contextmanager
def reader_slot(name: str, wait_s: float):
    """Hold one of ``reader_slots()`` machine-wide (a lock file per slot, per user) while a
    reader child runs; wait up to ``wait_s`` for one, then refuse in one line."""
    import fcntl

    folder = Path(tempfile.gettempdir()) / f"scwb-readers-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    n, deadline = reader_slots(), time.monotonic() + wait_s
    while True:
        for i in range(n):
            fh = open(folder / f"slot-{i}.lock", "a")  # noqa: SIM115 (held until the read ends)
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                continue
            try:
                yield
            finally:
                fh.close()  # the lock goes with it
            return
        if time.monotonic() > deadline:
            raise ScwbError(
                f"{name} was not read: {n} other file{'s were' if n > 1 else ' was'} being "
                f"read for {wait_s:.0f} s, and this machine's memory reads {n} at a time "
                "(SCWB_READERS); try again."
            )
        time.sleep(0.2)


READ_FLOOR_S = 60.0  # every file gets this long to be read, checked and described
READ_RATE = 10e6  # bytes per second beyond it: a slow disk, the checks and a copy included
COMPRESSED = (".gz", ".zip", ".bz2", ".xz")  # their bytes on disk understate the work: x10


def _work_bytes(source: str | os.PathLike) -> float:
    """The bytes a read works through: a folder's files summed (a 10x .mtx folder), a
    compressed file's size ten times."""
    p = Path(source)
    try:
        if p.is_dir():
            total = 0
            for i, f in enumerate(p.rglob("*")):
                if i > 10_000:
                    break
                with contextlib.suppress(OSError):
                    total += f.stat().st_size if f.is_file() else 0
        else:
            total = p.stat().st_size
    except OSError:
        return 0.0
    return total * (10 if any(str(p).lower().endswith(c) for c in COMPRESSED) else 1)


def read_timeout(source: str | os.PathLike) -> float:
    """How long a reader child may take for this file: a minute plus 1 s per 10 MB of work, at
    most 900 s; ``SCWB_READ_TIMEOUT_S``, when set, is the limit itself (to give large files
    longer, or to be stricter). One corrupted byte in HDF5 metadata can make the library loop
    forever: a small file is refused in a minute, not after fifteen."""
    from engine import settings

    if os.environ.get("SCWB_READ_TIMEOUT_S", "").strip():
        return settings.get().read_timeout_s
    return min(settings.get().read_timeout_s, READ_FLOOR_S + _work_bytes(source) / READ_RATE)


def _limit_cpu(seconds: int) -> None:
    """The child's own end: an orphan (its parent killed) stops when its CPU time runs out."""
    import resource

    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    if hard != resource.RLIM_INFINITY:
        seconds = min(seconds, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (seconds, hard))


def run_child(
    source: str | os.PathLike,
    display: str,
    target: str | os.PathLike | None = None,
    timeout: float | None = None,
    check_only: bool = False,
    fingerprint: bool = False,
) -> dict[str, Any]:
    """Read ``source`` (and write it to ``target`` as .h5ad when given) in a child process with
    a memory and CPU cap; return its description (``check_only``: only read it, and return
    ``{}``, or ``{"fingerprint": ...}`` of the values as stored when ``fingerprint``). Any failure, a crash by signal included, is one ``ScwbError`` line; a half-written
    ``target`` is removed."""
    name = Path(display).name or "the file"
    timeout = timeout or read_timeout(source)
    env = {
        **os.environ,
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMBA_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT), *[p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]]
        ),
    }
    with tempfile.TemporaryDirectory(prefix="scwb-read-") as tmp:
        result = Path(tmp) / "result.json"
        # names travel as --opt=value and the file after "--": a name that starts with "-"
        # ("-sample1.h5ad") is a name, not an option
        cmd = [
            sys.executable,
            "-m",
            "engine.reader",
            f"--display={display}",
            f"--result={result}",
            f"--limit={child_memory_limit()}",
            f"--cpu-limit={int(timeout) + 30}",
        ]
        if target is not None:
            cmd.append(f"--target={target}")
        if check_only:
            cmd.append("--check-only")
        if fingerprint:
            cmd.append("--fingerprint")
        cmd += ["--", str(source)]
        try:
            with reader_slot(name, timeout):
                proc = subprocess.run(
                    cmd,
                    env=env,
                    cwd=str(ROOT),
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    timeout=timeout,
                )
        except subprocess.TimeoutExpired:
            _remove_target(target)
            raise ScwbError(
                f"{name} took longer than {timeout:.0f} s to read, so it was refused (a damaged "
                "or unusually shaped file can take this long; set SCWB_READ_TIMEOUT_S to give a "
                "large file longer)."
            ) from None
        except OSError as exc:
            _remove_target(target)
            raise ScwbError(f"{name} could not be read: {_first_line(exc)}") from None
        out = None
        try:
            out = json.loads(result.read_text())
        except (OSError, ValueError):
            out = None
    if proc.returncode == 0 and isinstance(out, dict) and ("describe" in out or check_only):
        return out
    _remove_target(target)
    if isinstance(out, dict) and out.get("error"):
        raise ScwbError(str(out["error"]))
    if proc.returncode < 0:
        sig = -proc.returncode
        try:
            signame = signal.Signals(sig).name
        except ValueError:
            signame = f"signal {sig}"
        why = (
            "ran out of memory or was killed"
            if sig == signal.SIGKILL
            else f"crashed with {signame}"
        )
        raise ScwbError(
            f"{name} could not be read safely (the reader {why}); the file is malformed."
        )
    tail = [ln for ln in proc.stderr.decode("utf-8", "replace").splitlines() if ln.strip()]
    raise ScwbError(
        f"{name} could not be read (the reader exited with code {proc.returncode}"
        f"{': ' + tail[-1][:160] if tail else ''})."
    )


def _remove_target(target: str | os.PathLike | None) -> None:
    if target is None:
        return
    from engine import runs

    t = Path(target)
    runs.remove_temps(t)
    for p in (t, t.with_suffix(".qc.npz")):
        with contextlib.suppress(OSError):
            p.unlink()


def describe_file(path: str | os.PathLike) -> dict[str, Any]:
    """``io.describe`` of a file, read in a child process (the CLI's ``info``)."""
    path = Path(path)
    if not path.exists():
        raise ScwbError(f"{path} does not exist.")
    return run_child(path.resolve(), str(path))["describe"]  # the child runs elsewhere


_VETTED: set[tuple[str, int, int]] = set()


def vet(path: str | os.PathLike) -> None:
    """Read a file named on the command line in a child first, so that one this process then
    reads cannot hang or crash it (a corrupted HDF5 heap loops inside the library, in the
    structural checks themselves). Workspace datasets were read this way when imported and are
    not read twice; a file read once by this process is not read again."""
    from engine import workspace

    p = Path(path).resolve()
    try:
        st = p.stat()
    except OSError:
        raise ScwbError(f"{path} does not exist.") from None
    try:
        if p.is_relative_to(workspace.datasets_dir().resolve()):
            return
    except OSError:
        pass
    key = (str(p), st.st_size, st.st_mtime_ns)
    if key not in _VETTED:
        run_child(p, str(path), check_only=True)
        _VETTED.add(key)


def read_untrusted(
    source: str | os.PathLike, display: str, target: str | os.PathLike
) -> dict[str, Any]:
    """Read ``source`` in a child process and write the validated AnnData to ``target``;
    return ``{"describe", "fingerprint", "content", "n_obs", "n_vars"}``. Nothing is left at
    ``target`` unless the file was read *and* described."""
    return run_child(source, display, target)


def _child(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.reader")
    ap.add_argument("source")
    ap.add_argument("--display", required=True)
    ap.add_argument("--result", required=True)
    ap.add_argument("--target")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--cpu-limit", type=int, default=0)
    ap.add_argument("--check-only", action="store_true")
    ap.add_argument("--fingerprint", action="store_true")
    args = ap.parse_args(argv)
    if args.limit:
        _limit_memory(args.limit)
    if args.cpu_limit:
        _limit_cpu(args.cpu_limit)
    name = Path(args.display).name or "the file"
    result = Path(args.result)
    try:
        import warnings

        warnings.filterwarnings("ignore")
        from engine import io

        adata = io.read_validated(Path(args.source), args.display)
        # of the values as stored (canonical changes them in place): what a saved dataset's
        # record holds (a review: a sparse X with unsorted indices read as 'changed')
        stored = io.fingerprint(adata) if args.fingerprint else None
        adata = io.canonical(adata)
        checks.check_loaded(adata, name)  # text the checks before the read could not count
        if args.check_only:  # reading it is the check (reader.vet): nothing to describe
            result.write_text(json.dumps({"fingerprint": stored} if stored else {}))
            return 0
        d = io.describe(adata)
        out = {
            "describe": json.loads(json.dumps(d, default=str)),
            "fingerprint": io.fingerprint(adata),
            "content": io.content_hash(adata),
            "n_obs": int(adata.n_obs),
            "n_vars": int(adata.n_vars),
        }
        if args.target:
            from engine import summary

            io.write_h5ad(adata, args.target)
            summary.write_qc(adata, args.target)  # the Data page reads it, never recomputes
        result.write_text(json.dumps(out))
        return 0
    except ScwbError as exc:
        msg = str(exc)
    except MemoryError:
        msg = f"{name} does not fit in memory (the reader's limit is {human(args.limit)})."
    except OSError as exc:
        import errno

        msg = (
            "The disk is full: free space where SCWB_HOME lives, then load the file again."
            if exc.errno == errno.ENOSPC
            else f"{name} could not be read: {_first_line(exc)}"
        )
    except Exception as exc:  # any reader or describe failure becomes one line
        msg = f"{name} could not be read or described: {_first_line(exc)}"
    _remove_target(args.target)
    with contextlib.suppress(OSError):
        result.write_text(json.dumps({"error": " ".join(msg.split())}))
    return 2


if __name__ == "__main__":
    sys.exit(_child())
