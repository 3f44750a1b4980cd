"""A million cells through every step: open + describe, the Data and Preprocess pages,
preprocessing against the same scanpy calls, and training cells/s on the sparse host path.

Synthetic negative-binomial counts, 2,000 genes, about 10% non-zero, 10 cell types, at each
size; the files are cached under ``--cache`` (default /tmp/scwb_scale), never in git.
Every measurement runs in a fresh spawned process so that its peak RSS is its own; results are
merged into ``bench/results/scale.json`` by (stage, n), so sizes may be run one at a time:

    python -m bench.scale --sizes 1000,10000,100000 --stages open,preprocess,train
    python -m bench.scale --sizes 1000000 --stages open
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results" / "scale.json"
GENES = 2000
BATCH = 128


CACHE = Path("/tmp/scwb_scale")


def _peak_mb(who=resource.RUSAGE_SELF) -> float:
    return round(resource.getrusage(who).ru_maxrss / 1024, 1)


def _rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# ----------------------------------------------------------------------------- data
def _generate(n: int, path: Path, seed: int = 0, block: int = 5000) -> None:
    """NB counts from 10 programs, library ~220 (about 10% non-zero), built in row blocks."""
    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.3, 1.0, size=(10, GENES))
    parts, types = [], []
    for start in range(0, n, block):
        m = min(block, n - start)
        w = rng.dirichlet(np.ones(10) * 0.5, size=m)
        mu = w @ programs
        mu = mu / mu.sum(1, keepdims=True) * rng.lognormal(np.log(220), 0.4, size=(m, 1))
        x = rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(np.float32)
        parts.append(sp.csr_matrix(x))
        types.append(w.argmax(1))
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"type_{t}" for t in np.concatenate(types)])},
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(
        X=sp.vstack(parts, format="csr"),
        obs=obs,
        var=pd.DataFrame(index=[f"g{i}" for i in range(GENES)]),
    )
    tmp = path.with_suffix(".tmp.h5ad")
    a.write_h5ad(tmp)
    os.replace(tmp, path)


def data_file(n: int) -> Path:
    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"counts_{n}x{GENES}.h5ad"
    if not path.exists():
        _spawn(_generate, n, path)
    return path


def _spawn(fn, *args):
    """Run ``fn(*args, q)`` in a fresh spawned process; return what it put on the queue."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(fn, args, q))
    p.start()
    out = None
    while p.is_alive() or not q.empty():
        try:
            out = q.get(timeout=1)
            break
        except Exception:  # noqa: BLE001 - queue.Empty: keep waiting while the child runs
            continue
    p.join()
    if p.exitcode not in (0, None) and out is None:
        out = {"error": f"exit code {p.exitcode}"}
    return out


def _child(fn, args, q) -> None:
    warnings.filterwarnings("ignore")
    try:
        q.put(fn(*args))
    except BaseException as exc:  # noqa: BLE001 - reported in the results, one line
        q.put({"error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"})


# ----------------------------------------------------------------------------- open + pages
def _open(n: int, path: str, preview: bool = True) -> dict:
    """Import by server path as the Data page does, then the Data and Preprocess pages' first
    views and reruns in AppTest; peak RSS of this (app) process and of the reader child."""
    import shutil

    home = tempfile.mkdtemp(prefix="scwb-scale-")
    try:
        return _open_in(n, path, preview, home)
    finally:
        shutil.rmtree(home, ignore_errors=True)  # a million cells leave GBs of datasets


