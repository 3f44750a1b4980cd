"""Results at scale, at small scale (issue 16): with ``SCWB_RESULTS_SAMPLE`` lowered, a few
hundred cells take the path a million do: per-gene outputs only for a stored sample, pages that
read only what they show, predict consistent with the sample, and the export.
(bench/results_scale.py measures the same path at 100k and 1M cells.)"""

from __future__ import annotations

import io as pyio
import zipfile

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
from streamlit.testing.v1 import AppTest

from engine import datasets, export, io, predict, results, runs, train, workspace
from engine.spec import RunSpec
from tests.conftest import ROOT

N = 150  # stored cells of 600


@pytest.fixture
def sampled(monkeypatch):
    monkeypatch.setenv("SCWB_RESULTS_SAMPLE", str(N))


def _dense(v) -> np.ndarray:
    return np.asarray(v.toarray() if sp.issparse(v) else v)


def test_sample_rows_are_seeded_sorted_and_stratified():
    labels = np.array(["a"] * 900 + ["b"] * 90 + ["c"] * 10)
    rows = results.sample_rows(1000, 100, seed=3, labels=labels)
    assert len(rows) == 100 and (np.diff(rows) > 0).all()
    assert np.array_equal(rows, results.sample_rows(1000, 100, seed=3, labels=labels))
    got = {k: int((labels[rows] == k).sum()) for k in "abc"}
    assert got == {"a": 90, "b": 9, "c": 1}
    assert np.array_equal(results.sample_rows(50, 100), np.arange(50))


@pytest.mark.parametrize(
    "model, kw, roles",
    [
        ("autoencoder", {"label_key": "cell_type"}, {"reconstruction", "residual"}),
        ("vae", {"layer": "counts", "label_key": "cell_type"}, {"reconstruction", "denoised"}),
    ],
)
def test_large_runs_store_per_gene_outputs_for_a_sample_predict_agrees(
    tmp_path, sampled, lognorm_adata, model, kw, roles
):
    path = io.write_h5ad(lognorm_adata, tmp_path / "in.h5ad")
    run = tmp_path / "run"
    train.run(RunSpec(model=model, data=str(path), out=str(run), epochs=1, **kw))
    info = results.summary(run / "results.h5ad")
    assert info["n_obs"] == lognorm_adata.n_obs and set(info["layers"]) == {"counts"}
    stored = info["scwb"]["stored"]
    assert (
        stored["per_gene"] == "sample"
        and stored["cells"] == N
        and "engine predict" in stored["note"]
    )
    smp = ad.read_h5ad(run / results.SAMPLE)
    rows = np.asarray(smp.uns["scwb"]["stored"]["rows"])
    assert smp.n_obs == N and list(smp.obs_names) == list(lognorm_adata.obs_names[rows])
    slots = dict(smp.uns["scwb"]["slots"])
    assert roles == {r for r in results.PER_GENE if slots.get(r) in smp.layers}
    # engine predict on all cells: the sample's per-gene values, every cell's per-cell values
    full = predict.predict(run, io.read(path))
    for role in roles:
        np.testing.assert_allclose(
            _dense(full.layers[slots[role]])[rows], _dense(smp.layers[slots[role]]), atol=1e-4
        )
    key = slots["latent"]
    np.testing.assert_allclose(results.obsm(run / "results.h5ad", key), full.obsm[key], atol=1e-4)
    np.testing.assert_allclose(smp.obsm[key], full.obsm[key][rows], atol=1e-4)


def test_reader_decodes_only_the_requested_elements(tmp_path, sampled, lognorm_file, monkeypatch):
    run = tmp_path / "run"
    train.run(RunSpec(model="autoencoder", data=lognorm_file, out=str(run), epochs=1))
    seen: list[str] = []
    real = results.read_elem
    monkeypatch.setattr(results, "read_elem", lambda e: (seen.append(e.name), real(e))[1])
    path = run / "results.h5ad"
    info = results.summary(path)
    assert seen == ["/uns/scwb"] and info["obsm"]["X_autoencoder"] == (600, 4)
    seen.clear()
    table = results.obs(path, ["abnormality"])
    assert seen == ["/obs/abnormality"] and list(table.columns) == ["abnormality"]
    seen.clear()
    assert results.obsm(path, "X_autoencoder").shape == (600, 4) and seen == ["/obsm/X_autoencoder"]
    assert set(results.levels(path)) == {"cell_type", "condition", "sample", "split"}
    with pytest.raises(results.ScwbError, match="no obs column"):
        results.obs(path, ["nope"])


def test_runs_made_before_samples_read_rows_of_their_full_layers(tmp_path, lognorm_file):
    run = tmp_path / "run"  # 600 cells <= 1,000: every cell's layers in results.h5ad
    train.run(RunSpec(model="pca", data=lognorm_file, out=str(run)))
    assert not (run / results.SAMPLE).exists()
    res = ad.read_h5ad(run / "results.h5ad")
    assert res.uns["scwb"]["stored"]["per_gene"] == "all"
    smp = results.sample(run, n=100, seed=1)
    at = res.obs_names.get_indexer(smp.obs_names)
    assert smp.n_obs == 100 and (np.diff(at) > 0).all()
    for k in ("reconstruction", "residual", "counts"):
        np.testing.assert_allclose(_dense(smp.layers[k]), _dense(res.layers[k])[at])
    np.testing.assert_allclose(_dense(smp.X), _dense(res.X)[at])


