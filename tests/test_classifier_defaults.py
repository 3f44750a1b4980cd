"""The classifiers' defaults on a generated set where the answer is known: overlapping classes
of unequal sizes, so accuracy is well below 1 and a bad default shows."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from engine import train
from engine.io import write_h5ad
from engine.spec import RunSpec


@pytest.fixture(scope="module")
def overlapping_file(tmp_path_factory):
    """Six Gaussian classes in 60 dimensions, means close enough to overlap, sizes 40..400:
    the Bayes classifier is linear (shared covariance), so logistic regression is right."""
    rng = np.random.default_rng(7)
    sizes = [400, 250, 150, 100, 60, 40]
    g = 60
    centres = rng.normal(0, 0.35, (len(sizes), g))
    y = np.repeat(np.arange(len(sizes)), sizes)
    x = (centres[y] + rng.normal(0, 1, (len(y), g))).astype(np.float32)
    a = ad.AnnData(x, obs=pd.DataFrame({"cell_type": [f"type{i}" for i in y]}))
    a.obs_names = [f"c{i}" for i in range(len(y))]
    a.var_names = [f"g{i}" for i in range(g)]
    path = tmp_path_factory.mktemp("overlap") / "overlap.h5ad"
    write_h5ad(a, path)
    return str(path)


def _fit(tmp_path, path, model, seed=0, **kw):
    out = tmp_path / f"{model}-{seed}"
    m = train.run(
        RunSpec(model=model, data=path, label_key="cell_type", seed=seed, out=str(out), **kw)
    )
    return m, out


def _majority(path, out) -> float:
    y = ad.read_h5ad(path).obs["cell_type"].to_numpy()
    split = np.load(out / "split.npz")
    values, counts = np.unique(y[split["train"]], return_counts=True)
    return float((y[split["test"]] == values[counts.argmax()]).mean())


def test_classifier_defaults_beat_majority_and_match_sklearn(tmp_path, overlapping_file):
    got = {}
    for seed in (0,):
        sk, out = _fit(tmp_path, overlapping_file, "sk_logreg", seed)
        lr, lr_out = _fit(tmp_path, overlapping_file, "logreg", seed)
        mlp, _ = _fit(tmp_path, overlapping_file, "mlp", seed)
        maj = _majority(overlapping_file, out)
        for name, m in (("sk", sk), ("logreg", lr), ("mlp", mlp)):
            got.setdefault(name, []).append(m["test_accuracy"])
        got.setdefault("majority", []).append(maj)
        # the same convex objective as scikit-learn, solved to its optimum: the same answer
        p_sk = ad.read_h5ad(out / "results.h5ad").obsm["proba_sk_logreg"]
        p_lr = ad.read_h5ad(lr_out / "results.h5ad").obsm["proba_logreg"]
        # (scikit-learn's lbfgs stops at its own tolerance: equal to a few 1e-4 per cell)
        assert np.abs(p_sk - p_lr).mean() < 2e-3 and np.abs(p_sk - p_lr).max() < 0.05
    mean = {k: float(np.mean(v)) for k, v in got.items()}
    assert 0.55 < mean["sk"] < 0.97, mean  # a set where the answer is not trivial
    assert mean["logreg"] >= mean["sk"] - 0.01, mean
    assert mean["mlp"] >= mean["sk"] - 0.06, mean
    for name in ("logreg", "mlp"):
        assert mean[name] > mean["majority"] + 0.2, mean


def test_logreg_falls_back_to_adam_when_asked(tmp_path, overlapping_file):
    m, _ = _fit(tmp_path, overlapping_file, "logreg", params={"solver": "adam"}, epochs=30)
    assert m["test_accuracy"] > 0.5


def test_rare_class_of_three_cells_still_splits(tmp_path, overlapping_file):
    """A class of three cells lands in train, validation and test (it used to crash the split)."""
    a = ad.read_h5ad(overlapping_file)
    a.obs["cell_type"] = a.obs["cell_type"].astype(str)
    a.obs.iloc[:3, a.obs.columns.get_loc("cell_type")] = "rare"
    path = tmp_path / "rare.h5ad"
    write_h5ad(a, path)
    m, out = _fit(tmp_path, str(path), "logreg")
    split = np.load(out / "split.npz")
    rare = np.flatnonzero(a.obs["cell_type"].to_numpy() == "rare")
    for part in ("train", "val", "test"):
        assert np.isin(rare, split[part]).sum() == 1, part
    assert 0 <= m["test_accuracy"] <= 1
