"""Uploads that stream to disk: a route of our own beside Streamlit's (``serve.py`` mounts it).

Streamlit's ``st.file_uploader`` keeps every uploaded byte in the app's memory (a 1.6 GB file
costs the app process 3-5 GB, bench/upload.py). Here the browser sends the file as the body of
one ``PUT /api/upload/<ticket>?name=<file name>`` and the route writes it chunk by chunk into
the workspace's incoming folder: the app holds a few MB whatever the file's size.

A ticket is a random token the Data page asks for (``ticket()``) and hands to its own upload
widget only, so another site cannot send files to it. It lives a day and keeps the last file it
received until the page takes it (``take``, Load) or a newer one replaces it; a newer upload on
a ticket stops the older one (the user picked another file). Received files that nobody loads
are bounded: they wait ``datasets.STALE_S`` at most, and beyond ``2 x server.maxUploadSize`` in
all the oldest are dropped; their page hears of it once (``Gone``). Each failure is one line of
JSON (``{"error": ...}``) that the widget shows.
"""

from __future__ import annotations

import asyncio
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
SUFFIXES = io.READABLE  # what the reader reads: a bare .gz is not among them
TICKET_S = 24 * 3600  # a page left open this long asks for a new ticket (reload)
MAX_TICKETS = 512  # the oldest are dropped beyond this (each page session holds one)
WRITE_BLOCK = 8 << 20  # body chunks are gathered to this size, then written off the event loop
STALL_S = 120.0  # an upload that sends nothing for this long is dropped

ACTIVE = False  # set once the route is mounted: the Data page falls back to st.file_uploader


@dataclass
class Received:
    path: Path
    filename: str
    size: int
    seconds: float
    at: float = field(default_factory=time.time)


@dataclass
class _Ticket:
    created: float = field(default_factory=time.time)
    uploads: int = 0  # the newest upload's number: an older one still running stops
    running: int = 0
    received: Received | None = None
    lost: str | None = None  # the name of a received file that was dropped before Load


_tickets: dict[str, _Ticket] = {}
_lost: dict[str, str] = {}  # ticket -> name of a waiting file dropped with its ticket
_lock = threading.Lock()
GONE = (
    "{name} was dropped before it was loaded (an upload waits {hours} hours at most, and "
    "uploads nobody loaded keep {cap:,} MB at most): upload it again."
)


class Gone(Exception):
    """The file this ticket received was dropped before it was loaded."""


def max_bytes() -> int:
    """The same limit as Streamlit's own uploader: ``server.maxUploadSize`` (MB)."""
    from streamlit import config

    return int(config.get_option("server.maxUploadSize")) * 1024 * 1024


def ticket() -> str:
    """A new ticket for one page session's upload widget."""
    token = secrets.token_urlsafe(24)
    with _lock:
        _prune(room=True)
        _tickets[token] = _Ticket()
    return token


EXPIRED = "This upload link has expired: reload the page and upload again."


def _live(token: str | None) -> _Ticket | None:
    """The ticket, while it can take an upload (under the lock)."""
    t = _tickets.get(token or "")
    return t if t is not None and time.time() - t.created <= TICKET_S else None


def valid(token: str | None) -> bool:
    """Whether this ticket can still take an upload (an app restart forgets every ticket)."""
    with _lock:
        return _live(token) is not None


def _gone(name: str) -> Gone:
    hours, cap = datasets.STALE_S // 3600, 2 * max_bytes() // 2**20
    return Gone(GONE.format(name=name, hours=hours, cap=cap))


def received(token: str | None) -> Received | None:
    """The file this ticket received last and nobody loaded yet (None while nothing arrived).
    Raises ``Gone`` (once) when that file was dropped before it was loaded, with its ticket or
    not."""
    with _lock:
        t = _tickets.get(token or "")
        if t is None:
            name = _lost.pop(token or "", None)
            if name is not None:
                raise _gone(name)
            return None
        if t.received is not None and not t.received.path.is_file():
            t.lost, t.received = t.received.filename, None
        if t.lost is not None:
            name, t.lost = t.lost, None
            raise _gone(name)
        return t.received


def take(token: str | None) -> Received | None:
    """Hand the ticket's waiting file to the caller (Load): from here no newer upload and no
    bound on waiting files touches it; the caller removes it (``datasets.import_received``)."""
    with _lock:
        t = _tickets.get(token or "")
        r = t.received if t is not None else None
        if r is not None:
            t.received = None
    return r if r is not None and r.path.is_file() else None


def _drop(t: _Ticket) -> None:
    """Remove a ticket's received file (under the lock); the page hears of it once."""
    if t.received is not None:
        t.received.path.unlink(missing_ok=True)
        t.lost, t.received = t.received.filename, None


