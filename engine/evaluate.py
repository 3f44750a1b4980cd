"""Metrics per task, with the names the run folder contract fixes.

Classifiers: ``test_accuracy``, ``test_f1_macro`` (+ per-class F1, confusion matrix).
Reconstruction: ``test_mse``. VAE: ``test_elbo`` (mean ELBO per cell, higher is better).
Perturbation: ``r2_mean_all`` ... ``direction_top20``, for the model and for the baselines
(``baseline_noshift_``, ``baseline_meanshift_``), and ``ceiling_r2_mean_all``: the R² a perfect
prediction would be expected to reach against the real stimulated cells, given how many they are;
``meanshift_gap_r2_mean_all`` (the model's R² minus the mean-shift's) with its 95% interval over
the scored cells (``meanshift_gap_ci95_low`` / ``_high``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.io import dense


def classification(y_true: np.ndarray, proba: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    y_pred = proba.argmax(1)
    labels = list(range(len(classes)))
    # classes with test cells only: a class no test cell has (a held-out donor's cells may lack
    # one) scored F1 0 and pulled macro-F1 down for a perfect classifier
    present = sorted(set(np.asarray(y_true).tolist()))
    per_class = f1_score(y_true, y_pred, labels=present, average=None, zero_division=0)
    return {
        "test_accuracy": float(accuracy_score(y_true, y_pred)),
        "test_f1_macro": float(
            f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        ),
        "per_class_f1": {classes[i]: float(f) for i, f in zip(present, per_class, strict=True)},
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
        "classes": classes,
    }


def mse_per_cell(x: np.ndarray, recon: np.ndarray) -> np.ndarray:
    return ((x - recon) ** 2).mean(axis=1)


def latent_scores(latent: np.ndarray, labels: np.ndarray | None, split: dict) -> dict[str, float]:
    """How well a latent space keeps known labels apart: kNN accuracy on the test cells (fit on
    the training cells) and the silhouette of up to 5,000 cells."""
    if labels is None:
        return {}
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    y = np.asarray(labels).astype(str)
    k = max(1, min(15, len(split["train"])))
    knn = KNeighborsClassifier(n_neighbors=k).fit(latent[split["train"]], y[split["train"]])
    sample = np.random.default_rng(0).choice(len(y), size=min(len(y), 5000), replace=False)
    return {
        "latent_knn_accuracy": float(
            (knn.predict(latent[split["test"]]) == y[split["test"]]).mean()
        ),
        "latent_silhouette": float(silhouette_score(latent[sample], y[sample]))
        if len(set(y[sample])) > 1
        else float("nan"),
    }


# ----------------------------------------------------------------------------- perturbation
def top_degs(x_ctrl: Any, x_stim: Any, var_names: Any, n: int = 100) -> list[str]:
    """The top ``n`` genes by Wilcoxon rank-sum score, real stimulated vs real control
    (scanpy's ``rank_genes_groups`` on the two groups' rows, float32, sparse kept sparse)."""
    import anndata as ad
    import pandas as pd
    import scanpy as sc
    import scipy.sparse as sp

    both = (
        sp.vstack([sp.csr_matrix(x_ctrl), sp.csr_matrix(x_stim)], format="csr", dtype=np.float32)
        if sp.issparse(x_ctrl) or sp.issparse(x_stim)
        else np.concatenate(
            [np.asarray(x_ctrl, dtype=np.float32), np.asarray(x_stim, dtype=np.float32)]
        )
    )
    groups = ["ctrl"] * x_ctrl.shape[0] + ["stim"] * x_stim.shape[0]
    a = ad.AnnData(
        X=both,
        obs=pd.DataFrame(
            {"group": pd.Categorical(groups)}, index=[str(i) for i in range(len(groups))]
        ),
        var=pd.DataFrame(index=[str(g) for g in var_names]),
    )
    sc.tl.rank_genes_groups(
        a, "group", groups=["stim"], reference="ctrl", method="wilcoxon", n_genes=min(n, a.n_vars)
    )
    return [str(g) for g in a.uns["rank_genes_groups"]["names"]["stim"][:n]]


def r2_pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Squared Pearson correlation (scGen's ``reg_mean_plot`` R²); NaN for a constant vector."""
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1] ** 2)


def _rowwise_r2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``r2_pearson`` of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((a * b).sum(1) / den) ** 2


