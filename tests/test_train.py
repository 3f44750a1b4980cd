"""Every model trains, its loss falls, the run folder holds the contract, results reload."""

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from engine import predict, runs, train
from engine.errors import ScwbError
from engine.spec import RunSpec

CONTRACT = [
    "run.json",
    "status.json",
    "metrics.csv",
    "metrics.json",
    "split.npz",
    "results.h5ad",
    "model.pt",
    "model.json",
]


def _run(tmp_path, **kw):
    kw.setdefault("out", str(tmp_path / kw["model"]))
    spec = RunSpec(**kw)
    return spec, train.run(spec)


def _loss_fell(out):
    m = runs.read_metrics_csv(out)
    return m["train_loss"].iloc[-1] < m["train_loss"].iloc[0]


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_classifiers_separable(tmp_path, separable_file, model):
    spec, metrics = _run(tmp_path, model=model, data=separable_file, label_key="label", epochs=15)
    assert metrics["test_accuracy"] >= 0.95 and metrics["test_f1_macro"] >= 0.95
    assert _loss_fell(spec.out)
    for f in CONTRACT:
        assert (tmp_path / model / f).exists(), f
    st = runs.read_status(spec.out)
    assert st["state"] == "completed" and st["epoch"] >= 1 and st["device"]
    res = ad.read_h5ad(tmp_path / model / "results.h5ad")
    assert (res.obs["pred_label"].astype(str) == res.obs["label"].astype(str)).mean() > 0.95
    record = json.loads((tmp_path / model / "run.json").read_text())
    assert (
        record["data_shape"] == [300, 20]
        and record["versions"]["torch"]
        and record["device_used"] == "cpu"
    )


def test_sk_logreg_baseline_same_split(tmp_path, separable_file):
    _run(tmp_path, model="mlp", data=separable_file, label_key="label", epochs=3)
    _, metrics = _run(tmp_path, model="sk_logreg", data=separable_file, label_key="label")
    assert metrics["test_accuracy"] > 0.95
    a, b = np.load(tmp_path / "mlp" / "split.npz"), np.load(tmp_path / "sk_logreg" / "split.npz")
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(a[part], b[part])
    assert len(set(a["train"]) & set(a["test"])) == 0
    # the results say which cells each part held, so an exported file can be scored alone
    res = ad.read_h5ad(tmp_path / "sk_logreg" / "results.h5ad")
    assert res.uns["scwb"]["split_key"] == "split"
    for part in ("train", "val", "test"):
        assert (np.flatnonzero(res.obs["split"] == part) == np.sort(b[part])).all()
    test = res.obs.iloc[np.sort(b["test"])]
    acc = (test["pred_label"].astype(str) == test["label"].astype(str)).mean()
    assert acc == pytest.approx(metrics["test_accuracy"])


def test_split_column_never_replaces_the_inputs(tmp_path, separable_file):
    """An input that has its own obs['split'] keeps it; the run's goes to split_<model>."""
    a = ad.read_h5ad(separable_file)
    a.obs["split"] = "mine"
    own = str(tmp_path / "own.h5ad")
    a.write_h5ad(own)
    _run(tmp_path, model="sk_logreg", data=own, label_key="label")
    res = ad.read_h5ad(tmp_path / "sk_logreg" / "results.h5ad")
    assert (res.obs["split"] == "mine").all()
    assert res.uns["scwb"]["split_key"] == "split_sk_logreg"
    assert set(res.obs["split_sk_logreg"]) == {"train", "val", "test"}


def test_binary_logreg_uses_sigmoid(tmp_path, separable_file):
    a = ad.read_h5ad(separable_file)
    a = a[a.obs["label"] != "c"].copy()
    path = tmp_path / "binary.h5ad"
    a.write_h5ad(path)
    spec, metrics = _run(tmp_path, model="logreg", data=str(path), label_key="label", epochs=10)
    state = torch.load(tmp_path / "logreg" / "model.pt", weights_only=True)
    assert state["head.weight"].shape[0] == 1
    assert metrics["test_accuracy"] > 0.9