def test_results_page_draws_from_the_sample_and_export_holds_it(
    sampled, lognorm_adata, monkeypatch
):
    name = datasets.save(lognorm_adata, "syn", source="test")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    run = workspace.runs_dir() / "run-ae"
    train.run(
        RunSpec(
            model="autoencoder",
            data=str(datasets.path(name)),
            dataset_name=name,
            out=str(run),
            epochs=1,
            label_key="cell_type",
        )
    )
    real = ad.read_h5ad

    def no_full_read(path, *a, **k):
        assert not str(path).endswith("results.h5ad"), "the page read the whole results file"
        return real(path, *a, **k)

    monkeypatch.setattr(ad, "read_h5ad", no_full_read)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=90)
    at.query_params["run"] = run.name
    at.run()
    at.switch_page("pages/results.py").run()
    assert not at.exception, [e.message for e in at.exception]
    titles = [c.proto.spec for c in at.get("plotly_chart")]
    assert any(f"of {lognorm_adata.n_obs:,} cells" in t and "Input" in t for t in titles)
    assert any("Per-cell abnormality" in t for t in titles)
    captions = " ".join(c.value for c in at.caption)
    assert f"sample of {N:,} of {lognorm_adata.n_obs:,} cells;" in captions
    from ui import figures

    monkeypatch.setattr(figures, "MAX_HEATMAP_CELLS", 100)  # fewer drawn than stored: said
    at.run()
    captions = " ".join(c.value for c in at.caption)
    assert (
        f"sample of {N:,} of {lognorm_adata.n_obs:,} cells (the heatmaps draw 100 of them)"
        in captions
    )
    monkeypatch.setattr(ad, "read_h5ad", real)
    with zipfile.ZipFile(pyio.BytesIO(export.bundle(run))) as zf:
        assert {"results.h5ad", results.SAMPLE, "reproduce.py"} <= set(zf.namelist())
        assert zf.getinfo("results.h5ad").compress_type == zipfile.ZIP_STORED
        res = ad.read_h5ad(pyio.BytesIO(zf.read("results.h5ad")))
    assert res.uns["scwb"]["stored"]["file"] == results.SAMPLE and "abnormality" in res.obs


def test_a_classifier_over_the_sample_size_writes_no_sample(tmp_path, sampled, lognorm_file):
    run = tmp_path / "run"
    train.run(RunSpec(model="logreg", data=lognorm_file, out=str(run), label_key="cell_type"))
    assert not (run / results.SAMPLE).exists()
    info = results.summary(run / "results.h5ad")
    assert info["scwb"]["stored"]["per_gene"] == "none" and info["obsm"]["proba_logreg"][0] == 600


def test_group_boxes_are_quartiles_of_every_cell():
    from ui import figures

    values = np.arange(101, dtype=float)
    fig = figures.group_boxes(values, ["a"] * 101, "group", "score", "t")
    (box,) = fig.data
    assert (box.q1[0], box.median[0], box.q3[0]) == (25.0, 50.0, 75.0)
    assert (box.lowerfence[0], box.upperfence[0]) == (0.0, 100.0)


def test_group_boxes_draw_the_cells_beyond_the_whiskers():
    """The most abnormal cells are the point of an abnormality plot: a box drawn from
    quartiles alone hid them (whiskers stopped at 0.5 while cells scored 2.3)."""
    from ui import figures

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(0, 1, 1000), [9.0, 12.0, -8.0], rng.normal(0, 1, 50)])
    groups = ["a"] * 1003 + ["b"] * 50
    fig = figures.group_boxes(values, groups, "group", "score", "t")
    boxes = [t for t in fig.data if t.type == "box"]
    points = {t.x[0]: sorted(t.y) for t in fig.data if t.type == "scatter"}
    assert [b.name for b in boxes] == ["a", "b"]
    assert {-8.0, 9.0, 12.0} <= set(points["a"])
    assert boxes[0].upperfence[0] < 9.0  # the whisker stops short of them
    assert all(p > boxes[0].upperfence[0] or p < boxes[0].lowerfence[0] for p in points["a"])
    # many outliers: the most extreme ones, said in the title
    many = np.concatenate([rng.normal(0, 1, 10_000), np.arange(100, 600, dtype=float)])
    fig = figures.group_boxes(many, ["a"] * len(many), "group", "score", "t")
    (pts,) = [t for t in fig.data if t.type == "scatter"]
    assert len(pts.y) == figures.MAX_OUTLIERS < 500
    assert min(pts.y) == 300.0 and max(pts.y) == 599.0  # the 300 most extreme of the 500
    assert "most extreme" in fig.layout.title.text
