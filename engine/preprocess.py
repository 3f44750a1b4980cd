"""Preprocessing recipes: ordered steps, each a thin call of scanpy or scikit-learn.

Reads like scanpy: every step takes an AnnData and changes it in place; ``apply`` runs a whole
``Recipe`` on a copy, returns it with a per-step report and records the recipe in
``uns['recipe']`` (JSON) so that a run knows how its data was made.

>>> recipe = Recipe([Step("filter_cells", {"min_genes": 200}), Step("normalize", {"target_sum": 1e6})])
>>> out, report = apply(adata, recipe)
"""

from __future__ import annotations

import contextvars
import json
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import scipy.sparse as sp

from engine import genes, pp_memory
from engine.errors import ScwbError
from engine.io import (
    canonical,
    check_finite,
    check_not_empty,
    dense,
    matrix_kind,
    memory_budget,
    negatives,
)


# ----------------------------------------------------------------------------- steps
def _any_gene_varies(x: Any) -> bool:
    """Whether some gene differs between cells (per-gene min < max; sparse kept sparse): the
    steps that rank, scale or reduce genes have nothing to work on otherwise."""
    return bool((dense(x.max(axis=0)).ravel() > dense(x.min(axis=0)).ravel()).any())


def subset(adata: ad.AnnData, key: str, values: list[str]) -> ad.AnnData:
    """Keep the cells whose ``obs[key]`` is one of ``values``."""
    if key not in adata.obs:
        raise ScwbError(f"subset: obs has no column {key!r}.")
    column = adata.obs[key].astype(str)
    held = set(column.unique())
    # a value the column does not hold was dropped in silence ("Nonexistent,NK" kept NK; a
    # value with a comma, cut in two, kept nothing: a hostile pass)
    unknown = [str(v) for v in values if str(v) not in held]
    if unknown or not values:
        shown = ", ".join(repr(v) for v in sorted(held)[:12]) + (", ..." if len(held) > 12 else "")
        what = f"no value {', '.join(map(repr, unknown[:5]))}" if unknown else "no value named"
        comma = (
            " (on the command line a comma inside a value is written \\,)"
            if unknown and any("," in v for v in held)
            else ""
        )
        raise ScwbError(f"subset: obs[{key!r}] has {what}; it holds {shown}{comma}.")
    keep = column.isin([str(v) for v in values]).to_numpy()
    return adata[keep].copy()


def from_raw(adata: ad.AnnData) -> ad.AnnData:
    """X and its genes from ``adata.raw``: a scanpy pipeline keeps the log-normalised (or raw
    count) values there before it selects genes and z-scores X, which a model should not be
    trained on again. Cells, obs and obsm stay; layers (of X's genes) go."""
    if adata.raw is None:
        raise ScwbError("from_raw: the data has no adata.raw to start from.")
    out = adata.raw.to_adata()
    out.uns = dict(adata.uns)
    note(f"X is now adata.raw's {out.n_vars:,} genes ({matrix_kind(out.X)})")
    return out


def filter_cells(
    adata: ad.AnnData, min_genes: int = 0, min_counts: int = 0, max_pct_mito: float = 100.0
) -> ad.AnnData:
    """Drop cells with too few detected genes or counts, or too high a mitochondrial share."""
    import scanpy as sc

    # which threshold each cell fails, on the cells as they came (a browser pass: 3,000 ->
    # 2,784 cells, and no word of how many the mitochondrial cut took)
    x, failed = adata.X, []
    if min_genes:
        detected = (
            np.asarray((x > 0).sum(axis=1)).ravel()
            if sp.issparse(x)
            else np.count_nonzero(x > 0, axis=1)
        )
        failed.append((f"fewer than {int(min_genes):,} genes", int((detected < min_genes).sum())))
        sc.pp.filter_cells(adata, min_genes=int(min_genes))
    if min_counts:
        total = np.asarray(x.sum(axis=1)).ravel()
        failed.append((f"fewer than {int(min_counts):,} counts", int((total < min_counts).sum())))
        sc.pp.filter_cells(adata, min_counts=int(min_counts))
    if max_pct_mito < 100:
        mito = genes.mito_mask(adata.var)
        if mito.any():
            pct = _pct(x, mito)
            failed.append(
                (f"over {max_pct_mito:g}% mitochondrial", int((pct > max_pct_mito).sum()))
            )
            x = adata.X
            pct = _pct(x, mito)
            adata = adata[pct <= max_pct_mito].copy()
    if len(failed) > 1 and any(n for _, n in failed):  # one threshold: the row says it all
        note(
            "cells failing each threshold: "
            + ", ".join(f"{n:,} {why}" for why, n in failed)
            + " (a cell can fail several)"
        )
    return adata