def test_autoencoder_abnormality_slots_and_train_on(tmp_path, lognorm_adata):
    """scQUEST's recipe: MinMax-scaled input, trained on control cells only; stimulated cells,
    unseen in training, must score as more abnormal."""
    from engine import preprocess as pp
    from engine.io import write_h5ad

    scaled, _ = pp.apply(lognorm_adata, pp.Recipe([pp.Step("scale", {"method": "minmax"})]))
    path = str(write_h5ad(scaled, tmp_path / "minmax.h5ad"))
    spec, metrics = _run(
        tmp_path,
        model="autoencoder",
        data=path,
        epochs=20,
        lr=1e-2,
        train_on={"condition": ["control"]},
        params={"widths": "32,8"},
    )
    assert _loss_fell(spec.out)
    assert (
        json.loads((tmp_path / "autoencoder" / "model.json").read_text())["dims"]["sigmoid_output"]
        is True
    )
    res = ad.read_h5ad(tmp_path / "autoencoder" / "results.h5ad")
    assert res.obsm["X_autoencoder"].shape == (res.n_obs, 8)
    x = res.X.toarray() if hasattr(res.X, "toarray") else res.X
    np.testing.assert_allclose(res.layers["residual"], x - res.layers["reconstruction"], atol=1e-5)
    np.testing.assert_allclose(
        res.obs["abnormality"], (res.layers["residual"] ** 2).mean(1), rtol=1e-4
    )
    split = np.load(tmp_path / "autoencoder" / "split.npz")
    assert set(res.obs["condition"].iloc[split["train"]]) == {"control"}
    assert metrics["abnormality_others"] > metrics["abnormality_trained_on"]
    assert metrics["abnormality_auroc"] > 0.7, "stimulated cells score as the abnormal ones"
    # the test error is the reference group's own held-out cells' (it mixed in the abnormal
    # ones); every cell outside the group is marked as such in the exported split
    control = (res.obs["condition"] == "control").to_numpy()
    held_out = split["test"][control[split["test"]]]
    assert np.isclose(metrics["test_mse"], res.obs["abnormality"].iloc[held_out].mean())
    assert set(res.obs["split"][~control]) == {"outside reference"}
    assert set(res.obs["split"][control]) == {"train", "val", "test"}


def test_pca_baseline_never_takes_as_many_components_as_genes(tmp_path, lognorm_adata):
    """n_components 4096 on 50 genes was capped at 50: an identity with a train error of
    1e-12, no baseline. It is capped below the genes (the app pairs PCA with a network's
    latent size, which may exceed a small panel)."""
    from engine.io import write_h5ad

    small = lognorm_adata[:, :12].copy()
    path = str(write_h5ad(small, tmp_path / "small.h5ad"))
    _, metrics = _run(tmp_path, model="pca", data=path, params={"n_components": 4096})
    assert metrics["test_mse"] > 1e-6 and metrics["train_mse"] > 1e-6
    res = ad.read_h5ad(tmp_path / "pca" / "results.h5ad")
    assert res.obsm["X_pca_baseline"].shape[1] == 11


def test_pca_baseline(tmp_path, lognorm_file):
    _, metrics = _run(tmp_path, model="pca", data=lognorm_file, params={"n_components": 4})
    assert metrics["test_mse"] > 0
    res = ad.read_h5ad(tmp_path / "pca" / "results.h5ad")
    assert res.obsm["X_pca_baseline"].shape[1] == 4
    assert "X_pca" not in res.obsm, "the baseline writes under its own key"


@pytest.mark.parametrize("likelihood", ["nb", "zinb"])
def test_vae_on_counts(tmp_path, counts_file, likelihood):
    spec, metrics = _run(
        tmp_path,
        model="vae",
        data=counts_file,
        label_key="cell_type",
        epochs=12,
        params={"likelihood": likelihood, "kl_warmup": 5},
    )
    assert _loss_fell(spec.out)
    assert np.isfinite(metrics["test_elbo"]) and metrics["latent_knn_accuracy"] > 0.8
    res = ad.read_h5ad(tmp_path / "vae" / "results.h5ad")
    assert res.obsm["X_vae"].shape == (res.n_obs, 10)
    assert res.layers["denoised"].shape == res.shape and (res.layers["reconstruction"] >= 0).all()


