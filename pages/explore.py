"""Explore: every embedding of a dataset, coloured by any obs column or any gene (as CELLxGENE).

Embeddings come from three places: the file's own ``obsm`` (shown as they are), PCA or UMAP of X
or of an ``obsm`` entry computed on request, and the latent space of every finished run on this
dataset. Anything computed runs in the background engine (``engine.embedding``) and is cached
(in the workspace for datasets, in the run folder for runs); this page only polls.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from engine import defaults, embedding, genes, jobs, runs, summary, workspace
from engine import results as results_files
from ui import figures
from ui.figures import esc
from ui.state import dataset_file, dataset_picker, ensure_app_navigation, fragment

AUTO_UMAP_CELLS = 20_000  # run latents start by themselves up to this many cells
POLL_S = 2.0
MAX_GENE_MATCHES = 300

ensure_app_navigation()
st.title("Explore")
# the annotations alone (X is None): coordinates and a gene's values are read from the file
# for the cells drawn, so a million cells open in about a second
name, adata, d = dataset_picker("Dataset", full=False)
if adata is None:
    st.stop()
_FILE = dataset_file(name)  # (path, size, mtime): the caches below are keyed by it


@st.cache_data(max_entries=8, show_spinner=False)
def _obsm_dims(path: str, size: int, mtime: float) -> dict[str, int]:
    return summary.obsm_dims(path)


@st.cache_data(max_entries=8, show_spinner=False)
def _obsm_coords(path: str, size: int, mtime: float, key: str) -> np.ndarray:
    return summary.obsm_coords(path, key)


@st.cache_data(max_entries=16, show_spinner="Reading the gene's values...")
def _gene_values(path: str, size: int, mtime: float, j: int, rows: np.ndarray) -> np.ndarray:
    return summary.gene_values(path, j, rows)


@st.cache_data(max_entries=4, show_spinner=False)
def _gene_names(path: str, size: int, mtime: float, _var: pd.DataFrame):
    """The genes' symbols and printed names, once per dataset file (not on every rerun)."""
    return genes.symbols(_var), genes.label_map(_var)


@dataclass(frozen=True)
class Source:
    label: str
    key: str  # obsm key or "X"
    method: str | None  # None: obsm entry as stored; "umap" / "pca": computed
    folder: str  # where the computed embedding is cached
    source: str | None  # .h5ad it is computed from (None: folder/results.h5ad)
    run: str | None = None  # run id for a run's latent space
    auto: bool = False  # start without asking


def _finished_runs(dataset: str) -> list[dict]:
    out = []
    for r in jobs.list_jobs():
        p = Path(r["path"])
        if r["state"] not in ("completed", "cancelled") or not (p / "results.h5ad").exists():
            continue
        spec = runs.read_json(p / "run.json", {}) or {}
        if not isinstance(spec, dict):
            continue
        # by the run's dataset key; its name only for runs saved before keys were recorded (a
        # dataset named like another's key collected that dataset's runs: a hostile pass)
        own = spec.get("dataset_key")
        same = own == dataset if own else spec.get("dataset_name") == dataset
        if same:
            out.append({**r, "spec": spec})
    return out


def _sources() -> list[Source]:
    cache = str(workspace.home() / "embeddings" / workspace.safe_name(name, "dataset name"))
    src = _FILE[0]
    out: list[Source] = []
    stored = _obsm_dims(*_FILE)
    for k in d.get("embeddings") or []:
        dims = stored.get(k, 0)
        if dims >= 2:
            out.append(Source(f"{k} (stored in the file)", k, None, cache, src))
        if dims > 2:
            out.append(Source(f"UMAP of {k} (computed)", k, "umap", cache, src))
    out.append(Source("PCA of X (computed)", "X", "pca", cache, src))
    out.append(Source("UMAP of X (computed)", "X", "umap", cache, src))
    for r in _finished_runs(name):
        model = r["spec"].get("model") or r["model"]
        p = Path(r["path"]) / "results.h5ad"
        try:
            keys, latent = _run_keys(str(p), p.stat().st_mtime)
        except Exception:  # an unreadable results file: nothing to offer from this run
            continue
        key = next((k for k in (latent, f"X_{model}", "X_pca_baseline") if k and k in keys), None)
        if key:
            out.append(
                Source(
                    f"UMAP of the {model} latent space · run {r['id']}",
                    key,
                    "umap",
                    r["path"],
                    None,
                    run=r["id"],
                    auto=(r["spec"].get("data_shape") or [0])[0] <= AUTO_UMAP_CELLS,
                )
            )
    return out


@st.cache_data(max_entries=32, show_spinner=False)
def _run_keys(path: str, mtime: float) -> tuple[list[str], str | None]:
    """A run's obsm keys and the latent slot the engine recorded (no value is read)."""
    info = results_files.summary(path)
    return list(info["obsm"]), dict(info["scwb"].get("slots") or {}).get("latent")


@st.cache_data(max_entries=8, show_spinner=False)
def _run_obs(path: str, mtime: float) -> pd.DataFrame:
    """A run's obs table (it may add predicted cells to the dataset's): columns and cell names
    only, never a matrix."""
    return results_files.obs(path, index=True)


usable = _sources()
labels = [s.label for s in usable]
preferred = next(
    (i for i, s in enumerate(usable) if s.method is None and "umap" in s.key.lower()),
    next((i for i, s in enumerate(usable) if s.run), 0),
)
c1, c2 = st.columns([3, 2])
choice = c1.selectbox("Embedding", labels, index=preferred, key="explore_source")
source = usable[labels.index(choice)]

