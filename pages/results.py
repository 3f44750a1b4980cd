"""Results of one run: curves, task figures, and everything to take home.

Every run folder state renders: a run still going points to Runs; a failed, cancelled or damaged
one shows what it has and says in one line what is missing. Latent UMAPs are computed by the
background engine (``engine.embedding``), never in this page. The page reads only what it shows
(``engine.results``: a few obs columns, one obsm key, the stored sample of cells for the
heatmaps), so a million-cell run opens as fast as a small one.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import streamlit as st

from engine import (
    datasets,
    defaults,
    embedding,
    evaluate,
    export,
    genes,
    jobs,
    metric_names,
    models,
    runs,
    seeds,
    settings,
    split,
)
from engine import progress as progress_text
from engine import results as results_files
from engine.checks import human
from engine.perturb import (  # torch-free
    GENE_MEANS,
    VERDICT_WORDS,
    against_meanshift,
    gene_means,
    read_gene_means,
)
from ui import figures
from ui.figures import esc
from ui.state import (
    address,
    current_dataset,
    ensure_app_navigation,
    fragment,
    from_address,
    to_address,
)

APP_DIR = Path(__file__).resolve().parent.parent  # where `python -m engine` runs
AUTO_UMAP_CELLS = 20_000  # latent UMAPs start by themselves up to this many cells
POLL_S = 2.0

ensure_app_navigation()
st.title("Results")


@contextmanager
def guard(what: str):
    """One line instead of a traceback when a section fails on an unexpected run folder."""
    try:
        yield
    except Exception as exc:  # st.stop / st.rerun are BaseExceptions and pass through
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        st.warning(f"Could not show {what}: {esc(first)}")


all_runs = jobs.list_jobs()
if not all_runs:
    st.info("No run yet: train one on **Train** and watch it on **Runs**.")
    st.stop()
by_id = {r["id"]: r for r in all_runs}
ids = list(by_id)

# which run: an explicit request (Runs -> Open results) wins over what this tab showed last
request = st.session_state.pop("results_run_request", None)
if request is None and st.query_params.get("run") != st.session_state.get("_results_shown"):
    request = st.query_params.get("run")
if request in by_id:
    st.session_state["results_pick"] = request
gone = request if request is not None and request not in by_id else None
# shown without a request: what this tab showed last, else the newest finished run of the tab's
# dataset (the newest of any dataset was shown under another dataset's address: a browser
# pass), else the newest finished run
here = current_dataset()
finished = [r["id"] for r in all_runs if r["state"] == "completed"]
mine = [i for i in finished if by_id[i].get("dataset_key") == here]
last = st.session_state.get("results_run")
default = last if last in by_id else (mine or finished or ids)[0]
if st.session_state.get("results_pick") not in by_id:
    st.session_state["results_pick"] = default
run_id = st.selectbox(
    "Run",
    ids,
    key="results_pick",
    # fixed for the run's life (no state): the browser sends back the label it shows
    format_func=lambda i: f"{i} · {by_id[i]['model']} on {by_id[i]['dataset']}",
)
st.session_state["results_run"] = run_id
if gone is not None:  # a link to a deleted run showed another one without a word
    st.warning(
        f"There is no run {esc(str(gone)[:200])} (deleted, or a link from another workspace): "
        f"showing {esc(run_id)} instead."
    )
# each write is a browser history entry (Back): the default is not written
to_address("run", run_id, default)
st.session_state["_results_shown"] = run_id
row = by_id[run_id]
run_dir = Path(row["path"])
status = runs.read_status(run_dir)
state = status.get("state", row.get("state"))
spec = runs.read_json(run_dir / "run.json", None)
missing: list[str] = []
if not isinstance(spec, dict):
    missing.append("run.json (what was asked) is missing or unreadable")
    spec = {}
task = spec.get("task") if spec.get("task") != "?" else None

if state in runs.ACTIVE:
    # the Runs page's words: whole epochs ("epoch 0.41 of 12" was said: a browser pass)
    said = progress_text.progress({**row, **status, "state": state})[1]
    st.info(f"This run is {state} ({esc(said)}): its results appear here when it finishes.")
    st.page_link(
        "pages/runs.py",
        label="Watch it on Runs",
        icon=":material/monitoring:",
        query_params=address(),
    )
    st.stop()

metrics = runs.read_metrics(run_dir / "metrics.json", None)
if not isinstance(metrics, dict):
    missing.append("metrics.json (the test metrics) is missing or unreadable")
    metrics = {}
res_path = run_dir / "results.h5ad"
if not runs.regular_file(res_path):  # a pipe, device or link in its place: never read
    missing.append("results.h5ad (the annotated cells) is missing")


def _shape(spec: dict) -> str:
    """' (8,684 cells x 2,000 genes)' from the recorded shape (it read '([8684, 2000])')."""
    shape = spec.get("data_shape")
    if isinstance(shape, list) and len(shape) == 2 and all(isinstance(v, int) for v in shape):
        key = spec.get("dataset_key")
        known = datasets.description(key) if isinstance(key, str) and datasets.exists(key) else None
        noun = figures.feature_noun({"recipe": spec.get("recipe"), **(known or {})})
        return f" ({shape[0]:,} cells × {shape[1]:,} {noun}s)"
    return ""


st.caption(
    " · ".join(
        esc(x)
        for x in (
            spec.get("model") or row.get("model"),
            f"task: {task or '?'}",
            f"data {spec.get('dataset_name') or row.get('dataset')}" + _shape(spec),
            f"seed {spec.get('seed')}",
            f"device {spec.get('device_name') or status.get('device') or '?'}",
            # how it was split and what was removed as batch: said, not only in run.json
            *([f"held-out groups of {spec['split_by']}"] if spec.get("split_by") else []),
            *(
                [f"batch key {spec['params']['batch_key']}"]
                if isinstance(spec.get("params"), dict) and spec["params"].get("batch_key")
                else []
            ),
        )
    )
)
if state == "failed":
    st.error(f"This run failed: {esc(status.get('error') or 'no reason recorded')}")
elif state in ("cancelled", "interrupted"):
    st.warning(f"This run was {state} before it finished: what it wrote is shown below.")
for line in missing:
    st.caption(f":material/info: {line}.")

figs: dict[str, object] = {}
curve = runs.read_metrics_csv(run_dir)


FLAT_EPOCHS, FLAT_REL = 5, 1e-4  # a loss that moved less than this over these epochs is flat


def lbfgs_last_moves(curve: pd.DataFrame) -> float | None:
    """How much the training loss moved over the last ``FLAT_EPOCHS`` epochs, relative to it."""
    if "train_loss" not in curve:
        return None
    loss = pd.to_numeric(curve["train_loss"], errors="coerce").dropna().to_numpy()
    if len(loss) <= FLAT_EPOCHS or not np.isfinite(loss[-1]) or loss[-1] == 0:
        return None
    return float(abs(loss[-FLAT_EPOCHS - 1] - loss[-1]) / abs(loss[-1]))


def early_stop_note() -> str | None:
    """'stopped early at epoch 11 (best epoch 8)' for a run Lightning's EarlyStopping ended."""
    if state != "completed" or curve.empty or "epoch" not in curve or "val_loss" not in curve:
        return None
    if "cell_type" in curve:  # leave-one-out: one curve per cell type, each with its own epochs
        return None
    last = int(curve["epoch"].max())
    planned = spec.get("epochs") or status.get("max_epochs")
    best = status.get("best_epoch")
    if best is None and curve["val_loss"].notna().any():
        best = int(curve.loc[curve["val_loss"].idxmin(), "epoch"])
    stopped = status.get("stopped_early")
    if stopped is None:
        stopped = bool(planned) and last < int(planned)
    elif stopped and planned and last >= int(planned) and status.get("optimizer") != "lbfgs":
        # runs saved before 2026-11-28 flagged a stop at the last epoch, which ended nothing
        stopped = False
    if status.get("optimizer") == "lbfgs":  # convex, full batch: the last weights are the optimum
        if not stopped:
            moved = lbfgs_last_moves(curve)
            if moved is not None and moved < FLAT_REL:
                return (
                    f"The full-batch L-BFGS fit ran to its {last}-epoch limit with the training "
                    f"loss flat (it moved by {moved:.1e} of itself over the last "
                    f"{FLAT_EPOCHS} epochs: flat in practice, though above the stopping rule's "
                    "1e-7 per epoch): its last weights are kept."
                )
            return (
                f"The full-batch L-BFGS fit had not converged after {last} epochs: its last "
                "weights are kept; raise Max epochs to reach the optimum."
            )
        return (
            f"Converged at epoch {last}"
            + (f" of {int(planned)}" if planned else "")
            + ": the full-batch L-BFGS fit stopped once the training loss stopped moving, and "
            "its last weights (the optimum) are kept." + rising_validation(curve)
        )
    if not stopped:
        return None
    return (
        f"Stopped early at epoch {last}"
        + (f" of {int(planned)}" if planned else "")
        + (f" (best epoch {best})" if best is not None else "")
        + ": the validation loss stopped improving, and the weights of the best epoch are kept."
    )


