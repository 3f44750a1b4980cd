"""App latency: how long each page takes to run and rerun with a dataset of 10k to 1M cells
loaded and a finished VAE run on it (AppTest, the same script runs a browser triggers), and the
time from submitting a run to the first point of its live loss curve.

    python -m bench.app_latency [--sizes 10000,100000,1000000] [--epochs 1]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parent.parent
PAGES = ["data", "explore", "preprocess", "train", "runs", "results", "compare"]


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--epochs", type=int, default=1)
    args = ap.parse_args()
    results: dict = {"pages": [], "first_point": []}
    for n in map(int, args.sizes.split(",")):
        with tempfile.TemporaryDirectory() as home:
            os.environ["SCWB_HOME"] = home
            from streamlit.testing.v1 import AppTest

            from bench.scale import data_file
            from engine import datasets, io, jobs, runs, workspace
            from engine.spec import RunSpec

            # bench.scale's synthetic counts: ~10% non-zero, 10 cell types (the shape)
            a = io.read(data_file(n))
            # a stored 2-D embedding, so Explore draws at first view (as with a scanpy file)
            a.obsm["X_umap"] = np.random.default_rng(0).normal(size=(n, 2)).astype(np.float32)
            name = datasets.save(a, f"cells{n}")
            runs.write_json(workspace.home() / "state.json", {"dataset": name})
            t0 = time.perf_counter()
            run = jobs.submit(
                RunSpec(
                    model="vae",
                    data=str(datasets.path(name)),
                    epochs=args.epochs,
                    label_key="cell_type",
                )
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
            results["first_point"][-1]["run_end"] = runs.read_status(run)["state"]
            if runs.read_status(run).get("error"):
                results["first_point"][-1]["error"] = runs.read_status(run)["error"]
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
            # Explore coloured by a gene: one gene's values for the drawn cells, from the file
            at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
            at.run()
            at.switch_page("pages/explore.py")
            at.run()
            at.radio[0].set_value("gene").run()  # the first gene is drawn: warm-up
            t0 = time.perf_counter()
            at.text_input[0].set_value("g5").run()  # the first match, g5, is drawn
            cold = time.perf_counter() - t0
            assert "g5" in [s.value for s in at.selectbox], "g5 was not drawn"
            t0 = time.perf_counter()
            at.run()
            results["pages"].append(
                {
                    "n": n,
                    "page": "explore, colour by a gene",
                    "first_run_s": round(cold, 2),
                    "rerun_s": round(time.perf_counter() - t0, 2),
                    "exception": bool(at.exception),
                }
            )
            print(json.dumps(results["pages"][-1]), flush=True)
            print(json.dumps(results["first_point"][-1]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "app_latency.json"
    old = json.loads(path.read_text()) if path.exists() else {}
    sizes = {r["n"] for r in results["first_point"]}
    for part in ("pages", "first_point"):  # rows of other sizes are kept
        results[part] = [r for r in old.get(part, []) if r["n"] not in sizes] + results[part]
    results["date"] = time.strftime("%Y-%m-%d")
    path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
