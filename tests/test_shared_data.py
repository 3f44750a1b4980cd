"""Integration on the real datasets of ../shared/data (skipped where that folder is absent)."""

import pytest

from engine import io, train
from engine import preprocess as pp
from engine.spec import RunSpec
from tests.conftest import shared_file

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kang_control_prepared(tmp_path_factory):
    raw = io.read(shared_file("kang_control_counts.h5ad"))
    recipe = pp.Recipe(
        [
            pp.Step("filter_genes", {"min_cells": 3}),
            pp.Step("keep_counts"),
            pp.Step("normalize", {"target_sum": 1e6}),
            pp.Step("hvg", {"n_top": 2000}),
            pp.Step("scale", {"method": "zscore", "max_value": 10}),
        ]
    )
    out, report = pp.apply(raw, recipe)
    assert report[-1]["n_vars"] == 2000
    return str(io.write_h5ad(out, tmp_path_factory.mktemp("kang") / "kang_pre.h5ad"))


def test_mlp_on_kang_cell_types_beats_095_and_stands_beside_sk_logreg(
    tmp_path, kang_control_prepared
):
    mlp = train.run(
        RunSpec(
            model="mlp",
            data=kang_control_prepared,
            label_key="cell_type",
            epochs=30,
            out=str(tmp_path / "mlp"),
        )
    )
    base = train.run(
        RunSpec(
            model="sk_logreg",
            data=kang_control_prepared,
            label_key="cell_type",
            out=str(tmp_path / "sk"),
        )
    )
    assert mlp["test_accuracy"] >= 0.95, mlp
    assert base["test_accuracy"] >= 0.9, base


def test_vae_latent_separates_kang_cell_types(tmp_path):
    raw = io.read(shared_file("kang_control_counts.h5ad"))
    out, _ = pp.apply(raw, pp.Recipe([pp.Step("filter_genes", {"min_cells": 20})]))
    path = io.write_h5ad(out, tmp_path / "kang_counts.h5ad")
    metrics = train.run(
        RunSpec(
            model="vae", data=str(path), label_key="cell_type", epochs=15, out=str(tmp_path / "vae")
        )
    )
    assert metrics["latent_knn_accuracy"] >= 0.9, metrics
    assert metrics["latent_silhouette"] > 0, metrics


@pytest.mark.parametrize(
    "name",
    [
        "hpoly_small.h5ad",
        "kang_counts_small.h5ad",
        "cytof_phenograph.h5ad",
        "mouse_brain_10k_counts.h5ad",
        "kang_control_counts.h5ad",
    ],
)
def test_every_shared_file_reads_and_describes(name):
    d = io.describe(io.read(shared_file(name)))
    assert d["n_obs"] > 0 and d["x_kind"] in ("counts", "log-normalised", "raw intensities")


def test_scgen_on_hpoly_beats_noshift(tmp_path):
    metrics = train.run(
        RunSpec(
            model="scgen",
            data=str(shared_file("hpoly_small.h5ad")),
            condition_key="condition",
            ctrl="Control",
            stim="Hpoly.Day10",
            cell_type_key="cell_label",
            predict="TA",
            epochs=40,
            out=str(tmp_path / "scgen"),
        )
    )
    assert metrics["r2_mean_all"] > metrics["baseline_noshift_r2_mean_all"], metrics


def test_cytof_suggested_recipe_is_arcsinh_then_minmax():
    a = io.read(shared_file("cytof_phenograph.h5ad"))
    recipe = pp.Recipe.suggest(io.describe(a))
    assert [s.name for s in recipe.steps] == ["arcsinh", "scale"]
    out, _ = pp.apply(a, recipe)
    assert out.X.min() >= 0 and out.X.max() <= 1
