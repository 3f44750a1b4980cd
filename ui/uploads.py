"""Uploads that stream to disk: a route of our own beside Streamlit's (``serve.py`` mounts it).

Streamlit's ``st.file_uploader`` keeps every uploaded byte in the app's memory (a 1.6 GB file
costs the app process 3-5 GB, bench/upload.py). Here the browser sends the file as the body of
one ``PUT /api/upload/<ticket>?name=<file name>`` and the route writes it chunk by chunk into
the workspace's incoming folder: the app holds a few MB whatever the file's size.

A ticket is a random token the Data page asks for (``ticket()``) and hands to its own upload
widget only, so another site cannot send files to it; it lives a day, takes one upload at a
time, and remembers the last file it received until the page loads or replaces it. Each
failure is one line of JSON (``{"error": ...}``) that the widget shows.
"""

from __future__ import annotations

import contextlib
import errno
import secrets
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine import datasets, io

ROUTE = "/api/upload/{ticket}"
SUFFIXES = (".h5ad", ".h5", ".zip", ".csv", ".tsv", ".gz")  # as the in-memory uploader took
TICKET_S = 24 * 3600  # a page left open this long asks for a new ticket (reload)
MAX_TICKETS = 512  # the oldest are dropped beyond this (each page session holds one)
WRITE_BLOCK = 8 << 20  # body chunks are gathered to this size, then written off the event loop

ACTIVE = False  # set once the route is mounted: the Data page falls back to st.file_uploader


@dataclass
class Received:
    path: Path
    filename: str
    size: int
    seconds: float


@dataclass
class _Ticket:
    created: float = field(default_factory=time.time)
    busy: bool = False
    received: Received | None = None


_tickets: dict[str, _Ticket] = {}
_lock = threading.Lock()


def max_bytes() -> int:
    """The same limit as Streamlit's own uploader: ``server.maxUploadSize`` (MB)."""
    from streamlit import config

    return int(config.get_option("server.maxUploadSize")) * 1024 * 1024


def ticket() -> str:
    """A new ticket for one page session's upload widget."""
    token = secrets.token_urlsafe(24)
    with _lock:
        _prune()
        _tickets[token] = _Ticket()
    return token


def valid(token: str | None) -> bool:
    """Whether this ticket can still take an upload (an app restart forgets every ticket)."""
    with _lock:
        t = _tickets.get(token or "")
        return t is not None and time.time() - t.created <= TICKET_S


def received(token: str | None) -> Received | None:
    """The file this ticket received last (None while nothing arrived, or once it is gone)."""
    with _lock:
        t = _tickets.get(token or "")
        r = t.received if t else None
    return r if r is not None and r.path.is_file() else None


def forget(token: str | None) -> None:
    """Drop a ticket and the file it received (after the page loaded it, or replaced it)."""
    with _lock:
        t = _tickets.pop(token or "", None)
    if t is not None and t.received is not None:
        t.received.path.unlink(missing_ok=True)


def _prune() -> None:
    now = time.time()
    stale = [k for k, t in _tickets.items() if now - t.created > TICKET_S and not t.busy]
    for k in stale:
        t = _tickets.pop(k)
        if t.received is not None:
            t.received.path.unlink(missing_ok=True)
    while len(_tickets) >= MAX_TICKETS:
        # dicts keep insertion order: the first idle ticket is the oldest
        oldest = next((k for k, t in _tickets.items() if not t.busy), None)
        if oldest is None:
            break
        t = _tickets.pop(oldest)
        if t.received is not None:
            t.received.path.unlink(missing_ok=True)


def check_name(name: str) -> str:
    """The file's name as the browser gave it: one line, a known suffix; else a one-line error."""
    if not name or len(name) > 255 or any(c in name for c in "\r\n\0/\\"):
        raise ValueError("The file needs a plain name (no folders, at most 255 characters).")
    if not name.lower().endswith(SUFFIXES):
        raise ValueError(
            f"{name} is not a file type the app reads: .h5ad, 10x .h5, a zipped 10x .mtx folder, "
            ".csv or .tsv (optionally .gz)."
        )
    return name


def too_large(name: str, limit: int) -> str:
    return (
        f"{name} is larger than the upload limit of {limit // 2**20:,} MB: ask the operator to "
        "open it by its path on the server (SCWB_DATA_ROOTS), or raise server.maxUploadSize."
    )


class _Refused(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def routes() -> list:
    """The upload route, for ``st.App(routes=...)``; mounting it switches the Data page over."""
    from starlette.routing import Route

    global ACTIVE
    ACTIVE = True
    return [Route(ROUTE, _put, methods=["PUT"])]


async def _put(request):
    from anyio import to_thread
    from starlette.responses import JSONResponse

    token = request.path_params["ticket"]
    with _lock:
        t = _tickets.get(token)
        if t is None or time.time() - t.created > TICKET_S:
            return JSONResponse(
                {"error": "This upload link has expired: reload the page and upload again."}, 404
            )
        if t.busy:
            return JSONResponse({"error": "An upload is already running on this page."}, 409)
        t.busy = True
    try:
        r = await _receive(request, to_thread)
    except _Refused as exc:
        return JSONResponse({"error": str(exc)}, exc.status)
    finally:
        with _lock:
            t.busy = False
    with _lock:
        old, t.received = t.received, r
    if old is not None and old.path != r.path:
        old.path.unlink(missing_ok=True)
    return JSONResponse({"name": r.filename, "bytes": r.size, "seconds": round(r.seconds, 1)})


async def _receive(request, to_thread) -> Received:
    """Stream the body to a ``.part`` file beside its target, counting bytes; rename when whole."""
    from starlette.requests import ClientDisconnect

    t0 = time.perf_counter()
    try:
        name = check_name(request.query_params.get("name", ""))
    except ValueError as exc:
        raise _Refused(415, str(exc)) from None
    limit = max_bytes()
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "The upload's Content-Length is not a number.")
        if int(declared) > limit:
            raise _Refused(413, too_large(name, limit))
    target = await to_thread.run_sync(datasets.incoming_upload, name)
    if declared is not None and int(declared) > shutil.disk_usage(target.parent).free - (64 << 20):
        raise _Refused(507, io.disk_full().args[0])
    part = target.with_name(f".{target.name}.part")
    size, block = 0, bytearray()
    fh = await to_thread.run_sync(open, part, "wb")
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refused(413, too_large(name, limit))
            block += chunk
            if len(block) >= WRITE_BLOCK:
                await to_thread.run_sync(fh.write, block)
                block.clear()
        if block:
            await to_thread.run_sync(fh.write, block)
        await to_thread.run_sync(fh.close)
        if size == 0:
            raise _Refused(400, f"{name} is empty (0 bytes).")
        part.rename(target)
    except ClientDisconnect:
        raise _Refused(400, "The upload was interrupted: upload the file again.") from None
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise _Refused(507, io.disk_full().args[0]) from None
        raise
    finally:
        with contextlib.suppress(OSError):
            fh.close()
        part.unlink(missing_ok=True)
    return Received(target, name, size, time.perf_counter() - t0)
