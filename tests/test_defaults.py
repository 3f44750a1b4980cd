"""Defaults chosen from the data (engine.defaults) on realistic obs tables and the real files."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from engine import defaults
from tests.conftest import shared_file


def _obs(n: int = 400, seed: int = 0, **cols) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in cols.items():
        if callable(v):
            out[k] = v(rng, n)
        else:
            out[k] = pd.Categorical(rng.choice(v, n))
    return pd.DataFrame(out, index=[f"AAAC{i:06d}-1" for i in range(n)])


KANG = dict(
    cluster_id=["CD14+ Monocytes", "CD4 T cells", "B cells", "NK cells", "CD8 T cells"],
    sample_id=["ctrl101", "stim101", "ctrl107", "stim107"],
    group_id=["ctrl", "stim"],
    condition=["stimulated", "control"],
    cell_type=["CD14+ Monocytes", "CD4 T cells", "B cells", "NK cells", "CD8 T cells"],
)


@pytest.mark.parametrize(
    "values, ctrl",
    [
        (["stimulated", "control"], "control"),
        (["control", "stimulated"], "control"),
        (["stim", "ctrl"], "ctrl"),
        (["STIM", "unstim"], "unstim"),
        (["stimulated", "unstimulated"], "unstimulated"),
        (["Hpoly.Day10", "Control"], "Control"),
        (["Salmonella", "Ref"], "Ref"),
        (["COVID-19", "healthy"], "healthy"),
        (["LPS", "basal"], "basal"),
        (["drugA", "DMSO", "drugB"], "DMSO"),
        (["IFN-beta", "PBS"], "PBS"),
        (["infected", "mock"], "mock"),
        (["KO", "WT"], "WT"),
        (["treated", "Untreated"], "Untreated"),
        (["drug", "vehicle"], "vehicle"),
        (["day3", "baseline"], "baseline"),
    ],
)
def test_control_value_recognises_controls(values, ctrl):
    assert defaults.control_value(values) == ctrl
    stim = defaults.stimulated_value(values, ctrl)
    assert stim != ctrl and stim in values


def test_control_value_falls_back_to_the_most_frequent():
    s = pd.Series(["a"] * 3 + ["b"] * 7 + ["c"] * 5)
    assert defaults.control_value(s) == "b"
    assert defaults.control_value({"x": 2, "y": 9}) == "y"
    assert defaults.stimulated_value(s, "b") == "c"  # the most frequent other value


def test_stimulated_prefers_stimulated_looking_values_and_never_the_control():
    vals = {"control": 100, "day3": 500, "stimulated": 50}
    assert defaults.control_value(vals) == "control"
    assert defaults.stimulated_value(vals, "control") == "stimulated"
    # "stimulated" contains "stim" but is not a control; "unstim" is
    assert defaults.control_value({"stimulated": 900, "unstim_A": 10}) == "unstim_A"
    assert defaults.stimulated_value({"only": 3}, "only") is None
    assert defaults.control_value([]) is None


def test_kang_like_obs():
    obs = _obs(**KANG)
    assert defaults.condition_column(obs) == "condition"
    assert defaults.cell_type_column(obs) == "cell_type"
    assert defaults.label_column(obs) == "cell_type"


def test_hpoly_like_obs():
    obs = _obs(
        batch=["0", "1"],
        barcode=lambda rng, n: [f"BC{i}" for i in range(n)],
        condition=["Control", "Hpoly.Day10"],
        cell_label=["Stem", "TA.Early", "Enterocyte.Progenitor", "TA", "Enterocyte", "Goblet"],
        n_counts=lambda rng, n: rng.gamma(2, 1000, n).astype(np.float32),
        n_genes=lambda rng, n: rng.integers(500, 3000, n),
    )
    assert defaults.condition_column(obs) == "condition"
    assert defaults.cell_type_column(obs) == "cell_label"
    cond = "condition"
    ctrl = defaults.control_value(obs[cond])
    assert (ctrl, defaults.stimulated_value(obs[cond], ctrl)) == ("Control", "Hpoly.Day10")


def test_pbmc68k_like_obs_prefers_bulk_labels_over_louvain_and_never_phase():
    obs = _obs(
        bulk_labels=["CD14+ Monocyte", "Dendritic", "CD19+ B", "CD8+ Cytotoxic T", "CD56+ NK"],
        n_genes=lambda rng, n: rng.integers(500, 1500, n),
        percent_mito=lambda rng, n: rng.random(n).astype(np.float32),
        phase=["G1", "S", "G2M"],
        louvain=[str(i) for i in range(11)],
    )
    assert defaults.cell_type_column(obs) == "bulk_labels"
    assert defaults.condition_column(obs) is None
    no_bulk = obs.drop(columns="bulk_labels")
    assert defaults.cell_type_column(no_bulk) == "louvain"


def test_seurat_file_whose_first_column_is_orig_ident():
    obs = _obs(
        **{
            "orig.ident": ["pbmc_A", "pbmc_B", "pbmc_C"],
            "nCount_RNA": lambda rng, n: rng.gamma(2, 1000, n),
            "nFeature_RNA": lambda rng, n: rng.integers(200, 2000, n),
            "percent.mt": lambda rng, n: rng.random(n) * 5,
            "seurat_clusters": [str(i) for i in range(8)],
            "seurat_annotations": ["Naive CD4 T", "Memory CD4 T", "CD14 Mono", "B", "NK"],
        }
    )
    assert defaults.cell_type_column(obs) == "seurat_annotations"
    assert defaults.label_column(obs) == "seurat_annotations"
    only_ident = obs[["orig.ident", "nCount_RNA"]]
    assert defaults.cell_type_column(only_ident) is None
    assert defaults.label_column(only_ident) == "orig.ident"  # the only usable one, as a fallback


def test_never_numeric_never_per_cell_id_never_sample_or_donor():
    obs = _obs(
        cell_id=lambda rng, n: [f"cell{i}" for i in range(n)],
        labels=lambda rng, n: [f"l{i}" for i in range(n)],  # unique per cell: an id
        cluster=lambda rng, n: rng.integers(0, 5, n),  # integer dtype: numeric
        donor=["d1", "d2", "d3"],
        sample=["s1", "s2"],
        replicate=["r1", "r2"],
    )
    assert defaults.cell_type_column(obs) is None
    obs["celltype"] = pd.Categorical(np.resize(["T", "B", "Mono"], len(obs)))
    assert defaults.cell_type_column(obs) == "celltype"


def test_label_columns_offer_classes_never_measurements():
    """A classifier's label list: text columns first, then integer cluster numbers, never a
    continuous QC measurement (genes per cell gave 'class 11 has 1 cell' at Submit) nor an id;
    and the same from the describe dict the Train page reads."""
    from engine import io

    obs = _obs(
        n=1500,
        cluster=lambda rng, n: rng.integers(0, 8, n),  # cluster numbers: classes
        n_genes=lambda rng, n: rng.integers(80, 200, n),  # a measurement
        pct_mt=lambda rng, n: rng.random(n),
        cell_id=lambda rng, n: [f"c{i}" for i in range(n)],
        cell_type=["T", "B", "NK"],
        sample=["s1", "s2"],
    )
    assert defaults.label_columns(obs) == ["cell_type", "sample", "cluster"]
    a = ad.AnnData(np.zeros((len(obs), 3), dtype=np.float32), obs=obs)
    assert defaults.label_columns(io.describe(a)) == ["cell_type", "sample", "cluster"]


def test_input_matrix_prefers_transformed_cytometry_layers():
    raw = {
        "x_kind": "raw intensities",
        "layers": {"counts": "counts", "arcsinh5": "arcsinh-transformed"},
    }
    assert defaults.input_matrix(raw) == "arcsinh5"
    assert defaults.input_matrix({**raw, "layers": {}}) == "X"  # nothing better: X, warned
    assert (
        defaults.input_matrix({"x_kind": "log-normalised", "layers": {"a": "arcsinh-transformed"}})
        == "X"
    )


def test_too_many_or_too_few_classes():
    obs = _obs(cell_type=[f"type{i}" for i in range(80)], n=2000)
    assert defaults.cell_type_column(obs) is None
    assert defaults.cell_type_column(_obs(cell_type=["T"])) is None


def test_perturb_target_is_the_largest_type_with_both_conditions():
    rows = (
        [("A", "control")] * 300  # the largest, but no stimulated cells
        + [("B", "control")] * 60
        + [("B", "stimulated")] * 70
        + [("C", "control")] * 100
        + [("C", "stimulated")] * 90
        + [("D", "control")] * 400
        + [("D", "stimulated")] * 3  # too few stimulated cells to score
    )
    obs = pd.DataFrame(rows, columns=["cell_type", "condition"])
    assert defaults.perturb_target(obs, "condition", "cell_type", "control", "stimulated") == "C"
    assert defaults.perturb_targets(obs, "condition", "cell_type", "control", "stimulated") == [
        "C",
        "B",
    ]
    assert defaults.perturb_target(obs, "condition", "cell_type", "control", "nope") is None
    assert defaults.perturb_target(obs, "condition", "missing", "control", "stimulated") is None


def test_describe_output_gives_the_same_answers(lognorm_adata):
    from engine import io

    d = io.describe(lognorm_adata)
    assert defaults.condition_column(d) == defaults.condition_column(lognorm_adata) == "condition"
    assert defaults.cell_type_column(d) == defaults.cell_type_column(lognorm_adata) == "cell_type"
    vals = d["labels"]["condition"]
    assert defaults.control_value(vals) == "control"
    assert defaults.stimulated_value(vals, "control") == "stimulated"


@pytest.mark.parametrize(
    "name, cond, ctrl, stim, cell_type",
    [
        ("kang_counts_small.h5ad", "condition", "control", "stimulated", "cell_type"),
        ("hpoly_small.h5ad", "condition", "Control", "Hpoly.Day10", "cell_label"),
        ("kang_control_counts.h5ad", None, None, None, "cell_type"),
        ("cytof_phenograph.h5ad", None, None, None, "phenograph_cluster"),
    ],
)
def test_real_files(name, cond, ctrl, stim, cell_type):
    import anndata as ad

    a = ad.read_h5ad(shared_file(name), backed="r")
    obs = a.obs.copy()
    assert defaults.condition_column(obs) == cond
    assert defaults.cell_type_column(obs) == cell_type
    if cond:
        c = defaults.control_value(obs[cond])
        assert (c, defaults.stimulated_value(obs[cond], c)) == (ctrl, stim)
        target = defaults.perturb_target(obs, cond, cell_type, ctrl, stim)
        counts = pd.crosstab(obs[cell_type], obs[cond])
        both = counts[(counts[ctrl] >= 20) & (counts[stim] >= 20)]
        assert target == both.sum(axis=1).idxmax()


def test_pbmc68k_reduced():
    sc = pytest.importorskip("scanpy")
    a = sc.datasets.pbmc68k_reduced()
    assert defaults.cell_type_column(a) == "bulk_labels"
    assert defaults.condition_column(a) is None


def test_value_counts_name_each_value_once_and_skip_unused_categories():
    """Values are counted before they become text (one column of 500 cells cost 1 ms as text),
    then named as pandas writes them (a float32 0.1 is '0.1'), NaN and None kept, 1 and "1" one
    value, a categorical's unused categories left out."""
    mixed = pd.Series(["a", "b", "a", None, np.nan, 1, "1"], dtype=object)
    assert defaults._counts(mixed) == {"a": 2, "1": 2, "b": 1, "None": 1, "nan": 1}
    cat = pd.Series(pd.Categorical(["x", "y", "x"], categories=["x", "y", "unused"]))
    assert defaults._counts(cat) == {"x": 2, "y": 1}
    assert defaults._counts(pd.Series([1.0, 2.0, 1.0])) == {"1.0": 2, "2.0": 1}


