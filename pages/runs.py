"""Runs: every run with its state and progress; live loss curves; cancel, delete, errors."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import streamlit as st

from engine import jobs, runs
from ui import figures
from ui.sidebar import fmt_s
from ui.state import ensure_app_navigation, show_error

ensure_app_navigation()
st.title("Runs")


def table(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "run": r["id"],
                "state": r["state"],
                "model": r["model"],
                "dataset": r["dataset"],
                "progress": min(1.0, float(r["epoch"] or 0) / max(float(r["max_epochs"] or 1), 1)),
                "epoch": f"{r['epoch'] or 0}/{r['max_epochs'] or '?'}",
                "cells/s": f"{r['cells_per_s']:,.0f}" if r["cells_per_s"] else "-",
                "elapsed": fmt_s(r["elapsed_s"]),
                "ETA": fmt_s(r["eta_s"]) if r["state"] == "running" else "-",
                "device": r["device"] or "-",
            }
            for r in rows
        ]
    )


@st.fragment(run_every=2)
def live() -> None:
    rows = jobs.list_jobs()
    if not rows:
        st.info("No run yet: submit one on **Train**.")
        return
    st.dataframe(
        table(rows),
        hide_index=True,
        width="stretch",
        column_config={
            "progress": st.column_config.ProgressColumn(
                "progress", min_value=0, max_value=1, format="percent"
            )
        },
    )
    ids = [r["id"] for r in rows]
    chosen = st.session_state.get("run_selected")
    chosen = chosen if chosen in ids else ids[0]
    r = next(x for x in rows if x["id"] == chosen)
    st.subheader(f"{r['model']} on {r['dataset']} · {r['state']}")
    metrics = runs.read_metrics_csv(Path(r["path"]))
    st.plotly_chart(
        figures.loss_curves(metrics, f"Loss per epoch · {r['id']}"),
        width="stretch",
        key="live_curve",
    )
    if r["state"] in ("failed", "interrupted"):
        st.error(r["error"] or "The run ended without a reason.")
        tail = runs.read_status(Path(r["path"])).get("log_tail")
        if tail:
            st.code(tail, language=None)


rows = jobs.list_jobs()
if rows:
    ids = [r["id"] for r in rows]
    running = [i for i, r in enumerate(rows) if r["state"] == "running"]
    queued = [i for i, r in enumerate(rows) if r["state"] == "queued"]
    st.selectbox(
        "Run",
        ids,
        index=(running or queued or [0])[0],
        key="run_selected",
        format_func=lambda i: next(
            f"{x['id']} · {x['model']} · {x['state']}" for x in rows if x["id"] == i
        ),
    )
live()
if rows:
    sel = st.session_state.get("run_selected") or rows[0]["id"]
    state = runs.read_status(jobs.resolve_run(sel)).get("state")
    c = st.columns(3)
    active = state in runs.ACTIVE
    if c[0].button(
        "Cancel run", disabled=not active, help=None if active else f"the run is {state}"
    ):
        try:
            jobs.cancel(sel)
            st.toast("Cancelling: the run stops at its next step and keeps its best weights.")
        except Exception as exc:
            show_error(exc)
    if c[1].button("Delete run", disabled=active, help="cancel it first" if active else None):
        try:
            jobs.delete(sel)
            st.session_state.pop("run_selected", None)
            st.rerun()
        except Exception as exc:
            show_error(exc)
    if state == "completed":
        c[2].page_link("pages/results.py", label="Open results", icon=":material/insights:")
