"""Checks of untrusted files before any library reads them, so that a refusal comes from a
check and never from a failed allocation or a signal.

Every matrix of an ``.h5ad`` (``X``, ``layers``, ``obsm``, ``varm``, ``obsp``, ``varp``, ``raw``)
is inspected with h5py alone (``check_h5ad``, ``check_10x_h5``, ``check_sparse``): its in-memory
size is computed from dtype and shape/nnz and checked against the memory budget (each entry and
the total), its dtype must be numeric, and a sparse matrix must have a valid structure
(``indptr`` starting at 0, monotonic, ending at nnz, one entry per row + 1, indices in
``[0, n_cols)``), read in chunks. Text formats are bounded before they are parsed
(``mtx_header``, ``count_lines``, ``table_bounds``). ``engine.io.read`` runs these checks first,
so scipy, scanpy and anndata only ever see well-formed matrices; ``engine.reader`` adds the
memory-capped child process.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import ScwbError

CHUNK = 1 << 22  # elements per chunk when scanning indptr/indices
ROOT = Path(__file__).resolve().parent.parent
MATRIX_GROUPS = ("layers", "obsm", "varm", "obsp", "varp")
VLEN_BYTES = 64  # in-memory cost counted for one variable-length string or object
# a data frame's index (obs and var names): read into a pandas index of Python strings, whatever
# its stored type; measured 190-230 B a name (1 M names, int64 or text; read and described).
# An int64 index counted at 8 B let 20 M genes (a 400 KB file) take 3.5 GB before a time limit
INDEX_BYTES = 256


def memory_budget() -> int:
    """Bytes one dataset may take in memory, all its matrices together
    (``$SCWB_MEMORY_BUDGET_GB``, default 4 GB; read at call time)."""
    from engine import settings

    return settings.get().memory_budget


def human(nbytes: float) -> str:
    for unit, size in (("GB", 2**30), ("MB", 2**20), ("KB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def over_budget(name: str, entry: str, nbytes: float, what: str = "") -> ScwbError:
    budget = memory_budget()
    return ScwbError(
        f"{name}: {entry}{' ' + what if what else ''} needs {human(nbytes)} in memory, over the "
        f"memory budget ({human(budget)}); use a smaller or sparse file or raise "
        "SCWB_MEMORY_BUDGET_GB."
    )


def check_budget(name: str, entry: str, nbytes: float, what: str = "") -> None:
    if nbytes > memory_budget():
        raise over_budget(name, entry, nbytes, what)


# ----------------------------------------------------------------------------- HDF5 helpers
def _itemsize(dtype: np.dtype) -> int:
    # variable-length strings and objects, and fixed-length strings too: anndata makes each a
    # Python string (10 M two-byte entries, 56 KB compressed, took 800 MB once read)
    if dtype.kind == "S":  # bytes become text of 4 bytes a character (S64: U64, 256 bytes;
        return max(4 * dtype.itemsize, VLEN_BYTES)  # 50 M of them took 12 GB, counted as 3)
    if dtype.kind in "OVU":
        return max(dtype.itemsize, VLEN_BYTES)
    return max(dtype.itemsize, 1)


def _is_index(ds: Any) -> bool:
    """Whether ``ds`` is the index its data frame group names (``_index`` attribute)."""
    try:
        name = ds.parent.attrs.get("_index")
    except Exception:  # an unreadable attribute: counted as a plain dataset
        return False
    if isinstance(name, bytes):
        name = name.decode(errors="replace")
    return isinstance(name, str) and ds.name.rsplit("/", 1)[-1] == name


def _n_chunks(ds: Any) -> int:
    """How many chunks ``ds`` is stored in (0: not chunked)."""
    chunks = getattr(ds, "chunks", None)
    if not chunks or not ds.shape:
        return 0
    return int(
        np.prod(
            [-(-int(d) // max(int(c), 1)) for d, c in zip(ds.shape, chunks, strict=False)],
            dtype=np.float64,
        )
    )


def _chunk_overhead(ds: Any) -> int:
    """What HDF5 holds for the chunks of ``ds`` while reading it: a record for every chunk,
    stored or not (a 96 KB file of 1 x 1 chunks took 3.8 GB to read 3.8 MB of values: a
    hostile-input pass). One chunk holding it all costs what its values do."""
    return max(_n_chunks(ds) - 1, 0) * CHUNK_READ_BYTES


def _dataset_bytes(ds: Any) -> int:
    """Memory that reading ``ds`` takes: its values as Python will hold them, and its chunks."""
    n = int(np.prod(ds.shape, dtype=np.float64)) if ds.shape else 1
    size = _itemsize(ds.dtype)
    return n * (max(size, INDEX_BYTES) if _is_index(ds) else size) + _chunk_overhead(ds)


def _entry(path: str) -> str:
    """``layers/counts`` -> ``layers['counts']`` (how users know the entry); a name over 60
    characters is cut, so that a message stays one readable line."""
    parts = [p if len(p) <= 60 else p[:57] + "..." for p in path.strip("/").split("/")]
    if parts[0] == "raw" and len(parts) > 1:
        return "raw." + _entry("/".join(parts[1:]))
    if len(parts) == 1:
        return parts[0]
    return f"{parts[0]}[{parts[1]!r}]" + "".join(f"/{p}" for p in parts[2:])


CHUNK_MAX_BYTES = 256 << 20  # HDF5 decompresses a whole chunk to read any value of it
CHUNK_READ_BYTES = 4096  # what HDF5 holds per chunk while reading (measured 3.7 KB)


def _refuse_external(name: str, entry: str, ds: Any) -> None:
    """Datasets whose bytes live in another file (external storage, virtual datasets), or in
    chunks so large that reading one value decompresses gigabytes (a chunk may be far larger
    than the dataset it holds: 3.4 GB behind 7 KB of values)."""
    try:
        external = ds.external
    except Exception:
        external = None
    if external or getattr(ds, "is_virtual", False):
        raise ScwbError(f"{name}: {entry} stores its values in another file; refused.")
    chunks = getattr(ds, "chunks", None)
    if chunks:
        # bytes as stored (a string's own bytes, not the Python object it becomes): what
        # decompressing one chunk costs
        item = max(ds.dtype.itemsize, 1)
        chunk = float(np.prod(chunks, dtype=np.float64)) * item
        values = float(np.prod(ds.shape, dtype=np.float64)) * item if ds.shape else item
        # a chunk no larger than its dataset is the data itself (rhdf5 writes one whole chunk
        # by default), counted by the size checks; past that, and past the cap, it is a bomb
        if chunk > max(CHUNK_MAX_BYTES, values):
            raise ScwbError(
                f"{name}: {entry} is stored in chunks of {human(chunk)} each for "
                f"{human(values)} of values (a chunk is decompressed whole); "
                "refused. Rewrite it with smaller chunks."
            )


MAX_DEPTH = 32  # group nesting: AnnData writes a few levels, a nested uns dict rarely ten
MAX_OBJECTS = 50_000  # HDF5 objects in one file: AnnData writes hundreds; 150k links took 60 s


def _walk(name: str, group: Any, entry: str | None = None):
    """Every link below ``group`` (the file, or one of its entries named ``entry``) as
    ``(entry, link, object or None)``, walked by relative names with a depth and object cap. h5py's ``visititems`` looks
    every object up by its full path, which a file of deeply nested groups with long names
    turns into minutes (500 levels of 4,000-character names: 139 s); a link cycle ends at the
    depth cap. ``entry`` is how messages name it (``obsm['X_pca']``: the group's child it lies
    in, or ``entry`` when given); the object is None for a link that is not followed
    (external, dangling)."""
    import h5py

    left = MAX_OBJECTS
    # (group, depth, its path while names are still composed from it, its entry name)
    stack: list[tuple[Any, int, str | None, str | None]] = [
        (group, 0, None if entry else "", entry)
    ]
    while stack:
        g, depth, raw, entry = stack.pop()
        if depth >= MAX_DEPTH:
            raise ScwbError(
                f"{name}: {entry} nests groups more than {MAX_DEPTH} levels deep; refused."
            )
        for k in g:
            left -= 1
            if left < 0:
                raise ScwbError(f"{name} holds more than {MAX_OBJECTS:,} HDF5 objects; refused.")
            sub = None if raw is None else f"{raw}/{k}".strip("/")
            here = entry if sub is None else _entry(sub)
            sub = sub if sub is not None and "/" not in sub else None  # two levels name it
            link = g.get(k, getlink=True)
            obj = None
            if not isinstance(link, h5py.ExternalLink):
                try:
                    obj = g[k]
                except (KeyError, OSError, RuntimeError):
                    obj = None  # a dangling soft link holds nothing; the reader says so
            yield here, link, obj
            if isinstance(obj, h5py.Group):
                stack.append((obj, depth + 1, sub, here))


def _refuse_links(name: str, f: Any) -> None:
    """HDF5 links into other files (``ExternalLink``) would read a file the user never sent;
    HDF5 references (to objects or regions) are nothing AnnData writes, and a column of them
    was read, then failed the run's last write after its whole training (a hostile-input pass)."""
    import h5py

    for entry, link, obj in _walk(name, f):
        if isinstance(link, h5py.ExternalLink):
            raise ScwbError(f"{name}: {entry} links to another file; refused.")
        if isinstance(obj, h5py.Dataset) and _has_reference(obj.dtype):
            raise ScwbError(
                f"{name}: {entry} holds HDF5 references, which AnnData does not store; refused."
            )


