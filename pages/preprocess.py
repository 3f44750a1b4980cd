"""Preprocess: build a recipe step by step, preview its effect, save the result as a dataset."""

from __future__ import annotations

import contextlib
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import plotly.express as px
import scipy.sparse as sp
import streamlit as st
from anndata.io import sparse_dataset

from engine import datasets, io, pp_child, pp_memory, summary
from engine import preprocess as pp
from engine.checks import human
from ui import figures
from ui.figures import esc, values_noun
from ui.state import (
    address,
    dataset_file,
    dataset_layout,
    dataset_picker,
    ensure_app_navigation,
    fragment,
    keep,
    kept,
    load_full,
    page_params,
    restore_form,
    save_form,
    set_dataset,
    show_error,
)

ensure_app_navigation()
st.title("Preprocess")
# annotations only until Preview: the recipe's choices come from the stored description
name, adata, d = dataset_picker("Dataset to preprocess", full=False)
if adata is None:
    st.stop()

saved = st.session_state.get("pp_saved")
if saved and saved == name:
    st.success(f"Saved as {esc(saved)}; it is now the current dataset.")
    if st.button("Next: Train", type="primary", icon=":material/model_training:", key="pp_next"):
        st.session_state.pop("pp_saved", None)
        st.switch_page("pages/train.py", query_params=address(**page_params("train")))


def _step_text(s: dict) -> str:
    params = ", ".join(f"{k}={v}" for k, v in s["params"].items())
    return f"{s['name']}({params})" if params else s["name"]


suggested = {s.name: s.params for s in pp.Recipe.suggest(d).steps}
applied = pp.recipe_steps(d.get("recipe"))
st.caption(
    f"X holds **{esc(d['x_kind'])}**{values_noun(d['x_kind'])}; "
    + (
        "the ticked steps are suggested for that."
        if suggested
        else "no step is suggested for that (tick what you need)."
    )
)
if applied:
    st.caption(
        "Recipe already applied to this dataset: " + " → ".join(esc(_step_text(s)) for s in applied)
    )
raw = d.get("raw") or {}
if d["x_kind"].startswith("scaled"):
    st.warning(
        "X already looks scaled: scaling it again, normalising or taking logs would distort it."
        + (
            f" adata.raw keeps {raw['n_vars']:,} genes of {raw['kind']} values: start from "
            "them (ticked below)."
            if raw.get("kind") in ("counts", "log-normalised")
            else ""
        )
    )

steps: list[pp.Step] = []
# each widget's value type: a refresh keeps the form (and finds its running preview)
FORM = {"pp_subset_key": str, "pp_subset_vals": list, "pp_norm_target": str}
FORM |= {"pp_scale_method": str, "pp_fc_mito": float, "pp_asinh_cofactor": float}
FORM |= {"pp_scale_clip": float, "pp_leiden_res": float}
FORM |= dict.fromkeys(("pp_fc_min_genes", "pp_fc_min_counts", "pp_fg_min_cells", "pp_hvg_n"), int)
FORM |= dict.fromkeys(
    ("pp_raw", "pp_subset", "pp_fc", "pp_fg", "pp_kc", "pp_norm", "pp_hvg", "pp_asinh"), bool
)
FORM |= dict.fromkeys(("pp_scale", "pp_leiden"), bool)
restore_form(f"preprocess@{name.key}", FORM)


def k(widget: str) -> str:
    """A widget's key for this dataset: each dataset starts from its own suggestions (after Save
    the new dataset is current, and the old form's ticks would apply the recipe twice). Its
    value is kept for the session: a visit to another page reset them (a browser pass)."""
    return kept(f"{widget}@{name.key}")


