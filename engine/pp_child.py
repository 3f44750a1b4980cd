"""Preprocessing in a memory-capped child process, so the app process never holds the copies.

At a million cells a recipe's working copies take several GB (``engine.pp_memory``); the
Preprocess page's Preview runs the recipe here on the dataset's file instead of in the app. The
child writes the result and its QC to ``target`` and returns the per-step report with what
``datasets.adopt`` needs to register it without reading it again. Failures are one line.
Recipes that peak under ``IN_PROCESS_BYTES`` run in the caller (``make``): a child's start-up
takes seconds, longer than such a recipe.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from engine.errors import ScwbError

IN_PROCESS_BYTES = 256 * 2**20  # a recipe that peaks under this runs in the caller (no start-up)


def make(
    adata: Any,
    recipe: Any,
    target: str | os.PathLike,
    copy: bool = True,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """Apply ``recipe``, write the result and its QC to ``target``; return the report and
    what ``datasets.adopt`` needs. The child runs this; so does the page for small recipes.
    ``on_step``: called with each step's report row as it finishes."""
    from engine import io, summary
    from engine import preprocess as pp

    out, report = pp.apply(adata, recipe, on_step=on_step, copy=copy)
    try:
        io.write_h5ad(out, target)
        summary.write_qc(out, target)
    except BaseException:
        Path(target).unlink(missing_ok=True)
        summary.remove_qc(target)
        raise
    return {
        "report": report,
        "describe": json.loads(json.dumps(io.describe(out), default=str)),
        "fingerprint": io.fingerprint(out),
        "content": io.content_hash(out),
        "n_obs": int(out.n_obs),
        "n_vars": int(out.n_vars),
    }


_STARTED: dict[str, subprocess.Popen] = {}  # this process's children (each reaped by a thread)


def _target(job: Path) -> str:
    """The output a job writes: its folder's name without ``.job``."""
    return str(job)[: -len(".job")]


def start(source: str | os.PathLike, recipe: Any, target: str | os.PathLike) -> Path:
    """Start ``recipe`` on the .h5ad ``source`` in a child that outlives the caller's wait;
    return its folder (``TARGET.job``, beside ``target``), which ``poll`` reads and ``find``
    finds again (a refresh loses the page's session, not the job). A Preview of Leiden takes
    minutes: waited for in the page's run, a click on another page stopped the wait and lost
    the preview while the child went on (a browser pass). The child stops itself at the time
    limit whether or not anyone polls it."""
    import threading

    from engine import reader, runs, settings

    job = Path(f"{target}.job")
    job.mkdir()
    (job / "recipe.json").write_text(recipe.to_json())
    limit = int(settings.get().read_timeout_s)
    files = (source, job / "recipe.json", target, job / "result.json")
    proc = subprocess.Popen(
        # after "--": a file name that starts with "-" is a name, not an option
        [sys.executable, "-m", "engine.pp_child", "--steps", str(job / "steps.jsonl")]
        + [f"--cpu-limit={limit}", "--", *map(str, files), str(reader.child_memory_limit())],
        cwd=str(reader.ROOT),
        env={**os.environ, "PYTHONPATH": str(reader.ROOT)},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # not stopped with the caller's process group
    )
    _STARTED[str(job)] = proc
    threading.Thread(target=proc.wait, daemon=True).start()  # reaped when it ends: no zombie
    runs.write_json(
        job / "job.json",
        {
            "pid": proc.pid,
            "started": time.time(),
            "limit_s": limit,
            "source": str(Path(source).resolve()),
            "recipe": recipe.to_json(),
        },
    )
    return job


def keep(source: str | os.PathLike, recipe: Any, target: str | os.PathLike, info: dict) -> Path:
    """Record a result ``make`` wrote to ``target`` in this process as a finished job, so that
    ``find`` and ``jobs_of`` find it as they find a child's: a refresh after Preview showed
    "Press Preview" and computed it again (a browser pass: a Leiden of 72 s)."""
    from engine import runs

    job = Path(f"{target}.job")
    job.mkdir()
    meta = {"pid": None, "started": time.time(), "source": str(Path(source).resolve())}
    runs.write_json(job / "job.json", meta | {"recipe": recipe.to_json()})
    runs.write_json(job / "result.json", info)
    return job


