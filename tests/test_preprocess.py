import json
import re

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
import scipy.sparse as sp

from engine import preprocess as pp
from engine.errors import ScwbError


def _x(a):
    return a.X.toarray() if sp.issparse(a.X) else np.asarray(a.X)


def test_normalize_matches_scanpy(counts_adata):
    ours, report = pp.apply(counts_adata, pp.Recipe([pp.Step("normalize", {"target_sum": 1e6})]))
    ref = counts_adata.copy()
    sc.pp.normalize_total(ref, target_sum=1e6)
    sc.pp.log1p(ref)
    np.testing.assert_allclose(_x(ours), _x(ref), rtol=1e-5)
    assert sp.issparse(ours.X), "normalisation keeps sparse data sparse"
    assert [r["step"] for r in report] == ["input", "normalize"]


def test_filters_match_scanpy(counts_adata):
    ours, report = pp.apply(
        counts_adata,
        pp.Recipe(
            [
                pp.Step("filter_cells", {"min_genes": 170}),
                pp.Step("filter_genes", {"min_cells": 200}),
            ]
        ),
    )
    ref = counts_adata.copy()
    sc.pp.filter_cells(ref, min_genes=170)
    sc.pp.filter_genes(ref, min_cells=200)
    assert (
        ours.shape == ref.shape
        and ours.shape[0] < counts_adata.n_obs
        and ours.shape[1] < counts_adata.n_vars
    )
    assert report[1]["n_obs"] == ref.n_obs and report[2]["n_vars"] == ref.n_vars


def test_mito_filter(counts_adata):
    ours, _ = pp.apply(counts_adata, pp.Recipe([pp.Step("filter_cells", {"max_pct_mito": 2.0})]))
    x = _x(counts_adata)
    mito = counts_adata.var_names.str.startswith("MT-")
    pct = 100 * x[:, mito].sum(1) / x.sum(1)
    assert ours.n_obs == int((pct <= 2.0).sum()) < counts_adata.n_obs


def test_filter_cells_says_how_many_cells_fail_each_threshold(counts_adata):
    """A browser pass: the preview showed 3,000 -> 2,784 cells, with no word of how many the
    mitochondrial cut took and how many the gene threshold."""
    x = _x(counts_adata)
    genes = (x > 0).sum(1)
    mito = counts_adata.var_names.str.startswith("MT-")
    pct = 100 * x[:, mito].sum(1) / x.sum(1)
    g = int(np.percentile(genes, 30))
    _, report = pp.apply(
        counts_adata,
        pp.Recipe([pp.Step("filter_cells", {"min_genes": g, "max_pct_mito": 2.0})]),
    )
    said = report[1]["note"]
    assert f"{int((genes < g).sum()):,} fewer than {g:,} genes" in said
    assert f"{int((pct > 2.0).sum()):,} over 2% mitochondrial" in said


def test_hvg_subset_matches_scanpy(lognorm_adata):
    ours, _ = pp.apply(lognorm_adata, pp.Recipe([pp.Step("hvg", {"n_top": 50})]))
    ref = lognorm_adata.copy()
    sc.pp.highly_variable_genes(ref, n_top_genes=50, subset=True)
    assert list(ours.var_names) == list(ref.var_names)


def test_scale_zscore_and_minmax(lognorm_adata):
    z, _ = pp.apply(
        lognorm_adata, pp.Recipe([pp.Step("scale", {"method": "zscore", "max_value": 3})])
    )
    ref = lognorm_adata.copy()
    sc.pp.scale(ref, max_value=3)
    np.testing.assert_allclose(_x(z), _x(ref), rtol=1e-4, atol=1e-5)
    assert _x(z).max() <= 3.0001
    m, _ = pp.apply(lognorm_adata, pp.Recipe([pp.Step("scale", {"method": "minmax"})]))
    xm = _x(m)
    assert xm.min() >= 0 and np.isclose(xm.max(0), 1).mean() > 0.99
    from sklearn.preprocessing import MinMaxScaler

    np.testing.assert_allclose(xm, MinMaxScaler().fit_transform(_x(lognorm_adata)), atol=1e-5)


def test_arcsinh_keep_counts_subset(counts_adata):
    out, _ = pp.apply(
        counts_adata,
        pp.Recipe(
            [
                pp.Step("subset", {"key": "condition", "values": ["control"]}),
                pp.Step("keep_counts"),
                pp.Step("arcsinh", {"cofactor": 5}),
            ]
        ),
    )
    assert set(out.obs["condition"]) == {"control"}
    np.testing.assert_allclose(_x(out), np.arcsinh(out.layers["counts"].toarray() / 5), rtol=1e-5)