def test_vae_batch_and_counts_layer(tmp_path, lognorm_file):
    _, metrics = _run(
        tmp_path, model="vae", data=lognorm_file, epochs=3, params={"batch_key": "sample"}
    )
    meta = json.loads((tmp_path / "vae" / "model.json").read_text())
    assert meta["setup"]["layer"] == "counts" and meta["setup"]["batch_key"] == "sample"
    assert meta["dims"]["n_batch"] == 3
    assert np.isfinite(metrics["test_elbo"])


def test_vae_refuses_normalised_for_nb(tmp_path, lognorm_file):
    with pytest.raises(ScwbError, match="non-integer"):
        _run(tmp_path, model="vae", data=lognorm_file, layer="X", epochs=1)


def test_determinism(tmp_path, lognorm_file):
    _, m1 = _run(
        tmp_path,
        model="mlp",
        data=lognorm_file,
        label_key="cell_type",
        epochs=3,
        out=str(tmp_path / "a"),
    )
    _, m2 = _run(
        tmp_path,
        model="mlp",
        data=lognorm_file,
        label_key="cell_type",
        epochs=3,
        out=str(tmp_path / "b"),
    )
    assert m1 == m2
    pd.testing.assert_frame_equal(
        runs.read_metrics_csv(tmp_path / "a"), runs.read_metrics_csv(tmp_path / "b")
    )


def test_nan_loss_stops_with_advice(tmp_path, monkeypatch):
    """A loss that overflows stops the run after that epoch, with advice. (Data of 1e20 made it
    overflow once; such values are now refused before training: io.check_finite.)"""
    from engine.models.autoencoder import Autoencoder

    def overflowing(self, batch, **kw):
        out = loss(self, batch, **kw)
        return {**out, "loss": out["loss"] * float("inf")}

    loss = Autoencoder.loss
    monkeypatch.setattr(Autoencoder, "loss", overflowing)
    x = np.random.default_rng(0).normal(size=(100, 5)).astype(np.float32)
    a = ad.AnnData(
        X=x,
        obs=pd.DataFrame(
            {"y": pd.Categorical(["a", "b"] * 50)}, index=[f"c{i}" for i in range(100)]
        ),
    )
    a.var_names = [f"g{i}" for i in range(5)]
    path = tmp_path / "huge.h5ad"
    a.write_h5ad(path)
    with pytest.raises(ScwbError, match="learning rate"):
        _run(tmp_path, model="autoencoder", data=str(path), epochs=3)
    assert runs.read_metrics_csv(tmp_path / "autoencoder")["epoch"].tolist() == [1], (
        "stopped after the first bad epoch"
    )


