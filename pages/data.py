"""Data: load a file, a demo or a server path; see what it holds, its QC and its embeddings."""

from __future__ import annotations

import contextlib

import pandas as pd
import streamlit as st

from engine import datasets, defaults, io, summary, workspace
from engine.demos import DEMOS, load_demo
from ui import figures, uploads
from ui.state import (
    DatasetKey,
    address,
    ask_first,
    confirmed,
    current_dataset,
    dataset_picker,
    ensure_app_navigation,
    load_full,
    md,
    set_dataset,
    show_error,
)

ensure_app_navigation()
st.title("Data")


def count(n: int, word: str) -> str:
    """'1 cell', '2,000 genes'."""
    return f"{n:,} {word}{'s' * (n != 1)}"


def _loaded(key: str) -> None:
    """Make ``key`` this session's dataset and say what was loaded (escaped: names are user text)."""
    set_dataset(key)
    m = datasets.meta(key)
    noun = figures.feature_noun(datasets.description(key) or {})
    st.success(
        md(
            f"Loaded {count(m.get('n_obs', 0), 'cell')} x {count(m.get('n_vars', 0), noun)} as "
            f"'{m.get('name', key)}' (key {key})."
        )
    )


def _forget_upload(f) -> None:
    """Drop Streamlit's stored bytes of a saved upload: it keeps them in the app's memory for the
    whole session, until the user removes the file, even once the uploader is gone."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    with contextlib.suppress(Exception):  # a Streamlit internal: only ever a saving
        ctx.uploaded_file_mgr.remove_file(session_id=ctx.session_id, file_id=f.file_id)


def _streamed_upload() -> None:
    """The browser streams the file to our upload route (``serve.py``): the app never holds it."""
    from ui.upload_widget import upload_box

    token = st.session_state.get("upload_ticket")
    try:
        r = uploads.received(token)  # first: a dropped file is reported even with its ticket
    except uploads.Gone as exc:
        r = None
        st.warning(md(str(exc)))
    if not uploads.valid(token):  # a new session, or the app restarted
        token = st.session_state["upload_ticket"] = uploads.ticket()
    # a new box (empty, its status cleared) once a file was loaded; the ticket stays
    upload_box(token, key=f"upload-box-{token[:12]}-{st.session_state.get('upload_round', 0)}")
    name = st.text_input(
        "Save as",
        value=(r.filename.split(".")[0] if r else ""),
        help=SAVE_AS_HELP,
    )
    if st.button("Load file", disabled=r is None, help=None if r else "upload a file first"):
        # the file is ours from here (no newer upload or bound removes it while it is read);
        # read and described in a memory-capped child, then removed whatever happens
        mine = uploads.take(token)  # None if it was dropped since the page was drawn
        _load_upload(
            lambda: datasets.import_received(
                mine and mine.path, name or r.filename, r.filename, source=f"upload:{r.filename}"
            )
        )


def _load_upload(load, saved=None) -> None:
    """Run ``load`` (returns the new key) under a spinner. The result is recorded before the next
    Streamlit call, so a rerun that cuts this one short (another upload finishing) still says
    what was loaded; an error is one line and the box takes the next file."""
    error = None
    with st.spinner("Reading..."):
        try:
            new_key = load()
        except Exception as exc:
            error = exc
        else:
            st.session_state["upload_round"] = st.session_state.get("upload_round", 0) + 1
            st.session_state["upload_loaded"] = new_key
            if saved is not None:
                saved()
    if error is not None:
        show_error(error)
    else:
        st.rerun()


def _memory_upload() -> None:
    """Streamlit's own uploader (``streamlit run app.py``, AppTest): it holds the file in memory."""
    # a new key once a file is saved: an empty uploader for the next file
    up_key = f"upload-{st.session_state.get('upload_round', 0)}"
    f = st.file_uploader(
        "AnnData .h5ad, 10x .h5, zipped 10x .mtx folder, or .csv/.tsv (cells x genes)",
        type=["h5ad", "h5", "zip", "csv", "tsv", "gz"],
        key=up_key,
    )
    name = st.text_input("Save as", value=(f.name.split(".")[0] if f else ""), help=SAVE_AS_HELP)
    if st.button("Load file", disabled=f is None, help=None if f else "choose a file first"):
        # streamed to disk in chunks, then read and described in a memory-capped child; once
        # saved, the uploader is emptied and Streamlit's stored bytes dropped (a 1.6 GB upload:
        # the app drops from 5.0 GB to 0.3 GB; bench/upload.py)
        _load_upload(
            lambda: datasets.import_upload(
                f, name or f.name, filename=f.name, source=f"upload:{f.name}"
            ),
            saved=lambda: _forget_upload(f),
        )


