"""The train/validation/test split: seeded, stratified, and the same for every model of a
comparison (a torch-free module, so the app can check a split before a worker starts)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from engine.errors import ScwbError


def make_split(
    n_obs: int,
    seed: int,
    val: float = 0.1,
    test: float = 0.1,
    stratify: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Seeded train/val/test row indices, stratified by ``stratify`` when given.

    Each class is shuffled and cut on its own (``val`` and ``test`` shares, rounded, at least one
    cell each), so a class of three cells still lands in all three parts: no two-step split can
    leave a rare class with a single held-out cell to divide.
    """
    min_needed = 3 if test > 0 else 2
    if n_obs < min_needed * 2:
        raise ScwbError(
            f"Only {n_obs} cells: a train/validation/test split needs at least {min_needed * 2}."
        )
    groups = np.zeros(n_obs, dtype=int) if stratify is None else np.asarray(stratify)
    values, codes, counts = np.unique(groups, return_inverse=True, return_counts=True)
    if counts.min() < min_needed:
        small = str(values[counts.argmin()])
        raise ScwbError(
            f"The class {small!r} has {counts.min()} cell(s); the split needs at least {min_needed} per class: "
            "drop it (Preprocess > subset) or merge it."
        )
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {"train": [], "val": [], "test": []}
    for code, n in enumerate(counts):
        rows = rng.permutation(np.flatnonzero(codes == code))
        n_test, n_val = _shares(int(n), val, test)
        parts["test"].append(rows[:n_test])
        parts["val"].append(rows[n_test : n_test + n_val])
        parts["train"].append(rows[n_test + n_val :])
    return {k: np.sort(np.concatenate(v)).astype(np.int64) for k, v in parts.items()}


