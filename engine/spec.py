"""``RunSpec``: everything a run needs, validated once, stored as ``run.json``.

Each field lists once what it is: its command-line flag and help live in its metadata, so the
command line (``engine.cli``) and the reproduce script (``engine.export``) derive from this class.
"""

from __future__ import annotations

import math
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

from engine import models
from engine.errors import ScwbError

DEVICES = ("auto", "cpu", "cuda", "gpu", "mps")
PRECISIONS = ("32", "bf16-mixed", "16-mixed")
LAUNCHERS = ("local", "slurm")
GROUP_SPLITS = ("rotate", "shuffle")


def _opt(flag: str | None, help: str, **argparse_kw: Any) -> dict[str, Any]:
    """Field metadata: the command-line flag (None: not an option) and its argparse settings."""
    return {"flag": flag, "help": help, "argparse": argparse_kw}


@dataclass
class RunSpec:
    model: str = field(metadata=_opt("--model", "model name (python -m engine models)"))
    data: str = field(metadata=_opt("--data", "input .h5ad (or any readable format)"))
    out: str = field(default="", metadata=_opt(None, "run folder"))
    label_key: str | None = field(
        default=None,
        metadata=_opt(
            "--label-key", "obs column with the labels (classifiers; colours/stratifies others)"
        ),
    )
    layer: str | None = field(
        default=None, metadata=_opt("--layer", "layer to train on instead of X (e.g. counts)")
    )
    epochs: int | None = field(
        default=None, metadata=_opt("--epochs", "maximum epochs (default per model)", type=int)
    )
    batch_size: int | None = field(
        default=None,
        metadata=_opt("--batch-size", "mini-batch size (default per model)", type=int),
    )
    lr: float | None = field(
        default=None, metadata=_opt("--lr", "learning rate (default per model)", type=float)
    )
    seed: int = field(
        default=0,
        metadata=_opt("--seed", "one seed for split, torch and numpy (default 0)", type=int),
    )
    device: str = field(
        default="auto",
        metadata=_opt("--device", "where to train", choices=["auto", "cpu", "cuda", "mps"]),
    )
    train_on: dict[str, list[str]] | None = field(
        default=None,
        metadata=_opt(
            "--train-on",
            "train on cells with obs[KEY] == VALUE only, score all (repeatable; a value may contain commas)",
            metavar="KEY=VALUE",
            action="append",
        ),
    )
    split_by: str | None = field(
        default=None,
        metadata=_opt(
            "--split-by",
            "test (and validate) on whole groups of this obs column the model never saw, such "
            "as donors or samples (default: cells drawn at random, every group in every part)",
            metavar="KEY",
        ),
    )
    group_split: str | None = field(
        default="rotate",
        metadata=_opt(
            "--group-split",
            "with --split-by, how the seed picks the held-out groups: rotate (seeds 0, 1, 2, "
            "... test different groups until every group was tested once; default) or shuffle "
            "(each seed draws them at random, as runs made before 2026-11-28 did: seeds can "
            "repeat a split)",
            choices=list(GROUP_SPLITS),
        ),
    )
    params: dict[str, Any] = field(
        default_factory=dict,
        metadata=_opt(
            "--param", "model parameter (repeatable)", metavar="NAME=VALUE", action="append"
        ),
    )
    patience: int | None = field(
        default=None,
        metadata=_opt("--patience", "early-stopping patience in epochs", type=int),
    )
    condition_key: str | None = field(
        default=None,
        metadata=_opt("--condition-key", "perturbation: obs column with the condition"),
    )
    ctrl: str | None = field(default=None, metadata=_opt("--ctrl", "perturbation: control value"))
    stim: str | None = field(
        default=None, metadata=_opt("--stim", "perturbation: stimulated value")
    )
    cell_type_key: str | None = field(
        default=None, metadata=_opt("--cell-type-key", "perturbation: obs column with cell types")
    )
    predict: str | None = field(
        default=None,
        metadata=_opt(
            "--predict",
            "perturbation: cell type to hold out and predict ('all': leave each out in turn)",
            metavar="CELLTYPE|all",
        ),
    )
    epochs_set_by: str | None = field(
        default=None,
        metadata=_opt(
            None,
            "who set epochs below the published default: 'budget' (the Train page's CPU time "
            "budget) or 'user' (typed); None: the model's default or a run made before",
        ),
    )
    dataset_name: str | None = field(default=None, metadata=_opt(None, "the data's label"))
    dataset_key: str | None = field(default=None, metadata=_opt(None, "workspace dataset key"))
    data_fingerprint: str | None = field(
        default=None, metadata=_opt(None, "content hash the data must still have")
    )
    group: str | None = field(
        default=None,
        metadata=_opt("--group", "comparison group name (runs compared on the same split)"),
    )
    devices: int = field(
        default=1,
        metadata=_opt(
            "--devices",
            "train one run data-parallel on N devices (GPUs, or CPU processes); default 1",
            type=int,
        ),
    )
    precision: str = field(
        default="32",
        metadata=_opt(
            "--precision",
            "numeric precision: 32, or bf16-mixed / 16-mixed autocast on a GPU",
            choices=list(PRECISIONS),
        ),
    )
    launcher: str = field(default="local", metadata=_opt(None, "local | slurm"))

    def __post_init__(self) -> None:
        info = models.get(self.model)
        for name, kind, default in (
            ("epochs", int, info.epochs),
            ("batch_size", int, info.batch_size),
            ("lr", float, info.lr),
            ("patience", int, info.patience),
            ("seed", int, None),
            ("devices", int, None),
        ):
            value = getattr(self, name)
            try:
                setattr(self, name, kind(default if value is None else value))
            except (TypeError, ValueError, OverflowError) as exc:  # named: which one, and why
                raise ScwbError(f"The training setting {name} is not a number: {exc}.") from None
        if self.epochs < 1:
            raise ScwbError(f"epochs must be at least 1, not {self.epochs}.")
        if self.epochs > 100_000:
            raise ScwbError(f"epochs={self.epochs} is out of range (at most 100000).")
        if not math.isfinite(self.lr) or not (0 < self.lr < 10):
            raise ScwbError(
                f"The learning rate must be between 0 and 10 (exclusive), not {self.lr}."
            )
        if not 2 <= self.batch_size <= 1_000_000:
            raise ScwbError(f"batch size must be between 2 and 1000000, not {self.batch_size}.")
        if not 1 <= self.patience <= 100_000:
            raise ScwbError(f"patience must be between 1 and 100000, not {self.patience}.")
        if not 0 <= self.seed < 2**32:
            raise ScwbError(f"seed must be between 0 and 2**32 - 1, not {self.seed}.")
        if not 1 <= self.devices <= 1024:
            raise ScwbError(f"devices must be between 1 and 1024, not {self.devices}.")
        if self.devices > 1 and info.kind == "sklearn":
            raise ScwbError(f"{self.model} is a scikit-learn baseline: it runs on one device.")
        if self.device not in DEVICES:
            raise ScwbError(f"Unknown device {self.device!r}; use auto, cpu, cuda or mps.")
        if str(self.precision) not in PRECISIONS:
            raise ScwbError(f"precision must be one of {', '.join(PRECISIONS)}.")
        self.precision = str(self.precision)
        self.launcher = str(self.launcher or "local").strip().lower()
        if self.launcher not in LAUNCHERS:
            raise ScwbError(f"Unknown launcher {self.launcher!r}; use local or slurm.")
        self.params = models.coerce_params(info, dict(self.params or {}))
        self.train_on = parse_train_on(self.train_on)
        self.split_by = str(self.split_by).strip() or None if self.split_by else None
        if self.split_by:
            self.group_split = str(self.group_split or "rotate").strip().lower()
            if self.group_split not in GROUP_SPLITS:
                raise ScwbError(f"Unknown group split {self.group_split!r}; use rotate or shuffle.")
        else:
            self.group_split = None  # the cells are drawn at random: no groups to pick
        if self.split_by and info.task == "perturb":
            raise ScwbError(
                "--split-by is for classifiers, autoencoders and embeddings: scGen holds out "
                "a cell type (--predict)."
            )
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

    @property
    def task(self) -> str:
        return models.get(self.model).task

    @property
    def info(self) -> models.ModelInfo:
        return models.get(self.model)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "task": self.task}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RunSpec:
        """A spec from a run.json, also one written before a field existed (a run resumed after
        an upgrade trains on the split it started with)."""
        if not isinstance(d, dict):
            raise ScwbError("run.json is unreadable (damaged or not a JSON object).")
        required = [
            f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING
        ]
        if missing := [k for k in required if d.get(k) in (None, "")]:
            # a queued run whose run.json was damaged failed with "TypeError: RunSpec.__init__()
            # missing 2 required positional arguments" as its reason (a hostile pass)
            raise ScwbError(
                f"run.json is unreadable or incomplete (no {' or '.join(missing)}): "
                "the run cannot be trained or reproduced from it."
            )
        names = {f.name for f in fields(cls)}
        try:
            return cls(**{k: v for k, v in with_earlier_defaults(d).items() if k in names})
        except ScwbError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise ScwbError(f"run.json holds a value that is not a run's: {exc}") from None


