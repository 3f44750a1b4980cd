"""One object per task (classify, reconstruct, embed, perturb): input setup, ``fit``, and
``annotate(adata)``, which writes every result slot. Training and ``engine predict`` both call
``annotate``, so they cannot disagree.

Adding a task is one module here and one line in ``TASK_CLASSES``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from engine import runs
from engine.errors import ScwbError

TASK_CLASSES = {
    "classify": "engine.tasks.classify:Classify",
    "reconstruct": "engine.tasks.reconstruct:Reconstruct",
    "embed": "engine.tasks.embed:Embed",
    "perturb": "engine.tasks.perturb:Perturb",
}


def task_class(task: str):
    module, _, name = TASK_CLASSES[task].partition(":")
    return getattr(importlib.import_module(module), name)


def create(spec: Any, adata: Any):
    """A new, untrained task object for ``spec`` on ``adata`` (validates the data)."""
    return task_class(spec.task).create(spec, adata)


def load(run_dir: str | Path):
    """The trained task of a finished run (weights only, never a pickle)."""
    run_dir = Path(run_dir)
    meta = runs.read_json(run_dir / "model.json")
    if not isinstance(meta, dict) or not (run_dir / "model.pt").exists():
        raise ScwbError(
            f"{run_dir} holds no saved model (model.pt + model.json); did the run finish?"
        )
    if "setup" not in meta:
        raise ScwbError(
            f"{run_dir} was saved by an older scWorkbench (no input setup in model.json): train it again."
        )
    from engine import models, preflight

    damaged = f"{run_dir}/model.json does not describe a model this version can load"
    setup, params = meta.get("setup"), meta.get("params", {})
    if not isinstance(meta.get("model"), str) or not isinstance(setup, dict):
        raise ScwbError(f"{damaged}: train the run again.")
    if not isinstance(params, dict):
        raise ScwbError(f"{damaged} (its params are not a table): train the run again.")
    info = models.get(meta["model"])
    names, classes = setup.get("var_names"), setup.get("classes")
    if not isinstance(names, list) or not all(isinstance(g, str) for g in names):
        raise ScwbError(f"{damaged} (its gene names are not a list of names): train the run again.")
    if info.task == "classify" and (
        not isinstance(classes, list)
        or len(classes) < 2
        or not all(isinstance(c, str | int | float) for c in classes)
    ):
        raise ScwbError(f"{damaged} (it names no two classes): train the run again.")
    if isinstance(classes, list) and len({str(c) for c in classes}) != len(classes):
        raise ScwbError(f"{damaged} (it names a class twice): train the run again.")
    if len(set(names)) != len(names):  # 'HES4' for every gene aligned any data silently
        raise ScwbError(f"{damaged} (it names a gene twice): train the run again.")
    try:  # the sizes it names are built before any weight is read: never past the budget
        n_in = int(meta.get("n_in") or len(names))
        n_out = len(classes or [])
        if info.kind == "torch":
            preflight.check_size(info, {**info.defaults(), **params}, n_in, n_out, training=False)
        return task_class(info.task).load(run_dir, meta)
    except ScwbError:
        raise
    except Exception as exc:  # a field of the wrong type, weights of another shape
        raise ScwbError(
            f"{run_dir}/model.json and model.pt do not describe a model this version can load "
            f"({type(exc).__name__}): train the run again."
        ) from None