def test_keep_counts_never_replaces_real_counts_with_transformed_values(lognorm_adata):
    """A hostile pass: log-normalised X with raw counts in layers['counts']; --keep-counts copied
    X over them, silently, and the VAE then refused the 'counts' layer."""
    counts = lognorm_adata.layers["counts"].copy()
    out, report = pp.apply(lognorm_adata, pp.Recipe([pp.Step("keep_counts")]))
    assert (out.layers["counts"] != counts).nnz == 0
    row = next(r for r in report if r["step"] == "keep_counts")
    assert "kept the data's own layers['counts']" in str(row)


def test_recipe_round_trip_and_record(counts_adata):
    r = pp.Recipe(
        [
            pp.Step("filter_genes", {"min_cells": 3}),
            pp.Step("normalize", {"target_sum": 1e4, "log": True}),
            pp.Step("hvg", {"n_top": 100}),
        ]
    )
    assert pp.Recipe.from_json(r.to_json()) == r
    out, _ = pp.apply(counts_adata, r)
    import json

    assert [s["name"] for s in json.loads(out.uns["recipe"])["steps"]] == [
        "filter_genes",
        "normalize",
        "hvg",
    ]


def test_recipe_errors(counts_adata):
    with pytest.raises(ScwbError, match="Unknown recipe step"):
        pp.Recipe.from_json('{"steps": [{"name": "magic"}]}')
    with pytest.raises(ScwbError, match="no option"):
        pp.Recipe.from_json('{"steps": [{"name": "hvg", "params": {"n": 3}}]}')
    with pytest.raises(ScwbError, match="not valid JSON"):
        pp.Recipe.from_json("{steps")
    with pytest.raises(ScwbError, match="no cells"):
        pp.apply(counts_adata, pp.Recipe([pp.Step("filter_cells", {"min_genes": 10_000})]))


def test_suggest_from_description(counts_adata, lognorm_adata):
    from engine.io import describe

    names = [s.name for s in pp.Recipe.suggest(describe(counts_adata), n_top=100).steps]
    assert names == ["filter_cells", "filter_genes", "keep_counts", "normalize", "hvg"]
    assert pp.Recipe.suggest(describe(lognorm_adata)).steps == []
    params = {s.name: s.params for s in pp.Recipe.suggest(describe(counts_adata)).steps}
    assert params["filter_cells"] == {"min_genes": 10} and params["filter_genes"]["min_cells"] == 3


def test_suggested_filters_never_leave_nothing_on_few_genes_or_cells(counts_adata):
    """90 cells of 8 genes: the suggested 10 genes a cell left no cell (a hostile-input pass;
    the Preprocess page's default Preview said so for a one-gene upload)."""
    from engine.io import describe

    for few in (counts_adata[:90, :8].copy(), counts_adata[:90, :1].copy(), counts_adata[:4]):
        recipe = pp.Recipe.suggest(describe(few))
        out, _ = pp.apply(few, pp.Recipe([s for s in recipe.steps if s.name.startswith("filter")]))
        assert out.n_obs > 0 and out.n_vars > 0


def test_suggested_target_follows_the_sequencing_depth(counts_adata):
    """logCPM on droplet data of 137 counts per cell put one count at log1p(1e6 / 137) = 8.9
    and left a gap from 0 to 7 in every cell: CP10k is suggested below 20,000 counts per
    cell, logCPM above (plate-based depth) and when the depth is not known."""
    from engine.io import describe

    d = describe(counts_adata)
    totals = np.asarray(counts_adata.X.sum(1)).ravel()
    assert d["median_counts"] == pytest.approx(np.median(totals))
    assert d["median_counts"] < pp.DROPLET_DEPTH  # a droplet-like generated set
    norm = {s.name: s.params for s in pp.Recipe.suggest(d).steps}["normalize"]
    assert norm["target_sum"] == 1e4
    deep = counts_adata.copy()
    deep.X = deep.X * 200  # a plate-based depth
    norm = {s.name: s.params for s in pp.Recipe.suggest(describe(deep)).steps}["normalize"]
    assert norm["target_sum"] == 1e6
    assert pp.target_sum({"x_kind": "counts"}) == 1e6  # a description saved before the depth
    assert describe(deep[:, :0])["median_counts"] is None


def test_minmax_keeps_sparse_when_every_gene_has_zeros():
    import anndata as ad

    x = sp.random(50, 10, density=0.3, random_state=0, format="csr", dtype=np.float32)
    out, _ = pp.apply(ad.AnnData(X=x), pp.Recipe([pp.Step("scale", {"method": "minmax"})]))
    assert sp.issparse(out.X)
    from sklearn.preprocessing import MinMaxScaler

    np.testing.assert_allclose(
        out.X.toarray(), MinMaxScaler().fit_transform(x.toarray()), atol=1e-6
    )


