"""Results at scale (issue 16): size on disk of each model's results per 100k cells against the
input's, and the Results page's first view and rerun (AppTest, in a fresh process per run, with
its peak memory), at 100k and 1M cells of synthetic sparse counts (2,000 genes, ~10% non-zero).

    python -m bench.results_scale [--sizes 100000,1000000] [--fit-cells 20000] [--models vae,mlp]

Training uses ``--fit-cells`` cells (``train_on``) so that a million cells fit a CPU's time
(``--fit-cells 1000000``: every cell, one epoch); annotating, evaluating, writing the results
and the page cover every cell. Also: the worker's peak memory (as the run records it), the
Compare page, and ``engine export --zip`` of each run with its time and peak memory.
Writes bench/results/results_scale.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"
NAME = "results_scale"  # the output's name (--name)
ROOT = Path(__file__).resolve().parent.parent
GENES, GROUPS, DRAWS = 2000, 5, 220  # ~200 distinct genes a cell: ~10% non-zero
MODELS = {
    "vae": {"label_key": "group"},
    "mlp": {"label_key": "group"},
    "autoencoder": {"label_key": "group"},
}


def sparse_counts(n: int, seed: int = 0, block: int = 50_000):
    """Counts of ``n`` cells from GROUPS gene programs, drawn as sparse rows (never dense)."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    cdf = np.cumsum(rng.gamma(0.3, 1.0, size=(GROUPS, GENES)), axis=1)
    cdf /= cdf[:, -1:]
    group = rng.integers(0, GROUPS, n)
    parts = []
    for start in range(0, n, block):
        g = group[start : start + block]
        m = len(g)
        cols = np.empty((m, DRAWS), dtype=np.int32)
        for c in range(GROUPS):
            at = np.flatnonzero(g == c)
            cols[at] = np.searchsorted(cdf[c], rng.random((len(at), DRAWS)))
        cols = np.minimum(cols, GENES - 1)
        rows = np.repeat(np.arange(m, dtype=np.int32), DRAWS)
        x = sp.csr_matrix((np.ones(m * DRAWS, np.float32), (rows, cols.ravel())), shape=(m, GENES))
        x.sum_duplicates()
        parts.append(x)
    return ad.AnnData(
        X=sp.vstack(parts, format="csr"),
        obs=pd.DataFrame(
            {"group": pd.Categorical([f"g{i}" for i in group])},
            index=[f"c{i}" for i in range(n)],
        ),
        var=pd.DataFrame(index=[f"G{i}" for i in range(GENES)]),
    )


def peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM, which (unlike ru_maxrss, kept
    across fork and exec) starts again in a new program."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def page(run_id: str) -> dict:
    """The Results page of ``run_id``: first view (empty caches) and a rerun, in this process."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.query_params["run"] = run_id
    at.run()
    at.switch_page("pages/results.py")
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    at.run()
    rerun = time.perf_counter() - t0
    return {
        "first_view_s": round(first, 2),
        "rerun_s": round(rerun, 2),
        "peak_rss_gb": round(peak_rss() / 2**30, 2),
        "exception": [e.message for e in at.exception],
        "charts": len(at.get("plotly_chart")),
    }


def compare_page() -> dict:
    """The Compare page's first view and rerun (the newest runs, as a user lands on it)."""
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run()
    at.switch_page("pages/compare.py")
    t0 = time.perf_counter()
    at.run()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    at.run()
    return {
        "compare_first_view_s": round(first, 2),
        "compare_rerun_s": round(time.perf_counter() - t0, 2),
        "compare_peak_rss_gb": round(peak_rss() / 2**30, 2),
        "compare_exception": [e.message for e in at.exception],
    }


def export_zip(run_id: str) -> dict:
    """``python -m engine export RUN --zip`` (what the Results page names above its download
    limit): time, size and the exporting process's peak memory."""
    from engine import cli

    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "run.zip"
        t0 = time.perf_counter()
        rc = cli.main(["export", run_id, "--zip", str(target)])
        return {
            "export_rc": rc,
            "export_zip_s": round(time.perf_counter() - t0, 1),
            "export_zip_mib": round(target.stat().st_size / 2**20, 1) if target.exists() else None,
            "export_peak_rss_gb": round(peak_rss() / 2**30, 2),
        }


