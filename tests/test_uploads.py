"""Uploads that stream to disk (ui/uploads.py, mounted by serve.py): the route and the Data page.

The route is driven in-process with Starlette's test client; the page with AppTest, as it runs
when serve.py mounted the route. The real browser path is tests/test_browser.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

pytest.importorskip("httpx2")


@pytest.fixture
def client(workspace, monkeypatch):
    from starlette.applications import Starlette
    from starlette.testclient import TestClient

    from ui import uploads

    monkeypatch.setattr(uploads, "ACTIVE", uploads.ACTIVE)  # routes() sets it: undone after
    uploads._tickets.clear()
    with TestClient(Starlette(routes=uploads.routes())) as c:
        yield c
    uploads._tickets.clear()


def _incoming(workspace):
    from engine import datasets

    return sorted(p.name for p in datasets._incoming().iterdir())


def test_a_file_streams_to_the_incoming_folder(client, workspace, counts_file):
    from ui import uploads

    token = uploads.ticket()
    body = Path(counts_file).read_bytes()
    r = client.put(f"/api/upload/{token}", params={"name": "my cells.h5ad"}, content=body)
    assert r.status_code == 200, r.text
    assert r.json()["bytes"] == len(body) and r.json()["name"] == "my cells.h5ad"
    got = uploads.received(token)
    assert got.filename == "my cells.h5ad" and got.size == len(body)
    assert got.path.read_bytes() == body and got.path.suffix == ".h5ad"
    assert [p for p in _incoming(workspace) if p.endswith(".part")] == []

    # a second file replaces the first (which is removed); a taken file outlives its ticket
    r = client.put(f"/api/upload/{token}", params={"name": "b.h5ad"}, content=b"abc")
    assert r.status_code == 200
    assert not got.path.exists() and uploads.received(token).size == 3
    last = uploads.take(token)  # Load: the file is the page's now
    assert last.path.exists() and uploads.received(token) is None and uploads.valid(token)
    uploads._tickets[token].created -= uploads.TICKET_S + 1
    uploads.ticket()  # retires the expired ticket
    assert last.path.exists() and not uploads.valid(token)  # the load owns a taken file


def test_chunked_body_without_a_length_is_streamed(client):
    from ui import uploads

    token = uploads.ticket()
    chunks = [bytes([i]) * 100_000 for i in range(30)]
    r = client.put(f"/api/upload/{token}", params={"name": "x.csv"}, content=iter(chunks))
    assert r.status_code == 200, r.text
    assert uploads.received(token).path.read_bytes() == b"".join(chunks)


@pytest.mark.parametrize(
    "name, status, says",
    [
        ("", 415, "plain name"),
        ("../../etc/passwd.h5ad", 415, "plain name"),
        ("a\nb.h5ad", 415, "plain name"),
        ("model.pkl", 415, "not a file type the app reads"),
        ("model.pkl.gz", 415, "not a file type the app reads"),  # the reader reads no bare .gz
        ("x" * 300 + ".h5ad", 415, "plain name"),
    ],
)
def test_bad_names_are_refused_with_one_line(client, workspace, name, status, says):
    from ui import uploads

    token = uploads.ticket()
    r = client.put(f"/api/upload/{token}", params={"name": name}, content=b"abc")
    assert r.status_code == status and says in r.json()["error"]
    assert "\n" not in r.json()["error"] and uploads.received(token) is None


def test_unknown_expired_and_busy_tickets(client, monkeypatch):
    from ui import uploads

    r = client.put("/api/upload/not-a-ticket", params={"name": "a.h5ad"}, content=b"abc")
    assert r.status_code == 404 and "reload the page" in r.json()["error"]
    token = uploads.ticket()
    uploads._tickets[token].created = time.time() - uploads.TICKET_S - 1
    assert not uploads.valid(token)
    r = client.put(f"/api/upload/{token}", params={"name": "a.h5ad"}, content=b"abc")
    assert r.status_code == 404
    # the next ticket prunes it
    uploads.ticket()
    assert token not in uploads._tickets


def test_the_size_limit_holds_with_and_without_a_declared_length(client, workspace, monkeypatch):
    from ui import uploads

    monkeypatch.setattr(uploads, "max_bytes", lambda: 1000)
    token = uploads.ticket()
    r = client.put(f"/api/upload/{token}", params={"name": "big.h5ad"}, content=b"x" * 1001)
    assert r.status_code == 413 and "larger than the upload limit" in r.json()["error"]
    # a body that hides its length (chunked) is cut off once it passes the limit
    r = client.put(
        f"/api/upload/{token}", params={"name": "big.h5ad"}, content=iter([b"x" * 600] * 3)
    )
    assert r.status_code == 413
    r = client.put(f"/api/upload/{token}", params={"name": "empty.h5ad"}, content=b"")
    assert r.status_code == 400 and "empty" in r.json()["error"]
    assert uploads.received(token) is None and _incoming(workspace) == []
    assert uploads._tickets[token].running == 0  # a refusal frees the ticket


def test_a_full_disk_is_one_line_and_leaves_nothing(client, workspace, monkeypatch):
    import errno

    from ui import uploads

    class Full:
        def __init__(self, *a, **k):
            pass

        def write(self, _):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    token = uploads.ticket()
    # a context, not monkeypatch.undo(): that would also undo the fixtures' workspace and route
    with monkeypatch.context() as m:
        m.setattr(uploads, "WRITE_BLOCK", 10)
        m.setattr("builtins.open", Full)
        r = client.put(f"/api/upload/{token}", params={"name": "a.h5ad"}, content=b"x" * 100)
    assert r.status_code == 507 and "disk is full" in r.json()["error"]
    assert _incoming(workspace) == []


def _page(monkeypatch):
    from ui import uploads

    monkeypatch.setattr(uploads, "ACTIVE", True)  # as when serve.py mounted the route
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page("pages/data.py")
    return at


def test_data_page_loads_a_streamed_upload(client, workspace, counts_file, monkeypatch):
    from engine import datasets
    from ui import uploads

    at = _page(monkeypatch)
    at.run()
    assert not at.exception
    token = at.session_state["upload_ticket"]
    assert uploads.valid(token)
    assert not at.get("file_uploader")  # Streamlit's in-memory uploader is not used
    load = next(b for b in at.button if b.label == "Load file")
    assert load.disabled

    r = client.put(
        f"/api/upload/{token}", params={"name": "pbmc.h5ad"}, content=Path(counts_file).read_bytes()
    )
    assert r.status_code == 200
    received = uploads.received(token).path
    at.run()
    assert at.text_input[0].value == "pbmc"
    next(b for b in at.button if b.label == "Load file").click().run()
    assert not at.exception and not at.error
    assert any("Loaded 600 cells" in s.value for s in at.success)
    assert [d["name"] for d in datasets.list_datasets()] == ["pbmc"]
    # the received file is gone; the same ticket takes the next file, in a new, empty box
    assert not received.exists() and uploads.received(token) is None and uploads.valid(token)
    assert at.session_state["upload_round"] == 1


@pytest.mark.parametrize("token", ["__abcdefghijklmn", "abcde__fghijklmn", "abcdefghij___klm"])
def test_data_page_draws_for_a_ticket_with_underscores(client, workspace, monkeypatch, token):
    """Tickets are url-safe base64, so one may hold ``__``, which Streamlit refuses in a
    component's key (the Data page crashed for about one ticket in 380)."""
    from ui import uploads

    def ticket():
        uploads._tickets[token] = uploads._Ticket()
        return token

    monkeypatch.setattr(uploads, "ticket", ticket)
    at = _page(monkeypatch)
    at.run()
    assert not at.exception
    assert at.session_state["upload_ticket"] == token and uploads.valid(token)
    r = client.put(f"/api/upload/{token}", params={"name": "a.h5ad"}, content=b"abc")
    assert r.status_code == 200
    at.run()
    assert not at.exception
    assert not next(b for b in at.button if b.label == "Load file").disabled


