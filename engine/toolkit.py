"""The training toolkit every task uses: Lightning fit with the run-folder callback, batched
inference, and weight files. It knows nothing of tasks (they import it, never the reverse).

Multi-device runs (Lightning DDP) start one process per device that all run the same code:
only rank 0 writes to the run folder (``is_rank_zero``); a cancel is decided on rank 0 and
shared with every rank, and each rank trains its own shard (``trainer.global_rank`` /
``trainer.world_size``, which also hold under ``srun`` and on several nodes).
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from engine import runs, settings
from engine.data import Batches, DeviceMatrix
from engine.errors import ScwbError
from engine.models.lit import LitModel

INFER_BATCH = 4096
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)
# Lightning's advice that does not apply to in-memory batches (no DataLoader workers here)
warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
warnings.filterwarnings("ignore", message=r".*isn't an instance of.*DataLoader.*")
warnings.filterwarnings("ignore", message=r".*`IterableDataset` has `__len__` defined.*")


def is_rank_zero() -> bool:
    """Whether this process is the one that writes (rank 0 of a multi-device run, or alone)."""
    from engine import procs

    return procs.rank() == 0


def versions() -> dict[str, str]:
    from importlib.metadata import version

    pkgs = ("torch", "pytorch-lightning", "anndata", "scanpy", "scikit-learn", "numpy")
    return {"python": platform.python_version(), **{p: version(p) for p in pkgs}}


@dataclass
class FitContext:
    """What one training needs to know about the run, read once from its ``RunSpec``."""

    run_dir: Path
    device: str
    epochs: int
    batch_size: int
    lr: float
    patience: int
    seed: int
    devices: int = 1
    num_nodes: int = 1  # SLURM multi-node runs: set by the launcher ($SCWB_NUM_NODES)
    precision: str = "32"
    weight_decay: float = 0.0
    kl_warmup: int = 0
    optimizer: str = (
        "adam"  # 'lbfgs': one full batch per epoch (convex models, engine.tasks.classify)
    )
    resume: bool = False  # keep a full last checkpoint and resume from it (SLURM requeue)
    ckpt_tag: str = ""  # one checkpoint folder per fit of a run (scGen's leave-one-out targets)
    progress: dict[str, Any] = field(default_factory=dict)  # RunFolderCallback options

    @classmethod
    def from_spec(cls, spec: Any, run_dir: Path, device: str) -> FitContext:
        return cls(
            run_dir=Path(run_dir),
            device=device,
            epochs=spec.epochs,
            batch_size=spec.batch_size,
            lr=spec.lr,
            patience=spec.patience,
            seed=spec.seed,
            devices=spec.devices,
            num_nodes=settings.get().num_nodes,
            precision=spec.precision,
            weight_decay=float(spec.params.get("weight_decay", 0.0)),
            kl_warmup=int(spec.params.get("kl_warmup", 0)),
            resume=spec.launcher == "slurm",
        )


# ----------------------------------------------------------------------------- callback
class RunFolderCallback(pl.Callback):
    """Live progress into ``status.json`` (each epoch, and at most every ``every`` seconds within
    one), one ``metrics.csv`` row per epoch, the stop request, and a clear stop on NaN loss."""

    def __init__(
        self,
        run_dir: Path,
        max_epochs: int,
        every: float = 2.0,
        epoch_offset: int = 0,
        total_epochs: int | None = None,
        rows: list | None = None,
        extra: dict | None = None,
    ):
        self.run_dir = Path(run_dir)
        self.every = every
        self.offset = epoch_offset
        self.total = total_epochs or max_epochs
        self.rows = rows if rows is not None else []
        self.extra = extra or {}
        self.cancelled = False
        self.cells = 0
        self.t0 = self.t_last = time.time()

    def _progress(self, epoch_float: float) -> dict[str, Any]:
        elapsed = time.time() - self.t0
        done = self.offset + epoch_float
        rate = self.cells / elapsed if elapsed > 0 else 0.0
        eta = elapsed / epoch_float * (self.total - done) if epoch_float > 0 else None
        return {
            "epoch": round(done, 2),
            "max_epochs": self.total,
            "cells_per_s": round(rate, 1),
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
        }

    CANCEL_EVERY = 16  # batches between two looks at the stop request (the same on every rank)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.cells += int(batch["x"].shape[0]) * trainer.world_size  # every rank trains a share
        if batch_idx % self.CANCEL_EVERY == 0:
            stop = trainer.is_global_zero and (self.run_dir / "cancel").exists()
            if trainer.world_size > 1:  # decided on rank 0, honoured by every rank at one step
                stop = trainer.strategy.reduce_boolean_decision(stop, all=False)
            if stop:
                self.cancelled = True
                trainer.should_stop = True
        if trainer.is_global_zero and time.time() - self.t_last > self.every:
            self.t_last = time.time()
            n_batches = max(trainer.num_training_batches, 1)
            runs.update_status(
                self.run_dir,
                **self._progress(trainer.current_epoch + (batch_idx + 1) / n_batches),
                **self.extra,
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        loss = metrics.get("train_loss", 0.0)
        if trainer.is_global_zero:
            row = {"epoch": self.offset + trainer.current_epoch + 1, **self.extra, **metrics}
            self.rows.append(row)
            runs.write_metrics_csv(self.run_dir, self.rows)
            self.t_last = time.time()
            runs.update_status(
                self.run_dir,
                **self._progress(trainer.current_epoch + 1),
                train_loss=loss,
                val_loss=metrics.get("val_loss"),
                **self.extra,
            )
        if not np.isfinite(loss):  # the mean is synced: every rank stops here together
            raise ScwbError(
                f"The training loss became {loss} at epoch {trainer.current_epoch + 1}: lower the learning rate "
                "(--lr), check the data for extreme values, or scale it."
            )


class CellData(pl.LightningDataModule):
    """Batches by shuffled index over columns held on the device; the training loader is built
    once the trainer knows this process's rank and the world size."""

    def __init__(self, columns: dict, split: dict, batch_size: int, seed: int):
        super().__init__()
        self.columns, self.split, self.batch_size, self.seed = columns, split, batch_size, seed

    def train_dataloader(self) -> Batches:
        t = self.trainer
        return Batches(
            self.columns,
            self.split["train"],
            self.batch_size,
            shuffle=True,
            seed=self.seed,
            rank=t.global_rank if t else 0,
            world=t.world_size if t else 1,
        )

    def val_dataloader(self) -> Batches:
        return Batches(self.columns, self.split["val"], max(self.batch_size, 1024))


