"""Train: choose a task, one or several models (baselines beside them), settings; submit.

Every default comes from the data (engine.defaults): the condition column and its control and
stimulated values, one target cell type, the cell-type column as label. The time each run will
take on the chosen device is shown before Submit (engine.estimate), and on a CPU the default
epochs are shortened to fit a few minutes. The choices survive leaving the page and a refresh
(kept in forms.json, as Preprocess keeps its form).
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from typing import Any

import streamlit as st

from engine import datasets, defaults, estimate, jobs, models, perturb, settings
from engine import split as split_mod
from engine.launchers import slurm_available
from engine.preflight import preflight  # torch-free: the app process never loads torch
from engine.spec import RunSpec
from ui.figures import esc
from ui.state import (
    address,
    dataset_picker,
    ensure_app_navigation,
    fragment,
    from_address,
    keep,
    kept,
    load_full,
    restore_form,
    save_form,
    show_error,
    to_address,
)

ensure_app_navigation()
ss = st.session_state


def remember(key: str, default: Any, options: list | None = None, many: bool = False) -> str:
    """The widget key for ``key``, seeded from this session's last choice (Streamlit forgets a
    widget's value when its page is left); ``options`` drops a stale choice."""
    wkey, saved = f"w:{key}", ss.get(f"keep:{key}", default)
    if options is not None:
        if many:
            saved = [v for v in (saved or []) if v in options]
        elif saved not in options:
            saved = default if default in options else (options[0] if options else None)
    current = ss.get(wkey, saved)
    if options is not None and (
        (many and any(v not in options for v in current or []))
        or (not many and current not in options)
    ):
        current = saved
    ss[wkey] = current
    return wkey


def param_key(model: str, name: str) -> str:
    """The widget key of a model parameter (read back by ``needs`` before the widget is drawn)."""
    return f"p-{model}-{name}"


def current(wkey: str) -> Any:
    """A widget's value before the widget is drawn on this run: its state, or the value kept."""
    return ss.get(wkey, ss.get(f"keep:{wkey}"))


# the Training box's number widgets: (type, min, max); a restored value outside them would break
# the widget, and the widgets are drawn with these bounds
NUMBERS = {
    "epochs": (int, 1, 10_000),
    "batch": (int, 2, 65_536),
    "lr": (float, 1e-6, 1.0),
    "seed": (int, 0, 2**31 - 1),
}
SEED_COUNTS = [1, 3, 5]
# widgets whose value must be one of the options they are drawn with: ``remember`` drops any
# other, so any plain value may be restored ("task" is not: the address carries the tab's own)
CHOSEN = {"label", "label2", "cond", "ctrl", "stim", "ct", "target", "split", "layer", "device"}
CHOSEN |= {"launcher"}


def form_value(wkey: str, value: Any) -> Any | None:
    """The value of the Train widget ``wkey`` to give back after a refresh (a browser pass: 3
    seeds, 40 epochs and a VAE's likelihood came back as the defaults), None if ``value`` is not
    one that widget can take: ``forms.json`` is a file anyone can edit."""
    head = wkey.split(":")[0]
    scalar = isinstance(value, str | int | float) and not isinstance(value, bool)
    if head == "models":
        return value if isinstance(value, list) else None
    if head in CHOSEN:
        return value if scalar else None
    if head in NUMBERS:
        kind, low, high = NUMBERS[head]
        if kind is float and type(value) is int:
            value = float(value)
        return value if type(value) is kind and low <= value <= high else None
    if head == "n_seeds":
        return value if type(value) is int and value in SEED_COUNTS else None
    info, key = next(
        (
            (m, wkey[len(param_key(m.name, "")) :])
            for m in models.REGISTRY.values()
            if wkey.startswith(param_key(m.name, ""))
        ),
        (None, ""),
    )
    p = info.params.get(key) if info else None
    if p is None:
        return None
    if p.choices:
        return value if value in p.choices and type(value) is type(p.default) else None
    kind = type(p.default) if isinstance(p.default, bool | int | float) else str
    if kind is float and type(value) is int:
        value = float(value)
    return value if type(value) is kind else None


