"""scGen: hold a cell type's stimulated cells out, predict them, compare with the baselines."""

import ast
import json
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from engine import evaluate, predict, train
from engine.errors import ScwbError
from engine.io import dense
from engine.spec import RunSpec

SMALL = {"n_hidden": 128, "n_latent": 10}
DESIGN = dict(
    condition_key="condition", ctrl="control", stim="stimulated", cell_type_key="cell_type"
)


def _b_cell_spec(tmp_path, data, epochs: int, **params) -> RunSpec:
    """A small scGen run that predicts the held-out stimulated B cells."""
    return RunSpec(
        model="scgen",
        data=data,
        out=str(tmp_path / "run"),
        predict="B cell",
        epochs=epochs,
        params={**SMALL, **params},
        **DESIGN,
    )


def test_scgen_defaults_are_published_ones():
    """The network and its training are the published ones; the stimulation vector is the
    paired one and the prediction is each control cell + the decoded change (docs/BENCHMARKS.md:
    each put scGen further above the mean-shift baseline)."""
    spec = RunSpec(model="scgen", data="x", predict="B cell", **DESIGN)
    assert spec.params | {"delta_cell_types": ""} == {
        "n_hidden": 800,
        "n_layers": 2,
        "n_latent": 100,
        "dropout": 0.2,
        "kl_weight": 5e-5,
        "delta": "paired",
        "delta_cell_types": "",
        "decoder": "mirrored",
        "output": "residual",
    }
    assert spec.lr == 1e-3 and spec.patience == 25


def _latent_design():
    """Latent codes where every type has its own place and its own response, and one type (the
    held-out one, 'T') has control cells only."""
    rng = np.random.default_rng(0)
    centre = {"A": np.array([0.0, 0.0]), "B": np.array([10.0, 0.0]), "T": np.array([0.0, 10.0])}
    shift = {"A": np.array([1.0, 1.0]), "B": np.array([3.0, -1.0])}
    n_ctrl = {"A": 50, "B": 20, "T": 40}
    n_stim = {"A": 30, "B": 60}
    zc = np.concatenate([centre[t] + rng.normal(0, 0.1, (n, 2)) for t, n in n_ctrl.items()])
    tc = np.repeat(list(n_ctrl), list(n_ctrl.values()))
    zs = np.concatenate(
        [centre[t] + shift[t] + rng.normal(0, 0.1, (n, 2)) for t, n in n_stim.items()]
    )
    ts = np.repeat(list(n_stim), list(n_stim.values()))
    return zc, tc, zs, ts, (shift["A"] + shift["B"]) / 2


def test_paired_delta_is_the_mean_of_per_type_shifts():
    from engine.models.scgen import latent_delta

    zc, tc, zs, ts, expected = _latent_design()
    got = latent_delta(lambda z: z, zc, tc, zs, ts, seed=0, how="paired")
    # neither the held-out type's control cells nor the unequal type sizes move it
    np.testing.assert_allclose(got, expected, atol=0.05)
    # exact: the same on every seed
    np.testing.assert_array_equal(got, latent_delta(lambda z: z, zc, tc, zs, ts, 7, "paired"))


def test_mean_shift_weights_types_equally_or_by_cells():
    """The app's baseline: the plain mean of per-type shifts (a 7-cell type counts as much as a
    100-cell one, as in scGen's paired vector); ``weighted``: by the harmonic mean of each type's
    control and stimulated counts. Sparse input gives the same, and a type seen in one
    condition only, or outside the training cells, is left out."""
    import scipy.sparse as sp

    from engine.perturb import mean_shift

    genes = 3
    groups = [  # (type, condition, cells, value of every gene)
        ("A", "c", 4, 1.0),
        ("A", "s", 4, 3.0),  # shift +2, weight 4
        ("B", "c", 1, 5.0),
        ("B", "s", 3, 4.0),  # shift -1, weight 2 / (1 + 1/3) = 1.5
        ("C", "c", 5, 9.0),  # control only: no shift
        ("D", "c", 2, 0.0),
        ("D", "s", 2, 100.0),  # not training cells
    ]
    x = np.concatenate([np.full((n, genes), v) for _, _, n, v in groups])
    types = np.repeat([g[0] for g in groups], [g[2] for g in groups])
    cond = np.repeat([g[1] for g in groups], [g[2] for g in groups])
    train = types != "D"
    for m in (x, sp.csr_matrix(x)):
        np.testing.assert_allclose(mean_shift(m, cond, types, train, "c", "s"), [0.5] * genes)
        weighted = mean_shift(m, cond, types, train, "c", "s", weighted=True)
        np.testing.assert_allclose(weighted, [(4 * 2 + 1.5 * -1) / 5.5] * genes)
    assert not mean_shift(x, cond, types, types == "C", "c", "s").any()  # no pair: no shift