def _pct(x: Any, mask: np.ndarray) -> np.ndarray:
    """Each cell's share of its counts in the genes of ``mask``, in percent."""
    total = np.asarray(x.sum(axis=1)).ravel()
    part = np.asarray(x[:, mask].sum(axis=1)).ravel()
    return 100 * part / np.maximum(total, 1e-12)


def filter_genes(adata: ad.AnnData, min_cells: int = 3) -> ad.AnnData:
    """Drop genes detected in fewer than ``min_cells`` cells."""
    import scanpy as sc

    sc.pp.filter_genes(adata, min_cells=int(min_cells))
    return adata


def keep_counts(adata: ad.AnnData) -> ad.AnnData:
    """Keep the raw counts in ``layers['counts']`` (count models read them there). When the data
    already hold a counts layer and X is not counts, that layer is kept (copying X over it lost
    the real counts); when both are counts, X replaces it, and the report says so."""
    x_counts = matrix_kind(adata.X) == "counts"
    if "counts" in adata.layers:
        if not x_counts:
            note("kept the data's own layers['counts']: X does not hold counts")
            return adata
        note("replaced the data's own layers['counts'] with X's counts")
    elif not x_counts:
        note("X does not hold counts: layers['counts'] holds a copy of X, not counts")
    adata.layers["counts"] = adata.X.copy()
    return adata


# what the running step says of its effect (all genes kept, cells left empty), collected by
# ``apply`` into that step's report row. A context variable, not the warnings machinery: the
# app runs recipes in several sessions' threads at once, and warning filters are process-wide.
_NOTES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("pp_notes", default=None)


def note(message: str) -> None:
    """Say ``message`` in the running step's report row (outside ``apply``: a warning)."""
    notes = _NOTES.get()
    if notes is None:
        warnings.warn(message, UserWarning, stacklevel=2)
    elif message not in notes:
        notes.append(message)


def normalize(adata: ad.AnnData, target_sum: float = 1e6, log: bool = True) -> ad.AnnData:
    """Scale each cell to ``target_sum`` (1e6: CPM, 1e4: CP10k), then ``log1p`` when ``log``:
    scanpy's ``normalize_total`` and ``log1p`` (the same numbers, float32), written out so that
    a cell without counts and data already logged are said in the report, not on stderr.
    Needs counts: negative values are refused."""
    if adata.is_view:  # as scanpy: the step works on its own object, never the parent's X
        adata._init_as_actual(adata.copy())
    x = adata.X
    kind = matrix_kind(x)  # once: the refusal's advice and the logged-twice note read it
    n_neg, lowest = negatives(x)
    if n_neg:
        advice = {
            # pbmc68k_reduced: z-scored X, log-normalised raw, no counts anywhere (a browser
            # pass read 'normalise the raw counts' as a step it could take)
            "scaled (z-score)": "it looks scaled (z-score), which comes after normalising; "
            "normalise needs the raw counts (where only log-normalised values are kept, as in "
            "adata.raw of many files, start from those and leave normalize out)",
            "raw intensities": "it looks like cytometry intensities, which take arcsinh instead",
            "arcsinh-transformed": "it looks arcsinh-transformed already (cytometry)",
        }.get(kind, "normalise raw counts")
        raise ScwbError(
            f"normalize needs counts (values >= 0); X holds {n_neg:,} negative values (lowest "
            f"{lowest:.3g}): {advice}."
        )
    if log and kind == "log-normalised":  # a suspicion from the values, said so
        note(
            "X holds non-integer values below 30, as log-normalised data do"
            + (" (and uns['log1p'] says it was logged)" if "log1p" in adata.uns else "")
            + ": if it is logged already, this logs it twice"
        )
    total = np.asarray(x.sum(axis=1), dtype=np.float64).ravel()
    empty = int((total == 0).sum())
    if empty:
        note(
            f"{empty:,} cell{'s have' if empty > 1 else ' has'} no counts in the genes kept and "
            f"stay{'' if empty > 1 else 's'} all zero; a cell filter (min counts 1) on the "
            "result drops them"
        )
    # divided by total / target_sum in float32, as scanpy does (bit for bit); an empty cell by 1
    per = (np.where(total > 0, total, float(target_sum)) / float(target_sum)).astype(np.float32)
    if sp.issparse(x):
        out = sp.csr_matrix(x, dtype=np.float32, copy=True)
        out.data /= np.repeat(per, np.diff(out.indptr))
        if log:
            np.log1p(out.data, out=out.data)
    else:
        out = np.array(x, dtype=np.float32)
        out /= per[:, None]
        if log:
            np.log1p(out, out=out)
    adata.X = out
    if log:
        adata.uns["log1p"] = {"base": None}  # as scanpy records it (its HVG reads the base)
    return adata


