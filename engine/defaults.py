"""Defaults chosen from the data: which obs column holds the condition or the cell type, which
value is the control. Plain functions, torch-free, on an AnnData, its ``obs`` table or the output
of ``engine.io.describe`` (whose ``labels`` already hold each usable column's value counts).

The Train page fills its forms from these, so an untouched form trains the experiment a
biologist would expect (control -> stimulated, one cell type, the cell-type column as label).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MIN_CELLS = 5  # as engine.perturb.MIN_CELLS: fewer cells of a condition cannot be predicted/scored
GOOD_CELLS = 20  # a target with at least this many cells of each condition is preferred

# a token is a run of letters or digits: "unstim_1" -> ["unstim", "1"], "IFN-beta" -> ["ifn", "beta"]
_CONTROL_TOKENS = {
    "control",
    "controls",
    "ctrl",
    "ctl",
    "ctr",
    "unstim",
    "unstimulated",
    "unstimulate",
    "nonstim",
    "ref",
    "reference",
    "healthy",
    "basal",
    "baseline",
    "untreated",
    "untr",
    "vehicle",
    "veh",
    "dmso",
    "pbs",
    "mock",
    "wt",
    "wildtype",
    "naive",
    "normal",
    "steady",
    "sham",
    "placebo",
    "none",
    "unperturbed",
    "nt",
    "day0",
    "d0",
    "t0",
    "pre",
}
_CONTROL_PREFIXES = ("unstim", "untreat", "control", "ctrl", "wildtype", "non_stim", "nonstim")
_STIM_TOKENS = {
    "stim",
    "stimulated",
    "stimulation",
    "treated",
    "treatment",
    "treat",
    "infected",
    "infection",
    "disease",
    "diseased",
    "case",
    "tumor",
    "tumour",
    "perturbed",
    "ko",
    "knockout",
    "mutant",
    "ifn",
    "lps",
    "post",
    "activated",
    "exposed",
    "covid",
    "sick",
    "patient",
}
_STIM_PREFIXES = ("stim", "treat", "infect", "diseas", "perturb", "activat", "knock", "mut")
_CONDITION_NAMES = (
    "condition",
    "conditions",
    "stim",
    "stimulation",
    "treatment",
    "treatments",
    "perturbation",
    "group",
    "group_id",
    "status",
    "disease",
    "state",
    "genotype",
    "infection",
    "exposure",
)
_CELL_TYPE_NAMES = (
    "cell_type",
    "celltype",
    "cell_types",
    "celltypes",
    "cell_label",
    "cell_labels",
    "cell_type_label",
    "cell_ontology_class",
    "cell_type_annotation",
    "seurat_annotations",
    "seurat_annotation",
    "annotation",
    "annotations",
    "bulk_labels",
    "labels",
    "label",
    "cell_annotation",
    "predicted_celltype",
    "predicted_cell_type",
    "majority_voting",
    "cell_subtype",
    "subtype",
    "lineage",
)
_CLUSTER_WORDS = ("louvain", "leiden", "cluster", "clusters", "phenograph", "seurat_clusters")
# sample / donor / batch identities, cell-cycle phase, QC flags: never a cell type
_NOT_CELL_TYPE = re.compile(
    r"(^orig[._]?ident$|sample|donor|batch|replicate|\brep\b|individual|patient|subject|"
    r"^ind$|lane|library|plate|well|barcode|^ident$|^id$|^cell_?id$|^phase$|cell_cycle|cycle|"
    r"^sex$|^gender$|^age$|doublet|^tissue$|^organ|species|^assay|dataset|study|chemistry|"
    r"^n_|^total_|^pct_|percent|^log1p_)",
    re.IGNORECASE,
)
_CELL_WORDS = re.compile(
    r"(\bt\b|\bb\b|\bnk\b|t[ -]?cell|b[ -]?cell|nk[ -]?cell|cells?\b|cd\d+|mono|macro|dendrit|"
    r"\bdcs?\b|pdc|neutro|eosino|baso|mast|erythro|platelet|megakar|plasma|progenitor|stem|"
    r"\bhsc|enterocyte|goblet|tuft|endocrine|paneth|\bta\b|neuron|astro|oligo|microglia|opc|"
    r"fibro|endotheli|epitheli|hepato|keratino|myeloid|lymph|cytotoxic|naive|memory|\btreg|"
    r"\breg\b|helper|killer|granulo|pericyte|smooth|muscle|myocyte|adipo|osteo|chondro|"
    r"basal cell|club|ciliated|secretory|alveolar|podocyte|acinar|ductal|islet|alpha|beta|delta|"
    r"gamma|glia|schwann|melanocyte|leukocyte|mk\b|ilc|mait|gdt|pdcs?)",
    re.IGNORECASE,
)


def _tokens(value: Any) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9]+", str(value).lower()) if t]


def _looks_control(value: Any) -> int:
    """2: clearly a control name; 1: control-ish (a token); 0: no."""
    text = str(value).strip().lower()
    squashed = re.sub(r"[^a-z0-9]+", "", text)
    if squashed in _CONTROL_TOKENS:
        return 2
    if text.startswith(_CONTROL_PREFIXES) or squashed.startswith(_CONTROL_PREFIXES):
        return 2
    toks = _tokens(text)
    if any(t in _CONTROL_TOKENS for t in toks):
        return 1
    return 0


def _looks_stim(value: Any) -> int:
    if _looks_control(value):
        return 0  # "unstimulated" contains "stim" and is a control
    text = str(value).strip().lower()
    squashed = re.sub(r"[^a-z0-9]+", "", text)
    if squashed in _STIM_TOKENS or text.startswith(_STIM_PREFIXES):
        return 2
    toks = _tokens(text)
    if any(t in _STIM_TOKENS or t.startswith(_STIM_PREFIXES) for t in toks):
        return 1
    return 0


def _counts(values: Any) -> dict[str, int]:
    """Value -> count from a Series / list / array / value-count mapping, most frequent first."""
    if isinstance(values, dict):
        pairs = {str(k): int(v) for k, v in values.items()}
    else:
        s = values if isinstance(values, pd.Series) else pd.Series(list(values))
        # count first, then name the (few) distinct values: turning every cell's value into
        # text cost 1 ms a column, seconds for a file with thousands of obs columns
        if isinstance(s.dtype, pd.CategoricalDtype):  # ties in order of appearance, as before
            s = s.astype(str)
        counts = s.value_counts(dropna=False)
        counts = counts[counts > 0]  # a categorical's unused categories are counted as 0
        pairs = {}
        # named as pandas writes them as text (a float32 0.1 is '0.1', a date has no time)
        for k, v in zip(counts.index.astype(str), counts.to_numpy(), strict=True):
            pairs[k] = pairs.get(k, 0) + int(v)  # 1 and "1" are one value
    return dict(sorted(pairs.items(), key=lambda kv: -kv[1]))


def control_value(values: Any) -> str | None:
    """The value that looks like a control (``control``, ``ctrl``, ``unstim``, ``healthy``, ``DMSO``,
    ...), else the most frequent value. ``values``: the column, its unique values, or value counts."""
    counts = _counts(values)
    if not counts:
        return None
    best = max(counts, key=lambda v: (_looks_control(v), counts[v]))
    return best if _looks_control(best) else next(iter(counts))


def stimulated_value(values: Any, ctrl: str | None) -> str | None:
    """Another value than ``ctrl``: one that looks stimulated (stim*, treated, infected, disease,
    ...), else the most frequent non-control value."""
    counts = {v: n for v, n in _counts(values).items() if v != str(ctrl)}
    if not counts:
        return None
    best = max(counts, key=lambda v: (_looks_stim(v), -_looks_control(v), counts[v]))
    return best


# ----------------------------------------------------------------------------- columns
@dataclass
class Column:
    name: str
    counts: dict[str, int]  # value -> cells, most frequent first
    numeric: bool
    n_obs: int
    n_values: int = -1  # distinct values (counts is left empty above 500, and for numbers)

    def __post_init__(self) -> None:
        if self.n_values < 0:
            self.n_values = len(self.counts)


def columns(source: Any) -> list[Column]:
    """The obs columns of an AnnData, an obs DataFrame or an ``io.describe`` dict."""
    if isinstance(source, dict) and "labels" in source:
        numeric = set(source.get("numeric_obs") or [])
        n = int(source.get("n_obs") or 0)
        return [
            Column(str(k), _counts(v), k in numeric, n) for k, v in (source["labels"] or {}).items()
        ]
    obs = getattr(source, "obs", source)
    if not isinstance(obs, pd.DataFrame):
        raise TypeError(
            f"expected an AnnData, an obs DataFrame or io.describe output, not {type(source)}"
        )
    out = []
    for name in obs.columns:
        s = obs[name]
        numeric = pd.api.types.is_numeric_dtype(s) and not isinstance(s.dtype, pd.CategoricalDtype)
        nunique = int(s.nunique(dropna=True))
        # the values are read only for text columns (cell types, conditions); above 500
        # values a column is an id; a numeric column is judged by its number of values alone
        counts = _counts(s.dropna()) if nunique <= 500 and not numeric else {}
        out.append(Column(str(name), counts, bool(numeric), len(obs), nunique))
    return out


def _cell_type_score(col: Column) -> int:
    name = col.name.strip().lower().replace(".", "_").replace(" ", "_").replace("-", "_")
    if name in _CELL_TYPE_NAMES:
        score = 6
    elif ("cell" in name and ("type" in name or "label" in name)) or "celltype" in name:
        score = 5
    elif "annot" in name or name.endswith("_type") or name.endswith("_label") or "label" in name:
        score = 4
    elif any(w in name for w in _CLUSTER_WORDS):
        score = 1
    else:
        score = 0
    values = list(col.counts)
    if values:
        hits = sum(1 for v in values if _CELL_WORDS.search(str(v).replace("_", " ")))
        if hits / len(values) >= 0.5:
            score += 3
        elif hits and hits / len(values) >= 0.25:
            score += 1
    return score


def _is_id_like(col: Column) -> bool:
    k = col.n_values
    return col.n_obs > 0 and (k >= 0.5 * col.n_obs or k > 500)


def cell_type_column(source: Any, min_classes: int = 2, max_classes: int = 50) -> str | None:
    """The obs column whose name or values look like cell types (``cell_type``, ``cell_label``,
    ``bulk_labels``, ``louvain``, ...) with ``min_classes``-``max_classes`` values; never a numeric
    column, a per-cell id, a sample/donor/batch column or a condition column. None when no column
    looks like cell types."""
    best, best_score = None, 0
    for col in columns(source):
        if col.numeric or _is_id_like(col) or not (min_classes <= col.n_values <= max_classes):
            continue
        if _NOT_CELL_TYPE.search(col.name) or _condition_score(col) >= 3:
            continue
        score = _cell_type_score(col)
        if score > best_score:
            best, best_score = col.name, score
    return best


def label_column(source: Any) -> str | None:
    """The default label column for a classifier: the cell-type column, else the first categorical
    column that is not an id, a sample/donor/batch or a condition, else the first usable one."""
    ct = cell_type_column(source)
    if ct:
        return ct
    usable = [
        c
        for c in columns(source)
        if not c.numeric and not _is_id_like(c) and 2 <= c.n_values <= 200
    ]
    for c in usable:
        if not _NOT_CELL_TYPE.search(c.name) and _condition_score(c) < 3:
            return c.name
    return usable[0].name if usable else None


MAX_NUMERIC_CLASSES = 30  # a numeric column with more values is a measurement, not classes


def label_columns(source: Any) -> list[str]:
    """The obs columns a classifier may take as labels, best first: text or categorical columns
    (not per-cell ids), then numeric ones with at most ``MAX_NUMERIC_CLASSES`` values (cluster
    numbers); never a continuous measurement such as genes or counts per cell, whose every
    value would be a class of one or two cells."""
    cols = [c for c in columns(source) if c.n_values >= 2 and not _is_id_like(c)]
    text = [c.name for c in cols if not c.numeric]
    numbers = [c.name for c in cols if c.numeric and c.n_values <= MAX_NUMERIC_CLASSES]
    return text + numbers


_QC_NAME = re.compile(r"(^n_|^total_|^pct_|percent|^log1p_|_counts$|^ncount|^nfeature)", re.I)
_GROUP_WORDS = re.compile(
    r"(donor|sample|patient|individual|subject|^ind$|replicate|\brep\b|batch|orig[._]?ident|"
    r"library|lane|mouse|animal)",
    re.IGNORECASE,
)


def colour_by_group(name: str, values: pd.Series) -> bool:
    """Whether a column colours cells by group (a legend) rather than on a scale: text, booleans,
    and whole numbers with at most ``MAX_NUMERIC_CLASSES`` values whose name is not a per-cell
    count (donors 1 to 8, cluster numbers: a colour scale read donor 2 as 'between 1 and 3');
    a measurement (genes per cell, a score) keeps its scale."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return True
    if _QC_NAME.search(str(name)):
        return False
    v = pd.to_numeric(values, errors="coerce").dropna().to_numpy(dtype=float)
    whole = bool(np.all(np.isfinite(v)) and np.all(v == np.round(v)))
    return whole and 1 <= len(np.unique(v)) <= MAX_NUMERIC_CLASSES