@pytest.mark.parametrize("bad", ["nan", "huge"])
def test_preprocessing_refuses_values_that_are_not_finite(counts_adata, bad):
    """NaN spread through logCPM and z-score into a saved dataset (720 of 720 values), and
    values of 1e308 became an all-NaN matrix, each with exit 0. Refused in one line instead:
    the input's NaN before any step, a step's overflow by that step."""
    a = counts_adata.copy()
    a.X = a.X.toarray().astype(np.float64) if hasattr(a.X, "toarray") else a.X.astype(np.float64)
    if bad == "nan":
        a.X[0, 0] = np.nan
        message = "X holds 1 NaN or infinite values"
    else:
        a.X[:, 0] = 1e308  # refused before any step: no 32-bit float holds it
        message = "X holds values up to 1e\\+308, beyond what models compute safely"
    recipe = pp.Recipe(
        [pp.Step("normalize", {"target_sum": 1e6}), pp.Step("scale", {"method": "zscore"})]
    )
    with pytest.raises(ScwbError, match=message):
        pp.apply(a, recipe)


def _with_empty_cells(counts_adata, n_empty=3):
    """Counts where the first ``n_empty`` cells hold counts only in gene 0, which no other cell
    expresses: a gene filter leaves those cells empty."""
    a = counts_adata.copy()
    x = a.X.toarray() if sp.issparse(a.X) else np.array(a.X)
    x[:, 0] = 0
    x[:n_empty] = 0
    x[:n_empty, 0] = 5
    a.X = sp.csr_matrix(x)
    return a


def test_steps_say_what_they_did_in_the_report_not_on_stderr(counts_adata):
    """After a gene filter some cells had no counts: scanpy's "Some cells have zero counts"
    reached stderr and the cells stayed all zero unsaid; an HVG step asking for more genes than
    were left kept them all without a word. Each is said once, in the step's report row, and
    no warning escapes ``apply``."""
    import warnings

    a = _with_empty_cells(counts_adata)
    recipe = pp.Recipe(
        [
            pp.Step("filter_genes", {"min_cells": 4}),
            pp.Step("normalize", {"target_sum": 1e6}),
            pp.Step("hvg", {"n_top": 2000}),
        ]
    )
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        out, report = pp.apply(a, recipe)
    assert [str(w.message) for w in escaped if issubclass(w.category, UserWarning)] == []
    rows = {r["step"]: r for r in report}
    assert "note" not in rows["filter_genes"]
    assert rows["normalize"]["note"] == (
        "3 cells have no counts in the genes kept and stay all zero; a cell filter (min counts "
        "1) on the result drops them"
    )
    assert rows["hvg"]["note"] == f"2,000 genes asked for and {out.n_vars} left: all kept"
    assert (np.asarray(out.X[:3].sum(axis=1)).ravel() == 0).all()


@pytest.mark.parametrize("kind", ["cytometry", "zscore", "sparse"])
def test_normalize_refuses_negative_values(counts_adata, kind):
    """CyTOF intensities (negative after bead normalisation) went through log CPM into NaN and
    came back as "values too large for its arithmetic?". Refused as what it is, with the way
    out that fits what X looks like (a z-scored X is not told to take arcsinh)."""
    a = counts_adata.copy()
    x = a.X.toarray().astype(np.float32)
    if kind == "zscore":
        x = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
        n = int((x < 0).sum())
        advice = (
            "it looks scaled \\(z-score\\), which comes after normalising; normalise needs the "
            "raw counts \\(where only log-normalised values are kept, as in adata.raw of many "
            "files, start from those and leave normalize out\\)"
        )
    else:
        x[0, :4] = -0.5
        n = 4
        advice = "it looks like cytometry intensities, which take arcsinh instead"
    a.X = sp.csr_matrix(x) if kind == "sparse" else x
    lowest = f"{float(x.min()):.3g}"
    with pytest.raises(ScwbError) as err:
        pp.apply(a, pp.Recipe([pp.Step("normalize", {"target_sum": 1e6})]))
    assert re.fullmatch(
        rf"normalize needs counts \(values >= 0\); X holds {n:,} negative values \(lowest "
        rf"{re.escape(lowest)}\): {advice}\.",
        str(err.value),
    ), str(err.value)


def test_normalizing_logged_data_again_is_said(lognorm_adata, counts_adata):
    """scanpy logged "seems to be already log-transformed" to stderr; the step says what it
    sees, from the values: logged-looking values are said (with uns['log1p'] as support), and
    counts whose uns['log1p'] is stale (raw counts put back into X) are not."""
    logged = lognorm_adata.copy()
    del logged.uns["log1p"]
    _, report = pp.apply(logged, pp.Recipe([pp.Step("normalize", {"target_sum": 1e4})]))
    assert report[1]["note"] == (
        "X holds non-integer values below 30, as log-normalised data do: if it is logged "
        "already, this logs it twice"
    )
    _, report = pp.apply(lognorm_adata, pp.Recipe([pp.Step("normalize", {"target_sum": 1e4})]))
    assert "(and uns['log1p'] says it was logged)" in report[1]["note"]
    stale = counts_adata.copy()
    stale.uns["log1p"] = {"base": None}
    _, report = pp.apply(stale, pp.Recipe([pp.Step("normalize", {"target_sum": 1e4})]))
    assert "note" not in report[1]