def rising_validation(curve: pd.DataFrame) -> str:
    """' The validation loss rose from 0.47 (epoch 1) to 0.89 ...' where it did: the optimum of
    the penalised training loss is kept, not the best validation epoch (a browser pass read
    'converged' over a validation curve that doubled)."""
    val = pd.to_numeric(curve["val_loss"], errors="coerce")
    if val.notna().sum() < 2:
        return ""
    low, end = val.min(), val.dropna().iloc[-1]
    if not (end > 1.1 * low):
        return ""
    at = int(curve.loc[val.idxmin(), "epoch"])
    return (
        f" The validation loss rose from {low:.3g} (epoch {at}) to {end:.3g} meanwhile: the fit "
        "minimises the training loss with its L2 penalty (scikit-learn's objective), whose "
        "optimum fits the training cells more closely than the validation loss's best; the test "
        "metrics are those of that optimum, comparable with scikit-learn's."
    )


def shortened_note() -> str | None:
    """'Trained to its cap of 42 epochs, fewer than the published 100': said after training too,
    where the cap ended it (not where it stopped early or converged first)."""
    cut = progress_text.shortened(spec, status)
    if cut is None:
        return None
    who = {
        "budget": "the Train page shortened them to its time budget on a CPU",
        "user": "the cap was set when it was submitted",
    }.get(str(spec.get("epochs_set_by")), "a cap set on Train, or its time budget on a CPU")
    return (
        f"Trained to its cap of {cut[0]} epoch{'s' if cut[0] != 1 else ''}, fewer than the "
        f"{cut[1]} of the model's published defaults ({who})."
    )


def still_learning_note() -> str | None:
    """'Still improving at its last epoch': a run that ran to its limit with the validation
    loss falling (per cell type for leave-one-out) is not converged, whatever it is compared
    with; said with its epochs against the model's published ones."""
    if state != "completed" or curve.empty or "val_loss" not in curve or "epoch" not in curve:
        return None
    if status.get("optimizer") == "lbfgs" or status.get("stopped_early"):
        return None
    # leave-one-out: one curve per cell type, its epochs counted on from the previous type's
    parts = list(curve.groupby("cell_type")) if "cell_type" in curve else [(None, curve)]
    learning = {
        name: len(c)
        for name, c in parts
        if evaluate.still_improving(pd.to_numeric(c["val_loss"], errors="coerce"))
    }
    lowest = ""  # where the lowest came, said of one curve (it need not be the last epoch)
    if list(learning) == [None]:
        loss = pd.to_numeric(curve["val_loss"], errors="coerce").reset_index(drop=True)
        if loss.notna().any():
            lowest = f" (its lowest at epoch {int(loss.idxmin()) + 1} of {len(loss)})"
    if not learning:
        return None
    last = max(learning.values())  # epochs of the model (or models) still learning
    info = models.REGISTRY.get(str(spec.get("model")))
    published = info.epochs if info and info.kind == "torch" else None
    names = [str(n) for n in learning]
    which = (
        ""
        if list(learning) == [None]
        else f" (for {', '.join(names[:8])}" + (", ..." if len(names) > 8 else "") + ")"
    )
    short = (
        f", {published} in the model's published defaults" if published and last < published else ""
    )
    return (
        f"The validation loss was still falling over the last epochs{which}{lowest}: {last} "
        f"epochs{short}. The model has not converged: train it longer (Max epochs on Train) "
        "before trusting its metrics or a comparison with a baseline."
    )