def hvg(adata: ad.AnnData, n_top: int = 2000, flavor: str = "seurat") -> ad.AnnData:
    """Keep the ``n_top`` highly variable genes (on log-normalised data)."""
    import scanpy as sc

    n_top = int(n_top)
    if n_top >= adata.n_vars:
        note(f"{n_top:,} genes asked for and {adata.n_vars:,} left: all kept")
        return adata
    if adata.n_obs < 2:
        raise ScwbError(f"hvg: {adata.n_obs} cell(s) left; variable genes need at least 2.")
    if not _any_gene_varies(adata.X):
        raise ScwbError("hvg: no gene varies between the cells left: nothing to rank.")
    kind, n_vars = matrix_kind(adata.X), adata.n_vars
    try:
        sc.pp.highly_variable_genes(adata, n_top_genes=n_top, flavor=flavor, subset=True)
    except (IndexError, ValueError) as exc:  # scanpy's binning on degenerate data
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ScwbError(f"hvg could not rank these genes ({first}).") from None
    for line in hvg_cautions(kind, n_vars, adata.n_vars, flavor):  # ties: scanpy keeps more
        note(line)
    return adata


def arcsinh(adata: ad.AnnData, cofactor: float = 5.0) -> ad.AnnData:
    """Cytometry transform ``asinh(x / cofactor)``."""
    if cofactor <= 0:
        raise ScwbError("arcsinh: the cofactor must be positive (5 for CyTOF, 150 for flow).")
    x = adata.X
    adata.X = (
        x.copy().astype(np.float32) if sp.issparse(x) else np.asarray(x, dtype=np.float32).copy()
    )
    if sp.issparse(adata.X):
        adata.X.data = np.arcsinh(adata.X.data / cofactor)
    else:
        adata.X = np.arcsinh(adata.X / cofactor)
    return adata


def scale(adata: ad.AnnData, method: str = "zscore", max_value: float | None = 10.0) -> ad.AnnData:
    """MinMax to [0, 1] per gene, or z-score per gene (clipped at ``max_value``)."""
    x = adata.X
    dense_bytes = adata.n_obs * adata.n_vars * 4
    if method in ("minmax", "zscore"):
        if adata.n_obs < 2:
            raise ScwbError(
                f"scale: scaling each gene needs at least 2 cells (this data has {adata.n_obs})."
            )
        if not _any_gene_varies(x):
            raise ScwbError(
                "scale: no gene varies across these cells, so scaling would leave only zeros."
            )
    if method == "minmax":
        if sp.issparse(x) and x.min() >= 0 and not np.asarray(x.min(axis=0).toarray()).any():
            # every gene's minimum is 0: MinMax is a division and the matrix stays sparse
            mx = np.asarray(x.max(axis=0).toarray()).ravel()
            x = sp.csr_matrix(x, dtype=np.float32) @ sp.diags(
                1.0 / np.where(mx > 0, mx, 1.0)
            ).astype(np.float32)
            adata.X = sp.csr_matrix(x, dtype=np.float32)
            return adata
        from sklearn.preprocessing import MinMaxScaler

        _check_dense(dense_bytes)
        adata.X = np.clip(MinMaxScaler().fit_transform(dense(x)), 0.0, 1.0).astype(np.float32)
        return adata
    if method == "zscore":
        import scanpy as sc

        _check_dense(dense_bytes)
        adata.X = dense(x)
        sc.pp.scale(adata, max_value=None if max_value in (None, 0) else float(max_value))
        adata.X = np.asarray(adata.X, dtype=np.float32)
        return adata
    raise ScwbError(f"scale: unknown method {method!r}; use 'minmax' or 'zscore'.")