def test_save_load_predict_and_gene_mismatch(tmp_path, lognorm_file, lognorm_adata):
    spec, _ = _run(tmp_path, model="mlp", data=lognorm_file, label_key="cell_type", epochs=5)
    res = ad.read_h5ad(tmp_path / "mlp" / "results.h5ad")
    again = predict.predict(spec.out, lognorm_adata)
    assert (again.obs["pred_cell_type"].astype(str) == res.obs["pred_cell_type"].astype(str)).all()
    shuffled = lognorm_adata[:, lognorm_adata.var_names[::-1]].copy()
    assert (
        predict.predict(spec.out, shuffled).obs["pred_cell_type"].astype(str)
        == res.obs["pred_cell_type"].astype(str)
    ).all()
    fewer = lognorm_adata[:, 10:].copy()
    with pytest.raises(ScwbError, match="lacks 10"):
        predict.predict(spec.out, fewer)
    aligned = predict.predict(spec.out, fewer, align=True)
    assert len(aligned.uns["scwb"]["missing_genes"]) == 10


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(epochs=-1), "epochs"),
        (dict(lr=0.0), "learning rate"),
        (dict(batch_size=1), "batch size"),
        (dict(params={"hidden": "a,b"}), "comma-separated"),
        (dict(params={"nope": 1}), "no parameter"),
        (dict(params={"dropout": 2.0}), "out of range"),
        (dict(label_key=None), "label column"),
        (dict(params={"dropout": float("nan")}), "finite"),
        (dict(params={"weight_decay": "inf"}), "finite"),
        (dict(params={"hidden": "100000,100000"}), "too large"),
        (dict(lr=float("nan")), "learning rate"),
        (dict(params={"hidden": "1e30"}), "comma-separated"),
    ],
)
def test_hyperparameters_out_of_range(bad, message):
    kw = dict(model="mlp", data="x.h5ad", label_key="cell_type") | bad
    with pytest.raises(ScwbError, match=message):
        RunSpec(**kw)


def test_parameter_count_over_the_budget_is_refused_before_training(monkeypatch, lognorm_adata):
    from engine.preflight import preflight

    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", "0.01")
    spec = RunSpec(model="vae", data="x", params={"n_hidden": 60000, "n_layers": 3})
    with pytest.raises(ScwbError, match="parameters .* over the memory budget"):
        preflight(spec, lognorm_adata)


def test_batch_larger_than_data_still_trains(tmp_path, separable_file):
    _, metrics = _run(
        tmp_path,
        model="logreg",
        data=separable_file,
        label_key="label",
        epochs=30,
        batch_size=100_000,
    )
    assert metrics["test_accuracy"] > 0.9, "one full batch per epoch still learns"


def test_class_too_small_for_split(tmp_path, separable_file):
    a = ad.read_h5ad(separable_file)
    a.obs["label"] = a.obs["label"].astype(str)
    a.obs.iloc[0, 0] = "rare"
    path = tmp_path / "rare.h5ad"
    a.write_h5ad(path)
    with pytest.raises(ScwbError, match="rare"):
        _run(tmp_path, model="mlp", data=str(path), label_key="label", epochs=1)


def test_sparse_counts_stay_sparse_over_budget():
    import scipy.sparse as sp

    from engine.data import Batches, DeviceMatrix

    x = sp.random(100, 30, density=0.2, format="csr", random_state=0, dtype=np.float32)
    m = DeviceMatrix(x, "cpu", budget=1000)  # 100 x 30 x 4 bytes > 1000: kept sparse
    assert not m.is_dense and m.sparse_host is not None
    idx = torch.tensor([5, 0, 99])
    np.testing.assert_array_equal(m.rows(idx).numpy(), x[[5, 0, 99]].toarray())
    seen = np.concatenate(
        [b["x"].numpy() for b in Batches({"x": m}, np.arange(100), 32, shuffle=True)]
    )
    assert seen.shape == (100, 30) and np.isclose(seen.sum(), x.sum())
    assert DeviceMatrix(x, "cpu").is_dense


