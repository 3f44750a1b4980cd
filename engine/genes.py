"""Gene names a person reads: many files name their genes by Ensembl ID (``ENSG00000167286``)
and keep the symbol (``CD3D``) in a ``var`` column (scvi-tools' ``gene_symbols``, CELLxGENE's
``feature_name``). Mitochondrial genes are found, and genes searched and labelled, by symbol;
``var_names`` stay the genes' identity everywhere else (runs, exports, model gene lists)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

# the columns tools write symbols to, in the order they are tried
SYMBOL_COLUMNS = (
    "gene_symbols",
    "gene_symbol",
    "feature_name",
    "gene_name",
    "gene_names",
    "symbol",
    "symbols",
    "SYMBOL",
    "Symbol",
    "gene",
    "genes",
)
# Ensembl (ENSG, ENSMUSG, ...), Entrez-like numbers, FlyBase and WormBase IDs
_ID = re.compile(r"^(ENS[A-Z]*G\d{6,}|\d+|FBgn\d+|WBGene\d+)(\.\d+)?$")
_MITO = ("MT-", "MT.")  # human MT-CO1, mouse mt-Co1 (upper-cased), some pipelines MT.CO1


def _id_share(names: pd.Index | pd.Series) -> float:
    s = pd.Series(np.asarray(names, dtype=object)).astype(str)
    return float(s.str.match(_ID).mean()) if len(s) else 0.0


def symbol_column(var: pd.DataFrame) -> str | None:
    """The ``var`` column holding gene symbols when ``var_names`` are IDs, else None: the first
    of ``SYMBOL_COLUMNS`` whose values are text, mostly not IDs themselves (``gene`` holds
    Ensembl IDs in some files whose names are symbols already)."""
    if len(var.index) == 0 or _id_share(var.index) < 0.5:
        return None
    for col in SYMBOL_COLUMNS:
        if col not in var.columns:
            continue
        values = var[col]
        if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
            continue
        text = values.astype(str)
        if text.str.strip().replace({"nan": ""}).ne("").mean() >= 0.5 and _id_share(text) < 0.5:
            return col
    return None


def symbols(var: pd.DataFrame) -> pd.Index:
    """Each gene's symbol (its var name where the file has no symbol for it)."""
    names = pd.Index(var.index.astype(str))
    col = symbol_column(var)
    if col is None:
        return names
    sym = var[col].astype(object).where(var[col].notna(), None).astype(str).str.strip()
    missing = sym.isin(["", "None", "nan"]).to_numpy()
    return pd.Index(np.where(missing, names, sym.to_numpy()))


def labels(var: pd.DataFrame) -> pd.Index:
    """What to print for each gene: its symbol, with the var name after a symbol that several
    genes share (``TBCE (ENSG00000284770)``), or the var name alone when there are no symbols."""
    names = pd.Index(var.index.astype(str))
    sym = symbols(var)
    if sym.equals(names):
        return names
    shared = sym.duplicated(keep=False) & (sym != names)
    return pd.Index(np.where(shared, sym + " (" + names + ")", sym))


def label_map(var: pd.DataFrame) -> dict[str, str]:
    """var name -> label, for figures that hold var names (empty when the labels are the names)."""
    lab = labels(var)
    names = var.index.astype(str)
    return {} if lab.equals(pd.Index(names)) else dict(zip(names, lab, strict=True))


def mito_mask(var: pd.DataFrame) -> np.ndarray:
    """Which genes are mitochondrial: a symbol that starts with MT- (any case), and those a
    boolean ``var['mt']`` marks (scanpy's convention; a stale all-False column does not hide
    the MT- genes: a review)."""
    up = symbols(var).str.upper()
    mask = np.asarray(up.str.startswith(_MITO[0]) | up.str.startswith(_MITO[1]), dtype=bool)
    if "mt" in var.columns and pd.api.types.is_bool_dtype(var["mt"]):
        mask |= var["mt"].fillna(False).to_numpy(dtype=bool)  # nullable: a gap is not mt
    return mask


def search(var: pd.DataFrame, query: str, sym: pd.Index | None = None) -> np.ndarray:
    """Positions of the genes whose var name or symbol contains ``query`` (any case), exact
    matches first (``CD4`` above CD40 and CD44); ``sym``: ``symbols(var)``, when the caller
    holds them already."""
    names = pd.Index(var.index.astype(str))
    if not query:
        return np.arange(len(names))
    q = query.strip()
    sym = symbols(var) if sym is None else sym
    hit = names.str.contains(q, case=False, regex=False) | sym.str.contains(
        q, case=False, regex=False
    )
    exact = (names.str.lower() == q.lower()) | (sym.str.lower() == q.lower())
    pos = np.flatnonzero(hit)
    return np.concatenate([pos[exact[pos]], pos[~exact[pos]]])