def leiden_key(adata: ad.AnnData) -> str:
    """Where the leiden step writes its clusters: ``obs['leiden']``, unless the data holds its
    own there (from the user's pipeline, not an earlier run of this step), which is kept and
    the clusters go to ``leiden_2``, ``leiden_3``, ... (the data's own labels were replaced,
    said only after the run: a browser pass)."""
    for key in ("leiden", *(f"leiden_{i}" for i in range(2, 10_000))):
        if key not in adata.obs:
            return key
        params = adata.uns.get(key)
        params = params.get("params") if isinstance(params, dict) else None
        if isinstance(params, dict) and (
            params.get("by") == "scworkbench"
            # written before the mark: our params (seed, igraph), not scanpy's (random_state)
            or ({"seed", "n_pcs"} <= set(params) and params.get("flavor") == "igraph")
        ):
            return key  # an earlier leiden step's: clustered again in place
    raise ScwbError("leiden: obs has no free leiden_N column left.")


def leiden(
    adata: ad.AnnData,
    resolution: float = 1.0,
    n_neighbors: int = 15,
    n_pcs: int = 50,
    seed: int = 0,
) -> ad.AnnData:
    """Leiden clusters of the cells, in ``obs['leiden']`` (scanpy's recipe: PCA, a kNN graph,
    ``tl.leiden`` with igraph, seeded), so that a dataset without annotations has groups to
    colour by, to compare and to train a classifier on. Run it last, on log-normalised (and
    HVG-selected) values: clusters of raw counts follow sequencing depth. Its PCA is kept in
    ``obsm['X_pca']`` (scanpy's slot) for Explore; a later step of the recipe drops it."""
    import scanpy as sc

    from engine.embedding import knn_transformer

    if adata.n_obs < 3:
        raise ScwbError(f"leiden: clustering needs at least 3 cells (this data has {adata.n_obs}).")
    if not _any_gene_varies(adata.X):  # PCA's solver fails on it
        raise ScwbError("leiden: no gene varies across these cells: nothing to cluster on.")
    if matrix_kind(adata.X) == "counts":
        note("clustered raw counts: normalise first, or clusters follow sequencing depth")
    work = ad.AnnData(X=adata.X)  # the same matrix; the graph stays out of the result
    n_comps = int(min(n_pcs, adata.n_obs - 1, adata.n_vars - 1))
    if n_comps >= 2:
        sc.pp.pca(work, n_comps=n_comps, random_state=seed)
    k = int(min(n_neighbors, adata.n_obs - 1))
    sc.pp.neighbors(
        work,
        n_neighbors=k,
        use_rep="X_pca" if n_comps >= 2 else "X",
        random_state=seed,
        transformer=knn_transformer(adata.n_obs, k, seed),
    )
    sc.tl.leiden(
        work,
        resolution=resolution,
        flavor="igraph",
        n_iterations=2,
        directed=False,
        random_state=seed,
    )
    clusters = work.obs["leiden"]
    key = leiden_key(adata)
    if key != "leiden":
        note(f"kept the data's own obs['leiden']: these clusters are in obs['{key}']")
    elif "leiden" in adata.obs:
        note("replaced the clusters of an earlier leiden step in obs['leiden']")
    adata.obs[key] = clusters.values  # categorical, in scanpy's natural order
    adata.uns[key] = {
        "params": {
            "resolution": float(resolution),
            "n_neighbors": k,
            "n_pcs": n_comps if n_comps >= 2 else 0,  # 0: on X itself (too few genes)
            "seed": int(seed),
            "flavor": "igraph",
            "by": "scworkbench",  # ours: a later leiden step may replace it
        }
    }
    if n_comps >= 2:  # Explore draws it as it is, instead of computing the same PCA again
        earlier = adata.uns.get("pca")
        by_leiden = isinstance(earlier, dict) and (earlier.get("params") or {}).get("by")
        if "X_pca" in adata.obsm and by_leiden != "leiden":
            note("replaced the data's own obsm['X_pca']")
        adata.obsm["X_pca"] = work.obsm["X_pca"]
        adata.uns["pca"] = {
            "variance_ratio": np.asarray(work.uns["pca"]["variance_ratio"]),
            "params": {"n_comps": n_comps, "by": "leiden"},
        }
    note(f"{len(clusters.cat.categories)} clusters in obs['{key}'] (resolution {resolution:g})")
    return adata