def needs(model: str) -> str:
    """What ``model`` reads with the parameters picked below on the page's last run (a VAE
    with a Gaussian likelihood reads any values, not only counts)."""
    info = models.get(model)
    likelihood = current(param_key(model, "likelihood"))
    return info.needs_for({"likelihood": likelihood} if likelihood else {})


st.title("Train")
restore_form("train", form_value)  # a refresh keeps the form as it was left (the task: its URL)
# the annotations alone (X is None) for the form; the matrices are read only to check a submit
name, adata, d = dataset_picker("Dataset to train on", full=False)
if adata is None:
    st.stop()

tasks = list(models.TASKS)
asked = st.query_params.get("task")  # the task picked before a browser refresh
from_address("task", "w:task", tasks, tasks[0])  # Back to another task shows that task
task = keep(
    "task",
    st.radio(
        "Task",
        tasks,
        format_func=models.TASKS.get,
        horizontal=True,
        key=remember("task", asked if asked in tasks else tasks[0], tasks),
    ),
)
to_address("task", task, tasks[0])
choices = [m.name for m in models.for_task(task)]
picked = keep(
    f"models:{task}",
    st.multiselect(
        "Models (compared on the same split)",
        choices,
        format_func=lambda n: models.get(n).title,
        key=remember(f"models:{task}", choices, choices, many=True),
    ),
)
for n in picked:
    st.caption(f"**{n}**: {models.get(n).doc}")

