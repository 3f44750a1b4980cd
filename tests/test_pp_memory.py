"""Preprocessing says its memory before it starts and refuses, in one line, what does not fit."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp

from engine import pp_memory
from engine import preprocess as pp
from engine.errors import ScwbError


def _counts(n=400, g=300):
    x = sp.random(n, g, density=0.1, format="csr", random_state=0, dtype=np.float32)
    x.data = np.ceil(x.data * 10)
    return ad.AnnData(X=x)


LOGCPM = pp.Recipe([pp.Step("keep_counts"), pp.Step("normalize", {"target_sum": 1e6})])
ZSCORE = pp.Recipe([pp.Step("normalize"), pp.Step("scale", {"method": "zscore"})])


def test_estimate_counts_copies_and_layers():
    a = _counts()
    x = a.X.data.nbytes + a.X.indices.nbytes + a.X.indptr.nbytes
    fp = pp_memory.estimate(a, LOGCPM)
    assert fp.input_bytes == x
    assert fp.result_bytes == 2 * x  # X and layers['counts']
    assert fp.peak_bytes == 4 * x  # input + copy + counts + normalize's temporary
    assert not fp.dense_step


def test_estimate_zscore_is_dense():
    a = _counts()
    fp = pp_memory.estimate(a, ZSCORE)
    assert fp.dense_step.startswith("zscore")
    assert fp.result_bytes == 400 * 300 * 4


def test_hvg_shrinks_the_estimate():
    a = _counts()
    with_hvg = pp.Recipe([pp.Step("hvg", {"n_top": 30}), pp.Step("scale")])
    assert pp_memory.estimate(a, with_hvg).result_bytes == 400 * 30 * 4


def test_apply_refuses_over_budget_in_one_line(monkeypatch):
    a = _counts()
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(200_000 / 2**30))  # under the dense 480 kB
    pp.apply(a, LOGCPM)  # sparse recipe fits
    with pytest.raises(ScwbError, match="over the memory budget") as err:
        pp.apply(a, ZSCORE)
    assert "\n" not in str(err.value) and "zscore scaling makes X dense" in str(err.value)


def test_cli_prints_the_estimate(tmp_path, capsys):
    from engine.cli import main

    src = tmp_path / "c.h5ad"
    _counts().write_h5ad(src)
    assert main(["preprocess", str(src), "-o", str(tmp_path / "o.h5ad"), "--keep-counts"]) == 0
    assert "memory: about" in capsys.readouterr().out


def test_layout_from_file_metadata_matches_memory(tmp_path):
    from engine import summary

    a = _counts()
    a.layers["counts"] = a.X.copy()
    a.write_h5ad(tmp_path / "a.h5ad")
    on_disk = summary.layout(tmp_path / "a.h5ad")
    assert on_disk == pp_memory.layout(a)
    assert pp_memory.estimate(on_disk, LOGCPM) == pp_memory.estimate(a, LOGCPM)


def test_child_preprocesses_a_file_and_adopt_registers_it(tmp_path):
    from engine import datasets, pp_child, summary

    key = datasets.save(_counts(), "raw")
    target = datasets.new_incoming()
    seen: list[dict] = []
    info = pp_child.run(datasets.path(key), LOGCPM, target, on_step=seen.append)
    assert [r["step"] for r in info["report"]] == ["input", "keep_counts", "normalize"]
    assert seen == info["report"][1:]  # each step handed over as the child finished it
    assert summary.qc_path(target).exists()
    new = datasets.adopt(target, "raw_pp", info, parent=key)
    assert datasets.load(new).layers["counts"].nnz == _counts().X.nnz
    assert datasets.description(new)["layers"] == {"counts": "counts"}


def test_child_refusal_is_one_line_and_leaves_nothing(monkeypatch):
    from engine import datasets, pp_child

    key = datasets.save(_counts(), "raw")
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(200_000 / 2**30))
    target = datasets.new_incoming()
    with pytest.raises(ScwbError, match="over the memory budget") as err:
        pp_child.run(datasets.path(key), ZSCORE, target)
    assert "\n" not in str(err.value) and not target.exists()


def test_no_copy_saves_the_input_copy():
    a = _counts()
    x = a.X.data.nbytes + a.X.indices.nbytes + a.X.indptr.nbytes
    assert pp_memory.estimate(a, LOGCPM, copy=False).peak_bytes == 3 * x
    out, _ = pp.apply(a, LOGCPM, copy=False)
    assert out is a and "counts" in a.layers


def test_layout_of_a_file_with_a_data_frame_in_obsm_or_without_x(tmp_path, lognorm_adata):
    """A CITE-seq-style obsm['protein_expression'] stored as a data frame crashed the Preprocess
    page's estimate (it took every obsm group for a sparse matrix); a file with its data in
    layers only had no X to size."""
    import pandas as pd

    from engine import summary

    a = lognorm_adata.copy()
    a.obsm["protein_expression"] = pd.DataFrame(
        np.ones((a.n_obs, 5), np.float32), index=a.obs_names, columns=list("ABCDE")
    )
    path = tmp_path / "cite.h5ad"
    a.write_h5ad(path)
    lay = summary.layout(path)
    assert (lay.n_obs, lay.n_vars) == a.shape and lay.other_bytes >= a.n_obs * 5 * 4
    b = a.copy()
    b.layers["counts"] = b.X.copy()
    b.X = None
    b.write_h5ad(tmp_path / "layers_only.h5ad")
    lay = summary.layout(tmp_path / "layers_only.h5ad")
    assert (lay.n_obs, lay.n_vars) == a.shape and lay.nnz == 0
