"""Reconstruct cells (scQUEST): a latent code, the reconstruction, the signed residual per gene
and the per-cell abnormality score (reconstruction MSE)."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np

from engine import evaluate, io
from engine.split import train_on_mask
from engine.tasks.base import Task, dense_ok, fit_pca

CHUNK = 8192  # cells per block when scoring


class Reconstruct(Task):
    name = "reconstruct"

    def configure(self, spec: Any, adata: ad.AnnData) -> None:
        if self.info.kind == "torch":
            x, _ = self.setup.matrix(adata)
            out = self.params.get("output", "auto")
            self.dims["sigmoid_output"] = out == "sigmoid" or (
                out == "auto" and io.matrix_kind(x) == "scaled (MinMax)"
            )
        if spec.train_on:
            self.extra["train_on"] = spec.train_on

    def fit(self, adata: ad.AnnData, split: dict, ctx: Any) -> bool:
        x, _ = self.setup.matrix(adata)
        self.device = ctx.device
        self.module = self.build()
        if self.info.kind == "sklearn":
            dense = io.dense(x)
            fit_pca(self.module, dense, split, ctx.run_dir)
            return False
        from engine import toolkit
        from engine.data import DeviceMatrix

        columns = {"x": DeviceMatrix(x, ctx.device)}
        self.module, progress = toolkit.fit(self.module, ctx, columns, split)
        return progress.cancelled

    def outputs(self, x: Any) -> tuple[np.ndarray, np.ndarray]:
        """Latent codes and reconstructions of the rows of ``x`` (a dense block)."""
        if self.info.kind == "sklearn":
            return self.module.encode(x), self.module.reconstruct(x)
        from engine import toolkit
        from engine.data import DeviceMatrix

        xm = DeviceMatrix(x, self.device)
        return toolkit.infer(self.module.encode, xm), toolkit.infer(self.module, xm)

    def annotate(self, adata: ad.AnnData, align: bool = False, layers: bool = True) -> ad.AnnData:
        x, missing = self.setup.matrix(adata, align)
        keep = layers and dense_ok(*x.shape)  # full reconstruction layers only when they fit
        latent, score, recon, residual = [], [], [], []
        for start in range(0, x.shape[0], CHUNK):  # never the whole matrix densified at once
            block = io.dense(x[start : start + CHUNK])
            z, r = self.outputs(block)
            latent.append(z.astype(np.float32))
            score.append(evaluate.mse_per_cell(block, r).astype(np.float32))
            if keep:
                recon.append(r.astype(np.float32))
                residual.append((block - r).astype(np.float32))
        out, slots = self.start_output(adata)
        self.put(out, slots, "obsm", "latent", self.info.latent_key, np.concatenate(latent))
        self.put(out, slots, "obs", "score", "abnormality", np.concatenate(score))
        if keep:
            for role, parts in (("reconstruction", recon), ("residual", residual)):
                values = self.to_data_genes(np.concatenate(parts), adata)
                self.put(out, slots, "layers", role, role, values)
        return self.finish_output(out, slots, missing)

    def evaluate(self, out: ad.AnnData, split: dict, spec: Any) -> dict[str, Any]:
        score = out.obs[out.uns["scwb"]["slots"]["score"]].to_numpy(dtype=np.float64)
        test = np.asarray(split["test"], dtype=np.int64)
        inside = train_on_mask(out.obs, spec.train_on)
        if inside is not None:
            # the test error is the reference group's held-out cells' (it mixed in the other
            # cells, the abnormal ones, whose scores are abnormality_others)
            test = test[inside[test]]
        metrics: dict[str, Any] = {
            "test_mse": float(score[test].mean()) if len(test) else float("nan"),
            "train_mse": float(score[split["train"]].mean()),
            "genemean_test_mse": _gene_mean_mse(
                self.setup.matrix(out)[0], np.asarray(split["train"], dtype=np.int64), test
            ),
        }
        if inside is not None:
            metrics.update(reference_scores(score, inside, split))
        return metrics


def _gene_mean_mse(x: Any, train: np.ndarray, test: np.ndarray) -> float:
    """The test cells' error when each is predicted as the training cells' mean of every gene:
    what a model that learned nothing of the cells reaches (a browser pass: an autoencoder at
    0.0555 against this 0.0545 was shown as a result, with its abnormality AUROC)."""
    if not len(train) or not len(test):
        return float("nan")
    mean = np.zeros(x.shape[1])
    for start in range(0, len(train), CHUNK):  # never the whole matrix densified at once
        mean += io.dense(x[train[start : start + CHUNK]]).sum(axis=0)
    mean /= len(train)
    errors = [
        evaluate.mse_per_cell(io.dense(x[test[start : start + CHUNK]]), mean[None, :])
        for start in range(0, len(test), CHUNK)
    ]
    return float(np.concatenate(errors).mean())


def reference_scores(score: np.ndarray, inside: np.ndarray, split: dict) -> dict[str, float]:
    """Abnormality of the reference group (the cells trained on) and of the others, and the
    AUROC of telling the others from held-out reference cells (test cells of the group)."""
    metrics = {
        "abnormality_trained_on": float(score[inside].mean()),
        "abnormality_others": float(score[~inside].mean()) if (~inside).any() else float("nan"),
    }
    test = np.zeros(len(score), dtype=bool)
    test[split["test"]] = True
    held_out = test & inside
    if (~inside).any() and held_out.any():
        from sklearn.metrics import roc_auc_score

        pick = held_out | ~inside
        metrics["abnormality_auroc"] = float(roc_auc_score(~inside[pick], score[pick]))
    return metrics