def test_sampled_delta_carries_the_held_out_types_composition():
    """The scGen package's vector compares all control cells with the stimulated ones, so the
    control cells of the held-out type pull it towards the other types (why 'paired' is the
    default); it is kept, as an option, for comparison with the package."""
    from engine.models.scgen import latent_delta

    zc, tc, zs, ts, expected = _latent_design()
    got = latent_delta(lambda z: z, zc, tc, zs, ts, seed=0, how="sampled")
    # balanced control mean includes T at (0, 10): the vector's second coordinate drops by ~10/3
    assert got[1] < expected[1] - 2.5
    with pytest.raises(ValueError):
        latent_delta(lambda z: z, zc, tc, zs, ts, seed=0, how="other")


def test_paired_delta_without_a_shared_type_says_so():
    from engine.models.scgen import latent_delta

    zc, tc, zs, ts, _ = _latent_design()
    only_a, only_b = tc == "A", ts == "B"
    with pytest.raises(ScwbError, match="both conditions in one cell type"):
        latent_delta(lambda z: z, zc[only_a], tc[only_a], zs[only_b], ts[only_b], 0, "paired")
    none = np.zeros(0, dtype=bool)
    for how in ("paired", "sampled"):
        with pytest.raises(ScwbError, match="both conditions"):
            latent_delta(lambda z: z, zc, tc, zs[none], ts[none], 0, how)


def test_scgen_predicts_held_out_cell_type(tmp_path, lognorm_file):
    metrics = train.run(_b_cell_spec(tmp_path, lognorm_file, epochs=25))
    keys = [
        "r2_mean_all",
        "r2_mean_top100",
        "r2score_mean_all",
        "r2score_mean_top100",
        "r2_var_all",
        "pearson_delta",
        "direction_top20",
    ]
    for k in keys:
        for prefix in ("", "baseline_noshift_", "baseline_meanshift_"):
            assert prefix + k in metrics
    assert metrics["r2_mean_all"] > metrics["baseline_noshift_r2_mean_all"]
    # the predicted response correlates with the real one (0.74-0.83 over seeds 0-4 here);
    # the sign agreement on the top-20 genes swings from 0.35 to 0.8 with the seed on this
    # 600-cell set, so it is checked as a share, not against a level
    assert metrics["pearson_delta"] > 0.6 and 0 <= metrics["direction_top20"] <= 1
    res = ad.read_h5ad(tmp_path / "run" / "results.h5ad")
    # the ceiling is a property of the real cells: the same as computed from them directly
    real = (res.obs["cell_type"] == "B cell") & (res.obs["condition"] == "stimulated")
    assert metrics["ceiling_r2_mean_all"] == pytest.approx(
        evaluate.noise_ceiling(res[real.to_numpy()].X)
    )
    assert 0 < metrics["ceiling_r2_mean_all"] <= 1
    pred = res[res.obs["condition"] == "predicted"]
    n_ctrl = ((res.obs["cell_type"] == "B cell") & (res.obs["condition"] == "control")).sum()
    assert pred.n_obs == n_ctrl and set(pred.obs["cell_type"]) == {"B cell"}
    # against the mean-shift: the difference, its interval over these cells, and their counts
    assert metrics["n_ctrl"] == n_ctrl and metrics["n_stim"] == real.sum()
    gap = metrics["r2_mean_all"] - metrics["baseline_meanshift_r2_mean_all"]
    assert metrics["meanshift_gap_r2_mean_all"] == pytest.approx(gap)
    assert metrics["meanshift_gap_ci95_low"] < metrics["meanshift_gap_ci95_high"]
    split = np.load(tmp_path / "run" / "split.npz")
    held = res.obs.iloc[split["test"]]
    assert set(held["cell_type"]) == {"B cell"} and set(held["condition"]) == {"stimulated"}
    assert not set(split["test"]) & set(split["train"]) and not set(split["test"]) & set(
        split["val"]
    )
    degs = json.loads((tmp_path / "run" / "top_degs.json").read_text())
    assert len(degs) == 100


def _groups(rng, n_ctrl, n_stim, genes=300, noise=1.0):
    """Control and stimulated cells around known means: the response is ``change``."""
    base = rng.gamma(2.0, 1.0, genes)
    change = rng.normal(0, 1.0, genes)
    ctrl = base + rng.normal(0, noise, (n_ctrl, genes))
    stim = base + change + rng.normal(0, noise, (n_stim, genes))
    return ctrl, stim, change


