"""The ``SCWB_*`` environment variables in one place, read when used (never at import time).

``settings.get()`` returns what the environment says now, so a test or an operator that changes
a variable sees the change on the next call. Every module asks here; none reads ``SCWB_*``
itself.

| variable | meaning | default |
|---|---|---|
| ``SCWB_HOME`` | workspace folder (datasets, runs) | ``~/.scworkbench`` |
| ``SCWB_MEMORY_BUDGET_GB`` | memory one dataset may take, all its matrices together | 4 |
| ``SCWB_DATA_ROOTS`` | folders the app may read by server path (``:``-separated) | none |
| ``SCWB_READ_TIMEOUT_S`` | a reader child's time limit (unset: 60 s + 1 s per 10 MB, at most 900) | - |
| ``SCWB_SLOTS`` | parallel runs (default: one per GPU, one on a CPU) | - |
| ``SCWB_LIGHT_SLOTS`` | parallel scikit-learn baselines (their own lane) | 1 |
| ``SCWB_MAX_QUEUED`` | runs that may wait at once in a workspace | 100 |
| ``SCWB_CANCEL_GRACE_S`` | seconds before a cancel becomes a kill | 20 |
| ``SCWB_LAUNCHER`` | ``local`` or ``slurm`` | local |
| ``SCWB_HOST`` | this host's name in run records | the host name |
| ``SCWB_HEARTBEAT_S`` | seconds between a run's heartbeats | 10 |
| ``SCWB_NUM_NODES`` | nodes of a multi-node run (set by the SLURM launcher) | 1 |
| ``SCWB_SLURM_*`` | PARTITION, TIME (min), CPUS, MEM, GPUS_PER_NODE, NODES, ACCOUNT, QOS, CONSTRAINT, SETUP | see docs/CLUSTER.md |
| ``SCWB_RESULTS_SAMPLE`` | cells whose per-gene outputs a run stores (all of them up to this many; a sample beyond) | 1000 |
| ``SCWB_DOWNLOAD_MAX_MB`` | largest file the app sends to the browser (it holds the file in memory while it does); larger ones: ``python -m engine export`` | 1024 |
| ``SCWB_CPU_BUDGET_S`` | run length the Train page aims its CPU default epochs at | 180 |
| ``SCWB_BENCHMARK`` | ``0``: no warm-up throughput benchmark of the device (estimates use defaults) | on |
| ``SCWB_DEBUG`` | tracebacks on the command line | off |
"""

from __future__ import annotations

import math
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

SLURM_KEYS = (
    "PARTITION",
    "TIME",
    "CPUS",
    "MEM",
    "GPUS_PER_NODE",
    "NODES",
    "ACCOUNT",
    "QOS",
    "CONSTRAINT",
    "SETUP",
)


def _float(name: str, default: float) -> float:
    try:
        value = float(os.environ.get(name) or default)
    except ValueError:
        return default
    return value if value == value and value not in (float("inf"), float("-inf")) else default


def _budget_gb() -> float:
    raw = os.environ.get("SCWB_MEMORY_BUDGET_GB") or "4"
    try:
        gb = float(raw)
    except ValueError:
        gb = float("nan")
    if not math.isfinite(gb) or gb <= 0:
        from engine.errors import ScwbError

        raise ScwbError(f"SCWB_MEMORY_BUDGET_GB must be a positive number of GB, not {raw!r}.")
    return gb


def _int(name: str, default: int) -> int:
    return int(_float(name, default))


@dataclass(frozen=True)
class Settings:
    home: Path
    memory_budget_gb: float
    data_roots: tuple[Path, ...]
    read_timeout_s: float
    slots: int | None
    light_slots: int
    max_queued: int
    cancel_grace_s: float
    launcher: str
    host: str
    heartbeat_s: float
    num_nodes: int
    cpu_budget_s: float
    results_sample: int
    download_max_mb: float
    benchmark: bool
    debug: bool
    slurm: dict[str, str] = field(default_factory=dict)

    @property
    def memory_budget(self) -> int:
        """Bytes one dataset may take in memory."""
        return int(self.memory_budget_gb * 2**30)


def get() -> Settings:
    """The settings as the environment says now."""
    env = os.environ
    slots = env.get("SCWB_SLOTS", "").strip()
    return Settings(
        home=Path(env.get("SCWB_HOME") or Path.home() / ".scworkbench").expanduser(),
        memory_budget_gb=_budget_gb(),
        data_roots=tuple(
            Path(p).expanduser().resolve()
            for p in env.get("SCWB_DATA_ROOTS", "").split(os.pathsep)
            if p.strip()
        ),
        read_timeout_s=_float("SCWB_READ_TIMEOUT_S", 900.0),
        slots=max(1, int(slots)) if slots.isdigit() else None,
        light_slots=max(1, _int("SCWB_LIGHT_SLOTS", 1)),
        max_queued=max(1, _int("SCWB_MAX_QUEUED", 100)),
        cancel_grace_s=_float("SCWB_CANCEL_GRACE_S", 20.0),
        launcher=(env.get("SCWB_LAUNCHER") or "local").strip().lower() or "local",
        host=env.get("SCWB_HOST") or socket.gethostname(),
        heartbeat_s=max(0.5, _float("SCWB_HEARTBEAT_S", 10.0)),
        num_nodes=max(1, _int("SCWB_NUM_NODES", 1)),
        cpu_budget_s=_float("SCWB_CPU_BUDGET_S", 180.0),
        results_sample=max(1, _int("SCWB_RESULTS_SAMPLE", 1000)),
        download_max_mb=max(0.0, _float("SCWB_DOWNLOAD_MAX_MB", 1024.0)),
        benchmark=env.get("SCWB_BENCHMARK", "1") != "0",
        debug=bool(env.get("SCWB_DEBUG")),
        slurm={k: env[f"SCWB_SLURM_{k}"] for k in SLURM_KEYS if env.get(f"SCWB_SLURM_{k}")},
    )