with st.container(border=True):
    if raw and st.checkbox(
        f"Start from adata.raw ({raw['n_vars']:,} genes, {raw['kind']})",
        value="from_raw" in suggested,
        key=k("pp_raw"),
        help="the values a pipeline kept before selecting genes and scaling X",
    ):
        steps.append(pp.Step("from_raw"))
    if st.checkbox("Subset cells by an obs column", key=k("pp_subset")) and d["labels"]:
        key = st.selectbox("Column", list(d["labels"]), key=k("pp_subset_key"))
        values = st.multiselect(
            "Keep values",
            list(d["labels"][key]),
            default=list(d["labels"][key]),
            key=k("pp_subset_vals"),
        )
        steps.append(pp.Step("subset", {"key": key, "values": values}))
    if st.checkbox("Filter cells", value="filter_cells" in suggested, key=k("pp_fc")):
        c = st.columns(3)
        p = suggested.get("filter_cells", {})
        steps.append(
            pp.Step(
                "filter_cells",
                {
                    "min_genes": c[0].number_input(
                        "min genes per cell",
                        0,
                        100_000,
                        int(p.get("min_genes", 200 if d["x_kind"] == "counts" else 0)),
                        key=k("pp_fc_min_genes"),
                    ),
                    "min_counts": c[1].number_input(
                        "min counts per cell", 0, 10_000_000, 0, key=k("pp_fc_min_counts")
                    ),
                    "max_pct_mito": c[2].number_input(
                        "max % mitochondrial",
                        0.0,
                        100.0,
                        100.0,
                        disabled=d["mito_genes"] == 0,
                        help=None
                        if d["mito_genes"]
                        else "no mitochondrial gene: no gene symbol starts with MT-",
                        key=k("pp_fc_mito"),
                    ),
                },
            )
        )
    if st.checkbox("Filter genes", value="filter_genes" in suggested, key=k("pp_fg")):
        steps.append(
            pp.Step(
                "filter_genes",
                {
                    "min_cells": st.number_input(
                        "min cells per gene", 0, 1_000_000, 3, key=k("pp_fg_min_cells")
                    )
                },
            )
        )
    if st.checkbox(
        "Keep raw counts in layers['counts']",
        value="keep_counts" in suggested,
        disabled=d["x_kind"] != "counts",
        key=k("pp_kc"),
        help="count models (VAE) read them there",
    ):
        steps.append(pp.Step("keep_counts"))
    if st.checkbox(
        "Normalise library size + log1p", value="normalize" in suggested, key=k("pp_norm")
    ):
        targets = ["logCPM (1e6)", "CP10k (1e4)"]
        target = st.radio(
            "Target",
            targets,
            index=int(pp.target_sum(d) == 1e4),
            horizontal=True,
            key=k("pp_norm_target"),
        )
        if d.get("median_counts"):
            st.caption(
                f"Median depth: {d['median_counts']:,.0f} counts per cell. One count becomes "
                f"{np.log1p(1e6 / d['median_counts']):.1f} with logCPM and "
                f"{np.log1p(1e4 / d['median_counts']):.1f} with CP10k; CP10k suits droplet "
                f"data (under {pp.DROPLET_DEPTH:,} counts per cell), logCPM deeper data."
            )
        steps.append(
            pp.Step(
                "normalize",
                {"target_sum": 1e6 if target.startswith("logCPM") else 1e4, "log": True},
            )
        )
    if st.checkbox("Highly variable genes", value="hvg" in suggested, key=k("pp_hvg")):
        n_top = st.number_input(
            "number of genes", 1, 50_000, pp.hvg_default(d["n_vars"]), key=k("pp_hvg_n")
        )
        if d["n_vars"] <= pp.HVG_TOP:
            st.caption(
                f"The dataset has {d['n_vars']:,} genes, no more than the usual "
                f"{pp.HVG_TOP:,}: about half of them ({pp.hvg_default(d['n_vars']):,}, in "
                "hundreds) are offered."
            )
        if n_top >= d["n_vars"]:
            st.caption(
                f"The dataset has {d['n_vars']:,} genes: {n_top:,} keeps them all "
                "(the step's note says so after Preview)."
            )
        # what the step will rank: X as it is, or as the steps ticked above leave it
        from_raw = raw and any(s.name == "from_raw" for s in steps)
        kind_then = raw["kind"] if from_raw else d["x_kind"]
        if any(s.name == "normalize" for s in steps):
            kind_then = "log-normalised"
        genes_then = raw["n_vars"] if from_raw else d["n_vars"]
        for line in pp.hvg_cautions(kind_then, genes_then, n_top):
            st.warning(line[0].upper() + line[1:] + ".")
        steps.append(pp.Step("hvg", {"n_top": n_top}))
    if st.checkbox("arcsinh (cytometry)", value="arcsinh" in suggested, key=k("pp_asinh")):
        steps.append(
            pp.Step(
                "arcsinh",
                {
                    "cofactor": st.number_input(
                        "cofactor", 0.1, 1000.0, 5.0, key=k("pp_asinh_cofactor")
                    )
                },
            )
        )
    if st.checkbox("Scale", value="scale" in suggested, key=k("pp_scale")):
        method = st.radio(
            "Method",
            ["minmax", "zscore"],
            index=0 if suggested.get("scale", {}).get("method", "minmax") == "minmax" else 1,
            horizontal=True,
            format_func={"minmax": "MinMax to [0, 1]", "zscore": "z-score"}.get,
            key=k("pp_scale_method"),
        )
        clip = st.number_input(
            "clip z-scores at",
            0.0,
            100.0,
            10.0,
            disabled=method != "zscore",
            key=k("pp_scale_clip"),
        )
        # the clip is z-score's alone: in a MinMax recipe it read as an option that did something
        steps.append(
            pp.Step(
                "scale", {"method": method, **({"max_value": clip} if method == "zscore" else {})}
            )
        )
    leiden_to = pp.leiden_key(adata)  # the data's own obs['leiden'] is kept
    if st.checkbox(
        f"Leiden clusters in obs['{leiden_to}']",
        value="leiden" in suggested,
        key=k("pp_leiden"),
        help="the last step: clusters of the cells (PCA, kNN graph), to colour by, compare and "
        "train classifiers on when the data carries no cell types",
    ):
        if "leiden" in suggested:
            st.caption("No obs column of this dataset can serve as labels: clusters give it some.")
        if leiden_to != "leiden":
            st.caption(
                f"This dataset has its own obs['leiden']: it is kept, and these clusters go to "
                f"obs['{leiden_to}']."
            )
        resolution = st.number_input(
            "resolution (higher: more, smaller clusters)",
            0.05,
            10.0,
            1.0,
            step=0.1,
            key=k("pp_leiden_res"),
        )
        steps.append(pp.Step("leiden", {"resolution": resolution}))