def test_meanshift_gap_interval_separates_a_real_lead_from_chance():
    """Many cells and a prediction that knows the response: the interval is above 0. A handful
    of cells and two predictions about as good: it spans 0. A lead of the baseline: below 0."""
    rng = np.random.default_rng(0)
    ctrl, stim, change = _groups(rng, 400, 400)
    wrong = change * 0.3 + rng.normal(0, 1.0, change.shape)  # the baseline's shift, poorer
    low, high = evaluate.meanshift_gap_interval(ctrl + change, stim, ctrl, wrong)
    assert 0 < low < high
    low, high = evaluate.meanshift_gap_interval(ctrl + wrong, stim, ctrl, change)
    assert low < high < 0
    ctrl, stim, change = _groups(rng, 6, 6, noise=3.0)
    # a prediction whose error is its cells' (it moves with the six cells resampled) against a
    # baseline off by about as much: six cells cannot tell them apart
    per_cell = ctrl + change + rng.normal(0, 1.2, ctrl.shape)
    other = change + rng.normal(0, 1.2 / np.sqrt(6), change.shape)
    low, high = evaluate.meanshift_gap_interval(per_cell, stim, ctrl, other)
    assert low < 0 < high
    # without a prediction per control cell the groups are resampled apart; too few cells: NaN
    low, high = evaluate.meanshift_gap_interval(per_cell[:4], stim, ctrl, other)
    assert low < high
    assert np.isnan(evaluate.meanshift_gap_interval(ctrl[:1], stim, ctrl[:1], change)).all()


def test_meanshift_gap_interval_is_seeded_and_bounded_in_cells():
    rng = np.random.default_rng(1)
    ctrl, stim, change = _groups(rng, 50, 40)
    pred = ctrl + change * 0.8
    a = evaluate.meanshift_gap_interval(pred, stim, ctrl, change * 0.5, seed=3)
    assert a == evaluate.meanshift_gap_interval(pred, stim, ctrl, change * 0.5, seed=3)
    small = evaluate.meanshift_gap_interval(pred, stim, ctrl, change * 0.5, max_cells=20)
    assert np.isfinite(small).all()  # subsampled (paired rows kept together), still scored


def test_against_meanshift_says_which_is_better_and_whether_it_is_chance():
    from engine.perturb import against_meanshift

    m = {"r2_mean_all": 0.95, "baseline_meanshift_r2_mean_all": 0.94, "n_ctrl": 79, "n_stim": 69}
    level, text = against_meanshift(
        {**m, "meanshift_gap_r2_mean_all": 0.01, "meanshift_gap_ci95_low": 0.004,
         "meanshift_gap_ci95_high": 0.016}, "TA", "scGen")  # fmt: skip
    assert level == "success" and text == (
        "For TA, scGen beats the mean-shift baseline: scGen's R² of mean expression (all genes) "
        "is 0.010 above the baseline's (95% interval of the difference +0.004 to +0.016 over its 79 control and 69 stimulated "
        "cells)."
    )
    level, text = against_meanshift(
        {**m, "meanshift_gap_r2_mean_all": -0.008, "meanshift_gap_ci95_low": -0.016,
         "meanshift_gap_ci95_high": -0.002}, "E.P", "scGen")  # fmt: skip
    assert level == "warning" and "mean-shift baseline predicts better than scGen" in text
    assert "scGen's R² of mean expression (all genes) is 0.008 below the baseline's" in text
    level, text = against_meanshift(
        {**m, "meanshift_gap_r2_mean_all": -0.016, "meanshift_gap_ci95_low": -0.039,
         "meanshift_gap_ci95_high": 0.012, "n_ctrl": 7, "n_stim": 22}, "Tuft", "scGen")  # fmt: skip
    assert level == "info" and "cannot be told apart" in text and "7 control and 22" in text
    _, text = against_meanshift(
        {**m, "meanshift_gap_r2_mean_all": -0.0004, "meanshift_gap_ci95_low": -0.01,
         "meanshift_gap_ci95_high": 0.01}, "Goblet", "scGen")  # fmt: skip
    assert "(all genes) is equal (to 3 decimals) to the baseline's" in text
    assert "-0.000" not in text
    # a run scored before the interval existed: the sign alone, as before
    assert against_meanshift(m, "TA")[0] == "success"
    old = {"r2_mean_all": 0.90, "baseline_meanshift_r2_mean_all": 0.92}
    assert against_meanshift(old, "TA", "scGen") == (
        "warning",
        "For TA, scGen does not beat the simple mean-shift baseline: scGen's R² of mean "
        "expression (all genes) is 0.020 below the baseline's.",
    )
    # the top-100 DEGs said after the verdict, which may point the other way (a browser pass)
    degs = {**old, "r2_mean_top100": 0.725, "baseline_meanshift_r2_mean_top100": 0.687}
    assert against_meanshift(degs, "TA", "scGen")[1].endswith(
        " On the top-100 DEGs, scGen's R² is 0.038 above the baseline's (0.725 against 0.687)."
    )
    assert against_meanshift({"r2_mean_all": float("nan")}, "TA") is None
    assert against_meanshift({}, "TA") is None