@pytest.mark.parametrize("layout", ["csr", "csc", "dense", "matrix", "int32", "int64"])
def test_normalize_is_scanpys_bit_for_bit(counts_adata, layout):
    """normalize is written out (so that it can say what it sees) and must stay scanpy's
    normalize_total + log1p exactly, empty cells included, in every layout a file brings."""
    import anndata as ad
    import scanpy as sc

    x = counts_adata.X.toarray().astype(np.float32)
    x[:2] = 0  # empty cells: divided by 1, as scanpy does
    store = {
        "csr": sp.csr_matrix(x),
        "csc": sp.csc_matrix(x),
        "dense": x,
        "matrix": np.asmatrix(x),
        "int32": x.astype(np.int32),
        "int64": sp.csr_matrix(x.astype(np.int64)),
    }[layout]
    ours = pp.normalize(ad.AnnData(store, obs=counts_adata.obs.copy()), target_sum=1e6)
    ref = ad.AnnData(store, obs=counts_adata.obs.copy())
    if not np.issubdtype(ref.X.dtype, np.floating):
        ref.X = ref.X.astype(np.float32)
    sc.pp.normalize_total(ref, target_sum=1e6)
    sc.pp.log1p(ref)
    np.testing.assert_array_equal(_x(ours), _x(ref))
    assert ours.X.dtype == np.float32


def test_normalize_on_a_view_leaves_the_parent_alone(counts_adata):
    """Setting X on a view writes into the parent: the step works on its own object, as
    scanpy's do."""
    parent = counts_adata.copy()
    before = _x(parent).copy()
    out = pp.normalize(parent[10:50], target_sum=1e6)
    np.testing.assert_array_equal(_x(parent), before)
    assert out.n_obs == 40 and not out.is_view


def test_notes_of_concurrent_recipes_stay_apart(counts_adata):
    """The app runs recipes in several sessions' threads at once: each report holds its own
    notes only, and the process's warning filters are left as they were."""
    import threading
    import warnings

    filters = list(warnings.filters)
    empty = _with_empty_cells(counts_adata)
    recipes = {
        "empty": (
            empty,
            pp.Recipe([pp.Step("filter_genes", {"min_cells": 4}), pp.Step("normalize")]),
        ),
        "hvg": (counts_adata, pp.Recipe([pp.Step("hvg", {"n_top": 5000})])),
    }
    reports: dict[str, list] = {}

    def run(key: str) -> None:
        for _ in range(5):
            reports.setdefault(key, []).append(pp.apply(*recipes[key])[1])

    threads = [threading.Thread(target=run, args=(k,)) for k in recipes]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for rep in reports["empty"]:
        assert [r.get("note", "") for r in rep][2].startswith("3 cells have no counts")
        assert all("genes asked for" not in r.get("note", "") for r in rep)
    for rep in reports["hvg"]:
        assert rep[1]["note"].startswith("5,000 genes asked for")
        assert all("no counts" not in r.get("note", "") for r in rep)
    assert list(warnings.filters) == filters


