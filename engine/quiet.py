"""Warning filters aimed at the libraries' own chatter (anndata, scanpy, Lightning, torch,
scikit-learn, umap, numba) on the command line and in workers; the engine's and the user's own
warnings stay visible. One place, so the CLI, the workers and the tests agree."""

from __future__ import annotations

import warnings

LIBRARIES = (
    "anndata",
    "scanpy",
    "pytorch_lightning",
    "lightning",
    "lightning_fabric",
    "torch",
    "torchmetrics",
    "sklearn",
    "umap",
    "numba",
    "pynndescent",
    "h5py",
    "scipy",  # SparseEfficiencyWarning from a matrix written with duplicate entries
)


def library_warnings_off() -> None:
    for module in LIBRARIES:
        warnings.filterwarnings("ignore", module=rf"{module}(\.|$)")