def test_data_page_says_when_a_waiting_upload_was_dropped(client, workspace, monkeypatch):
    from ui import uploads

    at = _page(monkeypatch)
    at.run()
    token = at.session_state["upload_ticket"]
    r = client.put(f"/api/upload/{token}", params={"name": "late.h5ad"}, content=b"abc")
    assert r.status_code == 200
    uploads.received(token).path.unlink()  # swept while the user was away
    at.run()
    assert not at.exception
    assert any("late.h5ad was dropped before it was loaded" in w.value for w in at.warning)
    assert next(b for b in at.button if b.label == "Load file").disabled


def test_data_page_bad_streamed_upload_is_one_line(client, workspace, monkeypatch):
    from engine import datasets
    from ui import uploads

    at = _page(monkeypatch)
    at.run()
    token = at.session_state["upload_ticket"]
    r = client.put(f"/api/upload/{token}", params={"name": "bad.h5ad"}, content=b"x" * 300)
    assert r.status_code == 200
    at.run()
    next(b for b in at.button if b.label == "Load file").click().run()
    assert not at.exception
    assert [e.value.replace("\\", "") for e in at.error] == [  # markdown-escaped
        "bad.h5ad is not a readable .h5ad file (truncated or not HDF5)."
    ]
    assert datasets.list_datasets() == [] and uploads.received(token) is None
    # the same box takes the next file
    assert uploads.valid(token) and at.session_state["upload_ticket"] == token