def test_notes_stay_apart_when_steps_overlap(monkeypatch):
    """Two sessions' steps running at the same moment: each row holds its own notes only (the
    first version captured warnings process-wide and mixed them; a reviewer's test, kept)."""
    import threading

    import anndata as ad

    barrier = threading.Barrier(2, timeout=10)

    def talk(adata, who: str = ""):
        pp.note(f"{who} first")
        barrier.wait()  # both steps are running now
        pp.note(f"{who} second")
        barrier.wait()
        return adata

    monkeypatch.setitem(pp.STEPS, "talk", talk)
    reports = {}
    a = ad.AnnData(np.ones((3, 2), dtype=np.float32))

    def run(who: str) -> None:
        reports[who] = pp.apply(a, pp.Recipe([pp.Step("talk", {"who": who})]))[1]

    threads = [threading.Thread(target=run, args=(w,)) for w in "AB"]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for w in "AB":
        assert reports[w][1].get("note") == f"{w} first; {w} second", reports


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"steps": [{"name": ["hvg"]}]}', "Unknown recipe step"),
        ('{"steps": [{"name": "hvg", "params": [1]}]}', "params are a table"),
        (
            '{"steps": [{"name": "hvg", "params": {"n_top": "abc"}}]}',
            "hvg: n_top must be a finite number",
        ),
        ('{"steps": [{"name": "hvg", "params": {"n_top": -3}}]}', "hvg: n_top must be at least 1"),
        ('{"steps": [{"name": "hvg", "params": {"n_top": 2.5}}]}', "whole number"),
        # a hostile pass: taken, and its report printed a 300-digit gene count
        (
            '{"steps": [{"name": "hvg", "params": {"n_top": 1e300}}]}',
            r"too large a number \(1e\+300\)",
        ),
        ('{"steps": [{"name": "scale", "params": {"max_value": 1e300}}]}', "too large a number"),
        ('{"steps": [{"name": "normalize", "params": {"target_sum": -1}}]}', "at least 1"),
        ('{"steps": [{"name": "normalize", "params": {"target_sum": 1e-320}}]}', "at least 1"),
        ('{"steps": [{"name": "hvg", "params": {"flavor": "seurat_v3"}}]}', "one of seurat"),
        ('{"steps": [{"name": "scale", "params": {"method": "robust"}}]}', "one of minmax"),
        (
            '{"steps": [{"name": "subset", "params": {"key": ["l"], "values": ["a"]}}]}',
            "obs column",
        ),
        ('{"steps": [{"name": "subset", "params": {"key": "l", "values": 5}}]}', "list of"),
        ('{"steps": [{"name": "normalize", "params": {"log": "yes"}}]}', "true or false"),
        ('{"steps": [{"name": "arcsinh", "params": {"cofactor": "nan"}}]}', "finite number"),
        ('{"steps": [{"name": "filter_cells", "params": {"max_pct_mito": 150}}]}', "at most 100"),
        ('{"steps": [{"name": "scale", "params": {"method": 3}}]}', "is a word"),
        ("[" * 100_000, "nests too deeply"),
    ],
)
def test_recipe_files_are_checked_option_by_option(text, message):
    """Recipes typed by hand (a hostile-input pass): a list as a step name, params that are no
    table, a gene count of "abc" or -3, a negative target sum, a recursion bomb. One line each
    (they ended in TypeErrors, ValueErrors, a RecursionError, or negative 'normalised' data)."""
    with pytest.raises(ScwbError, match=message):
        pp.Recipe.from_json(text)


def test_recipe_options_keep_their_types():
    step = pp.Step("hvg", {"n_top": 300.0})  # a JSON number with a point: still a count
    assert step.params["n_top"] == 300 and isinstance(step.params["n_top"], int)
    assert pp.Step("scale", {"max_value": None}).params["max_value"] is None  # clip off
    assert pp.Step("normalize", {"target_sum": 10000}).params["target_sum"] == 1e4


def test_degenerate_data_get_one_line_from_hvg_and_apply():
    """hvg on constant X or on one cell ended in scanpy's IndexError; an AnnData whose data
    live in layers only (no X) in a TypeError from isfinite (a hostile-input pass)."""
    import anndata as ad
    import pandas as pd

    hvg = pp.Recipe([pp.Step("hvg", {"n_top": 10})])
    with pytest.raises(ScwbError, match="no gene varies"):
        pp.apply(ad.AnnData(np.ones((20, 30), np.float32)), hvg)
    one = ad.AnnData(np.random.default_rng(0).random((1, 30)).astype(np.float32))
    with pytest.raises(ScwbError, match="1 cell"):
        pp.apply(one, hvg)
    bare = ad.AnnData(obs=pd.DataFrame(index=list("abcde")), var=pd.DataFrame(index=list("xyz")))
    bare.layers["counts"] = np.ones((5, 3), np.float32)
    with pytest.raises(ScwbError, match=r"X is empty \(the data are in layers: counts\)"):
        pp.apply(bare, pp.Recipe([pp.Step("normalize")]))


def test_hvg_default_selects_on_small_gene_sets():
    """Ticking HVG on a set of no more than 2,000 genes offered all of them (a step that
    selects nothing); it offers 2,000 above that and half the genes (in hundreds) below."""
    assert pp.hvg_default(30_000) == 2000 and pp.hvg_default(2001) == 2000
    assert pp.hvg_default(2000) == 1000 and pp.hvg_default(1267) == 600
    assert pp.hvg_default(150) == 75 and pp.hvg_default(23) == 11 and pp.hvg_default(5) == 2
    assert all(1 <= pp.hvg_default(n) < n for n in range(2, 3000))


