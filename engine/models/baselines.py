"""scikit-learn baselines trained and scored on the same split as the networks.

Their fitted arrays are saved as tensors (``torch.load(weights_only=True)``), never pickled.
"""

from __future__ import annotations

import numpy as np
import torch


class SkLogReg:
    """``sklearn.linear_model.LogisticRegression`` on the training cells."""

    def __init__(self, C: float = 1.0, max_iter: int = 1000, seed: int = 0):
        from sklearn.linear_model import LogisticRegression

        self.est = LogisticRegression(C=C, max_iter=max_iter, random_state=seed)

    def fit(self, x: np.ndarray, y: np.ndarray) -> SkLogReg:
        import warnings

        from sklearn.exceptions import ConvergenceWarning

        with warnings.catch_warnings():  # said in the run's status instead (see ``converged``)
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.est.fit(x, y)
        return self

    @property
    def converged(self) -> bool:
        """Whether the solver stopped before its ``max_iter`` limit (scikit-learn only warns,
        and the baseline stood as the reference with an unfinished fit)."""
        return int(np.max(self.est.n_iter_)) < self.est.max_iter

    def proba(self, x: np.ndarray, n_classes: int | None = None) -> np.ndarray:
        """Probabilities with one column per class code 0..n_classes-1 (a class absent from
        the training cells gets 0)."""
        p = self.est.predict_proba(x)
        if n_classes is None or p.shape[1] == n_classes:
            return p
        full = np.zeros((p.shape[0], n_classes), dtype=p.dtype)
        full[:, self.est.classes_.astype(int)] = p
        return full

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "coef": torch.as_tensor(self.est.coef_),
            "intercept": torch.as_tensor(self.est.intercept_),
            "classes": torch.as_tensor(self.est.classes_),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.est.coef_ = state["coef"].numpy()
        self.est.intercept_ = state["intercept"].numpy()
        self.est.classes_ = state["classes"].numpy()


class PCABaseline:
    """``sklearn.decomposition.PCA`` with the latent size of the network it stands beside."""

    def __init__(self, n_components: int = 10, seed: int = 0):
        from sklearn.decomposition import PCA

        self.est = PCA(n_components=n_components, random_state=seed)

    def fit(self, x: np.ndarray) -> PCABaseline:
        # fewer components than genes: as many reconstruct any cell exactly (no baseline)
        self.est.n_components = max(1, min(self.est.n_components, x.shape[0], x.shape[1] - 1))
        self.est.fit(x)
        return self

    def encode(self, x: np.ndarray) -> np.ndarray:
        return self.est.transform(x)

    def reconstruct(self, x: np.ndarray) -> np.ndarray:
        return self.est.inverse_transform(self.est.transform(x))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "components": torch.as_tensor(self.est.components_),
            "mean": torch.as_tensor(self.est.mean_),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.est.components_ = state["components"].numpy()
        self.est.mean_ = state["mean"].numpy()
        self.est.n_components_ = self.est.components_.shape[0]
        self.est.whiten = False


def build_sk_logreg(n_in: int, params: dict, dims: dict) -> SkLogReg:
    return SkLogReg(params["C"], params["max_iter"], int(dims.get("seed", 0)))


def build_pca(n_in: int, params: dict, dims: dict) -> PCABaseline:
    return PCABaseline(params["n_components"], int(dims.get("seed", 0)))