def test_a_restarted_app_gives_the_page_a_new_ticket(client, workspace, monkeypatch):
    from ui import uploads

    at = _page(monkeypatch)
    at.run()
    token = at.session_state["upload_ticket"]
    uploads._tickets.clear()  # what a restart does
    at.run()
    assert at.session_state["upload_ticket"] != token
    assert uploads.valid(at.session_state["upload_ticket"])


def test_names_are_display_only_and_any_readable_suffix_works(client, workspace):
    from ui import uploads

    for name, suffix in [
        (".h5ad", ".h5ad"),
        ("a\\b é ü\u202e.CSV.GZ", ".csv.gz"),
        ("a+b&c=#d%20?.h5ad", ".h5ad"),
    ]:
        token = uploads.ticket()
        r = client.put(f"/api/upload/{token}", params={"name": name}, content=b"abc")
        assert r.status_code == 200, (name, r.text)
        got = uploads.received(token)
        assert got.filename == name and "".join(got.path.suffixes[-2:]).endswith(suffix)
        assert got.path.parent == workspace / "datasets" / ".incoming"


def test_a_newer_upload_stops_the_older_one(client, workspace):
    """The user picked another file while one was uploading: the older one ends, leaving nothing."""
    from ui import uploads

    token = uploads.ticket()

    def body():
        yield b"x" * 1000
        uploads._tickets[token].uploads += 1  # what a second PUT on this ticket does
        yield b"y" * 1000

    r = client.put(f"/api/upload/{token}", params={"name": "old.h5ad"}, content=body())
    assert r.status_code == 409 and "newer upload" in r.json()["error"]
    assert uploads.received(token) is None and _incoming(workspace) == []
    r = client.put(f"/api/upload/{token}", params={"name": "new.h5ad"}, content=b"abc")
    assert r.status_code == 200 and uploads.received(token).filename == "new.h5ad"


def test_a_stalled_upload_is_dropped(client, workspace, monkeypatch):
    """A client that sends part of the body and then nothing (its network dropped): driven as raw
    ASGI, since the test client sends whole bodies."""
    import asyncio

    from starlette.applications import Starlette

    from ui import uploads

    monkeypatch.setattr(uploads, "STALL_S", 0.2)
    token = uploads.ticket()
    app = Starlette(routes=uploads.routes())
    sent, replies = iter([b"x" * 1000]), []

    async def receive():
        chunk = next(sent, None)
        if chunk is None:
            await asyncio.sleep(5)  # silence
        return {"type": "http.request", "body": chunk or b"", "more_body": True}

    async def send(message):
        replies.append(message)

    scope = {
        "type": "http",
        "method": "PUT",
        "path": f"/api/upload/{token}",
        "raw_path": f"/api/upload/{token}".encode(),
        "query_string": b"name=slow.h5ad",
        "headers": [(b"content-length", b"100000")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1234),
        "root_path": "",
    }
    t0 = time.perf_counter()
    asyncio.run(app(scope, receive, send))
    assert time.perf_counter() - t0 < 3
    assert replies[0]["status"] == 408 and b"stalled" in replies[1]["body"]
    assert _incoming(workspace) == [] and uploads._tickets[token].running == 0


