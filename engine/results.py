"""A run's result files: what the run writes, and reading back only what a page shows.

A run stores every per-cell output (obs columns, ``obsm`` latents and probabilities) for every
cell in ``results.h5ad``. Per-gene outputs (``reconstruction``, ``residual``, ``denoised``) are
dense cells x genes: a run with at most ``SCWB_RESULTS_SAMPLE`` cells (1,000: twice what a
heatmap shows) keeps them in ``results.h5ad`` for every cell; a larger one keeps them for a
seeded sample of that many cells (stratified by the label) in ``sample.h5ad``, so results stay
about the size of the input (dense float32 barely compresses: 2,000 genes x 1,000 cells x two
layers are ~15 MB) and the worker never holds a full dense layer. ``uns['scwb']['stored']`` says which, and
``engine predict`` writes them for any cells on request.

The readers open the file with h5py and decode only the requested elements
(``anndata.io.read_elem``): a page at a million cells reads a few columns, never the matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import h5py
import numpy as np
import pandas as pd

from engine import genes, settings
from engine.errors import ScwbError

try:  # anndata >= 0.11
    from anndata.io import read_elem, sparse_dataset
except ImportError:  # pragma: no cover - older anndata
    from anndata.experimental import read_elem, sparse_dataset

RESULTS, SAMPLE = "results.h5ad", "sample.h5ad"
PER_GENE = ("reconstruction", "residual", "denoised")  # roles whose values are cells x genes


# ----------------------------------------------------------------------------- writing
def sample_size() -> int:
    return settings.get().results_sample


def sample_rows(n_obs: int, n: int, seed: int = 0, labels: Any = None) -> np.ndarray:
    """Sorted row indices of ``n`` of ``n_obs`` cells, seeded; proportional to each label's
    share when labels are given (largest remainders first), so every common group shows."""
    if n_obs <= n:
        return np.arange(n_obs)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n_obs, n, replace=False))
    codes = np.unique(np.asarray(labels).astype(str), return_inverse=True)[1]
    counts = np.bincount(codes)
    share = counts * n / n_obs
    take = np.floor(share).astype(int)
    extra = np.argsort(-(share - take), kind="stable")[: n - take.sum()]
    take[extra] += 1
    rows = [rng.choice(np.flatnonzero(codes == c), k, replace=False) for c, k in enumerate(take)]
    return np.sort(np.concatenate(rows))


def annotate(task: Any, adata: ad.AnnData, seed: int = 0, n: int | None = None):
    """``(out, sample)``: every result slot for every cell, and when the run has more than
    ``n`` cells, per-gene outputs for a sample of them (None when there are none to keep)."""
    n = sample_size() if n is None else n
    total = adata.n_obs
    if total <= n:
        out = task.annotate(adata)
        roles = _roles(out)
        _stored(out, "all" if roles else "none", roles, total, total)
        return out, None
    label = task.setup.label_key
    labels = adata.obs[label].to_numpy() if label and label in adata.obs else None
    rows = sample_rows(total, n, seed, labels)
    sample = task.annotate(adata[rows].copy())
    roles = _roles(sample)
    out = task.annotate(adata, layers=False)  # never a full dense layer at scale
    if not roles:
        _stored(out, "none", [], total, total)
        return out, None
    _stored(out, "sample", roles, len(rows), total)
    _stored(sample, "sample", roles, len(rows), total)
    sample.uns["scwb"]["stored"]["rows"] = rows.astype(np.int64)
    return out, sample


SPLIT_PARTS = ("train", "val", "test")


OUTSIDE = "outside reference"


def mark_split(task: Any, out: ad.AnnData, split: dict) -> None:
    """``obs['split']`` (or ``split_<model>`` when the input has one): the part of the split
    each cell was in, so an exported file says which cells the test metrics come from; its key
    in ``uns['scwb']['split_key']``. A fact of the training run, not a model output, so not
    among the slots ``predict`` writes. Not for perturbation runs, whose split is one per
    held-out cell type."""
    if task.info.task == "perturb" or not all(p in split for p in SPLIT_PARTS):
        return
    where = np.full(out.n_obs, "unused", dtype=object)
    for part in SPLIT_PARTS:
        where[np.asarray(split[part], dtype=np.int64)] = part
    if task.info.task == "reconstruct" and task.extra.get("train_on"):
        # an abnormality run: the cells outside its reference group are all scored against it
        # (none is a test cell of the reconstruction error, none is unused)
        from engine.split import train_on_mask

        where[~train_on_mask(out.obs, task.extra["train_on"])] = OUTSIDE
    cats = [c for c in (*SPLIT_PARTS, OUTSIDE, "unused") if c in set(where)]
    slots = dict(out.uns["scwb"].get("slots") or {})  # so that put never takes a slot's name
    key = task.put(out, slots, "obs", "split", "split", pd.Categorical(where, categories=cats))
    out.uns["scwb"]["split_key"] = key


def _roles(out: ad.AnnData) -> list[str]:
    slots = dict(out.uns["scwb"].get("slots") or {})
    return [r for r in PER_GENE if slots.get(r) in out.layers]


def _stored(out: ad.AnnData, how: str, roles: list[str], cells: int, total: int) -> None:
    stored: dict[str, Any] = {"per_gene": how, "cells": int(cells), "of": int(total)}
    if how == "sample":
        stored["file"] = SAMPLE
        stored["note"] = (
            f"{', '.join(roles)} stored for a sample of {cells:,} of {total:,} cells in {SAMPLE}; "
            "`python -m engine predict --run RUN --data DATA -o OUT.h5ad` writes them for every cell."
        )
    out.uns["scwb"]["stored"] = stored


def write(run_dir: str | Path, out: ad.AnnData, sample: ad.AnnData | None) -> None:
    """The sample first, then ``results.h5ad`` (whose presence means "results are ready")."""
    from engine import io

    run_dir = Path(run_dir)
    if sample is not None:
        io.write_h5ad(sample, run_dir / SAMPLE)
    else:
        (run_dir / SAMPLE).unlink(missing_ok=True)  # a rerun into the same folder
    io.write_h5ad(out, run_dir / RESULTS)


# ----------------------------------------------------------------------------- reading
def _open(path: str | Path) -> h5py.File:
    try:
        return h5py.File(_open_path(Path(path)), "r")
    except (OSError, ValueError) as exc:
        raise ScwbError(f"{Path(path).name} could not be read ({exc}).") from None


def _open_path(path: Path) -> Path:
    """``path``, once it is known to be a regular file: opening a named pipe put in its place
    blocks the reader for good."""
    if not Path(path).is_file():
        raise ScwbError(f"{Path(path).name} is missing or not a regular file.")
    return Path(path)


def _index_len(group: h5py.Group) -> int:
    return int(group[group.attrs["_index"]].shape[0])


def summary(path: str | Path) -> dict[str, Any]:
    """What the file holds, without its values: ``n_obs``, ``n_vars``, ``obs`` (column names),
    ``obsm`` (key -> shape), ``layers`` (names) and ``scwb`` (``uns['scwb']``)."""
    with _open(path) as f:
        try:
            obsm = {k: tuple(_shape(f["obsm"][k])) for k in f.get("obsm", {})}
            scwb = read_elem(f["uns/scwb"]) if "uns/scwb" in f else {}
            return {
                "n_obs": _index_len(f["obs"]),
                "n_vars": _index_len(f["var"]),
                "obs": [str(c) for c in f["obs"].attrs.get("column-order", [])],
                "obsm": obsm,
                "layers": list(f.get("layers", {})),
                "scwb": dict(scwb) if isinstance(scwb, dict) else {},
            }
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise ScwbError(f"{Path(path).name} is not a readable .h5ad ({exc}).") from None


def _shape(elem: Any) -> tuple[int, ...]:
    if isinstance(elem, h5py.Dataset):
        return elem.shape
    if "shape" in elem.attrs:  # a sparse matrix
        return tuple(int(v) for v in elem.attrs["shape"])
    return (_index_len(elem), len(elem.attrs.get("column-order", [])))  # a data frame


def obs(path: str | Path, columns: list[str] | None = None, index: bool = False) -> pd.DataFrame:
    """Only the named obs columns (all when None), and the cell names when ``index``."""
    with _open(path) as f:
        g = f["obs"]
        names = [str(c) for c in g.attrs.get("column-order", [])] if columns is None else columns
        missing = [c for c in names if c not in g]
        if missing:
            raise ScwbError(f"The results have no obs column {missing[0]!r}.")
        idx = pd.Index(read_elem(g[g.attrs["_index"]]).astype(str)) if index else None
        data = {c: read_elem(g[c]) for c in names}
        return pd.DataFrame(data, index=idx) if data or idx is not None else pd.DataFrame()


def gene_labels(path: str | Path) -> dict[str, str]:
    """var name -> the name to print (its symbol, where the names are IDs: ``engine.genes``);
    empty when the names are what to print."""
    with _open(path) as f:
        try:
            var = read_elem(f["var"])
        except (KeyError, OSError, ValueError, TypeError) as exc:
            raise ScwbError(f"{Path(path).name} is not a readable .h5ad ({exc}).") from None
    return genes.label_map(var) if isinstance(var, pd.DataFrame) else {}


def levels(
    path: str | Path, max_levels: int = 200, max_numeric: int | None = None
) -> dict[str, int]:
    """obs columns with at most ``max_levels`` distinct values (how many each), categories
    first: categorical columns answer from their categories, without reading their codes. A
    numeric column is kept up to ``max_numeric`` values (default ``max_levels``): above that it
    is a measurement (genes per cell), whose every value would be a group of a few cells."""
    text: dict[str, int] = {}
    numbers: dict[str, int] = {}
    cap = max_levels if max_numeric is None else min(max_levels, max_numeric)
    with _open(path) as f:
        g = f["obs"]
        for c in [str(c) for c in g.attrs.get("column-order", [])]:
            elem = g[c]
            if isinstance(elem, h5py.Group) and "categories" in elem:
                numeric = False  # categories are groups, whatever they are written in
                k = int(elem["categories"].shape[0])
            else:
                values = pd.Series(read_elem(elem))
                numeric = pd.api.types.is_numeric_dtype(values) or values.dtype == bool
                k = int(values.nunique(dropna=False))
            if k <= (cap if numeric else max_levels):
                (numbers if numeric else text)[c] = k
    return {**text, **numbers}


def obsm(path: str | Path, key: str) -> np.ndarray:
    """``obsm[key]`` as a float32 array."""
    with _open(path) as f:
        if key not in f.get("obsm", {}):
            raise ScwbError(f"The data has no obsm[{key!r}] to embed.")
        m = read_elem(f["obsm"][key])
    m = m.to_numpy() if hasattr(m, "to_numpy") else m
    m = m.toarray() if hasattr(m, "toarray") else m
    return np.asarray(m, dtype=np.float32)


def sample(run_dir: str | Path, n: int | None = None, seed: int = 0) -> ad.AnnData:
    """The cells a heatmap shows, with their input and per-gene outputs: ``sample.h5ad`` when
    the run wrote one, else (a small run, or a run made before samples) up to ``n`` rows read
    from ``results.h5ad`` (a seeded sample, stratified by the label)."""
    run_dir = Path(run_dir)
    if (run_dir / SAMPLE).exists():
        try:
            return ad.read_h5ad(_open_path(run_dir / SAMPLE))
        except (OSError, ValueError, KeyError) as exc:
            raise ScwbError(f"{SAMPLE} could not be read ({exc}).") from None
    path = run_dir / RESULTS
    info = summary(path)
    n = sample_size() if n is None else n
    with _open(path) as f:
        cand = _candidates(f, info["n_obs"], n, seed)
    label = info["scwb"].get("label_key")
    labels = obs(path, [label])[label].to_numpy()[cand] if label in info["obs"] else None
    return rows_of(path, cand[sample_rows(len(cand), n, seed, labels)])


def _candidates(f: h5py.File, n_obs: int, n: int, seed: int) -> np.ndarray:
    """Rows to sample from: all, or, when the file holds chunked dense layers of many times
    the sample's cells (a run made before samples), a few random whole chunk-row blocks, so
    that only those blocks are decompressed (100k cells: ~1 s instead of ~9 s)."""
    layers = [d for d in f.get("layers", {}).values() if isinstance(d, h5py.Dataset)]
    step = layers[0].chunks[0] if layers and layers[0].chunks else 0
    if not step or n_obs <= 4 * n:
        return np.arange(n_obs)
    starts = np.arange(0, n_obs, step)
    k = min(len(starts), 4 * -(-n // step))
    pick = np.sort(np.random.default_rng(seed).choice(len(starts), k, replace=False))
    return np.concatenate([np.arange(s, min(s + step, n_obs)) for s in starts[pick]])


def rows_of(path: str | Path, rows: np.ndarray) -> ad.AnnData:
    """An AnnData of the given sorted rows of a file: obs, var, X, layers, obsm and
    ``uns['scwb']``; only those rows of each matrix are read."""
    rows = np.asarray(rows, dtype=np.int64)
    with _open(path) as f:
        all_rows = len(rows) == _index_len(f["obs"])

        def take(elem: Any) -> Any:
            if isinstance(elem, h5py.Dataset):
                return elem[()] if all_rows else elem[rows]
            if "indptr" in elem:
                ds = sparse_dataset(elem)
                return ds.to_memory() if all_rows else ds[rows]
            return read_elem(elem).iloc[rows]  # a data frame in obsm

        table = read_elem(f["obs"])
        uns = read_elem(f["uns/scwb"]) if "uns/scwb" in f else {}
        out = ad.AnnData(
            X=take(f["X"]) if "X" in f else None,
            obs=table.iloc[rows] if not all_rows else table,
            var=read_elem(f["var"]),
            layers={k: take(f["layers"][k]) for k in f.get("layers", {})},
            obsm={k: take(f["obsm"][k]) for k in f.get("obsm", {})},
        )
    out.uns["scwb"] = dict(uns)
    return out


def load(path: str | Path) -> ad.AnnData:
    """The whole results file (perturbation runs made before gene_means.csv): one line when
    unreadable."""
    try:
        return ad.read_h5ad(_open_path(path))
    except (OSError, ValueError, KeyError) as exc:
        raise ScwbError(f"{Path(path).name} could not be read ({exc}).") from None
