"""scGen perturbation prediction: hold a cell type's stimulated cells out, train, predict them,
and measure the prediction against the real cells and against two simple baselines.

``baseline_noshift``: the target's control cells unchanged. ``baseline_meanshift``: the target's
control cells plus the mean stimulated-minus-control shift of the training cell types, in gene
space. Both are computed in the same run on the same cells as the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from engine import evaluate, io, models, runs
from engine.data import DeviceMatrix, make_split
from engine.errors import ScwbError
from engine.models.scgen import latent_delta
from engine.spec import RunSpec

MIN_CELLS = 5


def check_design(adata: ad.AnnData, spec: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """Validate the condition/cell-type choice; return the two columns as strings."""
    for key in (spec.condition_key, spec.cell_type_key):
        if key not in adata.obs:
            raise ScwbError(
                f"obs has no column {key!r}; choose one of: {', '.join(map(str, adata.obs.columns))}."
            )
    cond = adata.obs[spec.condition_key].astype(str).to_numpy()
    types = adata.obs[spec.cell_type_key].astype(str).to_numpy()
    for value, what in ((spec.ctrl, "control"), (spec.stim, "stimulated")):
        if value not in set(cond):
            raise ScwbError(
                f"The condition column {spec.condition_key!r} has no {what} value {value!r}; it holds {', '.join(sorted(set(cond)))}."
            )
    if spec.ctrl == spec.stim:
        raise ScwbError("The control and stimulated values must differ.")
    if spec.predict != "all":
        if spec.predict not in set(types):
            raise ScwbError(
                f"The cell-type column {spec.cell_type_key!r} has no value {spec.predict!r}."
            )
        if not ((types == spec.predict) & (cond == spec.ctrl)).any():
            raise ScwbError(f"The cell type {spec.predict!r} has no control cells to predict from.")
    return cond, types


def targets_with_enough_cells(
    cond: np.ndarray, types: np.ndarray, ctrl: str, stim: str
) -> list[str]:
    return [
        t
        for t in sorted(set(types))
        if ((types == t) & (cond == ctrl)).sum() >= MIN_CELLS
        and ((types == t) & (cond == stim)).sum() >= MIN_CELLS
    ]


def run_perturbation(
    spec: RunSpec, info: models.ModelInfo, adata: ad.AnnData, run_dir: Path, dev: str
):
    from engine.train import input_matrix

    cond, types = check_design(adata, spec)
    x, layer = input_matrix(adata, spec.layer)
    io.check_finite(x, layer)
    kind = io.matrix_kind(x)
    if kind == "counts":
        raise ScwbError(
            "scGen models log-normalised expression, and this matrix holds raw counts: run logCPM (Preprocess > normalize) first."
        )
    keep = np.isin(cond, [spec.ctrl, spec.stim])
    if spec.predict == "all":
        targets = targets_with_enough_cells(cond, types, spec.ctrl, spec.stim)
        if not targets:
            raise ScwbError(
                f"No cell type has at least {MIN_CELLS} control and {MIN_CELLS} stimulated cells."
            )
    else:
        targets = [spec.predict]
    rows, predicted, all_metrics, cancelled = [], [], {}, False
    epoch_rows: list[dict] = []
    latent_all = None
    for i, target in enumerate(targets):
        sub_dir = run_dir if len(targets) == 1 else run_dir / "loo" / io_safe(target)
        sub_dir.mkdir(parents=True, exist_ok=True)
        result = _one_target(
            spec,
            info,
            adata,
            x,
            cond,
            types,
            keep,
            target,
            sub_dir,
            run_dir,
            dev,
            i,
            len(targets),
            epoch_rows,
        )
        predicted.append(result["predicted"])
        if latent_all is None:
            latent_all = result["latent"]
        all_metrics = result["metrics"] if len(targets) == 1 else all_metrics
        rows.append(
            {
                "cell_type": target,
                "n_ctrl": result["n_ctrl"],
                "n_stim": result["n_stim"],
                "epochs": result["epochs"],
                **result["metrics"],
            }
        )
        cancelled = cancelled or result["cancelled"]
        if cancelled:
            break
    table = pd.DataFrame(rows)
    if len(targets) > 1:
        table.to_csv(run_dir / "loo.csv", index=False)
        num = table.select_dtypes("number").drop(
            columns=["n_ctrl", "n_stim", "epochs"], errors="ignore"
        )
        all_metrics = {k: float(v) for k, v in num.mean().items()}
        all_metrics["cell_types"] = list(table["cell_type"])
    out = adata.copy()
    out.obsm["X_scgen"] = latent_all
    pred = ad.concat(predicted, join="outer") if len(predicted) > 1 else predicted[0]
    merged = ad.concat([out, pred], join="outer", merge="first", uns_merge="first")
    merged.obs[spec.condition_key] = pd.Categorical(merged.obs[spec.condition_key].astype(str))
    merged.uns["scgen"] = {
        "targets": targets,
        "condition_key": spec.condition_key,
        "cell_type_key": spec.cell_type_key,
        "ctrl": spec.ctrl,
        "stim": spec.stim,
        "table": table.to_json(orient="records"),
    }
    return all_metrics, merged, cancelled


def io_safe(name: str) -> str:
    from engine.workspace import safe_name

    return safe_name(name)


def _one_target(
    spec, info, adata, x, cond, types, keep, target, sub_dir, run_dir, dev, i, n_targets, epoch_rows
) -> dict[str, Any]:
    from engine.train import fit, infer, save_model

    held_out = (types == target) & (cond == spec.stim)
    train_mask = keep & ~held_out
    train_idx = np.flatnonzero(train_mask)
    inner = make_split(len(train_idx), spec.seed, val=0.1, test=0.0)
    split = {
        "train": train_idx[inner["train"]],
        "val": train_idx[inner["val"]],
        "test": np.flatnonzero(held_out),
    }
    np.savez(sub_dir / "split.npz", **split)
    xm = DeviceMatrix(x, dev)
    torch.manual_seed(spec.seed)
    net = models.build(info, adata.n_vars, spec.params)
    extra = {"cell_type": target} if n_targets > 1 else {}
    module, progress = fit(
        net,
        spec,
        run_dir,
        dev,
        {"x": xm},
        split,
        epoch_offset=i * spec.epochs,
        total_epochs=n_targets * spec.epochs,
        rows=epoch_rows,
        extra=extra,
    )

    def encode(arr: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module.encode(torch.as_tensor(arr, device=xm.device)).cpu().numpy()

    dense = io.dense(x)
    delta_types = [t for t in str(spec.params.get("delta_cell_types") or "").split(",") if t]
    basis = train_mask & (np.isin(types, delta_types) if delta_types else True)
    is_ctrl, is_stim = basis & (cond == spec.ctrl), basis & (cond == spec.stim)
    if not is_ctrl.any() or not is_stim.any():
        raise ScwbError(
            "The stimulation vector needs training cells of both conditions; widen the delta cell types."
        )
    delta = latent_delta(
        encode, dense[is_ctrl], types[is_ctrl], dense[is_stim], types[is_stim], spec.seed
    )
    target_ctrl = np.flatnonzero((types == target) & (cond == spec.ctrl))
    with torch.no_grad():
        z = torch.as_tensor(encode(dense[target_ctrl]) + delta, device=xm.device)
        pred_x = module.decode(z).cpu().numpy()
    latent = infer(module.encode, xm)
    pred = ad.AnnData(X=pred_x.astype(np.float32), var=pd.DataFrame(index=adata.var_names))
    pred.obs = pd.DataFrame(
        {spec.condition_key: "predicted", spec.cell_type_key: target},
        index=[f"{n}-pred" for n in adata.obs_names[target_ctrl]],
    )
    metrics: dict[str, Any] = {}
    real = np.flatnonzero(held_out)
    if len(real) >= 2:
        degs = evaluate.top_degs(dense[target_ctrl], dense[real], adata.var_names, n=100)
        ctrl_x, real_x = dense[target_ctrl], dense[real]
        shift = _mean_shift(dense, cond, types, train_mask, spec)
        metrics.update(evaluate.perturbation(pred_x, real_x, ctrl_x, adata.var_names, degs))
        metrics.update(
            evaluate.perturbation(
                ctrl_x, real_x, ctrl_x, adata.var_names, degs, prefix="baseline_noshift_"
            )
        )
        metrics.update(
            evaluate.perturbation(
                ctrl_x + shift, real_x, ctrl_x, adata.var_names, degs, prefix="baseline_meanshift_"
            )
        )
        metrics["beats_noshift"] = bool(
            metrics["r2_mean_all"] > metrics["baseline_noshift_r2_mean_all"]
        )
        metrics["beats_meanshift"] = bool(
            metrics["r2_mean_all"] > metrics["baseline_meanshift_r2_mean_all"]
        )
        pred.uns["top_degs"] = degs
        runs.write_json(sub_dir / "top_degs.json", degs)
    save_model(
        sub_dir,
        module,
        spec,
        adata,
        spec.layer or "X",
        delta=delta.tolist(),
        target=target,
        condition_key=spec.condition_key,
        cell_type_key=spec.cell_type_key,
        ctrl=spec.ctrl,
        stim=spec.stim,
    )
    if sub_dir != run_dir:
        runs.write_json(sub_dir / "metrics.json", metrics)
    epochs_done = sum(
        1
        for r in epoch_rows
        if r.get("cell_type", target) == target and r["epoch"] > i * spec.epochs
    )
    return {
        "predicted": pred,
        "metrics": metrics,
        "latent": latent,
        "n_ctrl": len(target_ctrl),
        "n_stim": len(real),
        "cancelled": progress.cancelled,
        "epochs": epochs_done,
    }


def _mean_shift(
    dense: np.ndarray, cond: np.ndarray, types: np.ndarray, train_mask: np.ndarray, spec: RunSpec
) -> np.ndarray:
    """Mean over training cell types of (mean stimulated - mean control), in gene space."""
    shifts = []
    for t in sorted(set(types[train_mask])):
        c = train_mask & (types == t) & (cond == spec.ctrl)
        s = train_mask & (types == t) & (cond == spec.stim)
        if c.any() and s.any():
            shifts.append(dense[s].mean(0) - dense[c].mean(0))
    return np.mean(shifts, axis=0) if shifts else np.zeros(dense.shape[1], dtype=np.float32)


def gene_means(
    results: ad.AnnData, condition_key: str, cell_type_key: str, ctrl: str, stim: str, target: str
) -> pd.DataFrame:
    """Per-gene means of the target's control, predicted and real stimulated cells, and the
    mean-shift baseline (control + mean shift of the other cell types), from a results AnnData."""
    cond = results.obs[condition_key].astype(str).to_numpy()
    types = results.obs[cell_type_key].astype(str).to_numpy()
    x = results.X

    def mean(mask: np.ndarray) -> np.ndarray:
        return (
            np.asarray(x[mask].mean(0)).ravel() if mask.any() else np.full(results.n_vars, np.nan)
        )

    is_t = types == target
    shifts = [
        mean((types == t) & (cond == stim)) - mean((types == t) & (cond == ctrl))
        for t in sorted(set(types[~is_t]))
        if ((types == t) & (cond == stim)).any() and ((types == t) & (cond == ctrl)).any()
    ]
    ctrl_mean = mean(is_t & (cond == ctrl))
    return pd.DataFrame(
        {
            "control": ctrl_mean,
            "predicted": mean(is_t & (cond == "predicted")),
            "real": mean(is_t & (cond == stim)),
            "meanshift": ctrl_mean + (np.mean(shifts, 0) if shifts else 0),
        },
        index=results.var_names.astype(str),
    )