labels = defaults.label_columns(d)  # never a continuous measurement (genes per cell, ...)
spec_kw: dict = {}
form_block: str | None = None  # what the form already knows Submit would be refused for
refusal: str | None = None  # the input matrix the picked models would be refused on
n_train = int(0.8 * d["n_obs"])
n_models = 1
n_classes = 2
with st.container(border=True):
    st.markdown("**What the task needs**")
    if task == "classify":
        if not labels:
            st.error(
                "This dataset has no label column (categorical, 2-200 values): classifiers "
                "need annotated cells. Preprocess can add Leiden clusters as labels "
                "(obs['leiden']); the autoencoder and the VAE train without labels (tasks "
                "Reconstruct and Embed)."
            )
            st.page_link(
                "pages/preprocess.py",
                label="Add clusters on Preprocess",
                icon=":material/hub:",
                query_params=address(),
            )
        label = st.selectbox(
            "Label column",
            labels,
            disabled=not labels,
            key=remember(f"label:{name.key}", defaults.label_column(d), labels),
            help="defaults to the column that looks like cell types",
        )
        spec_kw["label_key"] = keep(f"label:{name.key}", label)
        n_classes = len(d["labels"].get(label) or {}) or 2
    elif task in ("reconstruct", "embed"):
        options = ["(none)", *labels]
        lab = st.selectbox(
            "Label column (stratifies the split, scores the latent space)",
            options,
            key=remember(f"label2:{name.key}", defaults.cell_type_column(d) or "(none)", options),
        )
        spec_kw["label_key"] = None if keep(f"label2:{name.key}", lab) == "(none)" else lab
        if (
            task == "reconstruct"
            and labels
            and st.checkbox(
                "Train on a subset of cells only (e.g. healthy samples); score all cells"
            )
        ):
            cond0 = defaults.condition_column(d)
            key = st.selectbox(
                "Column", labels, index=labels.index(cond0) if cond0 in labels else 0
            )
            values = list(d["labels"][key])
            ctrl0 = defaults.control_value(d["labels"][key])
            vals = st.multiselect("Train on", values, default=[ctrl0] if ctrl0 else [])
            if vals:
                spec_kw["train_on"] = {key: vals}  # structured: a value may contain commas
                n_train = int(0.8 * sum(d["labels"][key][v] for v in vals))
    elif task == "perturb":
        if len(labels) < 2:
            st.error("scGen needs a condition column and a cell-type column in obs.")
            st.stop()
        c = st.columns(2)
        cond0 = defaults.condition_column(d) or ("condition" if "condition" in labels else None)
        cond = keep(
            f"cond:{name.key}",
            c[0].selectbox(
                "Condition column", labels, key=remember(f"cond:{name.key}", cond0, labels)
            ),
        )
        counts = d["labels"][cond]
        values = list(counts)
        ctrl0 = defaults.control_value(counts)
        ctrl = keep(
            f"ctrl:{name.key}:{cond}",
            c[0].selectbox(
                "Control value", values, key=remember(f"ctrl:{name.key}:{cond}", ctrl0, values)
            ),
        )
        stim0 = defaults.stimulated_value(counts, ctrl)
        stim = keep(
            f"stim:{name.key}:{cond}:{ctrl}",
            c[0].selectbox(
                "Stimulated value",
                values,
                key=remember(f"stim:{name.key}:{cond}:{ctrl}", stim0, values),
            ),
        )
        ct_options = [col for col in labels if col != cond]
        ct0 = defaults.cell_type_column({**d, "labels": {k: d["labels"][k] for k in ct_options}})
        ct_key = keep(
            f"ct:{name.key}:{cond}",
            c[1].selectbox(
                "Cell-type column",
                ct_options,
                key=remember(f"ct:{name.key}:{cond}", ct0 or ct_options[0], ct_options),
            ),
        )
        both = defaults.perturb_targets(adata.obs, cond, ct_key, ctrl, stim)
        others = [t for t in d["labels"][ct_key] if t not in both]
        target_options = [*both, *others, "all"]  # leave-one-out: an explicit choice, last
        tkey = f"target:{name.key}:{cond}:{ct_key}:{ctrl}:{stim}"
        target0 = defaults.perturb_target(adata.obs, cond, ct_key, ctrl, stim)
        target = keep(
            tkey,
            c[1].selectbox(
                "Cell type to predict",
                target_options,
                key=remember(tkey, target0 or target_options[0], target_options),
                format_func=lambda v: (
                    f"every cell type, leave-one-out ({len(both)} models, one per type)"
                    if v == "all"
                    else v
                ),
                help="its stimulated cells are held out and predicted from its control cells; "
                "defaults to the largest cell type with both conditions",
            ),
        )
        if target == "all" and others:
            # said, not skipped in silence: "5 models" on 6 types (a browser pass)
            skipped = ", ".join(f"'{t}'" for t in others[:8]) + (", ..." if len(others) > 8 else "")
            st.caption(
                esc(
                    f"Leave-one-out leaves out {skipped}: fewer than {defaults.MIN_CELLS} "
                    f"'{ctrl}' or {defaults.MIN_CELLS} '{stim}' cells to hold out and score. "
                    "Each can still be predicted alone, above."
                )
            )
        spec_kw.update(
            condition_key=cond, ctrl=ctrl, stim=stim, cell_type_key=ct_key, predict=target
        )
        # the vector's settings below, as the page's last run left them (drawn after this)
        vector = {k: current(param_key("scgen", k)) for k in ("delta", "delta_cell_types")}
        # which (cell type, condition) pairs exist is all it needs: the distinct pairs, not a
        # string per cell on every rerun of the form
        pairs = adata.obs[[cond, ct_key]].drop_duplicates().astype(str)
        problem = perturb.vector_problem(
            pairs[cond].to_numpy(),
            pairs[ct_key].to_numpy(),
            ctrl,
            stim,
            both if target == "all" else [target],
            ct_key,
            perturb.delta_types(vector),
            str(vector["delta"] or "paired"),
        )
        if ctrl == stim:
            form_block = "Control and stimulated must differ."
        elif target == "all" and not both:
            form_block = perturb.no_targets(ct_key, ctrl, stim)
        elif problem:
            form_block = problem
        if form_block:
            st.warning(esc(form_block))
        else:
            st.caption(
                f"Trains on {esc(ctrl)} and {esc(stim)} cells and predicts how "
                + ("each cell type" if target == "all" else f"**{esc(target)}**")
                + f" responds: {esc(ctrl)} → {esc(stim)}."
            )
        in_design = counts.get(ctrl, 0) + counts.get(stim, 0)
        if target == "all":
            n_models = max(len(both), 1)
            n_train = int(0.9 * in_design * (1 - 1 / (2 * n_models)))
        else:
            held = int(((adata.obs[cond] == stim) & (adata.obs[ct_key] == target)).sum())
            n_train = int(0.9 * (in_design - held))
    if task != "perturb":
        # the split: cells at random (every donor in training and test), or whole groups held
        # out (a browser pass: 0.996 accuracy on 5 donors, each in training and test, unsaid)
        groups = [g for g in defaults.group_columns(d) if g != spec_kw.get("label_key")]
        donor = defaults.donor_column(d)
        options = ["(cells at random)", *groups]
        split_by = st.selectbox(
            "Test on",
            options,
            key=remember(f"split:{name.key}", "(cells at random)", options),
            format_func=lambda o: o if o.startswith("(") else f"held-out groups of {o}",
            help="held-out groups: whole donors or samples go to test (and validation), so "
            "the score says how the model does on a donor it never saw",
        )
        split_by = keep(f"split:{name.key}", split_by)
        label_key = spec_kw.get("label_key") if task == "classify" else None

        def alone(column: str) -> list[str]:
            """Classes of the label found in one group of ``column`` only."""
            if not label_key or column not in adata.obs or label_key not in adata.obs:
                return []
            return split_mod.single_group_classes(adata.obs[column], adata.obs[label_key])

        if split_by.startswith("("):
            if (
                donor
                and donor != spec_kw.get("label_key")
                and not spec_kw.get("train_on")
                and not alone(donor)  # holding it out would hold classes out of training
            ):
                st.caption(
                    f"Test cells drawn at random: the same {esc(donor)} groups are in training "
                    f"and in test, so the test score says how the model does on a {esc(donor)} "
                    f"it has seen. Pick held-out groups of {esc(donor)} to score it on new ones."
                )
        else:
            spec_kw["split_by"] = split_by
            if lone := alone(split_by):
                st.warning(
                    f"{len(lone)} class(es) of {esc(label_key)} are each in one {esc(split_by)} "
                    f"only ({esc(', '.join(lone[:3]))}{', ...' if len(lone) > 3 else ''}): whenever that "
                    "one is tested, the class "
                    "has no training cell, whatever the seed. Test on cells at random, or hold "
                    "out another column."
                )
            n_groups = len(d["labels"].get(split_by) or {})
            counts = d["labels"].get(split_by) or {}
            # every group counted, and no training subset (its own count stands)
            if n_groups >= 3 and sum(counts.values()) == d["n_obs"] and not spec_kw.get("train_on"):
                seed0 = current("seed")
                n_train = split_mod.group_part_sizes(counts, int(seed0 or 0))["train"]
            st.caption(
                f"{n_groups} groups of {esc(split_by)}: whole groups go to test and to "
                "validation (a tenth of the groups each, at least one), the seed picks which; "
                "the share of cells in each follows the groups' sizes."
            )
    layers = ["X", *(d.get("layers") or {})]
    # a count model (the VAE) left on X reads layers['counts'] when there is one (the engine's
    # setup.choose_matrix): the box says so instead of showing X for it (a browser pass)
    count_models = [n for n in picked if needs(n) == "counts"]
    reads_counts = bool(count_models) and "counts" in layers
    layer0 = "counts" if reads_counts and len(count_models) == len(picked) else None
    # a file that holds counts in X and their log-normalised values in a layer (Kang's
    # 'logcounts'): models that do not read counts start on that layer (a browser pass: scGen
    # was sent to Preprocess, then refused on X, with the layer it needed in the box)
    logs = [str(n) for n, k in (d.get("layers") or {}).items() if k == "log-normalised"]
    if d.get("x_kind") == "counts" and logs and picked and not count_models:
        layer0 = logs[0]
    layer = st.selectbox(
        "Input matrix",
        layers,
        key=remember(f"layer:{name.key}:{layer0}", layer0 or defaults.input_matrix(d), layers),
        help="X, or a layer such as counts; the VAE reads layers['counts'] when present",
    )
    spec_kw["layer"] = None if keep(f"layer:{name.key}:{layer0}", layer) == "X" else layer
    if reads_counts and layer == "X":
        others = "; the other models read X" if len(count_models) < len(picked) else ""
        st.caption(
            f"{', '.join(count_models)} read{'s' * (len(count_models) == 1)} layers['counts'] "
            f"(raw counts) instead of X{others}."
        )
    kind = d.get("x_kind") if layer == "X" else (d.get("layers") or {}).get(layer)
    where = "X" if layer == "X" else f"layers['{esc(layer)}']"
    # what each picked model will meet, said on the form, not only after Submit (a browser pass:
    # a classifier on raw counts was submitted without a word)
    if kind == "counts":
        # a model that log-normalises counts itself (the PCA baseline) is not warned
        on_counts = [n for n in picked if needs(n) == "any" and not models.get(n).lognorm_counts]
        refused = [n for n in picked if needs(n) == "lognorm"]
        use_log = (
            f"pick layers['{esc(logs[0])}'] (log-normalised) as the input matrix above, or "
            if logs
            else ""
        )
        if on_counts:
            st.warning(
                f"{where} holds raw counts: {', '.join(on_counts)} would train on them as they "
                f"are, where cells with more reads weigh more: {use_log}normalise first on "
                "Preprocess (logCPM, then highly variable genes and scaling)."
            )
        if refused:
            refusal = (
                f"{', '.join(refused)} read{'s' * (len(refused) == 1)} log-normalised "
                f"expression and will be refused on the raw counts in {where}: {use_log}run "
                "logCPM on Preprocess first."
            )
            st.warning(refusal)
    if count_models and not (reads_counts and layer == "X") and kind != "counts":
        refusal = (
            f"{', '.join(count_models)} need{'s' * (len(count_models) == 1)} raw counts, and "
            f"{where} holds {kind or 'other values'}"
            + (" with no layers['counts'] beside it" if "counts" not in layers else "")
            + ": it will be refused. Pick a layer of counts, or load the raw counts"
            + (
                "; or, for the VAE, set its likelihood to gaussian (below), which models "
                "normalised or scaled values as they are"
                if any("likelihood" in models.get(n).params for n in count_models)
                else ""
            )
            + "."
        )
        st.warning(refusal)
    if kind == "raw intensities":
        st.warning(
            f"{'X' if layer == 'X' else esc(layer)} holds raw cytometry intensities: models "
            "train poorly on them. Pick a transformed layer, or preprocess first (arcsinh, then "
            "MinMax, as the Preprocess page suggests)."
        )


