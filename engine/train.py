"""Running one training: data -> task -> split -> fit -> annotate -> evaluate -> run folder.

``run(spec)`` does all of it in the calling process (the CLI's ``train``; a job's worker calls it
in its own process). Everything it produces lands in ``spec.out`` as the run-folder contract says.
The task object (engine.tasks) owns the input setup, training and result slots; this module only
orders the steps and writes the folder. In a multi-device run every rank runs this function and
only rank 0 writes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl

from engine import device as devices
from engine import io, results, runs, tasks, toolkit
from engine.errors import ScwbError
from engine.preflight import preflight
from engine.spec import RunSpec


def _record(spec: RunSpec, adata, run_dir: Path, dev: str, fingerprint: str) -> dict[str, Any]:
    recipe = adata.uns.get("recipe")
    if isinstance(recipe, str):
        try:
            recipe = json.loads(recipe)
        except (ValueError, RecursionError):  # the file's own text: not a recipe we can record
            recipe = None
    earlier = runs.read_json(run_dir / "run.json", {}) or {}
    submitted = earlier.get("submitted_ns")  # the runs listing's order within one submission
    return {
        **spec.to_dict(),
        "created": earlier.get("created") or runs.now(),
        **({"submitted_ns": submitted} if isinstance(submitted, int) else {}),
        "data_fingerprint": fingerprint,
        "data_shape": list(adata.shape),
        "recipe": recipe if isinstance(recipe, dict) else None,
        "device_requested": spec.device,
        "device_used": dev,
        "device_name": devices.device_name(dev),
        "versions": toolkit.versions(),
    }


def run(spec: RunSpec) -> dict[str, Any]:
    """Train and evaluate ``spec`` into ``spec.out``; return the final metrics ({} on the
    extra ranks of a multi-device run)."""
    run_dir = Path(spec.out)
    writer = toolkit.is_rank_zero()
    if writer:  # a cancel file already there is honoured (it may come just before training)
        run_dir.mkdir(parents=True, exist_ok=True)
    dev = devices.resolve(spec.device)
    if not {"SLURM_JOB_ID", "SCWB_NUM_NODES"} & set(os.environ):  # else a scheduler granted them
        devices.check_count(dev, spec.devices)  # (each SLURM task may see one core)
    pl.seed_everything(spec.seed, workers=False, verbose=False)
    adata = io.read(spec.data)
    fingerprint = io.fingerprint(adata)
    if spec.data_fingerprint and spec.data_fingerprint != fingerprint:
        raise ScwbError(
            f"The data changed since this run was submitted (fingerprint {spec.data_fingerprint}, "
            f"now {fingerprint}): submit the run again on the current data."
        )
    preflight(spec, adata)
    task = tasks.create(spec, adata)
    if writer:
        record = _record(spec, adata, run_dir, dev, fingerprint)
        runs.write_json(run_dir / "run.json", record)
        runs.update_status(
            run_dir,
            state="running",
            started=runs.read_status(run_dir).get("started") or runs.now(),
            device=record["device_name"],
            max_epochs=spec.epochs if spec.info.kind == "torch" else 1,
            epoch=0,
        )
    split = task.make_split(adata, spec)
    if writer:
        np.savez(run_dir / "split.npz", **split)
    cancelled = task.fit(adata, split, toolkit.FitContext.from_spec(spec, run_dir, dev))
    if not writer:
        return {}  # the other ranks only help to train
    task.share_input = True  # this run read adata itself and drops it: no copy of its matrices
    out, sample = results.annotate(task, adata, seed=spec.seed)  # per-gene: a sample at scale
    metrics = task.evaluate(out, split, spec)
    results.mark_split(task, out, split)
    task.save(run_dir)
    runs.write_json(run_dir / "metrics.json", metrics)
    results.write(run_dir, out, sample)
    runs.update_status(
        run_dir,
        state="cancelled" if cancelled else "completed",
        finished=runs.now(),
        eta_s=0,
        peak_memory_mb=runs.peak_memory_mb(),
    )
    return metrics