def test_hvg_on_a_panel_or_on_values_not_logged_is_said(lognorm_adata):
    """A browser pass: on krumsiek11 (11 genes, MinMax-scaled) HVG kept 5 genes and dropped the
    erythroid and megakaryocyte factors; accuracy fell from 0.98 to 0.84 without a word. The
    step's note says what it ranked and what a panel loses; log-normalised genomes: nothing."""
    import anndata as ad

    rng = np.random.default_rng(0)
    panel = ad.AnnData(rng.random((60, 11)).astype(np.float32))  # scaled (MinMax)
    out, report = pp.apply(panel, pp.Recipe([pp.Step("hvg", {"n_top": 5})]))
    assert 5 <= out.n_vars < 11  # scanpy keeps genes tied with the 5th
    assert "genes ranked on scaled (MinMax) values" in report[-1]["note"]
    assert "11 genes in all, as in a targeted panel" in report[-1]["note"]
    assert f"drops {11 - out.n_vars} of them, markers included" in report[-1]["note"]
    assert pp.hvg_cautions("log-normalised", 20_000, 2000) == []
    assert pp.hvg_cautions("log-normalised", 11, 11) == []  # all kept: nothing dropped
    assert len(pp.hvg_cautions("counts", 20_000, 2000)) == 1
    big = lognorm_adata.copy()
    _, report = pp.apply(big, pp.Recipe([pp.Step("hvg", {"n_top": 50})]))
    assert "ranked on" not in (report[-1]["note"] or "")  # log-normalised: no caution


def test_leiden_finds_the_planted_cell_types(counts_adata):
    """Four cell types planted in generated control cells: Leiden (scanpy's PCA, kNN graph and
    igraph Leiden, seeded) finds exactly them, the same clusters twice, and records how."""
    from sklearn.metrics import adjusted_rand_score

    ctrl = counts_adata[counts_adata.obs["condition"] == "control"].copy()
    recipe = pp.Recipe(
        [pp.Step("normalize", {"target_sum": 1e4}), pp.Step("leiden", {"resolution": 0.3})]
    )
    out, report = pp.apply(ctrl, recipe)
    assert adjusted_rand_score(ctrl.obs["cell_type"], out.obs["leiden"]) > 0.95
    assert list(out.obs["leiden"].cat.categories) == ["0", "1", "2", "3"]
    assert report[-1]["note"] == "4 clusters in obs['leiden'] (resolution 0.3)"
    assert out.uns["leiden"]["params"]["resolution"] == 0.3
    # its PCA is kept in scanpy's slot for Explore (a pass saw Explore compute it again)...
    n_comps = out.uns["leiden"]["params"]["n_pcs"]
    assert out.obsm["X_pca"].shape == (out.n_obs, n_comps) and n_comps >= 2
    assert out.uns["pca"]["variance_ratio"].shape == (n_comps,)
    # ...and dropped by a later step that changes the data it describes, here or in a next recipe
    later, rep = pp.apply(out, pp.Recipe([pp.Step("scale", {"method": "zscore"})]))
    assert "X_pca" not in later.obsm and "pca" not in later.uns
    assert "dropped leiden's obsm['X_pca']: scale changed" in rep[-1]["note"]
    # a step that keeps the values (keep_counts, a cell filter) keeps it, and says nothing of it;
    # Leiden again replaces its own PCA without calling it the data's own (a review)
    kept, rep = pp.apply(
        out, pp.Recipe([pp.Step("filter_cells", {"min_genes": 1}), pp.Step("leiden")])
    )
    assert "X_pca" in kept.obsm and "obsm['X_pca']" not in str(rep), rep
    own = ctrl.copy()
    own.obsm["X_pca"] = np.zeros((own.n_obs, 2), np.float32)  # the file's own, not leiden's
    kept, _ = pp.apply(own, pp.Recipe([pp.Step("normalize", {"target_sum": 1e4})]))
    assert kept.obsm["X_pca"].shape == (own.n_obs, 2)
    again, _ = pp.apply(ctrl, recipe)
    assert (again.obs["leiden"] == out.obs["leiden"]).all()
    # more resolution, more clusters; raw counts are clustered but the note says what that means
    fine, _ = pp.apply(
        ctrl,
        pp.Recipe(
            [pp.Step("normalize", {"target_sum": 1e4}), pp.Step("leiden", {"resolution": 3.0})]
        ),
    )
    assert fine.obs["leiden"].nunique() > 4
    _, raw = pp.apply(ctrl, pp.Recipe([pp.Step("leiden")]))
    assert "normalise first" in raw[-1]["note"]
    with pytest.raises(ScwbError, match="at least 3 cells"):
        pp.apply(ctrl[:2].copy(), pp.Recipe([pp.Step("leiden")]))
    flat = ctrl[:10].copy()
    flat.X = np.ones(flat.shape, np.float32)  # PCA's solver raised an ArpackError
    with pytest.raises(ScwbError, match="no gene varies"):
        pp.apply(flat, pp.Recipe([pp.Step("leiden")]))
    with pytest.raises(ScwbError, match="resolution must be above 0"):
        pp.Step("leiden", {"resolution": 0})


