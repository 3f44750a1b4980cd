"""What to say about a run's progress, in whole epochs: one wording for the Runs page and
``python -m engine runs`` (the command line printed 'epoch 3.31/100', and 'epoch 1/1' for a
baseline the page called 'fitted in one step')."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from engine import models, runs


def number(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def curve_facts(run_dir: str | Path) -> dict[str, Any]:
    """The best epoch (lowest validation loss) and, for leave-one-out, the models trained."""
    out: dict[str, Any] = {}
    curve = runs.read_metrics_csv(Path(run_dir))
    if "val_loss" in curve and "epoch" in curve and curve["val_loss"].notna().any():
        if "cell_type" in curve:  # leave-one-out: several models, one curve each
            out["loo"] = int(curve["cell_type"].nunique())
        else:
            out["best_epoch"] = best_epoch(curve)
    return out


def best_epoch(curve: Any, optimizer: Any = None) -> int | None:
    """The epoch of the lowest validation loss, whose weights a run keeps; None where there is
    none to mark: one model's curve only (not leave-one-out's several), and not a full-batch
    L-BFGS fit, which keeps its last weights (the optimum)."""
    if optimizer == "lbfgs" or "cell_type" in curve or "epoch" not in curve:
        return None
    if "val_loss" not in curve or len(curve) < 2:
        return None
    val = curve["val_loss"]
    if not val.notna().any():
        return None
    return int(curve.loc[val.idxmin(), "epoch"])


def progress(r: dict[str, Any], facts: dict[str, Any] | None = None) -> tuple[float, str]:
    """The bar's fill and what to say about a run's progress (a row of ``jobs.list_jobs``);
    ``facts``: its ``curve_facts``, read here when not given."""
    state = r.get("state") or "failed"
    info = models.REGISTRY.get(str(r.get("model", "")))
    if info is not None and info.kind == "sklearn":
        said = {"completed": "fitted in one step", "queued": "queued", "running": "fitting"}
        return (1.0 if state == "completed" else 0.0), said.get(state, state)
    raw = number(r.get("epoch")) or 0.0
    epoch, top = int(raw), int(number(r.get("max_epochs")) or 0)
    frac = min(1.0, raw / top) if top else 0.0
    if state == "queued":
        return 0.0, "queued"
    if state == "running":
        return frac, f"epoch {epoch} of {top or '?'}"
    if facts is None:
        try:
            facts = curve_facts(r["path"])
        except (OSError, ValueError, KeyError, TypeError):
            facts = {}
    if state == "completed":
        if facts.get("loo"):
            return 1.0, f"leave-one-out: {facts['loo']} models trained"
        if r.get("optimizer") == "lbfgs":  # full batch to the optimum: the last weights kept
            if top and epoch < top:
                return 1.0, f"converged at epoch {epoch} of {top}"
            return 1.0, f"{epoch} of {top} epochs"
        best = f" (best epoch {facts['best_epoch']})" if facts.get("best_epoch") else ""
        if top and epoch < top:
            return 1.0, f"stopped early at epoch {epoch} of {top}{best}"
        return 1.0, f"{epoch} of {top} epochs{best}"
    return frac, f"{state} at epoch {epoch} of {top or '?'}"


def shortened(spec: dict[str, Any], status: dict[str, Any]) -> tuple[int, int] | None:
    """(epochs it ran to, the model's published epochs) for a completed run that trained to an
    epoch cap below its published default (the Train page's CPU time budget sets one), else
    None: a run that stopped early or converged before its cap was not cut short by it."""
    info = models.REGISTRY.get(str(spec.get("model")))
    planned = spec.get("epochs")
    if info is None or info.kind != "torch" or status.get("state") != "completed":
        return None
    if not isinstance(planned, int) or isinstance(planned, bool) or planned >= info.epochs:
        return None
    if ended_early(status) or status.get("optimizer") == "lbfgs":
        return None
    epoch, top = number(status.get("epoch")), number(status.get("max_epochs"))
    if epoch is None or not top or epoch < top:
        return None
    return planned, info.epochs


def ended_early(status: dict[str, Any]) -> bool:
    """Whether early stopping ended a run before its epoch cap; runs saved before 2026-11-28
    flagged a stop at the last epoch too, which ended nothing early."""
    epoch, top = number(status.get("epoch")), number(status.get("max_epochs"))
    if status.get("optimizer") == "lbfgs":  # converged at its last epoch: it did converge
        return bool(status.get("stopped_early"))
    return bool(status.get("stopped_early")) and not (epoch and top and epoch >= top)


def unstable_note(spec: dict[str, Any], metrics: dict[str, Any], curve: Any) -> str | None:
    """'The training was unstable: ...' for a run whose loss blew up (``evaluate.unstable``),
    with what to change; None otherwise. One wording for Results and ``python -m engine train``
    (a run at a learning rate too high still left metrics, from its best epoch, and nothing
    said they were the step size's)."""
    import pandas as pd

    from engine import evaluate

    info = models.REGISTRY.get(str(spec.get("model")))
    if info is None or info.kind != "torch" or curve is None or "train_loss" not in curve:
        return None
    classes = metrics.get("classes")
    n = len(classes) if info.task == "classify" and isinstance(classes, list) else None
    # a classifier's cross-entropy alone: its loss holds the L2 penalty, large at the first
    # step of a strongly regularised L-BFGS fit (a review: C=1e-5 read as 'unstable')
    column = "train_cross_entropy" if n and "train_cross_entropy" in curve else "train_loss"
    why = None
    # leave-one-out: one model per cell type, each curve from its own start (a review: every
    # such scGen read as a jump from the last type's low to the next one's first epoch)
    parts = (
        list(curve.groupby("cell_type", sort=False)) if "cell_type" in curve else [(None, curve)]
    )
    for name, part in parts:
        why = evaluate.unstable(pd.to_numeric(part[column], errors="coerce").to_numpy(), n)
        if why is not None:
            why = why if name is None else f"{why} (the model for {name})"
            break
    if why is None:
        return None
    lr = number(spec.get("lr"))
    if spec.get("optimizer") == "lbfgs" or metrics.get("optimizer") == "lbfgs":
        advice = "Check its inputs' scaling, or its regularisation (C)."
    elif lr is not None and lr > info.lr:
        advice = (
            f"Its learning rate ({lr:g}) is likely too high: train it again with a lower one "
            f"(the default is {info.lr:g})."
        )
    else:
        advice = "Train it again with a lower learning rate."
    return (
        f"The training was unstable: {why}. Its metrics come from its best epoch but reflect "
        f"the step size more than the model. {advice}"
    )
