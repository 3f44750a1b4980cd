"""Every check that can refuse a run before a worker starts, torch-free so the app process can
validate a form at once (it never imports torch or Lightning).

The checks read the registry (``ModelInfo.needs`` through ``InputSetup.register``): a model that
needs counts refuses normalised data, scGen refuses raw counts, and so on, in one place.
"""

from __future__ import annotations

from typing import Any

import anndata as ad

from engine import io, models
from engine.errors import ScwbError
from engine.setup import InputSetup
from engine.split import split_for, train_on_mask

ADAM_COPIES = 4  # weights, gradients and Adam's two moments, float32 each


def preflight(spec: Any, adata: ad.AnnData) -> None:
    """Raise ``ScwbError`` with one line for anything that would make ``spec`` fail on
    ``adata``; return quietly otherwise."""
    info = spec.info
    setup = InputSetup.register(adata, spec, label_classes=info.task == "classify")
    check_size(info, spec.params, adata.n_vars, len(setup.classes))
    if info.task == "perturb":
        from engine.perturb import check_design

        check_design(adata, spec)
        return
    keep = train_on_mask(adata.obs, spec.train_on)
    strat = adata.obs[spec.label_key].astype(str).to_numpy() if spec.label_key else None
    split = split_for(adata.obs, spec, strat)
    if info.task == "classify" and strat is not None and keep is not None:
        seen = sorted(set(strat[split["train"]]))
        if len(seen) < 2:  # the one-class check of the whole column, on the cells trained on
            raise ScwbError(
                f"--train-on leaves one class of {spec.label_key!r} to train on "
                f"({seen[0]}); a classifier needs at least 2."  # restrict keeps >= 2 cells
            )


def check_size(
    info: models.ModelInfo, params: dict, n_in: int, n_out: int = 0, training: bool = True
) -> None:
    """Refuse a network whose parameters (to train: with gradients and optimiser state; to
    apply: the weights alone) would not fit the memory budget."""
    n = models.n_parameters(info, params, n_in, n_out)
    need = n * 4 * (ADAM_COPIES if training else 1)
    budget = io.memory_budget()
    if need > budget:
        if not training:
            raise ScwbError(
                f"The saved {info.name} names {n:,} parameters ({need / 2**30:.1f} GB of weights), "
                f"over the memory budget ({budget / 2**30:.1f} GB, SCWB_MEMORY_BUDGET_GB)."
            )
        raise ScwbError(
            f"{info.name} with these settings has {n:,} parameters ({need / 2**30:.1f} GB to train), "
            f"over the memory budget ({budget / 2**30:.1f} GB): choose smaller layers."
        )
