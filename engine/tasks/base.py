"""What every task shares: creation from a spec, saving and loading, and writing result slots
without ever clobbering what the input already had."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd

from engine import io, models, runs
from engine.setup import InputSetup
from engine.split import split_for


class Task:
    """A model of ``info`` with its input setup; subclasses implement fit/annotate/evaluate."""

    name = ""
    label_classes = False  # whether the setup records the label's classes (classifiers)
    share_input = False  # start_output shares the input's matrices instead of copying them

    def __init__(
        self,
        info: models.ModelInfo,
        params: dict[str, Any],
        setup: InputSetup,
        dims: dict[str, Any] | None = None,
        extra: dict[str, Any] | None = None,
    ):
        self.info = info
        self.params = params
        self.setup = setup
        self.dims = dict(dims or {})  # what the data decided: classes, batches, output activation
        self.extra = dict(extra or {})  # provenance and task state saved in model.json
        self.module: Any = None
        self.device = "cpu"

    # ------------------------------------------------------------------------- creating
    @classmethod
    def create(cls, spec: Any, adata: ad.AnnData) -> Task:
        setup = InputSetup.register(adata, spec, label_classes=cls.label_classes)
        task = cls(
            spec.info,
            dict(spec.params),
            setup,
            dims={"seed": spec.seed},
            extra={
                "run_id": Path(spec.out).name if spec.out else "",
                "recipe": recipe_text(adata),
            },
        )
        task.configure(spec, adata)
        return task

    def configure(self, spec: Any, adata: ad.AnnData) -> None:
        """Task-specific choices made from the spec and the data (saved in dims/extra)."""

    def build(self) -> Any:
        return models.build(self.info, len(self.setup.var_names), self.params, self.dims)

    # ------------------------------------------------------------------------- the split
    def stratify(self, adata: ad.AnnData) -> np.ndarray | None:
        if self.setup.label_key:
            return adata.obs[self.setup.label_key].astype(str).to_numpy()
        return None

    def make_split(self, adata: ad.AnnData, spec: Any) -> dict[str, np.ndarray]:
        return split_for(adata.obs, spec, self.stratify(adata))

    # ------------------------------------------------------------------------- the work
    def fit(self, adata: ad.AnnData, split: dict, ctx: Any) -> bool:
        """Train on ``split['train']`` (validate on ``split['val']``); return whether a cancel
        stopped it."""
        raise NotImplementedError

    def annotate(self, adata: ad.AnnData, align: bool = False, layers: bool = True) -> ad.AnnData:
        """A copy of ``adata`` with every result slot written; per-gene (cells x genes) output
        layers only when ``layers`` and they fit the memory budget (``dense_ok``)."""
        raise NotImplementedError

    def evaluate(self, out: ad.AnnData, split: dict, spec: Any) -> dict[str, Any]:
        """Test metrics from an annotated copy of the training data."""
        raise NotImplementedError

    # ------------------------------------------------------------------------- slots
    def start_output(self, adata: ad.AnnData) -> tuple[ad.AnnData, dict[str, str]]:
        """The output: the input's slots, to which the model's are added. A copy, unless the
        caller hands its input over (``share_input``: the worker, which drops its input
        afterwards; at a million cells a copy of X alone is GBs). Shared or not, the input
        never changes: outputs go to new keys of the output's own tables and mappings."""
        if not self.share_input or adata.is_view:
            return adata.copy(), {}
        out = ad.AnnData(
            X=adata.X,
            obs=adata.obs.copy(),
            var=adata.var.copy(),
            uns=copy.deepcopy(dict(adata.uns)),
            obsm=dict(adata.obsm),
            varm=dict(adata.varm),
            layers=dict(adata.layers),
            obsp=dict(adata.obsp),
            varp=dict(adata.varp),
            raw=adata.raw,
        )
        return out, {}

    def to_data_genes(self, values: np.ndarray, adata: ad.AnnData) -> np.ndarray:
        """Per-gene outputs (in the model's gene order) laid out on ``adata``'s own genes: a
        gene the model does not know gets NaN, a model gene the data lacks is dropped."""
        genes = pd.Index(self.setup.var_names)
        have = pd.Index(adata.var_names.astype(str))
        if len(have) == len(genes) and (have == genes).all():
            return values
        pos = genes.get_indexer(have)
        out = np.full((values.shape[0], len(have)), np.nan, dtype=np.float32)
        known = pos >= 0
        out[:, known] = values[:, pos[known]]
        return out

    def put(self, out: ad.AnnData, slots: dict, where: str, role: str, key: str, value) -> str:
        """Write ``value`` to ``out.<where>[key]`` unless the input already has that key: then
        under ``key_<model>`` (and a counter), so an input slot is never overwritten."""
        container = getattr(out, where)
        final, i = key, 1
        while final in container and final not in slots.values():
            final = f"{key}_{self.info.name}" if i == 1 else f"{key}_{self.info.name}_{i}"
            i += 1
        container[final] = value
        slots[role] = final
        return final

    def finish_output(self, out: ad.AnnData, slots: dict, missing: list[str]) -> ad.AnnData:
        prov = {
            "model": self.info.name,
            "task": self.info.task,
            "params": {k: v for k, v in self.params.items() if v is not None},
            "run_id": self.extra.get("run_id", ""),
            "recipe": self.extra.get("recipe", ""),
            "layer": self.setup.layer,
            "slots": dict(slots),
        }
        if self.setup.label_key:
            prov["label_key"] = self.setup.label_key
        if self.setup.classes:
            prov["classes"] = list(self.setup.classes)
        if missing:
            prov["missing_genes"] = list(missing)
        out.uns["scwb"] = {**prov, **self.provenance()}
        return out

    def provenance(self) -> dict[str, Any]:
        """Task-specific entries of ``uns['scwb']``."""
        return {}

    # ------------------------------------------------------------------------- persistence
    def save(self, run_dir: Path) -> None:
        """``model.pt`` (plain tensors) and ``model.json`` (how to rebuild it and read data)."""
        from engine import toolkit

        run_dir = Path(run_dir)
        toolkit.save_weights(run_dir / "model.pt", self.module)
        runs.write_json(run_dir / "model.json", self.metadata())

    def metadata(self) -> dict[str, Any]:
        return {
            "model": self.info.name,
            "task": self.info.task,
            "params": self.params,
            "n_in": len(self.setup.var_names),
            "setup": self.setup.to_dict(),
            "dims": self.dims,
            "extra": self.extra,
        }

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> Task:
        """The task object ``model.json`` describes, without its weights."""
        info = models.get(meta["model"])
        # a training-only option a later version dropped (logreg's weight_decay became C) does
        # not stop an older run's model from loading: the weights are what predict needs
        saved = models.recorded_params(info.name, dict(meta.get("params") or {}))
        saved = {k: v for k, v in saved.items() if k in info.params}
        return cls(
            info,
            models.coerce_params(info, saved),
            InputSetup.from_dict(meta["setup"]),
            dims=meta.get("dims"),
            extra=meta.get("extra"),
        )

    @classmethod
    def load(cls, run_dir: Path, meta: dict[str, Any]) -> Task:
        from engine import toolkit

        task = cls.from_metadata(meta)
        task.module = task.build()
        task.module.load_state_dict(toolkit.load_weights(Path(run_dir) / "model.pt"))
        if hasattr(task.module, "eval"):
            task.module.eval()
        return task


def recipe_text(adata: ad.AnnData) -> str:
    """The preprocessing recipe the data records (``uns['recipe']``) as JSON text, or ''."""
    value = adata.uns.get("recipe")
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, default=str)
    except (TypeError, ValueError):
        return ""


def dense_ok(n_obs: int, n_vars: int) -> bool:
    """Whether a dense cells x genes output layer fits half the memory budget."""
    return n_obs * n_vars * 4 <= io.memory_budget() // 2


def fit_pca(est: Any, dense: np.ndarray, split: dict, run_dir: Path) -> None:
    """Fit a PCA baseline on the training cells and record its one-step scores."""
    est.fit(dense[split["train"]])
    from engine import evaluate

    err = evaluate.mse_per_cell(dense, est.reconstruct(dense))
    baseline_epoch(
        run_dir,
        train_mse=float(err[split["train"]].mean()),
        val_mse=float(err[split["val"]].mean()),
    )


def baseline_epoch(run_dir: Path, **scores: float) -> None:
    """A scikit-learn baseline has no epochs; one row keeps the metrics.csv contract."""
    runs.write_metrics_csv(run_dir, [{"epoch": 1, **scores}])
    runs.update_status(run_dir, epoch=1, max_epochs=1)
