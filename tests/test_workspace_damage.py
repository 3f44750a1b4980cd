"""What the app reads back from its own workspace, damaged or hand-edited (a hostile-input
pass): one run's status.json, a stray file in the queue, a file where a folder belongs. Each is
one line or a value dropped, never every page and every run command stopped."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from engine import jobs, procs, queue, runs, workspace
from engine.errors import ScwbError
from tests.conftest import ROOT


def _run(name: str, status: dict, spec: dict | None = None) -> Path:
    d = workspace.runs_dir() / name
    d.mkdir()
    runs.write_json(d / "run.json", {"model": "mlp", "task": "classify", **(spec or {})})
    runs.write_json(d / "status.json", status)
    return d


def _app(page: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page(f"pages/{page}.py")
    at.run()
    return at


@pytest.mark.parametrize(
    "status, spec",
    [
        ({"state": "running", "supervisor_pid": 99999999999}, {}),
        ({"state": "running", "supervisor_pid": 1e400}, {}),
        ({"state": "running", "supervisor_pid": -1, "pid": 0}, {}),
        ({"state": "queued"}, {"submitted_ns": "yesterday"}),
        ({"state": "queued"}, {"submitted_ns": 1e30}),
        ({"state": "running", "epoch": "abc", "max_epochs": -3, "device": ["cpu"]}, {}),
        ({"state": "completed", "started": "2026-11-28T03:33:35", "epoch": 1e400}, {}),
    ],
)
def test_one_damaged_status_stops_neither_the_app_nor_the_run_commands(status, spec):
    d = _run("bad", status, spec)
    _run("good", {"state": "completed", "epoch": 2, "max_epochs": 2})
    rows = {r["id"]: r for r in jobs.list_jobs()}
    assert set(rows) == {"bad", "good"}
    row = rows["bad"]
    for k in ("epoch", "max_epochs", "cells_per_s", "eta_s"):
        assert row.get(k) is None or isinstance(row[k], int | float), (k, row[k])
    assert row.get("device") is None or isinstance(row["device"], str)
    out = subprocess.run(
        [sys.executable, "-m", "engine", "runs"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "good" in out.stdout, out.stderr
    for page in ("data", "runs"):
        at = _app(page)
        assert not at.exception, (page, [e.message for e in at.exception])
    # the run can be cancelled or deleted: one line, not a traceback
    with contextlib.suppress(ScwbError):
        jobs.cancel("bad")
    # nothing runs it: a cancelled or unknown run settles at once (30 s of waiting here was
    # 3 of CI's 30 minutes)
    jobs.wait(d, timeout=2)


def test_a_pid_of_minus_one_or_zero_is_never_alive():
    assert not procs.pid_alive(-1) and not procs.pid_alive(0) and not procs.pid_alive(1e400)
    assert procs.pid_alive(os.getpid())


def test_a_job_id_that_is_an_option_never_reaches_scancel(tmp_path, monkeypatch):
    log = tmp_path / "called"
    fake = tmp_path / "scancel"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    assert not procs.scancel("--me")
    assert not log.exists()
    assert procs.scancel("12345_7") and log.read_text().strip() == "12345_7"
    d = _run("slurm", {"state": "queued", "launcher": "slurm", "job_id": "--me"})
    assert "job_id" not in runs.read_status(d)  # dropped when read


def test_a_stray_file_in_the_queue_folder_is_not_a_queued_run(lognorm_file):
    from engine.spec import RunSpec

    qdir = queue.queue_dir(workspace.runs_dir(), "somehost")
    qdir.mkdir(parents=True)
    (qdir / "notes.txt").write_text("x")
    assert queue.queue_items(qdir) == []
    run = jobs.submit(RunSpec(model="sk_logreg", data=lognorm_file, label_key="cell_type"))
    assert jobs.wait(run, timeout=300)["state"] == "completed"


def test_a_file_where_the_runs_folder_belongs_is_one_line():
    (workspace.home() / "runs").write_text("not a folder")
    with pytest.raises(ScwbError, match="is not a folder|cannot be the workspace"):
        workspace.runs_dir()
    out = subprocess.run(
        [sys.executable, "-m", "engine", "runs"], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2 and out.stderr.count("\n") == 1, out.stderr


def test_names_from_runs_are_text_on_the_runs_page():
    _run(
        "md",
        {"state": "failed", "error": "![x](http://127.0.0.1:9/e.png)", "device": "**cpu**"},
        {"dataset_name": "PBMC ![t](http://127.0.0.1:9/label.png)"},
    )
    at = _app("runs")
    assert not at.exception
    shown = json.dumps(
        [e.value for kind in ("subheader", "error", "caption") for e in getattr(at, kind)]
    )
    assert "![t](" not in shown and "![x](" not in shown and "\\\\!\\\\[t\\\\]" in shown


def test_an_error_no_page_caught_is_one_line_and_the_log_has_it(monkeypatch, caplog):
    """The last net under every page (in the tests SCWB_PAGE_ERRORS=raise keeps crashes as
    exceptions, so that no test passes over one)."""
    from engine import metric_names
    from ui import sidebar

    monkeypatch.delenv("SCWB_PAGE_ERRORS")
    _run("ok", {"state": "completed", "epoch": 2, "max_epochs": 2})
    runs.write_json(workspace.runs_dir() / "ok" / "metrics.json", {"test_accuracy": 0.9})

    def broken(*a, **k):
        raise RuntimeError("a bug\nwith a second line")

    monkeypatch.setattr(metric_names, "headline_first", broken)
    monkeypatch.setattr(sidebar, "draw", broken)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params["run"] = "ok"
    at.run()
    at.switch_page("pages/results.py").run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert errors.count("Unexpected RuntimeError: a bug") == 2, errors  # sidebar and page
    assert any("The page stopped here" in c.value for c in at.caption)


def test_compare_passes_over_a_seed_or_a_metric_no_float_holds(tmp_path):
    from engine import seeds

    dirs = []
    for i, (seed, acc) in enumerate(((float("inf"), 0.9), (0, 10**400), (1, 0.8))):
        d = tmp_path / f"r{i}"
        d.mkdir()
        runs.write_json(d / "run.json", {"model": "mlp", "seed": 0, "label_key": "t"})
        (d / "run.json").write_text(
            json.dumps({"model": "mlp", "label_key": "t"})[:-1] + f', "seed": {json.dumps(seed)}}}'
        )
        (d / "metrics.json").write_text(f'{{"test_accuracy": {acc}, "test_f1_macro": 0.5}}')
        runs.update_status(d, state="completed")
        dirs.append(d)
    (config,) = seeds.group(dirs)
    assert config.seeds == [0, 1] and "test_accuracy" not in config.runs[0]


def test_a_link_to_a_deleted_run_says_so_and_its_downloads_refuse(tmp_path):
    """A hostile-input pass: Results opened on a deleted run's link showed the newest run
    without a word; a download clicked after the run was deleted in another tab gave a zip of
    a script replaying '{}' and a CSV of its header alone."""
    from engine import export

    _run("kept", {"state": "completed", "epoch": 2, "max_epochs": 2})
    runs.write_json(workspace.runs_dir() / "kept" / "metrics.json", {"test_accuracy": 0.9})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params["run"] = "deleted-run"
    at.run()
    at.switch_page("pages/results.py").run()
    assert not at.exception
    (warning,) = [w.value for w in at.warning if "There is no run" in w.value]
    assert "deleted\\-run" in warning and "showing kept instead" in warning
    gone = tmp_path / "gone"
    gone.mkdir()
    for call in (export.script, export.metrics_csv, export.bundle):
        with pytest.raises(ScwbError, match="deleted"):
            call(gone)


def test_results_says_the_split_and_the_batch_key_a_run_used():
    """A browser pass: a VAE's batch key and its held-out groups were only in run.json."""
    spec = {"model": "vae", "task": "embed", "seed": 0, "split_by": "donor",
            "params": {"batch_key": "sample_id"}}  # fmt: skip
    _run("vae-run", {"state": "completed", "epoch": 2, "max_epochs": 2}, spec)
    runs.write_json(workspace.runs_dir() / "vae-run" / "metrics.json", {"test_elbo": -1.0})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.query_params["run"] = "vae-run"
    at.run()
    at.switch_page("pages/results.py").run()
    said = " ".join(c.value for c in at.caption)
    assert "held\\-out groups of donor · batch key sample\\_id" in said, said


