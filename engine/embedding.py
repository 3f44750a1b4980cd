"""2-D embeddings (UMAP, PCA) of a latent space or of X, computed off the app's process.

``umap(adata_or_matrix, use_rep)`` is the computation (scanpy: ``pp.neighbors(use_rep=...)`` +
``tl.umap``, seeded, on at most ``n_max`` cells; rows with a non-finite value are left out).
``start(folder, key)`` runs it in a detached child process (``python -m engine.embedding FOLDER
KEY``) that writes ``FOLDER/<method>_<key>.npz`` (``coords`` and ``cells``: the row indices they
belong to) atomically, next to a small status file (``computing`` / ``done`` / ``failed`` +
``error``); ``read(folder, key)`` gives the state and, when done, the arrays. A page polls ``read``
and never waits for the computation.

The source is ``FOLDER/results.h5ad`` (a run's results) unless ``source`` names another file (a
workspace dataset, whose embeddings are cached under ``$SCWB_HOME/embeddings/<dataset>/``).
``key`` is an ``obsm`` entry, or ``"X"`` for the data matrix itself (log-normalised first when it
holds counts, then reduced by PCA).
"""

from __future__ import annotations

import argparse
import hashlib
import io as _io
import os
import subprocess
import sys
import traceback
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from engine import runs
from engine.errors import ScwbError

N_MAX = 20_000  # cells embedded at most (a random, seeded sample beyond that)
METHODS = ("umap", "pca")
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- computing
def _rep(adata: Any, use_rep: str) -> np.ndarray:
    if use_rep not in adata.obsm:
        raise ScwbError(f"The data has no obsm[{use_rep!r}] to embed.")
    m = adata.obsm[use_rep]
    m = m.to_numpy() if hasattr(m, "to_numpy") else m
    if hasattr(m, "toarray"):
        m = m.toarray()
    return np.asarray(m, dtype=np.float32)


def _x_rows(adata: Any, rows: np.ndarray) -> np.ndarray:
    """Rows of X, log-normalised when X holds counts (as a user would look at them)."""
    from engine import io

    kind = io.matrix_kind(adata.X)
    x = io.dense(adata.X[rows])
    if kind == "counts":
        x = np.log1p(x / np.maximum(x.sum(1, keepdims=True), 1) * 1e4)
    return np.asarray(x, dtype=np.float32)


def _finite_sample(m: np.ndarray, n_max: int, seed: int) -> tuple[np.ndarray, int]:
    finite = np.flatnonzero(np.isfinite(m).all(axis=1))
    dropped = m.shape[0] - len(finite)
    if len(finite) > n_max:
        finite = np.sort(np.random.default_rng(seed).choice(finite, n_max, replace=False))
    return finite, dropped


def _pca(m: np.ndarray, n_comps: int, seed: int) -> np.ndarray:
    from sklearn.decomposition import PCA

    n = int(min(n_comps, m.shape[0] - 1, m.shape[1]))
    if n < 2:
        raise ScwbError("Too few cells or features for a 2-D embedding.")
    return PCA(n_components=n, random_state=seed).fit_transform(m).astype(np.float32)


SCANPY_BRUTE_BELOW = 4096  # scanpy computes exact neighbours below this many cells


def knn_transformer(n_obs: int, n_neighbors: int, seed: int) -> Any:
    """The kNN scanpy uses for ``n_obs`` cells (None: its own choice), with its output as a
    ``csr_matrix``. From 4,096 cells scanpy takes pynndescent, whose ``csr_array`` its own
    reader (1.11.5) asks for ``getnnz``, which scipy 1.17's sparse arrays no longer have: every
    UMAP of 4,096 cells or more failed with an AttributeError. Same settings as scanpy's."""
    if n_obs < SCANPY_BRUTE_BELOW:
        return None
    import scanpy as sc
    import scipy.sparse as sp
    from pynndescent import PyNNDescentTransformer

    class CsrMatrixOutput(PyNNDescentTransformer):
        def fit_transform(self, X, y=None, **fit_params):  # noqa: N803 - sklearn's names
            return sp.csr_matrix(super().fit_transform(X, y, **fit_params))

        def transform(self, X, y=None):  # noqa: N803
            return sp.csr_matrix(super().transform(X))

    return CsrMatrixOutput(
        n_neighbors=n_neighbors,
        metric="euclidean",
        random_state=seed,
        n_jobs=sc.settings.n_jobs,
        n_trees=min(64, 5 + round(n_obs**0.5 / 20.0)),
        n_iters=max(5, round(np.log2(n_obs))),
    )