def group_labels(values: pd.Series) -> np.ndarray:
    """A grouping column's values as legend labels: whole numbers without a '.0' (donor 1.0,
    2.0 stored as floats, or a nullable integer column: a review), a missing value as 'NA'."""
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        return values.astype(str).to_numpy()

    def label(v: float) -> str:
        return "NA" if not np.isfinite(v) else str(int(v)) if v == round(v) else str(v)

    return np.array([label(v) for v in pd.to_numeric(values, errors="coerce").astype(float)])


def group_columns(source: Any) -> list[str]:
    """Columns whose values are groups of cells a model could be tested on whole (donors,
    samples, batches: 3 or more of them, none an id per cell), the donor-like names first."""
    cols = [
        c
        for c in columns(source)
        if c.n_values >= 3
        and not _is_id_like(c)
        # a measurement per cell is no group (n_genes, 187 values, was offered to test on)
        and not (c.numeric and (c.n_values > MAX_NUMERIC_CLASSES or _QC_NAME.search(c.name)))
    ]
    named = [c.name for c in cols if _GROUP_WORDS.search(c.name)]
    return named + [c.name for c in cols if c.name not in named]


def donor_column(source: Any) -> str | None:
    """The column that looks like donors, samples or batches (by its name), or None."""
    return next((c for c in group_columns(source) if is_group_name(c)), None)


