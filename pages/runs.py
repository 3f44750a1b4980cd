"""Runs: every run with its state and progress; live loss curves; cancel, delete, open results.

Everything below the title lives in one fragment that re-reads the runs every 2 seconds, so the
selector's labels, the progress and each control (Cancel, Delete, Open results) follow the
selected run's current state. Whatever a run folder holds (cancelled without results, failed,
interrupted, a corrupt status.json), this page shows it and never raises.
"""

from __future__ import annotations

import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
import streamlit as st

from engine import jobs, models, runs
from engine import progress as progress_text
from engine.checks import human
from ui import figures
from ui.figures import esc
from ui.sidebar import fmt_s
from ui.state import address, ask_first, confirmed, ensure_app_navigation, fragment, show_error

ensure_app_navigation()
ss = st.session_state
# Open results (clicked in the live fragment) switches page here, in a whole-page run: a switch
# made inside the fragment raced the fragment's next timed run, whose output reached the new
# page and left the browser blank ("Bad delta path index"; 2 of 8 tries right after a Cancel)
if (opening := ss.pop("runs_open", None)) is not None:
    st.switch_page("pages/results.py", query_params=address(run=opening))
st.title("Runs")


_num = progress_text.number


def _kind(model: str) -> str:
    info = models.REGISTRY.get(model)
    return info.kind if info else "torch"


# one small dict a run: 3,000 finished runs re-read every metrics.csv each 2 s past 256
@st.cache_data(max_entries=20_000, show_spinner=False)
def _curve_facts(path: str, mtime: float) -> dict[str, Any]:
    return progress_text.curve_facts(path)


def curve_facts(run_dir: Path) -> dict[str, Any]:
    try:
        return _curve_facts(str(run_dir), (run_dir / "metrics.csv").stat().st_mtime)
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def progress(r: dict[str, Any]) -> tuple[float, str]:
    """The bar's fill and what to say about a run's progress, in whole epochs."""
    if r.get("state") in ("queued", "running"):
        return progress_text.progress(r, {})
    return progress_text.progress(r, curve_facts(Path(r["path"])))


def has_results(r: dict[str, Any]) -> bool:
    p = Path(r["path"])
    return (
        r.get("state") in ("completed", "cancelled")
        and (p / "results.h5ad").exists()
        and (p / "metrics.json").exists()
    )


def wall_s(r: dict[str, Any]) -> float | None:
    """Seconds from a run's start to its end (status.json's ISO times), or None: the training
    loop's own time (0.2 s for a small MLP) said '0s' for a run that took seconds."""
    try:
        start = datetime.fromisoformat(str(r.get("started")))
        end = datetime.fromisoformat(str(r.get("finished")))
    except ValueError:
        return None
    return max((end - start).total_seconds(), 0.0)


def table(rows: list[dict]) -> pd.DataFrame:
    # where runs trained matters only once some ran elsewhere than this machine
    elsewhere = any(r.get("launcher") not in (None, "", "local") for r in rows)
    extra = [k for k in ("launcher", "job_id") if elsewhere and any(r.get(k) for r in rows)]
    one_device = len({r.get("device") for r in rows if r.get("device")}) <= 1
    many_seeds = len({r.get("seed") for r in rows}) > 1  # seeds of a group told apart
    out = []
    for r in rows:
        frac, text = progress(r)
        elapsed, eta = _num(r.get("elapsed_s")), _num(r.get("eta_s"))
        running = r.get("state") == "running" and eta is not None
        wall = wall_s(r) if r.get("state") not in runs.ACTIVE else None
        elapsed = elapsed if wall is None else wall  # ended: start to end, not the loop's time
        out.append(
            {
                "run": r["id"],
                **(
                    {"seed": "-" if r.get("seed") is None else str(r["seed"])} if many_seeds else {}
                ),
                "state": r.get("state") or "?",
                "model": r.get("model") or "?",
                "dataset": r.get("dataset") or "?",
                # whole percents: Streamlit's "percent" format printed "12.12%"
                "progress": int(round(100 * frac)),
                "epochs": text,
                "time": fmt_s(elapsed) + (f" · ETA ≤ {fmt_s(eta)}" if running else ""),
                **({} if one_device else {"device": r.get("device") or "-"}),
                **{k: str(r.get(k) or "-") for k in extra},
            }
        )
    return pd.DataFrame(out)