def umap(
    adata_or_matrix: Any,
    use_rep: str | None = None,
    n_max: int = N_MAX,
    seed: int = 0,
    n_neighbors: int = 15,
    method: str = "umap",
) -> dict[str, Any]:
    """Embed ``obsm[use_rep]`` (or X, or a plain matrix) in 2-D.

    Returns ``{"coords": (n, 2), "cells": row indices of the input, "dropped": rows left out for
    non-finite values, "total": rows of the input}``. ``method="pca"`` gives the first two
    principal components instead of a UMAP.
    """
    import anndata as ad

    if method not in METHODS:
        raise ScwbError(f"Unknown embedding method {method!r}; use one of {', '.join(METHODS)}.")
    is_adata = isinstance(adata_or_matrix, ad.AnnData)
    if is_adata and use_rep in (None, "X"):  # sample first: never densify all of X
        total = adata_or_matrix.n_obs
        rows = np.arange(total)
        if total > n_max:
            rows = np.sort(np.random.default_rng(seed).choice(total, n_max, replace=False))
        sub = _x_rows(adata_or_matrix, rows)
        ok = np.isfinite(sub).all(axis=1)
        cells, sub, dropped = rows[ok], sub[ok], int((~ok).sum())
    else:
        m = (
            _rep(adata_or_matrix, use_rep)
            if is_adata
            else np.asarray(adata_or_matrix, dtype=np.float32)
        )
        if m.ndim != 2 or m.shape[1] < 1:
            raise ScwbError("An embedding needs a 2-D matrix (cells x features).")
        total = m.shape[0]
        cells, dropped = _finite_sample(m, n_max, seed)
        sub = m[cells]
    if len(cells) < 3:
        raise ScwbError(
            f"Only {len(cells)} cell(s) have finite values in {use_rep or 'the matrix'}: nothing to embed."
        )
    if use_rep in (None, "X") and sub.shape[1] > 50:
        sub = _pca(sub, 50, seed)
    if method == "pca":
        coords = sub[:, :2] if use_rep not in (None, "X") and sub.shape[1] == 2 else None
        if coords is None:
            coords = _pca(sub, 2, seed)
    elif sub.shape[1] <= 2:
        coords = np.column_stack([sub, np.zeros((len(cells), 2 - sub.shape[1]), np.float32)])
    else:
        import scanpy as sc

        a = ad.AnnData(X=np.zeros((len(cells), 1), dtype=np.float32))
        a.obsm["rep"] = sub
        k = int(min(n_neighbors, len(cells) - 1))
        sc.pp.neighbors(
            a,
            use_rep="rep",
            n_neighbors=k,
            random_state=seed,
            transformer=knn_transformer(len(cells), k, seed),
        )
        sc.tl.umap(a, random_state=seed)
        coords = np.asarray(a.obsm["X_umap"], dtype=np.float32)
    return {
        "coords": np.asarray(coords, dtype=np.float32),
        "cells": cells.astype(np.int64),
        "dropped": int(dropped),
        "total": int(total),
    }


# ----------------------------------------------------------------------------- the cache files
def _stem(key: str, method: str) -> str:
    """A file name for ``key`` (an obsm key from a file: untrusted) that cannot collide or escape."""
    clean = "".join(c if c.isalnum() or c in "_-" else "_" for c in str(key))[:40]
    digest = hashlib.sha1(f"{method}\0{key}".encode()).hexdigest()[:8]
    return f"{method}_{clean}_{digest}"


def paths(folder: str | Path, key: str, method: str = "umap") -> tuple[Path, Path]:
    """(``.npz`` with the coordinates, ``.json`` with the state) for ``key`` in ``folder``."""
    stem = _stem(key, method)
    return Path(folder) / f"{stem}.npz", Path(folder) / f"{stem}.json"


def _source(folder: Path, source: str | Path | None) -> Path:
    return Path(source) if source else Path(folder) / "results.h5ad"


def _mtime(p: Path) -> float | None:
    try:
        return p.stat().st_mtime
    except OSError:
        return None


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    try:  # a child that exited but was not reaped yet (a zombie) is not computing
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read(
    folder: str | Path, key: str, method: str = "umap", source: str | Path | None = None
) -> dict[str, Any]:
    """Where the embedding of ``key`` stands: ``{"state": "missing" | "computing" | "done" |
    "failed", "error": ..., and when done "coords", "cells", "dropped", "total"}``. Never raises."""
    npz, status_path = paths(folder, key, method)
    status = runs.read_json(status_path, None)
    if not isinstance(status, dict) or status.get("state") not in ("computing", "done", "failed"):
        return {"state": "missing"}
    src_mtime = _mtime(_source(Path(folder), source or status.get("source")))
    if status.get("source_mtime") is not None and src_mtime not in (None, status["source_mtime"]):
        return {"state": "missing", "stale": True}  # the source changed since: compute again
    if status["state"] == "computing":
        if status.get("host") == os.uname().nodename and not _alive(status.get("pid")):
            return {
                **status,
                "state": "failed",
                "error": "the computation stopped before it finished",
            }
        return status
    if status["state"] == "failed":
        return status
    if not runs.regular_file(npz, 2**31):  # a named pipe in its place blocked Results
        return {"state": "missing"}
    try:
        with np.load(npz) as z:
            return {
                **status,
                "coords": np.asarray(z["coords"]),
                "cells": np.asarray(z["cells"]),
                "dropped": int(z["dropped"]),
                "total": int(z["total"]),
            }
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return {"state": "failed", "error": f"the cached embedding is unreadable ({exc})"}