def warmup_note() -> str | None:
    """A VAE whose KL warm-up outlasted its training never trained on its whole objective (the
    Train page said nothing when 10 epochs met a warm-up of 20: a browser pass)."""
    info = models.REGISTRY.get(str(spec.get("model")))
    if info is None or "kl_warmup" not in info.params or curve.empty or "epoch" not in curve:
        return None
    saved = spec.get("params") if isinstance(spec.get("params"), dict) else {}
    warm = {**info.defaults(), **models.recorded_params(info.name, saved)}.get("kl_warmup")
    last = pd.to_numeric(curve["epoch"], errors="coerce").max()
    if not isinstance(warm, int | float) or not np.isfinite(last) or int(last) >= warm:
        return None
    return (
        f"Its KL warm-up ({warm:g} epochs) was longer than its training ({int(last)}): the KL "
        f"term's weight reached only {int(last) / warm:.2f} of 1, so the model never trained "
        "on the VAE's whole objective (the loss curves show that whole objective). Train it "
        "longer, or with a shorter kl_warmup."
    )


if unstable := progress_text.unstable_note(spec, metrics or {}, curve):
    st.warning(unstable, icon=":material/warning:")
if warm := warmup_note():
    st.warning(warm, icon=":material/warning:")
note = early_stop_note()
if note:
    st.info(note, icon=":material/timer_off:")
elif learning_note := still_learning_note():
    st.warning(learning_note, icon=":material/trending_down:")
if status.get("solver_converged") is False:  # scikit-learn only warns, in the worker's log
    sk = models.REGISTRY.get(str(spec.get("model")))
    saved = spec.get("params") if isinstance(spec.get("params"), dict) else {}
    limit = {**(sk.defaults() if sk else {}), **saved}.get("max_iter", "its")
    st.warning(
        f"scikit-learn's solver stopped at its limit of {esc(limit)} iterations before it "
        "converged: "
        "this baseline is not at its optimum (raise max_iter on Train, or scale the data).",
        icon=":material/warning:",
    )
if shortened := shortened_note():
    st.caption(shortened)

scalar = {
    k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
}
if task != "perturb" and scalar:
    st.dataframe(  # the headline first: a wide table hid the AUROC off the screen's edge
        pd.DataFrame([scalar])[metric_names.headline_first(scalar)],
        hide_index=True,
        width="stretch",
        placeholder="-",
        column_config=figures.metric_columns(scalar),
    )
    # said on Compare only before, where a browser pass did not look
    if caution := metric_names.cluster_caution([spec.get("label_key")], scalar):
        st.caption(esc(caution))
if not curve.empty and "epoch" in curve:
    best = progress_text.best_epoch(curve, status.get("optimizer"))
    figures.show(
        "loss_curves",
        lambda: figures.loss_curves(curve, best_epoch=best),
        figs,
        what="the loss curves",
    )


# cached on (path, mtime): a finished run's files change only when it is trained again
@st.cache_data(max_entries=8, show_spinner=False)
def summary(path: str, mtime: float) -> dict:
    return results_files.summary(path)


@st.cache_data(max_entries=16, show_spinner=False)
def obs_columns(path: str, mtime: float, columns: tuple[str, ...]) -> pd.DataFrame:
    return results_files.obs(path, list(columns))


@st.cache_data(max_entries=8, show_spinner=False)
def gene_labels(path: str, mtime: float) -> dict[str, str]:
    return results_files.gene_labels(path)


@st.cache_data(max_entries=8, show_spinner=False)
def obs_levels(path: str, mtime: float) -> dict[str, int]:
    return results_files.levels(path, max_numeric=defaults.MAX_NUMERIC_CLASSES)


@st.cache_data(max_entries=4, show_spinner=False)
def obsm_values(path: str, mtime: float, key: str) -> np.ndarray:
    return results_files.obsm(path, key)


@st.cache_resource(max_entries=3, show_spinner="Loading the stored cells...")
def stored_sample(run: str, mtime: float) -> ad.AnnData:
    return results_files.sample(run)


@st.cache_data(max_entries=8, show_spinner="Drawing the stored cells...")
def recon_figures(
    run: str, mtime: float, group: str, layer: str, count_model: bool, rec: str, total: int
) -> tuple[list, bool] | None:
    """Input, reconstruction and error heatmaps of the stored sample (every cell of a small
    run), and whether counts were log-normalised for them; None when nothing was stored."""
    from engine import io

    smp = stored_sample(run, mtime)
    rec = dict((smp.uns.get("scwb") or {}).get("slots") or {}).get("reconstruction", rec)
    if rec not in smp.layers:
        return None
    if not layer:  # a count model reads layers['counts'] when there is one
        layer = "counts" if count_model and "counts" in smp.layers else "X"
    x, recon = smp.layers.get(layer, smp.X), smp.layers[rec]
    counts = io.matrix_kind(x) == "counts"
    if counts:  # a few genes dominate raw counts: compare log-normalised values
        x, recon = (
            np.log1p(v / np.maximum(v.sum(1, keepdims=True), 1e-12) * 1e4)
            for v in (io.dense(x), io.dense(recon))
        )
    grp = None if group not in smp.obs else smp.obs[group].astype(str)
    names = list(genes.labels(smp.var))  # symbols where the names are IDs
    maps, _ = figures.recon_heatmaps(x, recon, names, grp, total=total)
    return maps, counts


@st.cache_data(max_entries=8, show_spinner=False)
def score_boxes(
    path: str, mtime: float, score: str, group: str, reference: tuple = (), split_key: str = ""
):
    """Per-cell abnormality by group, over every cell (quartiles, and the cells beyond the
    whiskers as points). Grouped by the column a reference group was chosen from, each
    reference group is drawn twice, its cells trained on and its held-out test cells (the
    ones the AUROC scores against the other groups): training cells score low by design."""
    cols = [score, group] + ([split_key] if reference and split_key else [])
    both = results_files.obs(path, list(dict.fromkeys(cols)))
    groups = both[group]
    title = "Per-cell abnormality (reconstruction MSE) by group"
    if reference and split_key in both:
        text = groups.astype(str).to_numpy().astype(object)
        ref = np.isin(text, list(reference))
        held = both[split_key].astype(str).to_numpy() == "test"
        # vectorised: a million cells, not a Python string per cell
        text[ref & held] = np.char.add(text[ref & held].astype(str), " · held out")
        text[ref & ~held] = np.char.add(text[ref & ~held].astype(str), " · trained on")
        groups = pd.Series(text, index=both.index)
        title += " (reference groups: cells trained on, and held-out cells the AUROC uses)"
    return figures.group_boxes(
        both[score].to_numpy(), groups, figures.plain(group), "abnormality", title
    )


