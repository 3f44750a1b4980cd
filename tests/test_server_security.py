"""The served app (real Streamlit server, no browser needed): a websocket handshake with a
foreign Host header is refused (DNS rebinding), the app's own names are accepted."""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def port(tmp_path_factory):
    port = _free_port()
    env = {**os.environ, "SCWB_HOME": str(tmp_path_factory.mktemp("home")), "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "serve.py", "--server.port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=1)
                break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("the app did not start")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def _handshake(port: int, host: str, origin: str) -> str:
    key = base64.b64encode(os.urandom(16)).decode()
    request = (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nOrigin: {origin}\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return s.recv(4096).decode(errors="replace").splitlines()[0]


def test_foreign_host_is_refused_own_host_accepted(port):
    evil = _handshake(port, "rebind.attacker.example", "http://rebind.attacker.example")
    assert " 101 " not in evil and (" 403 " in evil or " 400 " in evil), evil
    ok = _handshake(port, f"127.0.0.1:{port}", f"http://127.0.0.1:{port}")
    assert " 101 " in ok, ok
    ok = _handshake(port, f"localhost:{port}", f"http://localhost:{port}")
    assert " 101 " in ok, ok


def test_the_streaming_upload_route_is_mounted_and_wants_a_ticket(port):
    """serve.py mounts ui/uploads.py's route; without a ticket a page handed out it takes nothing."""
    import json
    import urllib.error

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/upload/guessed?name=a.h5ad", data=b"abc", method="PUT"
    )
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 404
    assert "reload the page" in json.loads(err.value.read())["error"]
