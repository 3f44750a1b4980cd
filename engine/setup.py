"""How an AnnData maps onto a model, registered once and saved with it (scvi-tools'
``setup_anndata`` / ``AnnDataManager`` idea, without mixins).

``InputSetup.register(adata, spec)`` validates the data for the model and records which matrix
it reads (``X`` or a layer), the genes in order, the input transform, the label classes and the
batch categories. ``matrix(adata)`` and ``batch_codes(adata)`` transfer new data onto that
record: the same layer, the model's gene order (``align=True`` fills genes it lacks with zeros),
the same transform, and a refusal for what the model cannot read.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp

from engine import io
from engine.errors import ScwbError

TRANSFORMS = ("none", "log1p_cp10k")


@dataclass
class InputSetup:
    var_names: list[str]
    layer: str = "X"  # "X" or a key of adata.layers
    needs: str = "any"  # 'any' | 'counts' | 'lognorm'
    transform: str = "none"  # applied after reading: 'log1p_cp10k' = log1p(x / total * 1e4)
    counts: bool | None = None  # whether the training matrix held raw counts
    label_key: str | None = None
    classes: list[str] = field(default_factory=list)
    batch_key: str | None = None
    batch_categories: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------- registering
    @classmethod
    def register(cls, adata: ad.AnnData, spec: Any, label_classes: bool = False) -> InputSetup:
        """Validate ``adata`` for ``spec``'s model and record how it is read."""
        info = spec.info
        io.check_not_empty(adata)
        io.check_unique_names(adata)
        needs = info.needs_for(spec.params)
        x, layer = choose_matrix(adata, spec.layer, prefer_counts=needs == "counts")
        transform = "none"
        if info.lognorm_counts and io.matrix_kind(x) == "counts":
            transform = "log1p_cp10k"  # PCA on log-normalised counts, as a user would
        setup = cls(
            var_names=list(map(str, adata.var_names)),
            layer=layer,
            needs=needs,
            transform=transform,
            counts=io.matrix_kind(x) == "counts",
        )
        try:
            setup.check_values(x)
        except ScwbError as exc:  # name the layer that would do (Kang's 'logcounts')
            raise ScwbError(str(exc) + _other_layer(adata, layer, needs)) from None
        if spec.label_key:
            labels = io.check_label(adata, spec.label_key, 2 if label_classes else 1)
            setup.label_key = spec.label_key
            if label_classes:
                setup.classes = sorted(set(labels.astype(str)))
        batch_key = (spec.params or {}).get("batch_key") or None
        if batch_key:
            setup.batch_key = batch_key
            setup.batch_categories = sorted(set(io.check_label(adata, batch_key, 1).astype(str)))
        return setup

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InputSetup:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

    @property
    def where(self) -> str:
        return "X" if self.layer == "X" else f"layers['{self.layer}']"

    # ------------------------------------------------------------------------- transferring
    def check_values(self, x: Any) -> None:
        """Refuse a matrix the model cannot read (NaN, not counts for a count model, ...)."""
        if self.needs == "counts":
            io.check_counts(x, self.where)
            return
        io.check_finite(x, self.where)
        if self.needs == "lognorm" and io.matrix_kind(x) == "counts":
            raise ScwbError(
                f"This model reads log-normalised expression, and {self.where} holds raw counts: "
                "run logCPM (Preprocess > normalize) first."
            )

    def matrix(self, adata: ad.AnnData, align: bool = False) -> tuple[Any, list[str]]:
        """The model's input from ``adata``: its layer, its genes in its order, its transform;
        with the genes that were missing (filled with zeros, only when ``align``)."""
        if adata.n_obs == 0:
            raise ScwbError("The data has no cells: there is nothing to apply the model to.")
        if self.layer != "X" and self.layer not in adata.layers:
            raise ScwbError(
                f"The model reads layers['{self.layer}'] and this data has no such layer "
                f"(it has {', '.join(adata.layers) or 'none'})."
            )
        src = adata.X if self.layer == "X" else adata.layers[self.layer]
        x, missing = align_columns(src, adata.var_names, self.var_names, align)
        self.check_values(x)
        if self.counts is not None and (io.matrix_kind(x) == "counts") != self.counts:
            trained = "raw counts" if self.counts else "transformed values (not counts)"
            given = "raw counts" if not self.counts else "values that are not counts"
            raise ScwbError(
                f"The model was trained on {trained} in {self.where}, and this data holds {given} "
                "there: preprocess it the same way (or pick the matching layer)."
            )
        if self.transform == "log1p_cp10k":
            x = log1p_cp10k(x)
        return x, missing

    def label_codes(self, adata: ad.AnnData) -> np.ndarray:
        labels = io.check_label(adata, self.label_key, 1).astype(str)
        unknown = sorted(set(labels) - set(self.classes))
        if unknown:
            raise ScwbError(
                f"The column {self.label_key!r} has a class the model was not trained on: {unknown[0]!r}."
            )
        lookup = {c: i for i, c in enumerate(self.classes)}
        return np.array([lookup[v] for v in labels], dtype=np.int64)

    def batch_codes(self, adata: ad.AnnData) -> np.ndarray | None:
        if not self.batch_key:
            return None
        if self.batch_key not in adata.obs:
            raise ScwbError(
                f"The model was trained with the batch column {self.batch_key!r}, which this data lacks."
            )
        values = adata.obs[self.batch_key].astype(str).to_numpy()
        unknown = sorted(set(values) - set(self.batch_categories))
        if unknown:
            raise ScwbError(
                f"The batch column {self.batch_key!r} holds {unknown[0]!r}, a batch the model never saw "
                f"(it knows {', '.join(self.batch_categories[:5])})."
            )
        lookup = {c: i for i, c in enumerate(self.batch_categories)}
        return np.array([lookup[v] for v in values], dtype=np.int64)


