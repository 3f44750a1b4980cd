"""The main flow in a real browser: Debian chromium driven by playwright against `streamlit run`.

upload a file -> see its summary -> preprocess -> train two models -> watch the loss curve move
on Runs. Screenshots of each page land in docs/screenshots/ (look at them).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.browser
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
# docs/screenshots is refreshed on purpose (SCWB_SCREENSHOTS=docs/screenshots), never by a plain test run
SHOTS = Path(os.environ.get("SCWB_SCREENSHOTS") or Path(tempfile.gettempdir()) / "scwb-screenshots")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def no_benchmark(monkeypatch):
    """Request before ``server``: the app measures no warm-up benchmark in the background."""
    monkeypatch.setenv("SCWB_BENCHMARK", "0")


@pytest.fixture
def server(workspace, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed (.ci/run installs it)")
    pytest.importorskip("playwright.sync_api")
    port = _free_port()
    env = {**os.environ, "SCWB_HOME": str(workspace), "PYTHONPATH": str(ROOT)}
    log_path = tmp_path / "streamlit.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "serve.py"]
            + ["--server.port", str(port), "--server.headless", "true"],
            cwd=ROOT,
            env=env,
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
        else:
            proc.kill()
            pytest.fail("streamlit did not start")
        yield url
        proc.terminate()
        proc.wait(timeout=20)
    # shown by pytest only when the test failed: the server's side of the story
    print(log_path.read_text()[-5000:])


def _wait_idle(page, timeout=60_000):
    page.wait_for_timeout(300)
    page.wait_for_function(
        "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')", timeout=timeout
    )


def _go(page, name: str) -> None:
    """A click on the sidebar's link to page ``name``, as a user moves between pages."""
    links = page.get_by_test_id("stSidebar").get_by_test_id("stPageLink-NavLink")
    links.filter(has=page.get_by_text(name, exact=True)).click()
    _wait_idle(page)


@pytest.fixture
def cancel_runs_after(workspace):
    """Runs a test left training are cancelled when it ends, passed or failed."""
    yield
    import contextlib

    from engine import jobs, runs
    from engine.errors import ScwbError

    for r in jobs.list_jobs():
        if r.get("state") in runs.ACTIVE:
            with contextlib.suppress(ScwbError):  # it may have ended meanwhile
                jobs.cancel(r["id"])


