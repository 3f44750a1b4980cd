"""The bad-input corpus: each kind through the command line (exit 2, one `error:` line on
stderr, run in a subprocess under a memory cap so that a regression fails a test instead of
killing the suite) and, for files, through the app's Data page (one readable message, nothing
saved, the page keeps working and a good file loads right after). Every fixture is generated
here; docs/RELIABILITY.md lists the cases and their outcomes."""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine.cli import main


def _adata(n=60, g=12, counts=True, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = (
        rng.poisson(3, (n, g)).astype(np.float32)
        if counts
        else rng.random((n, g)).astype(np.float32) * 5
    )
    obs = pd.DataFrame(
        {
            "label": pd.Categorical(np.array(["a", "b", "c"])[np.arange(n) % 3]),
            "condition": pd.Categorical(np.where(np.arange(n) % 2, "stim", "ctrl")),
            "cell_type": pd.Categorical(np.array(["T", "B"])[(np.arange(n) // 2) % 2]),
        },
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(X=sp.csr_matrix(x), obs=obs)
    a.var_names = [f"G{i}" for i in range(g)]
    return a


def _write(a: ad.AnnData, p: Path) -> Path:
    a.write_h5ad(p)
    return p


def _lognorm(a: ad.AnnData) -> ad.AnnData:
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()) + 0.01)
    return a


TRAIN = [
    "train",
    "--model",
    "mlp",
    "--label-key",
    "label",
    "--epochs",
    "1",
    "--out",
    "{tmp}/run",
    "--data",
]
SCGEN = [
    "train",
    "--model",
    "scgen",
    "--condition-key",
    "condition",
    "--ctrl",
    "ctrl",
    "--stim",
    "stim",
    "--cell-type-key",
    "cell_type",
    "--predict",
    "T",
    "--epochs",
    "1",
    "--out",
    "{tmp}/run",
    "--data",
]
VAE = ["train", "--model", "vae", "--epochs", "1", "--out", "{tmp}/run", "--layer", "X", "--data"]


def _nan(a):
    x = a.X.toarray()
    x[0, 0] = np.nan
    a.X = x
    return a


def _inf(a):
    x = a.X.toarray()
    x[1, 1] = np.inf
    a.X = x
    return a


def _set(a, **obs):
    for k, v in obs.items():
        a.obs[k] = v
    return a


def _put(p: Path, data: str | bytes) -> Path:
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _zip(p: Path, name: str, data: str) -> Path:
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr(name, data)
    return p


def _bomb(p: Path) -> Path:
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("matrix.mtx", b"0" * (300 * 2**20))
    return p


def _trunc(p: Path) -> Path:
    _write(_adata(), p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


def _hdf5(p: Path) -> Path:
    with h5py.File(p, "w") as f:
        f["something"] = np.arange(5)
    return p


def _missing_labels(a):
    labels = a.obs["label"].astype(object)
    labels.iloc[3] = None
    a.obs["label"] = labels
    return a


def _no_ctrl_target(a):
    return a[~((a.obs["cell_type"] == "T") & (a.obs["condition"] == "ctrl"))].copy()


def _dup_genes(a):
    a.var_names = ["G0"] * a.n_vars
    return a


def _dup_cells(a):
    a.obs_names = ["c0"] * a.n_obs
    return a


def _rare(a):
    labels = a.obs["label"].astype(str)
    labels.iloc[0] = "rare"
    a.obs["label"] = labels
    return a


# ----------------------------------------------------------------------------- hostile files
# Memory budget for the corpus (SCWB_MEMORY_BUDGET_GB): the compression bombs below claim
# 305 MB to 3.7 GB in memory from files of a few KB.
BUDGET_GB = "0.25"


def _patch_csr(p: Path, **changes) -> Path:
    """A valid sparse .h5ad, then its X/indices or X/indptr changed in place with h5py."""
    _write(_adata(), p)
    with h5py.File(p, "r+") as f:
        for part, edits in changes.items():
            ds = f["X"][part]
            for i, v in edits:
                ds[i] = v
    return p


def _indptr_swap(p: Path) -> Path:
    _write(_adata(), p)
    with h5py.File(p, "r+") as f:
        ip = f["X/indptr"][:]
        ip[5], ip[6] = ip[6], ip[5] - 1  # decreasing between rows 5 and 6
        f["X/indptr"][:] = ip
    return p


def _indptr_short_end(p: Path) -> Path:
    _write(_adata(), p)
    with h5py.File(p, "r+") as f:
        f["X/indptr"][-1] = f["X/indptr"][-1] - 1  # ends one before nnz, still monotonic
    return p


def _mtx_zip(p: Path, rows: int, n_genes: int = 3, n_cells: int = 3) -> Path:
    """A zipped 10x folder whose matrix.mtx header claims ``rows`` genes (437 bytes for 2e9)."""
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(
            "s/matrix.mtx",
            f"%%MatrixMarket matrix coordinate integer general\n{rows} {n_cells} 2\n1 1 5\n2 2 3\n",
        )
        zf.writestr(
            "s/features.tsv", "".join(f"G{i}\tG{i}\tGene Expression\n" for i in range(n_genes))
        )
        zf.writestr("s/barcodes.tsv", "".join(f"c{i}\n" for i in range(n_cells)))
    return p


def _obsm_bomb(p: Path) -> Path:
    """100 cells with a gzip-compressed obsm entry of 100 x 5,000,000 float64 (3.7 GB in
    memory) that was never written: the file stays small."""
    _write(_adata(n=100), p)
    with h5py.File(p, "r+") as f:
        ds = f.create_dataset(
            "obsm/X_bomb",
            shape=(100, 5_000_000),
            dtype="f8",
            chunks=(10, 100_000),
            compression="gzip",
        )
        ds.attrs["encoding-type"], ds.attrs["encoding-version"] = "array", "0.2.0"
    return p


def _nnz_bomb(p: Path) -> Path:
    """A small sparse X that declares 40 million non-zeros (gzip-compressed, never written)."""
    _write(_adata(n=100), p)
    nnz = 40_000_000
    with h5py.File(p, "r+") as f:
        g = f["X"]
        for k in ("data", "indices", "indptr"):
            del g[k]
        g.create_dataset("data", shape=(nnz,), dtype="f4", chunks=(1 << 20,), compression="gzip")
        g.create_dataset("indices", shape=(nnz,), dtype="i4", chunks=(1 << 20,), compression="gzip")
        g["indptr"] = np.linspace(0, nnz, 101).astype(np.int64)
        g.attrs["shape"] = np.array([100, 1_000_000])
    return p


def _csv_gz_bomb(p: Path) -> Path:
    """A ~57 KB .csv.gz of 4000 x 4000 zeros (320 MB once parsed)."""
    header = "cell," + ",".join(f"g{i}" for i in range(4000)) + "\n"
    row = "," + ",".join(["0"] * 4000) + "\n"
    body = header + "".join(f"c{i}{row}" for i in range(4000))
    p.write_bytes(gzip.compress(body.encode(), 9))
    return p


def _replace_x(p: Path, values: np.ndarray) -> Path:
    _write(_adata(n=6, g=4), p)
    with h5py.File(p, "r+") as f:
        del f["X"]
        f["X"] = values
        f["X"].attrs["encoding-type"], f["X"].attrs["encoding-version"] = "array", "0.2.0"
    return p


def _sparse_obsm(p: Path) -> Path:
    a = _adata()
    a.obsm["X_sparse"] = sp.csr_matrix(np.eye(a.n_obs, 4, dtype=np.float32))
    return _write(a, p)


def _external_x(p: Path) -> Path:
    """X whose bytes live in another file (HDF5 external storage): never followed."""
    secret = p.with_name("secret.bin")
    secret.write_bytes(np.arange(24, dtype=np.float32).tobytes())
    _write(_adata(n=6, g=4), p)
    with h5py.File(p, "r+") as f:
        del f["X"]
        f.create_dataset("X", shape=(6, 4), dtype="f4", external=[(str(secret), 0, 96)])
    return p


def _external_link(p: Path) -> Path:
    """An obsm entry that is an HDF5 link into another .h5ad on the server."""
    other = _write(_adata(seed=9), p.with_name("someone_elses.h5ad"))
    _write(_adata(), p)
    with h5py.File(p, "r+") as f:
        f["obsm/X_theirs"] = h5py.ExternalLink(str(other), "/X")
    return p


def _uns_bomb(p: Path) -> Path:
    """A compressed, never-written uns array of 2e8 float64 (1.5 GB in memory)."""
    _write(_adata(), p)
    with h5py.File(p, "r+") as f:
        f.create_dataset(
            "uns/blob", shape=(200_000_000,), dtype="f8", chunks=(1 << 20,), compression="gzip"
        )
    return p


def _dup_column_order(p: Path) -> Path:
    _write(_adata(), p)
    with h5py.File(p, "r+") as f:
        f["obs"].attrs["column-order"] = np.array(["label", "label"], dtype=object)
    return p


def _chunk_bomb(p: Path) -> Path:
    """600 values stored in one gzip chunk of 309 MB (h5py allows chunks larger than a
    resizable dataset; the issue's file had 3.4 GB): reading any value decompressed the whole
    chunk. The chunk is compressed here in pieces and written as is, so that building it
    costs no memory."""
    import zlib

    _write(ad.AnnData(np.ones((30, 20), np.float32)), p)
    side = 9_000
    z = zlib.compressobj(6)
    piece = bytes(1 << 20)
    total = side * side * 4
    blob = b"".join(z.compress(piece) for _ in range(total >> 20))
    blob += z.compress(bytes(total % (1 << 20))) + z.flush()
    with h5py.File(p, "r+") as f:
        attrs = dict(f["X"].attrs)
        del f["X"]
        d = f.create_dataset(
            "X",
            shape=(30, 20),
            dtype=np.float32,
            maxshape=(None, None),
            chunks=(side, side),
            compression="gzip",
        )
        d.id.write_direct_chunk((0, 0), blob)
        d.attrs.update(attrs)
    return p


def _chunk_count_bomb(p: Path) -> Path:
    """A 600 x 600 X in 1 x 1 chunks, none written (the fill value): a small file whose read
    costs HDF5 about 4 KB a chunk, 1.4 GB for 1.4 MB of values."""
    _write(ad.AnnData(np.ones((600, 4), np.float32)), p)
    with h5py.File(p, "r+") as f:
        attrs = dict(f["X"].attrs)
        del f["X"]
        f.create_dataset("X", shape=(600, 600), dtype="f4", chunks=(1, 1), fillvalue=1.0)
        f["X"].attrs.update(attrs)
        del f["var"]  # 600 genes now: the names made up for a missing var are counted too
    return p


def _aliased_strings(p: Path, n: int = 300) -> Path:
    """An uns string array whose ``n`` elements all point at one 1 MB string of the file's
    heap (their 16-byte references copied over each other): 1 MB of file, n MB once read."""
    _write(_adata(), p)
    with h5py.File(p, "r+") as f:
        vals = np.array(["A" * (1 << 20)] + [f"b{i}" for i in range(n - 1)], dtype=object)
        d = f["uns"].create_dataset("notes", data=vals, dtype=h5py.string_dtype())
        d.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
        offset, item = d.id.get_offset(), d.id.get_storage_size() // n
    with open(p, "r+b") as fh:
        fh.seek(offset)
        first = fh.read(item)
        fh.seek(offset)
        fh.write(first * n)
    return p


def _no_var(p: Path, n_genes: int) -> Path:
    """A sparse X of 2 cells x ``n_genes`` with 2 values and no var group: AnnData makes up a
    name for every gene."""
    _write(_adata(2, 2), p)
    with h5py.File(p, "r+") as f:
        f["X"].attrs["shape"] = np.array([2, n_genes], dtype=np.int64)
        del f["var"]
    return p


def _big_endian_sparse(p: Path) -> Path:
    _write(_adata(), p)
    with h5py.File(p, "r+") as f:
        data = f["X"]["data"][:].astype(">f4")
        del f["X"]["data"]
        f["X"].create_dataset("data", data=data)
    return p


def _shape_attr(p: Path, shape) -> Path:
    _write(_adata(), p)
    with h5py.File(p, "r+") as f:
        f["X"].attrs["shape"] = np.array(shape, dtype=np.uint64)
    return p


HOSTILE = {
    "gzip_chunk_of_3_gb": (lambda t: _chunk_bomb(t / "c.h5ad"), ["info"], "chunks of 309.0 MB"),
    "shape_2_64": (lambda t: _shape_attr(t / "s.h5ad", [2**64 - 1, 12]), ["info"], "no valid 2-D"),
    "csr_index_2e9_and_negative": (
        lambda t: _patch_csr(t / "x.h5ad", indices=[(0, 2_000_000_000), (1, -5)]),
        ["info"],
        "outside 0..11",
    ),
    "csr_index_just_out_of_range": (
        lambda t: _patch_csr(t / "x.h5ad", indices=[(3, 12)]),
        ["info"],
        "index 12 outside 0..11",
    ),
    "indptr_not_monotonic": (lambda t: _indptr_swap(t / "x.h5ad"), ["info"], "decreasing indptr"),
    "indptr_not_ending_at_nnz": (
        lambda t: _indptr_short_end(t / "x.h5ad"),
        ["info"],
        "indptr ending at",
    ),
    "indptr_not_starting_at_0": (
        lambda t: _patch_csr(t / "x.h5ad", indptr=[(0, 1)]),
        ["info"],
        "does not start at 0",
    ),
    "mtx_header_2e9_rows": (
        lambda t: _mtx_zip(t / "m.zip", 2_000_000_000),
        ["info"],
        "declares 2000000000 genes",
    ),
    "mtx_entry_outside_header": (
        lambda t: _mtx_zip(t / "m.zip", 1, n_genes=1),
        ["info"],
        "outside its declared",
    ),
    "obsm_compression_bomb": (
        lambda t: _obsm_bomb(t / "o.h5ad"),
        ["info"],
        "obsm['X_bomb'] (dense 100 x 5000000) needs 3.7 GB",
    ),
    "sparse_x_40M_nnz": (
        lambda t: _nnz_bomb(t / "s.h5ad"),
        ["info"],
        "40,000,000 non-zeros) needs 305.5 MB",
    ),
    "csv_gz_4000x4000": (lambda t: _csv_gz_bomb(t / "b.csv.gz"), ["info"], "dense 4000 x 4000"),
    "x_of_strings": (
        lambda t: _replace_x(t / "s.h5ad", np.full((6, 4), "text", dtype=object).astype("S4")),
        ["info"],
        "X holds text",
    ),
    "complex_x": (
        lambda t: _replace_x(t / "c.h5ad", np.ones((6, 4), np.complex64)),
        ["info"],
        "complex numbers",
    ),
    "sparse_obsm": (
        lambda t: _sparse_obsm(t / "o.h5ad"),
        ["info"],
        "obsm['X_sparse'] is a sparse matrix",
    ),
    "obsm_external_link": (
        lambda t: _external_link(t / "l.h5ad"),
        ["info"],
        "obsm['X_theirs'] links to another file",
    ),
    "uns_compression_bomb": (lambda t: _uns_bomb(t / "u.h5ad"), ["info"], "uns needs 1.5 GB"),
    "x_in_external_file": (
        lambda t: _external_x(t / "e.h5ad"),
        ["info"],
        "stores its values in another file",
    ),
    "chunk_count_bomb": (
        lambda t: _chunk_count_bomb(t / "c.h5ad"),
        ["info"],
        "stored in 360,000 chunks",
    ),
    "strings_aliased_in_the_heap": (
        lambda t: _aliased_strings(t / "a.h5ad"),
        ["info"],
        "uns (once read) needs 300.",
    ),
    "no_var_2M_genes": (
        lambda t: _no_var(t / "v.h5ad", 2_000_000),
        ["info"],
        "var (not stored: 2,000,000 names made up)",
    ),
    "sparse_x_big_endian": (
        lambda t: _big_endian_sparse(t / "b.h5ad"),
        ["info"],
        "stored in the other byte order",
    ),
}

# id: (make(tmp) -> file, command args (file appended), expected words)
CORPUS = {
    "truncated_h5ad": (lambda t: _trunc(t / "t.h5ad"), ["info"], "truncated"),
    "hdf5_not_anndata": (lambda t: _hdf5(t / "x.h5ad"), ["info"], "not AnnData"),
    "renamed_txt": (
        lambda t: _put(t / "notes.h5ad", "just some notes"),
        ["info"],
        "not a readable .h5ad",
    ),
    "empty_file": (lambda t: _put(t / "e.h5ad", b""), ["info"], "empty"),
    "unknown_extension": (lambda t: _put(t / "m.xlsx", "x"), ["info"], "unknown format"),
    "pickle_upload": (lambda t: _put(t / "model.pkl", b"\x80\x04K\x01."), ["info"], "never loaded"),
    "zero_cells": (lambda t: _write(_adata()[:0].copy(), t / "z.h5ad"), TRAIN, "no cells"),
    "zero_genes": (lambda t: _write(_adata()[:, :0].copy(), t / "z.h5ad"), TRAIN, "no genes"),
    "all_zero": (
        lambda t: _write(
            ad.AnnData(X=np.zeros((30, 5), np.float32), obs=_adata(30).obs), t / "z.h5ad"
        ),
        TRAIN,
        "zero",
    ),
    "nan_values": (lambda t: _write(_nan(_adata()), t / "n.h5ad"), TRAIN, "NaN"),
    "inf_values": (lambda t: _write(_inf(_adata()), t / "i.h5ad"), TRAIN, "infinite"),
    "negative_for_counts": (
        lambda t: _write(
            ad.AnnData(X=-np.ones((30, 5), np.float32), obs=_adata(30).obs), t / "neg.h5ad"
        ),
        VAE,
        "negative",
    ),
    "non_integer_for_counts": (
        lambda t: _write(_adata(counts=False), t / "f.h5ad"),
        VAE,
        "non-integer",
    ),
    "duplicated_genes": (
        lambda t: _write(_dup_genes(_adata()), t / "d.h5ad"),
        TRAIN,
        "Duplicated gene",
    ),
    "duplicated_cells": (
        lambda t: _write(_dup_cells(_adata()), t / "d.h5ad"),
        TRAIN,
        "Duplicated cell",
    ),
    "one_class_label": (
        lambda t: _write(_set(_adata(), label="only"), t / "o.h5ad"),
        TRAIN,
        "1 class",
    ),
    "missing_labels": (
        lambda t: _write(_missing_labels(_adata()), t / "m.h5ad"),
        TRAIN,
        "missing values",
    ),
    "no_stim_value": (
        lambda t: _write(_lognorm(_set(_adata(), condition="ctrl")), t / "s.h5ad"),
        SCGEN,
        "no stimulated value",
    ),
    "target_without_control": (
        lambda t: _write(_lognorm(_no_ctrl_target(_adata())), t / "c.h5ad"),
        SCGEN,
        "no control cells",
    ),
    "class_too_small_for_split": (
        lambda t: _write(_rare(_adata()), t / "r.h5ad"),
        TRAIN,
        "needs at least 3",
    ),
    "non_utf8_csv_with_text": (
        lambda t: _put(t / "x.csv", "cell,g1\nc1,\xe9t\xe9\n".encode("latin-1")),
        ["info"],
        "holds 'été', not a number",
    ),
    "ragged_csv": (
        lambda t: _put(t / "r.csv", "cell,g1,g2\nc1,1,2\nc2,1,2,3,4\n"),
        ["info"],
        "different lengths",
    ),
    "zip_without_matrix": (
        lambda t: _zip(t / "n.zip", "readme.txt", "hi"),
        ["info"],
        "no 10x matrix",
    ),
    "zip_bomb": (lambda t: _bomb(t / "b.zip"), ["info"], "far more than its size"),
    "not_a_zip": (lambda t: _put(t / "f.zip", "nope"), ["info"], "not a valid zip"),
    "gzip_garbage_csv": (
        lambda t: _put(t / "g.csv.gz", gzip.compress(b"\x00\x01\x02" * 10)[:20]),
        ["info"],
        "could not be read",
    ),
    "scaled_data_for_scgen_counts": (lambda t: _write(_adata(), t / "c.h5ad"), SCGEN, "raw counts"),
    "scgen_cell_type_nan": (
        lambda t: _write(
            _lognorm(_set(_adata(), cell_type=np.where(np.arange(60) % 7, "T", None))), t / "n.h5ad"
        ),
        SCGEN,
        "has no value for 9 cell(s)",
    ),
    "train_on_one_class": (  # trained on class a alone, it predicted c for most cells
        lambda t: _write(_adata(), t / "x.h5ad"),
        [*TRAIN[:-1], "--train-on", "label=a", "--data"],
        "leaves one class of 'label'",
    ),
    "csv_gene_named_twice": (  # pandas renamed the second 'g1.1': a gene that never was
        lambda t: _put(t / "d.csv", "cell,g1,g1,g2\nc1,1,2,3\nc2,4,5,6\n"),
        ["info"],
        "names 'g1' twice",
    ),
    "csv_without_cell_names": (  # the first gene became the cell names
        lambda t: _put(t / "n.csv", "g1,g2\n1,2\n4,5\n"),
        ["info"],
        "holds numbers, not cell names",
    ),
    "csv_semicolons": (  # saved as 2 cells x 0 genes
        lambda t: _put(t / "s.csv", "cell;g1;g2\nc1;1;2\nc2;4;5\n"),
        ["info"],
        "Separated by ';'?",
    ),
    "utf16_csv": (
        lambda t: _put(t / "u.csv", "cell,g1\nc1,1\nc2,2\n".encode("utf-16")),
        ["info"],
        "is UTF-16 text",
    ),
    "nul_bytes_csv": (
        lambda t: _put(t / "n.csv", "cell,g1\nc1,1\n".encode("utf-16-le")),
        ["info"],
        "holds NUL bytes",
    ),
    "wide_header_only_csv": (  # pandas alone took 350 s over 300,000 such columns
        lambda t: _put(t / "w.csv", "cell," + ",".join(f"g{i}" for i in range(300_000)) + "\n"),
        ["info"],
        "header but no rows",
    ),
    "duplicate_column_order": (lambda t: _dup_column_order(t / "d.h5ad"), ["info"], "twice"),
    "zscore_one_cell": (
        lambda t: _write(_adata(n=1), t / "one.h5ad"),
        ["preprocess", "-o", "{tmp}/o.h5ad", "--scale", "zscore"],
        "at least 2 cells",
    ),
    "minmax_constant_genes": (
        lambda t: _write(ad.AnnData(np.ones((6, 4), np.float32)), t / "c.h5ad"),
        ["preprocess", "-o", "{tmp}/o.h5ad", "--scale", "minmax"],
        "no gene varies",
    ),
    **HOSTILE,
}
CLI_MEMORY_CAP = 4 * 2**30  # address space of each CLI subprocess (torch needs ~1.2 GB)


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CLI_MEMORY_CAP, CLI_MEMORY_CAP))


def run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m engine ARGS`` in a subprocess under a memory cap."""
    env = {**os.environ, "SCWB_MEMORY_BUDGET_GB": BUDGET_GB, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=str(Path(__file__).resolve().parent.parent),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_cap_memory,
    )


@pytest.mark.parametrize("case", list(CORPUS))
def test_cli_one_line_exit_2(case, tmp_path):
    make, args, words = CORPUS[case]
    path = make(tmp_path)
    argv = [a.format(tmp=tmp_path) for a in args] + [str(path)]
    proc = run_cli(argv)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "run" / "results.h5ad").exists()


def test_hostile_files_are_small(tmp_path):
    """The bombs are small files (what makes them bombs); the mtx zip is the 437-byte kind."""
    sizes = {}
    for case, (make, _, _) in HOSTILE.items():
        (tmp_path / case).mkdir()
        sizes[case] = make(tmp_path / case).stat().st_size
    assert sizes["mtx_header_2e9_rows"] < 1000
    assert sizes["csv_gz_4000x4000"] < 80_000
    assert sizes["obsm_compression_bomb"] < 200_000 and sizes["sparse_x_40M_nnz"] < 200_000
    assert sizes["chunk_count_bomb"] < 100_000 and sizes["no_var_2M_genes"] < 50_000
    assert sizes["strings_aliased_in_the_heap"] < 1_200_000


def test_memory_budget_is_checked_before_loading(tmp_path, monkeypatch, capsys):
    _write(ad.AnnData(X=np.ones((300, 100), np.float32)), tmp_path / "dense.h5ad")
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", "0.00001")
    assert main(["info", str(tmp_path / "dense.h5ad")]) != 0
    assert "memory budget" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--epochs", "-1"], "epochs"),
        (["--lr", "0"], "learning rate"),
        (["--batch-size", "0"], "batch size"),
        (["--param", "dropout=3"], "out of range"),
        (["--param", "hidden=x"], "comma-separated"),
    ],
)
def test_cli_hyperparameters_out_of_range(tmp_path, capsys, args, words):
    path = _write(_adata(), tmp_path / "ok.h5ad")
    assert (
        main(
            [
                "train",
                "--data",
                str(path),
                "--model",
                "mlp",
                "--label-key",
                "label",
                "--out",
                str(tmp_path / "r"),
                *args,
            ]
        )
        != 0
    )
    assert words in capsys.readouterr().err


def test_recipe_with_unknown_step(tmp_path, capsys):
    path = _write(_adata(), tmp_path / "ok.h5ad")
    (tmp_path / "r.json").write_text(json.dumps({"steps": [{"name": "denoise_magic"}]}))
    assert (
        main(
            [
                "preprocess",
                str(path),
                "-o",
                str(tmp_path / "o.h5ad"),
                "--recipe",
                str(tmp_path / "r.json"),
            ]
        )
        != 0
    )
    assert "Unknown recipe step 'denoise_magic'" in capsys.readouterr().err


# .xlsx and .pkl never reach the app: the uploader accepts only the readable types
FILE_CASES = [
    c
    for c, (_, args, _) in CORPUS.items()
    if args == ["info"] and c not in ("unknown_extension", "pickle_upload")
]


def plain(text: str) -> str:
    """A message as the user reads it (``ui.state.md`` escapes markdown with backslashes)."""
    import re

    return re.sub(r"\\(.)", r"\1", text)


def workspace_files(home: Path) -> list[str]:
    """Every file under the workspace's datasets folder, hidden ones included."""
    root = home / "datasets"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


@pytest.mark.parametrize("case", FILE_CASES)
def test_app_upload_shows_one_line_and_keeps_working(case, tmp_path, monkeypatch, workspace):
    from streamlit.testing.v1 import AppTest

    from engine import datasets
    from tests.conftest import ROOT

    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", BUDGET_GB)
    path = CORPUS[case][0](tmp_path)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/data.py").run()
    at.file_uploader[0].upload(path.name, path.read_bytes()).run()
    next(b for b in at.button if b.label == "Load file").click().run()
    assert not at.exception
    errors = [plain(e.value) for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0] and CORPUS[case][2] in errors[0], errors
    assert datasets.list_datasets() == [] and workspace_files(workspace) == []
    good = _write(_adata(), tmp_path / "good.h5ad")
    at.file_uploader[0].clear().upload("good.h5ad", good.read_bytes()).run()
    next(b for b in at.button if b.label == "Load file").click().run()
    assert not at.exception and not at.error
    assert [d["name"] for d in datasets.list_datasets()] == ["good"]
    assert {m.label: m.value for m in at.metric}["Cells"] == "60"


@pytest.mark.parametrize("case", FILE_CASES)
def test_app_streamed_upload_shows_one_line_and_keeps_working(
    case, tmp_path, monkeypatch, workspace
):
    """The same files through serve.py's streaming upload route (ui/uploads.py)."""
    pytest.importorskip("httpx2")
    from starlette.applications import Starlette
    from starlette.testclient import TestClient
    from streamlit.testing.v1 import AppTest

    from engine import datasets
    from tests.conftest import ROOT
    from ui import uploads

    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", BUDGET_GB)
    monkeypatch.setattr(uploads, "ACTIVE", uploads.ACTIVE)
    client = TestClient(Starlette(routes=uploads.routes()))
    path = CORPUS[case][0](tmp_path)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/data.py").run()

    def send(p: Path):
        token = at.session_state["upload_ticket"]
        body = p.read_bytes() if p.is_file() else b""
        r = client.put(f"/api/upload/{token}", params={"name": p.name}, content=body)
        at.run()
        return r

    r = send(path)
    if r.status_code == 200:
        next(b for b in at.button if b.label == "Load file").click().run()
        assert not at.exception
        errors = [plain(e.value) for e in at.error]
    else:  # refused by the route itself: the upload box shows its one line
        errors = [r.json()["error"]]
        assert next(b for b in at.button if b.label == "Load file").disabled
    assert len(errors) == 1 and "\n" not in errors[0] and CORPUS[case][2] in errors[0], errors
    assert datasets.list_datasets() == [] and workspace_files(workspace) == []
    assert send(_write(_adata(), tmp_path / "good.h5ad")).status_code == 200
    next(b for b in at.button if b.label == "Load file").click().run()
    assert not at.exception and not at.error
    assert [d["name"] for d in datasets.list_datasets()] == ["good"]
    assert {m.label: m.value for m in at.metric}["Cells"] == "60"


@pytest.mark.parametrize(
    "case",
    [
        "nan_values",
        "one_class_label",
        "missing_labels",
        "class_too_small_for_split",
        "duplicated_genes",
    ],
)
def test_app_train_refuses_at_once(case, tmp_path):
    from streamlit.testing.v1 import AppTest

    from engine import datasets, io, jobs, runs, workspace
    from tests.conftest import ROOT

    bad = io.read(CORPUS[case][0](tmp_path))
    name = datasets.save(bad, "bad")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    if case != "one_class_label":
        label_box = next(b for b in at.selectbox if b.label == "Label column")
        if "label" in label_box.options:  # the page defaults to the cell-type column
            label_box.set_value("label").run()
        next(b for b in at.button if b.label == "Submit").click().run()
        errors = [plain(e.value) for e in at.error]
        assert len(errors) == 1 and CORPUS[case][2] in errors[0], errors
    else:  # a one-value column is no label column: the page never offers it
        label_box = next(b for b in at.selectbox if b.label == "Label column")
        assert "label" not in label_box.options and label_box.options
    assert jobs.list_jobs() == []


def test_count_model_on_negative_values_names_the_ways_out():
    """The VAE on CyTOF intensities said "use layers['counts']", a layer that file lacks; the
    message names both ways out: a counts layer or, when training, the Gaussian likelihood."""
    import numpy as np

    from engine import io
    from engine.errors import ScwbError

    with pytest.raises(ScwbError) as err:
        io.check_counts(np.array([[1.0, -0.5], [2.0, 3.0]], dtype=np.float32))
    assert str(err.value) == (
        "X holds negative values; count models (NB/ZINB) need raw counts: choose a layer of raw "
        "counts (or, to train, the Gaussian likelihood)."
    )


def test_a_separator_closing_every_line_adds_no_gene(tmp_path):
    """Excel's tab-delimited text ends each line with a tab: an empty, unnamed 'gene' of NaNs
    was added, and training failed later on NaN without naming it."""
    from engine import io

    path = tmp_path / "excel.tsv"
    path.write_text("cell\tg1\tg2\t\nc1\t1\t2\t\nc2\t3\t4\t\nc3\t0\t1\t\n")
    a = io.read(path)
    assert list(a.var_names) == ["g1", "g2"] and np.isfinite(a.X).all()


def test_run_files_that_are_pipes_damaged_or_huge_are_refused_not_waited_on(tmp_path, monkeypatch):
    """A hostile pass: results.h5ad as a named pipe hung the Results page for good, a truncated
    split.npz crashed Compare (BadZipFile), an 800 MB run.json took 1.7 GB to list the runs."""
    from engine import results, runs, seeds
    from engine.errors import ScwbError

    run = tmp_path / "run"
    run.mkdir()
    os.mkfifo(run / "results.h5ad")
    with pytest.raises(ScwbError, match="not a regular file"):
        results.summary(run / "results.h5ad")
    (run / "split.npz").write_bytes(b"PK\x03\x04" + b"\0" * 96)  # a zip cut short
    assert seeds.test_cells(run) is None
    (run / "run.json").write_text(json.dumps({"model": "mlp", "pad": "x" * 2000}))
    monkeypatch.setattr(runs, "MAX_JSON_BYTES", 1000)
    assert runs.read_json(run / "run.json", {}) == {}


def test_compare_page_survives_a_hand_edited_run_json(tmp_path, workspace, lognorm_file):
    """A list where run.json holds the label column crashed Compare for every run."""
    from streamlit.testing.v1 import AppTest

    from engine import runs, train
    from engine import workspace as ws
    from engine.spec import RunSpec

    good = ws.runs_dir() / "a-good"
    train.run(RunSpec(model="sk_logreg", data=lognorm_file, out=str(good), label_key="cell_type"))
    bad = ws.runs_dir() / "b-edited"
    import shutil

    shutil.copytree(good, bad)
    runs.write_json(bad / "run.json", {**runs.read_json(bad / "run.json"), "label_key": ["x"]})
    at = AppTest.from_file(
        str(Path(__file__).resolve().parent.parent / "app.py"), default_timeout=60
    )
    at.run()
    at.switch_page("pages/compare.py")
    at.run()
    at.multiselect[0].set_value(["a-good", "b-edited"]).run()
    assert not at.exception, [e.message for e in at.exception]
    assert any("b\\-edited: run.json or metrics.json is unreadable" in c.value for c in at.caption)


def test_a_zarr_store_is_named_as_one(tmp_path):
    """A .zarr folder was read as a 10x folder: 'needs genes.tsv or features.tsv(.gz)'."""
    store = tmp_path / "cells.zarr"
    store.mkdir()
    (store / ".zgroup").write_text("{}")
    proc = run_cli(["info", str(store)])
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1 and "is a zarr store" in err[0], proc.stderr
