"""Cell-type classifiers: logistic regression (no hidden layer) and an MLP."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.nn import mlp


class Classifier(nn.Module):
    """Hidden layers (none for logistic regression) then a linear head.

    Two classes use one sigmoid output with binary cross-entropy, as in the classic exercise;
    more classes use softmax with cross-entropy.
    """

    def __init__(
        self,
        n_in: int,
        n_classes: int,
        hidden: tuple[int, ...] = (),
        activation: str = "relu",
        dropout: float = 0.0,
        l2: float = 0.0,
    ):
        super().__init__()
        self.n_classes = n_classes
        self.l2 = l2  # penalty 0.5 * l2 * ||W||^2 on the weight matrices (biases free)
        self.binary = n_classes == 2
        self.body = mlp(n_in, hidden, activation, dropout)
        width = hidden[-1] if hidden else n_in
        self.head = nn.Linear(width, 1 if self.binary else n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def proba(self, x: torch.Tensor) -> torch.Tensor:
        logits = self(x)
        if self.binary:
            p = torch.sigmoid(logits)
            return torch.cat([1 - p, p], dim=1)
        return torch.softmax(logits, dim=1)

    def loss(self, batch: dict[str, torch.Tensor], **_: float) -> dict[str, torch.Tensor]:
        logits = self(batch["x"])
        y = batch["y"]
        if self.binary:
            loss = F.binary_cross_entropy_with_logits(logits.squeeze(1), y.float())
            pred = (logits.squeeze(1) > 0).long()
        else:
            loss = F.cross_entropy(logits, y)
            pred = logits.argmax(1)
        out = {"loss": loss, "accuracy": (pred == y).float().mean()}
        if self.l2 > 0:
            out["loss"] = loss + 0.5 * self.l2 * self.weight_norm()
            out["cross_entropy"] = loss.detach()
        return out

    def weight_norm(self) -> torch.Tensor:
        return sum((m.weight**2).sum() for m in self.modules() if isinstance(m, nn.Linear))


def build_logreg(n_in: int, params: dict, dims: dict) -> Classifier:
    """scikit-learn's objective: mean cross-entropy + ||W||^2 / (2 C n_train)."""
    n_train = max(int(dims.get("n_train", 1)), 1)
    return Classifier(n_in, int(dims["n_classes"]), l2=1.0 / (float(params["C"]) * n_train))


def build_mlp(n_in: int, params: dict, dims: dict) -> Classifier:
    from engine.models import _widths

    return Classifier(
        n_in,
        int(dims["n_classes"]),
        _widths(params["hidden"]),
        params["activation"],
        params["dropout"],
    )
