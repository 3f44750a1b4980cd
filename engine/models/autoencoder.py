"""scQUEST-style autoencoder: reconstruction error per cell is its abnormality score."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.nn import mlp


class Autoencoder(nn.Module):
    """``n_in -> widths -> latent`` mirrored back; sigmoid output for MinMax-scaled input."""

    def __init__(
        self,
        n_in: int,
        widths: tuple[int, ...] = (32, 16, 8, 4),
        activation: str = "relu",
        sigmoid_output: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        *hidden, latent = widths
        self.encoder = nn.Sequential(
            mlp(n_in, hidden, activation, dropout),
            nn.Linear(hidden[-1] if hidden else n_in, latent),
        )
        back = list(reversed(hidden))
        self.decoder = nn.Sequential(
            mlp(latent, back, activation, dropout), nn.Linear(back[-1] if back else latent, n_in)
        )
        self.sigmoid_output = sigmoid_output

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder(x))
        return torch.sigmoid(out) if self.sigmoid_output else out

    def loss(self, batch: dict[str, torch.Tensor], **_: float) -> dict[str, torch.Tensor]:
        return {"loss": F.mse_loss(self(batch["x"]), batch["x"])}


def build(n_in: int, params: dict, dims: dict) -> Autoencoder:
    from engine.models import _widths

    return Autoencoder(
        n_in, _widths(params["widths"]), params["activation"], bool(dims.get("sigmoid_output"))
    )