def test_leave_one_out_table(tmp_path, lognorm_file):
    spec = RunSpec(
        model="scgen",
        data=lognorm_file,
        out=str(tmp_path / "loo"),
        predict="all",
        epochs=3,
        params=SMALL,
        **DESIGN,
    )
    metrics = train.run(spec)
    table = pd.read_csv(tmp_path / "loo" / "loo.csv")
    assert sorted(table["cell_type"]) == ["B cell", "Monocyte", "NK cell", "T cell"]
    assert {"r2_mean_all", "baseline_meanshift_r2_mean_all", "beats_noshift"} <= set(table.columns)
    assert metrics["cell_types"] == list(table["cell_type"])
    assert np.isclose(metrics["r2_mean_all"], table["r2_mean_all"].mean())
    # each type has its interval; the run's mean holds no mean of intervals
    assert (table["meanshift_gap_ci95_low"] < table["meanshift_gap_ci95_high"]).all()
    assert "meanshift_gap_ci95_low" not in metrics and "meanshift_gap_r2_mean_all" in metrics


def test_sparse_input_is_never_densified_whole(tmp_path, lognorm_adata, monkeypatch):
    """At atlas scale the whole matrix must not become dense: training streams sparse rows,
    the delta, the annotation and the metrics densify only the cells they need (one cell
    type at most). The stored gene means are the ones the metrics were computed from."""
    import scipy.sparse as sp

    from engine import data, io
    from engine.perturb import GENE_MEANS, read_gene_means

    a = lognorm_adata.copy()
    a.X = sp.csr_matrix(a.X)
    path = io.write_h5ad(a, tmp_path / "sparse.h5ad")
    seen: list[int] = []
    real_dense = io.dense

    def spy(x):
        seen.append(x.shape[0])
        return real_dense(x)

    monkeypatch.setattr(io, "dense", spy)
    monkeypatch.setattr(data, "memory_budget", lambda: 0)  # the sparse host path, as at 1M cells
    spec = RunSpec(
        model="scgen",
        data=str(path),
        out=str(tmp_path / "run"),
        predict="all",
        epochs=2,
        params=SMALL,
        **DESIGN,
    )
    train.run(spec)
    largest = int(a.obs["cell_type"].value_counts().max())
    assert seen and max(seen) <= largest < a.n_obs
    table = pd.read_csv(tmp_path / "run" / "loo.csv")
    for folder, r2 in zip(table["folder"], table["r2_mean_all"], strict=True):
        means = read_gene_means(tmp_path / "run" / folder / GENE_MEANS)
        assert list(means.index) == list(a.var_names)
        assert np.corrcoef(means["predicted"], means["real"])[0, 1] ** 2 == pytest.approx(r2)


def test_predict_new_control_cells_with_saved_model(tmp_path, lognorm_file, lognorm_adata):
    spec = RunSpec(
        model="scgen",
        data=lognorm_file,
        out=str(tmp_path / "run"),
        predict="NK cell",
        epochs=2,
        params=SMALL,
        **DESIGN,
    )
    train.run(spec)
    ctrl = lognorm_adata[lognorm_adata.obs["condition"] == "control"].copy()
    out = predict.predict(spec.out, ctrl)
    pred = out[out.obs["condition"] == "predicted"]
    n_nk = int((ctrl.obs["cell_type"] == "NK cell").sum())
    assert pred.n_obs == n_nk and set(pred.obs["cell_type"]) == {"NK cell"}
    assert out.n_obs == ctrl.n_obs + n_nk and np.isfinite(out.obsm["X_scgen"]).all()
    res = ad.read_h5ad(tmp_path / "run" / "results.h5ad")
    same = res[pred.obs_names]  # the same control cells predicted in training
    np.testing.assert_allclose(dense(pred.X), dense(same.X), atol=1e-4)