def compute(
    folder: str | Path,
    key: str,
    method: str = "umap",
    source: str | Path | None = None,
    n_max: int = N_MAX,
    seed: int = 0,
) -> dict[str, Any]:
    """Compute the embedding of ``key`` here and now, write it and its status; return ``read``."""
    import anndata as ad

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    src = _source(folder, source)
    npz, status_path = paths(folder, key, method)
    base = {
        "key": key,
        "method": method,
        "source": str(src),
        "source_mtime": _mtime(src),
        "pid": os.getpid(),
        "host": os.uname().nodename,
        "started": runs.now(),
    }
    runs.write_json(status_path, {**base, "state": "computing"})
    try:
        if not src.exists():
            raise ScwbError(f"{src.name} is missing: nothing to embed.")
        if key in (None, "X"):
            out = umap(ad.read_h5ad(src), key, n_max=n_max, seed=seed, method=method)
        else:  # only that obsm entry is read, never the file's matrices
            from engine import results

            out = umap(results.obsm(src, key), n_max=n_max, seed=seed, method=method)
        buf = _io.BytesIO()
        np.savez(buf, **out)
        tmp = npz.with_name(f".{npz.name}.{os.getpid()}.tmp")
        tmp.write_bytes(buf.getvalue())
        os.replace(tmp, npz)
        runs.write_json(
            status_path,
            {**base, "state": "done", "finished": runs.now(), "dropped": out["dropped"]},
        )
    except Exception as exc:  # one line for the page; the child's stderr keeps the detail
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, ScwbError):
            msg = f"{type(exc).__name__}: {msg}"
            traceback.print_exc()
        runs.write_json(
            status_path, {**base, "state": "failed", "finished": runs.now(), "error": msg}
        )
    return read(folder, key, method, source)


def start(
    folder: str | Path,
    key: str,
    method: str = "umap",
    source: str | Path | None = None,
    n_max: int = N_MAX,
) -> dict[str, Any]:
    """Launch the computation in a detached child process unless it is done or under way;
    return the current state at once. The child is a fresh interpreter (never a fork of a
    process that may hold torch or threads), in its own session so it outlives a page rerun."""
    state = read(folder, key, method, source)
    if state["state"] in ("computing", "done"):
        return state
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    npz, status_path = paths(folder, key, method)
    src = _source(folder, source)
    status = {
        "key": key,
        "method": method,
        "source": str(src),
        "source_mtime": _mtime(src),
        "pid": os.getpid(),  # this process until the child is known: a rerun will not start another
        "host": os.uname().nodename,
        "started": runs.now(),
        "state": "computing",
    }
    runs.write_json(status_path, status)
    # options first, as --opt=value, then "--": an obsm key or a path that starts with "-" is
    # a name, not an option
    cmd = [sys.executable, "-m", "engine.embedding", f"--method={method}", f"--n-max={int(n_max)}"]
    cmd += ([f"--source={source}"] if source else []) + ["--", str(folder), str(key)]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    try:
        with open(status_path.with_suffix(".log"), "ab") as log:
            proc = subprocess.Popen(
                cmd,
                cwd=str(ROOT),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                close_fds=True,
            )
    except OSError as exc:
        failed = {**status, "state": "failed", "error": f"could not start: {exc.strerror or exc}"}
        runs.write_json(status_path, failed)
        return failed
    # the child writes its own status at once (same pid); this covers the moment before
    if runs.read_json(status_path, {}).get("state") not in ("done", "failed"):
        runs.write_json(status_path, {**status, "pid": proc.pid})
    return {**status, "pid": proc.pid}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m engine.embedding", description=__doc__)
    p.add_argument("folder")
    p.add_argument("key", help="an obsm key, or X")
    p.add_argument("--method", default="umap", choices=METHODS)
    p.add_argument("--source", help="the .h5ad to read (default FOLDER/results.h5ad)")
    p.add_argument("--n-max", type=int, default=N_MAX)
    args = p.parse_args(argv)
    out = compute(args.folder, args.key, args.method, args.source, args.n_max)
    if out["state"] != "done":
        print(f"error: {out.get('error')}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