def _has_reference(dtype: np.dtype) -> bool:
    """Whether ``dtype`` holds HDF5 references anywhere (a field of a compound type too)."""
    import h5py

    if h5py.check_dtype(ref=dtype) is not None:
        return True
    return bool(dtype.fields) and any(_has_reference(t[0]) for t in dtype.fields.values())


def _numeric(name: str, entry: str, dtype: np.dtype, what: str = "values") -> None:
    if dtype.kind == "c":
        raise ScwbError(
            f"{name}: {entry} holds complex numbers; expression {what} must be real numbers."
        )
    if dtype.kind not in "biuf":
        raise ScwbError(
            f"{name}: {entry} holds text or objects ({dtype}), not numbers; "
            "the matrix must be numeric."
        )


def _scan_1d(ds: Any, fn: Any) -> None:
    n = ds.shape[0]
    for start in range(0, n, CHUNK):
        fn(np.asarray(ds[start : min(n, start + CHUNK)]), start)


def check_sparse(
    name: str,
    entry: str,
    data: Any,
    indices: Any,
    indptr: Any,
    shape: tuple[int, int],
    fmt: str,
) -> int:
    """Validate a CSR/CSC matrix stored as three HDF5 datasets, reading only ``indptr`` and
    ``indices`` in chunks; return its in-memory size. ``fmt`` is 'csr' or 'csc'."""
    for part, ds in (("data", data), ("indices", indices), ("indptr", indptr)):
        if ds is None or not hasattr(ds, "shape"):
            raise ScwbError(
                f"{name}: the sparse matrix {entry} has no {part} array; it is damaged."
            )
        if len(ds.shape) != 1:
            raise ScwbError(f"{name}: {entry}/{part} is not one-dimensional; it is damaged.")
        _refuse_external(name, f"{entry}/{part}", ds)
    _numeric(name, entry, data.dtype)
    if data.dtype == np.float16:  # scipy.sparse has no half precision ("damaged" said before)
        raise ScwbError(
            f"{name}: {entry} is a sparse matrix of float16, which scipy cannot hold; save it "
            "as float32."
        )
    if data.dtype.byteorder == (">" if np.little_endian else "<"):
        raise ScwbError(
            f"{name}: {entry} is a sparse matrix stored in the other byte order "
            f"({data.dtype.str}), which scipy cannot hold; save it in this machine's byte order "
            "(for instance with anndata's write_h5ad)."
        )
    if data.dtype.kind == "f" and data.dtype.itemsize > 8:  # numba and scipy's sums refused it
        raise ScwbError(
            f"{name}: {entry} is a sparse matrix of {data.dtype} (extended precision), which "
            "the analysis libraries cannot use; save it as float32 or float64."
        )
    for part, ds in (("indices", indices), ("indptr", indptr)):
        if ds.dtype.kind not in "iu":
            raise ScwbError(f"{name}: {entry}/{part} is not an integer array ({ds.dtype}).")
        # scipy's own kernels take int32 or int64 in this machine's byte order: other widths
        # and byte orders were read, then failed in the app's first step with scipy's words
        # ("Output dtype not compatible with inputs"), while the command line went on
        if ds.dtype.itemsize not in (4, 8) or ds.dtype.byteorder == (
            ">" if np.little_endian else "<"
        ):
            raise ScwbError(
                f"{name}: {entry}/{part} is stored as {ds.dtype.str} integers; a sparse matrix's "
                "indices must be 32- or 64-bit integers in this machine's byte order (as "
                "anndata's write_h5ad writes them)."
            )
    n_rows, n_cols = shape
    major, minor = (n_rows, n_cols) if fmt == "csr" else (n_cols, n_rows)
    nnz = int(data.shape[0])
    size = (
        nnz * (_itemsize(data.dtype) + _itemsize(indices.dtype))
        + int(indptr.shape[0]) * _itemsize(indptr.dtype)
        + sum(_chunk_overhead(ds) for ds in (data, indices, indptr))
    )
    check_budget(name, entry, size, f"(sparse {n_rows} x {n_cols}, {nnz:,} non-zeros)")
    if int(indices.shape[0]) != nnz:
        raise ScwbError(
            f"{name}: {entry} has {nnz} values but {indices.shape[0]} indices; it is damaged."
        )
    if int(indptr.shape[0]) != major + 1:
        raise ScwbError(
            f"{name}: {entry} has an indptr of length {indptr.shape[0]}, not "
            f"{major + 1} ({'rows' if fmt == 'csr' else 'columns'} + 1); it is damaged."
        )
    if nnz > n_rows * n_cols:
        raise ScwbError(f"{name}: {entry} declares more non-zeros than cells; it is damaged.")
    state = {"last": 0}

    def indptr_chunk(a: np.ndarray, start: int) -> None:
        a = a.astype(np.int64, copy=False)
        if start == 0 and a.size and a[0] != 0:
            raise ScwbError(f"{name}: {entry} has an indptr that does not start at 0; damaged.")
        if a.size and (a[0] < state["last"] or np.any(np.diff(a) < 0)):
            raise ScwbError(f"{name}: {entry} has a decreasing indptr; it is damaged.")
        if a.size:
            state["last"] = int(a[-1])

    _scan_1d(indptr, indptr_chunk)
    if major + 1 > 0 and state["last"] != nnz:
        raise ScwbError(
            f"{name}: {entry} has an indptr ending at {state['last']}, not at its {nnz} "
            "non-zeros; it is damaged."
        )

    def indices_chunk(a: np.ndarray, start: int) -> None:
        if a.size and (int(a.min()) < 0 or int(a.max()) >= minor):
            bad = int(a.min()) if int(a.min()) < 0 else int(a.max())
            raise ScwbError(
                f"{name}: {entry} has an index {bad} outside 0..{minor - 1}; it is damaged."
            )

    _scan_1d(indices, indices_chunk)
    return size