def group_split(
    groups: np.ndarray,
    seed: int,
    val: float = 0.1,
    test: float = 0.1,
    key: str = "the column",
    scheme: str = "rotate",
) -> dict[str, np.ndarray]:
    """Seeded train/val/test row indices where each group (a donor, a sample) lies in one part
    only: ``test`` and ``val`` are shares of the groups, at least one each, the rest train (the
    cells' shares follow the groups' sizes). A random split puts every donor's cells in
    training and test, so its test score says how well the model knows cells of donors it has
    seen, not of a new one.

    ``rotate`` (the default): the groups in one fixed order, cut into
    ``distinct_group_splits(k)`` test blocks; seed s tests block ``s % blocks`` and validates
    on the groups after it (group k-fold), so any ``blocks`` seeds in a row test every group
    once; a later round tests the same blocks with other validation groups. ``shuffle``: each
    seed draws its groups at random (runs made before 2026-11-28): with 5 donors, seeds 0, 2
    and 4 tested the same one and gave one result three times, which a mean ± sd over seeds
    counted as three."""
    text = np.asarray(groups).astype(str)
    values, codes = np.unique(text, return_inverse=True)
    k = len(values)
    if k < 3:
        raise ScwbError(
            f"Holding out groups of {key!r} needs at least 3 of them (training, validation and "
            f"test); it has {k}."
        )
    n_test, n_val = _group_shares(k, val, test)
    part_of = np.full(k, "train", dtype=object)
    if scheme == "rotate":  # a block may hold one group more than n_test: validation fits
        n_val = min(n_val, k - 1 - -(-k // distinct_group_splits(k, val, test)))
    if scheme == "shuffle":
        order = np.random.default_rng(seed).permutation(k)
        part_of[order[:n_test]] = "test"
        part_of[order[n_test : n_test + n_val]] = "val"
    elif scheme == "rotate":
        n_blocks = distinct_group_splits(k, val, test)
        cycle, fold = divmod(int(seed), n_blocks)
        # one order of the (sorted) group names for every seed, cut into near-equal blocks that
        # never overlap and together hold every group (17 groups, 2 a test: 8 blocks of 2 or 3;
        # blocks of 2 alone left one group out of every test)
        order = np.random.default_rng(0).permutation(k)
        blocks = np.array_split(order, n_blocks)
        test_ids = blocks[fold]
        rest = np.concatenate([*blocks[fold + 1 :], *blocks[:fold]])
        part_of[test_ids] = "test"
        # the block after the test one validates; each later round of seeds moves it on
        part_of[np.roll(rest, -cycle * n_val)[:n_val]] = "val"
    else:
        raise ScwbError(f"Unknown group split {scheme!r}; use rotate or shuffle.")
    parts = part_of[codes]
    return {p: np.flatnonzero(parts == p).astype(np.int64) for p in ("train", "val", "test")}


def _group_shares(k: int, val: float = 0.1, test: float = 0.1) -> tuple[int, int]:
    """How many of ``k`` groups are tested and validated on (at least one each, one trains)."""
    n_test = min(max(int(round(test * k)), 1), k - 2)
    n_val = min(max(int(round(val * k)), 1), k - 1 - n_test)
    return n_test, n_val


def distinct_group_splits(k: int, val: float = 0.1, test: float = 0.1) -> int:
    """How many seeds in a row the ``rotate`` scheme gives different test groups (``k``
    groups): after that, the test groups repeat."""
    return k // _group_shares(k, val, test)[0] if k >= 3 else 0


def groups_tested(names: list[str], seeds: list[int], scheme: str = "rotate") -> dict[int, tuple]:
    """The groups each seed tests on, for groups named ``names`` (a form says before Submit
    how many different test sets a range of seeds gives)."""
    names = sorted(set(map(str, names)))
    out = {}
    for seed in seeds:
        test = group_split(np.array(names), seed, scheme=scheme)["test"]
        out[seed] = tuple(names[i] for i in test)
    return out


def group_part_sizes(counts: dict[str, int], seed: int, scheme: str = "rotate") -> dict[str, int]:
    """Cells in train, val and test when the groups of ``counts`` (group -> cells) are held
    out with ``seed``: a form's estimate counts the training cells the run will have."""
    names = sorted(map(str, counts))
    split = group_split(np.array(names), seed, scheme=scheme)
    sizes = {str(k): int(v) for k, v in counts.items()}
    return {part: sum(sizes[names[i]] for i in rows) for part, rows in split.items()}


def _shares(n: int, val: float, test: float) -> tuple[int, int]:
    """How many of a class's ``n`` cells go to test and to validation (the rest train)."""
    n_test = max(int(round(n * test)), 1) if test > 0 else 0
    n_val = max(int(round(n * val)), 1)
    while n_test + n_val > n - 1:  # keep at least one training cell
        if n_val >= n_test and n_val > 1:
            n_val -= 1
        elif n_test > 1:
            n_test -= 1
        else:
            break
    return n_test, n_val


def split_for(obs: Any, spec: Any, stratify: np.ndarray | None) -> dict[str, np.ndarray]:
    """The split a run trains and is scored on: whole groups of ``spec.split_by`` held out, or
    cells drawn at random (stratified by ``stratify``); then restricted to ``spec.train_on``.
    Classes must be in training: a held-out donor can hold a cell type no other donor has."""
    key = getattr(spec, "split_by", None)
    if key:
        if key not in obs:
            raise ScwbError(f"--split-by: obs has no column {key!r}.")
        # missing values were one group "nan", used as a whole validation or test set (a
        # hostile pass); refused as scGen's cell-type column refuses them
        n_missing = int(pd.isna(obs[key]).sum())
        if n_missing:
            raise ScwbError(
                f"--split-by {key}: {n_missing:,} cells have no value in obs[{key!r}]; drop "
                "those cells first (Preprocess, subset) or hold out another column."
            )
        scheme = getattr(spec, "group_split", None) or "rotate"
        split = group_split(obs[key].to_numpy(), spec.seed, key=key, scheme=scheme)
        if stratify is not None and getattr(spec, "task", "classify") == "classify":
            missing = sorted(set(stratify[split["test"]]) - set(stratify[split["train"]]))
            if missing:
                held = ", ".join(sorted(set(obs[key].astype(str).to_numpy()[split["test"]])))
                alone = set(single_group_classes(obs[key].to_numpy(), stratify))
                way = (
                    f"each is in one {key} only, so no seed can train on it while that one is "
                    "tested: split at random, or hold out another column"
                    if alone >= set(missing)
                    else "try another seed or split at random"
                )
                raise ScwbError(
                    f"With {key!r} held out (test: {held}), {len(missing)} class(es) have no "
                    f"training cell ({', '.join(map(str, missing[:3]))}): {way}."
                )
    else:
        split = make_split(len(obs), spec.seed, stratify=stratify)
    return restrict(split, train_on_mask(obs, spec.train_on))


def single_group_classes(groups: Any, labels: Any) -> list[str]:
    """Classes whose cells all lie in one group: holding out whole groups leaves each without
    a training cell whenever its group is tested (a sample per cluster, in a CytOF file, was
    suggested as the held-out column: a browser pass)."""
    g, _ = pd.factorize(np.asarray(groups).astype(str))
    y, names = pd.factorize(np.asarray(labels).astype(str), sort=True)
    pairs = np.unique(g.astype(np.int64) * len(names) + y)  # each (group, class) met, once
    spread = np.bincount(pairs % len(names), minlength=len(names)) if len(names) else []
    return [str(names[i]) for i, n in enumerate(spread) if n < 2]


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
