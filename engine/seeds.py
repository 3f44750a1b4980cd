"""Runs repeated over seeds: each configuration's metrics as mean +- sd, and paired comparisons.

One seed drives a run's split, initialisation and shuffling, so two configurations trained with
the same seed on the same data were scored on the same test cells. Differences are therefore
paired by seed: ``paired(a, b, metric)`` asks whether the mean difference is larger than its
seed-to-seed spread (a paired t-test), which is the honest question when comparing two models.
Torch-free: the Compare page and ``python -m engine compare`` both call it.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import metric_names, runs

# what names a run, not what it trains: left out when runs are grouped into configurations
_NOT_CONFIG = {
    "seed",
    "out",
    "group",
    "created",
    "device",
    "device_requested",
    "device_used",
    "device_name",
    "launcher",
    "devices",
    "dataset_name",
    "dataset_key",
    "versions",
    "data",
    "recipe",
    "data_shape",
}


@dataclass
class Config:
    """Runs that differ only by seed."""

    key: str
    model: str
    dataset: str
    label: str = ""
    baseline: bool = False
    runs: dict[int, dict[str, float]] = field(default_factory=dict)  # seed -> metrics
    run_ids: dict[int, str] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return sorted(self.runs)

    def values(self, metric: str) -> dict[int, float]:
        return {
            s: float(m[metric])
            for s, m in sorted(self.runs.items())
            if metric in m and _finite(m[metric])
        }

    def summary(self, metric: str) -> tuple[float, float, int]:
        """(mean, sample sd (0 for one seed), number of seeds) of ``metric``."""
        v = np.array(list(self.values(metric).values()), dtype=float)
        if not len(v):
            return math.nan, math.nan, 0
        return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def config_key(spec: dict[str, Any]) -> str:
    """The same key for runs that differ only by seed (and where or as what they ran)."""
    core = {k: v for k, v in sorted(spec.items()) if k not in _NOT_CONFIG}
    text = json.dumps(core, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def group(run_dirs: list[Path], parts: Any = None) -> list[Config]:
    """Finished runs grouped into configurations, in the order first seen. ``parts(metrics)``
    may split one run's metrics into named rows (scGen's baselines): ``{"": own, name: ...}``."""
    from engine import models as registry

    configs: dict[str, Config] = {}
    for d in run_dirs:
        d = Path(d)
        spec = runs.read_json(d / "run.json", {}) or {}
        metrics = runs.read_json(d / "metrics.json", {}) or {}
        if not isinstance(spec, dict) or not isinstance(metrics, dict) or "model" not in spec:
            continue
        numbers = {k: float(v) for k, v in metrics.items() if _finite(v)}
        split = parts(numbers) if parts else {"": numbers}
        seed = int(spec.get("seed", 0))
        for part, values in split.items():
            key = config_key(spec) + (f"/{part}" if part else "")
            model = spec["model"] if not part else f"{spec['model']} · {part}"
            try:
                base = bool(part) or registry.get(spec["model"]).baseline
            except Exception:  # noqa: BLE001 - a model this version no longer has
                base = False
            c = configs.setdefault(
                key,
                Config(key, model, str(spec.get("dataset_name") or ""), baseline=base),
            )
            if seed in c.runs:  # the same configuration and seed twice: keep the first
                continue
            c.runs[seed] = values
            c.run_ids[seed] = d.name
    out = list(configs.values())
    _label(out)
    return out


def _label(configs: list[Config]) -> None:
    names = [f"{c.model} · {c.dataset}" if c.dataset else c.model for c in configs]
    for c, n in zip(configs, names, strict=True):
        c.label = n if names.count(n) == 1 else f"{n} [{c.key[:6]}]"


def table(configs: list[Config], metrics: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per configuration: seeds, then ``<metric>`` (mean), ``<metric>_sd``, and
    ``<metric>_values`` (seed -> value, for hover text)."""
    keys = metrics or sorted({k for c in configs for m in c.runs.values() for k in m})
    rows = []
    for c in configs:
        row: dict[str, Any] = {"model": c.label, "baseline": c.baseline, "seeds": len(c.runs)}
        for k in keys:
            mean, sd, n = c.summary(k)
            if n:
                row[k] = mean
                row[f"{k}_sd"] = sd
                row[f"{k}_values"] = c.values(k)  # seed -> value
        rows.append(row)
    return rows


@dataclass
class Paired:
    a: str
    b: str
    metric: str
    n: int
    diff: float  # mean over shared seeds of a - b
    sd: float  # sample sd of the per-seed differences
    p: float  # two-sided paired t-test (nan below 2 seeds or with no spread)
    wins: int  # seeds where a is better than b (by the metric's direction)

    @property
    def verdict(self) -> str:
        better = metric_names.better(self.metric)
        if self.n < 2:
            return "one shared seed: no seed-to-seed spread to compare against"
        if not math.isfinite(self.p):
            if self.sd == 0 and self.diff != 0:
                return "the same difference on every seed"
            return "no difference"
        if self.p < 0.05:
            if better is None:
                return f"the difference is larger than the seed-to-seed spread (p = {self.p:.3g})"
            a_better = (self.diff > 0) == (better == "higher")
            return (
                f"{self.a if a_better else self.b} is better: the difference is larger than the "
                f"seed-to-seed spread (p = {self.p:.3g})"
            )
        return f"within the seed-to-seed spread (p = {self.p:.3g}): no clear winner"

    def text(self) -> str:
        return (
            f"{self.a} − {self.b}: {metric_names.name(self.metric)} {self.diff:+.4g} ± {self.sd:.2g} "
            f"(paired over {self.n} seed{'s' if self.n != 1 else ''}, better on {self.wins}/{self.n}): "
            f"{self.verdict}."
        )


def paired(a: Config, b: Config, metric: str) -> Paired:
    """``a`` against ``b`` on the seeds both ran (the same splits): mean and sd of the per-seed
    differences and a paired t-test."""
    va, vb = a.values(metric), b.values(metric)
    shared = sorted(set(va) & set(vb))
    d = np.array([va[s] - vb[s] for s in shared], dtype=float)
    n = len(d)
    diff = float(d.mean()) if n else math.nan
    sd = float(d.std(ddof=1)) if n > 1 else 0.0
    p = math.nan
    if n > 1 and sd > 0:
        from scipy import stats

        p = float(stats.ttest_rel([va[s] for s in shared], [vb[s] for s in shared]).pvalue)
    higher = metric_names.better(metric) != "lower"
    wins = int(((d > 0) if higher else (d < 0)).sum()) if n else 0
    return Paired(a.label, b.label, metric, n, diff, sd, p, wins)


def primary_metric(configs: list[Config]) -> str | None:
    """The metric a comparison leads with: the first ranked one all configurations share."""
    order = (
        "test_accuracy",
        "test_f1_macro",
        "abnormality_auroc",
        "r2_mean_all",
        "latent_knn_accuracy",
        "test_mse",
    )
    shared = set.intersection(*(set(k for m in c.runs.values() for k in m) for c in configs))
    for k in order:
        if k in shared:
            return k
    ranked = sorted(k for k in shared if metric_names.better(k))
    return ranked[0] if ranked else None


def pairs(configs: list[Config], metric: str) -> list[Paired]:
    """The comparisons worth making: every model against every baseline; with no baseline (or
    no model), every two configurations."""
    nets = [c for c in configs if not c.baseline]
    bases = [c for c in configs if c.baseline]
    if nets and bases:
        return [paired(a, b, metric) for a in nets for b in bases]
    return [paired(a, b, metric) for i, a in enumerate(configs) for b in configs[i + 1 :]]