def test_unannotated_data_is_offered_clusters(counts_adata):
    """A dataset without any obs column usable as labels gets Leiden suggested as its last
    step (classifiers, Compare and the Results' groups need groups); annotated data does not."""
    from engine import io

    bare = counts_adata.copy()
    bare.obs = bare.obs[[]]
    bare.obs["n_genes"] = np.arange(bare.n_obs)  # a per-cell measurement is no label
    names = [s.name for s in pp.Recipe.suggest(io.describe(bare)).steps]
    assert names[-1] == "leiden" and names[0] == "filter_cells"
    assert "leiden" not in [s.name for s in pp.Recipe.suggest(io.describe(counts_adata)).steps]


def test_cli_preprocess_leiden(counts_file, tmp_path):
    from engine import io
    from engine.cli import main

    out = tmp_path / "clustered.h5ad"
    assert (
        main(["preprocess", counts_file, "-o", str(out), "--normalize", "cp10k", "--leiden", "0.5"])
        == 0
    )
    a = io.read(out)
    assert a.obs["leiden"].nunique() >= 2 and a.uns["recipe"]
    assert "leiden" in str(a.uns["recipe"]) and a.obsm["X_pca"].shape[0] == a.n_obs


def test_a_scaled_x_starts_from_adata_raw():
    """scanpy's pbmc68k_reduced keeps log-normalised values in adata.raw and z-scores X: the
    app warned that X was scaled and offered nothing to do; it now starts from raw."""
    from engine import io

    a = sc.datasets.pbmc68k_reduced()
    d = io.describe(a)
    assert d["raw"] == {"kind": "log-normalised", "n_vars": 765}
    recipe = pp.Recipe.suggest(d)
    assert [s.name for s in recipe.steps] == ["from_raw"]
    out, report = pp.apply(a, recipe)
    assert io.matrix_kind(out.X) == "log-normalised" and out.n_vars == 765
    assert list(out.obs["bulk_labels"]) == list(a.obs["bulk_labels"]) and "X_umap" in out.obsm
    assert report[-1]["note"] == "X is now adata.raw's 765 genes (log-normalised)"
    with pytest.raises(ScwbError, match="no adata.raw"):
        pp.apply(out, pp.Recipe([pp.Step("from_raw")]))


def test_a_recipe_nested_past_the_parser_is_history_not_a_crash(counts_adata, tmp_path):
    """A hostile file: uns['recipe'] nested 100,000 deep made `preprocess` and `train` exit with
    'unexpected RecursionError' (train after its last epoch, recording the run)."""
    from engine import train
    from engine.spec import RunSpec

    counts_adata.uns["recipe"] = "[" * 100_000 + "]" * 100_000
    out, _ = pp.apply(counts_adata, pp.Recipe([pp.Step("filter_genes", {"min_cells": 1})]))
    assert [s["name"] for s in pp.recipe_steps(out.uns["recipe"])][-1] == "filter_genes"
    record = train._record(
        RunSpec(model="autoencoder", data="x"), counts_adata, tmp_path, "cpu", "f"
    )
    assert record["recipe"] is None


def test_what_a_file_says_beside_its_matrix_cannot_break_a_step(lognorm_adata):
    """A hostile-input pass: uns['log1p'] as text failed HVG with "'str' object has no attribute
    'get'" (base 0: a message about infinity); a long-double obs column was refused by info and
    taken by preprocess; an input with no cell blamed its first step for removing them all."""
    import anndata as ad

    from engine import io

    recipe = pp.Recipe([pp.Step("hvg", {"n_top": 20})])
    for bad in ("x", {"base": 0}, {"base": "e"}, [1, 2]):
        a = lognorm_adata.copy()
        a.uns["log1p"] = bad
        out, _ = pp.apply(a, recipe)
        assert out.n_vars == 20 and "log1p" not in out.uns
    a = lognorm_adata.copy()
    a.uns["log1p"] = {"base": 2.0}  # scanpy's own: kept
    assert io.canonical(a).uns["log1p"] == {"base": 2.0}
    a.obs["f128"] = np.ones(a.n_obs, dtype=np.longdouble)
    assert io.canonical(a).obs["f128"].dtype == np.float64
    io.describe(a)
    with pytest.raises(ScwbError, match="hold 0 cells x 200 genes: nothing to preprocess"):
        pp.apply(ad.AnnData(np.zeros((0, 200), np.float32)), recipe)