def test_upload_preprocess_train_watch(server, counts_file, tmp_path, cancel_runs_after):
    from playwright.sync_api import expect, sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    upload = tmp_path / "pbmc_demo_counts.h5ad"
    shutil.copy(counts_file, upload)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(server)
        expect(page.get_by_text("Train and compare deep models")).to_be_visible(timeout=60_000)
        page.screenshot(path=SHOTS / "home.png", full_page=True)

        _go(page, "Data")
        # serve.py's streaming upload box, not Streamlit's in-memory uploader
        expect(page.get_by_text("Drag and drop a file here, or click")).to_be_visible()
        expect(page.get_by_test_id("stFileUploader")).to_have_count(0)
        page.locator('input[type="file"]').set_input_files(str(upload))
        expect(page.get_by_text(f"Uploaded {Path(upload).name}")).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Load file").click()
        expect(page.get_by_text("Loaded 600 cells")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("stMetricValue").first).to_have_text("600")
        expect(page.get_by_text("Genes detected per cell").first).to_be_visible(timeout=30_000)
        page.screenshot(path=SHOTS / "data.png", full_page=True)

        _go(page, "Preprocess")
        page.get_by_role("button", name="Preview").click()
        expect(page.get_by_text("Effect of each step")).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Save", exact=True).click()
        expect(page.get_by_text("Saved as pbmc_demo_counts_pp")).to_be_visible(timeout=60_000)
        page.screenshot(path=SHOTS / "preprocess.png", full_page=True)

        _go(page, "Train")
        expect(page.get_by_text("Models (compared on the same split)")).to_be_visible(
            timeout=60_000
        )
        # the time estimate appears once the background warm-up benchmark has measured this CPU
        expect(page.get_by_text("about ", exact=False).first).to_be_visible(timeout=120_000)
        # a run long enough to be watched: on a fast CPU 60 epochs of these 600 cells took 3 s
        # and ended before the Runs page opened (no curve left to move). A small learning rate
        # keeps the validation loss falling, so early stopping leaves the MLP its 2,000 epochs
        # (the L-BFGS logistic regression ignores it); the runs are cancelled at the end.
        epochs = page.get_by_role("spinbutton", name="Max epochs")
        epochs.fill("2000")
        epochs.press("Enter")
        lr = page.get_by_role("spinbutton", name="Learning rate")
        lr.fill("0.00001")
        lr.press("Enter")
        expect(page.get_by_text("mlp · epochs: 2000").first).to_be_visible(timeout=30_000)
        _wait_idle(page)
        page.screenshot(path=SHOTS / "train.png", full_page=True)
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_text("Submitted 3 run(s)")).to_be_visible(timeout=60_000)

        _go(page, "Runs")
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=90_000)
        # the live fragment redraws the curve while the run trains: count its epoch markers
        seen = []
        for _ in range(90):
            seen.append(page.locator(".js-plotly-plot .scatterlayer .points path").count())
            if seen[-1] >= 8 and len(set(seen)) > 1:
                break
            page.wait_for_timeout(1000)
        assert len(set(seen)) > 1 and seen[-1] > seen[0], f"the curve did not move: {seen}"
        page.screenshot(path=SHOTS / "runs.png", full_page=True)
        # one press of Back per page change, back to the tab's dataset: the sidebar's links
        # carry it (putting it back in the address after a bare link was a second history
        # entry: Back stayed on Runs)
        assert "dataset=" in page.url
        page.go_back()
        expect(page.get_by_text("Models (compared on the same split)")).to_be_visible(
            timeout=60_000
        )
        assert "/train?dataset=" in page.url
        # Back to the address before a task was picked shows that task, and writes nothing
        # (the page wrote its own task back: a new entry, and the next Back stayed put)
        page.get_by_text("Reconstruct and score abnormality").first.click()
        page.wait_for_url(re.compile("task=reconstruct"), timeout=30_000)
        _wait_idle(page)
        length = page.evaluate("history.length")
        page.go_back()
        page.wait_for_url(re.compile("/train\\?dataset=[^&]*$"), timeout=30_000)
        _wait_idle(page)
        checked = page.locator('[data-testid="stRadio"] input:checked').first
        label = checked.evaluate("e => e.closest('label').innerText")
        assert label == "Classify cells" and "task=" not in page.url, (label, page.url)
        assert page.evaluate("history.length") == length
        browser.close()


def test_results_heatmaps_compare_download(server, lognorm_adata, workspace, tmp_path):
    """Open a finished run -> heatmaps -> compare two runs -> download the annotated .h5ad."""
    import anndata as ad
    from playwright.sync_api import expect, sync_playwright

    from engine import datasets, train
    from engine.spec import RunSpec

    name = datasets.save(lognorm_adata, "pbmc_like")
    for model, kw in (("autoencoder", {"epochs": 5}), ("pca", {})):
        train.run(
            RunSpec(
                model=model,
                data=str(datasets.path(name)),
                dataset_name=name,
                label_key="cell_type",
                out=str(workspace / "runs" / f"2026-{model}"),
                **kw,
            )
        )
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 2400}, accept_downloads=True)
        # a dataset loaded on a page after the sidebar was drawn: its links follow it at once
        # (they carry the tab's dataset, so that a page change is one history entry)
        page.goto(f"{server}/data?dataset={name}")
        page.get_by_role("tab", name="Bundled demo").click()
        page.get_by_role("button", name="Load demo").click()
        expect(page.get_by_text("Loaded 700 cells")).to_be_visible(timeout=90_000)
        _go(page, "Explore")
        expect(page.get_by_role("combobox", name="Dataset")).to_have_value(
            re.compile("pbmc68k_reduced"), timeout=60_000
        )
        assert "/explore?dataset=pbmc68k_reduced" in page.url
        page.go_back()  # one press: back on Data
        page.wait_for_url(re.compile("/data\\?dataset=pbmc68k_reduced"), timeout=30_000)
        page.goto(f"{server}/results?run=2026-autoencoder")
        expect(page.get_by_text("Input, reconstruction and error")).to_be_visible(timeout=90_000)
        expect(page.locator(".js-plotly-plot .heatmaplayer")).to_have_count(3, timeout=60_000)
        _wait_idle(page, timeout=120_000)
        page.screenshot(path=SHOTS / "results.png")

        _go(page, "Compare")
        expect(page.get_by_text("same test cells")).to_be_visible(timeout=60_000)
        page.screenshot(path=SHOTS / "compare.png")

        _go(page, "Results")
        expect(page.get_by_role("button", name="Annotated .h5ad")).to_be_visible(timeout=60_000)
        _wait_idle(page, timeout=120_000)
        with page.expect_download(timeout=90_000) as dl:
            page.get_by_role("button", name="Annotated .h5ad").click()
        path = tmp_path / "download.h5ad"
        dl.value.save_as(path)
        browser.close()
    res = ad.read_h5ad(path)
    assert "X_autoencoder" in res.obsm and "residual" in res.layers and "abnormality" in res.obs


