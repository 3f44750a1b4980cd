"""Compare: runs of one task side by side, baselines included, best value per column marked.

Metric names are readable (``engine.metric_names``) with a tooltip saying what each measures and
which way is better; a column is marked only where there is a choice (two runs or more) and the
metric is ranked. scGen's two baselines appear as their own rows.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from engine import csvsafe, jobs, metric_names, runs, seeds
from engine import models as registry
from engine import progress as progress_text
from ui import figures
from ui.state import current_dataset, ensure_app_navigation, from_address, to_address

ensure_app_navigation()
st.title("Compare")
done = [
    r
    for r in jobs.list_jobs()
    if r["state"] in ("completed", "cancelled") and (Path(r["path"]) / "metrics.json").exists()
]
tasks = sorted({r["task"] for r in done if r["task"] in registry.TASKS})
if not tasks:
    st.info("No finished run to compare yet.")
    st.stop()
# the task and runs picked are in the address: a browser refresh keeps them (they went back
# to the defaults: a browser pass); a default is not written (each write is a press of Back)
# (fixed widget keys, seeded from the address once: a default taken from the address gave the
# widget a new identity after each write, and the next click was lost)
# the defaults are the tab's dataset's: its newest run's task, its runs (the newest runs of
# any dataset were shown under another dataset's address: a browser pass)
here = current_dataset()
first_task = next(
    (r["task"] for r in done if r.get("dataset_key") == here and r["task"] in tasks), None
)
first_task = first_task or tasks[0]
from_address("task", "cmp_task", tasks, first_task)  # Back to another task shows that task
if st.session_state.get("cmp_task") not in tasks:
    st.session_state["cmp_task"] = first_task
task = st.radio("Task", tasks, key="cmp_task", format_func=registry.TASKS.get, horizontal=True)
to_address("task", task, first_task)
of_task = [r for r in done if r["task"] == task]


# a cancelled run's metrics are those of a model stopped before its last epoch: said everywhere
def _mark(r: dict) -> str:
    return " · cancelled" if r["state"] == "cancelled" else ""


# the dataset in a run's name only where runs of several datasets are offered: a long dataset
# name repeated in every chip hid the ids that tell the runs apart (a browser pass)
several = len({r.get("dataset_key") or r["dataset"] for r in of_task}) > 1
labels = {
    r["id"]: f"{r['model']} · {r['dataset'] + ' · ' if several else ''}{r['id']}{_mark(r)}"
    for r in of_task
}
# the newest group of two runs or more (a group of one, e.g. a cancelled run submitted alone,
# left "nothing to rank"), else the two newest runs, completed ones first
candidates = [r for r in of_task if r.get("dataset_key") == here] or of_task
groups: dict[str, list[str]] = {}
for r in candidates:
    if r["group"]:
        groups.setdefault(r["group"], []).append(r["id"])
default = next((ids for ids in groups.values() if len(ids) >= 2), None) or [
    r["id"] for r in sorted(candidates, key=lambda r: r["state"] != "completed")[:2]
]
runs_key = f"cmp_runs:{task}"
from_address("run", runs_key, list(labels), default, many=True)
if runs_key not in st.session_state:
    st.session_state[runs_key] = default
else:  # a run deleted meanwhile is no option any more
    st.session_state[runs_key] = [r for r in st.session_state[runs_key] if r in labels]
chosen = st.multiselect("Runs", list(labels), key=runs_key, format_func=labels.get)
to_address("run", chosen, default)
if not chosen:
    st.info("Pick one run or more above to see their metrics side by side.")
    st.stop()


def _is_baseline(model: str) -> bool:
    try:
        return bool(registry.get(model).baseline)
    except Exception:
        return False


def seed_section(configs: list[seeds.Config]) -> None:
    """Each configuration over its seeds (mean ± sd, every seed on hover) and paired tests."""
    st.markdown("**Over seeds** (completed runs)")
    metrics = [k for k in seeds.metrics_of(configs) if metric_names.better(k)]
    rows = seeds.table(configs, metrics)
    text, means = figures.mean_sd_text(rows, metrics)
    # a best mean is marked only where it is beyond the seed-to-seed spread against every
    # other configuration (the verdicts below say so): ranked by the clear winner alone
    winners = {k: seeds.clear_best(configs, k) for k in metrics if metric_names.ranked(k)}
    for k in metrics:  # a training score is shown, never marked (no winner: NaN)
        if k not in winners and k in means:
            means[k] = float("nan")
    for k, best in winners.items():
        if k in means:  # the winner's value ranks first in the metric's own direction
            win, rest = (1.0, 0.0) if metric_names.better(k) == "higher" else (0.0, 1.0)
            means[k] = [win if c is best else rest for c in configs] if best else float("nan")
    st.dataframe(
        figures.metrics_table_style(text, values=means),
        hide_index=True,
        width="stretch",
        placeholder="-",
        column_config=figures.metric_columns(
            text.columns,
            {
                "baseline": st.column_config.CheckboxColumn("baseline"),
                "seeds": st.column_config.NumberColumn("seeds", help="completed runs averaged"),
            },
        ),
    )
    for line in seeds.repeated_splits(configs) + seeds.one_class_runs(configs):
        st.warning(figures.esc(line))
    first = seeds.primary_metric(configs)
    tested = [k for k in metrics if metric_names.ranked(k)]
    if not tested or first is None:
        return
    metric = st.selectbox(
        "Metric over seeds",
        tested,
        index=tested.index(first) if first in tested else 0,
        format_func=metric_names.name,
    )
    figures.show("seed_spread", lambda: figures.seed_spread(rows, metric))
    for p in seeds.pairs(configs, metric):
        st.markdown("- " + figures.esc(p.text()))
    scope_note = (
        " Runs of different data, label or task are not paired."
        if seeds.scopes(configs) > 1
        else ""
    )
    st.caption(
        "Marked in the table: a configuration better than every other one beyond the "
        "seed-to-seed spread (none where no such one exists). "
        "Paired by seed: the same seed gives the same split, so each difference is measured on "
        "the same test cells (checked for each seed against the runs' splits: a seed scored on "
        "other cells is left out and said); p is a two-sided paired t-test over the shared "
        "seeds." + scope_note
    )


picked = [r for r in of_task if r["id"] in chosen]
# the table's rows name the dataset only when the runs do not share one (it cut the baselines'
# row names to "...baselin")
one_dataset = len({r.get("dataset_key") or r["dataset"] for r in picked}) == 1
row_names = {
    r["id"]: f"{r['model']} · {r['id']}{_mark(r)}" if one_dataset else labels[r["id"]]
    for r in picked
}
SCALAR = (str, int, float, type(None))
DESIGN = ("condition_key", "ctrl", "stim", "cell_type_key", "predict")
SPEC_VALUES = ("model", "seed", "label_key", "data_fingerprint", "task", "split_by", *DESIGN)


def _seed_order(seed: object) -> tuple[int, float]:
    """Seeds in numeric order, a run without a readable seed last."""
    try:
        return 0, float(seed)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 1, 0.0


def _design(spec: dict) -> str:
    """' · Goblet (Control → Hpoly.Day10)': a perturbation run's cell type and direction (two
    runs predicting other cell types or directions read alike and were ranked together)."""
    if task != "perturb" or not spec.get("predict"):
        return ""
    what = "every cell type" if spec["predict"] == "all" else spec["predict"]
    return f" · {what} ({spec.get('ctrl')} → {spec.get('stim')})"


rows, curves, splits, label_keys, readable = [], {}, [], set(), []
shortened: list[str] = []
unstable: list[str] = []  # runs whose loss blew up (a learning rate too high)
curve_models: dict[str, str] = {}  # one colour per model on the overlaid curves
for rid in chosen:
    d = Path(next(r["path"] for r in of_task if r["id"] == rid))
    spec = runs.read_json(d / "run.json", {}) or {}
    m = runs.read_metrics(d / "metrics.json", {}) or {}
    # a hand-edited run.json with a list where a value belongs broke the page for every run
    if (
        not isinstance(spec, dict)
        or not isinstance(m, dict)
        or not all(isinstance(spec.get(k), SCALAR) for k in SPEC_VALUES)
    ):
        st.caption(f":material/info: {figures.esc(rid)}: run.json or metrics.json is unreadable.")
        continue
    readable.append(rid)
    # ended by a cap under the published epochs: reads as finished (not a run that stopped
    # early first); the listing's row holds the status fields it needs
    cut = progress_text.shortened(spec, next(r for r in of_task if r["id"] == rid))
    if cut:
        shortened.append(f"{row_names[rid]}{_design(spec)} ({cut[0]} of {cut[1]})")
    numbers = {
        k: v for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    parts = metric_names.split_baselines(numbers) if task == "perturb" else {"": numbers}
    design = _design(spec)
    for part, values in parts.items():
        rows.append(
            {
                # the baseline's name before the design: the end of a long name is cut
                # a baseline's row named baseline first ('scgen · RUN · baseline: ...' read as
                # a scGen run, and its end was cut: a browser pass)
                "run": (f"{part} · of {row_names[rid]}" if part else row_names[rid]) + design,
                "_config": (seeds.config_key(spec), part, design),
                "seed": spec.get("seed"),
                "baseline": bool(part) or _is_baseline(spec.get("model", "")),
                **values,
            }
        )
    curves[row_names[rid] + design] = runs.read_metrics_csv(d)
    if progress_text.unstable_note(spec, m, curves[row_names[rid] + design]):
        unstable.append(row_names[rid] + design)
    # one colour per configuration (its seeds told apart by dash): a model with another
    # design or learning rate is another configuration, not another seed
    curve_models[row_names[rid] + design] = seeds.config_key(spec)
    # held-out groups or cells at random: another split of the same data (other test cells);
    # a perturbation predicts the cells of its design (another type or direction: other cells)
    data_split = (
        spec.get("data_fingerprint"),
        spec.get("split_by") or None,
        *(spec.get(k) for k in DESIGN),
    )
    splits.append((data_split, spec.get("seed"), spec.get("label_key")))
    label_keys.add(spec.get("label_key"))
if not rows:
    st.stop()
if one_dataset:
    st.caption(f"Dataset: {figures.esc(picked[0]['dataset'])}.")
cancelled = [row_names[r["id"]] for r in picked if r["state"] == "cancelled"]
if cancelled:
    st.warning(
        "Cancelled before they finished: "
        + ", ".join(figures.esc(n) for n in cancelled)
        + ". Their metrics are those of a model stopped part-way, not of a finished one."
    )
if unstable:
    st.warning(
        "Unstable training (the loss blew up, most likely a learning rate too high): "
        + ", ".join(figures.esc(n) for n in unstable)
        + ". Their metrics reflect the step size more than the model (Results says more)."
    )
if shortened:
    st.caption(
        "Trained to an epoch cap below the model's published defaults: "
        + ", ".join(figures.esc(n) for n in shortened)
        + ". Their metrics may be those of a model not yet converged (Results says whether its "
        "validation loss was still falling)."
    )
caution = metric_names.cluster_caution(label_keys, {k for r in rows for k in r})
if caution and task in ("embed", "reconstruct"):  # only beside latent scores
    st.info(figures.esc(caution))
configs = seeds.group(
    [Path(next(r["path"] for r in of_task if r["id"] == rid)) for rid in readable],
    parts=metric_names.split_baselines if task == "perturb" else None,
)
repeated = any(len(c.runs) > 1 for c in configs)
# the split depends on the label column only where one was used (it stratifies the split)
labelled = any(label for _, _, label in splits)
same = "data and label column" if labelled else "data"
if task == "perturb":
    same = same.replace(" and ", ", ") + " and design (cell type predicted, direction)"
if len({data[1] for data, _, _ in splits}) > 1:
    same = same.replace(" and ", ", ") + " and split (held-out groups or cells at random)"
mixed = len({(data, label) for data, _, label in splits}) > 1
if mixed:
    st.warning(
        f"These runs did not all use the same {same}, so their test cells differ: compare with care."
    )
elif task == "perturb":  # the held-out cells are the design's, whatever the seed
    st.caption(
        f"Same {same}: every run predicts the same held-out stimulated cells"
        + (" (each seed draws its own training and validation cells)." if repeated else ".")
    )
elif len({seed for _, seed, _ in splits}) > 1:
    st.caption(
        f"Same {same}; each seed draws its own split, so runs are compared seed "
        "by seed (runs with the same seed were scored on the same test cells)."
    )
else:
    every = "data, seed and label column" if labelled else "data and seed"
    every = every.replace(" and ", ", ") + " and design" if task == "perturb" else every
    st.caption(f"Same {every}: every run was scored on the same test cells.")
if repeated:
    seed_section(configs)
    st.markdown("**Every run**")
# each configuration's seeds together and in order (interleaved groups read 0, 1, 2, 2, 0, 1),
# configurations in the order first picked
first = {c: i for i, c in reversed(list(enumerate(r["_config"] for r in rows)))}
rows.sort(key=lambda r: (first[r["_config"]], _seed_order(r["seed"])))
table = pd.DataFrame(rows).drop(columns="_config")
# the seed column only when seeds differ: one seed says nothing
if table["seed"].nunique(dropna=False) <= 1:
    table = table.drop(columns="seed")
# separation of the other cells from the reference group is what matters: where AUROC exists,
# it stands for the two mean scores (kept in the CSV)
shown = table
if "abnormality_auroc" in table and table["abnormality_auroc"].notna().all():
    shown = table.drop(columns=["abnormality_trained_on", "abnormality_others"], errors="ignore")
front = ["run", "seed", "baseline", "abnormality_auroc"]
shown = shown[
    [c for c in front if c in shown]
    + metric_names.headline_first([c for c in shown if c not in front])
]
if len(shown) < 2:
    st.caption("One row: nothing to rank. Pick more runs to see the best value of each metric.")
# no best value marked where values do not rank: runs of other data or labels, or single
# seeds of configurations that the table over seeds above ranks (a lucky seed is not a winner)
unranked = (
    pd.DataFrame(float("nan"), index=shown.index, columns=shown.columns)
    if mixed or repeated
    else None
)
if mixed or repeated:
    st.caption(
        "No best value marked: "
        + ("these runs were scored on different cells." if mixed else "see the table over seeds.")
    )
elif len(shown) >= 2:  # a browser pass: 0.7239 against 0.7146 on 70 test cells read as a win
    st.caption(
        "Best values marked from one run each: a difference smaller than the spread between "
        "seeds is no result. Train each model over 3 seeds (Train → Seeds per model) to see "
        "whether it holds."
    )
st.dataframe(
    # a training-set score is no result to win on (its best was marked like a test score)
    figures.metrics_table_style(
        shown,
        better=metric_names.ranked,
        values=unranked,
    ),
    hide_index=True,
    width="stretch",
    placeholder="-",
    column_config=figures.metric_columns(
        shown.columns,
        {
            "run": st.column_config.TextColumn(
                # at most 360 px (the whole name on hover): a 600 px column pinned at the left
                # left one metric in view on a laptop (a browser pass)
                "run",
                pinned=True,
                width=min(360, 7 * int(shown["run"].str.len().max()) + 24),
            ),
            "seed": st.column_config.NumberColumn("seed", format="%d"),
            "baseline": st.column_config.CheckboxColumn(
                "baseline", help="a simple reference model or prediction, not a trained network"
            ),
        },
    ),
)
options = [
    c
    for c in ("val_loss", "train_loss", "val_accuracy", "val_f1_macro", "val_mse", "train_mse")
    if any(c in df for df in curves.values())
]
if options:
    metric = st.selectbox("Curve", options, format_func=metric_names.name)
    figures.show("overlaid_curves", lambda: figures.overlaid_curves(curves, metric, curve_models))
    without = [name for name, df in curves.items() if metric not in df]
    if without:
        st.caption(
            "No per-epoch curve for "
            + ", ".join(figures.esc(n) for n in without)
            + " (fitted in one step, or no epoch finished)."
        )
st.download_button(
    "Comparison table (CSV)",
    csvsafe.to_csv(table, index=False),
    file_name="comparison.csv",
    on_click="ignore",
)
