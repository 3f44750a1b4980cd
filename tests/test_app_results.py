"""Results, Compare, Preprocess and Explore as a biologist meets them (issue 14), via AppTest.

Runs are trained in this process straight into the workspace (small data, few epochs), then
their folders are copied and damaged to reach every state a run folder can be in.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine import csvsafe, datasets, embedding, metric_names, runs, train, workspace
from engine import preprocess as pp
from engine.spec import RunSpec
from tests.conftest import ROOT, SCGEN_B_CELLS
from tests.test_browser import server  # noqa: F401  (the streamlit server fixture)

T = 90


def app(page: str | None = None, run: str | None = None) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    if run:
        at.query_params["run"] = run
    at.run()
    if page:
        at.switch_page(f"pages/{page}.py")
        at.run()
    assert not at.exception, [e.message for e in at.exception]
    return at


def texts(at, kind: str) -> list[str]:
    return [e.value for e in getattr(at, kind)]


def specs(at) -> list[dict]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def arr(v) -> np.ndarray:
    """A plotly JSON array: a list, or plotly 6's typed array {dtype, bdata, shape}."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        out = np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"]))
        shape = v.get("shape")
        if shape:
            out = out.reshape([int(n) for n in str(shape).split(",")])
        return out.astype(float)
    return np.asarray(v, dtype=float)


def titles(at) -> list[str]:
    return [(s["layout"].get("title") or {}).get("text", "") for s in specs(at)]