def meanshift_gap_interval(
    pred: Any,
    real: Any,
    ctrl: Any,
    shift: np.ndarray,
    n_boot: int = 200,
    seed: int = 0,
    max_cells: int = 20_000,
    floor: float | None = None,
) -> tuple[float, float]:
    """95% interval of ``r2_mean_all`` minus the mean-shift baseline's, over the cells scored:
    a bootstrap of the control cells (each with its prediction, when ``pred`` holds one row per
    control cell, as scGen's does) and of the real stimulated cells. A held-out type of 7 control
    cells makes a noisy mean that can put either prediction ahead by chance; this says whether
    the difference is larger than that. The baseline is each control cell + ``shift`` (one per
    gene), cut at ``floor`` like the prediction when one is given. Above ``max_cells`` a group is
    subsampled (a wider, conservative interval). NaN for fewer than 2 cells on a side."""
    rng = np.random.default_rng(seed)

    def rows(x: Any) -> np.ndarray:
        x = np.asarray(dense(x), dtype=np.float32)
        return x if len(x) <= max_cells else x[np.sort(rng.choice(len(x), max_cells, False))]

    paired = pred.shape[0] == ctrl.shape[0]
    if paired and ctrl.shape[0] > max_cells:
        keep = np.sort(rng.choice(ctrl.shape[0], max_cells, replace=False))
        pred, ctrl = pred[keep], ctrl[keep]
    pred, real, ctrl = rows(pred), rows(real), rows(ctrl)
    if len(ctrl) < 2 or len(real) < 2 or len(pred) < 2:
        return float("nan"), float("nan")
    base = ctrl + np.asarray(shift, dtype=np.float32).ravel()  # the baseline, cell by cell
    if floor is not None:
        np.maximum(base, floor, out=base)

    def weights(n: int) -> np.ndarray:  # each row: one resample's mean as a weighted sum
        return (rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot) / n).astype(np.float32)

    wc, wr = weights(len(ctrl)), weights(len(real))
    wp = wc if paired else weights(len(pred))
    m_base, m_real, m_pred = wc @ base, wr @ real, wp @ pred
    gap = _rowwise_r2(m_pred, m_real) - _rowwise_r2(m_base, m_real)
    gap = gap[np.isfinite(gap)]
    if not len(gap):
        return float("nan"), float("nan")
    # the basic (reflected) interval: resampling adds noise to both means, which pulls every
    # resampled R² down and their difference towards 0, so the plain percentiles sat beside the
    # difference itself; reflecting them about it undoes that pull
    point = (
        _rowwise_r2(pred.mean(0, keepdims=True), real.mean(0, keepdims=True))
        - _rowwise_r2(base.mean(0, keepdims=True), real.mean(0, keepdims=True))
    )[0]
    q_low, q_high = np.percentile(gap, [2.5, 97.5])
    return float(2 * point - q_high), float(2 * point - q_low)


def noise_ceiling(real: Any, n_splits: int = 20, seed: int = 0, max_cells: int = 2000) -> float:
    """Expected ``r2_mean_all`` of a perfect prediction (the true mean) against the mean of these
    real cells: a few cells make a noisy mean that no prediction can match. Split-half estimate:
    the mean Pearson r between the means of two random halves (of at most ``max_cells`` cells, so
    a large type costs no more), lifted to all the cells by the Spearman-Brown formula (the
    reliability of a mean of k times as many cells, k r / (1 + (k - 1) r), is its expected squared
    correlation with the true mean). NaN for fewer than 4 cells; a property of the data only
    (fixed seed), so every model scored on these cells meets the same ceiling. ``real``: dense or
    sparse, cells x genes; only the sampled rows are densified."""
    n = real.shape[0]
    if n < 4:
        return float("nan")
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(n_splits):
        order = rng.permutation(n)[: min(n, max_cells)]
        half = len(order) // 2
        a, b = _row_mean(real, order[:half]), _row_mean(real, order[half : 2 * half])
        if a.std() > 0 and b.std() > 0:
            rs.append(np.corrcoef(a, b)[0, 1])
    r = float(np.mean(rs)) if rs else float("nan")
    if not np.isfinite(r):
        return float("nan")
    k = n / half  # a half holds `half` cells; the real mean holds n
    return float(np.clip(k * r / (1 + (k - 1) * r), 0.0, 1.0)) if r > 0 else 0.0


def _row_mean(x: Any, rows: np.ndarray) -> np.ndarray:
    """Per-gene mean of some rows, summed in float64 without a float64 copy of them."""
    import scipy.sparse as sp

    part = x[np.sort(rows)]
    if sp.issparse(part):
        return np.asarray(part.mean(0, dtype=np.float64)).ravel()
    return np.asarray(part).mean(0, dtype=np.float64)