def test_numeric_columns_are_judged_by_their_number_of_values():
    """A file with thousands of numeric obs columns (per-cell measurements) opened Explore in
    6 s: their values are not read, and a cell-type column beside them is still found."""
    rng = np.random.default_rng(0)
    obs = pd.DataFrame({f"m{i}": rng.normal(size=300) for i in range(50)})
    obs["cluster_id"] = rng.integers(0, 5, size=300)
    obs["cell_type"] = rng.choice(["T cell", "B cell", "NK cell"], size=300)
    cols = {c.name: c for c in defaults.columns(obs)}
    assert cols["m0"].counts == {} and cols["m0"].n_values == 300 and cols["m0"].numeric
    assert cols["cluster_id"].n_values == 5
    assert defaults.label_column(obs) == "cell_type"
    assert defaults.label_columns(obs) == ["cell_type", "cluster_id"]


def test_a_measurement_per_cell_is_neither_a_label_nor_a_group_to_test_on():
    """A browser pass: after filtering, obs['n_genes'] (187 values) was offered as a label on
    Data and as 'held-out groups of n_genes' on Train."""
    from engine.io import describe

    obs = _obs(
        donor=["d1", "d2", "d3", "d4"],
        n_genes=lambda rng, n: rng.integers(200, 400, n),
        n_counts_small=lambda rng, n: rng.integers(0, 5, n),  # few values, still a QC count
        plate=lambda rng, n: rng.integers(1, 5, n),  # plate numbers: groups
    )
    d = describe(ad.AnnData(np.ones((len(obs), 3), np.float32), obs=obs))
    assert "n_genes" not in defaults.label_columns(d)
    groups = defaults.group_columns(d)
    assert groups[0] == "donor" and "plate" in groups
    assert "n_genes" not in groups and "n_counts_small" not in groups