def _retire(token: str) -> None:
    """Remove a ticket (under the lock); a file it was keeping is reported to its page once."""
    t = _tickets.pop(token)
    _drop(t)
    if t.lost is not None:
        _lost[token] = t.lost
        while len(_lost) > 4 * MAX_TICKETS:
            _lost.pop(next(iter(_lost)))


def _prune(room: bool = False) -> None:
    """Under the lock: drop old tickets, received files past their wait, and the oldest received
    files beyond twice the upload limit in all; with ``room``, make room for one more ticket
    (idle tickets without a file go first, oldest first)."""
    now = time.time()
    for k in [k for k, t in _tickets.items() if now - t.created > TICKET_S and not t.running]:
        _retire(k)
    while room and len(_tickets) >= MAX_TICKETS:
        idle = [k for k, t in _tickets.items() if not t.running]  # oldest first
        empty = [k for k in idle if _tickets[k].received is None]
        if not idle:
            break
        _retire((empty or idle)[0])
    waiting = sorted(
        (t for t in _tickets.values() if t.received is not None), key=lambda t: t.received.at
    )
    for t in waiting:
        if now - t.received.at > datasets.STALE_S:
            _drop(t)
    waiting = [t for t in waiting if t.received is not None]
    total, cap = sum(t.received.size for t in waiting), 2 * max_bytes()
    for t in waiting:  # oldest first
        if total <= cap:
            break
        total -= t.received.size
        _drop(t)


def check_name(name: str) -> str:
    """The file's name as the browser gave it: one line, a readable suffix; else a one-line
    error. Returns the suffix the stored copy gets."""
    if not name or len(name) > 255 or "/" in name or any(ord(c) < 32 for c in name):
        raise ValueError("The file needs a plain name (no folders, at most 255 characters).")
    suffix = next((s for s in SUFFIXES if name.lower().endswith(s)), None)
    if suffix is None:
        raise ValueError(
            f"{name} is not a file type the app reads: .h5ad, 10x .h5, a zipped 10x .mtx folder, "
            ".csv or .tsv (optionally .csv.gz, .tsv.gz, .txt.gz)."
        )
    return suffix


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
    from starlette.responses import JSONResponse

    token = request.path_params["ticket"]
    with _lock:
        t = _live(token)
        if t is None:
            return JSONResponse({"error": EXPIRED}, 404)
        t.uploads += 1
        t.running += 1
        number = t.uploads
    try:
        r = await _receive(request, lambda: t.uploads != number)
    except _Refused as exc:
        with _lock:
            t.running -= 1
        return JSONResponse({"error": str(exc)}, exc.status)
    except BaseException:
        with _lock:
            t.running -= 1
        raise
    with _lock:
        t.running -= 1
        if _tickets.get(token) is not t:  # the ticket expired while the file arrived
            r.path.unlink(missing_ok=True)
            return JSONResponse({"error": EXPIRED}, 404)
        if t.uploads != number:  # a newer upload started as this one ended: it wins
            r.path.unlink(missing_ok=True)
            return JSONResponse({"error": "Replaced by the newer upload."}, 409)
        old, t.received, t.lost = t.received, r, None
        _prune()
    if old is not None and old.path != r.path:
        old.path.unlink(missing_ok=True)
    return JSONResponse({"name": r.filename, "bytes": r.size, "seconds": round(r.seconds, 1)})


async def _receive(request, replaced) -> Received:
    """Stream the body to a ``.part`` file beside its target, counting bytes; rename when whole.
    Stops when the client goes quiet for ``STALL_S`` or ``replaced()`` says a newer upload began."""
    from anyio import to_thread
    from starlette.requests import ClientDisconnect

    t0 = time.perf_counter()
    name = request.query_params.get("name", "")
    try:
        suffix = check_name(name)
    except ValueError as exc:
        raise _Refused(415, str(exc)) from None
    limit = max_bytes()
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise _Refused(400, "The upload's Content-Length is not a number.")
        if int(declared) > limit:
            raise _Refused(413, too_large(name, limit))
    target = await to_thread.run_sync(datasets.incoming_upload, f"upload{suffix}")
    if declared is not None and int(declared) > shutil.disk_usage(target.parent).free - (64 << 20):
        raise _Refused(507, io.disk_full().args[0])
    part = target.with_name(f".{target.name}.part")
    size, block = 0, bytearray()
    fh = await to_thread.run_sync(open, part, "wb")
    chunks = request.stream().__aiter__()
    try:
        while True:
            try:
                chunk = await asyncio.wait_for(chunks.__anext__(), STALL_S)
            except StopAsyncIteration:
                break
            except TimeoutError:
                raise _Refused(408, "The upload stalled: upload the file again.") from None
            if replaced():
                raise _Refused(409, "Replaced by a newer upload.")
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