@pytest.fixture
def dataset(lognorm_adata):
    name = datasets.save(lognorm_adata, "syn", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    return name


def _finished(dataset_name: str, model: str, suffix: str = "", **kw) -> Path:
    out = workspace.runs_dir() / f"run-{model}{suffix}"
    train.run(
        RunSpec(
            model=model,
            data=str(datasets.path(dataset_name)),
            dataset_name=dataset_name,
            out=str(out),
            **kw,
        )
    )
    return out


def _forbid_whole_file(monkeypatch) -> None:
    """Fail the test if the page reads a whole results file (engine.results.load)."""
    from engine import results as results_files

    def whole_file(path):
        raise AssertionError("the Results page read the whole results file")

    monkeypatch.setattr(results_files, "load", whole_file)


def _small_scgen(dataset_name: str, n_hidden: int = 64, n_latent: int = 8) -> Path:
    """A 2-epoch scGen of a small network predicting B cells (control -> stimulated)."""
    return _finished(
        dataset_name,
        "scgen",
        epochs=2,
        **SCGEN_B_CELLS,
        params={"n_hidden": n_hidden, "n_latent": n_latent},
    )


def _wait_embedding(folder, key, method="umap", timeout=180) -> dict:
    t0 = time.time()
    while time.time() - t0 < timeout:
        state = embedding.read(folder, key, method)
        if state["state"] in ("done", "failed"):
            return state
        time.sleep(0.5)
    raise AssertionError(f"the embedding of {key} did not finish in {timeout} s")


# ----------------------------------------------------------------------------- engine helpers
@pytest.mark.parametrize(
    "value, names",
    [
        (
            json.dumps({"steps": [{"name": "normalize", "params": {"target_sum": 1e4}}]}),
            ["normalize"],
        ),
        ("log-normalised with Seurat", ["log-normalised with Seurat"]),
        (["filter_cells", "normalize"], ["filter_cells", "normalize"]),
        ({"steps": [{"name": "hvg"}]}, ["hvg"]),
        ({"normalize": {"target_sum": 1e6}}, ["normalize"]),
        (np.array(["a", "b"]), ["a", "b"]),
        (np.str_(json.dumps([{"name": "scale", "params": "x"}])), ["scale"]),
        (b"raw text", ["raw text"]),
        (3, ["3"]),
        (None, []),
        ("", []),
        # a hostile file: JSON nested past the parser's depth raised RecursionError on the
        # Preprocess page and in `preprocess`/`train`
        ("[" * 100_000 + "]" * 100_000, ["[" * 200]),
    ],
)
def test_recipe_steps_reads_any_uns_value(value, names):
    steps = pp.recipe_steps(value)
    assert [s["name"] for s in steps] == names
    assert all(isinstance(s["params"], dict) for s in steps)


ENGINE_KEYS = [
    "test_accuracy",
    "test_f1_macro",
    "test_mse",
    "train_mse",
    "genemean_test_mse",
    "test_elbo",
    "latent_knn_accuracy",
    "latent_silhouette",
    "abnormality_trained_on",
    "abnormality_others",
    "abnormality_auroc",
    "r2_mean_all",
    "r2_mean_top100",
    "r2score_mean_all",
    "r2score_mean_top100",
    "r2_var_all",
    "pearson_delta",
    "direction_top20",
    "ceiling_r2_mean_all",
]


def test_every_engine_metric_has_a_name_help_and_direction():
    for key in ENGINE_KEYS:
        m = metric_names.describe(key)
        assert m.name != key and len(m.help) > 20, key
        assert key in m.tooltip
    lower = {"test_mse", "train_mse"}
    unranked = {"abnormality_trained_on", "abnormality_others", "ceiling_r2_mean_all"}
    unranked |= {"genemean_test_mse"}  # the data's, the same for every model on one split
    for key in ENGINE_KEYS:
        expect = None if key in unranked else ("lower" if key in lower else "higher")
        assert metric_names.better(key) == expect, key
    for prefix, label in metric_names.BASELINES.items():
        m = metric_names.describe(prefix + "r2_mean_all")
        assert label in m.name and m.better == "higher"
    assert metric_names.better("beats_meanshift") is None
    unknown = metric_names.describe("some_new_metric")
    assert unknown.name == "some_new_metric" and unknown.better is None
    parts = metric_names.split_baselines(
        {
            "r2_mean_all": 0.9,
            "baseline_noshift_r2_mean_all": 0.5,
            "baseline_meanshift_r2_mean_all": 0.7,
            "ceiling_r2_mean_all": 0.98,
        }
    )
    # the noise ceiling is a property of the scored cells: every prediction meets it
    assert parts == {
        "": {"r2_mean_all": 0.9, "ceiling_r2_mean_all": 0.98},
        "baseline: control unchanged": {"r2_mean_all": 0.5, "ceiling_r2_mean_all": 0.98},
        "baseline: control + mean shift": {"r2_mean_all": 0.7, "ceiling_r2_mean_all": 0.98},
    }
    # a run scored before 2026-11-28 stored 0 for the unchanged control's change correlation and
    # direction: read as undefined, whatever was stored; the mean shift's stay as they are
    legacy = metric_names.split_baselines(
        {
            "pearson_delta": 0.6,
            "baseline_noshift_pearson_delta": 0.0,
            "baseline_noshift_direction_top20": 0.0,
            "baseline_meanshift_pearson_delta": 0.5,
        }
    )
    noshift = legacy["baseline: control unchanged"]
    assert np.isnan(noshift["pearson_delta"]) and np.isnan(noshift["direction_top20"])
    assert legacy["baseline: control + mean shift"]["pearson_delta"] == 0.5
    assert legacy[""]["pearson_delta"] == 0.6


def test_csv_cells_that_spreadsheets_would_evaluate_are_quoted():
    import pandas as pd

    for bad in ("=1+1", "+cmd", "-2+3", "@SUM(A1)", "\tx", "\rx"):
        assert csvsafe.cell(bad) == "'" + bad
    assert csvsafe.cell("B cell") == "B cell" and csvsafe.cell(-0.5) == -0.5
    df = pd.DataFrame({"run": ['=HYPERLINK("http://x")', "ok"], "=bad col": [-1.5, 2.0]})
    text = csvsafe.to_csv(df, index=False)
    assert text.splitlines()[0] == "run,'=bad col"
    assert "'=HYPERLINK" in text and "-1.5" in text and ",'-1.5" not in text


def test_embedding_leaves_out_non_finite_rows_and_runs_in_the_background(tmp_path):
    import anndata as ad

    rng = np.random.default_rng(0)
    a = ad.AnnData(X=rng.poisson(1.0, (120, 30)).astype(np.float32))
    lat = rng.normal(size=(120, 6)).astype(np.float32)
    lat[:7] = np.nan
    a.obsm["X_vae"] = lat
    a.write_h5ad(tmp_path / "results.h5ad")
    out = embedding.umap(a, "X_vae", n_max=100)
    assert out["coords"].shape == (100, 2) and out["dropped"] == 7
    assert np.isfinite(out["coords"]).all() and not set(out["cells"]) & set(range(7))
    pca = embedding.compute(tmp_path, "X", method="pca")
    assert pca["state"] == "done" and pca["coords"].shape == (120, 2)
    # detached child process: the caller returns at once and reads the cache later
    t0 = time.time()
    state = embedding.start(tmp_path, "X_vae")
    assert state["state"] == "computing" and time.time() - t0 < 5
    assert embedding.start(tmp_path, "X_vae")["state"] == "computing"  # no second child
    done = _wait_embedding(tmp_path, "X_vae")
    assert done["state"] == "done", done.get("error")
    assert done["coords"].shape == (113, 2) and done["dropped"] == 7
    bad = embedding.start(tmp_path, "no_such_key")
    assert (
        _wait_embedding(tmp_path, "no_such_key")["error"]
        == "The data has no obsm['no_such_key'] to embed."
    )
    assert bad["state"] == "computing"


# ----------------------------------------------------------------------------- preprocess
def test_preprocess_save_reopen_and_next_train(counts_file):
    from engine import io

    datasets.save(io.read(counts_file), "raw")
    at = app("preprocess")
    next(b for b in at.button if b.label == "Preview").click().run()
    next(b for b in at.button if b.label == "Save").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("Saved as raw\\_pp" in s for s in texts(at, "success"))
    # the saved dataset is now open on Preprocess, with its recipe read from uns['recipe']
    applied = next(c for c in texts(at, "caption") if c.startswith("Recipe already applied"))
    assert "filter\\_cells" in applied and "normalize" in applied
    nxt = next(b for b in at.button if b.label == "Next: Train")
    assert nxt.proto.type == "primary"
    nxt.click().run()
    assert not at.exception
    assert at.title[0].value == "Train"


@pytest.mark.parametrize("foreign", ["log-normalised by hand", ["a", "b"], 3, {"x": 1}])
def test_preprocess_page_reads_a_foreign_recipe(lognorm_adata, foreign):
    a = lognorm_adata.copy()
    a.uns["recipe"] = foreign
    name = datasets.save(a, "foreign")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("preprocess")
    assert not at.exception and not texts(at, "error")
    assert any(c.startswith("Recipe already applied") for c in texts(at, "caption"))


# ----------------------------------------------------------------------------- results
def test_results_metric_names_early_stop_and_escaping(dataset):
    run = _finished(dataset, "mlp", label_key="cell_type", epochs=3)
    spec = runs.read_json(run / "run.json")
    # as a run that EarlyStopping ended: 50 epochs asked, 3 trained
    runs.write_json(
        run / "run.json", {**spec, "epochs": 50, "dataset_name": "[x](http://evil.example) **b**"}
    )
    runs.update_status(run, stopped_early=True)  # as the engine records it
    curve = runs.read_metrics_csv(run)
    best = int(curve.loc[curve["val_loss"].idxmin(), "epoch"])
    at = app("results", run=run.name)
    info = " ".join(texts(at, "info"))
    assert f"Stopped early at epoch 3 of 50 (best epoch {best})" in info
    # the curve marks the epoch whose weights were kept, as on Runs (a pass found it only there)
    (curve_fig,) = [c for c in at.get("plotly_chart") if "Loss per epoch" in c.proto.spec]
    marks = json.loads(curve_fig.proto.spec)["layout"]["shapes"]
    assert [m["x0"] for m in marks] == [best], marks
    assert f"best epoch {best} (weights kept)" in curve_fig.proto.spec
    cap = texts(at, "caption")[0]
    assert "\\[x\\]\\(http\\://evil\\.example\\) \\*\\*b\\*\\*" in cap, cap
    cols = json.loads(at.dataframe[0].proto.columns)
    assert cols["test_accuracy"]["label"] == "Accuracy (test)"
    assert "Higher is better" in cols["test_accuracy"]["help"]


def test_a_stop_at_the_last_epoch_is_not_called_early(dataset):
    """A browser pass: an MLP capped at 20 epochs ran all 20 and Results said 'Stopped early at
    epoch 20 of 20'; Compare then left it out of the runs cut below their published epochs.
    Runs saved with that flag read as trained to their cap."""
    from engine import progress

    run = _finished(dataset, "mlp", label_key="cell_type", epochs=3)
    status = runs.read_json(run / "status.json")
    assert status["epoch"] == status["max_epochs"] == 3
    runs.update_status(run, stopped_early=True)  # as runs saved before the fix recorded it
    status = runs.read_json(run / "status.json")
    assert not progress.ended_early(status)
    assert progress.shortened(runs.read_json(run / "run.json"), status) == (3, 50)
    at = app("results", run=run.name)
    said = " ".join(texts(at, "info") + texts(at, "caption"))
    assert "Stopped early" not in said, said
    assert "Trained to its cap of 3 epochs, fewer than the 50" in said, said
    runs.update_status(run, epoch=2)  # before its cap: early
    assert progress.ended_early(runs.read_json(run / "status.json"))


def test_lbfgs_logistic_regression_says_it_converged(dataset):
    """Full-batch L-BFGS stops once the training loss stops moving and keeps its last weights
    (the optimum of a convex loss); the pages said 'stopped early (best epoch 1): the weights of
    the best epoch are kept', which was not what the run did."""
    run = _finished(dataset, "logreg", label_key="cell_type", epochs=50)
    status = runs.read_json(run / "status.json")
    assert status["optimizer"] == "lbfgs" and status["weights_kept"] == "last (converged)"
    assert status["stopped_early"] and status["epoch"] < 50  # converged well before the cap
    at = app("results", run=run.name)
    info = " ".join(texts(at, "info"))
    assert f"Converged at epoch {status['epoch']} of 50" in info and "best epoch" not in info
    assert not any("best epoch" in c.proto.spec for c in at.get("plotly_chart"))  # last kept
    # a browser pass read 'converged' over a validation curve that doubled: said why
    curve = runs.read_metrics_csv(run)
    rising = [0.47 + 0.42 * (e - 1) / (len(curve) - 1) for e in curve["epoch"]]
    runs.write_metrics_csv(
        run,
        [
            {"epoch": e, "train_loss": 0.1, "val_loss": v}
            for e, v in zip(curve["epoch"], rising, strict=True)
        ],
    )
    info = " ".join(texts(app("results", run=run.name), "info"))
    assert "The validation loss rose from 0.47 (epoch 1) to 0.89 meanwhile" in info, info
    at = app("runs")
    df = at.dataframe[0].value
    said = dict(zip(df["run"], df["epochs"], strict=True))
    assert said[run.name] == f"converged at epoch {status['epoch']} of 50"
    at.selectbox(key="run_selected").set_value(run.name).run()  # no 'best epoch' line: last kept
    assert "best epoch" not in at.get("plotly_chart")[0].proto.spec
    # two epochs are not enough to converge: said so, not 'converged'
    short = _finished(dataset, "logreg", "-short", label_key="cell_type", epochs=2)
    info = " ".join(texts(app("results", run=short.name), "info"))
    assert "had not converged after 2 epochs" in info
    # at the limit with a curve that no longer moves (a browser pass: flat from epoch 10 to
    # 40, accuracy equal to scikit-learn's, and the page said 'raise Max epochs'): said flat
    flat = [0.5 + 1e-3 / e for e in range(1, 41)]
    runs.write_metrics_csv(
        short,
        [{"epoch": e, "train_loss": v, "val_loss": v} for e, v in enumerate(flat, start=1)],
    )
    info = " ".join(texts(app("results", run=short.name), "info"))
    assert "ran to its 40-epoch limit with the training loss flat" in info, info
    assert "raise Max epochs" not in info


def test_an_unconverged_scikit_learn_baseline_and_a_shortened_run_say_so(dataset):
    """A browser pass: sk_logreg stopped at max_iter (scikit-learn's ConvergenceWarning, in the
    log only) and stood as the reference as 'fitted in one step'; a scGen cut from 100 to 42
    epochs by the CPU budget said nothing of it after training."""
    run = _finished(dataset, "sk_logreg", label_key="cell_type", params={"max_iter": 1, "C": 1e6})
    assert runs.read_json(run / "status.json")["solver_converged"] is False
    warn = " ".join(texts(app("results", run=run.name), "warning"))
    assert "stopped at its limit of 1 iterations before it converged" in warn
    fine = _finished(dataset, "sk_logreg", "-ok", label_key="cell_type")
    assert "solver_converged" not in runs.read_json(fine / "status.json")
    assert "before it converged" not in " ".join(texts(app("results", run=fine.name), "warning"))
    short = _finished(dataset, "mlp", label_key="cell_type", epochs=3, patience=100)
    at = app("results", run=short.name)
    said = " ".join(c.value for c in at.caption)
    assert "Trained to its cap of 3 epochs, fewer than the 50 of the model's published" in said
    assert "(a cap set on Train, or its time budget on a CPU)" in said  # a run made before
    # a browser pass: a cap typed on Train was said to be the Train page's time budget
    record = runs.read_json(short / "run.json")
    for who, words in (
        ("user", "(the cap was set when it was submitted)"),
        ("budget", "(the Train page shortened them to its time budget on a CPU)"),
    ):
        runs.write_json(short / "run.json", {**record, "epochs_set_by": who})
        said = " ".join(c.value for c in app("results", run=short.name).caption)
        assert words in said, said
    runs.write_json(short / "run.json", {**record, "epochs": 1})
    said = " ".join(c.value for c in app("results", run=short.name).caption)
    assert "Trained to its cap of 1 epoch, fewer" in said, said
    runs.write_json(short / "run.json", record)
    # one that stopped early before its cap was not cut short by it: nothing said
    status = runs.read_json(short / "status.json")
    runs.write_json(short / "status.json", {**status, "stopped_early": True, "epoch": 2})
    said = " ".join(c.value for c in app("results", run=short.name).caption)
    assert "Trained to its cap" not in said
    runs.write_json(short / "status.json", status)  # ended by its cap: Compare says so too
    # the listing serves finished rows unread for 5 s while the runs folder is unchanged (a
    # hand edit inside a run folder shows after that): the folder is touched, as a new run would
    os.utime(workspace.runs_dir())
    at = app("compare")
    at.multiselect[0].set_value([short.name, run.name]).run()
    said = " ".join(c.value for c in at.caption)
    assert "Trained to an epoch cap below the model's published defaults: mlp" in said
    assert "\\(3 of 50\\)" in said  # escaped Markdown


def test_a_run_still_learning_at_its_last_epoch_says_train_longer(dataset):
    """A browser pass: an MLP whose loss still fell in a straight line at its last epoch, and a
    5-epoch scGen (shortened on a busy CPU) that the baseline then beat, said nothing."""
    run = _finished(dataset, "mlp", label_key="cell_type", epochs=3)
    falling = [2.0 - 0.03 * e for e in range(1, 21)]  # 20 epochs, the best the last
    runs.write_metrics_csv(
        run, [{"epoch": e, "train_loss": v, "val_loss": v} for e, v in enumerate(falling, 1)]
    )
    runs.write_json(run / "run.json", {**runs.read_json(run / "run.json"), "epochs": 20})
    warn = " ".join(texts(app("results", run=run.name), "warning"))
    said = "still falling over the last epochs (its lowest at epoch 20 of 20): 20 epochs, 50 in"
    assert said in warn, warn
    assert "train it longer" in warn
    # a browser pass: 1102.7, 1035.1, 1039.0 read "still falling at the last epoch", which
    # rose; the lowest is said where it came
    runs.write_metrics_csv(
        run,
        [
            {"epoch": e, "train_loss": v, "val_loss": v}
            for e, v in enumerate((1102.7, 1035.1, 1039.0), 1)
        ],
    )
    warn = " ".join(texts(app("results", run=run.name), "warning"))
    assert "(its lowest at epoch 2 of 3)" in warn and "at the last epoch" not in warn, warn
    # a curve that levelled off says nothing
    flat = [1.0 + 1.0 / e for e in range(1, 4)] + [1.34] * 17
    runs.write_metrics_csv(
        run, [{"epoch": e, "train_loss": v, "val_loss": v} for e, v in enumerate(flat, 1)]
    )
    assert "still falling" not in " ".join(texts(app("results", run=run.name), "warning"))
    # leave-one-out: one curve per type, epochs counted on from the type before (a review: the
    # note said 40 epochs for two models of 20)
    rows = [
        {"epoch": 20 * i + e, "cell_type": t, "train_loss": v, "val_loss": v}
        for i, (t, curve) in enumerate((("A", flat), ("B", falling)))
        for e, v in enumerate(curve, 1)
    ]
    runs.write_metrics_csv(run, rows)
    warn = " ".join(texts(app("results", run=run.name), "warning"))
    assert "still falling over the last epochs (for B): 20 epochs, 50 in" in warn, warn


def test_still_improving_tells_a_falling_curve_from_a_noisy_plateau():
    """A review: the first rule fired on 7-26% of converged, noisy curves, and on one spike."""
    from engine.evaluate import still_improving

    rng = np.random.default_rng(0)
    x = np.arange(20)
    plateaus = [1 + 2 * np.exp(-x / 3) + rng.normal(0, sd, 20) for sd in (0.002, 0.01, 0.03)] * 100
    assert np.mean([still_improving(c) for c in plateaus]) < 0.03
    falling = [3 * np.exp(-x / 30) + rng.normal(0, 0.01, 20) for _ in range(100)]
    assert np.mean([still_improving(c) for c in falling]) > 0.9
    assert not still_improving([1.0] * 10 + [1.3, 1.0, 0.999])  # one spike before the end
    assert still_improving([104, 91, 80, 73, 70])  # the 5-epoch scGen of the browser pass
    # an MLP stopped at 20 epochs, still 10% lower each epoch but ever more slowly (its own
    # slowing was counted as noise: a browser pass on CytOF)
    mlp = [1.0117, 0.9264, 0.8281, 0.7041, 0.5813, 0.4692, 0.3748, 0.2992, 0.2409, 0.1954]
    assert still_improving(
        mlp + [0.161, 0.1348, 0.1144, 0.0986, 0.0852, 0.0748, 0.0658, 0.0587, 0.0529, 0.0481]
    )
    # a fast fall, a bend, then a smooth slow fall to the last epoch: the bend was counted as
    # noise (a browser pass: an autoencoder and a scGen of 15 epochs called converged)
    assert still_improving([0.18625, 0.18131, 0.17446, 0.16336, 0.1451, 0.11845, 0.08982,
                            0.07239, 0.06704, 0.06391, 0.06022, 0.05784, 0.05696, 0.05645,
                            0.05582])  # fmt: skip
    assert still_improving([393.0, 342.63, 315.13, 315.2, 310.19, 310.52, 310.16, 307.95,
                            313.38, 306.17, 304.39, 304.16, 302.61, 301.71, 301.19])  # fmt: skip
    smooth = 1 + 2 * np.exp(-np.arange(40) / 3)  # converged: every step down, but by nothing
    assert not still_improving(smooth)
    for n in (50, 100):  # longer curves: plateaus stay quiet, slow falls are caught
        x = np.arange(n)
        flat = [1 + 2 * np.exp(-x / 5) + rng.normal(0, sd, n) for sd in (0.002, 0.01, 0.03)] * 30
        assert np.mean([still_improving(c) for c in flat]) < 0.03
        slow = [3 * np.exp(-x / (1.5 * n)) + rng.normal(0, 0.01, n) for _ in range(30)]
        assert np.mean([still_improving(c) for c in slow]) > 0.9


def test_a_pca_embedding_shows_its_latent_space_and_no_empty_grouping(dataset):
    """A PCA embedding has no reconstruction to group: the selector went, its UMAP stays (a
    review caught the first version hiding both)."""
    run = _finished(dataset, "pca_embed", epochs=1)
    at = app("results", run=run.name)
    assert "Latent space" in [h.value for h in at.subheader]
    assert not [s for s in at.selectbox if s.label == "Order and group cells by"]


def test_results_every_run_folder_state_renders(dataset):
    base = _finished(dataset, "mlp", label_key="cell_type", epochs=2)
    root = workspace.runs_dir()

    def variant(name: str, damage) -> str:
        d = root / name
        shutil.copytree(base, d)
        damage(d)
        return name

    cases = {
        variant(
            "a-cancelled-no-results",
            lambda d: (
                (d / "results.h5ad").unlink(),
                runs.update_status(d, state="cancelled"),
            ),
        ): "results.h5ad (the annotated cells) is missing",
        variant("b-no-metrics", lambda d: (d / "metrics.json").unlink()): "metrics.json",
        variant("c-no-model", lambda d: (d / "model.pt").unlink()): None,
        variant(
            "d-corrupt-json",
            lambda d: (
                (d / "metrics.json").write_text("{not json"),
                (d / "run.json").write_text("[1, 2"),
            ),
        ): "run.json (what was asked) is missing or unreadable",
        variant(
            "e-corrupt-results", lambda d: (d / "results.h5ad").write_bytes(b"nope")
        ): "could not be read",
        variant(
            "f-failed",
            lambda d: runs.update_status(d, state="failed", error="**boom** [x](http://e)"),
        ): None,
        variant(
            "g-running",
            lambda d: runs.update_status(d, state="running", epoch=1, max_epochs=5, pid=1),
        ): None,
    }
    for run_id, expect in cases.items():
        at = app("results", run=run_id)
        assert not at.exception, (run_id, [e.message for e in at.exception])
        assert at.selectbox[0].value == run_id
        lines = " ".join(
            texts(at, "caption") + texts(at, "warning") + texts(at, "info") + texts(at, "error")
        )
        if expect:
            assert expect in lines, (run_id, lines)
    at = app("results", run="c-no-model")
    assert "Model weights (.pt)" not in [b.label for b in at.get("download_button")]
    at = app("results", run="f-failed")
    assert texts(at, "error") == ["This run failed: \\*\\*boom\\*\\* \\[x\\]\\(http\\://e\\)"]


def test_results_vae_lognormalised_heatmaps_and_background_umap(dataset):
    run = _finished(dataset, "vae", epochs=2, label_key="cell_type", params={"kl_warmup": 1})
    at = app("results", run=run.name)
    assert not texts(at, "error")
    assert not [w for w in texts(at, "warning") if "KL warm-up" in w]
    assert any("normalised to 10,000 per cell" in c for c in texts(at, "caption"))
    heat = next(s for s in specs(at) if s["layout"]["title"]["text"].startswith("Input"))
    z = arr(heat["data"][0]["z"])
    assert z.max() <= np.log1p(1e4) + 1e-6 and not np.allclose(z, np.round(z))
    rec = next(s for s in specs(at) if s["layout"]["title"]["text"].startswith("Reconstruction"))
    assert arr(rec["data"][0]["z"]).max() <= np.log1p(1e4) + 1e-6
    # one colour scale for both: equal colours mean equal values
    assert rec["data"][0]["zmax"] == heat["data"][0]["zmax"] >= z.max()
    # the UMAP is computed by a background process: the page shows a progress line at once
    assert embedding.read(run, "X_vae")["state"] in ("computing", "done")
    assert not any(t.startswith("UMAP of X_vae") for t in titles(at)) or (
        embedding.read(run, "X_vae")["state"] == "done"
    )
    assert _wait_embedding(run, "X_vae")["state"] == "done"
    at.run()
    assert not at.exception
    umap = next(s for s in specs(at) if s["layout"]["title"]["text"].startswith("UMAP of X_vae"))
    assert umap["layout"]["showlegend"] is True and len(umap["data"]) >= 2


def test_a_vae_trained_within_its_kl_warm_up_says_so(dataset):
    """A browser pass: 10 epochs under a warm-up of 20 (the default) trained without a word,
    and its validation loss mixed a KL weight that changed every epoch. The validation loss is
    the whole objective; Results says the weight never reached 1."""
    import pandas as pd

    run = _finished(dataset, "vae", epochs=2, label_key="cell_type")
    (warm,) = [w for w in texts(app("results", run=run.name), "warning") if "KL warm-up" in w]
    assert "(20 epochs) was longer than its training (2)" in warm and "only 0.10 of 1" in warm
    curve = pd.read_csv(run / "metrics.csv").dropna(subset=["val_loss"])
    whole = curve["val_reconstruction"] + curve["val_kl"]
    assert np.allclose(curve["val_loss"], whole, rtol=1e-4), curve  # KL weight 1, not 0.05
    # and the training curve beside it is the same quantity (a gap from the weight alone read
    # as overfitting: a browser pass)
    train_curve = pd.read_csv(run / "metrics.csv").dropna(subset=["train_loss"])
    train_whole = train_curve["train_reconstruction"] + train_curve["train_kl"]
    assert np.allclose(train_curve["train_loss"], train_whole, rtol=1e-4), train_curve


def test_results_scgen_violins_baselines_and_nan_latent(dataset, monkeypatch):
    import anndata as ad

    run = _small_scgen(dataset)
    # an older run: its predicted cells have no latent code
    res = ad.read_h5ad(run / "results.h5ad")
    pred = (res.obs["condition"].astype(str) == "predicted").to_numpy()
    lat = np.asarray(res.obsm["X_scgen"], dtype=np.float32).copy()
    lat[pred] = np.nan
    res.obsm["X_scgen"] = lat
    res.write_h5ad(run / "results.h5ad")
    assert embedding.compute(run, "X_scgen")["state"] == "done"

    _forbid_whole_file(monkeypatch)  # the page reads parts: design, two obs columns, one type
    at = app("results", run=run.name)
    assert not texts(at, "error"), texts(at, "error")
    # the scatter draws the per-gene means the metrics were computed from
    means = pd.read_csv(run / "gene_means.csv", index_col=0)
    metrics = json.loads((run / "metrics.json").read_text())
    r = np.corrcoef(means["predicted"], means["real"])[0, 1]
    assert r**2 == pytest.approx(metrics["r2_mean_all"], abs=1e-6)
    r = np.corrcoef(means["meanshift"], means["real"])[0, 1]
    assert r**2 == pytest.approx(metrics["baseline_meanshift_r2_mean_all"], abs=1e-6)
    scatter = next(s for s in specs(at) if s["layout"]["title"]["text"].startswith("scGen, B cell"))
    drawn = np.concatenate([arr(t["y"]) for t in scatter["data"]])  # top-100 DEGs and others
    assert np.allclose(np.sort(drawn), np.sort(means["predicted"]), atol=1e-5)
    table = at.dataframe[0].value  # one metric per row, one prediction per column
    assert list(table.columns) == [
        "metric",
        "scGen",
        "baseline: control unchanged",
        "baseline: control + mean shift",
    ]
    first = table.iloc[0]
    assert first["metric"] == "R² of mean expression (all genes)"
    assert first["scGen"] == pytest.approx(metrics["r2_mean_all"])
    assert first["baseline: control + mean shift"] == pytest.approx(
        metrics["baseline_meanshift_r2_mean_all"]
    )
    how = next(e for e in at.expander if e.label == "What these measure")
    assert "Squared Pearson correlation" in how.markdown[0].value
    # the noise ceiling of the real stimulated cells is said next to the table, as measured
    ceiling = f"about {metrics['ceiling_r2_mean_all']:.3f} (all genes)"
    assert any(c.startswith("Noise ceiling") and ceiling in c for c in texts(at, "caption"))
    # scGen against the mean-shift, with the interval over these cells, in one sentence
    low, high = metrics["meanshift_gap_ci95_low"], metrics["meanshift_gap_ci95_high"]
    said = texts(at, "success") + texts(at, "info") + texts(at, "warning")
    interval = f"95% interval of the difference {low:+.3f} to {high:+.3f} over its {metrics['n_ctrl']} control"
    assert any(t.startswith("For B cell, ") and interval in t for t in said), said
    # a loss (or a tie) is said beside the short training it may come from (a browser pass)
    verdict = next(t for t in said if t.startswith("For B cell, "))
    short = "This scGen trained 2 of its published 100 epochs: a full training" in verdict
    assert short == (low <= 0), verdict
    # the table marks no "best" where the verdict says the two cannot be told apart
    undecided = low <= 0 <= high
    unmarked = "No prediction is marked best: scGen and the mean-shift baseline cannot be"
    assert any(c.startswith(unmarked) for c in texts(at, "caption")) == undecided
    assert ("background-color" in at.dataframe[0].proto.arrow_data.styler.styles) != undecided
    # how scGen predicted: the run's own choices (defaults here)
    said = [c.replace("\\", "") for c in texts(at, "caption")]
    assert any(
        c.startswith("scGen's prediction: each control cell + the decoded change; its stimulation ")
        and c.endswith("latent shift from control to stimulated ('paired').")
        for c in said
    ), said
    # scGen's panel and the baseline's share one scale (ticks 1 and 2 apart read badly)
    scatters = [s for s in specs(at) if "R² all =" in s["layout"]["title"]["text"]]
    assert len(scatters) == 2
    assert scatters[0]["layout"]["yaxis"]["range"] == scatters[1]["layout"]["yaxis"]["range"]
    violins = next(s for s in specs(at) if "Top DEGs" in s["layout"]["title"]["text"])
    assert violins["layout"]["violinmode"] == "group"
    assert [t["name"] for t in violins["data"]] == ["control", "predicted", "stimulated"]
    for t in violins["data"]:
        assert t["type"] == "violin" and t["box"]["visible"] is True
        # side by side: a trace width would make plotly stack the groups on one another
        assert t["scalemode"] == "width" and "width" not in t
        ys = arr(t["y"])
        assert len(np.unique(ys)) > 1, t["name"]
    assert any("have no finite latent code" in c for c in texts(at, "caption"))
    umap = next(s for s in specs(at) if "scGen latent space" in s["layout"]["title"]["text"])
    names = {t["name"] for t in umap["data"]}
    assert names == {"control", "stimulated"}, names  # the NaN predicted cells are left out


def test_results_html_export_embeds_plotly():
    """The figure download is a self-contained page (checked in the page's source, since the
    download is produced lazily on click)."""
    src = (ROOT / "pages" / "results.py").read_text()
    assert "include_plotlyjs=True" in src and 'include_plotlyjs="cdn"' not in src


# ----------------------------------------------------------------------------- compare
def _styles(at, i: int = 0) -> str:
    return str(at.dataframe[i].proto.arrow_data.styler)


def test_compare_one_run_marks_nothing_and_a_curve_has_a_legend(dataset):
    _finished(dataset, "mlp", label_key="cell_type", epochs=2)
    at = app("compare")
    assert "background-color" not in _styles(at)
    assert any("nothing to rank" in c for c in texts(at, "caption"))
    fig = specs(at)[0]
    assert fig["layout"]["showlegend"] is True and len(fig["data"]) == 1
    assert fig["layout"]["title"]["text"] == "Validation loss per epoch"


def test_compare_scgen_baselines_are_rows_and_auroc_is_ranked(dataset):
    run = _small_scgen(dataset, n_hidden=32, n_latent=4)
    at = app("compare")
    table = at.dataframe[0].value
    assert len(table) == 3
    said = table["run"].str
    # named baseline first (a browser pass: 'scgen · RUN · baseline: ...' read as a scGen run)
    assert said.startswith(f"baseline: control unchanged · of scgen · {run.name}").sum() == 1
    assert said.startswith(f"baseline: control + mean shift · of scgen · {run.name}").sum() == 1
    assert "baseline_noshift_r2_mean_all" not in table
    assert "background-color" in _styles(at)  # three rows: the best is marked
    assert table["run"].str.contains("B cell (control → stimulated)", regex=False).all()
    said = " ".join(c.value for c in at.caption)  # the held-out cells are the design's
    assert "every run predicts the same held-out stimulated cells" in said
    # another cell type in the other direction: other test cells, never ranked together (a
    # browser pass: "every run was scored on the same test cells", the best value marked)
    other = run.parent / "scgen-other"
    shutil.copytree(run, other)
    spec = runs.read_json(other / "run.json")
    runs.write_json(
        other / "run.json", {**spec, "predict": "T cell", "ctrl": "stimulated", "stim": "control"}
    )
    at = app("compare")
    table = at.dataframe[0].value
    assert len(table) == 6
    assert table["run"].str.contains("T cell (stimulated → control)", regex=False).sum() == 3
    said = " ".join(w.value for w in at.warning)
    assert "did not all use the same data and design (cell type predicted, direction)" in said
    assert "background-color" not in _styles(at)
    shutil.rmtree(other)
    # two abnormality runs (metrics as an AUROC-writing engine leaves them)
    shutil.rmtree(run)
    for i, (auroc, others) in enumerate(((0.9, 0.5), (0.6, 0.9))):
        d = workspace.runs_dir() / f"ae-{i}"
        d.mkdir()
        runs.write_json(
            d / "run.json",
            {
                "model": "autoencoder",
                "task": "reconstruct",
                "dataset_name": dataset,
                "created": f"2026-0{i + 1}",
            },
        )
        runs.write_json(d / "status.json", {"state": "completed"})
        runs.write_json(
            d / "metrics.json",
            {
                "test_mse": 0.1 + i,
                "abnormality_trained_on": 0.2,
                "abnormality_others": others,
                "abnormality_auroc": auroc,
            },
        )
    at = app("compare")
    table = at.dataframe[0].value
    assert list(table.columns[:3]) == ["run", "baseline", "abnormality_auroc"]
    assert "abnormality_others" not in table
    styles = _styles(at)
    assert "background-color" in styles
    cols = json.loads(at.dataframe[0].proto.columns)
    assert cols["abnormality_auroc"]["label"] == "Abnormality AUROC"


# ----------------------------------------------------------------------------- explore
def test_explore_obsm_genes_and_a_computed_umap(lognorm_adata):
    a = lognorm_adata.copy()
    a.obsm["X_umap"] = np.random.default_rng(0).normal(size=(a.n_obs, 2)).astype(np.float32)
    name = datasets.save(a, "withumap")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("data")
    assert any(getattr(p, "proto", None) and "explore" in p.proto.page for p in at.get("page_link"))
    at = app("explore")
    assert titles(at)[0].startswith("X_umap")
    legend = specs(at)[0]
    assert legend["layout"]["showlegend"] is True and len(legend["data"]) > 1  # cell types
    at.radio[0].set_value("gene").run()
    at.text_input[0].set_value("g1").run()
    box = next(s for s in at.selectbox if s.label.startswith("Gene"))
    assert 0 < len(box.options) < 200 and all("g1" in o.lower() for o in box.options)
    box.set_value(box.options[0]).run()
    fig = specs(at)[0]
    assert "coloraxis" in fig["layout"] and not at.exception
    # a UMAP of X, computed on request in the background
    at.selectbox[1].set_value("UMAP of X (computed)").run()
    next(b for b in at.button if b.label.startswith("Compute the UMAP")).click().run()
    folder = workspace.home() / "embeddings" / name
    assert _wait_embedding(folder, "X")["state"] == "done"
    at.run()
    assert not at.exception
    assert any(t.startswith("UMAP of X (computed)") for t in titles(at))


def test_explore_opens_on_a_colouring_that_exists(lognorm_adata):
    """Without obs columns Explore opens on genes (it offered an empty 'obs column' choice);
    with a per-cell measurement first and a cell-type column after, it colours by cell type."""
    a = lognorm_adata.copy()
    a.obsm["X_umap"] = np.random.default_rng(0).normal(size=(a.n_obs, 2)).astype(np.float32)
    a.obs.insert(0, "n_genes", np.arange(a.n_obs) + 100)
    runs.write_json(workspace.home() / "state.json", {"dataset": datasets.save(a, "measured")})
    at = app("explore")
    assert at.radio[0].value == "obs column"
    assert next(s for s in at.selectbox if s.label == "Obs column").value == "cell_type"
    bare = a.copy()
    bare.obs = bare.obs[[]]
    runs.write_json(workspace.home() / "state.json", {"dataset": datasets.save(bare, "bare")})
    at = app("explore")
    assert at.radio[0].value == "gene" and not at.exception
    assert any(s.label.startswith("Gene") for s in at.selectbox)


def test_explore_colours_integer_donors_by_group(lognorm_adata):
    """An integer donor column gets a legend of donors, not a colour scale; a count per cell
    keeps its scale."""
    a = lognorm_adata.copy()
    a.obsm["X_umap"] = np.random.default_rng(0).normal(size=(a.n_obs, 2)).astype(np.float32)
    a.obs["donor"] = np.arange(a.n_obs) % 4 + 1
    a.obs["n_genes"] = np.arange(a.n_obs) % 4 + 100
    runs.write_json(workspace.home() / "state.json", {"dataset": datasets.save(a, "donors")})
    at = app("explore")
    next(s for s in at.selectbox if s.label == "Obs column").set_value("donor").run()
    fig = specs(at)[0]
    assert sorted(t["name"] for t in fig["data"]) == ["1", "2", "3", "4"]
    assert "coloraxis" not in fig["layout"]
    next(s for s in at.selectbox if s.label == "Obs column").set_value("n_genes").run()
    assert "coloraxis" in specs(at)[0]["layout"] and not at.exception


def test_explore_reads_only_what_it_draws(lognorm_adata, monkeypatch):
    """Explore opens the annotations alone; a stored embedding and a gene's colour are read from
    the file for the cells drawn (a million cells open in about a second, bench.app_latency)."""
    from engine import io as engine_io

    a = lognorm_adata.copy()
    a.obsm["X_umap"] = np.random.default_rng(0).normal(size=(a.n_obs, 2)).astype(np.float32)
    name = datasets.save(a, "lazy")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    monkeypatch.setattr(engine_io, "read", lambda *_, **__: pytest.fail("read the whole file"))
    at = app("explore")
    fig = specs(at)[0]
    assert np.allclose(
        arr(fig["data"][0]["x"]), a.obsm["X_umap"][a.obs["cell_type"] == fig["data"][0]["name"], 0]
    )
    gene = str(a.var_names[3])
    at.radio[0].set_value("gene").run()
    at.text_input[0].set_value(gene).run()
    box = next(s for s in at.selectbox if s.label.startswith("Gene"))
    box.set_value(gene).run()
    assert not at.exception
    x = a[:, gene].X
    expected = np.asarray(x.toarray() if hasattr(x, "toarray") else x).ravel()
    assert np.allclose(arr(specs(at)[0]["data"][0]["marker"]["color"]), expected, atol=1e-6)


def test_explore_lists_the_latent_space_of_finished_runs(dataset):
    run = _finished(dataset, "autoencoder", epochs=2, label_key="cell_type")
    at = app("explore")
    box = at.selectbox[1]
    label = next(o for o in box.options if run.name in o)
    assert "autoencoder latent space" in label
    box.set_value(label).run()
    assert not at.exception
    # small run: started by itself; the page polls and shows it when done
    assert _wait_embedding(run, "X_autoencoder")["state"] == "done"
    at.run()
    assert any("autoencoder latent space" in t for t in titles(at))


# ----------------------------------------------------------------------------- in a real browser
@pytest.mark.browser
def test_browser_results_of_three_runs_compare_and_explore(server, lognorm_adata, workspace):  # noqa: F811
    """Open Results for three finished runs by URL and see each one (classifier, autoencoder,
    scGen), then Compare and Explore; screenshots land in SHOTS (docs/screenshots on request)."""
    from playwright.sync_api import expect, sync_playwright

    from tests.test_browser import CHROMIUM, FLAGS, SHOTS, _go, _wait_idle

    name = datasets.save(lognorm_adata, "pbmc_like")
    runs.write_json(workspace / "state.json", {"dataset": name})
    made = {
        "classifier": _finished(name, "mlp", label_key="cell_type", epochs=6),
        "autoencoder": _finished(name, "autoencoder", label_key="cell_type", epochs=6),
        "scgen": _finished(
            name,
            "scgen",
            epochs=8,
            **SCGEN_B_CELLS,
        ),
    }
    _finished(name, "sk_logreg", label_key="cell_type")
    for run, key in ((made["autoencoder"], "X_autoencoder"), (made["scgen"], "X_scgen")):
        assert embedding.compute(run, key)["state"] == "done"
    cache = workspace / "embeddings" / name
    assert embedding.compute(cache, "X", source=datasets.path(name))["state"] == "done"
    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        page = browser.new_page(viewport={"width": 1400, "height": 3300})
        for what, run in made.items():
            page.goto(f"{server}/results?run={run.name}")
            expect(page.get_by_text("Export", exact=True)).to_be_visible(timeout=90_000)
            _wait_idle(page, timeout=120_000)
            assert run.name in page.get_by_test_id("stSelectbox").first.aria_snapshot()
            expect(page.get_by_text("Traceback")).to_have_count(0)
            page.screenshot(path=SHOTS / f"results_{what}.png", full_page=True)
        page.set_viewport_size({"width": 1400, "height": 1500})
        _go(page, "Compare")
        expect(page.get_by_text("same test cells")).to_be_visible(timeout=60_000)
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        _wait_idle(page)
        page.wait_for_timeout(1000)
        page.screenshot(path=SHOTS / "compare.png", full_page=True)
        _go(page, "Explore")
        expect(page.locator(".js-plotly-plot").first).to_be_visible(timeout=60_000)
        for option in ("UMAP of the autoencoder latent space", "UMAP of X (computed)"):
            page.get_by_test_id("stSelectbox").nth(1).click()
            page.get_by_role("option", name=option, exact=False).click()
            _wait_idle(page)
            expect(page.locator(".js-plotly-plot .gtitle").first).to_contain_text(
                option, timeout=60_000
            )
        page.wait_for_timeout(1500)
        page.screenshot(path=SHOTS / "explore.png", full_page=True)
        browser.close()


def test_results_opens_the_requested_run_every_time(dataset):
    """Runs -> Open results: the run asked for is shown, not the first or the last viewed."""
    a = _finished(dataset, "sk_logreg", suffix="-a", label_key="cell_type").name
    b = _finished(dataset, "pca", suffix="-b", label_key="cell_type").name
    at = app("results", run=a)
    assert at.selectbox[0].value == a
    at.session_state["results_run_request"] = b  # what Runs sets before switch_page
    at.run()
    assert at.selectbox[0].value == b and not at.exception
    at.selectbox[0].set_value(a).run()
    assert at.selectbox[0].value == a
    at.session_state["results_run_request"] = b
    at.run()
    assert at.selectbox[0].value == b
    at.query_params["run"] = a  # a link with ?run=
    at.run()
    assert at.selectbox[0].value == a


def test_user_strings_are_escaped_for_markdown_and_figures():
    from ui import figures

    hostile = "**b** [x](http://evil.example) ![i](http://evil.example/p.png) :red[r] $x$ <b>"
    out = figures.esc(hostile)
    for raw in ("**", "](", "![", ":red[", "$x$", "<b>"):
        assert raw not in out, raw
    assert figures.esc("B cell") == "B cell" and figures.esc("a\nb") == "a b"
    fig = figures.confusion([[1, 0], [0, 1]], ["<a href='http://evil'>x</a>", "T"])
    assert "&lt;a href" in fig.data[0].x[0]
    emb = figures.embedding(
        np.zeros((3, 2)), np.array(["<b>a</b>", "b", "b"]), "<i>col</i>", "<a href='x'>t</a>"
    )
    assert "<a" not in emb.layout.title.text and "<i>" not in emb.layout.legend.title.text
    assert {t.name for t in emb.data} == {"&lt;b&gt;a&lt;/b&gt;", "b"}


def test_results_names_files_too_large_for_the_browser(dataset, monkeypatch):
    """Above SCWB_DOWNLOAD_MAX_MB the app does not load a file to send it: it says where the file
    is and the command that writes it (at a million cells results.h5ad is GBs)."""
    run = _finished(dataset, "autoencoder", epochs=2)
    at = app("results", run=run.name)
    labels = [b.label for b in at.get("download_button")]
    assert {"Annotated .h5ad", "Model weights (.pt)", "Whole run (.zip)"} <= set(labels)
    monkeypatch.setenv("SCWB_DOWNLOAD_MAX_MB", "0.001")  # 1 kB: every run file is larger
    at = app("results", run=run.name)
    labels = [b.label for b in at.get("download_button")]
    assert not {"Annotated .h5ad", "Model weights (.pt)", "Whole run (.zip)"} & set(labels)
    assert "Metrics (CSV)" in labels  # small text files are built on click as before
    captions = " ".join(texts(at, "caption"))
    for flag in ("h5ad", "model", "zip"):
        assert f"python -m engine export {run} --{flag} FILE" in captions
    assert str(run / "results.h5ad") in captions


def test_results_scgen_leave_one_out_draws_each_cell_type(dataset, monkeypatch):
    """A run over every cell type (--predict all): the table, and each type's scatters and
    violins from its own folder, read in parts (the folders come back from the .h5ad as an
    array: that once hid every figure of such runs behind a warning)."""

    run = _finished(
        dataset,
        "scgen",
        "-loo",
        epochs=2,
        condition_key="condition",
        ctrl="control",
        stim="stimulated",
        cell_type_key="cell_type",
        predict="all",
        params={"n_hidden": 64, "n_latent": 8},
    )

    _forbid_whole_file(monkeypatch)
    at = app("results", run=run.name)
    assert not [w for w in texts(at, "warning") if "Could not" in w], texts(at, "warning")
    assert "Leave-one-cell-type-out" in [h.value for h in at.subheader]
    # one word per type against the mean-shift, from its interval (the loo.csv's own numbers)
    loo = pd.read_csv(run / "loo.csv").set_index("cell_type")
    shown = at.dataframe[0].value.set_index("cell_type")
    assert "beats_meanshift" not in shown and set(shown["vs_meanshift"]) <= {
        "better",
        "cannot tell",
        "worse",
    }
    for t, row in loo.iterrows():
        word = (
            "better"
            if row["meanshift_gap_ci95_low"] > 0
            else "worse"
            if row["meanshift_gap_ci95_high"] < 0
            else "cannot tell"
        )
        assert shown.loc[t, "vs_meanshift"] == word
    pick = next(s for s in at.selectbox if s.label == "Cell type")
    for target in pick.options[:2]:
        pick.set_value(target).run()
        assert not [w for w in texts(at, "warning") if "Could not" in w], texts(at, "warning")
        titles = [s["layout"]["title"]["text"] for s in specs(at)]
        assert any(t.startswith(f"scGen, {target}") for t in titles), titles
        assert any("Top DEGs" in t for t in titles), titles
        pick = next(s for s in at.selectbox if s.label == "Cell type")

    # the table cut mid-row (a full disk, a hand edit): said, never read as fewer cell types
    text = (run / "loo.csv").read_text()
    (run / "loo.csv").write_text(text[: text.rindex("\n", 0, len(text) - 1) - 5])
    at = app("results", run=run.name)
    assert "Leave-one-cell-type-out" not in [h.value for h in at.subheader]
    (warning,) = [w for w in texts(at, "warning") if "loo.csv" in w]
    assert f"names {len(loo) - 1} of the {len(loo)} cell types" in warning, warning
    assert any(s.label == "Cell type" for s in at.selectbox)  # each type's figures stay
    # a damaged metrics.json of a type is said as the file's fault, not the data's (a hostile
    # pass read "has fewer than 2 real stimulated or 2 control cells"); {} is too few cells
    parts = sorted(run.glob("*/metrics.json"))
    assert len(parts) == len(loo)
    for damage, level, said in (
        ("\x00garbage", "warning", "(its metrics.json) are missing or unreadable"),
        ("{}", "info", "has fewer than 2 real stimulated or 2 control cells"),
    ):
        for p in parts:
            p.write_text(damage)
        at = app("results", run=run.name)
        assert any(said in t for t in texts(at, level)), texts(at, level)


def test_metric_rows_mark_the_best_prediction_per_metric():
    """The perturbation table (a metric per row): each ranked row marks its best prediction;
    an unranked row marks nothing."""
    import re

    from ui import figures

    table = pd.DataFrame(
        {
            "metric": ["R² all", "ceiling", "MSE"],
            "scGen": [0.9, 0.97, 0.2],
            "baseline: control unchanged": [0.5, 0.98, 0.1],
            "baseline: control + mean shift": [0.95, 0.99, 0.3],
        },
        index=[7, 3, 5],  # labels are not positions
    )
    keys = ["r2_mean_all", "ceiling_r2_mean_all", "test_mse"]
    html = figures.metric_rows_style(table, keys).to_html()
    css = html.split("</style>")[0]  # the marked cells' ids, grouped under one rule
    marked = re.findall(r"_row(\d)_col(\d)", css)
    assert "background-color" in css
    assert {(int(r), int(c)) for r, c in marked} == {(0, 3), (2, 2)}


def test_results_group_and_colour_by_a_category_not_a_measurement(lognorm_adata):
    """A dataset whose first obs column is a measurement (genes per cell: ~150 values, before
    the cell types): the heatmaps were grouped by it, ~150 groups sorted as text with unreadable
    labels, and the UMAP coloured by it. Categories come first and a measurement with more than
    30 values is no grouping; with no label column run, the first category is the default."""
    a = lognorm_adata.copy()
    n_genes = np.asarray((a.X > 0).sum(1)).ravel()
    a.obs = pd.DataFrame(
        {"n_genes": n_genes, "batch_no": np.arange(a.n_obs) % 3, "cluster": a.obs["cell_type"]},
        index=a.obs_names,
    )
    assert a.obs["n_genes"].nunique() > 30
    name = datasets.save(a, "measured", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    run = _finished(name, "autoencoder", epochs=2)  # no label column given
    at = app("results", run=run.name)
    group = next(s for s in at.selectbox if s.label == "Order and group cells by")
    # the run's own split (obs['split']) is a grouping to choose, never the default
    assert group.options == ["(none)", "cluster", "split", "batch_no"]
    assert group.value == "cluster"
    assert at.selectbox(key="umap_color").value == "cluster"
    assert "n_genes" in at.selectbox(key="umap_color").options  # still a colour to choose
    assert "colour" not in at.query_params  # the default is not written
    # a browser pass: a refresh put the UMAP's colour back to the default
    at.selectbox(key="umap_color").set_value("batch_no").run()
    assert at.query_params["colour"] in ("batch_no", ["batch_no"])
    again = AppTest.from_file(str(ROOT / "app.py"), default_timeout=T)
    again.query_params["run"] = run.name
    again.query_params["colour"] = "batch_no"
    again.run()
    again.switch_page("pages/results.py").run()
    assert again.selectbox(key="umap_color").value == "batch_no"
    del at.query_params["colour"]  # Back: the address before the colour was picked
    at.run()
    assert at.selectbox(key="umap_color").value == "cluster" and "colour" not in at.query_params


def test_metric_tables_put_the_headline_first():
    """The Results table of an abnormality run was wider than the page with the AUROC, its
    headline, last (behind the edge); Compare's the same."""
    from engine import metric_names

    keys = ["train_mse", "val_mse", "abnormality_others", "test_mse", "abnormality_auroc"]
    assert metric_names.headline_first(keys) == [
        "abnormality_auroc", "test_mse", "val_mse", "train_mse", "abnormality_others"
    ]  # fmt: skip


def test_run_files_that_are_links_pipes_or_devices_are_never_read(dataset, tmp_path):
    """A hostile-input pass: model.pt linked to /dev/zero read until the server ran out of
    memory on one download click; named pipes in place of split.npz, loo.csv, gene_means.csv,
    a cached UMAP or a dataset's QC file blocked Compare, Results or Data forever; a link to
    /etc/passwd was offered as the run's weights."""
    import os

    from engine import perturb, seeds, summary
    from engine.errors import ScwbError

    run = _finished(dataset, "mlp", label_key="cell_type", epochs=2)
    assert runs.regular_file(run / "model.pt") and len(runs.read_capped(run / "model.pt", 2.0**30))
    (run / "model.pt").unlink()
    (run / "model.pt").symlink_to("/dev/zero")
    assert not runs.regular_file(run / "model.pt")
    with pytest.raises(ScwbError, match="not a plain file"):
        runs.read_capped(run / "model.pt", 2**20)
    labels = [b.label for b in app("results", run=run.name).get("download_button")]
    assert "Model weights (.pt)" not in labels and "Metrics (JSON)" in labels
    (run / "metrics.csv").unlink()
    (run / "metrics.csv").symlink_to("/dev/zero")
    assert runs.read_metrics_csv(run).empty
    for name in ("gene_means.csv", "data.qc.npz"):
        os.mkfifo(tmp_path / name)
    npz, status = embedding.paths(tmp_path, "X_mlp")
    runs.write_json(status, {"state": "done"})
    os.mkfifo(npz)
    assert embedding.read(tmp_path, "X_mlp")["state"] == "missing"
    (run / "split.npz").unlink()
    os.mkfifo(run / "split.npz")
    assert seeds.test_cells(run) is None  # returns at once: a pipe is never opened
    with pytest.raises(ScwbError, match="not a plain file"):
        perturb.read_gene_means(tmp_path / "gene_means.csv")
    assert summary.read_qc(tmp_path / "data.h5ad", pd.Index(["a"])) is None
    with pytest.raises(ScwbError, match="larger than 4 bytes"):
        (tmp_path / "big").write_bytes(b"12345")
        runs.read_capped(tmp_path / "big", 4)


def test_scgen_figures_draw_the_runs_conditions_alone(lognorm_adata):
    """A browser pass: in a ctrl -> drugA run on data with a third condition (drugB), the
    top-DEG violins and the latent UMAP drew the drugB cells too, unexplained."""
    a = lognorm_adata.copy()
    cond = a.obs["condition"].astype(str).to_numpy().copy()
    cond[::7] = "drugB"
    a.obs["condition"] = pd.Categorical(cond)
    name = datasets.save(a, "three_conditions", source="test")
    run = _small_scgen(name)
    assert embedding.compute(run, "X_scgen")["state"] == "done"
    at = app("results", run=run.name)
    violins = next(s for s in specs(at) if "Top DEGs" in s["layout"]["title"]["text"])
    assert [t["name"] for t in violins["data"]] == ["control", "predicted", "stimulated"]
    umap = next(s for s in specs(at) if "scGen latent space" in s["layout"]["title"]["text"])
    assert {t["name"] for t in umap["data"]} == {"control", "predicted", "stimulated"}
