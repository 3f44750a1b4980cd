"""The sidebar on every page: the compute device, the runs and the previews in progress."""

from __future__ import annotations

import os
import time
from pathlib import Path

import streamlit as st

from engine import datasets, jobs, pp_child, workspace
from engine import progress as progress_text
from ui.figures import esc
from ui.state import fragment


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


SHOWN = 6  # runs listed in the sidebar


@fragment(run_every=3)
def active_runs() -> None:
    rows = jobs.list_jobs()  # newest first
    # running first, then queued in the order they will start (oldest first): the running run
    # was hidden behind six queued ones when nine were submitted together
    queued = [r for r in rows if r["state"] == "queued"]
    queued.sort(key=lambda r: (r.get("created") or "", r.get("submitted_ns") or 0, r["id"]))
    active = [r for r in rows if r["state"] == "running"] + queued
    if not active:
        st.caption("No run in progress.")
        return
    for r in active[:SHOWN]:
        # the Runs page's fill and words ('epoch 1 of 10', 'fitting'): the sidebar said
        # 'queued' with an empty bar beside the table's 'running, epoch 0 of 10' (a browser pass)
        frac, said = progress_text.progress(r, {})
        where = (
            f" · SLURM job {r['job_id']}"
            if r.get("launcher") == "slurm" and r.get("job_id")
            else ""
        )
        # the run's id (three "mlp · queued" lines could not be told apart) and its seed
        seed = f" · seed {r['seed']}" if r.get("seed") is not None else ""
        label = f"{r['id']}{seed} · {said}{where}" + (
            f" · ETA ≤ {fmt_s(r['eta_s'])}"  # to the last epoch; early stopping may end sooner
            if r["state"] == "running" and r["eta_s"] is not None
            else ""
        )
        st.progress(frac, text=esc(label))
    if len(active) > SHOWN:
        more = active[SHOWN:]
        st.caption(
            f"+ {len(more)} more ({sum(r['state'] == 'queued' for r in more)} queued): "
            "see the Runs page."
        )


def preview_text(p: dict) -> str:
    """'Preview of kang · leiden (5 of 5) · 2m 10s': a background Preview seen from any page."""
    src = Path(p["source"])
    try:
        inside = src.parent.resolve() == workspace.datasets_dir().resolve()
        name = datasets.label(src.stem) if inside else src.name
    except (OSError, ValueError):  # a damaged record: the file's own name
        name = src.name
    steps = p["steps"] or ["?"]
    k = min(p["done"], len(steps) - 1)
    took = fmt_s(time.time() - p["started"]) if p["started"] else "-"
    return f"Preview of {name} · {steps[k]} ({k + 1} of {len(steps)}) · {took}"


@fragment(run_every=3)
def active_previews() -> None:
    """Previews running in the background (Leiden takes minutes): said on every page, or a
    user who left Preprocess did not know one was still using the CPU."""
    folder = workspace.datasets_dir() / datasets.INCOMING
    found = pp_child.running(folder) if folder.is_dir() else []
    if found:
        st.markdown("**Previews in progress**")
    for p in found[:SHOWN]:
        st.caption(f":material/hourglass_top: {esc(preview_text(p))}")
    if len(found) > SHOWN:
        st.caption(f"+ {len(found) - SHOWN} more: see the Preprocess page.")


def draw() -> None:
    resume_queue(os.environ.get("SCWB_HOME", ""))
    with st.sidebar:
        info = device_info()
        icon = ":material/memory:" if info["kind"] != "cpu" else ":material/computer:"
        st.markdown(f"**Compute:** {icon} {info['name']}")
        st.markdown("**Runs in progress**")
        active_runs()
        active_previews()