@st.cache_resource(ttl=600, show_spinner=False)
def gpu_present() -> bool:
    return estimate.device("cuda").kind == "cuda"


with st.container(border=True):
    st.markdown("**Training**")
    c = st.columns(5)
    epochs = c[0].number_input(
        "Max epochs",
        *NUMBERS["epochs"][1:],
        None,
        placeholder="automatic",
        help="leave empty for each model's default: its published one, shortened on a CPU to "
        "fit a few minutes; early stopping may end sooner",
        key=kept(f"epochs:{task}"),  # one task's cap is not another's (1 for an MLP test)
    )
    keep(f"epochs:{task}", epochs)
    blank = "leave empty for each model's own default" + (
        " ("
        + ", ".join(
            f"{m}: batch {models.get(m).batch_size}, lr {models.get(m).lr:g}" for m in picked
        )
        + ")"
        if picked
        else ""
    )
    batch = c[1].number_input(
        "Batch size",
        *NUMBERS["batch"][1:],
        None,
        placeholder="model default",
        help=blank,
        key=kept(f"batch:{task}"),
    )
    keep(f"batch:{task}", batch)
    lr = c[2].number_input(
        "Learning rate",
        *NUMBERS["lr"][1:],
        None,
        format="%.5f",
        placeholder="model default",
        help=blank,
        key=kept(f"lr:{task}"),
    )
    keep(f"lr:{task}", lr)
    seed = c[3].number_input(
        "Seed",
        *NUMBERS["seed"][1:],
        0,
        help="one seed drives the split, torch and numpy",
        key=kept("seed"),
    )
    keep("seed", seed)
    n_seeds = st.radio(
        "Seeds per model",
        SEED_COUNTS,
        horizontal=True,
        # a label must not change with another widget: the browser sends back the label it
        # shows, and one that no longer matches resets the choice (to 1 run, silently)
        format_func=lambda k: "1 run" if k == 1 else f"{k} runs",
        help="repeat each model over several seeds (each a new split and initialisation): "
        "Compare then shows every metric as mean ± sd and says whether two models differ by "
        "more than the seed-to-seed spread",
        # one choice per task, as Max epochs: 3 seeds picked for a classifier came back on
        # the scGen form, one click from three scGen runs (a browser pass)
        key=kept(f"n_seeds:{task}"),
    )
    keep(f"n_seeds:{task}", n_seeds)
    if n_seeds > 1:
        held = ""
        names = list(d["labels"].get(spec_kw.get("split_by") or "") or {})
        if len(names) >= 3:
            tested = split_mod.groups_tested(names, list(range(seed, seed + n_seeds)))
            n_sets = len(set(tested.values()))
            held = (
                f" Each tests other groups of {esc(spec_kw['split_by'])}."
                if n_sets == n_seeds
                else f" Only {n_sets} different sets of test groups of "
                f"{esc(spec_kw['split_by'])} among them ({len(names)} groups): seeds that "
                "repeat one are scored on the same cells, and Compare says so."
            )
        st.caption(f"Seeds {seed} to {seed + n_seeds - 1}, one run each per model.{held}")
    options = ["auto", "cpu"] + (["cuda"] if gpu_present() else [])
    device = c[4].selectbox(
        "Device",
        options,
        key=remember("device", "auto", options),
        help="auto uses the GPU when there is one",
    )
    keep("device", device)
    launcher = "local"
    if slurm_available():
        where = ["local", "slurm"]
        launcher = st.radio(
            "Where runs train",
            where,
            key=remember("launcher", settings.get().launcher, where),
            format_func={"local": "this machine", "slurm": "the SLURM cluster"}.get,
            horizontal=True,
            help="SLURM: the run is submitted as a job (SCWB_SLURM_* settings); see docs/CLUSTER.md",
        )
        keep("launcher", launcher)
    estimates_box = st.container()