TABLE_PX = 915  # the whole table fits beside the sidebar on a 1400 px screen
PX_PER_CHAR, PAD_PX, PROGRESS_PX = 7.0, 22, 90
YIELD = [("epochs", 190), ("dataset", 110), ("job_id", 70), ("launcher", 70), ("time", 100)]
HELP = {
    "time": "elapsed, and while running the time left to the last epoch (early stopping often "
    "ends sooner)"
}


def columns(df: pd.DataFrame) -> dict[str, Any]:
    """Each column as wide as its longest text (run ids and epoch texts were cut at fixed
    widths); while the table is wider than the screen, columns give way in ``YIELD`` order down
    to their floor, the epoch text and the dataset first; the run id never (the table scrolls)."""
    want = {
        c: PAD_PX + PX_PER_CHAR * max([len(str(c)), *df[c].astype(str).str.len().tolist()])
        for c in df.columns
        if c != "progress"
    }
    over = sum(want.values()) + PROGRESS_PX - TABLE_PX
    for c, floor in YIELD:
        if over <= 0:
            break
        if c in want and want[c] > floor:
            cut = min(over, want[c] - floor)
            want[c] -= cut
            over -= cut
    out: dict[str, Any] = {
        c: st.column_config.TextColumn(c, width=int(w), help=HELP.get(c)) for c, w in want.items()
    }
    out["progress"] = st.column_config.ProgressColumn(
        "progress", min_value=0, max_value=100, format="%d%%", width=PROGRESS_PX
    )
    return out


def label(r: dict[str, Any]) -> str:
    """A run's name in the selector: fixed for the run's life. The browser sends back the label
    it shows, so a label with the run's state in it stopped matching when the run started or
    ended, and the selector jumped to another run; the state is in the heading below it."""
    return f"{r['id']} · {r.get('model') or '?'} on {r.get('dataset') or '?'}"


def curve_figure(r: dict[str, Any]):
    metrics = runs.read_metrics_csv(Path(r["path"]))
    best = progress_text.best_epoch(metrics, r.get("optimizer"))
    return figures.loss_curves(metrics, f"Loss per epoch · {r['id']}", best_epoch=best)


DELETED_SHOWN_S = 10.0


