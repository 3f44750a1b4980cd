"""scVI-style VAE: counts in, a latent space and denoised expression out.

The encoder sees ``log1p`` counts (and a one-hot batch); the decoder gives per-gene proportions
scaled by the cell's observed library size, scored with a negative binomial (default), a ZINB,
or a Gaussian on already-normalised data.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from engine.models.nn import kl_normal, log_nb, log_zinb, mlp


class VAE(nn.Module):
    def __init__(
        self,
        n_in: int,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout: float = 0.1,
        likelihood: str = "nb",
        n_batch: int = 0,
    ):
        super().__init__()
        self.likelihood = likelihood
        self.n_batch = n_batch
        widths = [n_hidden] * n_layers
        self.encoder = mlp(n_in + n_batch, widths, "relu", dropout, batch_norm=True)
        self.z_mean = nn.Linear(n_hidden, n_latent)
        self.z_logvar = nn.Linear(n_hidden, n_latent)
        self.decoder = mlp(n_latent + n_batch, widths, "relu", 0.0, batch_norm=True)
        self.scale = nn.Linear(n_hidden, n_in)
        # only the parameters the likelihood uses (unused ones would stall data-parallel training)
        self.dropout_logits = nn.Linear(n_hidden, n_in) if likelihood == "zinb" else None
        self.log_theta = nn.Parameter(torch.zeros(n_in)) if likelihood in ("nb", "zinb") else None

    def _cov(self, t: torch.Tensor, batch: torch.Tensor | None) -> torch.Tensor:
        if self.n_batch and batch is not None:
            return torch.cat([t, F.one_hot(batch, self.n_batch).to(t.dtype)], dim=1)
        return t

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(x) if self.likelihood in ("nb", "zinb") else x

    def encode(
        self, x: torch.Tensor, batch: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(self._cov(self._input(x), batch))
        return self.z_mean(h), self.z_logvar(h).clamp(-10, 10)

    def decode(
        self, z: torch.Tensor, library: torch.Tensor, batch: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        h = self.decoder(self._cov(z, batch))
        if self.likelihood == "gaussian":
            return {"mean": self.scale(h), "proportion": self.scale(h)}
        proportion = torch.softmax(self.scale(h), dim=-1)
        return {
            "mean": proportion * library,
            "proportion": proportion,
            "dropout_logits": self.dropout_logits(h) if self.dropout_logits is not None else None,
        }

    def forward(
        self, x: torch.Tensor, batch: torch.Tensor | None = None, sample: bool = True
    ) -> tuple[dict, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x, batch)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp() if sample else mu
        library = x.sum(1, keepdim=True)
        return self.decode(z, library, batch), mu, logvar

    def decoded_pair(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """Per-gene proportions and expected counts side by side (one array to move to host)."""
        return torch.cat([out["proportion"], out["mean"]], dim=1)

    def reconstruction_nll(self, x: torch.Tensor, out: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.likelihood == "gaussian":
            return 0.5 * (x - out["mean"]).pow(2).sum(-1)
        theta = self.log_theta.exp()
        if self.likelihood == "zinb":
            return -log_zinb(x, out["mean"], theta, out["dropout_logits"]).sum(-1)
        return -log_nb(x, out["mean"], theta).sum(-1)

    def loss(
        self, batch: dict[str, torch.Tensor], kl_weight: float = 1.0, **_: float
    ) -> dict[str, torch.Tensor]:
        x = batch["x"]
        out, mu, logvar = self(x, batch.get("batch"))
        rec = self.reconstruction_nll(x, out)
        kl = kl_normal(mu, logvar)
        return {
            "loss": (rec + kl_weight * kl).mean(),
            "objective": (rec + kl).mean(),  # the whole one, whatever the warm-up's weight
            "reconstruction": rec.mean(),
            "kl": kl.mean(),
            "elbo": -(rec + kl).mean(),
        }


def build(n_in: int, params: dict, dims: dict) -> VAE:
    return VAE(
        n_in,
        params["n_hidden"],
        params["n_latent"],
        params["n_layers"],
        params["dropout"],
        params["likelihood"],
        int(dims.get("n_batch", 0)),
    )
