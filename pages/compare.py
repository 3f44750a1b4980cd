"""Compare: runs of one task side by side, baselines included, best value per column marked."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from engine import evaluate, jobs, runs
from engine import models as registry
from ui import figures
from ui.state import ensure_app_navigation

ensure_app_navigation()
st.title("Compare")
done = [
    r
    for r in jobs.list_jobs()
    if r["state"] in ("completed", "cancelled") and (Path(r["path"]) / "metrics.json").exists()
]
tasks = sorted({r["task"] for r in done if r["task"] in registry.TASKS})
if not done:
    st.info("No finished run to compare yet.")
    st.stop()
task = st.radio("Task", tasks, format_func=registry.TASKS.get, horizontal=True)
of_task = [r for r in done if r["task"] == task]
labels = {r["id"]: f"{r['model']} · {r['dataset']} · {r['id']}" for r in of_task}
newest_group = of_task[0]["group"]
default = [r["id"] for r in of_task if newest_group and r["group"] == newest_group] or [
    r["id"] for r in of_task[:2]
]
chosen = st.multiselect("Runs", list(labels), default=default, format_func=labels.get)
if not chosen:
    st.stop()

rows, curves, splits = [], {}, []
for rid in chosen:
    d = Path(next(r["path"] for r in of_task if r["id"] == rid))
    spec, m = runs.read_json(d / "run.json", {}), runs.read_json(d / "metrics.json", {})
    rows.append(
        {
            "run": labels[rid],
            "baseline": registry.get(spec["model"]).baseline,
            **{
                k: v
                for k, v in m.items()
                if isinstance(v, (int, float)) and not isinstance(v, bool)
            },
        }
    )
    curves[labels[rid]] = runs.read_metrics_csv(d)
    splits.append((spec.get("data_fingerprint"), spec.get("seed"), spec.get("label_key")))
if len(set(splits)) > 1:
    st.warning(
        "These runs did not all use the same data, seed and label column, so their test cells differ: compare with care."
    )
else:
    st.caption("Same data, seed and label column: every run was scored on the same test cells.")
table = pd.DataFrame(rows)
st.dataframe(
    figures.metrics_table_style(table, evaluate.higher_is_better), hide_index=True, width="stretch"
)
metric = st.selectbox(
    "Curve",
    [
        c
        for c in ("val_loss", "train_loss", "val_accuracy", "val_mse")
        if any(c in df for df in curves.values())
    ],
)
st.plotly_chart(figures.overlaid_curves(curves, metric), width="stretch")
st.download_button(
    "Comparison table (CSV)",
    table.to_csv(index=False),
    file_name="comparison.csv",
    on_click="ignore",
)