def test_residual_output_is_the_cell_plus_the_decoded_change(tmp_path, lognorm_file, lognorm_adata):
    """output='residual': each control cell's own expression + decode(z + delta) - decode(z),
    never below 0 on data that never is (a browser pass found 45% of predicted values negative);
    the run's saved predictions, a reload and the decoded output of the same weights agree."""
    from engine import tasks
    from engine.tasks.perturb import _decode, _encode

    spec = _b_cell_spec(tmp_path, lognorm_file, epochs=2, output="residual")
    train.run(spec)
    ctrl = lognorm_adata[lognorm_adata.obs["condition"] == "control"].copy()
    task = tasks.load(spec.out)
    assert task.params["output"] == "residual" and task.extra["design"]["floor"] == 0.0
    residual = task.annotate(ctrl)
    task.params["output"] = "decoded"
    decoded = task.annotate(ctrl)
    pred = (residual.obs["condition"] == "predicted").to_numpy()
    b_ctrl = ctrl[(ctrl.obs["cell_type"] == "B cell").to_numpy()]
    x = dense(b_ctrl.X)
    module = task.parts[0]["module"]
    z0 = _encode(module, x, "cpu")
    recon = _decode(module, z0, "cpu")
    raw = _decode(module, z0 + task.parts[0]["delta"], "cpu")
    assert (raw + x - recon).min() < 0  # the floor has something to cut
    np.testing.assert_allclose(
        dense(residual.X[pred]), np.maximum(raw + x - recon, 0), rtol=1e-5, atol=1e-4
    )
    np.testing.assert_allclose(dense(decoded.X[pred]), np.maximum(raw, 0), rtol=1e-5, atol=1e-4)
    assert not np.allclose(dense(residual.X[pred]), dense(decoded.X[pred]), atol=1e-3)
    saved = ad.read_h5ad(tmp_path / "run" / "results.h5ad")  # what training wrote
    np.testing.assert_allclose(
        dense(saved[residual.obs_names[pred]].X), dense(residual.X[pred]), atol=1e-4
    )
    # a run saved before the floor predicts as it did
    task.params["output"] = "residual"
    del task.extra["design"]["floor"]
    old = task.annotate(ctrl)
    np.testing.assert_allclose(dense(old.X[pred]), raw + x - recon, rtol=1e-5, atol=1e-4)


def test_the_mean_shift_baseline_is_cut_at_the_same_floor():
    """The baseline is held to the prediction's rule: each control cell + the shift, cut at 0."""
    from engine.tasks.perturb import score_prediction

    rng = np.random.default_rng(0)
    ctrl = rng.exponential(1.0, (40, 30)) * (rng.random((40, 30)) < 0.5)
    real = np.maximum(ctrl[:30] + rng.normal(0.3, 0.5, (30, 30)), 0)
    shift = rng.normal(0, 1.0, 30)
    pred = np.maximum(ctrl + shift * 0.9, 0)
    names = np.array([f"g{i}" for i in range(30)])
    cut = score_prediction(pred, real, ctrl, names, shift, seed=0, floor=0.0)
    uncut = score_prediction(pred, real, ctrl, names, shift, seed=0)
    expect = evaluate.r2_pearson(np.maximum(ctrl + shift, 0).mean(0), real.mean(0))
    assert cut["baseline_meanshift_r2_mean_all"] == pytest.approx(expect)
    assert uncut["baseline_meanshift_r2_mean_all"] == pytest.approx(
        evaluate.r2_pearson((ctrl + shift).mean(0), real.mean(0))
    )
    low, high = cut["meanshift_gap_ci95_low"], cut["meanshift_gap_ci95_high"]
    assert low <= cut["meanshift_gap_r2_mean_all"] <= high


def test_leave_one_out_targets_never_share_a_folder(tmp_path, lognorm_adata):
    a = lognorm_adata.copy()
    names = {
        "T cell": "α-cell",
        "B cell": "β-cell",
        "Monocyte": "δ-cell",
        "NK cell": "细胞 CD4,CD8",
    }
    a.obs["cell_type"] = a.obs["cell_type"].astype(str).map(names).astype("category")
    path = tmp_path / "greek.h5ad"
    a.write_h5ad(path)
    spec = RunSpec(
        model="scgen",
        data=str(path),
        out=str(tmp_path / "loo"),
        predict="all",
        epochs=1,
        params=SMALL,
        **DESIGN,
    )
    train.run(spec)
    table = pd.read_csv(tmp_path / "loo" / "loo.csv")
    assert sorted(table["cell_type"]) == sorted(names.values())
    assert table["folder"].nunique() == 4
    for folder, target in zip(table["folder"], table["cell_type"], strict=True):
        meta = json.loads((tmp_path / "loo" / folder / "model.json").read_text())
        assert meta["target"] == target
        assert (tmp_path / "loo" / folder / "metrics.json").exists()
    res = ad.read_h5ad(tmp_path / "loo" / "results.h5ad")
    info = res.uns["scwb"]["perturb"]
    assert list(info["targets"]) == list(table["cell_type"])
    assert list(info["target_dirs"]) == list(table["folder"])
    assert list(res.uns["scwb"]["loo_table"]["cell_type"]) == list(table["cell_type"])


def test_metric_definitions():
    rng = np.random.default_rng(0)
    ctrl = rng.random((50, 30))
    real = ctrl + np.linspace(0, 1, 30)
    genes = np.array([f"g{i}" for i in range(30)])
    perfect = evaluate.perturbation(real, real, ctrl, genes, list(genes[::-1]))
    assert perfect["r2_mean_all"] == pytest.approx(1) and perfect[
        "r2score_mean_all"
    ] == pytest.approx(1)
    assert perfect["pearson_delta"] == pytest.approx(1) and perfect["direction_top20"] == 1
    noshift = evaluate.perturbation(ctrl, real, ctrl, genes, list(genes), prefix="b_")
    assert noshift["b_r2score_mean_all"] < 1
    # no predicted change: no correlation with the real one and no direction (it read 0.0000)
    assert np.isnan(noshift["b_pearson_delta"]) and np.isnan(noshift["b_direction_top20"])


