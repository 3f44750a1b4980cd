"""The ``SCWB_*`` environment variables in one place, read when used (never at import time).

A test or an operator that changes a variable sees the change on the next call.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def _float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name) or default)
    except ValueError:
        return default


@dataclass(frozen=True)
class Settings:
    home: Path
    memory_budget_gb: float
    cancel_grace_s: float
    slots: int | None
    data_roots: tuple[Path, ...]
    launcher: str
    debug: bool

    @property
    def memory_budget(self) -> int:
        """Bytes one dense matrix may take."""
        return int(self.memory_budget_gb * 2**30)


def get() -> Settings:
    """The settings as the environment says now."""
    slots = os.environ.get("SCWB_SLOTS")
    roots = os.environ.get("SCWB_DATA_ROOTS", "")
    return Settings(
        home=Path(os.environ.get("SCWB_HOME") or Path.home() / ".scworkbench").expanduser(),
        memory_budget_gb=_float("SCWB_MEMORY_BUDGET_GB", 4.0),
        cancel_grace_s=_float("SCWB_CANCEL_GRACE_S", 20.0),
        slots=max(1, int(slots)) if slots and slots.strip().isdigit() else None,
        data_roots=tuple(
            Path(p).expanduser().resolve() for p in roots.split(os.pathsep) if p.strip()
        ),
        launcher=os.environ.get("SCWB_LAUNCHER", "local") or "local",
        debug=bool(os.environ.get("SCWB_DEBUG")),
    )