def perturbation(
    pred: Any, real_stim: Any, ctrl: Any, var_names: np.ndarray, degs: list[str], prefix: str = ""
) -> dict[str, float]:
    """scGen's and CPA's agreement measures between predicted and real stimulated cells."""
    from sklearn.metrics import r2_score

    pred, real_stim, ctrl = (dense(a, np.float64) for a in (pred, real_stim, ctrl))
    m_pred, m_real, m_ctrl = pred.mean(0), real_stim.mean(0), ctrl.mean(0)
    v_pred, v_real = pred.var(0), real_stim.var(0)
    names = list(map(str, var_names))
    lookup = {g: i for i, g in enumerate(names)}
    top = np.array([lookup[g] for g in degs if g in lookup], dtype=int)
    top20 = top[:20]
    d_pred, d_real = m_pred - m_ctrl, m_real - m_ctrl
    # a prediction of no change (the baseline 'control unchanged') has no correlation with the
    # real change and no direction: undefined (NaN, shown as a dash), not 0
    moves = d_pred.std() > 0
    pearson_delta = (
        float(np.corrcoef(d_pred, d_real)[0, 1]) if moves and d_real.std() > 0 else float("nan")
    )
    out = {
        "r2_mean_all": r2_pearson(m_pred, m_real),
        "r2_mean_top100": r2_pearson(m_pred[top], m_real[top]) if len(top) > 1 else float("nan"),
        "r2score_mean_all": float(r2_score(m_real, m_pred)),
        "r2score_mean_top100": float(r2_score(m_real[top], m_pred[top]))
        if len(top) > 1
        else float("nan"),
        "r2_var_all": r2_pearson(v_pred, v_real),
        "pearson_delta": pearson_delta,
        "direction_top20": float(np.mean(np.sign(d_pred[top20]) == np.sign(d_real[top20])))
        if len(top20) and moves
        else float("nan"),
    }
    return {prefix + k: v for k, v in out.items()}


def unstable(train_loss: Any, n_classes: int | None = None) -> str | None:
    """Why a training looks unstable (a learning rate too high), or None: a classifier's
    training loss far above that of guessing every class equally (5 x ln K: its logits blew
    up), or any model's training loss jumping to 10x its lowest so far and above its first
    epoch's. Such a run still
    reports metrics (from its best epoch), and they read as the model's when they are the
    step size's (an MLP at lr 0.5 reached 0.60 accuracy where its default reaches 0.84)."""
    v = np.asarray(train_loss, dtype=float)
    epoch = np.flatnonzero(np.isfinite(v)) + 1  # its epoch, where rows without a value come
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return None
    if n_classes and n_classes >= 2:
        chance = float(np.log(n_classes))
        peak = int(np.argmax(v))
        if v[peak] > 5 * chance:
            return (
                f"its training loss reached {v[peak]:.3g} at epoch {epoch[peak]}, "
                f"{v[peak] / chance:.0f} times that of guessing every class equally "
                f"(ln {n_classes} = {chance:.2f})"
            )
    # 10x its lowest so far and above where it started: a loss near 0 that moves from 0.01 to
    # 0.09 (a classifier fitting its training cells) is noise, not a blow-up
    low = np.minimum.accumulate(v)
    jumps = np.flatnonzero((v[1:] > 10 * low[:-1]) & (v[1:] > v[0]) & (low[:-1] > 0)) + 1
    if len(jumps):
        i = int(jumps[0])
        return f"its training loss jumped from {low[i - 1]:.3g} to {v[i]:.3g} at epoch {epoch[i]}"
    return None


def still_improving(val_loss: Any, rel: float = 0.005) -> bool:
    """Whether a run that ran to its epoch limit was still learning: the best validation loss
    of its last tenth of epochs (at least the last two) is below the best before them by more
    than ``rel`` of itself, and by more than the curve's epoch-to-epoch noise (three robust
    standard deviations of a step, over the second half) or with every one of its last steps
    down. A curve this shape says "train longer" before any comparison is trusted (a 5-epoch scGen lost to the mean-shift baseline
    that the same model beats at 100); a noisy plateau is not this shape.

    The noise is measured around the curve's own trend (second differences cancel a smooth
    fall): measured on the steps themselves, a curve still falling 10% an epoch, ever more
    slowly, counted its own slowing as noise and was called converged (a browser pass)."""
    v = np.asarray(val_loss, dtype=float)
    v = v[np.isfinite(v)]
    n = len(v)
    if n < 3:
        return False
    start = min(n - 2, int(0.9 * n))
    gain = float(v[:start].min() - v[start:].min())
    half = v[n // 2 :]
    if len(half) >= 4:  # white noise of sd s: second differences have sd s * sqrt(6)
        sd = 1.4826 * float(np.median(np.abs(np.diff(half, 2)))) / np.sqrt(6)
        noise = np.sqrt(2) * sd  # of a step, the difference of two values
    else:
        steps = np.diff(half)
        noise = 1.4826 * float(np.median(np.abs(steps - np.median(steps)))) if len(steps) else 0.0
    # every one of its last steps down (at least four: a plateau of noise does that once in
    # 120 curves) also says it, with a fifth of ``rel``: a curve that fell fast, bent and went
    # on falling smoothly had the bend counted as noise, and scGen's loss, with its large
    # constant part, moved 0.47% over its last epochs (a browser pass: both called converged)
    last = np.diff(v[-(max(4, n // 10) + 1) :])
    falling = len(last) >= 4 and bool((last < 0).all())
    scale = abs(float(v[start:].min()))
    if falling and gain > rel / 5 * scale:
        return True
    return gain > max(rel * scale, 3 * noise)