def _open_in(n: int, path: str, preview: bool, home: str) -> dict:
    os.environ.update(SCWB_HOME=home, SCWB_DATA_ROOTS=str(Path(path).parent))
    from streamlit.testing.v1 import AppTest

    from engine import datasets, io, runs, workspace
    from tests.conftest import ROOT

    base = _rss_mb()
    t0 = time.perf_counter()
    key = datasets.import_file(workspace.check_server_path(path), "scale", source=f"path:{path}")
    out = {"stage": "open", "n": n, "import_s": round(time.perf_counter() - t0, 2)}
    out["reader_child_peak_mb"] = _peak_mb(resource.RUSAGE_CHILDREN)
    runs.write_json(workspace.home() / "state.json", {"dataset": key})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=600)
    at.run(timeout=600)
    for page in ("data", "preprocess"):
        at.switch_page(f"pages/{page}.py")
        t0 = time.perf_counter()
        at.run(timeout=600)
        out[f"{page}_first_s"] = round(time.perf_counter() - t0, 2)
        t0 = time.perf_counter()
        at.run(timeout=600)
        out[f"{page}_rerun_s"] = round(time.perf_counter() - t0, 2)
        if at.exception:
            out[f"{page}_error"] = at.exception[0].message
    at.switch_page("pages/data.py")
    t0 = time.perf_counter()
    at.run(timeout=600)
    out["data_again_s"] = round(time.perf_counter() - t0, 2)
    out["app_peak_mb"] = _peak_mb()
    if preview:  # the suggested recipe, run by the page in its child process
        at.switch_page("pages/preprocess.py")
        at.run(timeout=600)
        t0 = time.perf_counter()
        next(b for b in at.button if b.label == "Preview").click().run(timeout=900)
        out["preview_s"] = round(time.perf_counter() - t0, 2)
        out["preview_errors"] = [e.value for e in at.error] + [e.message for e in at.exception]
        out["preview_memory"] = [c.value for c in at.caption if c.value.startswith("Memory")]
        out["preview_child_peak_mb"] = _peak_mb(resource.RUSAGE_CHILDREN)
        out["app_peak_after_preview_mb"] = _peak_mb()
    out["app_base_mb"] = round(base, 1)
    # what the Data page computed on every first view before the description was stored
    adata = io.read(datasets.path(key))
    t0 = time.perf_counter()
    io.describe(adata)
    io.qc_metrics(adata)
    out["describe_qc_s"] = round(time.perf_counter() - t0, 2)
    return out


# ----------------------------------------------------------------------------- preprocessing
RECIPE = [
    ("filter_cells", {"min_genes": 10}),
    ("filter_genes", {"min_cells": 3}),
    ("keep_counts", {}),
    ("normalize", {"target_sum": 1e4, "log": True}),
    ("hvg", {"n_top": 1000}),
]


def _pp(n: int, path: str, which: str) -> dict:
    import anndata as ad
    import scanpy as sc

    from engine import pp_memory
    from engine import preprocess as pp

    adata = ad.read_h5ad(path)
    base = _rss_mb()
    recipe = pp.Recipe([pp.Step(s, dict(p)) for s, p in RECIPE])
    est = pp_memory.estimate(adata, recipe)
    t0 = time.perf_counter()
    if which == "engine":
        pp.apply(adata, recipe)
    else:  # the same scanpy calls, made directly (apply works on a copy too)
        a = adata.copy()
        sc.pp.filter_cells(a, min_genes=10)
        sc.pp.filter_genes(a, min_cells=3)
        a.layers["counts"] = a.X.copy()
        sc.pp.normalize_total(a, target_sum=1e4)
        sc.pp.log1p(a)
        sc.pp.highly_variable_genes(a, n_top_genes=1000, flavor="seurat", subset=True)
    seconds = time.perf_counter() - t0
    peak = _peak_mb()
    return {
        "which": which,
        "seconds": round(seconds, 2),
        "peak_mb": peak,
        "input_mb": round(base, 1),
        "estimate_peak_mb": round(est.peak_bytes / 2**20, 1),
        "estimate_result_mb": round(est.result_bytes / 2**20, 1),
    }


def _zscore_refusal(n: int, path: str) -> dict:
    """Z-scoring densifies: at sizes over the budget the engine refuses before it starts."""
    import anndata as ad

    from engine import preprocess as pp
    from engine.errors import ScwbError

    adata = ad.read_h5ad(path)
    t0 = time.perf_counter()
    try:
        pp.apply(adata, pp.Recipe([pp.Step("normalize"), pp.Step("scale")]))
        msg = "ran"
    except ScwbError as exc:
        msg = str(exc)
    return {"zscore": msg, "zscore_s": round(time.perf_counter() - t0, 2)}