def is_group_name(name: str) -> bool:
    """Whether a column's name says donors, samples, batches or the like."""
    return bool(_GROUP_WORDS.search(str(name)))


def input_matrix(description: dict) -> str:
    """The matrix a model should read by default: ``X``, unless X holds raw cytometry
    intensities and a layer holds them transformed (arcsinh or scaled), which models train on."""
    if description.get("x_kind") != "raw intensities":
        return "X"
    layers = description.get("layers") or {}
    for kind in ("arcsinh-transformed", "scaled (MinMax)", "scaled (z-score)"):
        for name, k in layers.items():
            if k == kind:
                return str(name)
    return "X"


def _condition_score(col: Column) -> int:
    name = col.name.strip().lower().replace(".", "_").replace(" ", "_")
    score = 0
    if name in ("condition", "conditions"):
        score += 4
    elif name in _CONDITION_NAMES:
        score += 3 if name not in ("state", "status", "group") else 2
    elif any(w in name for w in ("condition", "stim", "treat", "perturb", "infect")):
        score += 2
    values = list(col.counts)
    if values and 2 <= len(values) <= 10:
        if any(_looks_control(v) == 2 for v in values):
            score += 2
        if any(_looks_stim(v) for v in values):
            score += 1
    return score


def condition_column(source: Any) -> str | None:
    """The obs column whose name or values look like a condition (``condition``, ``stim``,
    ``treatment``, or values such as control/stimulated), with 2-10 values; None when none does."""
    best, best_score = None, 0
    for col in columns(source):
        if col.numeric or not (2 <= col.n_values <= 10) or _is_id_like(col):
            continue
        if re.search(r"sample|donor|batch|replicate|orig[._]?ident", col.name, re.IGNORECASE):
            continue
        score = _condition_score(col)
        if score > best_score:
            best, best_score = col.name, score
    return best


