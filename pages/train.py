"""Train: choose a task, one or several models (baselines beside them), settings; submit."""

from __future__ import annotations

import secrets

import streamlit as st

from engine import datasets, jobs, models
from engine.spec import RunSpec
from engine.train import preflight
from ui.sidebar import device_info
from ui.state import dataset_picker, ensure_app_navigation, show_error

ensure_app_navigation()
st.title("Train")
name, adata, d = dataset_picker("Dataset to train on")
if adata is None:
    st.stop()

task = st.radio("Task", list(models.TASKS), format_func=models.TASKS.get, horizontal=True)
choices = models.for_task(task)
default = [m.name for m in choices]
picked = st.multiselect(
    "Models (compared on the same split)",
    [m.name for m in choices],
    default=default,
    format_func=lambda n: models.get(n).title,
)
for n in picked:
    st.caption(f"**{n}**: {models.get(n).doc}")

labels = list(d["labels"])
spec_kw: dict = {}
with st.container(border=True):
    st.markdown("**What the task needs**")
    if task == "classify":
        if not labels:
            st.error(
                "This dataset has no label column (categorical, 2-200 values): classifiers cannot be trained."
            )
        spec_kw["label_key"] = st.selectbox("Label column", labels, disabled=not labels)
    elif task in ("reconstruct", "embed"):
        lab = st.selectbox(
            "Label column (stratifies the split, scores the latent space)", ["(none)", *labels]
        )
        spec_kw["label_key"] = None if lab == "(none)" else lab
        if (
            task == "reconstruct"
            and labels
            and st.checkbox(
                "Train on a subset of cells only (e.g. healthy samples); score all cells"
            )
        ):
            key = st.selectbox("Column", labels, key="train_on_key")
            vals = st.multiselect("Train on", list(d["labels"][key]), key="train_on_vals")
            if vals:
                spec_kw["train_on"] = f"{key}={','.join(vals)}"
    elif task == "perturb":
        if len(labels) < 2:
            st.error("scGen needs a condition column and a cell-type column in obs.")
            st.stop()
        c = st.columns(2)
        cond = c[0].selectbox(
            "Condition column",
            labels,
            index=labels.index("condition") if "condition" in labels else 0,
        )
        values = list(d["labels"][cond])
        ctrl = c[0].selectbox("Control value", values, index=0)
        stim = c[0].selectbox("Stimulated value", values, index=1 if len(values) > 1 else 0)
        ct_options = [col for col in labels if col != cond]
        ct_key = c[1].selectbox("Cell-type column", ct_options)
        target = c[1].selectbox(
            "Cell type to predict",
            ["all", *d["labels"][ct_key]],
            format_func=lambda v: (
                "every cell type, one at a time (leave-one-out)" if v == "all" else v
            ),
        )
        spec_kw.update(
            condition_key=cond, ctrl=ctrl, stim=stim, cell_type_key=ct_key, predict=target
        )
        if ctrl == stim:
            st.warning("Control and stimulated must differ.")
    layers = ["X", *adata.layers]
    layer = st.selectbox(
        "Input matrix",
        layers,
        help="X, or a layer such as counts; the VAE reads layers['counts'] when present",
    )
    spec_kw["layer"] = None if layer == "X" else layer

with st.container(border=True):
    st.markdown("**Training**")
    c = st.columns(5)
    defaults = ", ".join(
        f"{m}: {models.get(m).epochs} epochs, batch {models.get(m).batch_size}, lr {models.get(m).lr:g}"
        for m in picked
    )
    blank = "leave empty for each model's own default" + (f" ({defaults})" if defaults else "")
    epochs = c[0].number_input(
        "Max epochs",
        1,
        10_000,
        None,
        placeholder="model default",
        help=f"early stopping may end sooner; {blank}",
    )
    batch = c[1].number_input(
        "Batch size", 2, 65_536, None, placeholder="model default", help=blank
    )
    lr = c[2].number_input(
        "Learning rate", 1e-6, 1.0, None, format="%.5f", placeholder="model default", help=blank
    )
    seed = c[3].number_input(
        "Seed", 0, 2**31 - 1, 0, help="one seed drives the split, torch and numpy"
    )
    dev = device_info()
    options = ["auto", "cpu"] + (["cuda"] if dev["kind"] == "cuda" else [])
    device = c[4].selectbox("Device", options, help=f"auto uses {dev['name']}")

params: dict[str, dict] = {}
for n in picked:
    info = models.get(n)
    if not info.params:
        continue
    with st.expander(f"{info.title}: hyperparameters"):
        params[n] = {}
        for key, p in info.params.items():
            label, wkey = key.replace("_", " "), f"p-{n}-{key}"
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
                v = st.selectbox(label, ["", *labels], help=p.help, key=wkey)
                params[n][key] = v
            else:
                params[n][key] = st.text_input(label, p.default, help=p.help, key=wkey)

reason = None if picked else "pick at least one model"
if st.button("Submit", type="primary", disabled=reason is not None, help=reason):
    group = secrets.token_hex(3)
    submitted = []
    try:
        specs = [
            RunSpec(
                model=n,
                data=str(datasets.path(name)),
                dataset_name=name,
                epochs=None if epochs is None or models.get(n).kind == "sklearn" else int(epochs),
                batch_size=None if batch is None else int(batch),
                lr=None if lr is None else float(lr),
                seed=int(seed),
                device=device,
                params=params.get(n, {}),
                group=group,
                **spec_kw,
            )
            for n in picked
        ]
        for spec in specs:
            preflight(spec, adata)  # refuse at once what a worker would refuse later
        for spec in specs:
            submitted.append(jobs.submit(spec))
        st.success(
            f"Submitted {len(submitted)} run(s): "
            + ", ".join(p.name for p in submitted)
            + ". They train in the background."
        )
        st.page_link("pages/runs.py", label="Watch them on Runs", icon=":material/monitoring:")
    except Exception as exc:
        show_error(exc)