def _jobs(folder: str | os.PathLike, source: str | os.PathLike | None = None):
    """``(started, job, its job.json, its poll)`` of every job in ``folder`` (on ``source``
    only, when given), newest first."""
    from engine import runs

    want, found = (str(Path(source).resolve()) if source is not None else None), []
    for job in Path(folder).glob("*.job"):
        meta = runs.read_json(job / "job.json", {})
        if not isinstance(meta, dict) or (want is not None and meta.get("source") != want):
            continue
        started = meta.get("started")
        found.append((float(started) if isinstance(started, int | float) else 0.0, job, meta))
    found.sort(key=lambda f: f[0], reverse=True)
    return [(t, job, meta, poll(job)) for t, job, meta in found]


def jobs_of(source: str | os.PathLike, folder: str | os.PathLike) -> list[tuple[Path, str, str]]:
    """Every job in ``folder`` on ``source`` that is running, or done with its result not yet
    saved, newest first: ``(job, its recipe as JSON, "running" | "done")``."""
    return [
        (job, str(meta.get("recipe")), now["state"])
        for _, job, meta, now in _jobs(folder, source)
        if now["state"] == "running" or (now["state"] == "done" and Path(_target(job)).exists())
    ]


def running(folder: str | os.PathLike) -> list[dict[str, Any]]:
    """The jobs in ``folder`` still running, newest first, for the sidebar of every page (a
    Preview of Leiden runs minutes, and went unseen from other pages): ``source`` (the .h5ad
    it reads), ``steps`` (the recipe's step names), ``done`` (steps finished) and ``started``."""
    from engine.preprocess import recipe_steps

    out = []
    for started, job, meta, now in _jobs(folder):
        if now["state"] == "running":
            names = [str(s.get("name")) for s in recipe_steps(meta.get("recipe"))]
            out.append(
                {
                    "job": job,
                    "source": str(meta.get("source")),
                    "steps": names,
                    "done": len(now["steps"]),
                    "started": started,
                }
            )
    return out


def find(source: str | os.PathLike, recipe: Any, folder: str | os.PathLike) -> Path | None:
    """The newest job in ``folder`` ``start``ed on ``source`` with ``recipe`` that is running,
    or done with its result not yet saved; else None. Preview again, or a page refreshed
    mid-preview, takes it up instead of starting the same work twice (a browser pass)."""
    text = recipe.to_json()
    return next((job for job, other, _ in jobs_of(source, folder) if other == text), None)


def poll(job: str | os.PathLike) -> dict[str, Any]:
    """What a ``start``ed recipe has done: ``{"state": "running" | "done" | "failed" | "taken"
    (its folder is gone: its result was saved, or it was stopped, in another tab), "steps":
    [each finished step's report row], "info": (when done) what ``run`` returns, "error":
    (when failed) one line}``."""
    from engine import procs, runs

    job = Path(job)
    if not job.is_dir():  # taken or stopped by another tab: its output is that tab's now
        return {"state": "taken", "steps": []}
    steps = _finished_steps(job / "steps.jsonl")
    out = runs.read_json(job / "result.json", {})
    out = out if isinstance(out, dict) else {}
    if "report" in out:
        return {"state": "done", "steps": steps, "info": out}
    if out.get("error"):
        return {"state": "failed", "steps": steps, "error": str(out["error"])}
    meta = runs.read_json(job / "job.json", {})
    meta = meta if isinstance(meta, dict) else {}
    proc = _STARTED.get(str(job))
    target = _target(job)
    alive = proc.poll() is None if proc is not None else procs.pid_alive(meta.get("pid"), target)
    if alive:
        started, limit = meta.get("started"), meta.get("limit_s")
        timed = isinstance(started, int | float) and isinstance(limit, int | float)
        if timed and time.time() - started > limit + 30:  # its CPU limit did not end it
            stop(job)
            return {
                "state": "failed",
                "steps": steps,
                "error": "Preprocessing took longer than SCWB_READ_TIMEOUT_S.",
            }
        return {"state": "running", "steps": steps}
    if "report" in (runs.read_json(job / "result.json", {}) or {}):  # it ended just now
        return poll(job)
    return {
        "state": "failed",
        "steps": steps,
        "error": "Preprocessing stopped: it ran out of memory or time (SCWB_READ_TIMEOUT_S) "
        "or was killed; select fewer genes or raise SCWB_MEMORY_BUDGET_GB.",
    }


