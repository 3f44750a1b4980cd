"""Reading, validating and describing single-cell data.

``read`` turns a path or an uploaded file object into AnnData (``.h5ad``, 10x ``.h5``, zipped 10x
``.mtx`` folders, ``.csv``/``.tsv`` matrices of cells x genes). ``describe`` says what a matrix
holds so that the app can suggest a recipe. ``check_*`` functions raise ``ScwbError`` with one
line that says what is wrong and what to do.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import tempfile
import time
import warnings
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine import checks, genes, runs
from engine.errors import ScwbError

READABLE = (".h5ad", ".h5", ".zip", ".csv", ".tsv", ".txt.gz", ".csv.gz", ".tsv.gz")
MAX_ZIP_RATIO = 50  # a zip that expands to more than 50x its size is refused
MAX_ZIP_BYTES = 20 * 2**30

# Nullable string columns (pandas' ``string`` dtype; every text column under pandas 3) are
# written as such. anndata refuses them by default only for the sake of readers older than 0.11;
# the engine reads with 0.12. Set once here rather than around each write: the setting is
# process-wide, and the app writes from several sessions' threads at once.
if hasattr(ad.settings, "allow_write_nullable_strings"):
    ad.settings.allow_write_nullable_strings = True


def memory_budget() -> int:
    """Bytes one dataset may take in memory, all its matrices together
    (``$SCWB_MEMORY_BUDGET_GB``, default 4 GB, read at call time)."""
    return checks.memory_budget()


# ----------------------------------------------------------------------------- reading
def read(source: str | os.PathLike | IO[bytes], filename: str | None = None) -> ad.AnnData:
    """Read a dataset from a path or a binary file object (``filename`` tells its format).

    Runs in this process after the structural checks of ``engine.reader`` (every matrix's
    size and sparse structure is validated before any library reads it). Files from users
    (uploads, the CLI's ``info``) go through ``engine.reader.run_child`` instead, which adds a
    memory-capped child process."""
    if hasattr(source, "read"):
        name = filename or getattr(source, "name", "upload")
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"upload{_suffix(name)}"
            copy_stream(source, path)
            return _read_path(path, display=name)
    path = Path(source)
    if not path.exists():
        raise ScwbError(f"{path} does not exist.")
    return _read_path(path, display=str(path))


def read_validated(path: Path, display: str) -> ad.AnnData:
    """``read`` of a path shown to users as ``display`` (what the reader child calls)."""
    if not path.exists():
        raise ScwbError(f"{Path(display).name} does not exist.")
    return _read_path(path, display=display)


def copy_stream(source: IO[bytes], path: Path, chunk: int = 1 << 20) -> int:
    """Copy a binary file object to ``path`` in chunks (never the whole file in memory);
    on failure nothing is left at ``path``. A full disk is one line."""
    if hasattr(source, "seek"):
        with contextlib.suppress(OSError, ValueError):
            source.seek(0)
    n = 0
    try:
        with open(path, "wb") as fh:
            while block := source.read(chunk):
                _write_chunk(fh, block if isinstance(block, bytes) else block.encode())
                n += len(block)
    except BaseException as exc:
        Path(path).unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise disk_full() from None
        raise
    return n


def _write_chunk(fh: IO[bytes], block: bytes) -> None:
    fh.write(block)


def disk_full() -> ScwbError:
    return ScwbError("The disk is full: free space where SCWB_HOME lives, then try again.")


def _suffix(name: str) -> str:
    lower = str(name).lower()
    for s in (".csv.gz", ".tsv.gz", ".txt.gz"):
        if lower.endswith(s):
            return s
    return Path(lower).suffix


def _read_path(path: Path, display: str) -> ad.AnnData:
    suffix = _suffix(display if Path(display).suffix else path.name)
    if path.is_dir():
        if suffix == ".zarr" or any(
            (path / m).exists() for m in (".zattrs", ".zgroup", "zarr.json")
        ):
            raise ScwbError(
                f"{Path(display).name} is a zarr store: save it as .h5ad "
                "(anndata.read_zarr(...).write_h5ad(...)) and load that."
            )
        return _read_mtx_dir(path, display)
    if not path.is_file():  # a named pipe, a device or a socket: never opened
        raise ScwbError(f"{Path(display).name} is not a regular file (a pipe or a device?).")
    if path.stat().st_size == 0:
        raise ScwbError(f"{Path(display).name} is empty (0 bytes).")
    if suffix in (".pkl", ".pickle", ".pt", ".pth", ".joblib"):
        raise ScwbError(
            f"{Path(display).name}: pickled files are never loaded; export the data as .h5ad."
        )
    try:
        if suffix == ".h5ad":
            adata = _read_h5ad(path, display)
        elif suffix == ".h5":
            adata = _read_10x_h5(path, display)
        elif suffix == ".zip":
            adata = _read_zip(path, display)
        elif suffix in (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz", ".txt.gz"):
            adata = _read_table(path, display, sep="," if ".csv" in suffix else "\t")
        else:
            raise ScwbError(
                f"{Path(display).name}: unknown format {suffix or '(no extension)'}; "
                "use .h5ad, 10x .h5, a zipped 10x .mtx folder, .csv or .tsv."
            )
    except ScwbError:
        raise
    except MemoryError:
        raise ScwbError(f"{Path(display).name} does not fit in memory.") from None
    except Exception as exc:  # any reader failure becomes one readable line
        raise ScwbError(f"{Path(display).name} could not be read: {_first_line(exc)}") from None
    adata.uns.setdefault("source", Path(display).name)
    return adata


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def _read_h5ad(path: Path, display: str) -> ad.AnnData:
    name = Path(display).name
    checks.check_h5ad(path, name)  # sizes and sparse structure, before anndata reads anything
    try:
        with warnings.catch_warnings():  # a library's notes ("Transforming to str index")
            warnings.simplefilter("ignore")  # are not the user's to read
            adata = ad.read_h5ad(path)
    except Exception as exc:
        raise ScwbError(f"{name} is a damaged .h5ad file: {_read_failure(exc)}") from None
    _check_loaded(adata, name)
    return adata


_IOSPEC = re.compile(r"IOSpec\(encoding_type='([^']*)', encoding_version='([^']*)'\)")
_READING = re.compile(r"reading key '([^']+)'")


def _read_failure(exc: BaseException) -> str:
    """anndata's reason in a user's words: "No read method registered for IOSpec(...). You may
    need to update your installation of anndata." and a list of classes cut off mid-line were
    said as they came (a hostile-input pass)."""
    text = " ".join([str(exc), *getattr(exc, "__notes__", [])])
    at = _READING.search(text)
    entry = at.group(1).strip("/") if at else ""
    where = f"its {entry}" if entry else "an entry"
    if spec := _IOSPEC.search(text):
        return (
            f"{where} is stored as {spec.group(1) or 'an unnamed encoding'} (encoding version "
            f"{spec.group(2) or '?'}), which anndata does not read; write the file with "
            "anndata's write_h5ad."
        )
    first = _first_line(exc)
    if " needs to be of one of " in first:
        what = first.split(" needs to be of one of ")[0][:60]
        return (
            f"its {what} is not a matrix (a single value, an empty group, or a sparse group "
            "without its encoding-type); write the file with anndata's write_h5ad."
        )
    return first


def _check_loaded(adata: ad.AnnData, name: str) -> None:
    """What the structural checks cannot see from HDF5 alone: X must be a numeric matrix."""
    x = adata.X
    if x is None:
        return
    dtype = x.dtype if hasattr(x, "dtype") else np.asarray(x).dtype
    if dtype.kind == "c":
        raise ScwbError(f"{name}: X holds complex numbers; expression values must be real.")
    if dtype.kind not in "biuf":
        raise ScwbError(f"{name}: X holds text or objects ({dtype}), not numbers.")
    for key in adata.obsm:
        if sp.issparse(adata.obsm[key]):
            raise ScwbError(f"{name}: obsm[{key!r}] is a sparse matrix; embeddings must be dense.")
    for frame in (adata.obs, adata.var):
        # an index named like one of the columns (an edited '_index' attribute) reads, but no
        # step can save it again: the column keeps its values, the names lose their title
        if frame.index.name is not None and frame.index.name in frame.columns:
            frame.index.name = None
    frames = [("obs", adata.obs), ("var", adata.var)]
    if adata.raw is not None:
        frames.append(("raw.var", adata.raw.var))
    for where, frame in frames:
        # a column '_index' reads (a frame written without its encoding, or whose column order
        # lists its names) but no step can write it again: a run failed after its training,
        # on writing its results (a hostile-input pass)
        if "_index" in map(str, frame.columns):
            raise ScwbError(
                f"{name}: {where} has a column named '_index', the name anndata keeps for the "
                f"{'cell' if where == 'obs' else 'gene'} names (the file's {where} was not "
                "written as anndata writes it); write the file again with anndata's write_h5ad."
            )
    _check_uns_saveable(adata.uns, name)


def _check_uns_saveable(uns: Any, name: str) -> None:
    """Every entry of uns written once into memory: what anndata reads but cannot write (an
    HDF5 object reference) failed every step that saves, a training after its last epoch."""
    import h5py
    from anndata.io import write_elem

    with h5py.File(_memory_file(), "w", driver="core", backing_store=False) as f:
        for key in list(uns):
            try:
                write_elem(f, f"u{len(f)}", uns[key])
            except Exception as exc:
                what = "an HDF5 object reference" if "Reference" in repr(exc) else _first_line(exc)
                raise ScwbError(
                    f"{name}: uns[{str(key)[:80]!r}] cannot be saved again ({what}); remove it "
                    "from the file (del adata.uns[...]) and load it again."
                ) from None


def _memory_file() -> str:
    """A name for an HDF5 file that lives in memory only (h5py's core driver)."""
    return f"scwb-check-{os.getpid()}-{time.monotonic_ns()}.h5"


def _long_float(dtype: Any) -> bool:
    return getattr(dtype, "kind", "") == "f" and getattr(dtype, "itemsize", 0) > 8


def _valid_log1p(value: Any) -> bool:
    """``uns['log1p']`` as scanpy writes it: a dict whose base is None or a positive number
    other than 1."""
    if not isinstance(value, dict):
        return False
    base = value.get("base")
    if base is None:
        return True
    if isinstance(base, bool) or not isinstance(base, int | float | np.integer | np.floating):
        return False  # text ("2") reached np.log in scanpy (a review)
    return bool(np.isfinite(base)) and base > 0 and base != 1


def canonical(adata: ad.AnnData) -> ad.AnnData:
    """X in the form every step and model expects, made once where data enters the workspace
    (the reader child, before its fingerprint) and where preprocessing starts: a bool X as
    float32 (normalize failed on a cast), and a sparse X with a column twice in one row summed
    (scipy's meaning; a step that assumes one entry per position failed on 'infinity'); an obs
    or var column of records (a compound dtype, which no table can show) as text, one of long
    doubles as float64; an ``uns['log1p']`` scanpy could not read dropped. Not
    done by ``read``: a saved dataset's fingerprint is of the bytes it was saved with. Complex
    obs or var columns become text as records do."""
    for frame in (adata.obs, adata.var):  # a record per cell (compound dtype): as text, once
        # and complex numbers, which no table can show (the Data page's table failed in pyarrow)
        for col in [c for c in frame.columns if getattr(frame[c].dtype, "kind", "") in ("V", "c")]:
            frame[col] = frame[col].map(str).astype("category")
        # long double: pandas cannot describe it (info refused what preprocess accepted)
        for col in [c for c in frame.columns if _long_float(frame[c].dtype)]:
            frame[col] = frame[col].astype(np.float64)
    log1p = adata.uns.get("log1p")
    if log1p is not None and not _valid_log1p(log1p):  # scanpy's HVG reads its base
        del adata.uns["log1p"]  # (a string there failed HVG with "'str' object has no 'get'")
    x = adata.X
    if x is None:
        return adata
    if x.dtype == bool:
        adata.X = x = x.astype(np.float32)
    if sp.issparse(x) and not x.has_canonical_format:
        x.sum_duplicates()
    return adata


def _is_anndata_h5(path: Path) -> bool:
    """An AnnData file saved as .h5 (it was called a damaged 10x file: a hostile pass)."""
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return "obs" in f and "var" in f and "matrix" not in f
    except (OSError, ValueError):
        return False


def _read_10x_h5(path: Path, display: str) -> ad.AnnData:
    import scanpy as sc

    if _is_anndata_h5(path):
        return _read_h5ad(path, display)
    checks.check_10x_h5(path, Path(display).name)
    try:
        adata = sc.read_10x_h5(path)
        if adata.n_vars == 0:  # no 'Gene Expression' feature (antibodies alone): read them all
            adata = sc.read_10x_h5(path, gex_only=False)
    except Exception as exc:
        raise ScwbError(
            f"{Path(display).name} is not a 10x Genomics .h5 file: {_first_line(exc)}"
        ) from None
    adata.var_names_make_unique()
    return adata


def _read_zip(path: Path, display: str) -> ad.AnnData:
    name = Path(display).name
    try:
        zf = zipfile.ZipFile(path)
    except zipfile.BadZipFile:
        raise ScwbError(f"{name} is not a valid zip archive.") from None
    with zf, tempfile.TemporaryDirectory() as tmp:
        infos = [
            i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX")
        ]
        total = sum(i.file_size for i in infos)
        if total > MAX_ZIP_BYTES or total > MAX_ZIP_RATIO * max(path.stat().st_size, 1) + 2**20:
            raise ScwbError(
                f"{name} expands to {total / 2**20:.0f} MB, far more than its size: refused."
            )
        mtx = [i for i in infos if i.filename.lower().endswith(("matrix.mtx", "matrix.mtx.gz"))]
        if not mtx:
            tables = [i for i in infos if i.filename.lower().endswith((".csv", ".tsv", ".h5ad"))]
            if len(tables) == 1:
                target = Path(tmp) / Path(tables[0].filename).name
                _extract(zf, tables[0], target, name)
                return _read_path(target, display=target.name)
            raise ScwbError(
                f"{name} holds no 10x matrix (matrix.mtx with barcodes and genes/features)."
            )
        folder = str(Path(mtx[0].filename).parent)
        for info in infos:
            if str(Path(info.filename).parent) == folder:
                _extract(zf, info, Path(tmp) / Path(info.filename).name, name)
        return _read_mtx_dir(Path(tmp), display)


def _extract(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, name: str) -> None:
    """Stream one member out, never past the size its header declares."""
    limit = info.file_size
    n = 0
    with zf.open(info) as src, open(target, "wb") as dst:
        while block := src.read(1 << 20):
            n += len(block)
            if n > limit:
                raise ScwbError(f"{name}: {info.filename} is larger than its zip entry says.")
            dst.write(block)


def _find(folder: Path, *stems: str) -> Path | None:
    for stem in stems:
        for suffix in ("", ".gz"):
            p = folder / f"{stem}{suffix}"
            if p.exists():
                return p
    return None


def _read_mtx_dir(folder: Path, display: str) -> ad.AnnData:
    """A 10x folder (matrix.mtx, barcodes.tsv, features.tsv or genes.tsv, each maybe .gz),
    parsed here: the declared size is checked against the barcodes, the genes and the memory
    budget before anything is allocated, and every entry against the declared size."""
    name = Path(display).name
    mtx = _find(folder, "matrix.mtx")
    genes = _find(folder, "features.tsv", "genes.tsv")
    barcodes = _find(folder, "barcodes.tsv")
    if genes is None:
        raise ScwbError(f"{name}: a 10x folder needs genes.tsv or features.tsv(.gz).")
    if mtx is None or barcodes is None:
        raise ScwbError(f"{name}: a 10x folder needs matrix.mtx and barcodes.tsv (maybe .gz).")
    rows, cols, nnz, field, header_lines = checks.mtx_header(mtx, name)
    n_genes = checks.count_lines(genes, name)
    n_cells = checks.count_lines(barcodes, name)
    if rows != n_genes or cols != n_cells:
        raise ScwbError(
            f"{name}: matrix.mtx declares {rows} genes x {cols} cells, but {genes.name} has "
            f"{n_genes} lines and {barcodes.name} has {n_cells}; the files do not belong together."
        )
    if nnz > rows * cols:
        raise ScwbError(f"{name}: matrix.mtx declares more entries than genes x cells.")
    # parsing holds int64 rows + cols + float64 values, then a float32/int32 CSR
    # ... and the barcodes and genes become the names of the cells and genes (an index each)
    checks.check_budget(
        name,
        "matrix.mtx",
        nnz * (8 + 8 + 8 + 4 + 4) + (cols + 1) * 8 + (rows + cols) * checks.INDEX_BYTES,
        f"({nnz:,} entries, {cols:,} cells, {rows:,} genes)",
    )
    ncol = 2 if field == "pattern" else 3
    try:
        with checks.open_text(mtx) as fh:
            for _ in range(header_lines):
                fh.readline()
            table = pd.read_csv(
                fh,
                sep=r"\s+",
                header=None,
                comment="%",
                nrows=nnz + 1,
                dtype=np.float64,
                engine="c",
            )
    except pd.errors.EmptyDataError:
        table = pd.DataFrame(np.zeros((0, ncol)))
    except Exception as exc:
        raise ScwbError(f"{name}: matrix.mtx could not be parsed: {_first_line(exc)}") from None
    if table.shape[0] != nnz or table.shape[1] != ncol:
        raise ScwbError(
            f"{name}: matrix.mtx declares {nnz} entries of {ncol} numbers, but holds "
            f"{table.shape[0]} lines of {table.shape[1]}; it is damaged."
        )
    values = table.to_numpy()
    del table
    gi, ci = values[:, 0], values[:, 1]
    if nnz and (
        gi.min() < 1
        or gi.max() > rows
        or ci.min() < 1
        or ci.max() > cols
        or np.any(np.mod(values[:, :2], 1) != 0)
    ):
        raise ScwbError(
            f"{name}: matrix.mtx has an entry outside its declared {rows} x {cols}; it is damaged."
        )
    data = np.ones(nnz, np.float32) if field == "pattern" else values[:, 2].astype(np.float32)
    x = sp.csr_matrix(
        (data, (ci.astype(np.int64) - 1, gi.astype(np.int64) - 1)), shape=(cols, rows)
    )
    del values, gi, ci, data
    try:
        feats = pd.read_csv(genes, sep="\t", header=None, dtype=str, keep_default_na=False)
        cells = pd.read_csv(barcodes, sep="\t", header=None, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise ScwbError(
            f"{name}: the gene or barcode list could not be read: {_first_line(exc)}"
        ) from None
    symbols = feats.iloc[:, 1] if feats.shape[1] > 1 else feats.iloc[:, 0]
    var = pd.DataFrame({"gene_ids": feats.iloc[:, 0].to_numpy()}, index=symbols.to_numpy())
    if feats.shape[1] > 2:
        var["feature_types"] = feats.iloc[:, 2].to_numpy()
    adata = ad.AnnData(X=x, obs=pd.DataFrame(index=cells.iloc[:, 0].to_numpy()), var=var)
    adata.var_names_make_unique()
    return adata


# a first header field that names the row names: words, or the names R and pandas give them
_ROW_NAME_HINT = re.compile(
    r"cell|barcode|id|index|name|obs|sample|^(x|v1|\.\.\.1|unnamed.*)$", re.IGNORECASE
)


# the whole first header field where it names the row names: in a table without a header row
# it is a cell's name, which may hold one of the words above ('cell1': a review)
_ROW_NAME_FIELD = re.compile(
    r"^(cells?|barcodes?|cell[_ .-]?(ids?|names?|barcodes?)|ids?|index|names?|obs(_names)?|"
    r"samples?|genes?|features?|symbols?|x|v1|\.\.\.1|unnamed.*|#)$",
    re.IGNORECASE,
)


def _check_header(path: Path, name: str, sep: str, df: pd.DataFrame, encoding: str) -> None:
    """What pandas would silently change: a gene named twice (it invents 'g1.1'), no gene
    column at all (another separator: the whole line was the cell name), and a first column of
    numbers under a gene's name (a table without cell names loses its first gene to them)."""
    if df.shape[1] == 0:
        with checks.open_text(path) as fh:
            first = fh.readline(4096)
        hint = next((f" Separated by {c!r}?" for c in (";", "|", " ") if c.encode() in first), "")
        raise ScwbError(
            f"{name} reads as one column of cell names and no genes.{hint} Use commas (.csv) or "
            "tabs (.tsv)."
        )
    header = pd.read_csv(
        path, sep=sep, header=None, nrows=1, dtype=str, keep_default_na=False, encoding=encoding
    )
    fields = [str(v) for v in header.iloc[0].tolist()]
    # R's write.table writes no field above the row names: the header is one field short
    short = len(fields) == df.shape[1]
    names = fields if short else fields[1:]
    seen: set[str] = set()
    for gene in names:
        if gene in seen:
            raise ScwbError(f"{name}: the header names {gene[:60]!r} twice; each gene once.")
        seen.add(gene)
    head = "" if short else fields[0].strip()
    # no header row at all: the first cell's name above its values, which became gene names
    # and the cell was lost (a hostile pass: 'c1,1,2,3' read as genes '1', '2', '3')
    genes_numeric = pd.to_numeric(pd.Series(names, dtype=object), errors="coerce").notna().all()
    if names and head and not _ROW_NAME_FIELD.match(head) and genes_numeric:
        shown = ", ".join(repr(v[:20]) for v in fields[:4]) + (", ..." if len(fields) > 4 else "")
        raise ScwbError(
            f"{name}: its first line ({shown}) holds numbers where the gene names belong: the "
            "table seems to have no header row. Its first line must name the genes (cells x "
            "genes)."
        )
    rows = pd.to_numeric(pd.Series(df.index), errors="coerce")
    if head and not _ROW_NAME_HINT.search(head) and rows.notna().all():
        raise ScwbError(
            f"{name}: its first column ({head[:40]!r}) holds numbers, not cell names; the first "
            "column must name the cells (cells x genes)."
        )


def _check_row_lengths(path: Path, name: str, sep: str, encoding: str, n_genes: int) -> None:
    """A row shorter than the others: pandas fills what it lacks with NaN in silence (refused
    later as 'X holds NaN values', which is not what is wrong: a hostile pass). Read again only
    where the table holds empty values."""
    import csv

    with checks.open_text(path) as fh:
        first = fh.readline()  # the whole header (a wide one ran past a bounded read: a review)
        other = next((c for c in (";", "|", "\t", ",") if c != sep and c.encode() in first), None)
        hint = f" Separated by {other!r}? Use commas (.csv) or tabs (.tsv)." if other else ""
        lines = (line.decode(encoding, errors="replace") for line in fh)
        reader = csv.reader(lines, delimiter=sep)
        for fields in reader:  # the header (one field short in R's tables) is read above
            if not fields or not "".join(fields).strip():
                continue  # blank lines
            if len(fields) < n_genes + 1:
                raise ScwbError(
                    f"{name} has rows of different lengths (line {reader.line_num + 1}: "
                    f"{len(fields)} fields, "
                    f"the table {n_genes + 1}).{hint}"
                )


def _read_table(path: Path, display: str, sep: str) -> ad.AnnData:
    name = Path(display).name
    n_rows, n_cols = checks.table_bounds(path, name, sep)
    if n_rows == 0:  # pandas takes minutes over a wide header with no rows under it
        raise ScwbError(f"{name} holds a header but no rows: no cells to read.")
    # pandas parses to float64, the numeric check makes a second float64 frame, X is float32
    # ... and the row and column names become the cells' and genes' names (an index each)
    checks.check_budget(
        name,
        "the table",
        n_rows * n_cols * 20 + (n_rows + n_cols) * checks.INDEX_BYTES,
        f"(dense {n_rows} x {n_cols})",
    )
    encoding = "utf-8"
    try:
        df = pd.read_csv(path, sep=sep, index_col=0, engine="c")
    except UnicodeDecodeError:
        encoding = "latin-1"
        try:
            df = pd.read_csv(path, sep=sep, index_col=0, encoding=encoding)
        except Exception as exc:
            raise ScwbError(
                f"{name} is not UTF-8 text and could not be read: {_first_line(exc)}"
            ) from None
    except pd.errors.ParserError as exc:
        raise ScwbError(f"{name} has rows of different lengths ({_first_line(exc)}).") from None
    except pd.errors.EmptyDataError:
        raise ScwbError(f"{name} holds no table.") from None
    if df.shape[1] == 0 and sep == ",":
        return _read_table(path, display, sep="\t")
    # a separator closing every line (Excel's tab-delimited text) made an empty, unnamed "gene"
    # of NaNs, which training then refused without naming it
    while (
        df.shape[1] and str(df.columns[-1]).startswith("Unnamed:") and df.iloc[:, -1].isna().all()
    ):
        df = df.iloc[:, :-1]
    _check_header(path, name, sep, df, encoding)
    if df.isna().to_numpy().any():
        _check_row_lengths(path, name, sep, encoding, df.shape[1])
    # only columns pandas did not parse as numbers are looked at one by one (a wide table of
    # numbers would otherwise take a call per gene)
    text = [i for i, t in enumerate(df.dtypes) if not pd.api.types.is_numeric_dtype(t)]
    for i in text:
        col = df.iloc[:, i]
        values = pd.to_numeric(col, errors="coerce")
        bad = (values.isna() & col.notna()).to_numpy()
        if bad.any():
            raise ScwbError(
                f"{name}: column {df.columns[i]!r} holds {str(col[bad].iloc[0])[:40]!r}, not a "
                "number; the table must be numbers, cells x genes."
            )
        df.isetitem(i, values)
    adata = ad.AnnData(X=df.to_numpy(dtype=np.float32))
    adata.obs_names = _cell_names(path, sep, encoding, df)
    adata.var_names = df.columns.astype(str)
    return adata


def _cell_names(path: Path, sep: str, encoding: str, df: pd.DataFrame) -> pd.Index:
    """The first column as written: parsed with the numbers, '0001' became 1 and 'NA' or
    'null' became NaN (then reported as duplicated 'nan' cells). Read again as text, only when
    the parse changed them: the first field of each line after the header, which is the names
    also where the header is one field short (R's write.table names no first column)."""
    names = df.index
    if names.dtype == object and not names.isna().any():
        return names.astype(str)  # text as written: nothing to read again
    try:
        again = pd.read_csv(
            path,
            sep=sep,
            header=None,
            skiprows=1,
            usecols=[0],
            dtype=str,
            keep_default_na=False,
            encoding=encoding,
        ).iloc[:, 0]
    except Exception:  # the table itself was read: keep its parsed names
        return names.astype(str)
    return pd.Index(again.to_numpy()) if len(again) == len(df) else names.astype(str)


# ----------------------------------------------------------------------------- describing
KIND_SAMPLE_VALUES = 20_000_000  # entries of a dense X that matrix_kind reads at most


def matrix_kind(x: Any, max_rows: int = 2000) -> str:
    """What a matrix holds: 'counts', 'log-normalised', 'normalised (not log)', 'raw intensities'
    (cytometry), 'arcsinh-transformed' (cytometry after asinh(x / cofactor)), 'scaled (MinMax)',
    'scaled (z-score)', 'centred or signed values', 'empty' or 'invalid (NaN/inf)', judged on up
    to ``max_rows`` rows."""
    if x is None:  # a file of annotations alone ('empty' read as a matrix of zeros)
        return "missing (no X)"
    if x.shape[0] == 0 or x.shape[1] == 0:
        return "empty"
    if not sp.issparse(x):  # rows of 6 M genes: 2,000 of them in float64 took gigabytes
        max_rows = max(1, min(max_rows, KIND_SAMPLE_VALUES // x.shape[1]))
    rows = x[: min(max_rows, x.shape[0])]
    vals = rows.data if sp.issparse(rows) else np.asarray(rows).ravel()
    vals = np.asarray(vals, dtype=np.float64)
    if vals.size == 0:
        return "empty"
    if not np.isfinite(vals).all():
        return "invalid (NaN/inf)"
    vmin, vmax = vals.min(), vals.max()
    if vmin < 0 and vmax > 30:
        return "raw intensities"  # cytometry: large values with small negative noise
    if vmin < 0:
        d = dense(rows)
        means, stds = np.abs(d.mean(axis=0)), d.std(axis=0)
        if np.median(means) < 0.25 and 0.5 < np.median(stds) < 1.5:
            return "scaled (z-score)"  # every gene centred with unit spread
        if vmin > -0.05 and vmax <= 1.05:
            return "scaled (MinMax)"  # within [0, 1] but for small noise (simulated sets)
        if vmin > -3.0 and vmax < 15:
            return "arcsinh-transformed"  # asinh of intensities: small negative noise, < ~10
        return "centred or signed values"
    if np.all(np.mod(vals, 1) == 0):
        return "counts"
    if vmax <= 1.0 + 1e-6:
        return "scaled (MinMax)"
    if vmax < 30:
        return "log-normalised"
    return "normalised (not log)"


def label_candidates(adata: ad.AnnData, max_values: int = 200) -> dict[str, dict[str, int]]:
    """obs columns usable as labels (2..max_values distinct values) with their value counts."""
    out: dict[str, dict[str, int]] = {}
    for col in adata.obs.columns:
        s = adata.obs[col]
        if pd.api.types.is_float_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype):
            continue
        counts = s.astype(str).value_counts()
        if 2 <= len(counts) <= max_values and len(counts) < max(adata.n_obs, 3):
            out[col] = {str(k): int(v) for k, v in counts.items()}
    return out


def dense(x: Any, dtype: Any = np.float32) -> np.ndarray:
    """A dense NumPy copy (or view) of a sparse or dense matrix."""
    return np.asarray(x.toarray() if sp.issparse(x) else x, dtype=dtype)


def nbytes(x: Any) -> int:
    if sp.issparse(x):
        return int(x.data.nbytes + x.indices.nbytes + x.indptr.nbytes)
    return int(np.asarray(x).nbytes)


def median_counts(x: Any, max_cells: int = 20_000, seed: int = 0) -> float | None:
    """Median total counts per cell (of a seeded sample of at most ``max_cells``): the
    sequencing depth that decides how far a normalisation target stretches one count."""
    if x is None or x.shape[0] == 0 or x.shape[1] == 0:
        return None
    rows = np.arange(x.shape[0])
    if len(rows) > max_cells:
        rows = np.sort(np.random.default_rng(seed).choice(len(rows), max_cells, replace=False))
    totals = np.asarray(x[rows].sum(axis=1), dtype=np.float64).ravel()
    return float(np.median(totals))


def describe(adata: ad.AnnData) -> dict[str, Any]:
    """A summary the app shows and the recipe defaults are chosen from."""
    x = adata.X
    n = adata.n_obs * adata.n_vars
    nnz = (x.nnz if sp.issparse(x) else int(np.count_nonzero(x))) if x is not None and n else 0
    kind = matrix_kind(x)
    return {
        "n_obs": int(adata.n_obs),
        "n_vars": int(adata.n_vars),
        "sparse": bool(sp.issparse(x)),
        "sparsity": float(1 - nnz / n) if n else 1.0,
        "memory_mb": round(nbytes(x) / 2**20, 2) if x is not None else 0.0,
        "x_kind": kind,
        "median_counts": median_counts(x) if kind == "counts" else None,
        "layers": {k: matrix_kind(v) for k, v in adata.layers.items()},
        "labels": label_candidates(adata),
        "embeddings": [
            k
            for k in adata.obsm
            if getattr(adata.obsm[k], "ndim", 2) == 2 and adata.obsm[k].shape[1] >= 2
        ],
        "numeric_obs": [
            c for c in adata.obs.columns if pd.api.types.is_numeric_dtype(adata.obs[c])
        ],
        "recipe": adata.uns.get("recipe"),
        "mito_genes": int(genes.mito_mask(adata.var).sum()),
        "symbol_column": genes.symbol_column(adata.var),
        "unique_names": bool(adata.var_names.is_unique and adata.obs_names.is_unique),
        "raw": (
            {"kind": matrix_kind(adata.raw.X), "n_vars": int(adata.raw.n_vars)}
            if adata.raw is not None
            else None
        ),
    }


def fingerprint(adata: ad.AnnData) -> str:
    """A content hash (shape, names, values) that identifies a dataset for caching and run records."""
    h = hashlib.sha1()
    h.update(f"{adata.shape}".encode())
    for names in (adata.obs_names, adata.var_names):
        h.update("\x1f".join(map(str, names)).encode())
    x = adata.X
    if sp.issparse(x):
        for a in (x.data, x.indices, x.indptr):
            _update(h, a)
    elif x is not None:
        _update(h, x)
    return h.hexdigest()[:16]


def _update(h: Any, a: Any) -> None:
    """``h.update(a.tobytes())`` without the copy ``tobytes`` makes (a 1.4 GB X took 1.4 GB
    more to fingerprint: a hostile-input pass); the same bytes, so the same hash."""
    a = np.ascontiguousarray(a)
    if a.size:
        h.update(memoryview(a.reshape(-1)).cast("B"))


def content_hash(adata: ad.AnnData) -> str:
    """A hash of everything a dataset holds that a run can use (X, layers, obs, var, obsm,
    varm, raw X, the recipe): two datasets that differ anywhere there get different hashes."""
    h = hashlib.sha1(fingerprint(adata).encode())

    def matrix(x: Any) -> None:
        if x is None:
            h.update(b"none")
        elif sp.issparse(x):
            x = sp.csr_matrix(x)
            h.update(f"{x.shape}{x.dtype}".encode())
            for a in (x.data, x.indices, x.indptr):
                _update(h, a)
        elif isinstance(x, pd.DataFrame):
            frame(x)
        else:
            a = np.ascontiguousarray(x)
            h.update(f"{a.shape}{a.dtype}".encode())
            if a.dtype.kind != "O":
                _update(h, a)
            else:
                h.update(repr(a.tolist()).encode())

    def frame(df: pd.DataFrame) -> None:
        h.update(repr([(str(c), str(df[c].dtype)) for c in df.columns]).encode())
        if df.shape[1]:
            h.update(pd.util.hash_pandas_object(df, index=True).to_numpy().tobytes())
        h.update("\x1f".join(map(str, df.index)).encode())

    frame(adata.obs)
    frame(adata.var)
    for group in (adata.layers, adata.obsm, adata.varm):
        for k in sorted(group.keys(), key=str):
            h.update(str(k).encode())
            matrix(group[k])
    if adata.raw is not None:
        matrix(adata.raw.X)
        h.update("\x1f".join(map(str, adata.raw.var_names)).encode())
    h.update(repr(adata.uns.get("recipe")).encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- validation
def check_not_empty(adata: ad.AnnData) -> None:
    if adata.n_obs == 0:
        raise ScwbError("The data has no cells; check the file or loosen the filters.")
    if adata.n_vars == 0:
        raise ScwbError("The data has no genes; check the file or loosen the gene filter.")
    x = adata.X
    if x is None:  # was called a matrix of zeros (a hostile pass)
        raise ScwbError(
            "The data has no X matrix (annotations only): there are no values to learn from."
        )
    nnz = x.nnz if sp.issparse(x) else np.count_nonzero(x)
    if nnz == 0:
        raise ScwbError("Every value in the matrix is zero; there is nothing to learn from.")


FLOAT32_MAX = float(np.finfo(np.float32).max)
SAFE_MAX = 1e15  # the largest magnitude check_finite lets a model train on


def check_finite(x: Any, what: str = "X") -> None:
    """NaN, infinities, and values a model's float32 would turn into infinities (1e300 in a
    float64 X gave every cell NaN probabilities and the first class, silently)."""
    vals = x.data if sp.issparse(x) else np.asarray(x)
    if not np.isfinite(vals).all():
        n_bad = int((~np.isfinite(vals)).sum())
        raise ScwbError(
            f"{what} holds {n_bad} NaN or infinite values; remove or impute them first."
        )
    if vals.size and vals.dtype.kind in "fiu":
        big = max(float(vals.max()), -float(vals.min()))  # no copy of the matrix
        # beyond 1e15 (no measurement comes near it), squares and sums overflow the 32-bit
        # floats models compute in: 3e38, finite in a float32 X, ended in scikit-learn's
        # "unexpected ValueError ... too large" or a loss of 1e34 trained on (a hostile pass)
        if big > SAFE_MAX:
            raise ScwbError(
                f"{what} holds values up to {big:.3g}, beyond what models compute safely in "
                f"32-bit floats (at most {SAFE_MAX:.0e}): normalise or rescale the data first."
            )


def negatives(x: Any) -> tuple[int, float]:
    """How many entries of ``x`` (dense or sparse) are negative, and the lowest value."""
    vals = x.data if sp.issparse(x) else np.asarray(x)
    if not vals.size:
        return 0, 0.0
    lowest = float(vals.min())
    return (int((vals < 0).sum()), lowest) if lowest < 0 else (0, lowest)


# where a count model can be given other input: at training (applying a trained one, the data
# must hold what it was trained on)
_COUNTS_WAYS_OUT = "choose a layer of raw counts (or, to train, the Gaussian likelihood)"


def check_counts(x: Any, what: str = "X") -> None:
    """Count likelihoods need non-negative integers."""
    vals = x.data if sp.issparse(x) else np.asarray(x)
    check_finite(x, what)
    if negatives(x)[0]:
        raise ScwbError(
            f"{what} holds negative values; count models (NB/ZINB) need raw counts: "
            f"{_COUNTS_WAYS_OUT}."
        )
    sample = vals[:1_000_000]
    if sample.size and not np.all(np.mod(sample, 1) == 0):
        raise ScwbError(
            f"{what} holds non-integer values (normalised data?); count models (NB/ZINB) need "
            f"raw counts: {_COUNTS_WAYS_OUT}."
        )


def check_unique_names(adata: ad.AnnData) -> None:
    for axis, names in (("gene", adata.var_names), ("cell", adata.obs_names)):
        if not names.is_unique:
            dup = names[names.duplicated()][0]
            raise ScwbError(
                f"Duplicated {axis} names (e.g. {dup!r}); make them unique first "
                f"(engine.io.make_unique or the app's 'make names unique')."
            )


def make_unique(adata: ad.AnnData) -> ad.AnnData:
    adata.var_names_make_unique()
    adata.obs_names_make_unique()
    return adata


def check_label(adata: ad.AnnData, key: str, min_classes: int = 2) -> pd.Series:
    if key not in adata.obs:
        raise ScwbError(
            f"obs has no column {key!r}; choose one of: {', '.join(map(str, adata.obs.columns)) or 'none'}."
        )
    s = adata.obs[key]
    if s.isna().any():
        raise ScwbError(
            f"The column {key!r} has {int(s.isna().sum())} missing values; drop those cells first."
        )
    n = s.astype(str).nunique()
    if n < min_classes:
        raise ScwbError(
            f"The column {key!r} has {n} class(es); a classifier needs at least {min_classes}."
        )
    return s


def check_values(adata: ad.AnnData, key: str, values: Iterable[str]) -> None:
    present = set(adata.obs[key].astype(str))
    missing = [v for v in values if v not in present]
    if missing:
        raise ScwbError(
            f"The column {key!r} has no value {missing[0]!r}; it holds {', '.join(sorted(present)[:10])}."
        )


def write_h5ad(adata: ad.AnnData, path: str | Path, compression: str | None = "gzip") -> Path:
    """Write atomically (temp file + rename) so a reader never sees half a file.

    Nullable string columns (pandas' ``string`` dtype, every text column under pandas 3) are
    written as such (``allow_write_nullable_strings``, set when this module is imported).
    ``compression=None`` trades file size for speed (benchmarks).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = runs.temp_path(path)
    try:
        adata.write_h5ad(tmp, compression=compression)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise disk_full() from None
        raise
    return path


__all__ = [
    "read",
    "describe",
    "matrix_kind",
    "fingerprint",
    "content_hash",
    "read_validated",
    "canonical",
    "memory_budget",
    "check_not_empty",
    "check_finite",
    "check_counts",
    "negatives",
    "check_unique_names",
    "check_label",
    "check_values",
    "make_unique",
    "write_h5ad",
]


QC_ALIASES = {  # scanpy's column names, and the older names pipelines stored in obs
    "n_genes_by_counts": ("n_genes_by_counts", "n_genes"),
    "total_counts": ("total_counts", "n_counts"),
    "pct_counts_mt": ("pct_counts_mt", "percent_mito"),
}


def qc_metrics(adata: ad.AnnData) -> pd.DataFrame:
    """Per-cell QC with scanpy's ``calculate_qc_metrics`` and its column names
    (``n_genes_by_counts``, ``total_counts``, ``pct_counts_mt``) from raw counts
    (``layers['counts']``, or X when it holds counts). Without counts, the QC columns a pipeline
    already stored in ``obs`` are reused; the frame is empty when there are none."""
    import scanpy as sc

    x = adata.layers.get("counts")
    if x is None and matrix_kind(adata.X) == "counts":
        x = adata.X
    if x is None:
        out = pd.DataFrame(index=adata.obs_names)
        for name, aliases in QC_ALIASES.items():
            col = next(
                (
                    a
                    for a in aliases
                    if a in adata.obs and pd.api.types.is_numeric_dtype(adata.obs[a])
                ),
                None,
            )
            if col is not None:
                values = adata.obs[col].to_numpy(dtype=float)
                out[name] = (
                    values * 100 if name == "pct_counts_mt" and np.nanmax(values) <= 1 else values
                )
        return out
    view = ad.AnnData(X=x, var=pd.DataFrame(index=adata.var_names.astype(str)))
    view.obs_names = adata.obs_names
    view.var["mt"] = genes.mito_mask(adata.var)
    qc_vars = ["mt"] if view.var["mt"].any() else []
    obs, _ = sc.pp.calculate_qc_metrics(
        view, qc_vars=qc_vars, percent_top=None, log1p=False, inplace=False
    )
    return obs[[c for c in ("n_genes_by_counts", "total_counts", "pct_counts_mt") if c in obs]]
