"""Learn a latent embedding: the VAE (scVI-style, on counts) or a PCA baseline. Writes the
latent, and for the VAE the denoised expression and the reconstructed counts."""

from __future__ import annotations

from typing import Any

import anndata as ad
import numpy as np

from engine import evaluate, io
from engine.tasks.base import Task, dense_ok, fit_pca


class Embed(Task):
    name = "embed"

    def configure(self, spec: Any, adata: ad.AnnData) -> None:
        self.dims["n_batch"] = len(self.setup.batch_categories)

    def _columns(self, adata: ad.AnnData, align: bool = False) -> tuple[dict, list[str], Any]:
        import torch

        from engine.data import DeviceMatrix

        x, missing = self.setup.matrix(adata, align)
        columns: dict[str, Any] = {"x": DeviceMatrix(x, self.device)}
        codes = self.setup.batch_codes(adata)
        if codes is not None:
            columns["batch"] = torch.as_tensor(codes, device=columns["x"].device)
        return columns, missing, x

    def fit(self, adata: ad.AnnData, split: dict, ctx: Any) -> bool:
        self.device = ctx.device
        self.module = self.build()
        if self.info.kind == "sklearn":
            dense = io.dense(self.setup.matrix(adata)[0])
            fit_pca(self.module, dense, split, ctx.run_dir)
            return False
        from engine import toolkit

        columns, _, _ = self._columns(adata)
        self.module, progress = toolkit.fit(self.module, ctx, columns, split)
        return progress.cancelled

    def annotate(self, adata: ad.AnnData, align: bool = False, layers: bool = True) -> ad.AnnData:
        out, slots = self.start_output(adata)
        if self.info.kind == "sklearn":
            x, missing = self.setup.matrix(adata, align)
            latent = self.module.encode(io.dense(x)).astype(np.float32)
            self.put(out, slots, "obsm", "latent", self.info.latent_key, latent)
            return self.finish_output(out, slots, missing)
        from engine import toolkit

        columns, missing, _ = self._columns(adata, align)
        xm, b = columns["x"], columns.get("batch")
        module = self.module
        latent = toolkit.infer(lambda xb, *bb: module.encode(xb, bb[0] if bb else None)[0], xm, b)
        self.put(out, slots, "obsm", "latent", self.info.latent_key, latent.astype(np.float32))
        if layers and dense_ok(*xm.shape):

            def decoded(xb, *bb):
                o, _, _ = module(xb, bb[0] if bb else None, sample=False)
                return module.decoded_pair(o)

            both = toolkit.infer(decoded, xm, b)
            n = xm.shape[1]
            scale = 1e4 if self.params.get("likelihood") != "gaussian" else 1.0
            for role, values in (
                ("denoised", both[:, :n] * scale),
                ("reconstruction", both[:, n:]),
            ):
                self.put(out, slots, "layers", role, role, self.to_data_genes(values, adata))
        return self.finish_output(out, slots, missing)

    def evaluate(self, out: ad.AnnData, split: dict, spec: Any) -> dict[str, Any]:
        latent = np.asarray(out.obsm[out.uns["scwb"]["slots"]["latent"]])
        metrics: dict[str, Any] = {}
        if self.info.kind == "sklearn":
            dense = io.dense(self.setup.matrix(out)[0])
            err = evaluate.mse_per_cell(dense, self.module.reconstruct(dense))
            metrics["test_mse"] = float(err[split["test"]].mean())
        else:
            metrics["test_elbo"] = self.test_elbo(out, split, spec.seed)
        labels = (
            out.obs[self.setup.label_key].astype(str).to_numpy() if self.setup.label_key else None
        )
        metrics.update(evaluate.latent_scores(latent, labels, split))
        return metrics

    def test_elbo(self, adata: ad.AnnData, split: dict, seed: int) -> float:
        """Mean ELBO per test cell (one seeded posterior sample), higher is better."""
        import torch

        from engine.data import Batches
        from engine.toolkit import INFER_BATCH

        columns, _, _ = self._columns(adata)
        torch.manual_seed(seed)
        total = torch.zeros((), device=columns["x"].device)
        with torch.no_grad():
            for batch in Batches(columns, split["test"], INFER_BATCH):
                total += self.module.loss(batch, kl_weight=1.0)["elbo"] * batch["x"].shape[0]
        return float(total) / len(split["test"])  # one device sync