def stop(job: str | os.PathLike) -> None:
    """Stop a ``start``ed recipe (if it still runs) and remove its folder and its output."""
    import shutil

    from engine import procs, reader, runs

    job = Path(job)
    target = _target(job)
    if not job.is_dir() and str(job) not in _STARTED:
        # taken by another tab following the same job: the output is that tab's result (a
        # review: two tabs on one preview, the second deleted what the first was showing)
        return
    proc = _STARTED.pop(str(job), None)
    if proc is not None:
        proc.kill()  # nothing once it has ended and been reaped (its pid may be another's)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    else:
        pid = (runs.read_json(job / "job.json", {}) or {}).get("pid")
        if procs.pid_alive(pid, target):  # started by an earlier server: ours by its target
            with contextlib.suppress(OSError, TypeError, ValueError):
                os.kill(int(pid), 9)
    shutil.rmtree(job, ignore_errors=True)
    reader._remove_target(target)


def taken(job: str | os.PathLike) -> None:
    """Forget a finished job once its result is saved (the output was moved from its target).
    Until then the job stays, done, for a refresh or another tab to show."""
    import shutil

    _STARTED.pop(str(job), None)
    shutil.rmtree(job, ignore_errors=True)


def run(
    source: str | os.PathLike,
    recipe: Any,
    target: str | os.PathLike,
    on_step: Callable[[dict], None] | None = None,
) -> dict[str, Any]:
    """``start``, then wait for it: apply ``recipe`` to the .h5ad ``source``, write the result
    to ``target`` and return ``{"report", "describe", "fingerprint", "content", "n_obs",
    "n_vars"}``. ``on_step`` is called here, in the caller's thread, with each step's report
    row as the child finishes it (a Preview of Leiden on 10,000 cells said nothing for 45 s)."""
    job = start(source, recipe, target)
    told = 0
    while (now := poll(job))["state"] == "running":
        time.sleep(0.25)
        told = _hand_over(now["steps"], told, on_step)
    _hand_over(now["steps"], told, on_step)
    if now["state"] == "done":
        taken(job)
        return now["info"]
    stop(job)  # its folder and any half-written output
    raise ScwbError(now["error"])


def _hand_over(steps: list[dict], told: int, on_step: Callable[[dict], None] | None) -> int:
    """Give ``on_step`` the finished steps it has not seen; return how many it has seen."""
    for row in steps[told:]:
        if on_step is not None:
            on_step(row)
    return len(steps)


def _finished_steps(steps: Path) -> list[dict]:
    """The report rows of the steps a child has finished (whole lines only)."""
    try:
        lines = steps.read_text().split("\n")[:-1]  # the last is partial, or empty
    except OSError:
        return []
    rows = []
    for line in lines:
        with contextlib.suppress(ValueError):
            rows.append(json.loads(line))
    return rows


def _child(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.pp_child")
    for name in ("source", "recipe", "target", "result"):
        ap.add_argument(name)
    ap.add_argument("limit", type=int)
    ap.add_argument("--steps", help="a file that gets each finished step's report, one JSON line")
    ap.add_argument("--cpu-limit", type=int, default=0, help="CPU seconds, then it stops")
    args = ap.parse_args(argv)
    from engine import reader

    reader._limit_memory(args.limit)
    if args.cpu_limit:  # its own end, polled or not (a page refreshed away stops no one)
        reader._limit_cpu(args.cpu_limit)
    try:
        import warnings

        warnings.filterwarnings("ignore")
        from engine import io
        from engine import preprocess as pp

        def tell(row: dict) -> None:
            if args.steps:
                with open(args.steps, "a") as fh:
                    fh.write(json.dumps(row, default=str) + "\n")

        recipe = pp.Recipe.load(args.recipe)
        info = make(io.read(args.source), recipe, args.target, copy=False, on_step=tell)
        Path(args.result).write_text(json.dumps(info, default=str))
        return 0
    except ScwbError as exc:
        msg = str(exc)
    except MemoryError:
        msg = "Preprocessing ran out of memory; select fewer genes or raise SCWB_MEMORY_BUDGET_GB."
    except Exception as exc:  # any step failure becomes one line
        msg = f"Preprocessing failed: {reader._first_line(exc)}"
    with contextlib.suppress(OSError):
        Path(args.result).write_text(json.dumps({"error": " ".join(msg.split())}))
    return 2


if __name__ == "__main__":
    sys.exit(_child())
