"""Runs repeated over seeds: each configuration's metrics as mean +- sd, and paired comparisons.

One seed drives a run's split, initialisation and shuffling, so two configurations trained with
the same seed on the same data and label were scored on the same test cells. Differences are
therefore paired by seed: ``paired(a, b, metric)`` asks whether the mean difference is larger
than its seed-to-seed spread (a two-sided paired t-test), the honest question when comparing two
models. Only completed runs count (a cancelled run's metrics describe a partial training).
Torch-free: the Compare page and ``python -m engine compare`` both call it.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine import metric_names, runs

# what a run trains: runs equal in these (and different in seed only) form one configuration
_CONFIG = (
    "model",
    "task",
    "params",
    "label_key",
    "layer",
    "epochs",
    "batch_size",
    "lr",
    "patience",
    "train_on",
    "condition_key",
    "ctrl",
    "stim",
    "cell_type_key",
    "predict",
    "precision",
    "data_fingerprint",
    "split_by",
    "group_split",
)
# runs are compared (paired) only within one scope: the same data, label, task and split
_SCOPE = (
    "data_fingerprint",
    "label_key",
    "task",
    "condition_key",
    "ctrl",
    "stim",
    "cell_type_key",
    "predict",
    "split_by",
    "group_split",
)
# keys added later: hashed only when set, so older keys stay the same
OPTIONAL = ("split_by", "group_split")
TINY = 1e-12  # a spread below this is floating-point noise, not a difference


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
    tests: dict[int, str] = field(default_factory=dict)  # seed -> digest of its test cells
    one_class: dict[int, str] = field(default_factory=dict)  # seed -> the class it always said
    scope: str = ""  # configurations of one scope were scored on the same cells per seed

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
        """(mean, sample sd (0 for one value), number of seeds with a value) of ``metric``."""
        v = np.array(list(self.values(metric).values()), dtype=float)
        if not len(v):
            return math.nan, math.nan, 0
        with np.errstate(all="ignore"):  # 1e308 in a hand-edited metrics.json: inf, no warning
            return float(v.mean()), _sd(v), len(v)

    def text(self, metric: str) -> str:
        """``mean ± sd`` as every view shows it, with "(n of N)" when some seeds lack the
        metric; '' when none has it."""
        mean, sd, n = self.summary(metric)
        if not n:
            return ""
        out = f"{_g(mean, 4)} ± {_g(sd, 2)}" if n > 1 else _g(mean, 4)
        return out + (f" ({n} of {len(self.runs)})" if n != len(self.runs) else "")


def _g(v: float, digits: int) -> str:
    """``digits`` significant digits, trailing zeros kept (1 reads 1.000 beside 0.9915; it read
    "1 ± 0"), without a bare point (1467, not "1467.")."""
    return f"{v:#.{digits}g}".rstrip(".").replace(".e", "e")


def _sd(v: np.ndarray) -> float:
    if len(v) < 2:
        return 0.0
    with np.errstate(all="ignore"):  # numpy's overflow warning reached the CLI's stderr
        sd = float(v.std(ddof=1))
    return 0.0 if sd <= TINY * max(1.0, float(np.abs(v).max())) else sd


def _finite(v: Any) -> bool:
    """A number a float holds (an int of 400 digits in a hand-edited metrics.json is not)."""
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        return False
    try:
        return math.isfinite(float(v))
    except OverflowError:
        return False


def _hash(spec: dict[str, Any], keys: tuple[str, ...]) -> str:
    core = {k: spec.get(k) for k in keys if k not in OPTIONAL or spec.get(k)}
    text = json.dumps(core, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def test_cells(run_dir: Path) -> str | None:
    """A digest of the cells a run was scored on (its split's test indices), or None when the
    run has no readable split. With the scope's data fingerprint (values and cell names) it says
    whether two runs of one seed were scored on the same cells: the same seed stratified over
    other labels (a re-annotated copy of the data) splits otherwise."""
    path = Path(run_dir) / "split.npz"
    if not runs.regular_file(path, 2**31):  # a named pipe in its place hung Compare
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            test = np.sort(np.asarray(z["test"], dtype=np.int64))
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile):  # a damaged .npz
        return None
    return hashlib.sha256(test.tobytes()).hexdigest()[:16]


def config_key(spec: dict[str, Any]) -> str:
    """The same key for runs that differ only by seed (and where or as what they ran)."""
    from engine import models

    spec = {**spec, "params": models.recorded_params(spec.get("model"), spec.get("params"))}
    return _hash(spec, _CONFIG)


def group(run_dirs: list[Path], parts: Any = None) -> list[Config]:
    """Completed runs grouped into configurations, in the order first seen. ``parts(metrics)``
    may split one run's metrics into named rows (scGen's baselines): ``{"": own, name: ...}``."""
    from engine import models as registry

    configs: dict[str, Config] = {}
    for d in run_dirs:
        d = Path(d)
        if runs.read_status(d).get("state") != "completed":
            continue
        spec = runs.read_json(d / "run.json", {}) or {}
        metrics = runs.read_metrics(d / "metrics.json", {}) or {}
        if not isinstance(spec, dict) or not isinstance(metrics, dict) or "model" not in spec:
            continue
        try:
            seed = int(spec["seed"])
        except (KeyError, TypeError, ValueError, OverflowError):
            continue  # without its seed a run cannot be paired
        numbers = {k: float(v) for k, v in metrics.items() if _finite(v)}
        if not numbers:
            continue
        split = parts(numbers) if parts else {"": numbers}
        for part, values in split.items():
            key = config_key(spec) + (f"/{part}" if part else "")
            model = spec["model"] if not part else f"{spec['model']} · {part}"
            if isinstance(spec.get("split_by"), str) and spec["split_by"]:
                model += f" · held-out {spec['split_by']}"  # else two rows read the same
            try:
                base = bool(part) or registry.get(spec["model"]).baseline
            except Exception:  # noqa: BLE001 - a model this version no longer has
                base = False
            c = configs.setdefault(
                key,
                Config(
                    key,
                    model,
                    str(spec.get("dataset_name") or ""),
                    baseline=base,
                    scope=_hash(spec, _SCOPE),
                ),
            )
            if seed in c.runs:  # the same configuration and seed twice: keep the first
                continue
            c.runs[seed] = values
            c.run_ids[seed] = d.name
            if not part and (only := predicted_one_class(metrics)) is not None:
                c.one_class[seed] = only
            digest = test_cells(d)
            if digest:
                c.tests[seed] = digest
    out = list(configs.values())
    _label(out)
    return out


def _label(configs: list[Config]) -> None:
    names = [f"{c.model} · {c.dataset}" if c.dataset else c.model for c in configs]
    for c, n in zip(configs, names, strict=True):
        c.label = n if names.count(n) == 1 else f"{n} [{c.key[:6]}]"


def metrics_of(configs: list[Config]) -> list[str]:
    """Every metric any configuration has, in first-seen order."""
    seen: dict[str, None] = {}
    for c in configs:
        for m in c.runs.values():
            seen.update(dict.fromkeys(m))
    return list(seen)


def table(configs: list[Config], metrics: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per configuration: seeds (runs), then for each metric ``<metric>`` (mean),
    ``<metric>_sd``, ``<metric>_n`` (seeds with a value), ``<metric>_text`` (``Config.text``)
    and ``<metric>_values`` (seed -> value, for hover text)."""
    keys = metrics or metrics_of(configs)
    rows = []
    for c in configs:
        row: dict[str, Any] = {"model": c.label, "baseline": c.baseline, "seeds": len(c.runs)}
        for k in keys:
            mean, sd, n = c.summary(k)
            if n:
                row[k] = mean
                row[f"{k}_sd"] = sd
                row[f"{k}_n"] = n
                row[f"{k}_text"] = c.text(k)
                row[f"{k}_values"] = c.values(k)
        rows.append(row)
    for k in keys:
        _align(rows, k)
    return rows