# steps that leave the values of the cells and genes they keep as they were: a PCA of them stays
KEEP_X_VALUES = ("leiden", "keep_counts", "subset", "filter_cells")


def _drop_stale_pca(adata: ad.AnnData, step: str) -> None:
    """Leiden's PCA describes X as it was: a later step that changes X makes it stale."""
    pca = adata.uns.get("pca")
    if isinstance(pca, dict) and (pca.get("params") or {}).get("by") == "leiden":
        adata.obsm.pop("X_pca", None)
        del adata.uns["pca"]
        note(f"dropped leiden's obsm['X_pca']: {step} changed the data it was computed on")


def _check_dense(nbytes: int) -> None:
    if nbytes > memory_budget():
        raise ScwbError(
            f"Scaling makes the matrix dense ({nbytes / 2**30:.1f} GB), over the memory budget; "
            "select highly variable genes first."
        )


STEPS: dict[str, Callable[..., ad.AnnData]] = {
    "from_raw": from_raw,
    "subset": subset,
    "filter_cells": filter_cells,
    "filter_genes": filter_genes,
    "keep_counts": keep_counts,
    "normalize": normalize,
    "hvg": hvg,
    "arcsinh": arcsinh,
    "scale": scale,
    "leiden": leiden,
}

STEP_HELP = {
    "from_raw": "start from adata.raw (the values kept before gene selection and scaling)",
    "subset": "keep cells whose obs[key] is one of the values",
    "filter_cells": "drop cells with few genes/counts or a high mitochondrial share",
    "filter_genes": "drop genes seen in fewer than min_cells cells",
    "keep_counts": "copy raw counts to layers['counts'] before normalising",
    "normalize": "library-size normalisation (1e6 = logCPM, 1e4 = CP10k) then log1p",
    "hvg": "keep the n_top highly variable genes",
    "arcsinh": "asinh(x / cofactor), for cytometry",
    "scale": "MinMax to [0,1] or z-score (clipped) per gene",
    "leiden": "Leiden clusters of the cells in obs['leiden'] (PCA, kNN graph), for unannotated data",
}


# ----------------------------------------------------------------------------- recipe
@dataclass
class Step:
    name: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or self.name not in STEPS:
            raise ScwbError(f"Unknown recipe step {self.name!r}; known steps: {', '.join(STEPS)}.")
        if not isinstance(self.params, dict):
            raise ScwbError(f"Step {self.name!r}: its params are a table of option: value.")
        self.params = dict(self.params)  # checked and typed below: never the caller's dict
        import inspect

        signature = inspect.signature(STEPS[self.name]).parameters
        allowed = set(signature) - {"adata"}
        unknown = set(self.params) - allowed
        if unknown:
            raise ScwbError(
                f"Step {self.name!r} has no option {sorted(unknown, key=str)[0]!r}; it takes {', '.join(sorted(allowed)) or 'none'}."
            )
        for key, value in self.params.items():
            optional = "None" in str(signature[key].annotation)  # an option that can be off
            self.params[key] = _checked(self.name, key, value, signature[key].default, optional)


# words a step takes; scanpy's "seurat_v3" flavour needs a package (skmisc) not installed
_CHOICES: dict[tuple[str, str], tuple[str, ...]] = {
    ("hvg", "flavor"): ("seurat", "cell_ranger"),
    ("scale", "method"): ("minmax", "zscore"),
}
# options that take a bounded number: (lowest, whether the lowest itself is allowed, highest)
_BOUNDS: dict[tuple[str, str], tuple[float, bool, float | None]] = {
    ("filter_cells", "min_genes"): (0, True, None),
    ("filter_cells", "min_counts"): (0, True, None),
    ("filter_cells", "max_pct_mito"): (0, True, 100),
    ("filter_genes", "min_cells"): (0, True, None),
    ("normalize", "target_sum"): (1, True, None),  # 1e-320 turned every value into 0
    ("hvg", "n_top"): (1, True, None),
    ("arcsinh", "cofactor"): (0, False, None),
    ("scale", "max_value"): (0, True, None),  # 0: no clip (the CLI's --clip 0)
    ("leiden", "resolution"): (0, False, None),
    ("leiden", "n_neighbors"): (2, True, None),
    ("leiden", "n_pcs"): (1, True, None),
    ("leiden", "seed"): (0, True, None),
}


