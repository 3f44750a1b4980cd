"""Using a saved model on new data: the run's own task object loads it (weights only, never a
pickle) and ``annotate`` writes the same slots as training did.

A model refuses data whose genes differ from its own unless ``align=True``: then genes are put in
the model's order, missing ones filled with zeros and reported, and extra ones dropped. Genes in
another order are reordered (nothing is lost).
"""

from __future__ import annotations

from pathlib import Path

import anndata as ad

from engine import tasks
from engine.errors import ScwbError


def load(run_dir: str | Path):
    """The trained task object of a finished run."""
    return tasks.load(run_dir)


def predict(run_dir: str | Path, adata: ad.AnnData, align: bool = False) -> ad.AnnData:
    """Apply a saved model to ``adata``; outputs land in the same slots as in training."""
    task = tasks.load(run_dir)
    try:
        return task.annotate(adata, align=align)
    except (IndexError, KeyError, TypeError) as exc:  # a run folder edited by hand
        raise ScwbError(
            f"{run_dir}: its model.json and its weights disagree ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}); train the run again."
        ) from None