def child(flag: str, value: str = "") -> dict:
    """One measurement (``--page``, ``--compare``, ``--export``) in a fresh process: empty
    caches, and its own peak memory."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "bench.results_scale", flag, *([value] if value else [])],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=1800,
    )
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {f"{flag.strip('-')}_error": proc.stderr.strip().splitlines()[-3:]}


def measure(n: int, fit_cells: int, models: list[str]) -> list[dict]:
    import numpy as np

    from engine import io, jobs, runs, workspace
    from engine.spec import RunSpec

    t0 = time.perf_counter()
    a = sparse_counts(n)
    fit = np.zeros(n, dtype=bool)
    fit[np.random.default_rng(1).choice(n, min(fit_cells, n), replace=False)] = True
    a.obs["fit"] = np.where(fit, "yes", "no")
    data = io.write_h5ad(a, workspace.home() / f"cells{n}.h5ad")
    input_bytes = data.stat().st_size
    nnz = a.X.nnz
    del a
    print(
        f"{n:,} cells: input {input_bytes / 2**20:.0f} MiB, {nnz / n / GENES:.1%} non-zero, "
        f"made in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    rows = []
    for model in models:
        t0 = time.perf_counter()
        run = jobs.submit(
            RunSpec(
                model=model, data=str(data), epochs=1, train_on={"fit": ["yes"]}, **MODELS[model]
            )
        )
        status = jobs.wait(run)
        wall = time.perf_counter() - t0
        files = {
            f: (Path(run) / f).stat().st_size
            for f in ("results.h5ad", "sample.h5ad")
            if (Path(run) / f).exists()
        }
        total = sum(files.values())
        row = {
            "n": n,
            "model": model,
            "state": status.get("state"),
            "error": status.get("error"),
            "run_wall_s": round(wall, 1),
            "input_mib": round(input_bytes / 2**20, 1),
            "results_mib": round(files.get("results.h5ad", 0) / 2**20, 1),
            "sample_mib": round(files.get("sample.h5ad", 0) / 2**20, 1),
            "results_mib_per_100k": round(total / 2**20 * 1e5 / n, 1),
            "input_mib_per_100k": round(input_bytes / 2**20 * 1e5 / n, 1),
            "results_over_input": round(total / input_bytes, 2),
            "fit_cells": min(fit_cells, n),
            "worker_peak_mb": None,
        }
        for _ in range(100):  # the supervisor records the training process's peak at its end
            row["worker_peak_mb"] = runs.read_status(Path(run)).get("peak_memory_mb")
            if row["worker_peak_mb"]:
                break
            time.sleep(0.2)
        row.update(child("--page", Path(run).name))
        row.update(child("--export", Path(run).name))
        print(json.dumps(row), flush=True)
        rows.append(row)
        runs.write_json(OUT / f"{NAME}.partial.json", rows)
    compare = {"n": n, "model": "compare page", **child("--compare")}
    print(json.dumps(compare), flush=True)
    return [*rows, compare]


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--fit-cells", type=int, default=20_000)
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--name", default="results_scale", help="bench/results/NAME.json")
    ap.add_argument("--page", help=argparse.SUPPRESS)  # the children: one measurement each
    ap.add_argument("--compare", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--export", help=argparse.SUPPRESS)
    ap.add_argument(
        "--pages-of", help="only measure the Results page of every run in this SCWB_HOME"
    )
    args = ap.parse_args()
    global NAME
    NAME = args.name
    if args.page or args.compare or args.export:
        out = page(args.page) if args.page else compare_page() if args.compare else None
        print(json.dumps(out or export_zip(args.export)))
        return
    if args.pages_of:
        os.environ["SCWB_HOME"] = args.pages_of
        for run in sorted(p for p in Path(args.pages_of, "runs").iterdir() if p.name[0] != "."):
            print(json.dumps({"run": run.name, **child("--page", run.name)}), flush=True)
        return
    OUT.mkdir(parents=True, exist_ok=True)
    out: dict = {"genes": GENES, "fit_cells": args.fit_cells, "rows": []}
    for n in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as home:
            os.environ["SCWB_HOME"] = home
            out["rows"] += measure(n, args.fit_cells, args.models.split(","))
        (OUT / f"{args.name}.json").write_text(json.dumps(out, indent=2))
    (OUT / f"{NAME}.partial.json").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
