"""One LightningModule for every network: it asks the network for its loss and logs the parts.

Each network exposes ``loss(batch, kl_weight=...) -> {'loss': ..., other scalars}``; this wrapper
only does optimisation, logging and KL warm-up, so the networks stay plain ``nn.Module``s.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch
from torch import nn


class LitModel(pl.LightningModule):
    def __init__(
        self,
        module: nn.Module,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        kl_warmup_epochs: int = 0,
        optimizer: str = "adam",
    ):
        super().__init__()
        self.optimizer = optimizer
        self.module = module
        self.lr = lr
        self.weight_decay = weight_decay
        self.kl_warmup_epochs = kl_warmup_epochs

    def kl_weight(self) -> float:
        if self.kl_warmup_epochs <= 0:
            return 1.0
        return min(1.0, (self.current_epoch + 1) / self.kl_warmup_epochs)

    def on_train_epoch_start(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # running sums on the device, logged once per epoch: no per-step logging overhead
        out = self.module.loss(batch, kl_weight=self.kl_weight())
        n = batch["x"].shape[0]
        # logged: the whole objective (as validation scores it), so that during a KL warm-up
        # the two curves compare one quantity (a gap from the weight read as overfitting)
        shown = {**out, "loss": out.get("objective", out["loss"])}
        shown.pop("objective", None)
        for key, value in shown.items():
            self._sums[key] = self._sums.get(key, 0.0) + value.detach() * n
        self._count += n
        return out["loss"]

    def on_validation_epoch_end(self) -> None:
        """Log the training means here, before callbacks' ``on_train_epoch_end`` read them."""
        if self.trainer.sanity_checking or not getattr(self, "_count", 0):
            return
        for key, total in self._sums.items():
            self.log(
                "train_loss" if key == "loss" else f"train_{key}",
                total / self._count,
                sync_dist=True,  # ranks train equal shares: the mean of their means
            )

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        # the model's whole objective, whatever the warm-up's weight (scvi-tools' validation
        # ELBO): early stopping, the best epoch and the curve compare one quantity across
        # epochs (with the warm-up's weight, each epoch's loss held a larger share of KL)
        out = self.module.loss(batch, kl_weight=1.0)
        out.pop("objective", None)  # equal to the loss at weight 1
        n = batch["x"].shape[0]
        for key, value in out.items():
            self.log(
                "val_loss" if key == "loss" else f"val_{key}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=n,
                sync_dist=True,
            )

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer == "lbfgs":  # full batch, convex loss: line search picks each step
            return torch.optim.LBFGS(
                self.module.parameters(), lr=1.0, max_iter=20, line_search_fn="strong_wolfe"
            )
        return torch.optim.Adam(
            self.module.parameters(), lr=self.lr, weight_decay=self.weight_decay
        )