def test_noise_ceiling_matches_the_r2_of_the_true_mean():
    """Cells = true per-gene means + noise: the expected squared correlation between the true
    means and the mean of n cells is var(means) / (var(means) + noise^2 / n)."""
    rng = np.random.default_rng(1)
    truth = rng.normal(0, 1, 3000)
    for n, noise in ((20, 3.0), (8, 2.0), (200, 3.0)):
        cells = truth + rng.normal(0, noise, (n, truth.size))
        expected = 1 / (1 + noise**2 / n)
        assert evaluate.noise_ceiling(cells) == pytest.approx(expected, abs=0.03), (n, noise)
        # a perfect prediction's R² against these cells sits at the ceiling
        observed = np.corrcoef(truth, cells.mean(0))[0, 1] ** 2
        assert evaluate.noise_ceiling(cells) == pytest.approx(observed, abs=0.03)
    # a large type: halves of a subsample, lifted to all its cells (sparse rows, as stored)
    import scipy.sparse as sp

    cells = truth + rng.normal(0, 10.0, (3000, truth.size))
    big = evaluate.noise_ceiling(sp.csr_matrix(cells), max_cells=400)
    assert big == pytest.approx(1 / (1 + 100 / 3000), abs=0.02)
    assert np.isnan(evaluate.noise_ceiling(rng.random((3, 50))))  # too few cells to split
    assert np.isnan(evaluate.noise_ceiling(np.full((10, 50), np.nan)))  # no finite value
    assert evaluate.noise_ceiling(np.tile(truth, (10, 1))) == pytest.approx(1)  # no noise


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(stim="infected"), "no stimulated value 'infected'"),
        (dict(predict="Platelet"), "no value 'Platelet'"),
        (dict(condition_key="nope"), "no column 'nope'"),
    ],
)
def test_design_errors(tmp_path, lognorm_file, change, message):
    kw = DESIGN | dict(predict="B cell") | change
    with pytest.raises(ScwbError, match=message):
        train.run(
            RunSpec(
                model="scgen",
                data=lognorm_file,
                out=str(tmp_path / "r"),
                epochs=1,
                params=SMALL,
                **kw,
            )
        )


def test_target_without_control_cells(tmp_path, lognorm_adata):
    a = lognorm_adata[
        ~(
            (lognorm_adata.obs["cell_type"] == "B cell")
            & (lognorm_adata.obs["condition"] == "control")
        )
    ].copy()
    path = tmp_path / "noctrl.h5ad"
    a.write_h5ad(path)
    with pytest.raises(ScwbError, match="no control cells"):
        train.run(
            RunSpec(
                model="scgen",
                data=str(path),
                out=str(tmp_path / "r"),
                epochs=1,
                params=SMALL,
                predict="B cell",
                **DESIGN,
            )
        )


def test_target_with_one_control_cell_is_predicted_not_scored(tmp_path, lognorm_adata):
    """One control B cell: the DEG test of the scoring (scanpy's Wilcoxon) failed after
    training with 'Could not calculate statistics for groups ctrl'. The cell is predicted;
    scoring needs two cells a side, and the run completes without metrics."""
    b_ctrl = np.flatnonzero(
        (lognorm_adata.obs["cell_type"] == "B cell") & (lognorm_adata.obs["condition"] == "control")
    )
    keep = np.setdiff1d(np.arange(lognorm_adata.n_obs), b_ctrl[1:])
    path = tmp_path / "onectrl.h5ad"
    lognorm_adata[keep].copy().write_h5ad(path)
    metrics = train.run(_b_cell_spec(tmp_path, str(path), epochs=1))
    assert "r2_mean_all" not in metrics
    res = ad.read_h5ad(tmp_path / "run" / "results.h5ad")
    predicted = (res.obs["condition"] == "predicted") & (res.obs["cell_type"] == "B cell")
    assert predicted.sum() == 1
    assert json.loads((tmp_path / "run" / "status.json").read_text())["state"] == "completed"


def test_scgen_refuses_counts(tmp_path, counts_file):
    with pytest.raises(ScwbError, match="raw counts"):
        train.run(
            RunSpec(
                model="scgen",
                data=counts_file,
                out=str(tmp_path / "r"),
                epochs=1,
                params=SMALL,
                predict="B cell",
                **DESIGN,
            )
        )