MAX_DIM = 1 << 40  # cells or genes: far beyond any atlas, far below an overflowing product


def _shape_attr(name: str, entry: str, raw: Any) -> tuple[int, int]:
    try:
        shape = tuple(int(v) for v in np.asarray(raw).ravel())
    except (TypeError, ValueError, OverflowError):
        shape = ()
    if len(shape) != 2 or min(shape) < 0 or max(shape) > MAX_DIM:
        raise ScwbError(f"{name}: {entry} has no valid 2-D shape; it is damaged.")
    return shape  # type: ignore[return-value]


def _matrix_shape(name: str, path: str, obj: Any) -> tuple[int, ...]:
    """The shape of a checked matrix entry (a dense dataset or a sparse group)."""
    import h5py

    if isinstance(obj, h5py.Dataset):
        return tuple(int(n) for n in obj.shape) + (0, 0)
    raw = obj.attrs.get("shape", obj.attrs.get("h5sparse_shape"))
    return _shape_attr(name, _entry(path), raw)


def _sparse_format(group: Any) -> str | None:
    enc = group.attrs.get("encoding-type", group.attrs.get("h5sparse_format"))
    if isinstance(enc, bytes):
        enc = enc.decode()
    enc = str(enc) if enc is not None else ""
    if enc in ("csr_matrix", "csr"):
        return "csr"
    if enc in ("csc_matrix", "csc"):
        return "csc"
    return None


