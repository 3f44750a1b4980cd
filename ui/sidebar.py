"""The sidebar on every page: the compute device and the runs in progress."""

from __future__ import annotations

import os

import streamlit as st

from engine import jobs


@st.cache_resource(show_spinner=False)
def device_info() -> dict:
    """The compute device, found without importing torch into the app process."""
    from engine.estimate import device

    d = device("auto")
    return {"kind": d.kind, "name": d.name}


@st.cache_resource(show_spinner=False)
def resume_queue(home: str) -> bool:
    """Once per app process and workspace: runs left queued by a restart start again."""
    try:
        return jobs.resume_queue()
    except OSError:  # a full or read-only workspace: the queue waits for the next submit
        return False


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    return f"{seconds // 60}m {seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


@st.fragment(run_every=3)
def active_runs() -> None:
    active = [r for r in jobs.list_jobs() if r["state"] in ("queued", "running")]
    if not active:
        st.caption("No run in progress.")
        return
    for r in active[:6]:
        frac = min(1.0, float(r["epoch"] or 0) / max(float(r["max_epochs"] or 1), 1))
        where = (
            f" · SLURM job {r['job_id']}"
            if r.get("launcher") == "slurm" and r.get("job_id")
            else ""
        )
        label = f"{r['model']} · {r['state']}{where}" + (
            f" · ETA ≤ {fmt_s(r['eta_s'])}"  # to the last epoch; early stopping may end sooner
            if r["state"] == "running" and r["eta_s"] is not None
            else ""
        )
        st.progress(frac, text=label)


def draw() -> None:
    resume_queue(os.environ.get("SCWB_HOME", ""))
    with st.sidebar:
        info = device_info()
        icon = ":material/memory:" if info["kind"] != "cpu" else ":material/computer:"
        st.markdown(f"**Compute:** {icon} {info['name']}")
        st.markdown("**Runs in progress**")
        active_runs()