params: dict[str, dict] = {}
for n in picked:
    info = models.get(n)
    if not info.params:
        continue
    with st.expander(f"{info.title}: hyperparameters"):
        params[n] = {}
        for key, p in info.params.items():
            label, wkey = key.replace("_", " "), kept(param_key(n, key))
            if p.choices:
                params[n][key] = st.selectbox(
                    label, p.choices, index=p.choices.index(p.default), help=p.help, key=wkey
                )
            elif isinstance(p.default, bool):
                params[n][key] = st.checkbox(label, p.default, help=p.help, key=wkey)
            elif isinstance(p.default, int):
                params[n][key] = st.number_input(
                    label, value=p.default, help=p.help, key=wkey, step=1
                )
            elif isinstance(p.default, float):
                params[n][key] = st.number_input(
                    label, value=p.default, help=p.help, key=wkey, format="%.6g"
                )
            elif key == "batch_key":
                # donor, sample and batch columns first; none by default (a sample column that
                # also splits the conditions would have the model remove their difference)
                cols = list(d["labels"])
                ordered = [c for c in cols if defaults.is_group_name(c)]
                ordered += [c for c in cols if c not in ordered]
                v = st.selectbox(
                    label,
                    ["", *ordered],
                    format_func=lambda c: c or "(none)",
                    help=p.help + ": what differs between its values is treated as technical "
                    "and removed from the latent space",
                    key=wkey,
                )
                params[n][key] = v
                if v and v == spec_kw.get("split_by"):
                    st.warning(
                        f"{esc(v)} is also what is held out for testing: the test groups' "
                        "batches are never seen in training, so the model cannot remove "
                        "them there. Hold out by another column, or pick no batch key to "
                        "see how far a new batch moves the latent space."
                    )
                if v and v in (defaults.cell_type_column(d), spec_kw.get("label_key")):
                    st.warning(
                        f"{esc(v)} looks like cell types: as the batch, the differences between "
                        "them would be removed from the latent space. Pick a donor, sample or "
                        "batch column, or none."
                    )
            else:
                params[n][key] = st.text_input(label, p.default, help=p.help, key=wkey)
            keep(wkey, params[n][key])