form = {
    str(x): st.session_state[x]
    for x in list(st.session_state)
    if str(x).startswith("pp_") and str(x).endswith(f"@{name.key}")
}
for wkey, value in form.items():
    keep(wkey, value)
save_form(f"preprocess@{name.key}", form)
recipe = pp.Recipe(steps)
if steps:  # said before anything runs; Preview refuses what does not fit
    fp = pp_memory.estimate(dataset_layout(name), recipe, copy=False)  # as Preview runs it
    fits = pp_memory.fits(fp)
    (st.caption if fits else st.warning)(
        f"Memory: {fp.line()}"
        + ("" if fits else f"; over the memory budget ({human(io.memory_budget())}).")
    )
st.download_button(
    "Download recipe (JSON)",
    recipe.to_json(),
    file_name=f"{name}-recipe.json",
    on_click="ignore",
    mime="application/json",
)


@st.cache_data(max_entries=8, show_spinner=False)
def _values(path: str) -> np.ndarray:
    """A sample of the entries of the first 2,000 cells, read from the file's X alone (backed
    AnnData would load every layer)."""
    with h5py.File(path, "r") as f:
        node = f["X"]
        x = node[:2000] if isinstance(node, h5py.Dataset) else sparse_dataset(node)[:2000]
    v = x.toarray().ravel() if sp.issparse(x) else np.asarray(x).ravel()
    return np.random.default_rng(0).choice(v, size=min(v.size, 50_000), replace=False)


