"""Classify cells: predicted label, confidence and class probabilities per cell."""

from __future__ import annotations

import dataclasses
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from engine import evaluate, io, runs
from engine.tasks.base import Task, baseline_epoch


class Classify(Task):
    name = "classify"
    label_classes = True

    def configure(self, spec: Any, adata: ad.AnnData) -> None:
        self.dims["n_classes"] = len(self.setup.classes)

    def fit(self, adata: ad.AnnData, split: dict, ctx: Any) -> bool:
        x, _ = self.setup.matrix(adata)
        y = self.setup.label_codes(adata)
        self.device = ctx.device
        self.dims["n_train"] = len(split["train"])
        self.module = self.build()
        if self.info.kind == "sklearn":
            dense = io.dense(x)
            self.module.fit(dense[split["train"]], y[split["train"]])
            proba = self.module.proba(dense, len(self.setup.classes))
            baseline_epoch(
                ctx.run_dir,
                train_accuracy=_accuracy(proba, y, split["train"]),
                val_accuracy=_accuracy(proba, y, split["val"]),
            )
            if not getattr(self.module, "converged", True):
                runs.update_status(ctx.run_dir, solver_converged=False)
            return False
        import torch

        from engine import toolkit
        from engine.data import DeviceMatrix

        xm = DeviceMatrix(x, ctx.device)
        columns = {"x": xm, "y": torch.as_tensor(y, device=xm.device)}
        if self.params.get("solver") == "lbfgs" and _full_batch_fits(xm, split, ctx):
            ctx = dataclasses.replace(ctx, optimizer="lbfgs", batch_size=len(split["train"]))
        self.module, progress = toolkit.fit(self.module, ctx, columns, split)
        return progress.cancelled

    def proba(self, x: Any) -> np.ndarray:
        if self.info.kind == "sklearn":
            return self.module.proba(io.dense(x), len(self.setup.classes))
        from engine import toolkit
        from engine.data import DeviceMatrix

        return toolkit.infer(self.module.proba, DeviceMatrix(x, self.device))

    def annotate(self, adata: ad.AnnData, align: bool = False, layers: bool = True) -> ad.AnnData:
        x, missing = self.setup.matrix(adata, align)
        proba = self.proba(x).astype(np.float32)
        classes = list(self.setup.classes)
        out, slots = self.start_output(adata)
        label = self.setup.label_key or "label"
        pred = pd.Categorical(np.asarray(classes)[proba.argmax(1)], categories=classes)
        self.put(out, slots, "obs", "prediction", f"pred_{label}", pred)
        self.put(out, slots, "obs", "confidence", "pred_confidence", proba.max(1))
        self.put(out, slots, "obsm", "proba", f"proba_{self.info.name}", proba)
        return self.finish_output(out, slots, missing)

    def evaluate(self, out: ad.AnnData, split: dict, spec: Any) -> dict[str, Any]:
        y = self.setup.label_codes(out)
        proba = np.asarray(out.obsm[out.uns["scwb"]["slots"]["proba"]])
        return evaluate.classification(y[split["test"]], proba[split["test"]], self.setup.classes)


def _full_batch_fits(xm: Any, split: dict, ctx: Any) -> bool:
    """L-BFGS sees every training cell in one batch: only on one device, and only when that
    batch (dense) fits the memory budget; otherwise Adam on mini-batches."""
    n = len(split["train"]) * xm.shape[1] * 4
    return ctx.devices * ctx.num_nodes == 1 and (xm.is_dense or n <= io.memory_budget() // 4)


def _accuracy(proba: np.ndarray, y: np.ndarray, idx: np.ndarray) -> float:
    return float((proba[idx].argmax(1) == y[idx]).mean()) if len(idx) else float("nan")