@pytest.mark.parametrize("model, kw", [("autoencoder", {}), ("mlp", {"label_key": "cell_type"})])
def test_run_writes_results_without_copying_its_input(
    tmp_path, lognorm_file, monkeypatch, model, kw
):
    """The worker hands its input to the output (at a million cells a copy of X is GBs, and
    pushed a VAE run past the memory budget); the results still hold the input unchanged."""
    import anndata as ad

    from engine import io

    n = io.read(lognorm_file).n_obs
    copies: list[int] = []
    real_copy = ad.AnnData.copy

    def spy(self, *a, **k):
        copies.append(self.n_obs)
        return real_copy(self, *a, **k)

    monkeypatch.setattr(ad.AnnData, "copy", spy)
    run_dir = tmp_path / "run"
    train.run(RunSpec(model=model, data=lognorm_file, out=str(run_dir), epochs=2, **kw))
    assert n not in copies
    monkeypatch.setattr(ad.AnnData, "copy", real_copy)
    res, src = ad.read_h5ad(run_dir / "results.h5ad"), io.read(lognorm_file)
    assert (io.dense(res.X) == io.dense(src.X)).all()
    assert set(src.obsm) < set(res.obsm) and set(src.obs.columns) < set(res.obs.columns)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda m: m["params"].update(hidden="65536,65536"),
            r"GB of weights\), over the memory budget",
        ),
        (lambda m: m.update(setup="x"), "does not describe a model"),
        (lambda m: m.update(params=[1]), "its params are not a table"),
        (lambda m: m["setup"].update(var_names=[{"a": 1}]), "gene names are not a list"),
        (lambda m: m["setup"].update(classes=None), "names no two classes"),
        (lambda m: m["setup"].update(classes=["A"]), "names no two classes"),
        (lambda m: m["setup"].update(classes=["A", "B", "A", "C"]), "names a class twice"),
        (
            lambda m: m["setup"].update(var_names=["HES4"] * len(m["setup"]["var_names"])),
            "names a gene twice",
        ),
        (lambda m: m.update(model=["mlp"]), "does not describe a model"),
    ],
)
def test_predict_refuses_a_damaged_model_json_in_one_line(tmp_path, lognorm_file, edit, message):
    """A run folder edited by hand (a hostile-input pass): predict built a network of the sizes
    model.json named before reading any weight (16 GB asked for), and fields of the wrong type
    ended in unexpected TypeErrors and IndexErrors. Each is one line now."""
    import shutil

    spec, _ = _run(tmp_path, model="mlp", data=lognorm_file, label_key="cell_type", epochs=1)
    bad = tmp_path / "bad"
    shutil.copytree(spec.out, bad)
    meta = json.loads((bad / "model.json").read_text())
    edit(meta)
    (bad / "model.json").write_text(json.dumps(meta))
    with pytest.raises(ScwbError, match=message):
        predict.predict(bad, ad.read_h5ad(lognorm_file))


def test_stopped_early_is_recorded_only_before_the_cap(tmp_path, lognorm_file):
    """A browser pass: a run that trained all 20 of its 20 epochs was called 'stopped early at
    epoch 20 of 20'. The flag is EarlyStopping's own reason, before the cap (a review: its
    stopped_epoch is also 0 for a stop at the first epoch)."""
    early = tmp_path / "early"
    train.run(  # patience 1: the first epoch that does not improve ends it
        RunSpec(
            model="mlp", data=lognorm_file, label_key="cell_type", epochs=300, patience=1,
            out=str(early),
        )
    )  # fmt: skip
    st = runs.read_status(early)
    assert st["stopped_early"] is True and st["epoch"] < 300, st
    full = tmp_path / "full"
    train.run(
        RunSpec(
            model="mlp", data=lognorm_file, label_key="cell_type", epochs=3, patience=100,
            out=str(full),
        )
    )  # fmt: skip
    st = runs.read_status(full)
    assert st["stopped_early"] is False and st["epoch"] == 3, st


def test_unstable_training_is_recognised_from_its_loss():
    """Curves measured on pbmc68k_reduced (10 classes): an MLP at lr 0.5 and 5 blew up in its
    first epoch; at lr 0.05 it only overfitted (a loss near 0 moving 0.01 -> 0.09 is noise);
    an autoencoder at lr 1 jumped from 5.4 to 1.5e11 at epoch 6."""
    from engine import evaluate

    assert "reached 179 at epoch 1" in evaluate.unstable([178.6, 60.5, 27.4, 20.8], 10)
    assert "ln 10 = 2.30" in evaluate.unstable([16676.0, 6228.6, 298.3], 10)
    sane = [2.04, 0.575, 0.208, 0.076, 0.027, 0.022, 0.053, 0.038, 0.027, 0.0104, 0.094]
    assert evaluate.unstable(sane, 10) is None
    assert evaluate.unstable([2.16, 1.59, 1.18, 0.89, 0.71], 10) is None
    ae = [4.2e10, 5.44, 12.1, 17.6, 21.6, 1.5e11, 21.4]
    assert "jumped from 5.44 to 1.5e+11 at epoch 6" in evaluate.unstable(ae)
    assert evaluate.unstable([3.5, 1.04, 1.05, 1.03, 1.02, 1.01]) is None
    assert evaluate.unstable([]) is None and evaluate.unstable([float("nan")], 3) is None


