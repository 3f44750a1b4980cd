"""How much memory a preprocessing recipe takes, said before it starts.

``estimate`` walks the recipe over the input's shape and sparsity (no data touched) and returns
the bytes of the dataset it makes and of its peak: the caller's input, the working copy
``preprocess.apply`` makes, the layers steps add and the largest temporary a step allocates
(measured with tracemalloc on 100k cells: filters and the ``seurat`` HVG flavour allocate two
copies of X, ``normalize_total`` one; scaling densifies).
Filters are counted as keeping every cell and gene, so the figure is an upper bound there.

``check`` refuses a recipe whose result would exceed the memory budget (the budget is what one
dataset may take, all its matrices together) or whose peak would exceed three budgets (the
working allowance a reader child gets, ``engine.reader.child_memory_limit``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp

from engine.checks import human, memory_budget
from engine.errors import ScwbError

PEAK_BUDGETS = 3


@dataclass
class Footprint:
    input_bytes: int
    result_bytes: int
    peak_bytes: int
    peak_step: str
    dense_step: str = ""  # the step that makes X dense, if any

    def line(self) -> str:
        return (
            f"about {human(self.peak_bytes)} at its peak ({self.peak_step}); the result takes "
            f"{human(self.result_bytes)}"
        )


class _State:
    def __init__(self, n: int, g: int, nnz: int, item: int, sparse: bool):
        self.n, self.g, self.nnz, self.item, self.sparse = n, g, nnz, item, sparse

    def x(self) -> int:
        if not self.sparse:
            return self.n * self.g * self.item
        idx = 8 if self.nnz >= 2**31 else 4
        return self.nnz * (self.item + idx) + (self.n + 1) * idx


@dataclass(frozen=True)
class Layout:
    """What the estimate needs of a dataset: X's shape, stored entries and value size, and the
    bytes of its other matrices (layers, obsm). ``engine.summary.layout`` reads it from a file."""

    n_obs: int
    n_vars: int
    nnz: int
    itemsize: int
    sparse: bool
    other_bytes: int = 0


def layout(adata: Any) -> Layout:
    """The layout of an AnnData in memory."""
    x = adata.X
    sparse = sp.issparse(x)
    other = 0
    for group in (adata.layers, adata.obsm):
        for v in group.values():
            other += (
                int(v.data.nbytes + v.indices.nbytes + v.indptr.nbytes)
                if sp.issparse(v)
                else int(np.asarray(v).nbytes)
            )
    return Layout(
        adata.n_obs,
        adata.n_vars,
        int(x.nnz) if sparse else adata.n_obs * adata.n_vars,
        int(np.dtype(x.dtype).itemsize) if x is not None else 4,
        sparse,
        other,
    )


def estimate(data: Any, recipe: Any, copy: bool = True) -> Footprint:
    """Bytes of the input, the result and the peak of ``preprocess.apply(data, recipe)``;
    ``data`` is an AnnData or a ``Layout``; ``copy=False``: apply works on the input itself."""
    lay = data if isinstance(data, Layout) else layout(data)
    s = _State(lay.n_obs, lay.n_vars, lay.nnz, max(lay.itemsize, 4), lay.sparse)
    other = lay.other_bytes
    lay_bytes = s.x() + other
    held = s.x() + other if copy else 0  # the caller's input stays alive during apply
    work = s.x() + other  # apply's copy
    peak, peak_step, dense_step = held + work, "the working copy" if copy else "the input", ""
    for step in recipe.steps:
        p, before, work_before = step.params, s.x(), work
        temp = 0
        if step.name in ("subset", "filter_cells", "filter_genes"):
            temp = 2 * before  # measured: the kept rows or columns are copied, and once more
        elif step.name == "keep_counts":
            work += before
        elif step.name in ("normalize", "arcsinh"):
            temp = before
            s.item = 4  # both write float32, whatever the input's width
        elif step.name == "hvg":
            temp = 2 * before  # measured: expm1 of a copy of X, and its square for the variance
            n_top = int(p.get("n_top", 2000))
            if n_top < s.g:
                s.nnz = int(s.nnz * n_top / s.g) if s.sparse else s.n * n_top
                s.g = n_top
        elif step.name == "scale":
            method = p.get("method", "zscore")
            if method == "minmax" and s.sparse:
                temp = 2 * before  # float32 copy and the product
            else:
                s.sparse, s.item, s.nnz = False, 4, s.n * s.g
                dense_step = dense_step or f"{method} scaling makes X dense"
                temp = s.x() + (before if method == "zscore" else s.x()) - before
        elif step.name == "from_raw":
            temp = before  # raw's matrix copied into a new AnnData (assumed X's size)
        elif step.name == "leiden":
            # PCA centres a copy of X; the scores, the kNN graph and its weights are per cell
            n_pcs = min(int(p.get("n_pcs", 50)), s.g)
            temp = before + s.n * (8 * n_pcs + 40 * int(p.get("n_neighbors", 15)))
        work += s.x() - before
        # the temporaries live while the step's input (before) or output (after) does
        now = held + max(work, work_before) + temp
        if now > peak:
            peak, peak_step = now, step.name
    return Footprint(lay_bytes, work, peak, peak_step, dense_step)


def fits(fp: Footprint) -> bool:
    budget = memory_budget()
    return fp.result_bytes <= budget and fp.peak_bytes <= PEAK_BUDGETS * budget


def check(data: Any, recipe: Any, copy: bool = True) -> Footprint:
    """The footprint, or a one-line ``ScwbError`` when the recipe does not fit the budget."""
    fp = estimate(data, recipe, copy)
    budget = memory_budget()
    if not fits(fp):
        why = fp.dense_step or f"peak at {fp.peak_step}"
        raise ScwbError(
            f"This recipe needs {human(fp.peak_bytes)} at its peak and makes a dataset of "
            f"{human(fp.result_bytes)} ({why}), over the memory budget ({human(budget)}); "
            "select highly variable genes first, use MinMax instead of z-score, or raise "
            "SCWB_MEMORY_BUDGET_GB."
        )
    return fp