def test_dataset_files_hand_edited_or_replaced_are_one_line(lognorm_adata, tmp_path):
    from engine import datasets

    key = datasets.save(lognorm_adata, "pbmc")
    meta = workspace.datasets_dir() / f"{key}.json"
    runs.write_json(meta, {**runs.read_json(meta, {}), "x_kind": ["counts"], "n_obs": "many"})
    (row,) = datasets.list_datasets()
    assert row["x_kind"] is None and row["n_obs"] is None
    out = subprocess.run(
        [sys.executable, "-m", "engine", "datasets", "list"], capture_output=True, text=True
    )
    assert out.returncode == 0 and key in out.stdout, out.stderr
    h5ad = workspace.datasets_dir() / f"{key}.h5ad"
    h5ad.unlink()
    h5ad.mkdir()
    with pytest.raises(ScwbError, match="is a folder, not a dataset file"):
        datasets.delete(key)
    fifo = tmp_path / "pipe.h5ad"
    os.mkfifo(fifo)
    out = subprocess.run(
        [sys.executable, "-m", "engine", "info", str(fifo)], capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "is not a regular file" in out.stderr, out.stderr


def _reopen(page: str, **params) -> AppTest:
    """``page`` in a new session on an address with ``params`` (a browser refresh)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def test_compare_keeps_its_task_and_runs_over_a_refresh():
    """A browser pass: a refresh put Compare back on its first task and two newest runs. A
    review: with the address as the widgets' default, every second click was lost."""
    for i, (model, task) in enumerate((("mlp", "classify"),) * 4 + (("vae", "embed"),) * 2):
        d = _run(f"r{i}", {"state": "completed", "epoch": 2, "max_epochs": 2},
                 {"model": model, "task": task, "seed": i})  # fmt: skip
        runs.write_json(d / "metrics.json", {"test_accuracy": 0.9, "latent_knn_accuracy": 0.8})
    at = _app("compare")
    assert "task" not in at.query_params and "run" not in at.query_params  # defaults unwritten
    at.multiselect[0].set_value(["r0", "r2"]).run()
    assert at.query_params["run"] == ["r0", "r2"]
    at.multiselect[0].set_value(["r0", "r2", "r3"]).run()  # a second click in a row
    at.multiselect[0].set_value(["r0", "r1", "r2", "r3"]).run()
    assert at.multiselect[0].value == ["r0", "r1", "r2", "r3"]
    assert at.query_params["run"] == ["r0", "r1", "r2", "r3"]
    at.radio[0].set_value("embed").run()
    at.radio[0].set_value("classify").run()
    at.radio[0].set_value("embed").run()
    assert at.radio[0].value == "embed" and at.query_params["task"] in ("embed", ["embed"])
    assert _reopen("compare", run=["r0", "r2", "gone"]).multiselect[0].value == ["r0", "r2"]
    fresh = _reopen("compare", task="embed")
    assert fresh.radio[0].value == "embed" and fresh.multiselect[0].value == ["r5", "r4"]


def test_status_fields_the_engine_writes_survive_the_cleaning():
    """A review: the cleaning dropped the SLURM requeue count (an int) and a Gaussian VAE's
    negative losses; slot 0 and an array task's job id are kept too."""
    d = _run(
        "ok",
        {"state": "queued", "requeued": 2, "train_loss": -3.5, "val_loss": -1.0, "slot": 0,
         "job_id": "12345_7", "started": runs.now(), "stopped_early": True},
    )  # fmt: skip
    st = runs.read_status(d)
    assert (st["requeued"], st["train_loss"], st["val_loss"], st["slot"]) == (2, -3.5, -1.0, 0)
    assert st["job_id"] == "12345_7" and st["stopped_early"] is True and st["started"]


def test_a_dataset_file_damaged_on_disk_is_refused_before_anything_reads_it(
    lognorm_adata, tmp_path
):
    """A workspace dataset is trusted as it was imported only while its file is the one saved:
    damaged, it is one line at submit (nothing queued) and on the pages that would read it in
    the server; replaced by other data, it is named as changed; its record damaged or written
    before records kept the file's size, it is read again in a child and the record repaired."""
    from engine import datasets, io

    key = datasets.save(lognorm_adata, "pbmc")
    h5ad, meta = datasets.path(key), workspace.datasets_dir() / f"{key}.json"
    fp = runs.read_json(meta, {})["fingerprint"]
    assert datasets.fingerprint(key) == fp

    # a damaged record, and one from before records kept the file's size: read, then repaired
    record = runs.read_json(meta, {})
    legacy = {k: v for k, v in record.items() if not k.startswith("file_")}
    runs.write_json(meta, {**legacy, "fingerprint": "../../etc"})
    assert datasets.fingerprint(key) == fp
    assert runs.read_json(meta, {}) == record

    # other data under the same key
    other = lognorm_adata[:50].copy()
    io.write_h5ad(other, h5ad)
    with pytest.raises(ScwbError, match="no longer holds the data it was saved with"):
        datasets.fingerprint(key)

    # damaged bytes: one line at submit, nothing queued, and one line on a page
    h5ad.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(4000))
    out = subprocess.run(
        [sys.executable, "-m", "engine", "submit", "--data", key, "--model", "sk_logreg",
         "--label-key", "cell_type"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("error: ") and len(out.stderr.strip().splitlines()) == 1
    assert "Traceback" not in out.stderr
    assert not any(workspace.runs_dir().iterdir())
    for page in ("explore", "train"):
        at = _app(page)
        assert not at.exception, [e.message for e in at.exception]
        assert any("pbmc" in e.value for e in at.error), [e.value for e in at.error]
    at = _app("data")  # and it can still be deleted there
    at.button(key="delete_dataset").click().run()
    at.button(key="confirm_delete_dataset-yes").click().run()
    assert not at.exception and not datasets.exists(key)


def test_an_error_in_a_fragment_is_one_line_there_and_the_page_goes_on(monkeypatch, caplog):
    """A fragment's own reruns (the sidebar's runs every 3 s, the Runs table every 2 s) run
    outside the page's net: each fragment has its own, and what follows it is drawn."""
    from ui import sidebar

    monkeypatch.delenv("SCWB_PAGE_ERRORS")
    _run("busy", {"state": "running", "epoch": 1, "max_epochs": 4, "eta_s": 30})

    def broken(*a, **k):
        raise RuntimeError("a poll broke\nsecond line")

    monkeypatch.setattr(sidebar, "esc", broken)  # the sidebar's name for it: its fragment only
    at = _app("runs")
    assert not at.exception
    assert [e.value for e in at.sidebar.error] == ["Unexpected RuntimeError: a poll broke"]
    assert "busy" in at.dataframe[0].value["run"].tolist()  # the page under it
    assert "the fragment active_runs failed" in caplog.text


def test_a_dataset_is_checked_against_its_values_as_stored_and_once_per_state(monkeypatch):
    """A review: the re-check hashed the values after the reader's clean-up (unsorted sparse
    indices sorted), so a healthy dataset without a stamp read as 'changed'; a damaged file
    or a lost record was read again in a child on every page rerun."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    from engine import datasets, reader

    x = sp.csr_matrix((np.array([1.0, 2.0], np.float32), np.array([2, 0]), np.array([0, 2, 2])))
    assert not x.has_sorted_indices
    key = datasets.save(ad.AnnData(x, obs={"t": ["a", "b"]}), "unsorted")
    meta = workspace.datasets_dir() / f"{key}.json"
    record = runs.read_json(meta, {})
    runs.write_json(meta, {k: v for k, v in record.items() if not k.startswith("file_")})
    assert datasets.fingerprint(key) == record["fingerprint"]  # not "changed"
    meta.unlink()  # a record lost: read once, then this much of it kept again
    assert datasets.fingerprint(key) == record["fingerprint"]
    assert runs.read_json(meta, {})["file_size"] == datasets.path(key).stat().st_size
    datasets.path(key).write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(3000))  # damaged
    reads = []
    real = reader.run_child
    monkeypatch.setattr(reader, "run_child", lambda *a, **k: reads.append(a) or real(*a, **k))
    for _ in range(3):
        with pytest.raises(ScwbError, match="not a readable .h5ad"):
            datasets.fingerprint(key)
    assert len(reads) == 1  # once per state of the file, not once per page rerun
