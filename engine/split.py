"""The train/validation/test split: seeded, stratified, and the same for every model of a
comparison (a torch-free module, so the app can check a split before a worker starts)."""

from __future__ import annotations

from typing import Any

import numpy as np

from engine.errors import ScwbError


def make_split(
    n_obs: int,
    seed: int,
    val: float = 0.1,
    test: float = 0.1,
    stratify: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Seeded train/val/test row indices, stratified by ``stratify`` when given."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(n_obs)
    min_needed = 3 if test > 0 else 2
    if n_obs < min_needed * 2:
        raise ScwbError(
            f"Only {n_obs} cells: a train/validation/test split needs at least {min_needed * 2}."
        )
    if stratify is not None:
        values, counts = np.unique(stratify, return_counts=True)
        if counts.min() < min_needed:
            small = str(values[counts.argmin()])
            raise ScwbError(
                f"The class {small!r} has {counts.min()} cell(s); the split needs at least {min_needed} per class: "
                "drop it (Preprocess > subset) or merge it."
            )
    hold = val + test
    train, rest = train_test_split(idx, test_size=hold, random_state=seed, stratify=stratify)
    if test <= 0:
        return {"train": np.sort(train), "val": np.sort(rest), "test": np.array([], dtype=int)}
    strat_rest = stratify[rest] if stratify is not None else None
    v, t = train_test_split(rest, test_size=test / hold, random_state=seed, stratify=strat_rest)
    return {"train": np.sort(train), "val": np.sort(v), "test": np.sort(t)}


def train_on_mask(obs: Any, train_on: dict[str, list[str]] | None) -> np.ndarray | None:
    """Cells a run trains on (every column's value among its listed values), or None for all."""
    if not train_on:
        return None
    keep = np.ones(len(obs), dtype=bool)
    for key, values in train_on.items():
        if key not in obs:
            raise ScwbError(f"--train-on: obs has no column {key!r}.")
        col = obs[key].astype(str)
        present = set(col)
        missing = [v for v in values if v not in present]
        if missing:
            raise ScwbError(
                f"--train-on: the column {key!r} has no value {missing[0]!r}; it holds {', '.join(sorted(present)[:10])}."
            )
        keep &= col.isin(values).to_numpy()
    return keep


def restrict(split: dict[str, np.ndarray], keep: np.ndarray | None) -> dict[str, np.ndarray]:
    """Train and validate on ``keep`` cells only; the test part keeps every cell."""
    if keep is None:
        return split
    out = dict(split)
    out["train"] = split["train"][keep[split["train"]]]
    out["val"] = split["val"][keep[split["val"]]]
    if len(out["train"]) < 2 or len(out["val"]) < 1:
        raise ScwbError("Too few cells in the chosen training subset to train on.")
    return out
