"""The run folder (a contract): atomic writes and tolerant reads.

RUN_DIR holds ``run.json`` (what was asked), ``status.json`` (where it stands), ``metrics.csv``
(one row per epoch), ``metrics.json`` (final test metrics), ``model.pt`` + ``model.json``
(weights and how to rebuild them), ``split.npz`` and ``results.h5ad``. Every file is written to a
temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import secrets
import stat
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from engine.procs import JOB_ID

STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id(model: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{model}-{secrets.token_hex(2)}"


def temp_path(path: Path, suffix: str = ".tmp") -> Path:
    """A hidden temporary name next to ``path`` for one writer alone (process and call): two
    commands writing one file at once each wrote ".NAME.tmp" and failed on the other's lock or
    rename. ``clean_tmp`` and ``remove_temps`` find them."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}{suffix}")


def remove_temps(path: Path) -> None:
    """The temporaries ``temp_path`` made for ``path`` (a writer that was killed)."""
    import glob

    path = Path(path)
    for p in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):
            p.unlink()


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name and rename; a failed write (a full disk) leaves no temporary
    file behind and the old file untouched."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def clean_tmp(folder: Path) -> list[str]:
    """Remove the temporary files (``.NAME[.PID].tmp``) a failed or killed writer left in
    ``folder``; only called where no writer of that folder is alive. Returns their names."""
    removed = []
    with contextlib.suppress(OSError):
        for p in Path(folder).iterdir():
            if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file():
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed.append(p.name)
    return removed


# A run's last word when the disk is full: ``.end.json`` is written at the start of a run with
# padding (its blocks are allocated then), and overwritten in place, which needs no new space,
# when status.json cannot be written. Readers merge it; the next successful status write wins.
END_FILE = ".end.json"
END_SIZE = 4096


def reserve_end(run_dir: Path) -> None:
    """Allocate the in-place end record of ``run_dir`` (best effort)."""
    path = Path(run_dir) / END_FILE
    with contextlib.suppress(OSError), open(path, "w") as fh:
        fh.write(" " * END_SIZE)
        fh.flush()
        os.fsync(fh.fileno())