def _accelerator(kind: str) -> str:
    return {"cuda": "gpu", "mps": "mps"}.get(kind, "cpu")


def fit(
    module: torch.nn.Module, ctx: FitContext, columns: dict, split: dict
) -> tuple[torch.nn.Module, RunFolderCallback]:
    """Lightning does the loop: early stopping on validation loss, the best weights restored
    (full-batch L-BFGS instead trains to convergence and keeps its last weights), progress,
    stop requests. Every rank returns; only rank 0 should write afterwards."""
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    lit = LitModel(
        module,
        lr=ctx.lr,
        weight_decay=ctx.weight_decay,
        kl_warmup_epochs=ctx.kl_warmup,
        optimizer=ctx.optimizer,
    )
    ckpt_dir = (
        ctx.run_dir / "checkpoints" / ctx.ckpt_tag if ctx.ckpt_tag else ctx.run_dir / "checkpoints"
    )
    last = ckpt_dir / "last.ckpt"
    resume_from = str(last) if ctx.resume and last.exists() else None
    options = dict(ctx.progress)
    if resume_from and "rows" not in options:  # the epochs already trained stay in metrics.csv
        options["rows"] = _rows_before(ctx.run_dir, last)
    progress = RunFolderCallback(ctx.run_dir, ctx.epochs, **options)
    converge = ctx.optimizer == "lbfgs"
    ckpt = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        save_weights_only=True,
    )
    if ctx.device == "cuda":  # TF32 tensor cores for float32 matrix products
        torch.set_float32_matmul_precision("high")
    trainer = pl.Trainer(
        max_epochs=ctx.epochs,
        accelerator=_accelerator(ctx.device),
        devices=ctx.devices,
        num_nodes=ctx.num_nodes,
        strategy="ddp" if ctx.devices > 1 else "auto",
        precision=ctx.precision,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True if ctx.device == "cpu" else "warn",
        default_root_dir=str(ctx.run_dir),
        callbacks=[
            progress,
            *(
                # a convex objective solved full-batch: its optimum is the answer, so train to
                # convergence (the training objective stops moving) and keep the last weights
                [EarlyStopping(monitor="train_loss", min_delta=1e-7, patience=3, mode="min")]
                if converge
                else [
                    EarlyStopping(
                        monitor="val_loss", patience=ctx.patience, mode="min", check_finite=True
                    ),
                    ckpt,
                ]
            ),
            *(
                [  # the latest epoch, whole (optimizer and callbacks too): what a requeue resumes
                    ModelCheckpoint(
                        dirpath=ckpt_dir,
                        filename="last",
                        save_top_k=1,
                        enable_version_counter=False,
                    )
                ]
                if ctx.resume
                else []
            ),
        ],
    )
    if resume_from and trainer.is_global_zero:
        runs.update_status(ctx.run_dir, resumed_after_epoch=len(options["rows"]))
    trainer.fit(
        lit, datamodule=CellData(columns, split, ctx.batch_size, ctx.seed), ckpt_path=resume_from
    )
    best = ckpt.best_model_path
    if best and os.path.exists(best) and not converge:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        lit.load_state_dict(state)
    if trainer.is_global_zero and not ctx.ckpt_tag:  # one model per run (not leave-one-out parts)
        stop = next((c for c in trainer.callbacks if isinstance(c, EarlyStopping)), None)
        # how training ended and which weights were kept, for the Results page's words
        runs.update_status(
            ctx.run_dir,
            optimizer=ctx.optimizer,
            # stopped before its last epoch: a stop at the last one ended nothing early (Results
            # said "stopped early at epoch 20 of 20": a browser pass)
            # (L-BFGS converging at its last epoch did converge: kept)
            # EarlyStopping's own reason: stopped_epoch is 0 both for no stop and for a stop at
            # the first epoch (a non-finite validation loss: a review)
            stopped_early=bool(
                stop is not None
                and (
                    stop.stopping_reason.name != "NOT_STOPPED"
                    if hasattr(stop, "stopping_reason")
                    else stop.stopped_epoch > 0
                )
                and (converge or stop.stopped_epoch < (trainer.max_epochs or 0) - 1)
            ),
            weights_kept="last (converged)" if converge else "best validation epoch",
        )
    if trainer.world_size > 1:
        trainer.strategy.barrier("best-weights-read")  # rank 0 removes the file next
    if trainer.is_global_zero:
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    module = lit.module.to(torch.device(ctx.device if ctx.device != "cuda" else "cuda:0"))
    module.eval()
    return module, progress