def _drop_preview() -> None:
    old = st.session_state.pop("pp_result", None)
    if old:
        pp_child.stop(f"{old[2]}.job")  # its record, kept for a refresh
        Path(old[2]).unlink(missing_ok=True)
        summary.remove_qc(old[2])
    job = st.session_state.pop("pp_job", None)
    if job:
        pp_child.stop(job[2])


incoming = datasets.new_incoming().parent
names = [s.name for s in steps]


GONE = (
    "This preview was saved, or replaced, in another tab (same dataset and steps): press "
    "Preview to see it here."
)


def _follow(job: Path) -> None:
    """Make ``job`` (a background Preview of this recipe) the one this page follows."""
    st.session_state["pp_job"] = (name, recipe.to_json(), str(job), str(job)[: -len(".job")], names)


if st.button(
    "Preview", type="primary", disabled=not steps, help=None if steps else "tick at least one step"
):
    try:
        st.session_state.pop("pp_failed", None)
        same = pp_child.find(datasets.path(name), recipe, incoming)
        if same is not None:  # running or done already (another tab, before a refresh)
            current = st.session_state.get("pp_job")
            if current and current[2] != str(same):
                pp_child.stop(current[2])
            st.session_state.pop("pp_result", None)
            _follow(same)
        else:
            _drop_preview()
            target = datasets.new_incoming()
            # big recipes in a memory-capped child: the working copies never enter the app
            peak = pp_memory.estimate(dataset_layout(name), recipe).peak_bytes
            if peak <= pp_child.IN_PROCESS_BYTES and "leiden" not in names:  # seconds at most
                with st.spinner(f"Applying recipe: {', '.join(names)}..."):
                    info = pp_child.make(load_full(name), recipe, target)
                with contextlib.suppress(OSError):  # kept for a refresh; shown either way
                    pp_child.keep(datasets.path(name), recipe, target, info)
                st.session_state["pp_result"] = (name, recipe.to_json(), str(target), info)
            else:  # clustering takes minutes: in the background, never in the page's run
                _follow(pp_child.start(datasets.path(name), recipe, target))
    except Exception as exc:
        show_error(exc)
elif steps and "pp_job" not in st.session_state:
    # a page refreshed mid-preview lost its session and its form, not the job
    jobs = pp_child.jobs_of(datasets.path(name), incoming)  # newest first
    same = next((job for job, text, _ in jobs if text == recipe.to_json()), None)
    shown = st.session_state.get("pp_result")
    if same is not None and (not shown or shown[0] != name or shown[1] != recipe.to_json()):
        _follow(same)  # taken up again: its progress, or its result, drawn below
    own = Path(f"{shown[2]}.job") if shown else None  # this tab's own: said below as "kept"
    jobs = [j for j in jobs if j[0] != own]
    if jobs and jobs[0][1] != recipe.to_json():  # the form is back to other steps: said
        job, text, state = jobs[0]
        earlier = " → ".join(esc(s["name"]) for s in pp.recipe_steps(text))
        st.caption(
            f":material/info: A preview of this dataset started earlier ({earlier}) is "
            f"{'still running' if state == 'running' else 'done'}: tick the same steps "
            "to see it."
        )
        if state == "running" and st.button("Stop that preview", key="pp_stop_other"):
            pp_child.stop(job)
            st.rerun()