saved = {k[len("keep:") :]: v for k, v in ss.to_dict().items() if str(k).startswith("keep:")}
save_form("train", {k: v for k, v in saved.items() if form_value(k, v) is not None})


def estimates() -> dict[str, estimate.Estimate]:
    out = {}
    for n in picked:
        try:
            out[n] = estimate.estimate(
                n,
                d["n_vars"],
                max(n_train, 1),
                params=params.get(n),
                batch_size=None if batch is None else int(batch),
                epochs=None if epochs is None else int(epochs),
                requested=device,
                n_classes=n_classes,
                n_models=n_models,
            )
        except Exception:  # an estimate is advice: a bad parameter is reported at Submit
            continue
    return out


def draw_estimates(measuring: bool) -> None:
    ests = estimates()
    if launcher != "local":  # measured on this machine: a cluster node's time is its own
        st.caption(
            "Estimates below are for this machine; on the cluster the time depends on the node "
            "the scheduler gives (and on the queue before it starts)."
        )
    for n, e in ests.items():
        st.markdown(f"**{n}** · {e.epochs_text()} · {e.text()}")
        warm = (params.get(n) or {}).get("kl_warmup")
        if isinstance(warm, int | float) and e.epochs and warm > e.epochs:
            st.warning(
                f"{n}: its KL warm-up ({warm:g} epochs) is longer than its {e.epochs} epochs: "
                f"the KL term's weight would reach only {e.epochs / warm:.2f} of 1, so it would "
                "never train on the VAE's whole objective. Give it more epochs or a shorter "
                "kl_warmup."
            )
    nets = [e for e in ests.values() if e.kind == "torch" and e.seconds]
    if (len(ests) > 1 or n_seeds > 1) and nets and launcher == "local":
        # networks take a slot each (one per GPU; on a CPU they share its cores, one at a time);
        # the baselines run beside them. Unequal runs on several slots: never below the longest
        on_gpu = all(e.device.kind == "cuda" for e in nets)
        at_once = max(1, min(jobs.n_slots() if on_gpu else 1, len(nets) * n_seeds))
        total = sum(e.seconds for e in nets) * n_seeds
        total = max(max(e.seconds for e in nets), total / at_once)
        order = "one after another" if at_once == 1 else f"{at_once} at a time"
        if not on_gpu and jobs.n_slots() > 1:  # SCWB_SLOTS on a CPU: together, sharing cores
            order = f"{min(jobs.n_slots(), len(nets) * n_seeds)} at a time, sharing the cores"
        beside = any(e.kind == "sklearn" for e in ests.values())
        st.caption(
            f"Together about {estimate.fmt_duration(total)}: the networks train {order}"
            + ("; the scikit-learn baselines run beside them" if beside else "")
            + ". Times are for an idle machine: other work on it slows every run."
        )
    if measuring and not any(estimate.benchmark_pending(k) for k in ("cpu", "cuda")):
        st.rerun()  # the benchmark has finished: redraw the form with the epochs it allows