def _check_matrix(name: str, path: str, obj: Any, dense_only: bool) -> int:
    """One matrix entry (dense dataset, sparse group, or data frame group); its size in memory."""
    import h5py

    entry = _entry(path)
    if isinstance(obj, h5py.Dataset):
        _refuse_external(name, entry, obj)
        _numeric(name, entry, obj.dtype)
        size, chunks = _dataset_bytes(obj), _chunk_overhead(obj)
        note = (
            f", stored in {_n_chunks(obj):,} chunks of about {human(CHUNK_READ_BYTES)} each to read"
            if chunks > size - chunks
            else ""
        )
        check_budget(name, entry, size, f"(dense {' x '.join(map(str, obj.shape))}{note})")
        return size
    if not isinstance(obj, h5py.Group):
        raise ScwbError(f"{name}: {entry} is not a matrix; it is damaged.")
    fmt = _sparse_format(obj)
    if fmt is not None:
        if dense_only:
            raise ScwbError(
                f"{name}: {entry} is a sparse matrix; embeddings in obsm/varm must be dense "
                "arrays (convert with .toarray())."
            )
        shape = _shape_attr(name, entry, obj.attrs.get("shape", obj.attrs.get("h5sparse_shape")))
        return check_sparse(
            name, entry, obj.get("data"), obj.get("indices"), obj.get("indptr"), shape, fmt
        )
    # a data frame (obsm may hold one) or another encoding: count every array inside it
    return _group_bytes(name, entry, obj)