def choose_matrix(
    adata: ad.AnnData, layer: str | None, prefer_counts: bool = False
) -> tuple[Any, str]:
    """The matrix a model reads and its name: ``layer``, else ``layers['counts']`` for a count
    model when present, else ``X``."""
    if layer and layer != "X":
        if layer not in adata.layers:
            raise ScwbError(
                f"The data has no layer {layer!r}; it has {', '.join(adata.layers) or 'none'} (or X)."
            )
        return adata.layers[layer], layer
    if prefer_counts and not layer and "counts" in adata.layers:
        return adata.layers["counts"], "counts"
    return adata.X, "X"


def align_columns(x: Any, have: pd.Index, genes: list[str], align: bool) -> tuple[Any, list[str]]:
    """Columns of ``x`` (named ``have``) put in the order of ``genes``. Genes ``x`` lacks are
    refused, or filled with zeros when ``align``; extra genes are dropped."""
    have = pd.Index(np.asarray(have).astype(str))
    if len(have) == len(genes) and (have == pd.Index(genes)).all():
        return x, []
    if not have.is_unique:
        dup = have[have.duplicated()][0]
        raise ScwbError(f"Duplicated gene names (e.g. {dup!r}); make them unique first.")
    pos = have.get_indexer(genes)
    missing = [g for g, p in zip(genes, pos, strict=True) if p < 0]
    if missing and not align:
        raise ScwbError(
            f"The data lacks {len(missing)} of the model's {len(genes)} genes (e.g. {', '.join(missing[:3])}); "
            "use the same preprocessing, or pass --align to fill them with zeros."
        )
    if len(missing) == len(genes):
        raise ScwbError("The data shares no gene with the model.")
    take = np.where(pos >= 0, pos, 0)
    if sp.issparse(x):
        out = sp.csr_matrix(x)[:, take]
        if missing:
            out = out @ sp.diags((pos >= 0).astype(out.dtype))
            out.eliminate_zeros()
        return sp.csr_matrix(out), missing
    out = np.asarray(x)[:, take].copy()
    if missing:
        out[:, pos < 0] = 0
    return out, missing


def log1p_cp10k(x: Any) -> Any:
    """``log1p(x / total * 1e4)`` per cell; stays sparse when ``x`` is."""
    if sp.issparse(x):
        x = sp.csr_matrix(x, dtype=np.float32, copy=True)
        total = np.asarray(x.sum(1)).ravel()
        x = sp.csr_matrix(sp.diags(1e4 / np.maximum(total, 1)) @ x, dtype=np.float32)
        x.data = np.log1p(x.data)
        return x
    d = np.asarray(x, dtype=np.float32)
    return np.log1p(d / np.maximum(d.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)


def _other_layer(adata: ad.AnnData, layer: str, needs: str) -> str:
    """ " Or pick layers['x'] (--layer x), which holds ..." for a layer of ``adata`` that a
    model needing ``needs`` reads, where ``layer`` was refused; '' when none does."""
    kind, said = {"counts": ("counts", "raw counts"), "lognorm": ("log-normalised",) * 2}.get(
        needs, ("", "")
    )
    if kind and layer != "X" and io.matrix_kind(adata.X) == kind:
        return f" Or train on X (no --layer), which holds {said} values."
    for name in adata.layers:
        if kind and name != layer and io.matrix_kind(adata.layers[name]) == kind:
            return f" Or pick layers['{name}'] (--layer {name}), which holds {said} values."
    return ""