def preprocess(n: int, path: Path, reps: int) -> dict:
    rows = [_spawn(_pp, n, str(path), w) for _ in range(reps) for w in ("engine", "scanpy")]
    ok = [r for r in rows if "error" not in r]
    med = {}
    for w in ("engine", "scanpy"):
        secs = sorted(r["seconds"] for r in ok if r["which"] == w)
        med[w] = secs[len(secs) // 2] if secs else None
    return {
        "stage": "preprocess",
        "n": n,
        "recipe": RECIPE,
        "rows": rows,
        "engine_s": med["engine"],
        "scanpy_s": med["scanpy"],
        "ratio": round(med["engine"] / med["scanpy"], 3)
        if med["engine"] and med["scanpy"]
        else None,
        **(_spawn(_zscore_refusal, n, str(path)) or {}),
    }


# ----------------------------------------------------------------------------- training
def _train(n: int, path: str, model: str, depth: int, batches: int, threads: int) -> dict:
    import logging

    import anndata as ad
    import numpy as np
    import pytorch_lightning as pl
    import torch

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from engine.data import Batches, DeviceMatrix, encode_labels
    from engine.models.classifier import Classifier
    from engine.models.lit import LitModel
    from engine.models.vae import VAE

    torch.manual_seed(0)
    if threads:  # on a shared, oversubscribed CPU two OpenMP threads can be 5x slower than one
        torch.set_num_threads(threads)
    adata = ad.read_h5ad(path)
    columns = {"x": DeviceMatrix(adata.X, "cpu", budget=0)}  # the sparse host path, always
    assert not columns["x"].is_dense
    if model == "vae":
        net = VAE(GENES)
    else:
        codes, classes = encode_labels(adata.obs["cell_type"])
        columns["y"] = torch.as_tensor(codes)
        net = Classifier(GENES, len(classes), (50,), "relu", 0.1)
    loader = Batches(
        columns, np.arange(n), BATCH, shuffle=True, seed=0, drop_last=True, prefetch=depth
    )
    warm = 5
    per_epoch = len(loader)
    total = warm + (batches if batches else per_epoch)  # 0: a whole epoch after the warm-up
    epochs = -(-total // per_epoch)

    class Timer(pl.Callback):
        done = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if self.done == warm:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.done += 1
            if self.done == total:
                self.dt = time.perf_counter() - self.t0
                trainer.should_stop = True

    timer = Timer()
    trainer = pl.Trainer(
        max_epochs=epochs,
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        num_sanity_val_steps=0,
        callbacks=[timer],
    )
    trainer.fit(LitModel(net), train_dataloaders=loader)
    cells = (timer.done - warm) * BATCH
    return {
        "model": model,
        "prefetch": depth,
        "torch_threads": torch.get_num_threads(),
        "batches": timer.done - warm,
        "cells_per_s": round(cells / timer.dt, 1),
        "s_per_epoch": round(n / (cells / timer.dt), 2),
        "peak_mb": _peak_mb(),
    }


def train(n: int, path: Path, batches: int, reps: int, threads: int, models: list[str]) -> dict:
    rows = [
        _spawn(_train, n, str(path), model, depth, batches, threads) | {"timed_batches": batches}
        for model in models
        for _ in range(reps)
        for depth in (2, 0)
    ]
    out = {"stage": "train", "n": n, "batch_size": BATCH, "rows": rows}
    for model in models:
        for depth in (2, 0):
            v = sorted(
                r["cells_per_s"]
                for r in rows
                if "error" not in r and r["model"] == model and r["prefetch"] == depth
            )
            out[f"{model}_{'prefetch' if depth else 'plain'}_cells_per_s"] = (
                v[len(v) // 2] if v else None
            )
    return out


# ----------------------------------------------------------------------------- main
def _merge(rows: list[dict]) -> dict:
    old = json.loads(OUT.read_text()) if OUT.exists() else {}
    keep = {(r["stage"], r["n"]): r for r in old.get("results", [])}
    for r in rows:
        before = keep.get((r["stage"], r["n"]))
        if r["stage"] == "train" and before:  # a rerun of some models keeps the others' rows
            again = {x.get("model") for x in r["rows"]}
            kept = [x for x in before["rows"] if x.get("model") not in again]
            r = {**before, **r, "rows": kept + r["rows"]}
        keep[(r["stage"], r["n"])] = r
    import platform

    import torch

    return {
        "machine": f"{os.cpu_count()} CPU threads, {platform.python_version()}, torch {torch.__version__}",
        "genes": GENES,
        "results": sorted(keep.values(), key=lambda r: (r["stage"], r["n"])),
    }


def main() -> None:
    global CACHE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000,10000,100000,1000000")
    ap.add_argument("--stages", default="open,preprocess,train")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--batches", type=int, default=200, help="timed batches; 0: a whole epoch")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in training; 0: torch's")
    ap.add_argument("--models", default="vae,mlp", help="the models the train stage times")
    ap.add_argument(
        "--cache", type=Path, default=Path("/tmp/scwb_scale"), help="where the generated files live"
    )
    args = ap.parse_args()
    CACHE = args.cache
    for n in (int(s) for s in args.sizes.split(",")):
        t0 = time.perf_counter()
        path = data_file(n)
        print(f"{n} cells: data {time.perf_counter() - t0:.0f} s", flush=True)
        for stage in args.stages.split(","):
            if stage == "open":
                row = _spawn(_open, n, str(path))
                row = {"stage": "open", "n": n, **row}
            elif stage == "preprocess":
                row = preprocess(n, path, args.reps)
            else:
                row = train(n, path, args.batches, args.reps, args.threads, args.models.split(","))
            print(json.dumps(row), flush=True)
            OUT.parent.mkdir(exist_ok=True)
            OUT.write_text(json.dumps(_merge([row]), indent=1))


if __name__ == "__main__":
    main()