@st.cache_resource(max_entries=2, show_spinner="Loading results...")
def load_results(path: str, mtime: float) -> ad.AnnData:
    return results_files.load(path)


@st.cache_resource(max_entries=2, show_spinner="Loading the cell type's cells...")
def target_cells(path: str, mtime: float, type_key: str, target: str) -> ad.AnnData:
    """Only the rows of one cell type (control, predicted and real stimulated cells)."""
    types = obs_columns(path, mtime, (type_key,))[type_key].astype(str).to_numpy()
    return results_files.rows_of(path, np.flatnonzero(types == target))


@st.cache_data(max_entries=8, show_spinner=False)
def target_means(path: str, mtime: float, sub_dir: str, info: dict, target: str, layer: str):
    """Per-gene means of the target's control, predicted and real cells and the mean-shift
    baseline: as the worker stored them with the metrics (``gene_means.csv``), or, for a run
    made before it did, from the whole results file."""
    stored = Path(sub_dir) / GENE_MEANS
    if runs.regular_file(stored):
        return read_gene_means(stored)
    return gene_means(
        load_results(path, mtime),
        info["condition_key"],
        info["cell_type_key"],
        info["ctrl"],
        info["stim"],
        target,
        layer=layer,
    )


res_info = None
mtime = 0.0
if runs.regular_file(res_path):
    try:
        mtime = res_path.stat().st_mtime
        res_info = summary(str(res_path), mtime)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        st.warning(f"results.h5ad could not be read ({esc(first)}): the task figures are skipped.")


def _loo_table(run_dir: Path, targets: list) -> pd.DataFrame | None:
    """The run's per-cell-type table (``loo.csv``), or None with one line where it is missing
    or damaged: a cut file read as fewer cell types, or a cut name, without a word."""
    path = run_dir / "loo.csv"
    if not path.exists():
        return None
    problem = None
    try:
        if not runs.regular_file(path, 64 * 2**20):
            raise ValueError("not a plain file of at most 64 MB")
        # names as written: '01' is not 1, 'NA' is a cell type (a review)
        table = pd.read_csv(path, converters={"cell_type": str})
        names = [str(x) for x in table.get("cell_type", pd.Series(dtype=object))]
        expected = [str(t) for t in targets]
        if sorted(names) != sorted(expected):
            problem = (
                f"it names {len(set(names) & set(expected))} of the {len(expected)} cell types"
            )
    except Exception as exc:
        problem = " ".join(str(exc).split())[:160] or type(exc).__name__
    if problem:
        st.warning(
            f"This run's table of all cell types (loo.csv) is damaged ({esc(problem)}), so it is "
            "not shown; each cell type's own figures below are."
        )
        return None
    return table


def held_out_groups(key: str) -> str:
    """'. Test: donor d1, d4 (212 cells); validation: donor d2 (98 cells); training: 690 of
    1,000 cells':
    the groups of ``key`` the run was tested and validated on, and what it trained on (a
    browser pass: a held-out validation donor left 602 training cells, unsaid on Results)."""
    split_key = (res_info or {}).get("scwb", {}).get("split_key")
    if res_info is None or not split_key:
        return ""
    try:
        both = obs_columns(str(res_path), mtime, (key, split_key))
    except Exception:
        return ""
    part = both[split_key].astype(str).to_numpy()
    groups = both[key].astype(str).to_numpy()

    def named(which: str, word: str) -> str:
        # the column named before its groups, their cells in brackets: "test: 3, 764 cells"
        # read as 3,764 cells where donor 3 had 764 (a browser pass: integer donors)
        rows = part == which
        names = sorted(set(groups[rows]))
        shown = ", ".join(esc(n) for n in names[:5]) + (", ..." if len(names) > 5 else "")
        return f"{word}: {esc(key)} {shown} ({int(rows.sum()):,} cells)"

    trained = int((part == "train").sum())
    return (
        f". {named('test', 'Test')}; {named('val', 'validation')}; "
        f"training: {trained:,} of {len(part):,} cells"
    )


# which cells the test metrics come from: held-out groups, or cells of groups also trained on
if task != "perturb" and isinstance(spec.get("split_by"), str) and spec["split_by"]:
    st.caption(
        f"Test cells: whole groups of {esc(spec['split_by'])} held out, so the metrics are "
        f"those of {esc(spec['split_by'])} groups the model never saw"
        + held_out_groups(spec["split_by"])
        + "."
    )
elif task != "perturb" and res_info is not None and not spec.get("train_on"):
    donors = [
        c
        for c, n in obs_levels(str(res_path), mtime).items()
        if n >= 3 and defaults.is_group_name(c) and c != spec.get("label_key")
    ]
    label = spec.get("label_key") if task == "classify" else None
    if label and label in obs_levels(str(res_path), mtime):  # not a column that holds classes
        # out of training (one sample per cluster: a browser pass on CytOF)
        cols = obs_columns(str(res_path), mtime, (label, *donors))
        donors = [c for c in donors if not split.single_group_classes(cols[c], cols[label])]
    if donors:
        st.caption(
            f"Test cells drawn at random from all the cells: the same {esc(donors[0])} groups "
            "are in training and in test, so the metrics are those of groups the model has "
            "seen (Train > Test on: held-out groups scores new ones)."
        )


def _obs_colour(column: str, rows: np.ndarray) -> np.ndarray:
    whole = obs_columns(str(res_path), mtime, (column,))[column]
    col = whole.iloc[rows]  # the drawn cells only
    if not defaults.colour_by_group(column, whole):  # a measurement: a colour scale
        return col.to_numpy()
    return defaults.group_labels(col)