SAVE_AS_HELP = (
    "any name: it is the dataset's label; the workspace keys datasets by content, "
    "so two files with one name never replace each other"
)

upload, demo, server = st.tabs(["Upload a file", "Bundled demo", "Path on the server"])
with upload:
    done = st.session_state.pop("upload_loaded", None)
    if done:  # the uploader was emptied after its file was saved: say what was loaded
        _loaded(done)
    if uploads.ACTIVE:
        _streamed_upload()
    else:
        _memory_upload()
with demo:
    choice = st.selectbox("Demo", list(DEMOS), format_func=lambda k: f"{k}: {DEMOS[k]}")
    if st.button("Load demo"):
        try:
            _loaded(datasets.save(load_demo(choice), choice, source=f"demo:{choice}"))
        except Exception as exc:
            show_error(exc)
with server:
    roots = workspace.allowed_server_roots()
    path = st.text_input(
        "File path on the server", disabled=not roots, help="for files larger than the upload limit"
    )
    if not roots:
        st.caption(
            "Off: the operator allows folders with the SCWB_DATA_ROOTS environment variable."
        )
    if st.button("Read path", disabled=not roots or not path):
        try:
            p = workspace.check_server_path(path)
            with st.spinner("Reading..."):
                new_key = datasets.import_file(
                    p, p.name.split(".")[0], display=p.name, source=f"path:{p}"
                )
            _loaded(new_key)
        except Exception as exc:
            show_error(exc)

st.divider()
# annotations only (no matrices): the description and QC were stored when the dataset was saved
ds_key, adata, d = dataset_picker(
    "Current dataset", "No dataset yet: upload a file above or pick a bundled demo.", full=False
)
if ds_key is None:  # a dataset whose file cannot be read (said above) can still be deleted
    picked = current_dataset()
    if not picked:
        st.stop()
    ds_key = DatasetKey(picked)

meta = datasets.meta(ds_key)
info_col, delete_col = st.columns([4, 1])
info_col.caption(
    md(
        f"Key {ds_key.key} · X fingerprint {meta.get('fingerprint') or '?'} · {meta.get('source') or ''}"
    )
)
if delete_col.button("Delete dataset", key="delete_dataset", help="refused while a run uses it"):
    try:
        datasets.check_deletable(ds_key)  # refused at once, not after a question
        ask_first("confirm_delete_dataset", ds_key)
    except Exception as exc:
        show_error(exc)


def delete_question() -> str:
    used = len(datasets.users(ds_key, active_only=False))
    return (
        f"Delete the dataset {md(datasets.label(ds_key))} ({md(ds_key)}) from the workspace? "
        "This cannot be undone."
        + (
            f" {count(used, 'run')} used it: their results stay, but reproducing them or "
            "training on this data again needs the file."
            if used
            else ""
        )
    )


if confirmed("confirm_delete_dataset", ds_key, delete_question):
    try:
        datasets.delete(ds_key)
        st.session_state.pop("dataset", None)
        if "dataset" in st.query_params:
            del st.query_params["dataset"]
        st.rerun()
    except Exception as exc:
        show_error(exc)

if adata is None:
    st.stop()
c = st.columns(4)
c[0].metric("Cells", f"{d['n_obs']:,}")
c[1].metric(figures.feature_noun(d).capitalize() + "s", f"{d['n_vars']:,}")
c[2].metric("Zeros", f"{100 * d['sparsity']:.1f}%")
c[3].metric("Memory", f"{d['memory_mb']:.1f} MB")
st.markdown(f"**X holds:** {md(d['x_kind'])} ({'sparse' if d['sparse'] else 'dense'})")
if d.get("symbol_column"):
    st.markdown(
        f"**Gene symbols:** the var column {md(d['symbol_column'])} (the gene names are IDs): "
        "genes are searched and shown by symbol, and mitochondrial genes found by it."
    )
if d["layers"]:
    st.markdown("**Layers:** " + ", ".join(f"{md(k)} ({md(v)})" for k, v in d["layers"].items()))