@fragment(run_every=2)
def live() -> None:
    rows = jobs.list_jobs()
    if not rows:
        st.info("No run yet: submit one on **Train**.")
        return
    gone = ss.get("runs_deleted")  # said for 10 s: this fragment redraws every 2 s (a review)
    if gone and time.time() - gone[1] < DELETED_SHOWN_S:
        st.success(f"Deleted run {figures.esc(gone[0])}.", icon=":material/delete:")
    elif gone:
        ss.pop("runs_deleted", None)
    df = table(rows)
    st.dataframe(df, hide_index=True, width="stretch", placeholder="-", column_config=columns(df))
    by_id = {r["id"]: r for r in rows}
    # the address changed from outside the page (Back, Forward, a link): it says which run,
    # and a bare /runs is the page's own pick (Back to it kept showing the run picked after)
    asked = st.query_params.get("run")
    asked = asked if asked in by_id else None
    if "_seen:runs:run" in ss and asked != ss["_seen:runs:run"]:
        ss.pop("run_selected", None)
    ss["_seen:runs:run"] = asked
    if ss.get("run_selected") not in by_id:  # first visit, a refresh, or the run was deleted
        if st.query_params.get("run") in by_id:  # the run picked before a refresh
            ss["run_selected"] = ss["_runs_auto"] = st.query_params["run"]
        else:
            # a run with a curve to watch first: a scikit-learn baseline is fitted in one step,
            # and one running beside a queued network is not the run to watch (it was picked
            # while the network waited for its slot, and the page showed no curve)
            def watch(r: dict[str, Any]) -> tuple[bool, int]:
                sklearn = _kind(r.get("model", "")) == "sklearn"
                return sklearn, 0 if r.get("state") == "running" else 1

            active = [r for r in rows if r.get("state") in ("running", "queued")]
            pick = min(active, key=watch) if active else rows[0]
            ss["run_selected"] = ss["_runs_auto"] = pick["id"]
    # keyed, without index=: the user's pick is the only thing that moves the selection
    sel = st.selectbox(
        "Run", list(by_id), key="run_selected", format_func=lambda i: label(by_id[i])
    )
    # the URL names the run the user picked, so that a refresh shows it again; the page's own
    # first pick is not written (each write is one more Back press in the browser's history)
    if sel != ss.get("_runs_auto"):
        ss["_runs_auto"] = None
        if st.query_params.get("run") != sel:
            st.query_params["run"] = sel
        ss["_seen:runs:run"] = sel
        ss["_link:runs"] = {"run": sel}  # the sidebar's link to Runs keeps it (ui.state)
    r = by_id[sel]
    state = r.get("state") or "failed"
    active = state in runs.ACTIVE
    # stable keys: a click right after a pick acts on the run the selector shows (the pick
    # travels with the click); a state the page has not redrawn yet is refused in one line
    c = st.columns([1, 1, 1, 3])
    if c[0].button(
        "Cancel run",
        disabled=not active,
        help=None if active else f"the run is {state}",
        key="runs-cancel",
    ):
        try:
            how = jobs.cancel(sel)  # the state when asked, not the table's of a moment ago
            st.toast(
                "Cancelled before it started."
                if how == "cancelled"
                else "Cancelling: the run stops at its next step and keeps its best weights."
            )
        except Exception as exc:
            show_error(exc)
    if c[1].button(
        "Delete run", disabled=active, help="cancel it first" if active else None, key="runs-delete"
    ):
        ask_first("runs_confirm_delete", sel)
    if not active and confirmed(
        "runs_confirm_delete",
        sel,
        lambda: (
            f"Delete run {figures.esc(sel)} and every file it wrote (model, results, "
            "metrics)? This cannot be undone."
        ),
        scope="fragment",
    ):
        try:
            jobs.delete(sel)
            ss.pop("run_selected", None)
            ss["runs_deleted"] = (sel, time.time())  # said after the rerun (a browser pass)
            if st.query_params.get("run") == sel:
                del st.query_params["run"]
            ss["_seen:runs:run"] = None
            ss.pop("_link:runs", None)
            st.rerun()
        except Exception as exc:
            show_error(exc)
    ready = has_results(r)
    if c[2].button(
        "Open results",
        icon=":material/insights:",
        disabled=not ready,
        help=None
        if ready
        else "no results yet"
        if active
        else f"the run is {state} without results",
        key="runs-open",
    ):
        if has_results(by_id[sel]):
            ss["results_run"] = ss["runs_open"] = sel
            st.rerun(scope="app")
        else:
            st.error(f"Run {esc(sel)} has no results to open.")
    frac, text = progress(r)
    # names from the data and the run's files are text, never Markdown (an image in a dataset's
    # name was fetched by the browser: a hostile-input pass)
    st.subheader(esc(f"{r.get('model') or '?'} on {r.get('dataset') or '?'} · {state}"))
    cps, peak = _num(r.get("cells_per_s")), _num(r.get("peak_memory_mb"))
    st.caption(
        esc(
            " · ".join(
                [text, r.get("device") or "device not known yet"]
                + ([f"{cps:,.0f} cells/s"] if cps else [])
                + ([f"peak memory {human(peak * 2**20)}"] if peak else [])
            )
        )
    )
    if _kind(r.get("model", "")) == "sklearn":  # no epochs: an empty epoch chart says nothing
        st.caption("A scikit-learn baseline is fitted in one step: it has no loss curve.")
    else:
        try:
            st.plotly_chart(curve_figure(r), width="stretch", key="live_curve")
        except Exception as exc:  # a half-written or foreign metrics.csv: say so, never raise
            st.caption(f"No loss curve to draw ({type(exc).__name__}).")
    if state in ("failed", "interrupted"):
        st.error(esc(r.get("error") or "The run ended without a reason."))
        tail = runs.read_status(Path(r["path"])).get("log_tail")
        if tail:
            st.code(tail, language=None)
    elif state == "cancelled" and not ready:
        st.info("Cancelled before it had results to show.")


live()