def _checked(step: str, key: str, value: Any, default: Any, optional: bool = False) -> Any:
    """A recipe option as its step takes it (the type of its default), or one clear line: a
    recipe file is typed by hand, and ``"abc"`` for a gene count ended in a ValueError, ``-1``
    as a target sum in negative "normalised" data."""
    import inspect
    import math

    what = f"{step}: {key}"
    if default is inspect.Parameter.empty:  # subset's column and values
        if key == "key" and not isinstance(value, str):
            raise ScwbError(f"{what} is the name of an obs column, not {value!r}.")
        if key == "values" and (
            not isinstance(value, list)
            or not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in value)
        ):
            raise ScwbError(f"{what} is a list of the column's values, not {value!r}.")
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ScwbError(f"{what} is true or false, not {value!r}.")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ScwbError(f"{what} is a word, not {value!r}.")
        choices = _CHOICES.get((step, key))
        if choices and value not in choices:
            raise ScwbError(f"{what} is one of {', '.join(choices)}, not {value!r}.")
        return value
    if value is None and (optional or default is None):  # an option that can be off (a clip)
        return None
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 2**53:
        raise ScwbError(f"{what} is too large a number ({str(value)[:12]}...).")  # no float has it
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ScwbError(f"{what} must be a finite number, not {value!r}.")
    if abs(value) > 2**53:  # 1e300 genes passed as a whole number, printed with 300 digits
        raise ScwbError(f"{what} is too large a number ({value:.3g}).")
    if isinstance(default, int) and value != int(value):
        raise ScwbError(f"{what} must be a whole number, not {value!r}.")
    value = int(value) if isinstance(default, int) else float(value)
    low, closed, high = _BOUNDS.get((step, key), (-math.inf, True, None))
    if value < low or (value == low and not closed) or (high is not None and value > high):
        above = f"at least {low:g}" if closed else f"above {low:g}"
        span = above + (f" and at most {high:g}" if high is not None else "")
        raise ScwbError(f"{what} must be {span}, not {value!r}.")
    return value


HVG_TOP = 2000  # scanpy's and Seurat's usual number of highly variable genes
PANEL_GENES = 500  # at most this many genes: a targeted panel (CyTOF, Xenium), chosen on purpose


def hvg_cautions(kind: str, n_vars: int, n_top: int, flavor: str = "seurat") -> list[str]:
    """What to know before ranking highly variable genes on ``n_vars`` genes of ``kind``
    values (a browser pass: on an 11-gene MinMax-scaled panel, HVG kept 5 genes and dropped
    every erythroid and megakaryocyte factor; the classifiers fell from 0.98 to 0.84)."""
    out = []
    if kind != "log-normalised" and n_top < n_vars:
        out.append(
            f"genes ranked on {kind} values, where scanpy's {flavor} ranking expects "
            "log-normalised expression (normalise first, or leave this step out)"
        )
    if n_vars <= PANEL_GENES and n_top < n_vars:
        out.append(
            f"{n_vars:,} genes in all, as in a targeted panel whose genes were chosen on "
            f"purpose: keeping {n_top:,} drops {n_vars - n_top:,} of them, markers included "
            "(highly variable genes are for thousands of genes)"
        )
    return out


MAX_RECIPE_BYTES = 1 << 20  # a recipe is a few lines of JSON