def _write_end_in_place(run_dir: Path, fields: dict[str, Any]) -> bool:
    path = Path(run_dir) / END_FILE
    data = json.dumps(fields, default=_jsonable).encode()
    if len(data) >= END_SIZE:  # keep what a reader needs, whole (never a cut JSON)
        small = {k: fields.get(k) for k in ("state", "finished", "updated")}
        small["error"] = str(fields.get("error") or "")[:1000]
        data = json.dumps(small, default=_jsonable).encode()
    try:
        fd = os.open(path, os.O_WRONLY)  # no O_CREAT, no O_TRUNC: the reserved blocks only
    except OSError:
        return False
    try:
        os.pwrite(fd, data.ljust(END_SIZE, b" "), 0)
        os.fsync(fd)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def record_end(run_dir: Path, **fields: Any) -> bool:
    """Record a run's end (``state`` plus ``error``/``finished``...) in status.json; when that
    write fails (a full disk), in the reserved ``.end.json`` so that every reader already sees
    the end, and return False (the caller retries status.json later)."""
    fields.setdefault("finished", now())
    try:
        update_status(run_dir, **fields)
        return True
    except OSError:
        _write_end_in_place(run_dir, {**fields, "updated": now()})
        return False


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as strict JSON: a NaN or infinite number is written ``null`` (an undefined
    metric, such as the no-shift baseline's correlation of a change it does not predict).
    Python writes NaN, which JSON has not: R, JavaScript and jq refused the metrics.json a
    user downloaded (a browser pass). ``read_metrics`` gives such a metric back as NaN."""
    atomic_write_text(path, json_text(obj))


def json_text(obj: Any, indent: int | None = 2) -> str:
    """``obj`` as strict JSON text (non-finite numbers as ``null``), as ``write_json`` writes."""
    return json.dumps(_finite_or_null(obj), indent=indent, default=_jsonable, allow_nan=False)


def _finite_or_null(o: Any) -> Any:
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite_or_null(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite_or_null(v) for v in o]
    return o


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item") and getattr(o, "ndim", 0) == 0:
        return _finite_or_null(o.item())
    if hasattr(o, "tolist"):
        return _finite_or_null(o.tolist())
    return str(o)


def read_metrics(path: Path, default: Any = None) -> Any:
    """A run's ``metrics.json`` (``read_json``), each ``null`` read back as NaN: metrics are
    numbers, and ``write_json`` writes an undefined one as ``null``."""
    value = read_json(path, default)
    return _nan_for_null(value) if isinstance(value, dict) else value


def _nan_for_null(o: Any) -> Any:
    if o is None:
        return math.nan
    if isinstance(o, dict):
        return {k: _nan_for_null(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_nan_for_null(v) for v in o]
    return o


MAX_JSON_BYTES = 64 << 20  # a run's JSON files are kilobytes; a larger one is not ours
MAX_CSV_BYTES = 1 << 30  # metrics.csv: a line an epoch (and a cell type), megabytes at most


def regular_file(path: str | Path, max_bytes: int | None = None) -> bool:
    """Whether ``path`` is a plain file (not a link, named pipe, device or folder) of at most
    ``max_bytes``. What a run folder holds is read only then: a model.pt linked to /dev/zero
    read until the server ran out of memory, a named pipe blocked a page (or the download
    threads) forever, a link to /etc/passwd was served (a hostile-input pass)."""
    try:
        st = os.lstat(path)
    except (OSError, ValueError):
        return False
    return stat.S_ISREG(st.st_mode) and (max_bytes is None or st.st_size <= max_bytes)


def read_capped(path: str | Path, max_bytes: int) -> bytes:
    """A plain file's bytes (``regular_file``), never more than ``max_bytes`` (a file that grew
    meanwhile is refused, not read on); ScwbError otherwise."""
    from engine.errors import ScwbError

    if not regular_file(path):
        raise ScwbError(f"{Path(path).name} is not a plain file of the run folder: not read.")
    max_bytes = int(max_bytes)  # a limit of MB x 2**20 may come as a float
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ScwbError(f"{Path(path).name} is larger than {max_bytes:,} bytes: not read.")
    return data


def read_json(path: Path, default: Any = None) -> Any:
    """The parsed file, or ``default`` when it is missing, corrupt or over ``MAX_JSON_BYTES`` (an
    800 MB run.json took 1.7 GB to list the runs). Only a regular file is
    opened (a named pipe in its place would block the reader forever), and when ``default`` is
    a dict or a list, a file of another JSON type is corrupt too (``7`` as a run.json broke
    every listing)."""
    path = Path(path)
    try:
        if not path.is_file() or path.stat().st_size > MAX_JSON_BYTES:
            return default
        value = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        return default
    if isinstance(default, dict | list) and not isinstance(value, type(default)):
        return default
    return value


# status.json's fields by type: a value of another type (hand-edited, another version, a
# damaged file) is dropped when read, so no listing, sidebar or page meets it (one run's
# supervisor_pid of 1e400 stopped every page and every run command: a hostile-input pass)
_NUMBERS = (
    "epoch", "max_epochs", "cells_per_s", "peak_memory_mb", "elapsed_s", "eta_s",
    "resumed_after_epoch", "best_epoch", "requeued",
)  # fmt: skip
_LOSSES = ("train_loss", "val_loss")  # a Gaussian likelihood's loss can be below 0
_PIDS = ("pid", "supervisor_pid")
_TEXTS = ("device", "error", "host", "launcher", "optimizer", "started", "finished", "updated")
_FLAGS = ("stopped_early", "solver_converged", "computed", "corrupt")


def _clean_status(status: dict[str, Any]) -> dict[str, Any]:
    out = dict(status)
    for k in _NUMBERS:
        v = out.get(k)
        if v is not None and not (
            isinstance(v, int | float)
            and not isinstance(v, bool)
            and math.isfinite(v)
            and 0 <= v < 1e15
        ):
            del out[k]
    for k in _LOSSES:
        v = out.get(k)
        if v is not None and not (
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ):
            del out[k]
    for k in _PIDS:  # a pid of -1 or 0 names a process group: never "alive"
        v = out.get(k)
        if v is not None and not (isinstance(v, int) and not isinstance(v, bool) and 0 < v < 2**31):
            del out[k]
    slot = out.get("slot")
    if slot is not None and not (
        isinstance(slot, int) and not isinstance(slot, bool) and 0 <= slot < 4096
    ):
        del out["slot"]
    for k in _TEXTS:
        if k in out and out[k] is not None and not isinstance(out[k], str):
            out[k] = str(out[k])[:2000] if k == "error" else None
    for k in ("started", "finished", "updated"):
        if isinstance(out.get(k), str) and not _aware_time(out[k]):
            out[k] = None  # a time without its zone could not be compared with now
    for k in _FLAGS:
        if k in out and not isinstance(out[k], bool):
            del out[k]
    job = out.get("job_id")
    if job is not None and not (isinstance(job, str | int) and JOB_ID.fullmatch(str(job))):
        del out["job_id"]  # '--me' reached scancel as an option: every job of the user
    return out


def _aware_time(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def read_status(run_dir: Path) -> dict[str, Any]:
    """status.json, with an end recorded in place (``.end.json``, see ``record_end``) merged in
    while status.json still shows the run active; fields of the wrong type dropped. Never
    writes."""
    status = read_json(Path(run_dir) / "status.json")
    if not isinstance(status, dict) or status.get("state") not in STATES:
        return {"state": "failed", "error": "status.json is missing or corrupt", "corrupt": True}
    if status["state"] in ACTIVE:
        end = read_json(Path(run_dir) / END_FILE)
        if isinstance(end, dict) and end.get("state") in STATES and end["state"] not in ACTIVE:
            status = {**status, **end}
    return _clean_status(status)


def peak_memory_mb(children: bool = False) -> int:
    """Peak resident memory of this process (or of its largest ended child) in MB."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF)
    unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB on Linux
    return round(peak.ru_maxrss * unit / 2**20)