@fragment(run_every=1 if st.session_state.get("pp_job") else None)
def preview_progress() -> None:
    """The background Preview's progress, polled; its result taken in when it ends (leaving
    the page and coming back finds it running, or done)."""
    job = st.session_state.get("pp_job")
    if not job or job[0] != name:
        return
    now = pp_child.poll(job[2])
    job_names, done = job[4], now["steps"]
    if now["state"] == "running":
        k = min(len(done), len(job_names) - 1)
        finished = "; ".join(
            f"{esc(r.get('step'))} done in {r.get('seconds', 0):.1f} s" for r in done
        )
        st.caption(
            f":material/hourglass_top: Applying the recipe in the background: "
            f"{esc(job_names[k])} ({k + 1} of {len(job_names)})"
            f"{' · ' + finished if finished else ''}. Other pages can be used meanwhile."
        )
        if job[1] != recipe.to_json():
            st.caption(
                ":material/info: This preview is of the settings before your last change; "
                "press Preview for the new ones (or change them back)."
            )
        if st.button("Stop the preview", key="pp_stop"):
            _drop_preview()
            st.toast("Preview stopped.")
            st.rerun(scope="app")
        return
    st.session_state.pop("pp_job", None)
    if now["state"] == "taken":  # another tab saved its result, or stopped it
        st.session_state["pp_failed"] = (job[0], GONE, "info")
    elif now["state"] == "done":  # its record stays until Save: a refresh shows it again
        st.session_state["pp_result"] = (job[0], job[1], job[3], now["info"])
    else:
        st.session_state["pp_failed"] = (job[0], now["error"])
        pp_child.stop(job[2])
    st.rerun(scope="app")


preview_progress()
failed = st.session_state.get("pp_failed")
if failed and failed[0] == name:
    getattr(st, failed[2] if len(failed) > 2 else "error")(esc(failed[1]))

result = st.session_state.get("pp_result")
if result and not Path(result[2]).exists():  # saved, or replaced, in another tab
    st.session_state.pop("pp_result", None)
    if result[0] == name:
        st.info(GONE)
    result = None
if result and result[0] == name and result[1] == recipe.to_json():
    _, _, out_path, info = result
    report = info["report"]
    st.subheader("Effect of each step")
    st.dataframe(
        pd.DataFrame(report)
        .drop(columns="note", errors="ignore")
        .rename(columns={"n_obs": "cells", "n_vars": f"{figures.feature_noun(d)}s"}),
        hide_index=True,
        width="stretch",
    )
    for row in report:  # what a step said of its effect, in full (a table cell cuts it off)
        if row.get("note"):
            st.caption(f":material/info: **{row['step']}**: {esc(row['note'])}")
    before, after = _values(dataset_file(name)[0]), _values(out_path)
    h = st.columns(2)
    for i, (col, vals, label) in enumerate(
        (
            (h[0], before, f"Before: {d['x_kind']}"),
            (h[1], after, f"After: {info['describe']['x_kind']}"),
        )
    ):
        figures.show(
            f"pp_hist_{i}",
            lambda v=vals, t=label: px.histogram(
                pd.DataFrame({"value": v}),
                x="value",
                nbins=60,
                log_y=True,
                title=f"{t} (sample of entries)",
            ),
            where=col,
            what="the value histogram",
        )
    new_name = st.text_input(
        "Save as dataset",
        value=datasets.free_name(f"{datasets.label(name)}_pp"),
        help="a name no other dataset has: Train, Runs and Compare name a run's data by it",
    )
    if st.button("Save"):
        try:
            saved = datasets.adopt(
                Path(out_path),
                new_name,
                info,
                source=f"recipe on {name}",
                parent=name,
                report=report,
                unique=True,
            )
            pp_child.taken(f"{out_path}.job")  # saved: no longer one to show again
            set_dataset(saved)
            st.session_state["pp_saved"] = saved
            st.session_state.pop("pp_result", None)
        except Exception as exc:
            show_error(exc)
        else:
            st.rerun()  # open the saved dataset here, with "Next: Train"
elif result and result[0] == name and steps:  # a preview of other settings is kept
    st.caption(
        "The last preview was of other settings (kept): press Preview for these, or change "
        "them back to see it again."
    )
elif steps and "pp_job" not in st.session_state:
    st.caption("Press Preview to see the effect before saving.")