with estimates_box:
    measuring = any(e.pending for e in estimates().values())
    fragment(run_every=2 if measuring else None)(draw_estimates)(measuring)

RESUBMIT_S = 30  # seconds within which the same settings are not submitted again


def _signature(specs: list[RunSpec]) -> str:
    """What a submission trains, without its group (new on every click)."""
    rows = [{k: v for k, v in spec.to_dict().items() if k != "group"} for spec in specs]
    return hashlib.sha1(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()


reason = None if picked else "pick at least one model"
if task == "classify" and not labels:
    reason = "this dataset has no label column to classify by"
if form_block and task == "perturb":  # said above the button; clicking it would only repeat it
    reason = esc(form_block)
if refusal:  # said above the button, with what to pick instead
    reason = refusal
if st.button("Submit", type="primary", disabled=reason is not None, help=reason):
    group = secrets.token_hex(3) if n_seeds == 1 else f"seeds-{secrets.token_hex(3)}"
    submitted = []
    try:
        chosen = estimates()
        specs = [
            RunSpec(
                model=n,
                data=str(datasets.path(name)),
                dataset_name=datasets.label(name),
                dataset_key=str(name),
                launcher=launcher,
                data_fingerprint=datasets.fingerprint(name),
                epochs=(
                    None
                    if models.get(n).kind == "sklearn"
                    else int(epochs)
                    if epochs is not None
                    else chosen[n].epochs
                    if n in chosen
                    else None
                ),
                epochs_set_by=(
                    None
                    if models.get(n).kind == "sklearn"
                    else "user"
                    if epochs is not None
                    else "budget"
                    if n in chosen and chosen[n].shortened
                    else None
                ),
                batch_size=None if batch is None else int(batch),
                lr=None if lr is None else float(lr),
                seed=int(seed) + k,
                device=device,
                params=params.get(n, {}),
                group=group,
                **spec_kw,
            )
            for k in range(int(n_seeds))
            for n in picked
        ]
        # a second click on Submit (a double click, or a click while the page reruns) sends
        # the same settings again: the same seeds would train the same runs twice
        same = _signature(specs)
        last = st.session_state.get("train_last_submit")
        if last and last[0] == same and time.time() - last[1] < RESUBMIT_S:
            st.info(
                f"Already submitted {time.time() - last[1]:.0f} s ago with these settings: "
                + ", ".join(last[2])
                + f". Not submitted twice; change a setting (the seed, for instance) or submit "
                f"again after {RESUBMIT_S} s to train the same runs again."
            )
        else:
            jobs.check_room(len(specs))  # all or none: never half a group of seeds
            with st.spinner("Checking the data..."):
                full = load_full(name)
                for spec in specs:
                    preflight(spec, full)  # refuse at once what a worker would refuse later
            for spec in specs:
                submitted.append(jobs.submit(spec))
            # recorded before the next st call, where a queued second click interrupts the run
            st.session_state["train_last_submit"] = (
                same,
                time.time(),
                [p.name for p in submitted],
            )
            st.success(
                f"Submitted {len(submitted)} run(s): "
                + ", ".join(p.name for p in submitted)
                + ". They train in the background."
            )
        st.page_link(
            "pages/runs.py",
            label="Watch them on Runs",
            icon=":material/monitoring:",
            query_params=address(),
        )
    except Exception as exc:
        show_error(exc)