def _group_bytes(name: str, entry: str, group: Any) -> int:
    """What reading ``group`` (uns, a data frame, another encoding) takes; a sparse matrix
    anywhere inside it is checked as X is (one in uns, with an index of -7, was read, saved
    with the dataset, and crashed scipy once used: a hostile-input pass)."""
    import h5py

    walked = [(here, obj) for here, _, obj in _walk(name, group, entry=entry)]
    for here, obj in [(entry, group), *walked]:
        fmt = _sparse_format(obj) if isinstance(obj, h5py.Group) else None
        if fmt is not None:
            shape = _shape_attr(name, here, obj.attrs.get("shape", obj.attrs.get("h5sparse_shape")))
            check_sparse(
                name, here, obj.get("data"), obj.get("indices"), obj.get("indptr"), shape, fmt
            )
    found = [obj for _, obj in walked if isinstance(obj, h5py.Dataset)]
    total = 0
    for ds in found:
        _refuse_external(name, entry, ds)
        total += _dataset_bytes(ds)
    check_budget(name, entry, total)
    return total


def _check_frame(name: str, entry: str, group: Any) -> None:
    """A data frame group (obs, var): its column order names each column once, and only
    columns it holds (else anndata fails with a pandas message about the file's layout)."""
    order = group.attrs.get("column-order", [])
    try:
        cols = [c.decode() if isinstance(c, bytes) else str(c) for c in np.asarray(order).ravel()]
    except (TypeError, ValueError):
        raise ScwbError(f"{name}: {entry} has an unreadable column order; it is damaged.") from None
    seen: set[str] = set()
    n = _frame_len(group)
    for c in cols:
        if c in seen:
            raise ScwbError(f"{name}: {entry} lists column {c[:60]!r} twice; it is damaged.")
        if c not in group:
            raise ScwbError(
                f"{name}: {entry} lists column {c[:60]!r} but does not hold it; it is damaged."
            )
        seen.add(c)
        _check_column(name, entry, group, c, n)


def _frame_len(group: Any) -> int | None:
    """The rows of a data frame group (obs, var): the length of its index, None when unknown."""
    import h5py

    index = group.attrs.get("_index") if isinstance(group, h5py.Group) else None
    index = index.decode() if isinstance(index, bytes) else index
    held = group.get(str(index)) if index is not None else None
    return held.shape[0] if isinstance(held, h5py.Dataset) and held.ndim == 1 else None


def _check_column(name: str, entry: str, group: Any, col: str, n: int | None) -> None:
    """One value per row in a column: a dataset, or a categorical's codes, or a nullable
    column's values and mask, of one dimension and ``n`` (the index's length) long (2-D codes
    read as a column of tuples, accepted by info and failing train after it trained: a
    hostile pass)."""
    import h5py

    elem = group[col]
    parts = (
        {"": elem}
        if isinstance(elem, h5py.Dataset)
        else {f" {k}": elem[k] for k in ("codes", "values", "mask") if k in elem}
    )
    for part, ds in parts.items():
        if not isinstance(ds, h5py.Dataset):
            raise ScwbError(
                f"{name}: {entry} column {col[:60]!r}{part} is not an array; it is damaged."
            )
        if ds.ndim != 1 or (n is not None and ds.shape[0] != n):
            shape = "x".join(map(str, ds.shape)) or "a single value"
            rows = f" for {n:,} rows" if n is not None else ""
            raise ScwbError(
                f"{name}: {entry} column {col[:60]!r}{part} holds {shape} values{rows} (one per "
                "row expected); it is damaged."
            )