def test_a_results_file_with_predicted_cells_is_refused(tmp_path, lognorm_adata):
    a = lognorm_adata.copy()
    a.obs["condition"] = a.obs["condition"].astype(str)
    a.obs.iloc[:5, a.obs.columns.get_loc("condition")] = "predicted"
    path = tmp_path / "results_like.h5ad"
    a.write_h5ad(path)
    with pytest.raises(ScwbError, match="already holds 'predicted' cells"):
        train.run(
            RunSpec(
                model="scgen",
                data=str(path),
                out=str(tmp_path / "r"),
                epochs=1,
                params=SMALL,
                predict="B cell",
                **DESIGN,
            )
        )


def test_a_run_saved_before_the_delta_option_stays_sampled(tmp_path):
    """Runs saved before 'delta' existed used the package's resampled vector: loading, reproducing
    and grouping them must keep saying so, not take today's default."""
    from engine import export, seeds
    from engine.tasks.perturb import Perturb

    old = {"n_hidden": 800, "n_layers": 2, "n_latent": 100, "dropout": 0.2, "kl_weight": 5e-5}
    meta = {"model": "scgen", "params": old, "setup": {"var_names": ["g1", "g2"]}, "extra": {}}
    assert Perturb.from_metadata(meta).params["delta"] == "sampled"
    new = {**meta, "params": {**old, "delta": "paired"}}
    assert Perturb.from_metadata(new).params["delta"] == "paired"

    record = {"model": "scgen", "data": "d.h5ad", "seed": 0, "params": old, **DESIGN}
    record["predict"] = "B cell"
    (tmp_path / "run.json").write_text(json.dumps(record))
    tree = ast.parse(export.script(tmp_path))
    node = next(
        n
        for n in tree.body
        if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "SPEC"
    )
    replayed = json.loads(ast.literal_eval(node.value.args[0]))  # SPEC = json.loads('...')
    assert replayed["params"] == {**old, "delta": "sampled", "output": "decoded"}

    same = seeds.config_key({**record, "params": {**old, "delta": "sampled"}})
    assert seeds.config_key(record) == same
    assert seeds.config_key({**record, "params": {**old, "delta": "paired"}}) != same


def test_a_vector_from_the_held_out_type_alone_is_refused_in_one_line(tmp_path, lognorm_file):
    # the vector from B cells alone: their stimulated cells are the held-out ones
    spec = _b_cell_spec(tmp_path, lognorm_file, epochs=1, delta_cell_types="B cell")
    with pytest.raises(ScwbError, match="other than 'B cell' has both .* among the delta cell"):
        train.run(spec)  # refused before training (it failed after its last epoch)
    assert not (Path(spec.out) / "metrics.csv").exists()


def test_meanshift_gap_interval_covers_the_difference_it_is_about():
    """The percentile interval of a difference of R² between noisy means sat beside the
    difference itself (resampling pulls both R² down): in 64 of 150 small designs a reviewer
    tried, the printed difference lay outside its own interval. The reflected interval covers
    it."""
    outside = 0
    for seed in range(30):
        rng = np.random.default_rng(seed)
        ctrl, stim, change = _groups(rng, 50, 40, genes=200, noise=2.0)
        pred = ctrl + change * rng.uniform(0.5, 1.0)
        shift = change * rng.uniform(0.2, 0.8) + rng.normal(0, 0.3, change.shape)
        point = evaluate.r2_pearson(pred.mean(0), stim.mean(0)) - evaluate.r2_pearson(
            ctrl.mean(0) + shift, stim.mean(0)
        )
        low, high = evaluate.meanshift_gap_interval(pred, stim, ctrl, shift, seed=seed)
        outside += not (low <= point <= high)
    assert outside <= 1, outside


def test_scgen_package_decoder_has_the_packages_layout():
    """decoder='package' (a lever in bench.scgen_levers): scvi-tools' FCLayers from the latent
    to the genes, one hidden layer fewer than the encoder, BatchNorm and LeakyReLU on the output
    too; the torch-free layer count used by estimates agrees with the network."""
    from torch import nn

    from engine import models
    from engine.models.scgen import SCGEN

    net = SCGEN(50, decoder="package")
    linear = [m for m in net.decoder if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linear] == [(100, 800), (800, 50)]
    assert isinstance(net.decoder[-2], nn.LeakyReLU) and isinstance(net.decoder[-3], nn.BatchNorm1d)
    info = models.get("scgen")
    layers = models.dense_layers(info, {"decoder": "package"}, 50)
    assert layers[-2:] == [(100, 800), (800, 50)]
    mirrored = models.dense_layers(info, {}, 50)
    assert mirrored[-3:] == [(100, 800), (800, 800), (800, 50)]


