"""Train and Runs through AppTest: defaults from the data, choices kept per session, the time
estimate before Submit, and Runs controls that follow each run's current state."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine import datasets, estimate, jobs, models, runs, workspace
from tests.conftest import ROOT

T = 60


@pytest.fixture(autouse=True)
def _no_background_benchmark(monkeypatch):
    monkeypatch.setenv("SCWB_BENCHMARK", "0")  # tests/test_estimate.py runs the real one


def app(page: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py")
        at.run()
    ok(at)
    return at


def reopen(page: str, **params) -> AppTest:
    """``page`` opened in a new session on an address with ``params`` (a browser refresh)."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    at.switch_page(f"pages/{page}.py").run()
    ok(at)
    return at


def ok(at) -> None:
    assert not at.exception, [e.message for e in at.exception]
    assert not [e.value for e in at.error], [e.value for e in at.error]


def box(at, label: str):
    return next(s for s in at.selectbox if s.label == label)


def button(at, label: str):
    return next(b for b in at.button if b.label == label)


@pytest.fixture
def seurat_like(lognorm_adata):
    """orig.ident first; 'stimulated' is the most frequent condition (listed first)."""
    a = lognorm_adata.copy()
    rng = np.random.default_rng(0)
    cond = np.where(rng.random(a.n_obs) < 0.6, "stimulated", "control")
    a.obs = pd.DataFrame(
        {
            "orig.ident": pd.Categorical(rng.choice(["SeuratProject", "pbmc2"], a.n_obs)),
            "nCount_RNA": rng.gamma(2, 1000, a.n_obs),
            "condition": pd.Categorical(cond),
            "cell_type": a.obs["cell_type"].to_numpy(),
        },
        index=a.obs_names,
    )
    name = datasets.save(a, "seurat_like", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    return a


@pytest.fixture
def submitted(monkeypatch):
    """What Submit hands to the job queue (no worker is started)."""
    specs: list[dict] = []

    def fake_submit(spec, root=None):
        specs.append(spec.to_dict())
        d = workspace.runs_dir() / f"fake-{len(specs)}"
        d.mkdir(parents=True)
        return d

    monkeypatch.setattr(jobs, "submit", fake_submit)
    return specs


def test_perturb_form_defaults_come_from_the_data(seurat_like, submitted):
    at = app("train")
    at.radio[0].set_value("perturb").run()
    ok(at)
    assert box(at, "Condition column").value == "condition"
    assert box(at, "Control value").value == "control"
    assert box(at, "Stimulated value").value == "stimulated"
    assert box(at, "Cell-type column").value == "cell_type"
    target = box(at, "Cell type to predict")
    counts = pd.crosstab(seurat_like.obs["cell_type"], seurat_like.obs["condition"])
    assert target.value == counts.sum(axis=1).idxmax() != "all"
    assert target.options[-1].startswith("every cell type, leave-one-out")
    assert any("control → stimulated" in c.value for c in at.caption)
    button(at, "Submit").click().run()
    ok(at)
    (spec,) = submitted
    assert (spec["ctrl"], spec["stim"], spec["predict"]) == ("control", "stimulated", target.value)
    assert (spec["condition_key"], spec["cell_type_key"]) == ("condition", "cell_type")
    assert spec["epochs"] == models.get("scgen").epochs  # explicit, from the estimate


def test_perturb_form_offers_both_stimulation_vectors_and_outputs(seurat_like, submitted):
    at = app("train")
    at.radio[0].set_value("perturb").run()
    delta = box(at, "delta")
    assert delta.value == "paired" and list(delta.options) == ["paired", "sampled"]
    delta.set_value("sampled").run()
    output = box(at, "output")
    default = models.get("scgen").params["output"].default
    assert output.value == default and list(output.options) == ["decoded", "residual"]
    output.set_value("residual" if default == "decoded" else "decoded").run()
    button(at, "Submit").click().run()
    ok(at)
    assert submitted[0]["params"]["delta"] == "sampled"
    assert submitted[0]["params"]["output"] == output.value


def test_leave_one_out_is_an_explicit_choice(seurat_like, submitted):
    at = app("train")
    at.radio[0].set_value("perturb").run()
    box(at, "Cell type to predict").set_value("all").run()
    button(at, "Submit").click().run()
    ok(at)
    assert submitted[0]["predict"] == "all"


def test_classifier_label_is_the_cell_type_column_not_orig_ident(seurat_like, submitted):
    at = app("train")
    assert at.radio[0].value == "classify"
    assert box(at, "Label column").value == "cell_type"
    at.multiselect[0].set_value(["sk_logreg"]).run()
    button(at, "Submit").click().run()
    ok(at)
    assert submitted[0]["label_key"] == "cell_type"


def test_choices_survive_leaving_train_and_are_per_session(seurat_like):
    at = app("train")
    at.radio[0].set_value("perturb").run()
    box(at, "Cell type to predict").set_value("B cell").run()
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/train.py").run()
    ok(at)
    assert at.radio[0].value == "perturb"
    assert box(at, "Cell type to predict").value == "B cell"
    other = app("train")  # another browser session starts from its own defaults
    assert other.radio[0].value == "classify"


def test_train_task_survives_a_browser_refresh(seurat_like):
    """A browser pass: a refresh (a new session, the same URL) put the Train form back on the
    first task. The task is in the URL; the default one is not written."""
    at = app("train")
    assert "task" not in at.query_params
    at.radio[0].set_value("perturb").run()
    assert at.query_params["task"] in ("perturb", ["perturb"])
    again = reopen("train", task="perturb")
    assert again.radio[0].value == "perturb"
    assert box(again, "Cell type to predict")  # the perturbation form, not the classifier's
    assert reopen("train", task="no-such-task").radio[0].value == "classify"


def test_seeds_per_model_is_kept_per_task(seurat_like):
    """A browser pass: 3 seeds picked on Classify came back on the perturbation form."""
    at = app("train")
    seeds = lambda: next(r for r in at.radio if r.label == "Seeds per model")  # noqa: E731
    seeds().set_value(3).run()
    next(r for r in at.radio if r.label == "Task").set_value("perturb").run()
    assert seeds().value == 1
    next(r for r in at.radio if r.label == "Task").set_value("classify").run()
    assert seeds().value == 3


def test_back_to_another_task_shows_that_task_and_writes_no_entry(seurat_like):
    """A browser pass: Back from train?task=reconstruct to the Train address before it showed
    the Reconstruct form and wrote task=reconstruct back (a new history entry: the next Back
    stayed where it was). The page now follows an address changed from outside; the sidebar's
    link keeps the task chosen."""
    at = app("train")
    at.radio[0].set_value("reconstruct").run()
    assert at.query_params["task"] in ("reconstruct", ["reconstruct"])
    del at.query_params["task"]  # Back: the address before the task was picked
    at.run()
    ok(at)
    assert at.radio[0].value == "classify" and "task" not in at.query_params
    at.query_params["task"] = "perturb"  # Forward, or a link with a task
    at.run()
    assert at.radio[0].value == "perturb" and at.query_params["task"] in ("perturb", ["perturb"])
    assert at.session_state["_link:train"] == {"task": "perturb"}  # the sidebar link's params
    at.radio[0].set_value("classify").run()  # the user's own choice is written, as before
    assert "task" not in at.query_params or at.query_params["task"] in ("classify", ["classify"])


def _slow_earlier_run(model: str, cells_per_s: float) -> None:
    d = workspace.runs_dir() / f"2020-earlier-{model}"
    d.mkdir(parents=True)
    info = models.get(model)
    runs.write_json(
        d / "run.json",
        {
            "model": model,
            "data_shape": [600, 200],
            "params": info.defaults(),
            "batch_size": info.batch_size,
            "device_name": estimate.device("auto").name,
            "task": info.task,
        },
    )
    runs.write_json(
        d / "status.json",
        {"state": "completed", "cells_per_s": cells_per_s, "epoch": 50, "max_epochs": 50},
    )


def test_estimate_before_submit_and_cpu_epochs_over_the_budget(seurat_like, submitted):
    if estimate.device("auto").kind != "cpu":
        pytest.skip("the CPU budget applies on a CPU-only machine")
    _slow_earlier_run("mlp", 20.0)  # 20 cells/s: 50 epochs of 480 cells would take 20 min
    at = app("train")
    text = " ".join(m.value for m in at.markdown)
    # 50 epochs of 480 training cells are 750 optimiser steps: fewer would leave it under-trained
    assert "**mlp** · epochs: 50 (published default: longer than ~3 min on this CPU" in text
    assert "measured from 1 earlier run" in text and "about 20 min" in text
    assert "**sk_logreg** · no epochs (fitted in one step)" in text
    at.multiselect[0].set_value(["mlp", "sk_logreg"]).run()
    said = " ".join(c.value for c in at.caption)  # a browser pass saw both run at once
    assert "the networks train one after another; the scikit-learn baselines run beside" in said
    button(at, "Submit").click().run()
    ok(at)
    by_model = {s["model"]: s for s in submitted}
    n_train = int(0.8 * seurat_like.n_obs)
    expected = estimate.estimate("mlp", 200, n_train, n_classes=4, start=False).epochs
    assert by_model["mlp"]["epochs"] == expected == 50
    assert by_model["mlp"]["epochs_set_by"] is None  # published: not shortened
    assert by_model["sk_logreg"]["epochs_set_by"] is None
    # a number typed in the box wins, and the run says who set it
    next(n for n in at.number_input if n.label == "Max epochs").set_value(7).run()
    assert "**mlp** · epochs: 7 ·" in " ".join(m.value for m in at.markdown)
    at.multiselect[0].set_value(["mlp"]).run()
    button(at, "Submit").click().run()
    ok(at)
    assert submitted[-1]["epochs"] == 7 and submitted[-1]["epochs_set_by"] == "user"


# ----------------------------------------------------------------------------- Runs
def _fake_run(
    run_id: str,
    state: str,
    model: str = "mlp",
    status: dict | str | None = None,
    metrics: pd.DataFrame | None = None,
    results: bool = False,
) -> Path:
    d = workspace.runs_dir() / run_id
    d.mkdir(parents=True)
    runs.write_json(
        d / "run.json",
        {"model": model, "task": models.get(model).task, "dataset_name": "syn", "created": run_id},
    )
    if isinstance(status, str):
        (d / "status.json").write_text(status)
    elif status is not False:
        runs.write_json(d / "status.json", {"state": state, **(status or {})})
    if metrics is not None:
        runs.write_metrics_csv(d, metrics.to_dict("records"))
    if results:
        (d / "results.h5ad").write_bytes(b"")
        runs.write_json(d / "metrics.json", {"test_accuracy": 0.9})
    return d


def _early_stopped_curve(n: int = 11, best: int = 8) -> pd.DataFrame:
    val = [abs(e - best) + 1.0 for e in range(1, n + 1)]
    return pd.DataFrame({"epoch": range(1, n + 1), "train_loss": val, "val_loss": val})


def test_runs_page_every_run_state_without_raising(monkeypatch):
    _fake_run(
        "2026-01-01-a-early",
        "completed",
        status={"epoch": 11, "max_epochs": 50, "cells_per_s": 1000.0},
        metrics=_early_stopped_curve(),
        results=True,
    )
    _fake_run(  # the loop's own time is 0.2 s; the run took 7 s from start to end
        "2026-01-02-b-sklearn",
        "completed",
        "sk_logreg",
        {
            "epoch": 1,
            "max_epochs": 1,
            "elapsed_s": 0.2,
            "started": "2026-01-02T10:00:00+00:00",
            "finished": "2026-01-02T10:00:07+00:00",
        },
    )
    _fake_run("2026-01-03-c-cancelled", "cancelled", status={"epoch": 3.7, "max_epochs": 50})
    _fake_run("2026-01-04-d-failed", "failed", status={"error": "boom", "log_tail": "line"})
    _fake_run("2026-01-05-e-interrupted", "interrupted", status={"epoch": "x"})
    _fake_run("2026-01-06-f-corrupt", "?", status="{not json")
    _fake_run("2026-01-07-g-nostatus", "?", status=False)
    loo = pd.concat([_early_stopped_curve(4, 3).assign(cell_type=t) for t in ("B cell", "T cell")])
    _fake_run("2026-01-09-i-loo", "completed", "scgen", {"epoch": 8, "max_epochs": 200}, loo)
    _fake_run("20260110-045543-autoencoder-8ce0", "cancelled", "autoencoder")  # a real id length
    bad = _fake_run("2026-01-08-h-badcsv", "completed", status={"epoch": 2, "max_epochs": 2})
    (bad / "metrics.csv").write_text('epoch,train_loss\n1,"oops\n\x00\x00')
    summary = runs.summary

    def with_launcher(run_dir):  # helper "jobs" adds these to runs.summary
        row = summary(run_dir)
        return {**row, "launcher": "slurm", "job_id": f"42{len(row['id'])}"}

    monkeypatch.setattr(runs, "summary", with_launcher)
    at = app("runs")
    df = at.dataframe[0].value
    assert {"launcher", "job_id"} <= set(df.columns)
    said = dict(zip(df["run"], df["epochs"], strict=True))
    assert said["2026-01-01-a-early"] == "stopped early at epoch 11 of 50 (best epoch 8)"
    assert df.set_index("run").loc["2026-01-01-a-early", "progress"] == 100
    bar = json.loads(at.dataframe[0].proto.columns)["progress"]["type_config"]
    assert bar["format"] == "%d%%" and bar["max_value"] == 100  # "12%", not "12.12%"
    assert said["2026-01-02-b-sklearn"] == "fitted in one step"
    assert df.set_index("run").loc["2026-01-02-b-sklearn", "time"] == "7s"
    assert said["2026-01-03-c-cancelled"] == "cancelled at epoch 3 of 50"  # whole epochs
    assert said["2026-01-09-i-loo"] == "leave-one-out: 2 models trained"
    _fits(at, df)
    for run_id in df["run"]:
        at.selectbox(key="run_selected").set_value(run_id).run()
        assert not at.exception, (run_id, [e.message for e in at.exception])
        assert button(at, "Open results").disabled == (run_id != "2026-01-01-a-early"), run_id
    monkeypatch.setattr(runs, "summary", summary)
    runs._CACHE.clear()  # the listing caches still hold the rows made with the fake summary
    runs._SNAP.clear()  # (the folder snapshot too, once the runs folder is a second old)
    at = app("runs")
    no_launcher = at.dataframe[0].value
    assert "launcher" not in no_launcher.columns
    _fits(at, no_launcher, screen=True)


def _fits(at, df: pd.DataFrame, screen: bool = False) -> None:
    """Every run id fits its column (ids were cut at a fixed 195 px); without launcher columns
    the whole table fits a 1400 px screen beside the sidebar."""
    config = json.loads(at.dataframe[0].proto.columns)
    width = {k: config[k]["width"] for k in df.columns}
    longest = max(len(i) for i in df["run"])
    assert width["run"] >= 7 * longest + 20 and width["epochs"] >= 190, width
    assert not screen or sum(width.values()) <= 915, width


def test_runs_controls_follow_a_run_that_finishes_while_the_page_is_open(
    lognorm_adata, monkeypatch
):
    from engine.spec import RunSpec

    name = datasets.save(lognorm_adata, "syn")
    _fake_run("2020-01-01-older", "completed", "sk_logreg", {"epoch": 1}, results=True)
    run = jobs.submit(
        RunSpec(
            model="logreg",
            data=str(datasets.path(name)),
            dataset_name=name,
            label_key="cell_type",
            epochs=2,
        )
    )
    at = app("runs")
    sel = at.selectbox(key="run_selected")
    assert sel.value == run.name and at.subheader[0].value.split(" · ")[-1] in runs.ACTIVE
    assert not button(at, "Cancel run").disabled and button(at, "Delete run").disabled
    assert button(at, "Open results").disabled
    assert jobs.wait(run, timeout=180)["state"] == "completed"
    at.run()  # the fragment's next tick
    ok(at)
    sel = at.selectbox(key="run_selected")
    assert sel.value == run.name and at.subheader[0].value.endswith("· completed")
    assert button(at, "Cancel run").disabled and not button(at, "Delete run").disabled
    assert not button(at, "Open results").disabled
    assert any(c.value.startswith(("2 of 2 epochs", "converged")) for c in at.caption)
    assert "completed" in at.dataframe[0].value.set_index("run").loc[run.name, "state"]
    monkeypatch.setattr(runs, "RESCAN_S", 0.0)  # the listing re-reads finished runs every 5 s
    at.run()
    assert any(" · peak memory " in c.value and "MB" in c.value for c in at.caption)
    # the first pick after the state change is taken
    sel.set_value("2020-01-01-older").run()
    ok(at)
    assert at.selectbox(key="run_selected").value == "2020-01-01-older"
    assert not button(at, "Open results").disabled
    assert at.subheader[0].value.startswith("sk\\_logreg")  # Markdown-escaped names
    assert any(c.value.startswith("fitted in one step") for c in at.caption)
    # deleting the selected run moves the selection to one that exists
    button(at, "Delete run").click().run()
    ok(at)
    assert (workspace.runs_dir() / "2020-01-01-older").exists()  # asked first
    assert any("cannot be undone" in w.value for w in at.warning)
    button(at, "Yes, delete").click().run()
    ok(at)
    assert not (workspace.runs_dir() / "2020-01-01-older").exists()
    assert at.selectbox(key="run_selected").value == run.name
    # said (a browser pass: the page jumped to another run without a word), and only once
    assert "Deleted run 2020\\-01\\-01\\-older." in [s.value for s in at.success]
    assert "run" not in at.query_params  # a refresh does not look for the deleted run
    at.run()  # the page redraws every 2 s: still said for 10 s, then gone
    assert "Deleted run 2020\\-01\\-01\\-older." in [s.value for s in at.success]
    at.session_state["runs_deleted"] = ("2020-01-01-older", time.time() - 11)
    at.run()
    assert not [s.value for s in at.success if s.value.startswith("Deleted run")]
    assert json.loads((run / "run.json").read_text())["epochs"] == 2
    # Open results opens exactly the selected run
    button(at, "Open results").click().run()
    ok(at)
    assert at.query_params["run"] in (run.name, [run.name])
    assert at.selectbox[0].value == run.name  # the Results page's run selector


def test_open_results_takes_the_pick_that_came_with_the_click(lognorm_adata):
    """Several finished runs; each pick followed at once by Open results opens that run."""
    from engine import train
    from engine.spec import RunSpec

    name = datasets.save(lognorm_adata, "syn")
    ids = []
    for i, model in enumerate(("pca", "sk_logreg")):
        out = workspace.runs_dir() / f"2020-01-0{i}-{model}"
        kw = {"label_key": "cell_type"} if model == "sk_logreg" else {}
        train.run(RunSpec(model=model, data=str(datasets.path(name)), out=str(out), **kw))
        ids.append(out.name)
    for run_id in ids:
        at = app("runs")
        at.selectbox(key="run_selected").set_value(run_id)
        button(at, "Open results").click().run()  # one round trip: pick and click together
        ok(at)
        assert at.query_params["run"] in (run_id, [run_id])
        assert at.selectbox[0].value == run_id


def test_runs_page_keeps_the_picked_run_when_its_state_changes(monkeypatch):
    """A selectbox's value travels as its option's label: a label that carried the run's state
    no longer matched once the run started or ended, and the page jumped to another run (seen
    in a browser: a queued MLP picked, then sk_logreg shown as soon as the MLP started)."""
    monkeypatch.setattr(runs, "RESCAN_S", 0.0)
    _fake_run("2026-01-01-a-done", "completed", "sk_logreg", {"epoch": 1})
    picked = _fake_run("2026-01-02-b-mlp", "queued", status={"epoch": 0, "max_epochs": 50})
    _fake_run("2026-01-03-c-ae", "running", "autoencoder", {"epoch": 3, "max_epochs": 50})
    at = app("runs")
    at.selectbox(key="run_selected").set_value(picked.name).run()
    shown = at.selectbox(key="run_selected").options  # the labels the browser holds
    for state in ("running", "completed"):
        runs.write_json(picked / "status.json", {"state": state, "epoch": 5, "max_epochs": 50})
        at.run()  # the fragment's next tick
        ok(at)
        assert at.selectbox(key="run_selected").value == picked.name, state
        assert at.selectbox(key="run_selected").options == shown  # what it sends back matches
        assert at.subheader[0].value == f"mlp on syn · {state}"


def test_train_page_without_a_label_column_says_what_trains_instead(lognorm_adata):
    """An unannotated dataset: the classifier task says so and names the tasks that train
    without labels; Submit is off with the reason (it used to answer with a CLI flag)."""
    a = lognorm_adata.copy()
    a.obs = a.obs[[]].assign(n_genes=np.arange(a.n_obs))  # numeric only: no label column
    name = datasets.save(a, "unlabelled")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    next(r for r in at.radio if r.label == "Task").set_value("classify").run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "tasks Reconstruct and Embed" in errors[0], errors
    submit = button(at, "Submit")
    assert submit.disabled and "no label column" in submit.help
    next(r for r in at.radio if r.label == "Task").set_value("reconstruct").run()
    ok(at)
    assert not button(at, "Submit").disabled


def test_sidebar_lists_the_running_run_first_and_says_how_many_more(monkeypatch):
    """A browser pass: with 3 models x 3 seeds submitted, the sidebar listed six queued runs
    (newest first) and not the one running, three of them the same "mlp · queued", and no
    word of the others."""
    rows = [  # newest first, as jobs.list_jobs gives them
        {"id": f"mlp-{i:04x}", "model": "mlp", "state": "queued", "seed": i % 3}
        for i in range(8, 0, -1)
    ] + [{"id": "logreg-b571", "model": "logreg", "state": "running", "seed": 0}]
    for r in rows:
        r.update(epoch=7 if r["state"] == "running" else 0, max_epochs=50, eta_s=20)
    from types import SimpleNamespace

    from ui import sidebar

    fake = SimpleNamespace(list_jobs=lambda: [dict(r) for r in rows], resume_queue=lambda: None)
    monkeypatch.setattr(sidebar, "jobs", fake)  # the sidebar's view only: the pages see none
    at = app("data")
    shown = [p.proto.text for p in at.get("progress")]
    # Markdown-escaped (a run id is text)
    # the Runs page's words and fill (the sidebar said 'queued' with an empty bar beside the
    # table's 'running, epoch 0 of 10': a browser pass)
    assert shown[0].startswith("logreg\\-b571 · seed 0 · epoch 7 of 50 · ETA")
    assert at.get("progress")[0].proto.value == 14  # percent, as the Runs table's bar
    assert shown[1:] == [f"mlp\\-{i:04x} · seed {i % 3} · queued" for i in range(1, 6)]
    assert "+ 3 more (3 queued): see the Runs page." in [c.value for c in at.sidebar.caption]


def test_runs_page_keeps_the_picked_run_over_a_refresh():
    """A browser pass: refreshing the Runs page jumped from the picked run back to the top row.
    The pick is in the URL (a refresh is a new session with the same URL); the page's own first
    pick is not written (each write is one more press of Back)."""
    _fake_run("2020-01-01-older", "completed", "sk_logreg", {"epoch": 1}, results=True)
    _fake_run("2020-01-02-newer", "completed", "mlp", {"epoch": 3}, results=True)
    at = app("runs")
    assert at.selectbox(key="run_selected").value == "2020-01-02-newer"
    assert "run" not in at.query_params
    at.selectbox(key="run_selected").set_value("2020-01-01-older").run()
    assert at.query_params["run"] in ("2020-01-01-older", ["2020-01-01-older"])
    again = reopen("runs", run="2020-01-01-older")
    assert again.selectbox(key="run_selected").value == "2020-01-01-older"
    # Back to the bare address shows the page's own pick again, and writes nothing (it kept
    # the run picked after: a browser pass); Forward shows the pick
    del at.query_params["run"]
    at.run()
    assert at.selectbox(key="run_selected").value == "2020-01-02-newer"
    assert "run" not in at.query_params
    at.query_params["run"] = "2020-01-01-older"
    at.run()
    assert at.selectbox(key="run_selected").value == "2020-01-01-older"


def test_train_form_says_what_each_model_will_meet_before_submit(counts_adata, lognorm_adata):
    """A browser pass: a classifier on raw counts was submitted without a word, and the count
    VAE on z-scored data was refused only after Submit."""
    name = datasets.save(counts_adata, "raw")  # X: raw counts, no other layer
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("train")
    next(r for r in at.radio if r.label == "Task").set_value("classify").run()
    ok_warnings = " ".join(w.value for w in at.warning)
    assert "X holds raw counts: " in ok_warnings and "normalise first on Preprocess" in ok_warnings
    # the PCA baseline log-normalises counts itself: never warned it reads them as they are
    next(r for r in at.radio if r.label == "Task").set_value("embed").run()
    next(m for m in at.multiselect if m.label.startswith("Models")).set_value(["pca_embed"]).run()
    assert not any("would train on them" in w.value for w in at.warning)
    assert any("raw counts are log-normalised first" in c.value for c in at.caption)
    scaled = lognorm_adata.copy()
    del scaled.layers["counts"]
    x = scaled.X.toarray() if hasattr(scaled.X, "toarray") else scaled.X
    scaled.X = (x - x.mean(0)) / (x.std(0) + 1e-6)
    name = datasets.save(scaled, "scaled")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("train")
    next(r for r in at.radio if r.label == "Task").set_value("embed").run()
    next(m for m in at.multiselect if m.label.startswith("Models")).set_value(["vae"]).run()
    warned = " ".join(w.value for w in at.warning)
    assert "vae needs raw counts, and X holds scaled (z-score) with no layers['counts']" in warned
    assert "it will be refused" in warned
    assert "for the VAE, set its likelihood to gaussian" in warned  # the way out, said
    assert button(at, "Submit").disabled  # a click would only be refused
    box(at, "likelihood").set_value("gaussian").run()  # reads any values: no refusal ahead
    assert not any("needs raw counts" in w.value for w in at.warning)
    assert not button(at, "Submit").disabled


def test_a_log_layer_beside_counts_is_the_default_for_models_that_do_not_read_counts(
    counts_adata, submitted
):
    """A browser pass on Kang (counts in X, log-normalised values in layers['logcounts']):
    scGen was sent to Preprocess for logCPM, and refused on X after Submit, while the layer it
    needed was in the Input matrix box. That layer is now its default, the warnings name it,
    and Submit is off while the picked matrix would be refused."""
    import scanpy as sc

    a = counts_adata.copy()
    logs = sc.pp.log1p(sc.pp.normalize_total(a, target_sum=1e4, copy=True), copy=True)
    a.layers["logcounts"] = logs.X
    name = datasets.save(a, "counts_and_logs")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("train")
    next(r for r in at.radio if r.label == "Task").set_value("perturb").run()
    assert box(at, "Input matrix").value == "logcounts"
    assert not any("raw counts" in w.value for w in at.warning), [w.value for w in at.warning]
    box(at, "Input matrix").set_value("X").run()
    warned = " ".join(w.value for w in at.warning)
    assert "will be refused on the raw counts in X: pick layers['logcounts']" in warned, warned
    assert button(at, "Submit").disabled
    box(at, "Input matrix").set_value("logcounts").run()
    button(at, "Submit").click().run()
    ok(at)
    assert submitted and submitted[0]["layer"] == "logcounts"
    # a count model keeps X (its counts); the classifiers start on the log layer too
    next(r for r in at.radio if r.label == "Task").set_value("embed").run()
    next(m for m in at.multiselect if m.label.startswith("Models")).set_value(["vae"]).run()
    assert box(at, "Input matrix").value == "X"
    next(r for r in at.radio if r.label == "Task").set_value("classify").run()
    assert box(at, "Input matrix").value == "logcounts"


def _train_on_donors(adata, n_donors: int, task: str) -> AppTest:
    """The Train page on a copy of ``adata`` with a 'donor' column, ``task`` picked."""
    a = adata.copy()
    a.obs["donor"] = pd.Categorical([f"d{i % n_donors}" for i in range(a.n_obs)])
    name = datasets.save(a, "donors")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("train")
    next(r for r in at.radio if r.label == "Task").set_value(task).run()
    return at


def test_train_offers_held_out_donors_and_says_when_donors_are_in_both(lognorm_adata, submitted):
    """A browser pass: 0.996 accuracy on five donors, each with cells in training and test,
    and nothing said about it; no way to test on a donor the model never saw."""
    at = _train_on_donors(lognorm_adata, 5, "classify")
    test_on = box(at, "Test on")
    assert test_on.value == "(cells at random)"
    assert "held-out groups of donor" in test_on.options
    assert any(
        "groups are in training and in test, so the test score" in c.value for c in at.caption
    )
    test_on.set_value("donor").run()
    ok(at)
    assert any(c.value.startswith("5 groups of donor: whole groups go to test") for c in at.caption)
    button(at, "Submit").click().run()
    ok(at)
    assert submitted[-1]["split_by"] == "donor"


def test_a_group_column_that_holds_whole_classes_is_not_suggested(lognorm_adata, submitted):
    """A browser pass on CytOF: one sample per cluster, and Train and Results advised holding
    samples out; Submit then refused with "try another seed", which could never help."""
    a = lognorm_adata.copy()
    a.obs["sample"] = pd.Categorical("s_" + a.obs["cell_type"].astype(str))
    name = datasets.save(a, "one_sample_per_type")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("train")
    next(r for r in at.radio if r.label == "Task").set_value("classify").run()
    box(at, "Label column").set_value("cell_type").run()
    assert not any("Pick held-out groups" in c.value for c in at.caption)
    box(at, "Test on").set_value("sample").run()
    (warned,) = [w.value for w in at.warning if "whatever the seed" in w.value]
    assert "class(es) of cell\\_type are each in one sample only" in warned, warned
    button(at, "Submit").click().run()
    said = " ".join(e.value for e in at.error).replace("\\", "")
    assert "each is in one sample only, so no seed can train on it" in said, said
    assert "try another seed" not in said


def test_vae_batch_key_lists_donors_first_and_warns_on_cell_types(lognorm_adata):
    """A browser pass: the VAE's batch key opened on a blank option and offered cell_type
    without a word; a cell-type column as the batch removes the cell types."""
    at = _train_on_donors(lognorm_adata, 3, "embed")
    next(m for m in at.multiselect if m.label.startswith("Models")).set_value(["vae"]).run()
    batch = box(at, "batch key")
    assert batch.value == "" and batch.options[0] == "(none)"
    groups = [o for o in batch.options[1:] if o in ("donor", "sample")]
    assert batch.options[1 : 1 + len(groups)] == groups and "donor" in groups
    batch.set_value("cell_type").run()
    assert any("cell\\_type looks like cell types" in w.value for w in at.warning)
    # a browser pass: the batch key also held out for testing trained without a word
    batch.set_value("donor").run()
    assert not any("is also what is held out" in w.value for w in at.warning)
    box(at, "Test on").set_value("donor").run()
    assert any("donor is also what is held out for testing" in w.value for w in at.warning)
    # a cap under the KL warm-up (20 epochs): it would never train on its whole objective
    assert not any("KL warm-up" in w.value for w in at.warning)
    next(n for n in at.number_input if n.label == "Max epochs").set_value(8).run()
    (warm,) = [w.value for w in at.warning if "KL warm-up" in w.value]
    assert "(20 epochs) is longer than its 8 epochs" in warm and "only 0.40 of 1" in warm


def test_perturb_form_warns_when_the_cell_type_column_follows_the_condition(seurat_like, submitted):
    """A browser pass: 'batch' (one batch per condition) as the cell-type column said 'predicts
    how 0 responds', trained to its last epoch and failed. Said before Submit, refused on it."""
    a = seurat_like.copy()
    a.obs["batch"] = pd.Categorical(np.where(a.obs["condition"] == "control", "0", "1"))
    name = datasets.save(a, "batch_follows", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("train")
    at.radio[0].set_value("perturb").run()
    box(at, "Cell-type column").set_value("batch").run()
    ok(at)
    said = " ".join(w.value for w in at.warning).replace("\\", "")  # names escaped
    assert "No cell type of 'batch' other than" in said and "follow the condition" in said
    box(at, "Cell type to predict").set_value("0").run()  # '1' has no control cell either
    assert button(at, "Submit").disabled  # refused at Submit too (tests/test_perturb.py)
    assert "No cell type of \\'batch\\'" in button(at, "Submit").help  # escaped Markdown
    box(at, "Cell type to predict").set_value("all").run()  # leave-one-out of nothing
    assert button(at, "Submit").disabled and "nothing to hold out" in button(at, "Submit").help
    box(at, "Cell-type column").set_value("cell_type").run()  # a real cell-type column
    assert not button(at, "Submit").disabled
    box(at, "Stimulated value").set_value("control").run()  # the same value twice
    assert button(at, "Submit").disabled and "must differ" in button(at, "Submit").help
    assert not submitted


def test_held_out_donor_seeds_each_test_another_donor(lognorm_adata, submitted):
    """A browser pass: with 5 donors held out, seeds 0, 2 and 4 tested the same donor (seeds
    drew at random) and Compare counted one result three times. The form says how many
    different test sets the seeds give; each submitted seed tests another donor; the training
    cells estimated are those of the held-out split."""
    from engine import split

    at = _train_on_donors(lognorm_adata, 5, "classify")
    box(at, "Test on").set_value("donor").run()
    next(r for r in at.radio if r.label == "Seeds per model").set_value(5).run()
    ok(at)
    assert any("Each tests other groups of donor" in c.value for c in at.caption)
    button(at, "Submit").click().run()
    ok(at)
    specs = [s for s in submitted if s["split_by"] == "donor"]
    assert {s["group_split"] for s in specs} == {"rotate"}
    donors = np.array([f"d{i % 5}" for i in range(lognorm_adata.n_obs)])  # as _train_on_donors
    tested = {
        s["seed"]: tuple(sorted(set(donors[split.group_split(donors, s["seed"])["test"]])))
        for s in specs
        if s["model"] == specs[0]["model"]
    }
    assert len(tested) == 5 and len(set(tested.values())) == 5  # every donor tested once


def test_train_settings_survive_leaving_the_page(lognorm_adata, submitted):
    """A browser pass: 3 seeds, an MLP's hidden size and a VAE's batch key came back as the
    defaults after a visit to another page; a cap of 1 epoch typed for an MLP stayed for the
    autoencoder."""
    at = _train_on_donors(lognorm_adata, 3, "classify")
    next(m for m in at.multiselect if m.label.startswith("Models")).set_value(["mlp"]).run()
    next(r for r in at.radio if r.label == "Seeds per model").set_value(3).run()
    next(t for t in at.text_input if t.label == "hidden").set_value("128").run()
    next(n for n in at.number_input if n.label == "Max epochs").set_value(1).run()
    at.radio[0].set_value("embed").run()
    assert next(n for n in at.number_input if n.label == "Max epochs").value is None
    next(m for m in at.multiselect if m.label.startswith("Models")).set_value(["vae"]).run()
    box(at, "batch key").set_value("donor").run()
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/train.py").run()
    ok(at)
    assert box(at, "batch key").value == "donor"
    # seeds per model are kept per task, as Max epochs (3 seeds for a classifier came back on
    # the scGen form: a browser pass)
    assert next(r for r in at.radio if r.label == "Seeds per model").value == 1
    at.radio[0].set_value("classify").run()
    assert next(r for r in at.radio if r.label == "Seeds per model").value == 3
    assert next(t for t in at.text_input if t.label == "hidden").value == "128"
    assert next(n for n in at.number_input if n.label == "Max epochs").value == 1


def test_train_form_survives_a_browser_refresh(lognorm_adata, submitted):
    """A browser pass: the Train form was kept over page visits but not over a refresh (a new
    session): 3 seeds, the epochs cap, a model's settings and the test split came back as the
    defaults. The form is kept on disk (forms.json) as Preprocess's is; values no widget can
    take (a hand-edited file) are ignored, never break the page."""
    at = _train_on_donors(lognorm_adata, 3, "classify")
    next(m for m in at.multiselect if m.label.startswith("Models")).set_value(["mlp"]).run()
    next(r for r in at.radio if r.label == "Seeds per model").set_value(3).run()
    next(t for t in at.text_input if t.label == "hidden").set_value("64").run()
    next(n for n in at.number_input if n.label == "Max epochs").set_value(7).run()
    next(n for n in at.number_input if n.label == "Seed").set_value(11).run()
    box(at, "Test on").set_value("donor").run()
    ok(at)
    # every value the page keeps for its session is one a refresh gives back (but the task,
    # which the address carries): a widget added without a rule would be lost again
    state = at.session_state._state.filtered_state
    kept_keys = [k[5:] for k, v in state.items() if k.startswith("keep:") and v is not None]
    assert len(kept_keys) > 10, kept_keys  # (a blank number box is its default: not kept)
    saved = json.loads((workspace.home() / "forms.json").read_text())["train"]
    assert set(kept_keys) - set(saved) == {"task"}, set(kept_keys) - set(saved)

    again = app("train")  # a refresh: a new session on the same address
    assert next(m for m in again.multiselect if m.label.startswith("Models")).value == ["mlp"]
    assert next(r for r in again.radio if r.label == "Seeds per model").value == 3
    assert next(t for t in again.text_input if t.label == "hidden").value == "64"
    assert next(n for n in again.number_input if n.label == "Max epochs").value == 7
    assert next(n for n in again.number_input if n.label == "Seed").value == 11
    assert box(again, "Test on").value == "donor"
    button(again, "Submit").click().run()
    ok(again)
    assert [(s["seed"], s["epochs"], s["split_by"]) for s in submitted] == [
        (11, 7, "donor"),
        (12, 7, "donor"),
        (13, 7, "donor"),
    ]
    assert submitted[0]["params"]["hidden"] == "64"

    # damaged, of another type, out of a widget's range or not among its options: ignored
    wrong = {"n_seeds": 4, "epochs:classify": 0, "batch:classify": "big", "lr:classify": 5.0}
    wrong |= {"seed": -1, "p-mlp-hidden": 64, "p-mlp-dropout": "x", "models:classify": "mlp"}
    wrong |= {"device": "tpu", "split:donors": ["donor"], "p-nope-x": 1, "task": "embed"}
    forms = workspace.home() / "forms.json"
    for damage in ("[", json.dumps({"train": wrong}), json.dumps({"train": [1]})):
        forms.write_text(damage)
        fresh = app("train")
        assert fresh.radio[0].value == "classify"
        assert next(r for r in fresh.radio if r.label == "Seeds per model").value == 1
        assert next(n for n in fresh.number_input if n.label == "Max epochs").value is None
        assert next(n for n in fresh.number_input if n.label == "Seed").value == 0
        assert box(fresh, "Device").value == "auto"


def test_runs_page_first_shows_a_network_over_a_baseline_running_beside_it():
    """A browser test's flake: one click submitted logreg, mlp and sk_logreg; the baseline ran
    at once beside the queued network, the page picked the baseline (no curve to watch) and
    kept it. A network running or queued comes first; a baseline only when nothing else."""
    _fake_run("2026-01-01-a-done", "completed", "logreg", {"epoch": 9})
    _fake_run("2026-01-02-b-sk", "running", "sk_logreg", {"epoch": 0, "max_epochs": 1})
    queued = _fake_run("2026-01-02-c-mlp", "queued", status={"epoch": 0, "max_epochs": 50})
    at = app("runs")
    assert at.selectbox(key="run_selected").value == queued.name
    assert at.subheader[0].value == "mlp on syn · queued"


def test_results_of_a_running_run_say_whole_epochs():
    """A browser pass: Results of a running scGen said "epoch 0.41 of 12" (the worker's
    fraction); it says the Runs page's words."""
    import os

    _fake_run("2026-01-03-running", "running", "mlp", {"epoch": 0.41, "max_epochs": 12})
    runs.update_status(workspace.runs_dir() / "2026-01-03-running", pid=os.getpid())
    at = reopen("results", run="2026-01-03-running")
    said = [i.value for i in at.info if i.value.startswith("This run is")]
    assert said and "(epoch 0 of 12)" in said[0] and "0.41" not in said[0], said


def test_leave_one_out_names_the_cell_types_it_leaves_out(lognorm_adata, submitted):
    """A browser pass: 'every cell type, leave-one-out (5 models)' on 6 types; the rare one
    (7 control, 3 stimulated cells) was left out without a word."""
    a = lognorm_adata.copy()
    n = a.n_obs
    cond = np.array(["control", "stimulated"] * (n // 2))
    types = a.obs["cell_type"].astype(str).to_numpy().copy()
    types[:10] = "pDC rare"
    cond[:10] = ["control"] * 7 + ["stimulated"] * 3  # 7 control, 3 stimulated: too few
    a.obs = pd.DataFrame({"condition": cond, "cell_type": types}, index=a.obs_names)
    a.obs = a.obs.astype("category")
    name = datasets.save(a, "rare_type", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("train")
    at.radio[0].set_value("perturb").run()
    target = box(at, "Cell type to predict")
    assert "pDC rare" in target.options  # still offered alone
    target.set_value("all").run()
    said = " ".join(c.value for c in at.caption).replace("\\", "")
    assert "Leave-one-out leaves out 'pDC rare': fewer than 5 'control' or 5 'stimulated'" in said
