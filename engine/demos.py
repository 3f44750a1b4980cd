"""Bundled demo datasets: scanpy's ``pbmc68k_reduced`` and a synthetic perturbation set.

The synthetic set has a real latent structure: each cell is a point in a low-dimensional space
(cell-type centre + a stimulation shift that is partly shared across cell types + noise), decoded
to gene rates through a fixed random loading matrix and sampled as negative-binomial counts. A
model that learns the latent space can therefore predict a held-out cell type's response.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

DEMOS = {
    "pbmc68k_reduced": "700 PBMCs x 765 genes from scanpy (log-normalised, scaled; louvain clusters, UMAP).",
    "synthetic_perturbation": "2,000 synthetic cells x 600 genes, raw counts: 4 cell types x control/stimulated.",
}


def load_demo(name: str) -> ad.AnnData:
    """Return a fresh copy of a bundled demo dataset by name (see ``DEMOS``)."""
    from engine.errors import ScwbError

    if name == "pbmc68k_reduced":
        import scanpy as sc

        adata = sc.datasets.pbmc68k_reduced()
        adata.uns["source"] = "scanpy.datasets.pbmc68k_reduced"
        return adata
    if name == "synthetic_perturbation":
        return synthetic_perturbation()
    raise ScwbError(f"Unknown demo {name!r}: choose one of {', '.join(DEMOS)}.")


def synthetic_perturbation(
    n_cells: int = 2000,
    n_genes: int = 600,
    cell_types: tuple[str, ...] = ("T cell", "B cell", "Monocyte", "NK cell"),
    n_latent: int = 8,
    seed: int = 0,
) -> ad.AnnData:
    """Negative-binomial counts from a latent model with cell types and a stimulation response."""
    rng = np.random.default_rng(seed)
    n_types = len(cell_types)
    centres = rng.normal(0, 2.0, size=(n_types, n_latent))
    shared_shift = rng.normal(0, 1.5, size=n_latent)
    type_shift = rng.normal(0, 0.4, size=(n_types, n_latent))
    loadings = rng.normal(0, 0.5, size=(n_latent, n_genes))
    gene_base = rng.normal(-1.0, 1.0, size=n_genes)

    types = rng.integers(0, n_types, size=n_cells)
    stim = rng.random(n_cells) < 0.5
    z = centres[types] + rng.normal(0, 0.6, size=(n_cells, n_latent))
    z[stim] += shared_shift + type_shift[types[stim]]
    log_rate = gene_base + z @ loadings / np.sqrt(n_latent)
    rate = np.exp(log_rate - log_rate.max(axis=1, keepdims=True))
    rate /= rate.sum(axis=1, keepdims=True)
    library = rng.lognormal(np.log(3000), 0.35, size=n_cells)
    mu = rate * library[:, None]
    theta = 5.0
    counts = rng.negative_binomial(theta, theta / (theta + mu)).astype(np.float32)

    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical(np.asarray(cell_types)[types], categories=list(cell_types)),
            "condition": pd.Categorical(
                np.where(stim, "stimulated", "control"), categories=["control", "stimulated"]
            ),
            "sample": pd.Categorical([f"donor{i % 3 + 1}" for i in range(n_cells)]),
        },
        index=[f"cell{i:05d}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=[f"MT-G{i}" if i < 5 else f"Gene{i:04d}" for i in range(n_genes)])
    adata = ad.AnnData(X=sp.csr_matrix(counts), obs=obs, var=var)
    adata.uns["source"] = f"engine.demos.synthetic_perturbation(seed={seed})"
    return adata