def hvg_default(n_vars: int) -> int:
    """How many highly variable genes to offer: 2,000, or on a set of no more genes half of
    them (in hundreds when there are hundreds), so that ticking the step selects something."""
    if n_vars > HVG_TOP:
        return HVG_TOP
    half = n_vars // 2
    return max(1, half // 100 * 100 if half >= 100 else half)


@dataclass
class Recipe:
    steps: list[Step] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"steps": [asdict(s) for s in self.steps]}, indent=2)

    @classmethod
    def from_json(cls, text: str) -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ScwbError(
                f"The recipe is not valid JSON: {exc.msg} (line {exc.lineno})."
            ) from None
        except RecursionError:
            raise ScwbError("The recipe nests too deeply to be a recipe.") from None
        except ValueError as exc:  # e.g. a number of more than 4,300 digits
            raise ScwbError(f"The recipe is not valid JSON: {str(exc).splitlines()[0]}") from None
        if not isinstance(data, dict) or not isinstance(data.get("steps"), list):
            raise ScwbError(
                'A recipe is a JSON object {"steps": [{"name": ..., "params": {...}}, ...]}.'
            )
        steps = []
        for s in data["steps"]:
            if not isinstance(s, dict) or "name" not in s:
                raise ScwbError("Each recipe step needs a 'name'.")
            steps.append(Step(s["name"], s.get("params") or {}))  # Step checks its params
        return cls(steps)

    @classmethod
    def load(cls, path: str | Path) -> Recipe:
        """A recipe file: a regular file (a pipe blocked forever) of at most ``MAX_RECIPE_BYTES``
        (``--recipe /dev/zero`` grew until memory ran out)."""
        try:
            p = Path(path)
            if not p.exists():
                raise ScwbError(f"The recipe {path} does not exist.")
            if not p.is_file():
                raise ScwbError(f"The recipe {path} is not a file (a JSON recipe).")
            with open(p, "rb") as fh:  # at most one byte past the limit, however it grows
                raw = fh.read(MAX_RECIPE_BYTES + 1)
            if len(raw) > MAX_RECIPE_BYTES:
                raise ScwbError(
                    f"The recipe {path} is over {MAX_RECIPE_BYTES // 2**20} MB; a recipe is a few "
                    "lines of JSON."
                )
            return cls.from_json(raw.decode("utf-8"))
        except OSError as exc:
            raise ScwbError(f"The recipe {path} could not be read: {exc.strerror}.") from None
        except UnicodeDecodeError:
            raise ScwbError(f"The recipe {path} is not UTF-8 text (JSON).") from None

    @classmethod
    def suggest(cls, description: dict[str, Any], n_top: int = HVG_TOP) -> Recipe:
        """Defaults from what ``describe`` found: counts get log-normalised + HVG; scaled data
        starts from ``adata.raw`` when it keeps the values, else nothing; data without any obs
        column to use as labels gets Leiden clusters. The target follows the depth: CP10k for
        droplet data (median below ``DROPLET_DEPTH`` counts per cell), logCPM for deeper
        (plate-based) data."""
        kind = description.get("x_kind", "")
        raw = description.get("raw") or {}
        if kind.startswith("scaled") and raw.get("kind") in ("counts", "log-normalised"):
            # X scaled by a pipeline that kept its values in adata.raw: start from those
            after = {**description, "x_kind": raw["kind"], "n_vars": raw.get("n_vars", 0)}
            after.pop("raw")
            return cls([Step("from_raw"), *cls.suggest(after, n_top).steps])
        steps: list[Step] = []
        if kind == "counts":
            # scanpy's usual 10 genes a cell and 3 cells a gene, never a filter that leaves
            # nothing: 8 genes in all made every cell fall below 10 (a tenth of the genes or cells)
            n_vars, n_obs = int(description.get("n_vars") or 0), int(description.get("n_obs") or 0)
            steps = [
                Step("filter_cells", {"min_genes": min(10, max(1, n_vars // 10))}),
                Step("filter_genes", {"min_cells": min(3, max(1, n_obs // 10))}),
                Step("keep_counts"),
                Step("normalize", {"target_sum": target_sum(description), "log": True}),
            ]
            if description.get("n_vars", 0) > n_top:
                steps.append(Step("hvg", {"n_top": n_top}))
        elif kind == "raw intensities":  # cytometry, as scQUEST: arcsinh then MinMax
            steps = [Step("arcsinh", {"cofactor": 5.0}), Step("scale", {"method": "minmax"})]
        elif kind == "arcsinh-transformed":  # already asinh(x / cofactor): MinMax, as scQUEST
            steps = [Step("scale", {"method": "minmax"})]
        elif kind == "normalised (not log)":
            steps = [Step("normalize", {"target_sum": 1e6, "log": True})]
        if _unannotated(description):  # groups to colour by, compare and classify
            steps.append(Step("leiden", {"resolution": 1.0}))
        return cls(steps)


def _unannotated(description: dict[str, Any]) -> bool:
    """No obs column could serve as labels (none, or only ids and per-cell measurements)."""
    from engine import defaults

    return int(description.get("n_obs") or 0) >= 3 and not defaults.label_columns(description)


DROPLET_DEPTH = 20_000  # counts per cell: droplet (UMI) data lie below, plate-based above


def target_sum(description: dict[str, Any]) -> float:
    """The normalisation target for counts of this depth: 1e4 (CP10k) below ``DROPLET_DEPTH``
    counts per cell, where 1e6 would stretch one count to log1p(1e6 / depth), about 8.9 at 137
    counts per cell, and leave a gap between zero and everything else; 1e6 (logCPM) above, or
    when the depth is not known."""
    depth = description.get("median_counts")
    return 1e4 if isinstance(depth, int | float) and 0 < depth < DROPLET_DEPTH else 1e6


def apply(
    adata: ad.AnnData,
    recipe: Recipe,
    on_step: Callable[[dict], None] | None = None,
    copy: bool = True,
) -> tuple[ad.AnnData, list[dict]]:
    """Run ``recipe`` on a copy of ``adata`` (on ``adata`` itself when not ``copy``: a caller
    that drops its input saves a copy); return it and one report row per step. Refused before
    any work when its memory estimate (``engine.pp_memory``) exceeds the budget."""
    if recipe.steps and adata.X is None:
        layers = ", ".join(adata.layers) or "none"
        raise ScwbError(
            f"X is empty (the data are in layers: {layers}); preprocessing works on X: "
            "save the data with the matrix to preprocess as X."
        )
    if recipe.steps and 0 in adata.shape:  # else a step was blamed for removing them all
        raise ScwbError(
            f"The data hold {adata.n_obs:,} cells x {adata.n_vars:,} genes: nothing to preprocess."
        )
    pp_memory.check(adata, recipe, copy)
    if recipe.steps:  # NaN or infinity spread through every step and came out as a dataset
        check_finite(adata.X, "X")
    history = recipe_steps(adata.uns.get("recipe"))
    out = canonical(adata.copy() if copy else adata)
    report = [{"step": "input", "n_obs": out.n_obs, "n_vars": out.n_vars, "seconds": 0.0}]
    for step in recipe.steps:
        t0 = time.perf_counter()
        said: list[str] = []
        token = _NOTES.set(said)
        try:
            if step.name not in KEEP_X_VALUES:
                _drop_stale_pca(out, step.name)
            with np.errstate(all="ignore"):  # overflow is checked below, as one line
                out = STEPS[step.name](out, **step.params)
        except ScwbError:
            raise
        except (TypeError, ValueError, AttributeError, KeyError, IndexError) as exc:
            raise ScwbError(
                f"Step {step.name!r} failed: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        finally:
            _NOTES.reset(token)
        try:
            check_finite(out.X, "X")
        except ScwbError:
            raise ScwbError(
                f"Step {step.name!r} produced NaN or infinite values (values too large for its "
                "arithmetic?); check the input's range."
            ) from None
        row = {
            "step": step.name,
            "n_obs": out.n_obs,
            "n_vars": out.n_vars,
            "seconds": round(time.perf_counter() - t0, 3),
        }
        if said:
            row["note"] = "; ".join(said)
        report.append(row)
        if on_step:
            on_step(row)
        if out.n_obs == 0 or out.n_vars == 0:
            raise ScwbError(
                f"After step {step.name!r} no {'cells' if out.n_obs == 0 else 'genes'} are left; loosen its thresholds."
            )
    check_not_empty(out)
    out.uns["recipe"] = json.dumps({"steps": history + [asdict(s) for s in recipe.steps]})
    return out, report


def recipe_steps(value: Any) -> list[dict[str, Any]]:
    """The steps recorded in ``uns['recipe']``, whatever a file put there: never raises.

    This package stores a JSON string ``{"steps": [{"name", "params"}, ...]}``; files from
    elsewhere may hold plain text, a list, a dict, a number or an array. Each step comes back as
    ``{"name": str, "params": dict}``; text that is not a recipe becomes one step named after it.
    """
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        value = value.tolist()  # numpy scalars and arrays (h5py gives strings as 0-d arrays)
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
            return [{"name": value.strip()[:200], "params": {}}]
    if isinstance(value, dict):
        if "steps" in value:
            value = value["steps"]
        elif "name" in value:
            value = [value]
        else:  # {step name: params}
            value = [{"name": k, "params": v} for k, v in value.items()]
    if not isinstance(value, (list, tuple)):
        return [{"name": str(value)[:200], "params": {}}]
    steps = []
    for s in value:
        if isinstance(s, dict):
            params = s.get("params")
            steps.append(
                {
                    "name": str(s.get("name", "?"))[:200],
                    "params": dict(params) if isinstance(params, dict) else {},
                }
            )
        else:
            steps.append({"name": str(s)[:200], "params": {}})
    return steps