def test_subset_refuses_values_the_column_does_not_hold(counts_adata, tmp_path, capsys):
    """A hostile pass: `--subset "ct=Nonexistent,NK"` kept NK alone in silence; a value with a
    comma, cut in two, kept nothing ("loosen its thresholds"); `--subset ct` likewise."""
    from engine import cli
    from engine.errors import ScwbError

    held = sorted(set(counts_adata.obs["condition"].astype(str)))
    with pytest.raises(ScwbError, match=r"has no value 'Nonexistent'; it holds 'control'"):
        pp.subset(counts_adata, "condition", ["Nonexistent", held[0]])
    assert pp.subset(counts_adata, "condition", [held[0]]).n_obs > 0
    path = tmp_path / "in.h5ad"
    counts_adata.write_h5ad(path)
    for arg, said in (("condition=Nonexistent,control", "has no value 'Nonexistent'"),
                      ("condition", "--subset takes KEY=V1,V2 (got 'condition')")):  # fmt: skip
        code = cli.main(["preprocess", str(path), "-o", str(tmp_path / "o.h5ad"), "--subset", arg])
        err = capsys.readouterr().err
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o.h5ad").exists()


def test_subset_values_with_commas_and_several_columns(counts_adata, tmp_path, capsys):
    """A cell type named "CD4 T, naive" could not be kept from the command line (the comma cut
    it in two): ``\\,`` keeps a comma inside a value, and --subset repeats for more values or
    another column (cells must match every column)."""
    from engine import cli

    a = counts_adata.copy()
    names = np.array(["CD4 T, naive", "B", "NK"])
    a.obs["ct"] = names[np.arange(a.n_obs) % 3]
    path, out = tmp_path / "in.h5ad", tmp_path / "o.h5ad"
    a.write_h5ad(path)
    run = ["preprocess", str(path), "-o", str(out)]
    assert cli.main([*run, "--subset", "ct=CD4 T\\, naive"]) == 0
    kept = ad.read_h5ad(out)
    assert set(kept.obs["ct"]) == {"CD4 T, naive"} and kept.n_obs == int(
        (a.obs["ct"] == names[0]).sum()
    )
    out.unlink()
    control = str(a.obs["condition"].iloc[0])
    argv = [
        *run,
        "--subset",
        "ct=CD4 T\\, naive",
        "--subset",
        "ct=NK",
        "--subset",
        f"condition={control}",
    ]
    assert cli.main(argv) == 0
    kept = ad.read_h5ad(out)
    assert set(kept.obs["ct"]) == {"CD4 T, naive", "NK"} and set(kept.obs["condition"]) == {control}
    out.unlink()
    capsys.readouterr()
    assert cli.main([*run, "--subset", "ct=CD4 T, naive"]) == 2  # cut in two: said how to write it
    err = capsys.readouterr().err
    assert "no value 'CD4 T'" in err and "\\," in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_leiden_keeps_the_datas_own_clusters(lognorm_adata, workspace):
    """A browser pass: ticking Leiden on a dataset with its own obs['leiden'] replaced it, said
    only after the run. The data's own column is kept and the clusters go to leiden_2 (the form
    says so first); an earlier leiden step's clusters are replaced, as before."""
    from engine import datasets, summary

    own = lognorm_adata.copy()
    own.obs["leiden"] = own.obs["cell_type"].astype(str).to_numpy()
    assert pp.leiden_key(own) == "leiden_2"
    out, report = pp.apply(own, pp.Recipe([pp.Step("leiden", {"resolution": 0.5})]))
    assert (out.obs["leiden"].astype(str) == own.obs["leiden"]).all()  # kept
    assert out.obs["leiden_2"].nunique() >= 2
    said = json.dumps(report)
    assert "kept the data's own obs['leiden']" in said and "obs['leiden_2']" in said
    again, _ = pp.apply(out, pp.Recipe([pp.Step("leiden", {"resolution": 0.5})]))
    assert "leiden_3" not in again.obs and (again.obs["leiden"] == out.obs["leiden"]).all()
    fresh, _ = pp.apply(lognorm_adata, pp.Recipe([pp.Step("leiden", {"resolution": 0.5})]))
    assert pp.leiden_key(fresh) == "leiden"  # ours: clustered again in place
    older = fresh.copy()  # saved before the mark: known by its parameters (a review)
    del older.uns["leiden"]["params"]["by"]
    assert pp.leiden_key(older) == "leiden"
    # the page reads the annotations alone: they carry who wrote obs['leiden']
    for data, expect in ((fresh, "leiden"), (own, "leiden_2"), (out, "leiden_2")):
        key = datasets.save(data, f"clusters {expect}")
        assert pp.leiden_key(summary.annotations(datasets.path(key))) == expect
    from engine import runs
    from tests.test_app_results import app

    runs.write_json(workspace / "state.json", {"dataset": datasets.save(own, "their leiden")})
    at = app("preprocess")
    box = next(c for c in at.checkbox if c.label.startswith("Leiden clusters"))
    assert box.label == "Leiden clusters in obs['leiden_2']"
    box.check().run()
    assert any("its own obs['leiden']: it is kept" in c.value for c in at.caption)
