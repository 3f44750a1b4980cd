"""scGen (Lotfollahi et al. 2019): a VAE on log-normalised expression whose latent space makes a
stimulation a vector; adding it to control cells of an unseen cell type predicts their response.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from engine.errors import ScwbError
from engine.models.nn import kl_normal, mlp


class SCGEN(nn.Module):
    """Published defaults: 2 hidden layers of 800 (BatchNorm, LeakyReLU, dropout 0.2), latent 100,
    loss ``0.5 * sum (x - x_hat)^2 + 0.5 * kl_weight * KL`` with ``kl_weight = 5e-5``."""

    def __init__(
        self,
        n_in: int,
        n_hidden: int = 800,
        n_layers: int = 2,
        n_latent: int = 100,
        dropout: float = 0.2,
        kl_weight: float = 5e-5,
        decoder: str = "mirrored",
    ):
        super().__init__()
        widths = [n_hidden] * n_layers
        self.encoder = mlp(n_in, widths, "leaky_relu", dropout, batch_norm=True)
        self.z_mean = nn.Linear(n_hidden, n_latent)
        self.z_logvar = nn.Linear(n_hidden, n_latent)
        if decoder == "package":
            # the scGen package's (scvi-tools FCLayers from the latent to the genes): n_layers - 1
            # hidden layers, and the output layer too has BatchNorm, LeakyReLU and dropout
            self.decoder = mlp(n_latent, [*widths[1:], n_in], "leaky_relu", dropout, True)
        else:  # the encoder's layers mirrored, a linear output
            self.decoder = nn.Sequential(
                mlp(n_latent, widths, "leaky_relu", dropout, batch_norm=True),
                nn.Linear(n_hidden, n_in),
            )
        self.kl_weight = kl_weight

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.z_mean(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def loss(self, batch: dict[str, torch.Tensor], **_: float) -> dict[str, torch.Tensor]:
        x = batch["x"]
        h = self.encoder(x)
        mu, logvar = self.z_mean(h), self.z_logvar(h).clamp(-10, 10)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = (x - self.decode(z)).pow(2).sum(-1)
        kl = kl_normal(mu, logvar)
        return {
            "loss": (0.5 * rec + 0.5 * self.kl_weight * kl).mean(),
            "reconstruction": rec.mean(),
            "kl": kl.mean(),
        }


def balanced_indices(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """scGen's balancer: resample every cell type (with replacement) to the largest one's size."""
    labels = np.asarray(labels).astype(str)
    groups = [np.flatnonzero(labels == v) for v in np.unique(labels)]
    size = max(len(g) for g in groups)
    return np.concatenate([rng.choice(g, size=size, replace=True) for g in groups])


def latent_delta(
    encode,
    x_ctrl: np.ndarray,
    types_ctrl: np.ndarray,
    x_stim: np.ndarray,
    types_stim: np.ndarray,
    seed: int,
    how: str = "paired",
) -> np.ndarray:
    """The stimulation vector in latent space.

    ``sampled`` is the scGen package's: balance each condition's training cells over cell types
    by resampling, then mean latent of stimulated minus control cells. Its control side also
    holds the held-out type's control cells, which the stimulated side lacks, so the vector
    carries a composition term that pulls the prediction towards the other types.
    ``paired`` (the app's default) is the same balanced mean restricted to the cell types seen in
    both conditions, computed exactly: the mean over those types of (mean stimulated - mean
    control latent). It has no composition term and no resampling noise."""
    if how not in ("paired", "sampled"):
        raise ValueError(f"unknown delta {how!r}")
    types_ctrl, types_stim = np.asarray(types_ctrl).astype(str), np.asarray(types_stim).astype(str)
    both = sorted(set(types_ctrl) & set(types_stim))
    if not len(types_ctrl) or not len(types_stim) or how == "paired" and not both:
        raise ScwbError(
            "The stimulation vector needs training cells of both conditions"
            + (" in one cell type" if how == "paired" else "")
            + "; widen the delta cell types."
        )
    if how == "paired":
        zc, zs = encode(x_ctrl), encode(x_stim)
        return np.mean(
            [zs[types_stim == t].mean(0) - zc[types_ctrl == t].mean(0) for t in both], axis=0
        )
    rng = np.random.default_rng(seed)
    ci = balanced_indices(types_ctrl, rng)
    si = balanced_indices(types_stim, rng)
    n = min(len(ci), len(si))
    ci = rng.choice(ci, size=n, replace=False)
    si = rng.choice(si, size=n, replace=False)
    return encode(x_stim[si]).mean(0) - encode(x_ctrl[ci]).mean(0)


def build(n_in: int, params: dict, dims: dict) -> SCGEN:
    return SCGEN(
        n_in,
        params["n_hidden"],
        params["n_layers"],
        params["n_latent"],
        params["dropout"],
        params["kl_weight"],
        params.get("decoder", "mirrored"),
    )
