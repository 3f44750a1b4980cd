"""Genes named by Ensembl ID with their symbols in a var column (CELLxGENE's ``feature_name``,
scvi-tools' ``gene_symbols``): mitochondrial genes are found, and genes searched and shown, by
symbol. Before, such a file had no mitochondrial gene (no % mito, no mito filter) and a search
for CD3D found nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from engine import datasets, genes, io, runs, workspace
from engine import preprocess as pp
from tests.test_app_results import app


def _ensembl(adata):
    """The same data, named by made-up Ensembl IDs, the old names kept as symbols."""
    out = adata.copy()
    out.var["feature_name"] = out.var_names.astype(str)
    out.var_names = [f"ENSG{i:011d}" for i in range(out.n_vars)]
    return out


def test_symbols_are_used_only_where_the_names_are_ids():
    var = pd.DataFrame(
        {"feature_name": ["MT-CO1", "CD3D", "CD3D", None], "n_cells": [1, 2, 3, 4]},
        index=["ENSG00000198804", "ENSG00000167286", "ENSG00000999999.2", "ENSG00000000001"],
    )
    assert genes.symbol_column(var) == "feature_name"
    assert list(genes.symbols(var)) == ["MT-CO1", "CD3D", "CD3D", "ENSG00000000001"]
    assert list(genes.labels(var)) == [
        "MT-CO1",
        "CD3D (ENSG00000167286)",
        "CD3D (ENSG00000999999.2)",
        "ENSG00000000001",
    ]
    assert genes.mito_mask(var).tolist() == [True, False, False, False]
    assert list(genes.search(var, "cd3d")) == [1, 2]
    assert list(genes.search(var, "ENSG0000000000")) == [3]
    # names that are symbols already: a 'gene' column of IDs (as in the Kang file) is not used
    kang = pd.DataFrame({"gene": ["ENSG00000198804", "ENSG00000187608"]}, index=["MT-CO1", "ISG15"])
    assert genes.symbol_column(kang) is None
    assert list(genes.labels(kang)) == ["MT-CO1", "ISG15"] and genes.label_map(kang) == {}
    assert genes.mito_mask(kang).tolist() == [True, False]
    # mouse symbols, and scanpy's own var['mt'] where a pipeline stored one
    assert genes.mito_mask(pd.DataFrame(index=["mt-Co1", "Xkr4"])).tolist() == [True, False]
    flagged = pd.DataFrame({"mt": [False, True]}, index=["ENSG00000000001", "ENSG00000000002"])
    assert genes.mito_mask(flagged).tolist() == [False, True]
    stale = pd.DataFrame({"mt": [False, False]}, index=["MT-CO1", "ACTB"])  # never hides MT-
    assert genes.mito_mask(stale).tolist() == [True, False]
    # a numeric column is never taken for symbols
    numeric = pd.DataFrame({"gene": [1, 2]}, index=["ENSG00000000001", "ENSG00000000002"])
    assert genes.symbol_column(numeric) is None


def test_qc_and_the_mito_filter_read_symbols(counts_adata):
    named = _ensembl(counts_adata)
    mt = counts_adata.var_names.str.startswith("MT-")
    assert mt.sum() > 0 and not named.var_names.str.startswith("MT-").any()
    assert io.describe(named)["mito_genes"] == int(mt.sum())
    assert io.describe(named)["symbol_column"] == "feature_name"
    assert io.describe(counts_adata)["symbol_column"] is None
    np.testing.assert_allclose(
        io.qc_metrics(named)["pct_counts_mt"], io.qc_metrics(counts_adata)["pct_counts_mt"]
    )
    recipe = pp.Recipe([pp.Step("filter_cells", {"max_pct_mito": 2.0})])
    ours, _ = pp.apply(named, recipe)
    ref, _ = pp.apply(counts_adata, recipe)
    assert ours.n_obs == ref.n_obs < counts_adata.n_obs


def test_data_and_explore_pages_search_and_show_symbols(lognorm_adata):
    a = _ensembl(lognorm_adata)
    a.obsm["X_umap"] = np.random.default_rng(0).normal(size=(a.n_obs, 2)).astype(np.float32)
    name = datasets.save(a, "ensembl named")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = app("data")
    said = " ".join(m.value for m in at.markdown)
    assert "Gene symbols" in said and "column feature_name" in said
    assert not any("No mitochondrial gene" in c.value for c in at.caption)
    at = app("explore")
    at.radio[0].set_value("gene").run()
    symbol = str(a.var["feature_name"].iloc[7])  # e.g. Gene0007, stored under ENSG...07
    at.text_input[0].set_value(symbol.lower()).run()
    box = next(s for s in at.selectbox if s.label.startswith("Gene"))
    assert box.options[0] == symbol  # shown by symbol, the exact match first
    assert box.value == a.var_names[7]  # and chosen by its var name
    fig = json.loads(at.get("plotly_chart")[0].proto.spec)
    assert f"{symbol} (log-normalised)" in json.dumps(fig["layout"]) and not at.exception


def test_explore_still_finds_a_gene_by_its_id(lognorm_adata):
    query = "ENSG00000000007"
    a = _ensembl(lognorm_adata)
    a.obsm["X_umap"] = np.zeros((a.n_obs, 2), dtype=np.float32)
    runs.write_json(workspace.home() / "state.json", {"dataset": datasets.save(a, "ensembl named")})
    at = app("explore")
    at.radio[0].set_value("gene").run()
    at.text_input[0].set_value(query).run()
    box = next(s for s in at.selectbox if s.label.startswith("Gene"))
    assert box.value == query and not at.exception


def test_results_files_name_genes_by_symbol(tmp_path, lognorm_adata):
    from engine import results as results_files

    path = tmp_path / "results.h5ad"
    io.write_h5ad(_ensembl(lognorm_adata[:20]), path)
    named = results_files.gene_labels(path)
    assert named["ENSG00000000007"] == str(lognorm_adata.var_names[7])
    io.write_h5ad(lognorm_adata[:20].copy(), path)
    assert results_files.gene_labels(path) == {}
