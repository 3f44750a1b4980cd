"""Training throughput, scale curve and preprocessing overhead, measured as ratios in one run.

    python -m bench.throughput [--sizes 10000,50000,200000] [--genes 2000] [--batches 150]
                               [--repeats 3] [--scvi-python PATH]

Each measurement runs in its own process (spawn) so that its peak memory is its own. Writes
bench/results/throughput.json and prints Markdown tables for docs/BENCHMARKS.md.

Compared on the same synthetic negative-binomial counts and the same VAE (NB, n_hidden 128,
n_latent 10, batch 128):
- engine: the engine's data path (split held as one tensor, batches by shuffled index) under
  Lightning, as a run uses it;
- bare: the same tensors and batches in a plain PyTorch loop (Lightning's overhead);
- naive: a per-cell ``Dataset`` over the sparse matrix + ``DataLoader`` under Lightning;
- scvi-tools ``SCVI`` when it is installed (``requirements-bench.txt``).

Each (method, size) is measured ``--repeats`` times, the methods interleaved (engine, bare, naive,
scvi, engine, ...) so that drift of a shared machine falls on all of them alike; the table keeps
the median and every repeat, so the report can show the spread of each ratio.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import resource
import time
import warnings
from pathlib import Path

OUT = Path(__file__).resolve().parent / "results"


def counts(n: int, genes: int, seed: int = 0, block: int = 5000):
    """Negative-binomial UMI-like counts from 10 expression programs, built in row blocks so that
    large matrices never exist densely."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.3, 1.0, size=(10, genes))
    parts = []
    for start in range(0, n, block):
        m = min(block, n - start)
        mu = rng.dirichlet(np.ones(10) * 0.5, size=m) @ programs
        mu = mu / mu.sum(1, keepdims=True) * rng.lognormal(np.log(2000), 0.4, size=(m, 1))
        parts.append(sp.csr_matrix(rng.negative_binomial(2.0, 2.0 / (2.0 + mu)).astype(np.float32)))
    return sp.vstack(parts, format="csr")


def vae_train_flops_per_cell(genes: int, n_hidden: int = 128, n_latent: int = 10) -> float:
    """Dense-layer FLOPs to train the benchmark VAE on one cell: 2*in*out per linear layer for the
    forward pass, three times that with the backward pass (elementwise work and the NB likelihood
    not counted, so achieved FLOP/s is a lower bound)."""
    layers = [(genes, n_hidden), (n_hidden, n_latent), (n_hidden, n_latent)]  # encoder, mean, var
    layers += [(n_latent, n_hidden), (n_hidden, genes)]  # decoder, NB mean
    return 3 * sum(2 * a * b for a, b in layers)