def _rows_before(run_dir: Path, last: Path) -> list[dict]:
    """metrics.csv rows of the epochs a last checkpoint already holds."""
    rows = runs.read_metrics_csv(run_dir)
    if rows.empty:
        return []
    try:
        done = int(torch.load(last, map_location="cpu", weights_only=True).get("epoch", 0)) + 1
    except Exception:  # noqa: BLE001 - an unreadable checkpoint: keep every row written
        return rows.to_dict("records")
    return [r for r in rows.to_dict("records") if r.get("epoch", 0) <= done]


# ----------------------------------------------------------------------------- inference
def infer(fn, matrix: DeviceMatrix, extra: torch.Tensor | None = None) -> np.ndarray:
    """Apply ``fn`` to all rows in batches, without gradients; return a NumPy array."""
    outs = []
    with torch.no_grad():
        for start in range(0, matrix.shape[0], INFER_BATCH):
            idx = torch.arange(start, min(start + INFER_BATCH, matrix.shape[0]))
            args = (
                (matrix.rows(idx),)
                if extra is None
                else (matrix.rows(idx), extra.index_select(0, idx.to(extra.device)))
            )
            outs.append(fn(*args).float().cpu().numpy())
    return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)


# ----------------------------------------------------------------------------- weights
def save_weights(path: Path, module: Any) -> None:
    """Plain tensors only, loadable with ``torch.load(weights_only=True)``; written atomically."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    path = Path(path)
    tmp = runs.temp_path(path)
    torch.save(state, tmp)
    tmp.replace(path)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``save_weights`` file, refused unless it is what ``torch.save`` writes:
    a zip archive of stored (uncompressed) entries. Its tensors are mapped, not read: a small
    file of compressed zeros inflated to 4 GB before the shapes could be compared."""
    import zipfile

    if not Path(path).is_file():  # a named pipe in its place would block forever
        raise ScwbError(f"{path} is not a weights file (missing, or not a regular file).")
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise ScwbError(f"{path} is not a plain weights file and is not loaded.") from None
    if any(e.compress_type != zipfile.ZIP_STORED for e in entries):
        raise ScwbError(
            f"{path} is not a plain weights file (compressed entries, which torch.save never "
            "writes) and is not loaded."
        )
    if sum(e.file_size for e in entries) > Path(path).stat().st_size:
        raise ScwbError(
            f"{path} is not a plain weights file (its entries claim more bytes than the file "
            "holds) and is not loaded."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # a pickle that needs code to load, or a damaged file: refused
        raise ScwbError(
            f"{path} is not a plain weights file and is not loaded ({type(exc).__name__})."
        ) from None