unique = d.get("unique_names")  # stored with the description; older datasets: checked here
if not (unique if unique is not None else adata.var_names.is_unique and adata.obs_names.is_unique):
    dup_cells = int(adata.obs_names.duplicated().sum())
    dup_genes = int(adata.var_names.duplicated().sum())
    which = " and ".join(
        count(n, f"{what} name") for n, what in ((dup_cells, "cell"), (dup_genes, "gene")) if n
    )
    st.warning(
        f"Duplicated names ({which or 'some'} repeated): models need unique names. Making them "
        "unique adds -1, -2, ... to the repeats (anndata's rule) and saves a copy named "
        "'... (unique names)'."
    )
    if st.button("Make names unique"):
        try:
            fixed = io.make_unique(load_full(ds_key).copy())
            set_dataset(
                datasets.save(
                    fixed,
                    f"{datasets.label(ds_key)} (unique names)",
                    source="made unique",
                    parent=ds_key,
                )
            )
            st.rerun()
        except Exception as exc:
            show_error(exc)

left, right = st.columns([1, 1])
with left:
    st.subheader("Label columns")
    # the columns a model may take as labels (a QC count of 187 values was listed: n_genes)
    usable = set(defaults.label_columns(d))
    shown_labels = {k: v for k, v in d["labels"].items() if k in usable}
    if shown_labels:
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "column": k,
                        "values": len(v),
                        # "3: 806" (integer donors read "3 806, 1 760": a browser pass)
                        "counts": ", ".join(f"{a}: {b}" for a, b in list(v.items())[:6])
                        + (f", … ({len(v) - 6} more)" if len(v) > 6 else ""),
                    }
                    for k, v in shown_labels.items()
                ]
            ),
            hide_index=True,
            width="stretch",
        )
    else:
        st.caption(
            "No column to use as labels (text or categories with 2-200 values, or numbers with "
            f"at most {defaults.MAX_NUMERIC_CLASSES})."
        )
with right:
    st.subheader("Cells (first 200)")
    cells = adata.obs.head(200)
    if cells.shape[1] == 0:  # no annotation: the names alone (an empty unnamed column before)
        st.caption("obs has no columns: the cells carry names only.")
        cells = pd.DataFrame({"cell": cells.index.astype(str)})
    try:
        st.dataframe(cells, width="stretch", height=240)
    except Exception:  # a column type no table converts: shown as text, never a crashed page
        st.dataframe(cells.astype(str), width="stretch", height=240)

MAX_SPLITS = 100  # columns offered to split the QC by
st.subheader("Quality control")
# the label-like columns first; a file with thousands of columns offers the first hundred
splits = [c for c in defaults.label_columns(d) if c in d["labels"]] or list(d["labels"])
group = st.selectbox(
    "Split by",
    ["(none)", *splits[:MAX_SPLITS]],
    key="qc_group",
    help=None
    if len(splits) <= MAX_SPLITS
    else f"the first {MAX_SPLITS} of {len(splits):,} columns",
)
qc = summary.read_qc(datasets.path(ds_key), adata.obs_names)
if qc is None:  # saved before QC was stored with the dataset
    qc = io.qc_metrics(load_full(ds_key))
if qc.empty:
    st.caption(
        f"QC needs raw counts: X holds {md(d['x_kind'])}"
        + figures.values_noun(d["x_kind"])
        + " and there is no layers\\['counts'\\] or QC column in obs."
    )
else:
    if d["x_kind"] != "counts" and "counts" not in d["layers"]:
        st.caption("No raw counts here: these are the QC columns stored in obs.")
    grouped = group != "(none)"
    cols = st.columns(3)
    for col, fig in zip(
        cols,
        figures.qc_violins(qc, group if grouped else None, adata.obs[group] if grouped else None),
        strict=False,
    ):
        col.plotly_chart(fig, width="stretch")
    if "pct_counts_mt" not in qc:
        st.caption(
            "No mitochondrial gene (no gene symbol starts with 'MT-'): % mitochondrial is not shown."
        )

st.subheader("Embeddings")
n_emb = len(d["embeddings"])
st.caption(
    (f"{n_emb} embedding(s) stored in the file. " if n_emb else "No embedding stored in the file. ")
    + "Explore shows them, PCA or UMAP computed on request, and the latent space of every "
    "finished run on this dataset, coloured by any obs column or gene."
)
st.page_link(
    "pages/explore.py",
    label="Explore embeddings",
    icon=":material/scatter_plot:",
    query_params=address(),
)