def test_a_cell_type_column_that_follows_the_condition_is_refused_before_training(
    tmp_path, lognorm_adata
):
    """A browser pass: 'batch' (one batch per condition) taken as the cell-type column trained
    to its last epoch, then failed; no type other than the target holds both conditions, so no
    stimulation vector can be learned. Refused at once, the Train form says it before Submit."""
    from engine import perturb
    from engine.preflight import preflight

    a = lognorm_adata.copy()
    a.obs["batch"] = np.where(a.obs["condition"] == "control", "b0", "b1")
    for target in ("b0", "all"):
        spec = RunSpec(model="scgen", data="x", params=SMALL, **(DESIGN | dict(predict=target)))
        spec.cell_type_key = "batch"
        with pytest.raises(ScwbError, match="No cell type of 'batch' (other than|has at least)"):
            preflight(spec, a)
    # one shared type: fine for another target, refused for that type itself
    cond, types = a.obs["condition"].astype(str).to_numpy(), a.obs["cell_type"].astype(str)
    one = types.where(types == "B cell", "other" + a.obs["condition"].astype(str)).to_numpy()
    assert perturb.vector_problem(cond, one, "control", "stimulated", ["othercontrol"], "c") is None
    assert "other than 'B cell'" in perturb.vector_problem(
        cond, one, "control", "stimulated", ["B cell"], "c"
    )
    # the delta cell types narrow it
    said = perturb.vector_problem(
        cond, types.to_numpy(), "control", "stimulated", ["B cell"], "c", ["B cell"]
    )
    assert "among the delta cell types" in said
    # the package's 'sampled' vector needs cells of both conditions, not a type holding both
    # (a review: types A both, B control only, C stimulated only trained before the check)
    c3 = np.array(["control", "stimulated", "control", "stimulated"])
    t3 = np.array(["A", "A", "B", "C"])
    args = (c3, t3, "control", "stimulated", ["A"], "ct", None)
    assert "other than 'A' has both" in perturb.vector_problem(*args)
    assert perturb.vector_problem(*args, "sampled") is None
    only_a = np.array(["A", "A", "B", "A"])  # no stimulated cell but the target's
    assert "no 'stimulated' cells outside the cell type 'A'" in perturb.vector_problem(
        c3, only_a, "control", "stimulated", ["A"], "ct", None, "sampled"
    )


def test_beats_meanshift_is_decided_by_the_interval_as_the_page_says():
    """A browser pass: the page said "cannot be told apart" (interval -0.009 to +0.013) and the
    exported metrics said beats_meanshift True, from the sign alone."""
    from engine.tasks.perturb import score_prediction

    rng = np.random.default_rng(1)
    ctrl = rng.exponential(1.0, (40, 30))
    shift = rng.normal(0, 1.0, 30)
    real = np.maximum(ctrl[:30] + shift + rng.normal(0, 0.8, (30, 30)), 0)
    names = np.array([f"g{i}" for i in range(30)])
    seen = set()
    for noise in (0.0, 0.05, 0.3, 3.0):
        pred = np.maximum(ctrl + shift + rng.normal(0, noise, 30), 0)
        m = score_prediction(pred, real, ctrl, names, shift, seed=0, floor=0.0)
        low, high = m["meanshift_gap_ci95_low"], m["meanshift_gap_ci95_high"]
        word = "better" if low > 0 else "worse" if high < 0 else "cannot tell"
        assert m["vs_meanshift"] == word and m["beats_meanshift"] is (word == "better")
        seen.add(word)
    assert "cannot tell" in seen and "worse" in seen


def test_predicted_cells_carry_no_control_cells_annotations(tmp_path, lognorm_file):
    """A browser pass: in the exported .h5ad a predicted cell kept its control cell's sample
    (so a count by sample took predicted cells for real controls) and zeros in the layers the
    model does not predict (read as real empty cells). It now holds its cell type, its
    condition and the cell it was predicted from; the rest is missing (NaN)."""
    src = ad.read_h5ad(lognorm_file)
    target = str(src.obs["cell_type"].iloc[0])
    train.run(
        RunSpec(
            model="scgen",
            data=lognorm_file,
            out=str(tmp_path / "sg"),
            predict=target,
            epochs=2,
            params=SMALL,
            **DESIGN,
        )
    )
    res = ad.read_h5ad(tmp_path / "sg" / "results.h5ad")
    pred = (res.obs["condition"] == "predicted").to_numpy()
    assert pred.any()
    assert res.obs.loc[pred, "sample"].isna().all() and res.obs.loc[~pred, "sample"].notna().all()
    assert (res.obs.loc[pred, "cell_type"].astype(str) == target).all()
    sources = res.obs.loc[pred, "predicted_from"].astype(str)
    assert sources.isin(src.obs_names).all()
    assert (src.obs.loc[sources, "condition"].astype(str) == "control").all()
    counts = res.layers["counts"]
    counts = counts.toarray() if hasattr(counts, "toarray") else np.asarray(counts)
    assert np.isnan(counts[pred]).all() and np.isfinite(counts[~pred]).all()