# the table colours come from: the dataset, or the run's results (which may add predicted cells)
if source.run:
    rp = Path(source.folder) / "results.h5ad"
    obs = _run_obs(str(rp), rp.stat().st_mtime)
else:
    obs = adata.obs

cols = [str(c) for c in obs.columns]
noun = figures.feature_noun(d or {})  # "marker" on cytometry data
mode = c2.radio(
    "Colour by",
    ["obs column", noun],
    index=0 if cols else 1,  # a set without obs columns opens on genes
    horizontal=True,
    key="explore_mode",
)
color_name, values = None, None
colour_title = None  # the legend's title: the gene's symbol where its name is an ID
if mode == "obs column":
    if not cols:
        st.caption(f"This dataset has no obs column: colour by a {noun} instead.")
    else:
        # the same default as the other pages: the cell-type (label) column, else the first
        # column that makes groups, else the first; never a per-cell measurement by default
        best = defaults.label_column(obs) or next(iter(defaults.label_columns(obs)), cols[0])
        color_name = c2.selectbox(
            "Obs column", cols, index=cols.index(best) if best in cols else 0, key="explore_obs"
        )
else:
    query = c2.text_input(
        f"Search {noun}s", key="explore_gene_query", placeholder=f"type part of a {noun} name"
    )
    names = adata.var_names.astype(str)
    symbols, shown_as = _gene_names(*_FILE, adata.var)
    matches = genes.search(adata.var, query, symbols)  # by name or, where names are IDs, symbol
    shown = list(names[matches[:MAX_GENE_MATCHES]])
    if not shown:
        c2.caption(f"No {noun} matches {esc(query)}.")
    else:
        color_name = c2.selectbox(
            f"{noun.capitalize()} ({len(matches):,} match{'es' if len(matches) != 1 else ''}"
            + (f", first {MAX_GENE_MATCHES} shown" if len(matches) > MAX_GENE_MATCHES else "")
            + ")",
            shown,
            format_func=lambda g: shown_as.get(g, g),
            key="explore_gene",
        )
        # what the values are (a browser pass: 'Ptma' alone did not say MinMax-scaled logCPM)
        colour_title = f"{shown_as.get(color_name, color_name)} ({d.get('x_kind') or 'X'})"


def colour_values(rows: np.ndarray) -> np.ndarray | None:
    """Colour of each embedded row: an obs column of the table the rows index, or a gene's
    expression from the dataset (rows of a run's results are matched by cell name)."""
    if color_name is None:
        return None
    if mode == "obs column":
        col = obs[color_name].iloc[rows]  # the drawn cells only (a million cells: 20,000)
        if not defaults.colour_by_group(color_name, obs[color_name]):  # a measurement: a scale
            return col.to_numpy()
        return defaults.group_labels(col)
    j = adata.var_names.get_loc(color_name)
    if source.run and adata.obs_names.is_unique:
        at = adata.obs_names.get_indexer(obs.index[rows])
    else:  # the dataset's own rows (or, with duplicate names, a run's first n_obs rows)
        at = np.where(rows < adata.n_obs, rows, -1)
    found = at >= 0
    out = np.full(len(rows), np.nan, dtype=np.float32)
    out[found] = _gene_values(*_FILE, int(j), at[found])
    if not found.all():
        st.caption(
            f"{int((~found).sum()):,} cell(s) of this run are not in the dataset "
            "(predicted cells): they have no gene value."
        )
    return out


def draw(out: dict) -> None:
    rows = out["cells"]
    if out.get("dropped"):
        st.caption(f"{out['dropped']:,} cell(s) with non-finite values are left out.")
    title = source.label + (
        f" ({len(rows):,} of {out['total']:,} cells)" if len(rows) < out["total"] else ""
    )
    figures.show(
        "explore",
        lambda: figures.embedding(
            out["coords"],
            colour_values(rows) if color_name is not None else np.array(["all cells"] * len(rows)),
            colour_title or color_name or "cells",
            title,
        ),
        what="the embedding",
    )


if source.method is None:
    m = _obsm_coords(*_FILE, source.key)
    cells = figures.sample_index(len(m), figures.MAX_POINTS)  # the drawn cells only
    draw({"coords": m[cells], "cells": cells, "dropped": 0, "total": len(m)})
    st.stop()

state = embedding.read(source.folder, source.key, source.method, source.source)
if state["state"] == "missing" and source.auto:
    state = embedding.start(source.folder, source.key, source.method, source.source)
if state["state"] in ("missing", "failed"):
    if state["state"] == "failed":
        st.warning(f"The {esc(source.method.upper())} failed: {esc(state.get('error'))}")
    what = "PCA" if source.method == "pca" else "UMAP"
    if st.button(
        f"Compute the {what} in the background",
        type="primary",
        key="explore_compute",
        help="at most 20,000 cells (a seeded random sample beyond that); cached for next time",
    ):
        embedding.start(source.folder, source.key, source.method, source.source)
        st.rerun()
    st.stop()

computing = state["state"] == "computing"


@fragment(run_every=POLL_S if computing else None)
def poll() -> None:
    cur = embedding.read(source.folder, source.key, source.method, source.source)
    if cur["state"] == "computing":
        st.caption(
            f":material/hourglass_top: Computing {esc(source.label)} in the background: "
            "it appears here when done, and you can keep working meanwhile."
        )
        return
    if computing:
        st.rerun(scope="app")
    if cur["state"] == "failed":
        st.warning(f"The embedding failed: {esc(cur.get('error'))}")
        return
    draw(cur)


poll()