def median_record(records: list[dict]) -> dict:
    """The repeat with the median cells/s, carrying every repeat's cells/s and peak memory."""
    ok = [r for r in records if "cells_per_s" in r]
    if not ok:
        return records[0]
    ok_sorted = sorted(ok, key=lambda r: r["cells_per_s"])
    mid = dict(ok_sorted[(len(ok_sorted) - 1) // 2])
    mid["cells_per_s_repeats"] = [r["cells_per_s"] for r in ok]
    mid["peak_mb"] = max(r["peak_mb"] for r in ok)
    mid["repeats"] = len(ok)
    return mid


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _measure_scvi(n: int, genes: int, batches: int, q) -> None:
    """scvi-tools' SCVI with the same architecture and batch size, timed like the others (after
    5 warm-up batches, to the end of the epoch). Runs where scvi-tools is installed."""
    warnings.filterwarnings("ignore")
    import torch

    steps, warm = min(batches, n // 128 - 6), 5
    result = {
        "method": "scvi",
        "n": n,
        "genes": genes,
        "batches": steps,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    try:
        import anndata as ad
        import lightning.pytorch as lp
        import scvi
    except ImportError:
        q.put({**result, "skipped": "scvi-tools is not installed"})
        return

    class Timer(lp.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warm:
                self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, module):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.dt = time.perf_counter() - self.t0

    adata = ad.AnnData(X=counts(n, genes))
    scvi.model.SCVI.setup_anndata(adata)
    model = scvi.model.SCVI(adata, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb")
    timer = Timer()
    model.train(
        max_epochs=1,
        batch_size=128,
        train_size=1.0,
        early_stopping=False,
        enable_progress_bar=False,
        limit_train_batches=steps + warm,
        callbacks=[timer],
        logger=False,
        enable_checkpointing=False,
    )
    q.put(
        {
            **result,
            "version": scvi.__version__,
            "cells_per_s": steps * 128 / timer.dt,
            "seconds": timer.dt,
            "peak_mb": _peak_mb(),
        }
    )


def _measure(method: str, n: int, genes: int, batches: int, q) -> None:
    warnings.filterwarnings("ignore")
    import logging

    import numpy as np
    import pytorch_lightning as pl
    import torch

    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    from engine.data import Batches, DeviceMatrix
    from engine.models.lit import LitModel
    from engine.models.vae import VAE

    torch.manual_seed(0)
    x = counts(n, genes)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    idx = np.arange(n)
    steps = min(batches, n // 128 - 6)
    result = {
        "method": method,
        "n": n,
        "genes": genes,
        "device": torch.cuda.get_device_name(0) if dev == "cuda" else "cpu",
        "batches": steps,
    }
    net = VAE(genes)
    if method in ("engine", "bare"):
        columns = {"x": DeviceMatrix(x, dev)}
        loader = Batches(columns, idx, 128, shuffle=True, seed=0, drop_last=True)
    else:
        from torch.utils.data import DataLoader, Dataset

        class PerCell(Dataset):
            def __len__(self):
                return n

            def __getitem__(self, i):
                return {"x": torch.from_numpy(x[i].toarray()[0])}

        loader = DataLoader(PerCell(), batch_size=128, shuffle=True, drop_last=True)
    warm = 5
    if method == "bare":
        net = net.to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        it = iter(loader)
        for i in range(steps + warm):
            if i == warm:
                t0 = time.perf_counter()
            batch = next(it)
            loss = net.loss(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            opt.step()
        if dev == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
    else:

        class Timer(pl.Callback):
            def on_train_batch_start(self, trainer, module, batch, batch_idx):
                if batch_idx == warm:
                    self.t0 = time.perf_counter()

            def on_train_epoch_end(self, trainer, module):
                if dev == "cuda":
                    torch.cuda.synchronize()
                self.dt = time.perf_counter() - self.t0

        timer = Timer()
        trainer = pl.Trainer(
            max_epochs=1,
            limit_train_batches=steps + warm,
            accelerator="gpu" if dev == "cuda" else "cpu",
            devices=1,
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
            num_sanity_val_steps=0,
            callbacks=[timer],
        )
        trainer.fit(LitModel(net), train_dataloaders=loader)
        dt = timer.dt
    q.put({**result, "cells_per_s": steps * 128 / dt, "seconds": dt, "peak_mb": _peak_mb()})


SCVI_PYTHON: str | None = None  # --scvi-python: an interpreter whose environment has scvi-tools


def _scvi_elsewhere(n: int, genes: int, batches: int) -> dict:
    """Measure scvi-tools with another interpreter (its own venv), same code, same machine."""
    import subprocess
    import sys
    from pathlib import Path

    code = f"import json, queue; from bench.throughput import _measure_scvi; q = queue.Queue(); _measure_scvi({n}, {genes}, {batches}, q); print(json.dumps(q.get()))"
    out = subprocess.run(
        [SCVI_PYTHON, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parent.parent,
    )
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    return (
        json.loads(lines[-1])
        if lines
        else {
            "method": "scvi",
            "n": n,
            "error": (out.stderr.strip().splitlines() or ["?"])[-1][:300],
            "python": sys.executable,
        }
    )


def measure(method: str, n: int, genes: int, batches: int) -> dict:
    if method == "scvi" and SCVI_PYTHON:
        return _scvi_elsewhere(n, genes, batches)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    if method == "scvi":
        p = ctx.Process(target=_measure_scvi, args=(n, genes, batches, q))
    else:
        p = ctx.Process(target=_measure, args=(method, n, genes, batches, q))
    p.start()
    p.join()
    return (
        q.get() if not q.empty() else {"method": method, "n": n, "error": f"exit code {p.exitcode}"}
    )


def _pp(which: str, n: int, genes: int, q) -> None:
    warnings.filterwarnings("ignore")
    import anndata as ad
    import scanpy as sc

    from engine import preprocess as pp

    adata = ad.AnnData(X=counts(n, genes))
    adata.var_names = [f"g{i}" for i in range(genes)]
    t0 = time.perf_counter()
    if which == "engine":
        pp.apply(
            adata,
            pp.Recipe(
                [
                    pp.Step("filter_genes", {"min_cells": 3}),
                    pp.Step("keep_counts"),
                    pp.Step("normalize", {"target_sum": 1e6}),
                    pp.Step("hvg", {"n_top": 2000}),
                    pp.Step("scale", {"method": "zscore", "max_value": 10}),
                ]
            ),
        )
    else:
        a = adata.copy()
        sc.pp.filter_genes(a, min_cells=3)
        a.layers["counts"] = a.X.copy()
        sc.pp.normalize_total(a, target_sum=1e6)
        sc.pp.log1p(a)
        sc.pp.highly_variable_genes(a, n_top_genes=2000, subset=True)
        sc.pp.scale(a, max_value=10)
    q.put(
        {
            "which": which,
            "n": n,
            "genes": genes,
            "seconds": time.perf_counter() - t0,
            "peak_mb": _peak_mb(),
        }
    )


def preprocessing(n: int, genes: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    out = []
    for which in ("scanpy", "engine"):
        q = ctx.Queue()
        p = ctx.Process(target=_pp, args=(which, n, genes, q))
        p.start()
        p.join()
        out.append(q.get() if not q.empty() else {"which": which, "error": p.exitcode})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,50000,200000")
    ap.add_argument("--scale", default="1000,10000,50000,200000")
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--batches", type=int, default=150)
    ap.add_argument(
        "--repeats", type=int, default=3, help="interleaved repeats; the median is kept"
    )
    ap.add_argument("--pp-cells", type=int, default=100_000)
    ap.add_argument("--pp-genes", type=int, default=20_000)
    ap.add_argument(
        "--scvi-python",
        help="python of a venv with scvi-tools (pip install -r requirements-bench.txt there)",
    )
    ap.add_argument("--skip-preprocessing", action="store_true")
    args = ap.parse_args()
    global SCVI_PYTHON
    SCVI_PYTHON = args.scvi_python
    import torch

    res = {
        "machine": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "date": time.strftime("%Y-%m-%d"),
        }
    }
    res["machine"]["vae_train_flops_per_cell"] = vae_train_flops_per_cell(args.genes)
    methods = ("engine", "bare", "naive", "scvi")
    res["throughput"] = []
    for n in map(int, args.sizes.split(",")):
        runs: dict[str, list[dict]] = {m: [] for m in methods}
        for _ in range(args.repeats):
            for m in methods:
                runs[m].append(measure(m, n, args.genes, args.batches))
                print(json.dumps(runs[m][-1]), flush=True)
        res["throughput"] += [median_record(runs[m]) for m in methods]
    # the scale curve reuses the engine's measurements at the sizes both lists name
    engine = {r["n"]: r for r in res["throughput"] if r["method"] == "engine"}
    res["scale"] = []
    for n in map(int, args.scale.split(",")):
        if n not in engine:
            engine[n] = median_record(
                [measure("engine", n, args.genes, args.batches) for _ in range(args.repeats)]
            )
        r = dict(engine[n])
        r["epoch_s_estimate"] = r["n"] / r["cells_per_s"] if r.get("cells_per_s") else None
        res["scale"].append(r)
        print(json.dumps(r), flush=True)
    previous = (
        json.loads((OUT / "throughput.json").read_text())
        if (OUT / "throughput.json").exists()
        else {}
    )
    res["preprocessing"] = (
        previous.get("preprocessing", [])
        if args.skip_preprocessing
        else preprocessing(args.pp_cells, args.pp_genes)
    )
    print(json.dumps(res["preprocessing"]), flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "throughput.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