def latent_embedding(key: str, n_obs: int, draw) -> None:
    """The 2-D UMAP of ``obsm[key]``: from the background engine's cache, started here when
    missing (automatically up to AUTO_UMAP_CELLS cells); ``draw(result)`` draws it when done."""
    now = embedding.read(run_dir, key)
    if now["state"] == "missing" and n_obs <= AUTO_UMAP_CELLS:
        now = embedding.start(run_dir, key)
    if now["state"] in ("missing", "failed"):
        if now["state"] == "failed":
            st.warning(f"The UMAP of {esc(key)} failed: {esc(now.get('error'))}")
        label = "Compute the UMAP in the background" + (
            " again" if now["state"] == "failed" else ""
        )
        if st.button(label, key=f"umap-{key}", help=f"{n_obs:,} cells; at most 20,000 are used"):
            embedding.start(run_dir, key)
            st.rerun()
        return
    computing = now["state"] == "computing"

    @fragment(run_every=POLL_S if computing else None)
    def poll() -> None:
        cur = embedding.read(run_dir, key)
        if cur["state"] == "computing":
            st.caption(
                f":material/hourglass_top: Computing the UMAP of {esc(key)} in the background..."
            )
            return
        if computing:  # it just finished: redraw the whole page once, without the timer
            st.rerun(scope="app")
        if cur["state"] == "failed":
            st.warning(f"The UMAP of {esc(key)} failed: {esc(cur.get('error'))}")
            return
        draw(cur)

    poll()


FEW_TEST_CELLS = 5  # below this a class's F1 is mostly chance


# a reconstruction no better, or barely better, than each gene's mean: said above its figures
# and scores (browser passes: an autoencoder at 0.0555 against 0.0545 was shown with an AUROC
# of 0.61; one at 0.0616 against 0.0617, 0.2% lower, with abnormality boxes by cluster)
GENEMEAN_MARGIN = 0.02  # an error less than 2% below the gene-mean floor has learned ~nothing
own, floor = (
    progress_text.number((metrics or {}).get("test_mse")),
    progress_text.number((metrics or {}).get("genemean_test_mse")),
)
if (
    res_info is not None
    and task == "reconstruct"
    and None not in (own, floor)
    and own >= floor * (1 - GENEMEAN_MARGIN)
):
    how = (
        "no better than"
        if own >= floor
        else f"barely better ({100 * (1 - own / floor):.1f}% lower error) than"
    )
    st.warning(
        f"This model reconstructs the test cells {how} each gene's mean (error {own:.4g} "
        f"against {floor:.4g}): it has not learned the cells' structure, and its abnormality "
        "scores say little. Train longer, or check the input's scaling."
    )

if res_info is not None and task == "classify":
    if (only := seeds.predicted_one_class(metrics or {})) is not None:
        st.warning(
            f"This model predicted one class ({esc(only)}) for every test cell: "
            f"{seeds.NOT_LEARNED}."
        )
    with guard("the classification figures"):
        c = st.columns(2)
        if "confusion" in metrics and "classes" in metrics:
            figures.show(
                "confusion",
                lambda: figures.confusion(metrics["confusion"], metrics["classes"]),
                figs,
                c[0],
            )
        if "per_class_f1" in metrics:
            figures.show(
                "per_class_f1", lambda: figures.per_class_f1(metrics["per_class_f1"]), figs, c[1]
            )
        if "confusion" in metrics and "classes" in metrics:
            # a class with a test cell or two scores 0 or 1 by chance, and macro-F1 (their plain
            # mean) moves with it (a browser pass: two classes of one test cell each)
            pairs = zip(metrics["classes"], metrics["confusion"], strict=False)
            support = {str(k): int(sum(r)) for k, r in pairs}
            few = sorted((n, k) for k, n in support.items() if 0 < n < FEW_TEST_CELLS)
            absent = [k for k, n in support.items() if n == 0]
            if absent:  # held-out groups may lack a class
                st.caption(
                    f"No test cell of {', '.join(esc(k) for k in absent[:6])}"
                    + (", ..." if len(absent) > 6 else "")
                    + ": left out of the macro-F1 and the F1 per class."
                )
            if few:
                st.caption(
                    f"{len(few)} class{'es' if len(few) > 1 else ''} with fewer than "
                    f"{FEW_TEST_CELLS} test cells ("
                    + ", ".join(f"{esc(k)}: {n}" for n, k in few[:6])
                    + (", ..." if len(few) > 6 else "")
                    + "): their F1, and the macro-F1 that averages every class equally, rest on "
                    "those few cells. More seeds (Train > seeds) average over other splits."
                )

# where the engine put each output (uns['scwb']['slots']: role -> key; the usual names otherwise)
scwb = dict(res_info["scwb"]) if res_info is not None else {}
slots = dict(scwb.get("slots") or {})
stored = dict(scwb.get("stored") or {})
SCORE = slots.get("score", "abnormality")