def test_files_nobody_loads_are_bounded_and_their_pages_are_told(client, workspace, monkeypatch):
    from engine import datasets
    from ui import uploads

    monkeypatch.setattr(uploads, "max_bytes", lambda: 1000)  # 2,000 bytes waiting at most
    tokens = [uploads.ticket() for _ in range(3)]
    for i, token in enumerate(tokens):
        r = client.put(f"/api/upload/{token}", params={"name": f"{i}.h5ad"}, content=b"x" * 900)
        assert r.status_code == 200
    assert len(_incoming(workspace)) == 2  # the oldest was dropped to stay under 2,000 bytes
    with pytest.raises(uploads.Gone, match="0.h5ad was dropped before it was loaded"):
        uploads.received(tokens[0])
    assert uploads.received(tokens[0]) is None  # said once
    assert uploads.received(tokens[1]).filename == "1.h5ad"

    # a file waiting longer than the incoming folder keeps anything is dropped too
    uploads._tickets[tokens[1]].received.at -= datasets.STALE_S + 1
    uploads.ticket()
    with pytest.raises(uploads.Gone):
        uploads.received(tokens[1])
    # and one removed behind the route's back (the incoming sweep) is reported the same way
    uploads.received(tokens[2]).path.unlink()
    with pytest.raises(uploads.Gone, match="2.h5ad"):
        uploads.received(tokens[2])


def test_md_drops_text_direction_controls():
    from ui.state import md

    assert md("\u00fc\u202edaeh5.csv") == "\u00fcdaeh5.csv"
    assert md("a\u2066b\u2069c\u200f") == "abc"


def test_a_file_being_loaded_is_never_removed_by_the_route(client, workspace, monkeypatch):
    """Load takes the file: newer uploads on the ticket and the bound on waiting files leave it."""
    from ui import uploads

    monkeypatch.setattr(uploads, "max_bytes", lambda: 1000)
    token = uploads.ticket()
    assert client.put(f"/api/upload/{token}", params={"name": "a.h5ad"}, content=b"x" * 900)
    mine = uploads.take(token)
    assert client.put(f"/api/upload/{token}", params={"name": "b.h5ad"}, content=b"y" * 900)
    for _ in range(3):  # other pages' uploads past the 2,000-byte bound
        other = uploads.ticket()
        client.put(f"/api/upload/{other}", params={"name": "c.h5ad"}, content=b"z" * 900)
    assert mine.path.read_bytes() == b"x" * 900


def test_a_finished_upload_is_never_evicted_by_its_own_request(client, workspace, monkeypatch):
    """At the ticket bound, idle tickets without a file go first; one whose file is dropped
    tells its page once, even after the ticket is gone."""
    from ui import uploads

    monkeypatch.setattr(uploads, "MAX_TICKETS", 3)
    a, b, c = (uploads.ticket() for _ in range(3))
    r = client.put(f"/api/upload/{a}", params={"name": "a.h5ad"}, content=b"abc")
    assert r.status_code == 200 and uploads.received(a).size == 3 and uploads.valid(a)
    d = uploads.ticket()  # room for one more: b (no file) goes, not a
    assert uploads.valid(a) and not uploads.valid(b) and uploads.valid(d)
    for t in (c, d):
        assert (
            client.put(f"/api/upload/{t}", params={"name": "x.h5ad"}, content=b"x").status_code
            == 200
        )
    uploads.ticket()  # every ticket keeps a file: the oldest, a, goes
    assert not uploads.valid(a) and uploads.valid(c) and uploads.valid(d)
    with pytest.raises(uploads.Gone, match="a.h5ad was dropped"):
        uploads.received(a)
    assert uploads.received(a) is None
