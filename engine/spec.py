"""``RunSpec``: everything a run needs, validated once, stored as ``run.json``."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from engine import models
from engine.errors import ScwbError


@dataclass
class RunSpec:
    model: str
    data: str
    out: str = ""
    label_key: str | None = None
    layer: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    train_on: str | None = None  # "KEY=V1,V2": train on these cells, score all
    params: dict[str, Any] = field(default_factory=dict)
    patience: int | None = None
    condition_key: str | None = None
    ctrl: str | None = None
    stim: str | None = None
    cell_type_key: str | None = None
    predict: str | None = None  # a cell type, or "all" for leave-one-cell-type-out
    dataset_name: str | None = None
    group: str | None = None  # runs submitted together to be compared on the same split
    devices: int = 1  # >1: one run data-parallel over several devices (Lightning DDP)
    launcher: str = "local"  # where the run's process lives: "local" | "slurm" (engine.launchers)

    def __post_init__(self) -> None:
        info = models.get(self.model)
        self.epochs = int(info.epochs if self.epochs is None else self.epochs)
        self.batch_size = int(info.batch_size if self.batch_size is None else self.batch_size)
        self.lr = float(info.lr if self.lr is None else self.lr)
        self.patience = int(info.patience if self.patience is None else self.patience)
        self.seed = int(self.seed)
        if self.epochs < 1:
            raise ScwbError(f"epochs must be at least 1, not {self.epochs}.")
        if self.epochs > 100_000:
            raise ScwbError(f"epochs={self.epochs} is out of range (at most 100000).")
        if not (0 < self.lr < 10):
            raise ScwbError(
                f"The learning rate must be between 0 and 10 (exclusive), not {self.lr}."
            )
        if self.batch_size < 2:
            raise ScwbError(f"batch size must be at least 2, not {self.batch_size}.")
        if self.patience < 1:
            raise ScwbError(f"patience must be at least 1, not {self.patience}.")
        self.devices = int(self.devices)
        if self.devices < 1:
            raise ScwbError(f"devices must be at least 1, not {self.devices}.")
        if self.devices > 1 and models.get(self.model).kind == "sklearn":
            raise ScwbError(f"{self.model} is a scikit-learn baseline: it runs on one device.")
        self.launcher = str(self.launcher or "local").strip().lower()
        if self.launcher not in ("local", "slurm"):
            raise ScwbError(f"Unknown launcher {self.launcher!r}; use local or slurm.")
        if self.device not in ("auto", "cpu", "cuda", "gpu", "mps"):
            raise ScwbError(f"Unknown device {self.device!r}; use auto, cpu, cuda or mps.")
        self.params = models.coerce_params(info, dict(self.params or {}))
        if info.task == "classify" and not self.label_key:
            raise ScwbError(f"{self.model} classifies cells: give the label column (--label-key).")
        if info.task == "perturb":
            missing = [
                n
                for n in ("condition_key", "ctrl", "stim", "cell_type_key", "predict")
                if not getattr(self, n)
            ]
            if missing:
                raise ScwbError(
                    f"scgen needs --{missing[0].replace('_', '-')} (the condition column, control and stimulated values, cell-type column and the cell type to predict)."
                )
        if self.train_on:
            self.train_on_filter()

    @property
    def task(self) -> str:
        return models.get(self.model).task

    def train_on_filter(self) -> tuple[str, list[str]] | None:
        if not self.train_on:
            return None
        key, sep, values = str(self.train_on).partition("=")
        if not sep or not key or not values:
            raise ScwbError(
                f"--train-on takes KEY=V1,V2 (e.g. condition=healthy), not {self.train_on!r}."
            )
        return key, [v for v in values.split(",") if v]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "task": self.task}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})
