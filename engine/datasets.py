"""Named datasets in the workspace (``$SCWB_HOME/datasets/NAME.h5ad`` + ``NAME.json``).

The app keeps what users upload, pick as demos or preprocess here, so that a refresh or a restart
finds them again. Names are sanitised: nothing is written outside the workspace.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anndata as ad

from engine import io, runs, workspace
from engine.errors import ScwbError


def path(name: str) -> Path:
    return (
        workspace.inside(workspace.datasets_dir(), name + ".h5ad")
        if not name.endswith(".h5ad")
        else workspace.inside(workspace.datasets_dir(), name)
    )


def save(
    adata: ad.AnnData,
    name: str,
    source: str = "",
    parent: str | None = None,
    report: list | None = None,
) -> str:
    """Write ``adata`` under ``name`` (sanitised) with a small metadata file; return the name."""
    name = workspace.safe_name(name, "dataset name")
    p = workspace.datasets_dir() / f"{name}.h5ad"
    io.write_h5ad(adata, p)
    d = io.describe(adata)
    runs.write_json(
        p.with_suffix(".json"),
        {
            "name": name,
            "source": source,
            "parent": parent,
            "created": runs.now(),
            "n_obs": d["n_obs"],
            "n_vars": d["n_vars"],
            "x_kind": d["x_kind"],
            "report": report,
        },
    )
    return name


def list_datasets() -> list[dict[str, Any]]:
    rows = []
    for p in sorted(
        workspace.datasets_dir().glob("*.h5ad"), key=lambda q: q.stat().st_mtime, reverse=True
    ):
        meta = runs.read_json(p.with_suffix(".json"), {}) or {}
        rows.append(
            {
                "name": p.stem,
                "path": str(p),
                "size_mb": round(p.stat().st_size / 2**20, 2),
                **{
                    k: meta.get(k)
                    for k in ("source", "parent", "created", "n_obs", "n_vars", "x_kind")
                },
            }
        )
    return rows


def load(name: str) -> ad.AnnData:
    p = path(name)
    if not p.exists():
        raise ScwbError(f"No dataset named {name!r} in the workspace.")
    return io.read(p)


def delete(name: str) -> None:
    p = path(name)
    p.unlink(missing_ok=True)
    p.with_suffix(".json").unlink(missing_ok=True)