def test_whole_numbers_with_few_values_colour_by_group():
    """Donors 1 to 8 stored as integers were drawn on a colour scale (donor 2 read as 'between 1
    and 3'); a per-cell count or a score keeps its scale."""
    rng = np.random.default_rng(0)
    donor = pd.Series(rng.integers(1, 9, 500))
    assert defaults.colour_by_group("donor", donor)
    assert defaults.colour_by_group("leiden", donor.astype(float))  # 1.0, 2.0, ...
    assert defaults.colour_by_group("cell_type", pd.Series(["a", "b"] * 10))
    assert defaults.colour_by_group("flag", pd.Series([True, False] * 10))
    assert not defaults.colour_by_group("n_genes", donor)  # a count per cell, by its name
    assert not defaults.colour_by_group("score", pd.Series(rng.normal(size=500)))
    assert not defaults.colour_by_group("age", pd.Series(rng.integers(0, 90, 500)))  # 90 values


def test_group_labels_and_leiden_2_clusters():
    """A review: donors stored as 1.0, 2.0 or a nullable integer column showed '1.0', '<NA>' in
    the legend; clusters in leiden_2 (the data's own obs['leiden'] kept) got no cluster caution."""
    from engine import metric_names

    floats = pd.Series([1.0, 2.0, np.nan, 2.5])
    assert list(defaults.group_labels(floats)) == ["1", "2", "NA", "2.5"]
    assert list(defaults.group_labels(pd.Series([1, None], dtype="Int64"))) == ["1", "NA"]
    assert list(defaults.group_labels(pd.Series(["a", "b"]))) == ["a", "b"]
    latent = {"latent_knn_accuracy": 0.9}
    assert "leiden_2" in metric_names.cluster_caution(["leiden_2"], latent)
    assert metric_names.cluster_caution(["leiden_type"], latent) is None