def with_earlier_defaults(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` (a run.json) with the values its version meant for fields added later: held-out
    groups were drawn at random by the seed before ``group_split`` existed (2026-11-28)."""
    if record.get("split_by") and "group_split" not in record:
        return {**record, "group_split": "shuffle"}
    return record


def parse_train_on(value: Any) -> dict[str, list[str]] | None:
    """``{column: [values]}`` from the structured form, a list of ``KEY=VALUE`` items (one value
    each, commas kept) or the legacy ``"KEY=V1,V2"`` string of older run folders."""
    if value in (None, "", {}, []):
        return None
    if isinstance(value, dict):
        out = {}
        for k, vs in value.items():
            vs = [vs] if isinstance(vs, str) else list(vs or [])
            if not str(k) or not vs:
                raise ScwbError(f"--train-on: the column {k!r} needs at least one value.")
            out[str(k)] = [str(v) for v in vs]
        return out
    if isinstance(value, str):  # legacy: KEY=V1,V2
        key, sep, values = value.partition("=")
        if not sep or not key or not values:
            raise ScwbError(f"--train-on takes KEY=VALUE (e.g. condition=healthy), not {value!r}.")
        return {key: [v for v in values.split(",") if v]}
    out: dict[str, list[str]] = {}
    for item in value:
        key, sep, v = str(item).partition("=")
        if not sep or not key or not v:
            raise ScwbError(f"--train-on takes KEY=VALUE (e.g. condition=healthy), not {item!r}.")
        out.setdefault(key, []).append(v)
    return out