MAX_PLACES = 6  # a column whose spread needs more decimals keeps significant digits per row


def _align(rows: list[dict[str, Any]], k: str) -> None:
    """One number of decimals for every ``mean ± sd`` of metric ``k`` (the column a table
    shows): two significant digits of its smallest spread. Each row had its own (0.9915 ±
    0.0030 above 0.891 ± 0.012: a browser pass), so a column's decimals did not line up."""
    spreads = [r[f"{k}_sd"] for r in rows if r.get(f"{k}_n", 0) > 1]
    spreads = [v for v in spreads if math.isfinite(v) and v > 0]
    if not spreads:
        return
    places = max(0, 1 - math.floor(math.log10(min(spreads))))
    if places > MAX_PLACES or not all(math.isfinite(r.get(k, 0.0)) for r in rows):
        return
    for r in rows:
        if k not in r:
            continue
        text = f"{r[k]:.{places}f}" + (f" ± {r[f'{k}_sd']:.{places}f}" if r[f"{k}_n"] > 1 else "")
        of = r[f"{k}_text"].rpartition(" (")  # "(n of N)" when some seeds lack the metric
        r[f"{k}_text"] = text + (f" ({of[2]}" if of[1] else "")


def _places(*values: float) -> int:
    """Decimals that show two significant digits of the largest of ``values``, the same for
    a difference and its spread (they were printed with 4 and 2 significant digits)."""
    top = max((abs(v) for v in values if math.isfinite(v)), default=0.0)
    return 2 if top == 0 else max(2, 1 - math.floor(math.log10(top)))


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
    other_cells: int = 0  # shared seeds left out: the two runs were scored on other cells
    losses: int = 0  # seeds where b is better than a (ties are neither)

    def _winner(self) -> str | None:
        better = metric_names.better(self.metric)
        if better is None or self.diff == 0:
            return None
        return self.a if (self.diff > 0) == (better == "higher") else self.b

    @property
    def verdict(self) -> str:
        if self.n == 0:
            if self.other_cells:
                return "scored on other test cells on every shared seed: nothing to pair"
            return "no seed in common: nothing to pair"
        if self.n < 2:
            return "one shared seed: no seed-to-seed spread to compare against"
        winner = self._winner()
        if not math.isfinite(self.p):  # no spread in the differences
            if self.diff == 0:
                return "the same value on every seed: no difference"
            return (
                f"{winner} is better by the same amount on every seed"
                if winner
                else "the same difference on every seed"
            )
        if self.p < 0.05:
            where = "the difference is larger than the seed-to-seed spread"
            return f"{winner} is better: {where} (p = {self.p:.3g})" if winner else where
        if winner and self.n in (self.wins, self.losses):  # one way on every seed, too few
            return (
                f"{winner} is better on every seed, but with {self.n} seeds that is not beyond "
                f"the seed-to-seed spread (p = {self.p:.2g}): no clear winner yet; more seeds "
                "would tell"
            )
        return f"within the seed-to-seed spread (p = {self.p:.2g}): no clear winner"

    def text(self) -> str:
        if self.n == 0:
            return f"{self.a} − {self.b}: {self.verdict}."
        left = (
            f"; {self.other_cells} shared seed{'s' if self.other_cells != 1 else ''} left out "
            "(scored on other test cells)"
            if self.other_cells
            else ""
        )
        if self.diff == 0 and self.sd == 0:  # it read "+0.00 ± 0.00" beside real differences
            return f"{self.a} − {self.b}: {metric_names.name(self.metric)}: {self.verdict}{left}."
        places = _places(self.diff, self.sd)
        # one seed has no spread: "± 0.000" read as a measured one (a browser pass)
        spread = f" ± {self.sd:.{places}f}" if self.n > 1 else ""
        return (
            f"{self.a} − {self.b}: {metric_names.name(self.metric)} {self.diff:+.{places}f}"
            f"{spread} (paired over {self.n} seed{'s' if self.n != 1 else ''}; "
            f"{self.a} better on {self.wins} of {self.n}{left}): {self.verdict}."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (NaN as None)."""
        keys = ("a", "b", "metric", "n", "diff", "sd", "p", "wins", "losses", "other_cells")
        d = {k: getattr(self, k) for k in keys}
        d = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()
        }
        return d | {"verdict": self.verdict}


def paired(a: Config, b: Config, metric: str) -> Paired:
    """``a`` against ``b`` on the seeds both ran on the same test cells: mean and sd of the
    per-seed differences and a paired t-test. A shared seed whose two runs were scored on other
    cells (their split digests differ) is left out and counted."""
    va, vb = a.values(metric), b.values(metric)
    both = sorted(set(va) & set(vb))
    shared = [s for s in both if not (s in a.tests and s in b.tests and a.tests[s] != b.tests[s])]
    d = np.array([va[s] - vb[s] for s in shared], dtype=float)
    n = len(d)
    sd = _sd(d)
    with np.errstate(all="ignore"):
        diff = float(d.mean()) if n else math.nan
    if n and sd == 0 and abs(diff) <= TINY:  # equal on every seed up to float noise
        diff = 0.0
    p = math.nan
    if n > 1 and sd > 0:
        from scipy import stats

        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p = float(stats.ttest_rel([va[s] for s in shared], [vb[s] for s in shared]).pvalue)
    higher = metric_names.better(metric) != "lower"
    wins = int(((d > 0) if higher else (d < 0)).sum()) if n else 0
    losses = int(((d < 0) if higher else (d > 0)).sum()) if n else 0
    return Paired(
        a.label, b.label, metric, n, diff, sd, p, wins, len(both) - len(shared), losses=losses
    )


def primary_metric(configs: list[Config]) -> str | None:
    """The metric a comparison leads with: the first ranked one most configurations have."""
    order = (
        "test_accuracy",
        "abnormality_auroc",
        "r2_mean_all",
        "latent_knn_accuracy",
        "test_f1_macro",
        "test_mse",
    )
    have = [set(k for m in c.runs.values() for k in m) for c in configs]
    ranked = [k for k in metrics_of(configs) if metric_names.ranked(k)]
    candidates = [k for k in order if k in ranked] + [k for k in ranked if k not in order]
    if not candidates:
        return None
    return max(candidates, key=lambda k: (sum(k in h for h in have), -candidates.index(k)))


MAX_PAIRS = 30


def pairs(configs: list[Config], metric: str) -> list[Paired]:
    """Every two configurations of one scope (same data, label and task: the same test cells
    per seed) that share a seed and have the metric; a model comes before a baseline."""
    out = []
    for i, a in enumerate(configs):
        for b in configs[i + 1 :]:
            if a.scope != b.scope:
                continue
            x, y = (b, a) if a.baseline and not b.baseline else (a, b)
            p = paired(x, y, metric)
            if p.n or p.other_cells:
                out.append(p)
    return out[:MAX_PAIRS]


def clear_best(configs: list[Config], metric: str) -> Config | None:
    """The configuration whose mean is best and which is better than every other one, paired
    by seed, beyond the seed-to-seed spread (p < 0.05, or better by the same amount on every
    seed); None where there is no such one, or where the configurations span several scopes
    (other data or labels: their values do not rank). A table marked the best mean green while
    the verdict under it said 'no clear winner'."""
    better = metric_names.better(metric)
    have = [c for c in configs if c.summary(metric)[2]]
    if better is None or len(have) < 2 or len({c.scope for c in have}) > 1:
        return None
    sign = 1 if better == "higher" else -1
    best = max(have, key=lambda c: sign * c.summary(metric)[0])
    for other in have:
        if other is best:
            continue
        p = paired(best, other, metric)
        beyond = p.n >= 2 and (p.p < 0.05 if math.isfinite(p.p) else p.sd == 0)
        if not (beyond and sign * p.diff > 0):
            return None
    return best


def repeated_splits(configs: list[Config]) -> list[str]:
    """One sentence per configuration whose seeds were scored on the same test cells more than
    once (groups held out with the ``shuffle`` scheme, or more seeds than there are groups to
    hold out): its ± counts one split several times and reads smaller than the spread over
    splits."""
    out = []
    for c in configs:
        same: dict[str, list[int]] = {}
        for seed in c.seeds:
            if seed in c.tests:
                same.setdefault(c.tests[seed], []).append(seed)
        repeats = [v for v in same.values() if len(v) > 1]
        if not repeats:
            continue

        def seeds_text(v: list[int]) -> str:
            return ", ".join(map(str, v[:-1])) + f" and {v[-1]}"

        which = f"seeds {seeds_text(repeats[0])} were scored on the same test cells" + "".join(
            f", seeds {seeds_text(v)} on other shared ones" for v in repeats[1:]
        )
        n_splits = len(same) + sum(1 for s in c.seeds if s not in c.tests)
        out.append(
            f"{c.label or c.model}: {which}, so its {len(c.runs)} seeds hold {n_splits} "
            f"different split{'s' if n_splits != 1 else ''} and its ± leaves out how much the "
            "split moves the score."
        )
    return out


def predicted_one_class(metrics: dict[str, Any]) -> str | None:
    """The class a classifier predicted for every test cell of two or more classes (from its
    confusion matrix: rows true, columns predicted), else None. Such a model has learned
    nothing (a browser pass: an MLP of 20 epochs said 'progenitor' for every cell, and Compare
    called the logistic regression better beyond the seed-to-seed spread, without a word)."""
    confusion, classes = metrics.get("confusion"), metrics.get("classes")
    try:
        m = np.asarray(confusion, dtype=float)
    except (TypeError, ValueError):
        return None
    if m.ndim != 2 or m.shape[0] != m.shape[1] or not isinstance(classes, list):
        return None
    if len(classes) != m.shape[0] or not np.isfinite(m).all() or (m.sum(axis=1) > 0).sum() < 2:
        return None
    used = np.flatnonzero(m.sum(axis=0) > 0)
    return str(classes[int(used[0])]) if len(used) == 1 else None


NOT_LEARNED = (
    "the model has not learned, so its scores say nothing of what it can do; train it longer "
    "(Max epochs) or check its settings"
)


def one_class_runs(configs: list[Config]) -> list[str]:
    """One sentence per configuration with seeds that predicted one class for every test cell."""
    out = []
    for c in configs:
        if not c.one_class:
            continue
        seeds_ = sorted(c.one_class)
        said = sorted(set(c.one_class.values()))
        out.append(
            f"{c.label or c.model}: seed{'s' if len(seeds_) > 1 else ''} "
            f"{', '.join(map(str, seeds_))} of {len(c.runs)} predicted one class "
            f"({', '.join(said)}) for every test cell: {NOT_LEARNED}."
        )
    return out


def scopes(configs: list[Config]) -> int:
    """How many distinct scopes (data, label, task) the configurations span."""
    return len({c.scope for c in configs})
