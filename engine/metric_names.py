"""Readable names for the metric keys the engine writes: what each measures, which way is better.

>>> describe("r2_mean_all").name
'R² of mean expression (all genes)'
>>> better("abnormality_others") is None   # a mean score, not a ranking: never marked best
True

``better(key)`` is ``"higher"``, ``"lower"`` or ``None`` (not ranked). Keys the engine does not
know get their own text back and are not ranked, so a new metric never gets a wrong direction.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    key: str
    name: str
    help: str
    better: str | None  # "higher", "lower" or None (not ranked)

    @property
    def tooltip(self) -> str:
        where = {"higher": " Higher is better.", "lower": " Lower is better."}.get(
            self.better or "", ""
        )
        return f"{self.help}{where} (`{self.key}`)"


_M = {
    # classifiers
    "test_accuracy": (
        "Accuracy (test)",
        "Share of held-out test cells given their true label.",
        "higher",
    ),
    "test_f1_macro": (
        "Macro F1 (test)",
        "F1 score averaged over classes, each class counting equally: rare cell types weigh as much as common ones.",
        "higher",
    ),
    # reconstruction / embedding
    "test_mse": (
        "Reconstruction error (test)",
        "Mean squared difference between input and reconstruction on held-out test cells (with a reference group: its own held-out cells; the others' is their abnormality).",
        "lower",
    ),
    "genemean_test_mse": (
        "Error of each gene's mean (test)",
        "The reconstruction error of the same test cells when every cell is predicted as the training cells' mean of each gene: a model not below it has learned nothing of the cells.",
        None,
    ),
    "train_mse": (
        "Reconstruction error (train)",
        "Mean squared difference between input and reconstruction on the training cells.",
        "lower",
    ),
    "val_mse": (
        "Reconstruction error (validation)",
        "Mean squared difference between input and reconstruction on the validation cells.",
        "lower",
    ),
    "test_elbo": (
        "ELBO (test)",
        "Evidence lower bound per test cell: a bound on the log-likelihood of the held-out cells' counts, so usually a large negative number (such as -900); closer to zero means the model finds the cells more likely. Comparable only between runs on the same cells and genes.",
        "higher",
    ),
    "latent_knn_accuracy": (
        "Latent kNN accuracy",
        "Accuracy of a 15-nearest-neighbour classifier of the label column in the latent space: do cells of one type sit together?",
        "higher",
    ),
    "latent_silhouette": (
        "Latent silhouette",
        "Silhouette width of the label groups in the latent space (-1 to 1): how well separated the cell types are.",
        "higher",
    ),
    # abnormality (trained on a reference group)
    "abnormality_trained_on": (
        "Abnormality, reference cells",
        "Mean per-cell reconstruction error of the cells the model was trained on (the reference group).",
        None,
    ),
    "abnormality_others": (
        "Abnormality, other cells",
        "Mean per-cell reconstruction error of the cells outside the reference group; what matters is the separation from the reference (see AUROC).",
        None,
    ),
    "abnormality_auroc": (
        "Abnormality AUROC",
        "How well the per-cell abnormality score separates the other cells from the reference cells (0.5 = chance, 1 = perfect).",
        "higher",
    ),
    # perturbation (scGen and its baselines)
    "r2_mean_all": (
        "R² of mean expression (all genes)",
        "Squared Pearson correlation between predicted and real stimulated mean expression per gene.",
        "higher",
    ),
    "r2_mean_top100": (
        "R² of mean expression (top-100 DEGs)",
        "The same R², on the 100 genes that change most between control and stimulated.",
        "higher",
    ),
    "r2score_mean_all": (
        "1 − SSE/SST of mean expression (all genes)",
        "The coefficient of determination (scikit-learn's r2_score) of the real means by the predicted means: unlike the squared correlation above, it also counts a prediction that is off by a constant or a scale; can be negative.",
        "higher",
    ),
    "r2score_mean_top100": (
        "1 − SSE/SST of mean expression (top-100 DEGs)",
        "The same coefficient of determination, on the 100 genes that change most between control and stimulated.",
        "higher",
    ),
    "r2_var_all": (
        "R² of variance (all genes)",
        "Squared Pearson correlation between predicted and real per-gene variance: is the spread of the response right?",
        "higher",
    ),
    "pearson_delta": (
        "Pearson r of the change",
        "Correlation between the predicted and the real change from control (stimulated - control means), per gene.",
        "higher",
    ),
    "direction_top20": (
        "Direction right (top-20 DEGs)",
        "Share of the 20 most changed genes whose predicted change goes the same way (up or down) as the real one.",
        "higher",
    ),
    "ceiling_r2_mean_all": (
        "Noise ceiling of R² (all genes)",
        "The R² of mean expression a perfect prediction would be expected to reach against these real stimulated cells: few cells make a noisy mean (split-half estimate).",
        None,
    ),
    "meanshift_gap_r2_mean_all": (
        "R² minus the mean-shift's (all genes)",
        "The model's R² of means (all genes) minus that of the baseline 'control + mean shift': above 0, the model predicts better.",
        "higher",
    ),
    "meanshift_gap_ci95_low": (
        "R² minus the mean-shift's: 95% interval, low",
        "Low end of the 95% interval of that difference over the cells scored (a bootstrap of the control and the real stimulated cells). Above 0: the model is ahead by more than the sampling of these cells explains.",
        None,
    ),
    "meanshift_gap_ci95_high": (
        "R² minus the mean-shift's: 95% interval, high",
        "High end of the same interval. Below 0: the baseline is ahead by more than the sampling of these cells explains.",
        None,
    ),
    "vs_meanshift": (
        "Against the mean-shift",
        "better or worse: beyond the 95% interval of the difference over these cells; cannot tell: within it.",
        None,
    ),
    "beats_noshift": (
        "Beats 'control unchanged'",
        "Whether the model's R² of means (all genes) is above the baseline that predicts the control cells unchanged.",
        None,
    ),
    "beats_meanshift": (
        "Beats 'control + mean shift'",
        "Whether the model's R² of means (all genes) is above the baseline that adds the average response of the other cell types, beyond the 95% interval of the difference over these cells (false also where the two cannot be told apart: vs_meanshift says which).",
        None,
    ),
    # per-epoch curves
    "train_loss": ("Training loss", "The training objective on the training cells.", "lower"),
    "val_loss": ("Validation loss", "The training objective on the validation cells.", "lower"),
    "val_accuracy": (
        "Accuracy (validation)",
        "Share of validation cells given their true label.",
        "higher",
    ),
    "val_f1_macro": ("Macro F1 (validation)", "Macro F1 on the validation cells.", "higher"),
    "train_accuracy": (
        "Accuracy (train)",
        "Share of training cells given their true label (a fit, not a test).",
        "higher",
    ),
    "train_f1_macro": ("Macro F1 (train)", "Macro F1 on the training cells.", "higher"),
    "n_ctrl": ("Control cells", "Number of control cells of this cell type.", None),
    "n_stim": ("Stimulated cells", "Number of real stimulated cells of this cell type.", None),
    "epochs": ("Epochs", "Epochs trained.", None),
}
KNOWN: dict[str, Metric] = {k: Metric(k, *v) for k, v in _M.items()}

# properties of the scored cells, the same for a model and its baselines
SHARED = {"ceiling_r2_mean_all"}

BASELINES = {
    "baseline_noshift_": "baseline: control unchanged",
    "baseline_meanshift_": "baseline: control + mean shift",
}

# a baseline that predicts no change has no correlation with the real change and no direction
NO_CHANGE = {"baseline_noshift_"}
CHANGE_METRICS = ("pearson_delta", "direction_top20")


def describe(key: str) -> Metric:
    """The readable name, one-line help and direction of ``key`` (any string)."""
    key = str(key)
    if key in KNOWN:
        return KNOWN[key]
    for prefix, label in BASELINES.items():
        if key.startswith(prefix) and key[len(prefix) :] in KNOWN:
            base = KNOWN[key[len(prefix) :]]
            return Metric(
                key, f"{base.name}, {label}", f"{base.help} For the {label}.", base.better
            )
    if key.startswith("beats_"):
        return Metric(key, key.replace("_", " "), "Whether the model beats this baseline.", None)
    return Metric(key, key, "", None)


def name(key: str) -> str:
    return describe(key).name


def better(key: str) -> str | None:
    """``"higher"``, ``"lower"`` or ``None`` when the metric is not ranked."""
    return describe(key).better


CLUSTER_KEYS = ("leiden", "louvain")  # label columns that are clusters computed from the data
_CLUSTER = re.compile(r"^(leiden|louvain)(_\d+)?$")
LATENT_SCORES = ("latent_knn_accuracy", "latent_silhouette")


def cluster_caution(label_keys: Any, metric_keys: Any) -> str | None:
    """What to say beside latent scores measured against clusters computed from a PCA of the
    same data (Preprocess's Leiden): they favour the PCA baseline. None where no such score."""
    # leiden_2, ...: the leiden step's clusters beside the data's own obs['leiden']
    clusters = sorted({str(k) for k in label_keys if k is not None and _CLUSTER.match(str(k))})
    if not clusters or not set(LATENT_SCORES) & set(metric_keys):
        return None
    return (
        f"The latent scores are measured against clusters ({', '.join(clusters)}): when they "
        "were computed from a PCA of this same data (as Preprocess computes Leiden clusters), "
        "they favour the PCA baseline's latent space and say little about a model's."
    )


def ranked(key: str) -> str | None:
    """``better`` for a result to rank runs by; ``None`` for a score on the training cells
    (a lowest training error was marked best, and paired-tested, like a test score)."""
    return None if str(key).startswith("train_") else better(key)


def higher_is_better(key: str) -> bool | None:
    b = better(key)
    return None if b is None else b == "higher"


def split_baselines(metrics: dict) -> dict[str, dict]:
    """A scGen run's metrics split into its own and each baseline's, without the prefixes
    (``SHARED`` metrics, properties of the scored cells, in every part):
    ``{"": {...}, "baseline: control unchanged": {...}, "baseline: control + mean shift": {...}}``
    (baselines absent from ``metrics`` are left out)."""
    own = {k: v for k, v in metrics.items() if not any(k.startswith(p) for p in BASELINES)}
    out = {"": own}
    shared = {k: v for k, v in own.items() if k in SHARED}
    for prefix, label in BASELINES.items():
        sub = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)}
        if prefix in NO_CHANGE:
            # undefined whatever a run stored (runs scored before 2026-11-28 stored 0)
            sub.update({k: float("nan") for k in CHANGE_METRICS if k in sub})
        if sub:
            out[label] = {**sub, **shared}
    return out


def headline_first(keys) -> list[str]:
    """Metric keys in reading order: the abnormality AUROC, then test, validation and training
    scores, then the rest (each group in its given order)."""

    def rank(key: str) -> int:
        if key == "abnormality_auroc":
            return 0
        for i, prefix in enumerate(("test_", "val_", "train_"), start=1):
            if key.startswith(prefix):
                return i
        return 4

    return sorted(keys, key=rank)