def update_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into status.json (atomically) and stamp ``updated``."""
    path = Path(run_dir) / "status.json"
    status = read_json(path, {}) or {}
    status.update(fields)
    status["updated"] = now()
    write_json(path, status)
    return status


def write_metrics_csv(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    tmp = temp_path(Path(run_dir) / "metrics.csv")
    try:
        with open(tmp, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        os.replace(tmp, Path(run_dir) / "metrics.csv")
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def read_metrics_csv(run_dir: Path):
    """Per-epoch metrics as a DataFrame (empty when none yet)."""
    import pandas as pd

    path = Path(run_dir) / "metrics.csv"
    try:
        # never a pipe, a device or a link (read until memory ran out)
        return pd.read_csv(path) if regular_file(path, MAX_CSV_BYTES) else pd.DataFrame()
    except (OSError, ValueError):
        return pd.DataFrame()


def summary(run_dir: Path) -> dict[str, Any]:
    """One row for run listings, never raising on a damaged folder."""
    run_dir = Path(run_dir)
    spec = read_json(run_dir / "run.json", {})
    status = read_status(run_dir)

    def text(key: str, default: str) -> str:  # a field of the wrong type reads as text
        value = spec.get(key)
        return value if isinstance(value, str) else default if value is None else str(value)

    row = {
        "id": run_dir.name,
        "path": str(run_dir),
        "model": text("model", "?"),
        "task": text("task", "?"),
        "dataset": text("dataset_name", "") or Path(text("data", "?")).name,
        # the workspace dataset's key (its name above is a label two datasets may share)
        "dataset_key": text("dataset_key", ""),
        "created": text("created", ""),
        "group": spec.get("group") if isinstance(spec.get("group"), str) else None,
        **{
            k: status.get(k)
            for k in (
                "state",
                "epoch",
                "max_epochs",
                "cells_per_s",
                "peak_memory_mb",
                "elapsed_s",
                "eta_s",
                "device",
                "error",
                "train_loss",
                "val_loss",
                "host",
                "launcher",
                "job_id",
                "optimizer",
                "stopped_early",
                "started",
                "finished",
            )
        },
    }
    row["launcher"] = row["launcher"] or spec.get("launcher") or "local"
    ns = spec.get("submitted_ns")
    row["submitted_ns"] = ns if isinstance(ns, int) and not isinstance(ns, bool) else None
    seed = spec.get("seed")
    row["seed"] = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return row


# Listing cache: a run folder's mtime changes whenever a file in it is replaced (every write here
# is a rename), so a finished run's row is read once per process and then only stat'ed; while
# the runs folder itself is unchanged (no run added or removed) even the stats are skipped for
# ``RESCAN_S`` seconds. Active rows are always read again (they change often).
_CACHE: dict[str, tuple[int, dict[str, Any]]] = {}
_SNAP: dict[str, tuple[float, int, list[dict[str, Any]], bool]] = {}
_CACHE_LOCK = threading.Lock()
RESCAN_S = 5.0


def _settled(mtime_ns: int) -> bool:
    """Whether a folder's mtime is old enough (1 s) that a later change must move it."""
    return time.time() - mtime_ns / 1e9 > 1.0