def test_a_learning_rate_too_high_is_said_on_results_and_the_command_line(
    lognorm_file, capsys, workspace
):
    """An MLP at lr 1 on the 4-type set reaches a loss of about 2,000 in its first epoch and
    0.25 accuracy; at its default lr nothing is said."""
    from engine import cli
    from tests.test_app_results import app

    out = workspace / "runs" / "hot"
    argv = ["train", "--model", "mlp", "--data", lognorm_file, "--label-key", "cell_type"]
    assert cli.main([*argv, "--epochs", "3", "--lr", "1", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "warning: The training was unstable" in err and "learning rate (1) is likely" in err
    said = " ".join(w.value for w in app("results", run="hot").warning)
    assert "The training was unstable" in said and "the default is 0.001" in said
    calm = workspace / "runs" / "calm"
    assert cli.main([*argv, "--epochs", "3", "--out", str(calm)]) == 0
    assert "unstable" not in capsys.readouterr().err
    assert "unstable" not in " ".join(w.value for w in app("results", run="calm").warning)


def test_compare_names_the_unstable_run(lognorm_file, workspace):
    """Compare warns about a run whose loss blew up beside one that trained normally."""
    from engine import cli
    from tests.test_app_results import app

    argv = ["train", "--model", "mlp", "--data", lognorm_file, "--label-key", "cell_type"]
    for name, extra in (("hot", ["--lr", "1"]), ("calm", [])):
        out = workspace / "runs" / name
        assert cli.main([*argv, "--epochs", "3", *extra, "--out", str(out)]) == 0
    at = app("compare")
    at.multiselect[0].set_value(["hot", "calm"]).run()
    said = " ".join(w.value for w in at.warning)
    assert "Unstable training" in said and "hot" in said and "calm" not in said


def test_healthy_fits_are_not_called_unstable():
    """A review: a leave-one-out scGen's curves (one per cell type, each from its own start)
    read as a jump between types; a strongly regularised L-BFGS fit's first loss holds its L2
    penalty (20.2 at C=1e-5) while its cross-entropy was 1.39. Both were called unstable."""
    from engine import progress

    curve = pd.DataFrame(
        {
            "epoch": [1, 2, 3, 1, 2, 3],
            "cell_type": ["A"] * 3 + ["B"] * 3,
            "train_loss": [300.0, 40.0, 15.6, 311.0, 45.0, 16.0],
        }
    )
    spec = {"model": "scgen", "lr": 1e-3}
    assert progress.unstable_note(spec, {}, curve) is None
    curve.loc[4, "train_loss"] = 5000.0  # a blow-up inside B's own curve: said, and whose
    assert "(the model for B)" in progress.unstable_note(spec, {}, curve)
    lbfgs = pd.DataFrame(
        {
            "epoch": [1, 2, 3],
            "train_loss": [20.2, 1.379, 1.379],
            "train_cross_entropy": [1.392, 1.377, 1.377],
        }
    )
    spec = {"model": "logreg", "lr": 1e-3, "optimizer": "lbfgs"}
    assert progress.unstable_note(spec, {"classes": list("abcd")}, lbfgs) is None
    lbfgs["train_cross_entropy"] = [1.39, 30.0, 1.37]
    said = progress.unstable_note(spec, {"classes": list("abcd")}, lbfgs)
    assert "learning rate" not in said and "scaling" in said  # L-BFGS takes no step size
    from engine import evaluate

    assert "at epoch 3" in evaluate.unstable([float("nan"), 2.0, 500.0], 4)  # its own epoch