def check_h5ad(path: str | os.PathLike, name: str) -> dict[str, int]:
    """Check every matrix of an ``.h5ad`` before it is read (see the module docstring);
    return the in-memory size of each entry. Raises ``ScwbError`` naming the entry."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ScwbError(f"{name} is not a readable .h5ad file (truncated or not HDF5).") from None
    sizes: dict[str, int] = {}
    with f:
        _refuse_links(name, f)
        keys = set(f.keys())
        if "X" not in keys and "obs" not in keys:
            raise ScwbError(
                f"{name} is an HDF5 file but not AnnData (no X or obs); is it a 10x .h5?"
            )
        matrices: list[tuple[str, Any, bool]] = []
        if "X" in f:
            matrices.append(("X", f["X"], False))
        for group in MATRIX_GROUPS:
            if group in f and isinstance(f[group], h5py.Group):
                for k in f[group]:
                    matrices.append((f"{group}/{k}", f[group][k], group in ("obsm", "varm")))
        raw = f.get("raw")
        if isinstance(raw, h5py.Group):
            if "X" in raw:
                matrices.append(("raw/X", raw["X"], False))
            if isinstance(raw.get("varm"), h5py.Group):
                for k in raw["varm"]:
                    matrices.append((f"raw/varm/{k}", raw["varm"][k], True))
        for p, obj, dense_only in matrices:
            sizes[_entry(p)] = _check_matrix(name, p, obj, dense_only)
        for p in ("obs", "var", "raw/var"):
            if isinstance(f.get(p), h5py.Group):
                _check_frame(name, _entry(p), f[p])
        # raw.X has the cells' rows too (anndata named it 'X has 120 rows': a hostile pass)
        n_obs = _frame_len(f.get("obs"))
        if isinstance(raw, h5py.Group) and "X" in raw and n_obs is not None:
            rows = _matrix_shape(name, "raw/X", raw["X"])[0]
            if rows != n_obs:
                raise ScwbError(
                    f"{name}: raw.X has {rows:,} rows for {n_obs:,} cells (one per cell "
                    "expected); it is damaged."
                )
        # a missing obs or var: AnnData makes a name up for every cell or gene of the matrix
        # (a 23 KB file without var, declaring 8 M genes, took 1.7 GB: a hostile-input pass)
        for frame, matrix, axis in (("obs", "X", 0), ("var", "X", 1), ("raw/var", "raw/X", 1)):
            if matrix in f and not isinstance(f.get(frame), h5py.Group):
                n = _matrix_shape(name, matrix, f[matrix])[axis]
                sizes[_entry(frame)] = n * INDEX_BYTES
                check_budget(
                    name, _entry(frame), n * INDEX_BYTES, f"(not stored: {n:,} names made up)"
                )
        # everything else (obs, var, uns, raw/var): counted too, so no entry can hide a bomb
        checked = {p for p, _, _ in matrices}
        for top in sorted(keys):
            obj = f[top]
            if top in checked or top in MATRIX_GROUPS:
                continue
            if isinstance(obj, h5py.Dataset):
                _refuse_external(name, top, obj)
                sizes[top] = _dataset_bytes(obj)
                check_budget(name, top, sizes[top])
            elif isinstance(obj, h5py.Group):
                rest = 0
                for k in obj:
                    if f"{top}/{k}" in checked or (top == "raw" and k == "varm"):
                        continue
                    sub = obj[k]
                    if isinstance(sub, h5py.Dataset):
                        _refuse_external(name, f"{top}/{k}", sub)
                        rest += _dataset_bytes(sub)
                    else:
                        rest += _group_bytes(name, _entry(f"{top}/{k}"), sub)
                check_budget(name, top, rest)
                sizes[top] = rest
    total = sum(sizes.values())
    check_budget(name, "the whole file", total, "(all matrices together)")
    return sizes


def _held_bytes(obj: Any, depth: int = 0) -> int:
    """Bytes ``obj`` (a matrix, a data frame, an uns value) holds once read, text included."""
    import sys

    import pandas as pd
    import scipy.sparse as sp

    if depth > 64:
        return 0
    if obj is None:
        return 0
    if sp.issparse(obj):
        return sum(
            int(getattr(obj, a).nbytes)
            for a in ("data", "indices", "indptr", "row", "col")
            if hasattr(obj, a)
        )
    if isinstance(obj, pd.DataFrame | pd.Series | pd.Index):
        usage = obj.memory_usage(deep=True)
        return int(usage.sum() if hasattr(usage, "sum") else usage)
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind == "O":
            return int(obj.nbytes) + sum(_held_bytes(v, depth + 1) for v in obj.ravel())
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(sys.getsizeof(k) + _held_bytes(v, depth + 1) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return sum(_held_bytes(v, depth + 1) for v in obj)
    if hasattr(obj, "nbytes"):
        return int(obj.nbytes)
    return sys.getsizeof(obj)


def check_loaded(adata: Any, name: str) -> None:
    """What a dataset holds once read, text included, against the memory budget (run by the
    memory-capped reader child, before anything keeps the data or reads the file again). The
    checks before the read count a text value at a fixed size; a file whose strings all point
    at one block of its heap reads as far more (1 MB of file became 1 GB of obs: a
    hostile-input pass)."""
    parts: dict[str, Any] = {
        "X": adata.X,
        "obs": adata.obs,
        "var": adata.var,
        "uns": dict(adata.uns),
    }
    for group in MATRIX_GROUPS:
        for k, v in getattr(adata, group).items():
            parts[_entry(f"{group}/{k}")] = v
    if adata.raw is not None:
        parts["raw.X"], parts["raw.var"] = adata.raw.X, adata.raw.var
    sizes = {entry: _held_bytes(v) for entry, v in parts.items()}
    for entry, size in sizes.items():
        check_budget(name, entry, size, "(once read)")
    check_budget(name, "the whole file", sum(sizes.values()), "(once read, all entries together)")


def check_10x_h5(path: str | os.PathLike, name: str) -> int:
    """Check the CSC matrix of a 10x Genomics ``.h5`` (v2: one group per genome; v3: ``matrix``)."""
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError:
        raise ScwbError(f"{name} is not a readable 10x .h5 file (truncated or not HDF5).") from None
    total = 0
    with f:
        _refuse_links(name, f)
        groups = [g for g in f.values() if isinstance(g, h5py.Group) and "indptr" in g]
        if not groups:
            raise ScwbError(f"{name} is not a 10x Genomics .h5 file (no matrix group with indptr).")
        for g in groups:
            entry = g.name.strip("/")
            if "shape" not in g:
                raise ScwbError(f"{name}: {entry} has no shape; it is damaged.")
            if _dataset_bytes(g["shape"]) > 64:
                raise ScwbError(f"{name}: {entry}/shape is not two numbers; it is damaged.")
            n_genes, n_cells = _shape_attr(name, entry, g["shape"][()])
            total += check_sparse(
                name,
                entry,
                g.get("data"),
                g.get("indices"),
                g.get("indptr"),
                (n_genes, n_cells),
                "csc",
            )
            # the barcodes and gene ids become the cells' and genes' names (an index each)
            total += (n_cells + n_genes) * INDEX_BYTES
            for k in ("barcodes", "genes", "gene_names"):
                if k in g:
                    total += _dataset_bytes(g[k])
            if isinstance(g.get("features"), h5py.Group):
                total += _group_bytes(name, f"{entry}/features", g["features"])
    check_budget(name, "the whole file", total)
    return total


# ----------------------------------------------------------------------------- text formats
def open_text(path: Path):
    return gzip.open(path, "rb") if str(path).endswith(".gz") else open(path, "rb")


def count_lines(path: Path, name: str, limit: int | None = None) -> int:
    """Non-empty lines of a (gzipped) text file, streamed; refuses past ``limit`` bytes. Blank
    lines are not counted, as the reader skips them (a trailing blank line in features.tsv
    made '4 lines' of 3 genes, and the folder was refused: a hostile pass)."""
    limit = memory_budget() if limit is None else limit
    n, size, pending = 0, 0, False  # pending: the unfinished line holds something
    try:
        with open_text(path) as fh:
            while chunk := fh.read(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise over_budget(name, path.name, size, "(decompressed, at least)")
                parts = chunk.split(b"\n")
                if len(parts) > 1:  # the unfinished line ends in this chunk
                    n += int(pending or bool(parts[0].strip()))
                    n += sum(1 for line in parts[1:-1] if line.strip())
                    pending = False
                pending = pending or bool(parts[-1].strip())
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ScwbError(f"{name}: {path.name} is not readable ({_first_line(exc)}).") from None
    return n + int(pending)


def mtx_header(path: Path, name: str) -> tuple[int, int, int, str, int]:
    """The MatrixMarket banner and size line, parsed here: (rows, cols, nnz, field, header lines)."""
    try:
        with open_text(path) as fh:
            banner = fh.readline(4096).decode("ascii", "replace").split()
            lines = 1
            if (
                len(banner) < 5
                or banner[0] != "%%MatrixMarket"
                or banner[1].lower() != "matrix"
                or banner[2].lower() != "coordinate"
            ):
                raise ScwbError(
                    f"{name}: {path.name} is not a MatrixMarket coordinate matrix "
                    "(first line '%%MatrixMarket matrix coordinate real general')."
                )
            field, symmetry = banner[3].lower(), banner[4].lower()
            if field not in ("real", "integer", "double", "pattern") or symmetry != "general":
                raise ScwbError(
                    f"{name}: {path.name} is a '{field} {symmetry}' matrix; a 10x matrix is "
                    "'real/integer general'."
                )
            while True:
                line = fh.readline(4096)
                lines += 1
                if not line:
                    raise ScwbError(f"{name}: {path.name} has no size line.")
                if line.startswith(b"%") or not line.strip():
                    if lines > 10_000:
                        raise ScwbError(f"{name}: {path.name} has no size line.")
                    continue
                parts = line.split()
                break
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ScwbError(f"{name}: {path.name} is not readable ({_first_line(exc)}).") from None
    try:
        rows, cols, nnz = (int(p) for p in parts)
    except ValueError:
        raise ScwbError(
            f"{name}: {path.name} has a size line that is not three whole numbers."
        ) from None
    if min(rows, cols, nnz) < 0:
        raise ScwbError(f"{name}: {path.name} declares a negative size.")
    return rows, cols, nnz, field, lines


def table_bounds(path: Path, name: str, sep: str) -> tuple[int, int]:
    """Rows and columns of a (gzipped) text table, streaming it once and stopping as soon as
    the decompressed text passes the memory budget (no guessing from the compressed size)."""
    budget = memory_budget()
    size, lines, header, last, header_done, crs = 0, 0, b"", b"\n", False, 0
    try:
        with open_text(path) as fh:
            while chunk := fh.read(1 << 20):
                if not size and chunk[:2] in (b"\xff\xfe", b"\xfe\xff"):
                    raise ScwbError(f"{name} is UTF-16 text; save it as UTF-8 (or plain) text.")
                if b"\0" in chunk:  # UTF-16 without its mark, or not text at all
                    raise ScwbError(
                        f"{name} is not a text table (it holds NUL bytes: UTF-16 or binary?); "
                        "save it as UTF-8 CSV or TSV."
                    )
                size += len(chunk)
                if size > budget:
                    raise over_budget(name, "the table", size, "(decompressed text, at least)")
                if not header_done:  # the header may span chunks (wide tables)
                    header += chunk.split(b"\n", 1)[0]
                    header_done = b"\n" in chunk
                lines += chunk.count(b"\n")
                crs += chunk.count(b"\r")  # old Mac line ends: CR alone
                last = chunk[-1:]
    except (OSError, EOFError, gzip.BadGzipFile, zlib_error()) as exc:
        raise ScwbError(f"{name} could not be read: {_first_line(exc)}") from None
    if not lines and crs:  # "CSV (Macintosh)": rows end in CR alone
        lines, header = crs, header.split(b"\r", 1)[0]
        lines += 0 if last == b"\r" else 1
    else:
        lines += 0 if last == b"\n" or not size else 1
    cols = max(header.count(sep.encode()), header.count(b"\t"), header.count(b","))
    return max(lines - 1, 0), cols


def zlib_error() -> type[BaseException]:
    import zlib

    return zlib.error


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]