# the grouping serves the heatmaps and the abnormality boxes: a run with neither (a PCA
# embedding) showed the selector with nothing under it
has_recon = "reconstruction" in slots if slots else True  # runs before slots: the usual names
if res_info is not None and task in ("reconstruct", "embed"):
    if has_recon or SCORE in res_info["obs"]:
        with guard("the reconstruction figures"):
            groups_opts = [
                "(none)",
                *[c for c in obs_levels(str(res_path), mtime) if c != SCORE],
            ]
            # the column of the run's reference group (an abnormality run), else its label
            # column, else the first text or categorical column (listed first) that is not the
            # run's own split
            ref_keys = list(spec["train_on"]) if isinstance(spec.get("train_on"), dict) else []
            first = next((k for k in (*ref_keys, spec.get("label_key")) if k in groups_opts), None)
            first = first or next((c for c in groups_opts[1:] if c != scwb.get("split_key")), None)
            group = st.selectbox(
                "Order and group cells by",
                groups_opts,
                index=groups_opts.index(first) if first else 0,
            )
            model_json = runs.read_json(run_dir / "model.json", {}) or {}
            layer = scwb.get("layer") or model_json.get("layer") or spec.get("layer") or ""
            likelihood = (spec.get("params") or {}).get("likelihood", "nb")
            hm = recon_figures(
                str(run_dir),
                mtime,
                group,
                layer,
                task == "embed" and likelihood != "gaussian",
                slots.get("reconstruction", "reconstruction"),
                res_info["n_obs"],
            )
            if hm is not None:
                maps, counts = hm
                st.subheader("Input, reconstruction and error")
                if counts:
                    st.caption(
                        "Counts and reconstructed counts, each normalised to 10,000 per cell and "
                        "log1p-transformed. A count model reconstructs each gene's expected count "
                        "(a mean over what the cell could show), never a zero: where a gene was not "
                        "detected the error is negative (blue) by nature, so read how far the error "
                        "is from 0 where the gene was detected, and the per-cell error, not its sign."
                    )
                if stored.get("per_gene") == "sample":
                    kept = int(stored.get("cells", 0) or 0)
                    drawn = min(kept, figures.MAX_HEATMAP_CELLS)
                    # two counts in a row read as a contradiction (1,000 stored, '500 of 2,784'
                    # drawn: a browser pass): both said, one inside the other
                    st.caption(
                        f"Reconstructions are stored for a sample of {kept:,} of "
                        f"{res_info['n_obs']:,} cells"
                        + (f" (the heatmaps draw {drawn:,} of them)" if drawn < kept else "")
                        + "; `python -m engine predict` writes them for every cell."
                    )
                for name, fig in zip(("input", "reconstruction", "error"), maps, strict=True):
                    figures.show(f"heatmap_{name}", lambda f=fig: f, figs)
            if SCORE in res_info["obs"] and group != "(none)":
                train_on = spec.get("train_on") if isinstance(spec.get("train_on"), dict) else {}
                reference = tuple(str(v) for v in train_on.get(group) or ())
                figures.show(
                    "abnormality",
                    lambda: score_boxes(
                        str(res_path), mtime, SCORE, group, reference, scwb.get("split_key") or ""
                    ),
                    figs,
                )

    model = spec.get("model") or row.get("model")
    keys = [
        k
        for k in (slots.get("latent"), f"X_{model}", "X_pca_baseline")
        if k and k in res_info["obsm"]
    ]
    if keys:
        with guard("the latent space"):
            key = keys[0]
            st.subheader("Latent space")
            colour_opts = list(res_info["obs"])
            # the run's label column, else the first text or categorical column
            by = spec.get("label_key") if spec.get("label_key") in colour_opts else None
            levels = [c for c in obs_levels(str(res_path), mtime) if c != scwb.get("split_key")]
            by = by or next(iter(levels), None)
            # kept over a refresh (a browser pass), and followed on Back and Forward
            from_address("colour", "umap_color", colour_opts, by)
            if st.session_state.get("umap_color") not in colour_opts:
                st.session_state["umap_color"] = (
                    by if by in colour_opts else next(iter(colour_opts), None)
                )
            color = st.selectbox("Colour the latent UMAP by", colour_opts, key="umap_color")
            to_address("colour", color, by)
            st.page_link(
                "pages/explore.py",
                label="Colour by a gene, or compare with other embeddings, on Explore",
                icon=":material/scatter_plot:",
                query_params=address(),
            )
            lat_shape = res_info["obsm"][key]

            def draw(out: dict) -> None:
                cells = out["cells"]
                if out.get("dropped"):
                    st.caption(
                        f"{out['dropped']:,} cell(s) with non-finite latent values are left out."
                    )
                figures.show(
                    "latent_umap",
                    lambda: figures.embedding(
                        out["coords"],
                        _obs_colour(color, cells),
                        color,
                        f"UMAP of {key}"
                        + (
                            f" ({len(cells):,} of {out['total']:,} cells)"
                            if len(cells) < out["total"]
                            else ""
                        ),
                    ),
                    figs,
                )

            if len(lat_shape) == 2 and lat_shape[1] == 2 and color is not None:
                draw(
                    {
                        "coords": obsm_values(str(res_path), mtime, key),
                        "cells": np.arange(res_info["n_obs"]),
                        "dropped": 0,
                        "total": res_info["n_obs"],
                    }
                )
            elif color is not None:
                latent_embedding(key, res_info["n_obs"], draw)


PERTURB_COLS = (
    "r2_mean_all",
    "r2_mean_top100",
    "r2score_mean_all",
    "r2score_mean_top100",  # both or neither: the one shown alone was where scGen led
    "r2_var_all",
    "pearson_delta",
    "direction_top20",
)