BATCH_GAP_NS = 60 * 10**9  # runs of one group submitted further apart are another submission


def _newest_first(rows: list[dict[str, Any]]) -> None:
    """Newest submission first; the runs of one submission (one group's models x seeds, sent
    together) in the order they were submitted. Sorted by the second of ``created`` and then by
    the run's random id, nine runs of one click read sk_logreg 2, 1, 0, mlp 1, 2, 0 (a browser
    pass). A group name given again later (``submit --group``) starts another submission: its
    runs are not buried under the first's date (a review)."""
    rows.sort(key=lambda r: (r.get("submitted_ns") or 0, r["id"]))  # oldest first
    batches: dict[str, tuple[tuple[str, int], int]] = {}  # group -> (its batch's key, last ns)
    keys = {}
    for r in rows:
        ns = r.get("submitted_ns")
        key = (r["created"] or "", ns or 0)
        group = r.get("group")
        if group and ns:
            open_batch = batches.get(group)
            if open_batch and ns - open_batch[1] <= BATCH_GAP_NS:
                key = open_batch[0]
            batches[group] = (key, ns)
        keys[r["id"]] = key

    def newest_first(r: dict[str, Any]) -> tuple:
        ns = r.get("submitted_ns")
        # reversed below: one submission's runs by ascending submission time; runs of no
        # submission (trained in place, older records) that tie, by id as before
        within = (1, -ns) if r.get("group") and ns else (0, r["id"])
        return keys[r["id"]], within

    rows.sort(key=newest_first, reverse=True)


def list_runs(root: Path) -> list[dict[str, Any]]:
    """One ``summary`` row per run folder under ``root``, newest first. Never writes; hidden
    folders (a submit still being written, ``.queue``...) are skipped."""
    root = Path(root)
    try:
        root_mtime = root.stat().st_mtime_ns
    except OSError:
        return []
    with _CACHE_LOCK:
        snap = _SNAP.get(str(root))
    if snap and snap[1] == root_mtime and time.monotonic() - snap[0] < RESCAN_S and snap[3]:
        rows = []
        for row in snap[2]:
            if row["state"] in ACTIVE:
                row = summary(Path(row["path"]))
            rows.append(row)
        with _CACHE_LOCK:
            _SNAP[str(root)] = (snap[0], root_mtime, rows, snap[3])
        return [dict(r) for r in rows]
    rows = []
    t_scan = time.monotonic()
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    for e in entries:
        if e.name.startswith("."):
            continue
        try:
            if not e.is_dir(follow_symlinks=False):  # a link is an alias, not a run of its own
                continue
            mtime = e.stat().st_mtime_ns
        except OSError:
            continue
        with _CACHE_LOCK:
            hit = _CACHE.get(e.path)
        if hit and hit[0] == mtime and hit[1]["state"] not in ACTIVE:
            rows.append(hit[1])
            continue
        row = summary(Path(e.path))
        if _settled(mtime):  # a change within the same clock tick could hide behind its mtime
            with _CACHE_LOCK:
                _CACHE[e.path] = (mtime, row)
        rows.append(row)
    _newest_first(rows)
    with _CACHE_LOCK:
        _SNAP[str(root)] = (t_scan, root_mtime, rows, _settled(root_mtime))
        if len(_CACHE) > 2 * max(len(rows), 1000):  # folders deleted meanwhile
            live = {r["path"] for r in rows}
            for k in [k for k in _CACHE if k not in live]:
                _CACHE.pop(k, None)
    return [dict(r) for r in rows]
