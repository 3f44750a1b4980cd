"""Using a saved model on new data: load it (weights only, never a pickle), align genes, predict.

A model refuses data whose genes differ from its own unless ``align=True``: then genes are put in
the model's order, missing ones filled with zeros and reported, and extra ones dropped.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import torch

from engine import io, models, runs
from engine.errors import ScwbError


def load(run_dir: str | Path) -> tuple[models.ModelInfo, Any, dict[str, Any]]:
    """The network (or baseline) of a finished run, with its metadata."""
    run_dir = Path(run_dir)
    meta = runs.read_json(run_dir / "model.json")
    if not meta or not (run_dir / "model.pt").exists():
        raise ScwbError(
            f"{run_dir} holds no saved model (model.pt + model.json); did the run finish?"
        )
    info = models.get(meta["model"])
    try:
        state = torch.load(run_dir / "model.pt", map_location="cpu", weights_only=True)
    except Exception as exc:  # a pickle that needs code to load, or a damaged file: refused
        raise ScwbError(
            f"{run_dir / 'model.pt'} is not a plain weights file and is not loaded ({type(exc).__name__})."
        ) from None
    if info.kind == "sklearn":
        from engine.models.baselines import PCABaseline, SkLogReg

        module = SkLogReg() if info.task == "classify" else PCABaseline()
        module.load_state_dict(state)
    else:
        module = models.build(
            info,
            meta["n_in"],
            meta["params"],
            n_classes=len(meta.get("classes") or []),
            n_batch=len(meta.get("batch_categories") or []),
            sigmoid_output=meta.get("sigmoid_output", False),
        )
        module.load_state_dict(state)
        module.eval()
    return info, module, meta


def align_genes(
    adata: ad.AnnData, genes: list[str], align: bool = False
) -> tuple[ad.AnnData, list[str]]:
    """``adata`` with exactly ``genes`` as columns, in order; return it and the missing genes."""
    have = pd.Index(adata.var_names.astype(str))
    missing = [g for g in genes if g not in have]
    if not missing and list(have) == list(genes):
        return adata, []
    if missing and not align:
        raise ScwbError(
            f"The data lacks {len(missing)} of the model's {len(genes)} genes (e.g. {', '.join(missing[:3])}); "
            "use the same preprocessing, or pass --align to fill them with zeros."
        )
    if len(missing) == len(genes):
        raise ScwbError("The data shares no gene with the model.")
    present = [g for g in genes if g in have]
    sub = adata[:, present]
    x = io.dense(sub.X)
    full = np.zeros((adata.n_obs, len(genes)), dtype=np.float32)
    pos = {g: i for i, g in enumerate(genes)}
    full[:, [pos[g] for g in present]] = x
    out = ad.AnnData(X=full, obs=adata.obs.copy(), var=pd.DataFrame(index=genes))
    out.uns["missing_genes"] = missing
    return out, missing


def predict(run_dir: str | Path, adata: ad.AnnData, align: bool = False) -> ad.AnnData:
    """Apply a saved model to ``adata``; outputs land in the same slots as in training."""
    info, module, meta = load(run_dir)
    data, missing = align_genes(adata, meta["var_names"], align)
    layer = meta.get("layer", "X")
    x = data.X if layer in (None, "X") or layer not in data.layers else data.layers[layer]
    dense = io.dense(x)
    io.check_finite(dense)
    out = adata.copy()
    name = meta["model"]
    if info.task == "classify":
        proba = (
            module.proba(dense)
            if info.kind == "sklearn"
            else module.proba(torch.as_tensor(dense)).detach().numpy()
        )
        classes = meta["classes"]
        out.obs[f"pred_{meta.get('label_key', 'label')}"] = pd.Categorical(
            np.asarray(classes)[proba.argmax(1)], categories=classes
        )
        out.obs["pred_confidence"] = proba.max(1)
    elif info.task in ("reconstruct", "embed") and info.kind == "sklearn":
        out.obsm[f"X_{name}"] = module.encode(dense).astype(np.float32)
    elif info.task == "reconstruct":
        with torch.no_grad():
            t = torch.as_tensor(dense)
            recon = module(t).numpy()
            out.obsm[f"X_{name}"] = module.encode(t).numpy()
        out.obs["abnormality"] = ((dense - recon) ** 2).mean(1)
        out.layers["reconstruction"] = recon
        out.layers["abnormality"] = dense - recon
    elif info.task == "embed":
        if meta.get("params", {}).get("likelihood") in ("nb", "zinb"):
            io.check_counts(dense)
        with torch.no_grad():
            out.obsm["X_vae"] = module.encode(torch.as_tensor(dense))[0].numpy()
    elif info.task == "perturb":
        delta = np.asarray(meta["delta"], dtype=np.float32)
        with torch.no_grad():
            pred = module.decode(
                module.encode(torch.as_tensor(dense)) + torch.as_tensor(delta)
            ).numpy()
        res = ad.AnnData(X=pred, obs=adata.obs.copy(), var=pd.DataFrame(index=meta["var_names"]))
        res.obs_names = [f"{n}-pred" for n in adata.obs_names]
        res.obs[meta["condition_key"]] = "predicted"
        res.uns["scgen_delta"] = delta
        return res
    if missing:
        out.uns["missing_genes"] = missing
    return out
