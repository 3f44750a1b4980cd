"""A large upload through a real browser (issue 16): Debian chromium (playwright) sends a file
to the Data page; we time it until the page says it is loaded and sample the memory of the app
process and of its children (the reader) meanwhile.

    python -m bench.upload [--cells 1000000] [--served serve.py|app.py]

``serve.py`` (``make run``) streams the upload to disk through our own route; ``app.py`` alone
uses Streamlit's in-memory ``st.file_uploader``: run both for the comparison. The file is
bench.scale's synthetic counts (2,000 genes, ~10% non-zero; 1.6 GB at 1M cells). Rows are merged
into bench/results/upload.json by (served, cells).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "results"
CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _rss(pid: int) -> int:
    """Resident bytes of ``pid`` (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Every descendant: children hang off the thread that started them (Streamlit runs the
    page in a script thread), so each thread's list is read."""
    kids = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            kids += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return kids + [g for k in kids for g in _children(k)]


class Sampler(threading.Thread):
    """Peak resident memory of the app process and of its largest child, every 0.1 s."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.app_peak, self.child_peak, self.stop = pid, 0, 0, False
        self.timeline: list[tuple[float, int]] = []  # (s, app MB) every second

    def run(self) -> None:
        t0 = time.perf_counter()
        while not self.stop:
            rss = _rss(self.pid)
            self.app_peak = max(self.app_peak, rss)
            t = time.perf_counter() - t0
            if not self.timeline or t - self.timeline[-1][0] >= 1:
                self.timeline.append((round(t, 1), round(rss / 2**20)))
            for kid in _children(self.pid):
                self.child_peak = max(self.child_peak, _rss(kid))
            time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cells", type=int, default=1_000_000)
    ap.add_argument("--served", choices=["serve.py", "app.py"], default="serve.py")
    args = ap.parse_args()
    from playwright.sync_api import expect, sync_playwright

    from bench.scale import data_file

    source = data_file(args.cells)
    with tempfile.TemporaryDirectory() as tmp:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "SCWB_HOME": str(Path(tmp) / "home"), "SCWB_BENCHMARK": "0"}
        with open(Path(tmp) / "streamlit.log", "w") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "streamlit", "run", args.served, "--server.port", str(port)],
                cwd=ROOT,
                env={**env, "PYTHONPATH": str(ROOT)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            url = f"http://127.0.0.1:{port}"
            for _ in range(120):
                try:
                    if urllib.request.urlopen(f"{url}/_stcore/health", timeout=1).status == 200:
                        break
                except OSError:
                    time.sleep(0.5)
            base = _rss(proc.pid)
            sampler = Sampler(proc.pid)
            sampler.start()
            row = {
                "served": args.served,
                "cells": args.cells,
                "file_mb": round(source.stat().st_size / 2**20, 1),
            }
            try:
                with sync_playwright() as pw:
                    browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
                    page = browser.new_page(viewport={"width": 1400, "height": 1400})
                    page.goto(f"{url}/data")
                    expect(page.locator('input[type="file"]')).to_be_attached(timeout=60_000)
                    t0 = time.perf_counter()
                    page.locator('input[type="file"]').set_input_files(str(source))
                    load = page.get_by_role("button", name="Load file")
                    expect(load).to_be_enabled(timeout=1_800_000)
                    row["upload_s"] = round(time.perf_counter() - t0, 1)
                    row["app_peak_upload_mb"] = round(sampler.app_peak / 2**20)
                    row["app_after_upload_mb"] = round(_rss(proc.pid) / 2**20)
                    sampler.app_peak = 0  # from here: the load's peak
                    t1 = time.perf_counter()
                    load.click()
                    expect(page.get_by_text(f"Loaded {args.cells:,} cells")).to_be_visible(
                        timeout=1_800_000
                    )
                    row["load_s"] = round(time.perf_counter() - t1, 1)
                    page.wait_for_timeout(5000)
                    row["app_after_load_mb"] = round(_rss(proc.pid) / 2**20)
                    page.screenshot(
                        path=str(OUT / f"upload_loaded_{Path(args.served).stem}.png"),
                        full_page=True,
                    )
                    browser.close()
            except Exception as exc:  # keep the figures measured so far
                row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
            finally:
                sampler.stop = True
                sampler.join()
                proc.terminate()
                proc.wait(timeout=30)
                row["streamlit_log_tail"] = (Path(tmp) / "streamlit.log").read_text()[-1500:]
        row |= {
            "app_base_mb": round(base / 2**20),
            "app_peak_load_mb": round(sampler.app_peak / 2**20),
            "reader_child_peak_mb": round(sampler.child_peak / 2**20),
            "app_mb_timeline": sampler.timeline,
        }
    print(json.dumps(row, indent=1))
    OUT.mkdir(exist_ok=True)
    path = OUT / "upload.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    rows = old.get("rows", [{"served": "app.py", **old}] if old else [])
    rows = [r for r in rows if (r.get("served"), r["cells"]) != (args.served, args.cells)]
    path.write_text(json.dumps({"rows": [*rows, row]}, indent=1))


if __name__ == "__main__":
    main()