def _pick(page, label: str, option: str) -> None:
    """Choose ``option`` in the Streamlit selectbox labelled ``label``, as a person does: pick,
    look, and pick again if a redraw (a live fragment's tick on a loaded machine) swallowed it."""
    box = page.get_by_role("combobox", name=label)
    for _ in range(5):
        box.click()
        box.fill(option)  # typing filters the options; Enter takes the first match
        try:
            page.get_by_role("option", name=option).first.wait_for(timeout=5_000)
        except Exception:
            page.keyboard.press("Escape")
            continue
        box.press("Enter")
        _wait_idle(page)
        if option in (box.input_value() or ""):
            return
    _wait_idle(page)


def test_untouched_forms_train_the_expected_experiment(
    no_benchmark, server, lognorm_adata, workspace, tmp_path
):
    """Upload a Seurat-like file (orig.ident first, 'stimulated' the most frequent condition),
    pick a task and submit without touching anything else."""
    import numpy as np
    import pandas as pd
    from playwright.sync_api import expect, sync_playwright

    from engine import jobs
    from engine.io import write_h5ad

    a = lognorm_adata.copy()
    rng = np.random.default_rng(0)
    a.obs = pd.DataFrame(
        {
            "orig.ident": pd.Categorical(rng.choice(["SeuratProject", "pbmc2"], a.n_obs)),
            "condition": pd.Categorical(
                np.where(rng.random(a.n_obs) < 0.6, "stimulated", "control")
            ),
            "cell_type": a.obs["cell_type"].to_numpy(),
        },
        index=a.obs_names,
    )
    counts = pd.crosstab(a.obs["cell_type"], a.obs["condition"])
    largest = counts.sum(axis=1).idxmax()
    upload = write_h5ad(a, tmp_path / "pbmc_stim.h5ad")
    SHOTS.mkdir(parents=True, exist_ok=True)

    def specs() -> dict[str, dict]:
        out = {}
        for r in jobs.list_jobs():
            out[r["model"]] = json.loads((Path(r["path"]) / "run.json").read_text())
            if r["state"] in ("queued", "running"):
                jobs.cancel(r["path"])  # only the form's choices matter here
        return out

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1600})
        page.goto(server)
        _go(page, "Data")
        # serve.py's streaming upload box, not Streamlit's in-memory uploader
        expect(page.get_by_text("Drag and drop a file here, or click")).to_be_visible()
        expect(page.get_by_test_id("stFileUploader")).to_have_count(0)
        page.locator('input[type="file"]').set_input_files(str(upload))
        expect(page.get_by_text(f"Uploaded {Path(upload).name}")).to_be_visible(timeout=60_000)
        page.get_by_role("button", name="Load file").click()
        expect(page.get_by_text(f"Loaded {a.n_obs} cells")).to_be_visible(timeout=60_000)

        _go(page, "Train")
        page.get_by_text("Predict a perturbation").click()
        _wait_idle(page)
        expect(page.get_by_text("control → stimulated")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("scgen · epochs:")).to_be_visible(timeout=30_000)
        _wait_idle(page)
        expect(page.get_by_text("logreg · epochs:")).to_have_count(0)  # no stale form left
        page.screenshot(path=SHOTS / "train_perturb.png", full_page=True)
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_text("Submitted 1 run(s)")).to_be_visible(timeout=60_000)
        scgen = specs()["scgen"]
        assert (scgen["ctrl"], scgen["stim"]) == ("control", "stimulated")
        assert scgen["predict"] == largest and scgen["predict"] != "all"
        assert isinstance(scgen["epochs"], int)

        _go(page, "Runs")
        _go(page, "Train")  # the task picked stays picked after leaving the page
        expect(page.get_by_text("control → stimulated")).to_be_visible(timeout=30_000)
        page.get_by_text("Classify cells").click()
        _wait_idle(page)
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_text("Submitted 3 run(s)")).to_be_visible(timeout=60_000)
        browser.close()
    got = specs()
    for model in ("logreg", "mlp", "sk_logreg"):
        assert got[model]["label_key"] == "cell_type", got[model]