if res_info is not None and task == "perturb":
    with guard("the perturbation results"):
        info = dict(scwb.get("perturb") or {})
        if not info:  # a run of an older version: its design lives elsewhere in uns
            res = load_results(str(res_path), mtime)
            info = dict((res.uns.get("scwb") or {}).get("perturb") or res.uns.get("scgen") or {})
        targets = [str(t) for t in list(info.get("targets", []))]
        if not targets:
            raise ValueError("the results file records no predicted cell type")
        target = (
            st.selectbox("Cell type", targets, format_func=str) if len(targets) > 1 else targets[0]
        )
        dirs_read = info.get("target_dirs")  # an array when read back from the .h5ad
        folders = [] if dirs_read is None else [str(x) for x in list(dirs_read)]
        dirs = dict(zip(targets, map(str, folders), strict=False)) if folders else {}
        if target in dirs:
            sub_dir = (run_dir / str(dirs[target])).resolve()
            if run_dir.resolve() not in [sub_dir, *sub_dir.parents]:
                raise ValueError("the results file points outside the run folder")
        elif len(targets) == 1:
            sub_dir = run_dir
        else:
            from engine.workspace import safe_name

            sub_dir = run_dir / "loo" / safe_name(target)
        m = runs.read_metrics(sub_dir / "metrics.json", None) if sub_dir != run_dir else metrics
        unreadable = not isinstance(m, dict)  # missing or damaged; {}: too few cells to score
        m = m if isinstance(m, dict) else {}
        table = _loo_table(run_dir, targets) if len(targets) > 1 else None
        if table is not None:
            st.subheader("Leave-one-cell-type-out")
            cols = [
                "cell_type",
                "n_ctrl",
                "n_stim",
                "epochs",
                "r2_mean_all",
                "baseline_noshift_r2_mean_all",
                "baseline_meanshift_r2_mean_all",
                "meanshift_gap_r2_mean_all",
                "meanshift_gap_ci95_low",
                "meanshift_gap_ci95_high",
                "ceiling_r2_mean_all",
                "r2_mean_top100",
                "baseline_meanshift_r2_mean_top100",
                "pearson_delta",
                "direction_top20",
                "beats_noshift",
                "beats_meanshift",
            ]
            if {"meanshift_gap_ci95_low", "meanshift_gap_ci95_high"} <= set(table):
                # the interval decides: one word per type instead of the sign's yes/no
                table["vs_meanshift"] = [
                    VERDICT_WORDS.get((against_meanshift(r, "") or ("",))[0], "")
                    for r in table.to_dict("records")
                ]
                cols[cols.index("beats_meanshift")] = "vs_meanshift"
            shown = [c for c in cols if c in table]
            st.dataframe(
                table[shown],
                hide_index=True,
                width="stretch",
                placeholder="-",
                column_config=figures.metric_columns(
                    shown, {"cell_type": st.column_config.TextColumn("cell type")}
                ),
            )
        if unreadable:  # the file's fault, not the data's (a hostile pass)
            st.warning(
                f"The scores of {esc(target)} (its metrics.json) are missing or unreadable: "
                "the predictions are in the results file, but their scores cannot be shown."
            )
        elif "r2_mean_all" not in m:
            st.info(
                f"{esc(target)} has fewer than 2 real stimulated or 2 control cells in the "
                "data: predictions are in the results file, but cannot be scored."
            )
        else:
            saved = spec.get("params")
            how = models.recorded_params(
                spec.get("model"), saved if isinstance(saved, dict) else {}
            )
            if how.get("output") in models.SCGEN_OUTPUTS:
                vectors = {  # the words, not the option's name alone (a browser pass)
                    "paired": "the mean over the training cell types of each one's latent shift "
                    "from control to stimulated ('paired')",
                    "sampled": "the scGen package's: the latent means of balanced samples of "
                    "all training cells of each condition ('sampled')",
                }
                delta = str(how.get("delta", ""))
                st.caption(
                    f"scGen's prediction: {models.SCGEN_OUTPUTS[how['output']]}; its stimulation "
                    f"vector: {esc(vectors.get(delta, delta))}."
                )
            parts = metric_names.split_baselines(m)
            # one metric per row, one prediction per column: the long metric names fit
            table = pd.DataFrame(
                {"metric": [metric_names.name(k) for k in PERTURB_COLS]}
                | {
                    ("scGen" if label == "" else label): [parts[label].get(k) for k in PERTURB_COLS]
                    for label in parts
                }
            )
            verdict = against_meanshift(m, esc(target), "scGen")
            # a "best" marked in green where the verdict below says the two cannot be told
            # apart on these cells read as a win (a browser pass: 0.7778 against 0.7734)
            undecided = verdict is not None and verdict[0] == "info"
            st.dataframe(
                figures.metric_rows_style(
                    table,
                    list(PERTURB_COLS),
                    **({"better": lambda _k: None} if undecided else {}),
                ),
                hide_index=True,
                width="stretch",
                placeholder="-",
            )
            if undecided:
                st.caption(
                    "No prediction is marked best: scGen and the mean-shift baseline cannot be "
                    "told apart on these cells (below)."
                )
            with st.expander("What these measure"):
                st.markdown(
                    "\n".join(
                        f"- **{metric_names.name(k)}**: {metric_names.describe(k).help}"
                        for k in PERTURB_COLS
                    )
                    + "\n\nThe baselines, scored the same way on the same cells: **control "
                    "unchanged** predicts the held-out control cells as they are (no response; "
                    "its change has no correlation or direction: a dash); **control + mean "
                    "shift** adds to each control cell the average response of the other cell "
                    "types (mean stimulated minus mean control of each, averaged over the types)."
                )
            ceiling = m.get("ceiling_r2_mean_all")
            if type(ceiling) in (int, float) and np.isfinite(ceiling):  # not a bool, not NaN
                st.caption(
                    f"Noise ceiling: a perfect prediction would reach an R² of about {ceiling:.3f} "
                    f"(all genes) against the real stimulated cells of {esc(target)}, whose mean is "
                    "itself noisy when they are few (split-half estimate)."
                )
            if verdict:
                said = verdict[1]
                cut = progress_text.shortened(spec, status)
                if verdict[0] != "success" and cut:  # a loss said beside its likely cause
                    said += (
                        f" This scGen trained {cut[0]} of its published {cut[1]} epochs: a "
                        "full training (epochs on Train, or a GPU) may close the gap."
                    )
                getattr(st, verdict[0])(said)
            means = target_means(
                str(res_path), mtime, str(sub_dir), info, target, str(scwb.get("layer") or "X")
            )
            top = runs.read_json(sub_dir / "top_degs.json", []) or []
            top = [str(g) for g in top] if isinstance(top, list) else []
            named = gene_labels(str(res_path), mtime)  # var name -> symbol, where names are IDs
            panels = (
                ("pred_vs_real", "predicted", "", f"scGen, {target}"),
                (
                    "baseline_vs_real",
                    "meanshift",
                    "baseline_meanshift_",
                    "Baseline: control + mean shift",
                ),
            )
            both = means[["predicted", "meanshift", "real"]].to_numpy(dtype=float)
            limits = (float(np.nanmin(both)), float(np.nanmax(both))) if both.size else None
            for col, (fkey, source, prefix, title) in zip(st.columns(2), panels, strict=True):
                figures.show(
                    fkey,
                    lambda s=source, p=prefix, t=title: figures.mean_scatter(
                        means[s].to_numpy(),
                        means["real"].to_numpy(),
                        [named.get(g, g) for g in means.index.astype(str)],
                        [named.get(g, g) for g in top],
                        m[f"{p}r2_mean_all"],
                        m[f"{p}r2_mean_top100"],
                        t,
                        limits,  # one scale for both panels, read side by side
                    ),
                    figs,
                    col,
                )
            deg_genes = [g for g in top if g in means.index][:6]

            def _violins():
                sub = target_cells(str(res_path), mtime, info["cell_type_key"], target)
                layer = str(scwb.get("layer") or "X")  # where the model read (as the means)
                # the run's conditions alone: a third one of the data (drugB in a ctrl ->
                # drugA run) was drawn as if predicted or real (a browser pass)
                design = [str(info["ctrl"]), "predicted", str(info["stim"])]
                sub = sub[sub.obs[info["condition_key"]].astype(str).isin(design).to_numpy()]
                sub = sub[:, deg_genes]
                xs = sub.layers[layer] if layer != "X" and layer in sub.layers else sub.X
                xs = xs.toarray() if hasattr(xs, "toarray") else np.asarray(xs)
                shown = [named.get(g, g) for g in deg_genes]
                long = (
                    pd.DataFrame(xs, columns=shown)
                    .assign(condition=sub.obs[info["condition_key"]].astype(str).to_numpy())
                    .melt(id_vars="condition", var_name="gene", value_name="expression")
                )
                return figures.deg_violins(long, shown, "condition", design)

            if deg_genes:
                figures.show("top_deg_violins", _violins, figs, what="the top-DEG violins")

        LAT = slots.get("latent", "X_scgen")
        if LAT in res_info["obsm"]:
            st.subheader(f"Latent space: {esc(target)}")
            both = obs_columns(str(res_path), mtime, (info["cell_type_key"], info["condition_key"]))
            cond_all = both[info["condition_key"]].astype(str).to_numpy()
            keep = (both[info["cell_type_key"]].astype(str) == target).to_numpy() & np.isin(
                cond_all, [str(info["ctrl"]), "predicted", str(info["stim"])]
            )  # the run's conditions alone (a third one of the data was drawn: a browser pass)

            def draw_scgen(out: dict) -> None:
                cells = out["cells"]
                sel = keep[cells]
                lat = obsm_values(str(res_path), mtime, LAT)
                n_bad = int((~np.isfinite(lat[keep]).all(1)).sum())
                if n_bad:
                    st.caption(
                        f"{n_bad:,} {esc(target)} cells have no finite latent code (predicted "
                        "cells of a run made before latents were written for them): left out."
                    )
                figures.show(
                    "latent_umap",
                    lambda: figures.embedding(
                        out["coords"][sel],
                        cond_all[cells][sel],
                        "condition",
                        f"UMAP of the scGen latent space, {target}",
                        dict(
                            zip(
                                [str(info["ctrl"]), "predicted", str(info["stim"])],
                                figures.CONDITION_COLOURS,
                                strict=True,
                            )
                        ),
                    ),
                    figs,
                )

            latent_embedding(LAT, res_info["n_obs"], draw_scgen)

