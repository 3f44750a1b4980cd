"""App latency: how long each page takes to rerun with a 10k- and a 100k-cell dataset loaded
(AppTest, the same script runs a browser triggers), and the time from submitting a run to the
first point of its live loss curve.

    python -m bench.app_latency [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PAGES = ["data", "preprocess", "train", "runs", "results", "compare"]


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000")
    args = ap.parse_args()
    results: dict = {"pages": [], "first_point": []}
    for n in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as home:
            os.environ["SCWB_HOME"] = home
            import anndata as ad
            import pandas as pd
            from streamlit.testing.v1 import AppTest

            from bench.throughput import counts
            from engine import datasets, jobs, runs, workspace
            from engine.spec import RunSpec

            x = counts(n, 2000)
            a = ad.AnnData(
                X=x,
                obs=pd.DataFrame(
                    {"group": pd.Categorical([f"g{i % 5}" for i in range(n)])},
                    index=[f"c{i}" for i in range(n)],
                ),
            )
            a.var_names = [f"G{i}" for i in range(2000)]
            name = datasets.save(a, f"cells{n}")
            runs.write_json(workspace.home() / "state.json", {"dataset": name})
            t0 = time.perf_counter()
            run = jobs.submit(
                RunSpec(model="vae", data=str(datasets.path(name)), epochs=2, label_key="group")
            )
            while runs.read_metrics_csv(run).empty and runs.read_status(run)["state"] in (
                "queued",
                "running",
            ):
                time.sleep(0.1)
            results["first_point"].append(
                {
                    "n": n,
                    "seconds_to_first_epoch_point": round(time.perf_counter() - t0, 2),
                    "state": runs.read_status(run)["state"],
                }
            )
            jobs.wait(run)
            for page in PAGES:
                at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
                at.run()
                at.switch_page(f"pages/{page}.py")
                t0 = time.perf_counter()
                at.run()
                cold = time.perf_counter() - t0
                t0 = time.perf_counter()
                at.run()
                warm = time.perf_counter() - t0
                results["pages"].append(
                    {
                        "n": n,
                        "page": page,
                        "first_run_s": round(cold, 2),
                        "rerun_s": round(warm, 2),
                        "exception": bool(at.exception),
                    }
                )
                print(json.dumps(results["pages"][-1]), flush=True)
            print(json.dumps(results["first_point"][-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "app_latency.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
