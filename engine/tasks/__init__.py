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
    from engine import models

    info = models.get(meta.get("model", "?"))
    return task_class(info.task).load(run_dir, meta)
