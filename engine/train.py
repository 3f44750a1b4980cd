"""Running one training: data -> split -> Lightning fit -> evaluation -> run folder.

``run(spec)`` does all of it in the calling process (the CLI's ``train``; a job's worker calls it
in its own process). Everything it produces lands in ``spec.out`` as the run-folder contract says.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import time
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import pytorch_lightning as pl
import torch

from engine import device as devices
from engine import evaluate, io, models, runs
from engine.data import Batches, DeviceMatrix, encode_labels, make_split
from engine.errors import ScwbError
from engine.models.lit import LitModel
from engine.spec import RunSpec

INFER_BATCH = 4096
for _name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
    logging.getLogger(_name).setLevel(logging.WARNING)


class NotRankZero(Exception):
    """Raised in the extra processes of a multi-device run once training is done."""


# ----------------------------------------------------------------------------- callbacks
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

    def _progress(self, trainer: pl.Trainer, epoch_float: float) -> dict[str, Any]:
        elapsed = time.time() - self.t0
        done = self.offset + epoch_float
        rate = self.cells / elapsed if elapsed > 0 else 0.0
        eta = elapsed / (epoch_float) * (self.total - done) if epoch_float > 0 else None
        return {
            "epoch": round(done, 2),
            "max_epochs": self.total,
            "cells_per_s": round(rate, 1),
            "elapsed_s": round(elapsed, 1),
            "eta_s": None if eta is None else round(eta, 1),
        }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero:
            return
        self.cells += int(batch["x"].shape[0]) * trainer.world_size  # every rank trains a share
        if (self.run_dir / "cancel").exists():
            self.cancelled = True
            trainer.should_stop = True
        if time.time() - self.t_last > self.every:
            self.t_last = time.time()
            n_batches = max(trainer.num_training_batches, 1)
            runs.update_status(
                self.run_dir,
                **self._progress(trainer, trainer.current_epoch + (batch_idx + 1) / n_batches),
                **self.extra,
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row = {"epoch": self.offset + trainer.current_epoch + 1, **self.extra, **metrics}
        self.rows.append(row)
        runs.write_metrics_csv(self.run_dir, self.rows)
        loss = metrics.get("train_loss", 0.0)
        self.t_last = time.time()
        runs.update_status(
            self.run_dir,
            **self._progress(trainer, trainer.current_epoch + 1),
            train_loss=loss,
            val_loss=metrics.get("val_loss"),
            **self.extra,
        )
        if not np.isfinite(loss):
            raise ScwbError(
                f"The training loss became {loss} at epoch {trainer.current_epoch + 1}: lower the learning rate "
                "(--lr), check the data for extreme values, or scale it."
            )


# ----------------------------------------------------------------------------- helpers
def versions() -> dict[str, str]:
    from importlib.metadata import version

    pkgs = ("torch", "pytorch-lightning", "anndata", "scanpy", "scikit-learn", "numpy")
    return {"python": platform.python_version(), **{p: version(p) for p in pkgs}}


def input_matrix(
    adata: ad.AnnData, layer: str | None, prefer_counts: bool = False
) -> tuple[Any, str]:
    """The matrix a model reads and its name (``X`` or ``layers[...]``)."""
    if layer and layer != "X":
        if layer not in adata.layers:
            raise ScwbError(
                f"The data has no layer {layer!r}; it has {', '.join(adata.layers) or 'none'} (or X)."
            )
        return adata.layers[layer], layer
    if prefer_counts and not layer and "counts" in adata.layers:
        return adata.layers["counts"], "counts"
    return adata.X, "X"


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


def _accelerator(kind: str) -> str:
    return {"cuda": "gpu", "mps": "mps"}.get(kind, "cpu")


def fit(
    module: torch.nn.Module,
    spec: RunSpec,
    run_dir: Path,
    dev: str,
    columns: dict,
    split: dict,
    kl_warmup: int = 0,
    **cb_kwargs: Any,
) -> tuple[torch.nn.Module, RunFolderCallback]:
    """Lightning does the loop: early stopping, best checkpoint, progress, stop requests."""
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    lit = LitModel(
        module,
        lr=spec.lr,
        weight_decay=float(spec.params.get("weight_decay", 0.0)),
        kl_warmup_epochs=kl_warmup,
    )
    rank = int(os.environ.get("LOCAL_RANK", "0"))  # set by Lightning in the ranks it launches
    train = Batches(
        columns,
        split["train"],
        spec.batch_size,
        shuffle=True,
        seed=spec.seed,
        drop_last=False,
        rank=rank,
        world=spec.devices,
    )
    val = Batches(columns, split["val"], max(spec.batch_size, 1024), shuffle=False)
    ckpt_dir = run_dir / "checkpoints"
    progress = RunFolderCallback(run_dir, spec.epochs, **cb_kwargs)
    ckpt = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best",
        monitor="val_loss",
        mode="min",
        save_top_k=1,
        save_weights_only=True,
    )
    trainer = pl.Trainer(
        max_epochs=spec.epochs,
        accelerator=_accelerator(dev),
        devices=spec.devices,
        strategy="ddp" if spec.devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        deterministic=True if dev == "cpu" else "warn",
        default_root_dir=str(run_dir),
        callbacks=[
            progress,
            EarlyStopping(
                monitor="val_loss", patience=spec.patience, mode="min", check_finite=True
            ),
            ckpt,
        ],
    )
    trainer.fit(lit, train_dataloaders=train, val_dataloaders=val)
    if not trainer.is_global_zero:
        raise NotRankZero  # the other ranks only help to train; rank 0 evaluates and writes
    if ckpt.best_model_path:
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)[
            "state_dict"
        ]
        lit.load_state_dict(state)
    shutil.rmtree(ckpt_dir, ignore_errors=True)
    module = lit.module.to(torch.device(dev if dev != "cuda" else "cuda:0"))
    module.eval()
    return module, progress


def save_model(
    run_dir: Path, module: Any, spec: RunSpec, adata: ad.AnnData, layer: str, **extra: Any
) -> None:
    """``model.pt`` (plain tensors, ``torch.load(weights_only=True)``) and ``model.json`` (how to
    rebuild the network and which genes, in which order, it reads)."""
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    tmp = run_dir / ".model.pt.tmp"
    torch.save(state, tmp)
    tmp.replace(run_dir / "model.pt")
    meta = {
        "model": spec.model,
        "params": spec.params,
        "n_in": adata.n_vars,
        "layer": layer,
        "var_names": list(map(str, adata.var_names)),
        **extra,
    }
    runs.write_json(run_dir / "model.json", meta)


def _dense_ok(n_obs: int, n_vars: int) -> bool:
    return n_obs * n_vars * 4 <= io.memory_budget() // 2


# ----------------------------------------------------------------------------- entry point
def preflight(spec: RunSpec, adata: ad.AnnData) -> None:
    """Every check that can refuse ``spec`` on ``adata`` before any training starts, so the app
    can say what is wrong at once instead of after a worker has started."""
    io.check_not_empty(adata)
    io.check_unique_names(adata)
    info = models.get(spec.model)
    if info.task == "perturb":
        from engine.perturb import check_design

        check_design(adata, spec)
        x, layer = input_matrix(adata, spec.layer)
        io.check_finite(x, layer)
        if io.matrix_kind(x) == "counts":
            raise ScwbError(
                "scGen models log-normalised expression, and this matrix holds raw counts: run logCPM (Preprocess > normalize) first."
            )
        return
    likelihood = spec.params.get("likelihood", "gaussian")
    x, layer = input_matrix(
        adata, spec.layer, prefer_counts=info.name == "vae" and likelihood != "gaussian"
    )
    where = "X" if layer == "X" else f"layers['{layer}']"
    if info.name == "vae" and likelihood in ("nb", "zinb"):
        io.check_counts(x, where)
    else:
        io.check_finite(x, where)
    labels = None
    if spec.label_key:
        labels = (
            io.check_label(adata, spec.label_key, 2 if info.task == "classify" else 1)
            .astype(str)
            .to_numpy()
        )
    if spec.params.get("batch_key"):
        io.check_label(adata, spec.params["batch_key"], 1)
    flt = spec.train_on_filter()
    if flt:
        if flt[0] not in adata.obs:
            raise ScwbError(f"--train-on: obs has no column {flt[0]!r}.")
        io.check_values(adata, *flt)
    make_split(adata.n_obs, spec.seed, stratify=labels)


def run(spec: RunSpec) -> dict[str, Any]:
    """Train and evaluate ``spec`` into ``spec.out``; return the final metrics."""
    run_dir = Path(spec.out)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "cancel").unlink(missing_ok=True)
    dev = devices.resolve(spec.device)
    pl.seed_everything(spec.seed, workers=False, verbose=False)
    adata = io.read(spec.data)
    preflight(spec, adata)
    record = {
        **spec.to_dict(),
        "created": runs.read_json(run_dir / "run.json", {}).get("created") or runs.now(),
        "data_fingerprint": io.fingerprint(adata),
        "data_shape": list(adata.shape),
        "recipe": json.loads(adata.uns["recipe"])
        if isinstance(adata.uns.get("recipe"), str)
        else None,
        "device_requested": spec.device,
        "device_used": dev,
        "device_name": devices.device_name(dev),
        "versions": versions(),
    }
    runs.write_json(run_dir / "run.json", record)
    runs.update_status(
        run_dir,
        state="running",
        started=runs.read_status(run_dir).get("started") or runs.now(),
        device=record["device_name"],
        max_epochs=spec.epochs,
        epoch=0,
    )
    info = models.get(spec.model)
    handler = {
        "classify": _classify,
        "reconstruct": _reconstruct,
        "embed": _embed,
        "perturb": _perturb,
    }[info.task]
    try:
        metrics, out_adata, cancelled = handler(spec, info, adata, run_dir, dev)
    except NotRankZero:
        return {}
    metrics = {k: v for k, v in metrics.items()}
    runs.write_json(run_dir / "metrics.json", metrics)
    io.write_h5ad(out_adata, run_dir / "results.h5ad")
    state = "cancelled" if cancelled else "completed"
    runs.update_status(run_dir, state=state, finished=runs.now(), eta_s=0)
    return metrics


def _split_for(
    spec: RunSpec, adata: ad.AnnData, stratify: np.ndarray | None, run_dir: Path
) -> dict[str, np.ndarray]:
    split = make_split(adata.n_obs, spec.seed, stratify=stratify)
    flt = spec.train_on_filter()
    if flt:
        key, values = flt
        io.check_values(adata, key, values) if key in adata.obs else io.check_label(adata, key, 1)
        keep = adata.obs[key].astype(str).isin(values).to_numpy()
        split["train"] = split["train"][keep[split["train"]]]
        split["val"] = split["val"][keep[split["val"]]]
        if len(split["train"]) < 2 or len(split["val"]) < 1:
            raise ScwbError(f"Too few cells with {key} in {values} to train on.")
    np.savez(run_dir / "split.npz", **split)
    return split


def _classify(spec: RunSpec, info: models.ModelInfo, adata: ad.AnnData, run_dir: Path, dev: str):
    labels = io.check_label(adata, spec.label_key)
    x, layer = input_matrix(adata, spec.layer)
    io.check_finite(x, layer)
    y, classes = encode_labels(labels)
    split = _split_for(spec, adata, labels.astype(str).to_numpy(), run_dir)
    cancelled = False
    if info.kind == "sklearn":
        from engine.models.baselines import SkLogReg

        dense = io.dense(x)
        est = SkLogReg(spec.params["C"], spec.params["max_iter"], spec.seed).fit(
            dense[split["train"]], y[split["train"]]
        )
        proba = est.proba(dense)
        _baseline_epoch(
            run_dir,
            "train_accuracy",
            float((proba[split["train"]].argmax(1) == y[split["train"]]).mean()),
            val_accuracy=float((proba[split["val"]].argmax(1) == y[split["val"]]).mean()),
        )
        module = est
    else:
        xm = DeviceMatrix(x, dev)
        yt = torch.as_tensor(y, device=xm.device)
        net = models.build(info, adata.n_vars, spec.params, n_classes=len(classes))
        module, progress = fit(net, spec, run_dir, dev, {"x": xm, "y": yt}, split)
        cancelled = progress.cancelled
        proba = infer(module.proba, xm)
    metrics = evaluate.classification(y[split["test"]], proba[split["test"]], classes)
    out = adata.copy()
    out.obs[f"pred_{spec.label_key}"] = pd.Categorical(
        np.asarray(classes)[proba.argmax(1)], categories=classes
    )
    out.obs["pred_confidence"] = proba.max(1).astype(np.float32)
    out.obsm[f"proba_{spec.model}"] = proba.astype(np.float32)
    out.uns[f"{spec.model}_classes"] = classes
    save_model(run_dir, module, spec, adata, layer, classes=classes, label_key=spec.label_key)
    return metrics, out, cancelled


def _baseline_epoch(run_dir: Path, name: str, value: float, **more: float) -> None:
    """A baseline has no epochs; one row keeps the metrics.csv contract."""
    runs.write_metrics_csv(run_dir, [{"epoch": 1, name: value, **more}])
    runs.update_status(run_dir, epoch=1, max_epochs=1)


def _reconstruct(spec: RunSpec, info: models.ModelInfo, adata: ad.AnnData, run_dir: Path, dev: str):
    x, layer = input_matrix(adata, spec.layer)
    io.check_finite(x, layer)
    strat = (
        io.check_label(adata, spec.label_key, 1).astype(str).to_numpy() if spec.label_key else None
    )
    split = _split_for(spec, adata, strat, run_dir)
    cancelled = False
    dense_x = None
    if info.kind == "sklearn":
        from engine.models.baselines import PCABaseline

        dense_x = io.dense(x)
        est = PCABaseline(spec.params["n_components"], spec.seed).fit(dense_x[split["train"]])
        latent, recon = est.encode(dense_x), est.reconstruct(dense_x).astype(np.float32)
        _baseline_epoch(
            run_dir,
            "train_mse",
            float(evaluate.mse_per_cell(dense_x[split["train"]], recon[split["train"]]).mean()),
            val_mse=float(evaluate.mse_per_cell(dense_x[split["val"]], recon[split["val"]]).mean()),
        )
        module, meta = est, {}
    else:
        kind = io.matrix_kind(x)
        sig = spec.params["output"] == "sigmoid" or (
            spec.params["output"] == "auto" and kind in ("scaled (MinMax)",)
        )
        xm = DeviceMatrix(x, dev)
        net = models.build(info, adata.n_vars, spec.params, sigmoid_output=sig)
        module, progress = fit(net, spec, run_dir, dev, {"x": xm}, split)
        cancelled = progress.cancelled
        latent, recon = infer(module.encode, xm), infer(module, xm)
        meta = {"sigmoid_output": sig}
    if dense_x is None:
        dense_x = io.dense(x)
    per_cell = evaluate.mse_per_cell(dense_x, recon)
    out = adata.copy()
    out.obsm[f"X_{spec.model}"] = latent.astype(np.float32)
    out.obs["abnormality"] = per_cell.astype(np.float32)
    if _dense_ok(*adata.shape):
        out.layers["reconstruction"] = recon
        out.layers["abnormality"] = dense_x - recon
    metrics = {
        "test_mse": float(per_cell[split["test"]].mean()),
        "train_mse": float(per_cell[split["train"]].mean()),
    }
    if spec.train_on:
        key, values = spec.train_on_filter()
        inside = adata.obs[key].astype(str).isin(values).to_numpy()
        metrics["abnormality_trained_on"] = float(per_cell[inside].mean())
        metrics["abnormality_others"] = (
            float(per_cell[~inside].mean()) if (~inside).any() else float("nan")
        )
    save_model(run_dir, module, spec, adata, layer, **meta)
    return metrics, out, cancelled


def _latent_scores(latent: np.ndarray, labels: pd.Series | None, split: dict) -> dict[str, float]:
    if labels is None:
        return {}
    from sklearn.metrics import silhouette_score
    from sklearn.neighbors import KNeighborsClassifier

    y = np.asarray(labels).astype(str)
    knn = KNeighborsClassifier(n_neighbors=15).fit(latent[split["train"]], y[split["train"]])
    sample = np.random.default_rng(0).choice(len(y), size=min(len(y), 5000), replace=False)
    return {
        "latent_knn_accuracy": float(
            (knn.predict(latent[split["test"]]) == y[split["test"]]).mean()
        ),
        "latent_silhouette": float(silhouette_score(latent[sample], y[sample]))
        if len(set(y[sample])) > 1
        else float("nan"),
    }


def _embed(spec: RunSpec, info: models.ModelInfo, adata: ad.AnnData, run_dir: Path, dev: str):
    labels = io.check_label(adata, spec.label_key, 1) if spec.label_key else None
    strat = labels.astype(str).to_numpy() if labels is not None else None
    split = _split_for(spec, adata, strat, run_dir)
    out = adata.copy()
    cancelled = False
    if info.kind == "sklearn":
        from engine.models.baselines import PCABaseline

        x, layer = input_matrix(adata, spec.layer)
        dense = io.dense(x)
        if io.matrix_kind(x) == "counts":  # PCA on log-normalised counts, as a user would
            dense = np.log1p(dense / np.maximum(dense.sum(1, keepdims=True), 1) * 1e4)
        est = PCABaseline(spec.params["n_components"], spec.seed).fit(dense[split["train"]])
        latent = est.encode(dense).astype(np.float32)
        recon = est.reconstruct(dense)
        mse = evaluate.mse_per_cell(dense, recon)
        _baseline_epoch(
            run_dir,
            "train_mse",
            float(mse[split["train"]].mean()),
            val_mse=float(mse[split["val"]].mean()),
        )
        metrics = {"test_mse": float(mse[split["test"]].mean())}
        save_model(run_dir, est, spec, adata, layer)
    else:
        likelihood = spec.params["likelihood"]
        x, layer = input_matrix(adata, spec.layer, prefer_counts=likelihood != "gaussian")
        if likelihood in ("nb", "zinb"):
            io.check_counts(x, "X" if layer == "X" else f"layers['{layer}']")
        else:
            io.check_finite(x, layer)
        batch_key = spec.params.get("batch_key") or None
        columns: dict[str, Any] = {"x": DeviceMatrix(x, dev)}
        batch_cats: list[str] = []
        if batch_key:
            codes, batch_cats = encode_labels(io.check_label(adata, batch_key, 1))
            columns["batch"] = torch.as_tensor(codes, device=columns["x"].device)
        net = models.build(info, adata.n_vars, spec.params, n_batch=len(batch_cats))
        module, progress = fit(
            net, spec, run_dir, dev, columns, split, kl_warmup=spec.params["kl_warmup"]
        )
        cancelled = progress.cancelled
        xm, b = columns["x"], columns.get("batch")
        latent = infer(lambda xb, *bb: module.encode(xb, bb[0] if bb else None)[0], xm, b)
        torch.manual_seed(spec.seed)
        test_cols = {k: v for k, v in columns.items()}
        elbo = []
        with torch.no_grad():
            for batch in Batches(test_cols, split["test"], INFER_BATCH):
                elbo.append(module.loss(batch, kl_weight=1.0)["elbo"].item() * batch["x"].shape[0])
        metrics = {"test_elbo": float(np.sum(elbo) / len(split["test"]))}
        if _dense_ok(*adata.shape):

            def decoded(xb, *bb):
                o, _, _ = module(xb, bb[0] if bb else None, sample=False)
                return torch.cat([o["proportion"], o["mean"]], dim=1)

            both = infer(decoded, xm, b)
            n = adata.n_vars
            out.layers["denoised"] = (
                both[:, :n] * (1e4 if likelihood != "gaussian" else 1.0)
            ).astype(np.float32)
            out.layers["reconstruction"] = both[:, n:].astype(np.float32)
        save_model(run_dir, module, spec, adata, layer, batch_categories=batch_cats)
    out.obsm[f"X_{spec.model}"] = latent
    metrics.update(_latent_scores(latent, labels, split))
    return metrics, out, cancelled


def _perturb(spec: RunSpec, info: models.ModelInfo, adata: ad.AnnData, run_dir: Path, dev: str):
    from engine.perturb import run_perturbation

    return run_perturbation(spec, info, adata, run_dir, dev)