def perturb_target(
    obs: Any, cond_key: str, ct_key: str, ctrl: str, stim: str, min_cells: int = MIN_CELLS
) -> str | None:
    """The largest cell type with enough control and stimulated cells (at least ``GOOD_CELLS`` of
    each when some type has that many, else ``min_cells``); None when none has both."""
    obs = getattr(obs, "obs", obs)
    if cond_key not in obs or ct_key not in obs:
        return None
    table = pd.crosstab(obs[ct_key].astype(str), obs[cond_key].astype(str))
    if str(ctrl) not in table or str(stim) not in table:
        return None
    n_ctrl, n_stim = table[str(ctrl)], table[str(stim)]
    for floor in (max(GOOD_CELLS, min_cells), min_cells):
        ok = table.index[(n_ctrl >= floor) & (n_stim >= floor)]
        if len(ok):
            size = (n_ctrl + n_stim)[ok]
            # the largest; ties broken by name so the choice is stable
            return str(sorted(ok, key=lambda t: (-int(size[t]), str(t)))[0])
    return None


def perturb_targets(
    obs: Any, cond_key: str, ct_key: str, ctrl: str, stim: str, min_cells: int = MIN_CELLS
) -> list[str]:
    """Every cell type with at least ``min_cells`` control and stimulated cells, largest first
    (what leave-one-out trains)."""
    obs = getattr(obs, "obs", obs)
    if cond_key not in obs or ct_key not in obs:
        return []
    table = pd.crosstab(obs[ct_key].astype(str), obs[cond_key].astype(str))
    if str(ctrl) not in table or str(stim) not in table:
        return []
    ok = table[(table[str(ctrl)] >= min_cells) & (table[str(stim)] >= min_cells)]
    return list(ok.sum(axis=1).sort_values(ascending=False, kind="stable").index.astype(str))
