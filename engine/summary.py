"""What the Data page shows, computed once when a dataset is written and stored beside it.

Describing and QC-ing a million cells takes seconds; the page reads the stored results instead
(``KEY.json['describe']`` and ``KEY.qc.npz``) and the cell and gene annotations alone
(``annotations``), so opening a dataset for display never reads its matrices.
"""

from __future__ import annotations

import contextlib
import os
import zipfile
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd

from engine import runs


def qc_path(h5ad: str | os.PathLike) -> Path:
    return Path(h5ad).with_suffix(".qc.npz")


def write_qc(adata: ad.AnnData, h5ad: str | os.PathLike) -> None:
    """``io.qc_metrics`` of ``adata`` as float32 columns beside ``h5ad`` (atomically)."""
    from engine import io

    qc = io.qc_metrics(adata)
    final = qc_path(h5ad)
    tmp = final.with_name(f".{final.name}.tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **{c: qc[c].to_numpy(dtype=np.float32) for c in qc.columns})
    os.replace(tmp, final)


def read_qc(h5ad: str | os.PathLike, obs_names: pd.Index) -> pd.DataFrame | None:
    """The stored QC frame, or None when there is none (datasets saved before it was stored)."""
    p = qc_path(h5ad)
    if not runs.regular_file(p, 2**31):  # a named pipe in its place blocked the Data page
        return None
    try:
        with np.load(p) as z:
            cols = {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):  # damaged: computed again
        return None
    if any(len(v) != len(obs_names) for v in cols.values()):
        return None
    return pd.DataFrame(cols, index=obs_names)


def move_qc(src_h5ad: str | os.PathLike, dst_h5ad: str | os.PathLike) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.replace(qc_path(src_h5ad), qc_path(dst_h5ad))


def remove_qc(h5ad: str | os.PathLike) -> None:
    qc_path(h5ad).unlink(missing_ok=True)


def layout(h5ad: str | os.PathLike):
    """``pp_memory.Layout`` of an .h5ad from its HDF5 metadata alone (no matrix is read)."""
    import h5py

    from engine.pp_memory import Layout

    def size(node) -> tuple[int, int, bool]:  # stored entries, bytes per entry, sparse
        if isinstance(node, h5py.Group):
            if "data" in node and "indptr" in node:  # csr/csc: data, indices, indptr
                d = node["data"]
                return int(d.shape[0]), d.dtype.itemsize, True
            found: list = []  # anything else (a data frame in obsm): the bytes it stores
            node.visititems(
                lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None
            )
            return sum(int(np.prod(d.shape)) * d.dtype.itemsize for d in found), 1, False
        return int(np.prod(node.shape)), node.dtype.itemsize, False

    def rows(group) -> int:  # obs or var: the length of its index
        index = group.attrs.get("_index", "_index")
        return int(group[index].shape[0]) if index in group else 0

    with h5py.File(h5ad, "r") as f:
        if "X" not in f:  # the data live in layers only
            n, g, nnz, item, sparse = rows(f["obs"]), rows(f["var"]), 0, 4, False
        else:
            x = f["X"]
            n, g = (int(v) for v in x.attrs["shape"]) if "shape" in x.attrs else x.shape
            nnz, item, sparse = size(x)
        other = 0
        for group in ("layers", "obsm"):
            for node in f[group].values() if group in f else ():
                k, b, sp_ = size(node)
                other += k * (b + 4) + (n + 1) * 4 if sp_ else k * b
    return Layout(n, g, nnz, item, sparse, other)


def annotations(h5ad: str | os.PathLike) -> ad.AnnData:
    """The cells' and genes' annotations of ``h5ad`` without X, layers or obsm (an AnnData with
    ``X=None``): what display needs, read in a fraction of the time of the whole file."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(h5ad, "r") as f:
        obs, var = read_elem(f["obs"]), read_elem(f["var"])
        # who wrote obs['leiden'], ['leiden_2'], ... (``preprocess.leiden_key``): one short
        # string each, if any
        marks = {}
        uns = f.get("uns")
        for key in list(uns)[:1000] if isinstance(uns, h5py.Group) else []:
            by = f.get(f"uns/{key}/params/by") if str(key).startswith("leiden") else None
            if isinstance(by, h5py.Dataset) and by.shape == ():
                marks[str(key)] = by[()]
    out = ad.AnnData(obs=obs, var=var)
    for key, mark in marks.items():
        if isinstance(mark, bytes | str):
            text = mark.decode(errors="replace") if isinstance(mark, bytes) else mark
            out.uns[key] = {"params": {"by": text[:100]}}
    return out


def obsm_coords(h5ad: str | os.PathLike, key: str, dims: int = 2) -> np.ndarray:
    """The first ``dims`` columns of ``obsm[key]`` (a stored embedding), without the matrices."""
    import h5py
    from anndata.io import read_elem

    with h5py.File(h5ad, "r") as f:
        node = f["obsm"][key]
        if isinstance(node, h5py.Dataset) and node.ndim == 2:
            return np.asarray(node[:, :dims])
        return np.asarray(read_elem(node))[:, :dims]  # a data frame or another encoding


def obsm_dims(h5ad: str | os.PathLike) -> dict[str, int]:
    """Columns of each ``obsm`` entry (dense arrays and data frames; 0 for anything else), from
    the file's metadata."""
    import h5py

    def width(v) -> int:
        if isinstance(v, h5py.Dataset):
            return int(v.shape[1]) if v.ndim == 2 else 0
        if v.attrs.get("encoding-type") == "dataframe":  # e.g. spatial coordinates
            return len(v.attrs.get("column-order", []))
        return 0  # sparse: not an embedding

    with h5py.File(h5ad, "r") as f:
        g = f.get("obsm")
        return {k: width(v) for k, v in (g.items() if g is not None else ())}


GENE_SLAB = 1 << 24  # stored entries read at once when a gene's column is gathered from CSR


def gene_values(h5ad: str | os.PathLike, j: int, rows: np.ndarray) -> np.ndarray:
    """X[rows, j] as float32, read from the file without loading X: a CSC column is one slice;
    CSR is scanned in slabs of ``GENE_SLAB`` entries (a million cells: the whole X once, a few
    seconds, a few hundred MB at most); a dense X reads its column."""
    import h5py

    rows = np.asarray(rows, dtype=np.int64)
    if not len(rows):
        return np.zeros(0, dtype=np.float32)
    with h5py.File(h5ad, "r") as f:
        x = f["X"]
        if isinstance(x, h5py.Dataset):  # dense (it passed the memory budget): one column
            return np.asarray(x[:, j], dtype=np.float32)[rows]
        indptr = x["indptr"][:]
        col = np.zeros(int(x.attrs["shape"][0]), dtype=np.float32)  # 4 MB at a million cells
        if x.attrs.get("encoding-type") == "csc_matrix":
            a, b = int(indptr[j]), int(indptr[j + 1])
            np.add.at(col, x["indices"][a:b], x["data"][a:b])  # duplicates add up, as in scipy
            return col[rows]
        # CSR: find the entries of gene j slab by slab
        n, start = len(indptr) - 1, 0
        while start < n:
            stop = int(np.searchsorted(indptr, indptr[start] + GENE_SLAB, side="right")) - 1
            stop = min(max(stop, start + 1), n)
            a, b = int(indptr[start]), int(indptr[stop])
            hits = np.flatnonzero(x["indices"][a:b] == j)
            if hits.size:
                cells = np.searchsorted(indptr, a + hits, side="right") - 1
                np.add.at(col, cells, x["data"][a:b][hits])
            start = stop
        return col[rows]
