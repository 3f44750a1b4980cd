"""The run folder (a contract): atomic writes and tolerant reads.

RUN_DIR holds ``run.json`` (what was asked), ``status.json`` (where it stands), ``metrics.csv``
(one row per epoch), ``metrics.json`` (final test metrics), ``model.pt`` + ``model.json``
(weights and how to rebuild them), ``split.npz`` and ``results.h5ad``. Every file is written to a
temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import csv
import json
import os
import secrets
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STATES = ("queued", "running", "completed", "failed", "cancelled", "interrupted")
ACTIVE = ("queued", "running")


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def new_run_id(model: str) -> str:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{model}-{secrets.token_hex(2)}"


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def read_json(path: Path, default: Any = None) -> Any:
    """The parsed file, or ``default`` when it is missing or corrupt."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return default


def read_status(run_dir: Path) -> dict[str, Any]:
    status = read_json(Path(run_dir) / "status.json")
    if not isinstance(status, dict) or status.get("state") not in STATES:
        return {"state": "failed", "error": "status.json is missing or corrupt", "corrupt": True}
    return status


def update_status(run_dir: Path, **fields: Any) -> dict[str, Any]:
    """Merge ``fields`` into status.json (atomically) and stamp ``updated``."""
    path = Path(run_dir) / "status.json"
    status = read_json(path, {}) or {}
    status.update(fields)
    status["updated"] = now()
    write_json(path, status)
    return status


def write_metrics_csv(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    tmp = Path(run_dir) / f".metrics.csv.{os.getpid()}.tmp"
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, Path(run_dir) / "metrics.csv")


def read_metrics_csv(run_dir: Path):
    """Per-epoch metrics as a DataFrame (empty when none yet)."""
    import pandas as pd

    try:
        return pd.read_csv(Path(run_dir) / "metrics.csv")
    except (OSError, ValueError):
        return pd.DataFrame()


def summary(run_dir: Path) -> dict[str, Any]:
    """One row for run listings, never raising on a damaged folder."""
    run_dir = Path(run_dir)
    spec = read_json(run_dir / "run.json", {}) or {}
    status = read_status(run_dir)
    return {
        "id": run_dir.name,
        "path": str(run_dir),
        "model": spec.get("model", "?"),
        "task": spec.get("task", "?"),
        "dataset": spec.get("dataset_name") or Path(str(spec.get("data", "?"))).name,
        "created": spec.get("created", ""),
        "group": spec.get("group"),
        **{
            k: status.get(k)
            for k in (
                "state",
                "epoch",
                "max_epochs",
                "cells_per_s",
                "elapsed_s",
                "eta_s",
                "device",
                "error",
                "train_loss",
                "val_loss",
            )
        },
    }


def list_runs(root: Path) -> list[dict[str, Any]]:
    root = Path(root)
    if not root.exists():
        return []
    rows = [summary(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return sorted(rows, key=lambda r: (r["created"] or "", r["id"]), reverse=True)