def test_runs_controls_follow_state_and_open_the_selected_results(
    no_benchmark, server, lognorm_adata, workspace
):
    """Three finished runs and one that finishes while Runs is open: every control follows the
    run's state without a click, and Open results opens exactly the selected run."""
    from playwright.sync_api import expect, sync_playwright

    from engine import datasets, jobs, train
    from engine.spec import RunSpec

    name = datasets.save(lognorm_adata, "syn")
    finished = []
    for i, (model, kw) in enumerate(
        (("sk_logreg", {"label_key": "cell_type"}), ("pca", {}), ("pca_embed", {}))
    ):
        out = workspace / "runs" / f"2020-01-0{i + 1}-{model}"
        train.run(
            RunSpec(
                model=model, data=str(datasets.path(name)), dataset_name=name, out=str(out), **kw
            )
        )
        finished.append(out.name)
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1400})
        page.goto(f"{server}/runs")
        selector = page.get_by_role("combobox", name="Run")
        expect(selector).to_have_value(re.compile(finished[-1]), timeout=60_000)
        live = jobs.submit(
            RunSpec(
                model="mlp",
                data=str(datasets.path(name)),
                dataset_name=name,
                label_key="cell_type",
                epochs=40,
                patience=100,
                params={"hidden": "512,512"},
            )
        )
        # the new run appears in the open page; pick it while it is queued or running
        page.wait_for_timeout(4500)  # two ticks of the live fragment
        _pick(page, "Run", live.name)
        expect(selector).to_have_value(re.compile(live.name), timeout=10_000)
        cancel = page.get_by_role("button", name="Cancel run")
        delete = page.get_by_role("button", name="Delete run")
        heading = page.get_by_role("heading", name=re.compile(r"^mlp on .* · "))
        if jobs.status(live)["state"] in ("queued", "running"):
            expect(heading).to_have_text(re.compile("queued|running"))
            expect(cancel).to_be_enabled()
            expect(delete).to_be_disabled()
        # no click: the live fragment must bring every control up to date by itself, and the
        # pick stays (the selector's label no longer changes with the run's state)
        expect(heading).to_have_text(re.compile("· completed$"), timeout=240_000)
        expect(selector).to_have_value(re.compile(live.name))
        expect(cancel).to_be_disabled(timeout=10_000)
        expect(delete).to_be_enabled(timeout=10_000)
        page.wait_for_timeout(2500)
        page.screenshot(path=SHOTS / "runs_finished.png", full_page=True)
        for run_id in [live.name, *finished]:
            _pick(page, "Run", run_id)  # the first pick after the state change counts
            expect(selector).to_have_value(re.compile(run_id), timeout=10_000)
            # clicked at once: the pick travels with the click, no redraw is awaited
            page.get_by_role("button", name="Open results").click()
            expect(page).to_have_url(
                re.compile(rf"/results\?run={re.escape(run_id)}"), timeout=30_000
            )
            expect(page.get_by_role("combobox", name="Run")).to_have_value(
                re.compile(run_id), timeout=60_000
            )
            _go(page, "Runs")
            selector = page.get_by_role("combobox", name="Run")
            expect(selector).to_be_visible(timeout=30_000)
        browser.close()