st.divider()
st.subheader("Export")
c = st.columns(3)
# files are read or built only when their button is clicked (callables run on download); the
# app holds a file in memory while it sends it, so a file above SCWB_DOWNLOAD_MAX_MB is named
# by its path on this machine and the command that writes it instead
limit = settings.get().download_max_mb * 2**20


too_large: list[str] = []  # said below the buttons, full width: paths and commands are long


def offer(
    col,
    label: str,
    size: int,
    data,
    file_name: str,
    flag: str,
    where: Path | None,
    help: str | None = None,
) -> None:
    if size <= limit:
        col.download_button(label, data, file_name=file_name, on_click="ignore", help=help)
        return
    place = f" on this machine at `{where}`;" if where else ""
    too_large.append(
        f"**{label}** ({human(size)}):{place} write it with "
        f"`python -m engine export {run_dir} --{flag} FILE`"
    )


if runs.regular_file(res_path) and res_info is None:  # said above: not offered as if whole
    c[0].caption("The annotated .h5ad is damaged (see above): not offered.")
elif runs.regular_file(res_path):  # never a link, pipe or device (read until memory ran out)
    offer(
        c[0],
        "Annotated .h5ad",
        res_path.stat().st_size,
        lambda: runs.read_capped(res_path, limit),
        f"{run_id}.h5ad",
        "h5ad",
        res_path,
        help=(
            "the input cells with this run's results in obs, obsm and uns['scwb']"
            + (
                f"; the predicted cells are the rows whose obs['{spec.get('condition_key')}'] "
                "is 'predicted' (obs['predicted_from']: the control cell each came from), and "
                "what was not predicted for them (other annotations, layers) is missing (NaN)"
                if task == "perturb" and spec
                else ""
            )
        ),
    )
    if stored.get("per_gene") == "sample":
        c[0].caption(
            f"Per-gene outputs are in the .zip's {results_files.SAMPLE} "
            f"({stored.get('cells', 0):,} cells)."
        )
weights = run_dir / "model.pt"
weights_damage = export.damage(weights) if runs.regular_file(weights) else None
if weights_damage:
    c[0].caption(f"The model weights are damaged ({esc(weights_damage)}): not offered.")
elif runs.regular_file(weights):
    offer(
        c[0],
        "Model weights (.pt)",
        weights.stat().st_size,
        lambda: runs.read_capped(weights, limit),
        f"{run_id}-model.pt",
        "model",
        weights,
    )
if metrics:
    c[1].download_button(
        "Metrics (JSON)",
        runs.json_text(metrics),
        file_name=f"{run_id}-metrics.json",
        on_click="ignore",
    )
with guard("the metrics CSV"):
    c[1].download_button(  # not 'metrics.csv' as the zip's per-epoch history is named
        "Metrics (CSV)",
        lambda: export.metrics_csv(run_dir),
        file_name=f"{run_id}-test-metrics.csv",
        help="the test metrics, one row; the whole run's zip also holds metrics.csv, the "
        "losses of every epoch",
        on_click="ignore",
    )
if spec:
    c[2].download_button(
        "Reproduce script (.py)",
        lambda: export.script(run_dir, filename=f"{run_id}.py"),
        file_name=f"{run_id}.py",
        on_click="ignore",
    )
offer(
    c[2],
    "Whole run (.zip)",
    export.bundle_size(run_dir),
    lambda: export.bundle(run_dir),
    f"{run_id}.zip",
    "zip",
    None,
)
if too_large:
    st.caption(
        f"Larger than the app sends through the browser ({human(limit)}, "
        f"SCWB_DOWNLOAD_MAX_MB); the commands run in {APP_DIR}:\n\n"
        + "\n\n".join(f"- {line}" for line in too_large)
    )
if figs:
    which = st.selectbox(  # named by their titles, as on the page (the keys are file names)
        "Figure",
        list(figs),
        format_func=lambda k: str(figs[k].layout.title.text or k.replace("_", " ")),
    )
    fig = figs[which]
    f1, f2 = st.columns(2)
    f1.download_button(
        "Figure as interactive HTML",
        lambda: figures.for_export(fig).to_html(include_plotlyjs=True, full_html=True),  # offline
        file_name=f"{run_id}-{which}.html",
        on_click="ignore",
        help="a self-contained page with plotly.js embedded: opens offline",
    )
    f2.download_button(
        "Figure as PNG",
        lambda: figures.to_png(fig),
        file_name=f"{run_id}-{which}.png",
        on_click="ignore",
        mime="image/png",
        help="rendered on the server with Chrome/Chromium; the camera icon on each figure works too",
    )
