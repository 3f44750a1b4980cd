"""The GPU benchmarks, run by ``bench/gpu.sh`` on the card (or on the CPU at tiny sizes, dry-run).

    python -m bench.gpu_bench --out DIR [--device cuda|cpu] [--parts vae,scvi,scgen,submit]
        [--sizes 10000,200000,1000000] [--genes 2000] [--batch-sizes 128,1024,4096]
        [--seconds 5] [--warmup 20] [--scvi-path DIR] [--scgen-data FILE] [--scgen-epochs 100]
        [--scgen-cpu-json FILE] [--submit-sizes 10000,1000000] [--pytest-junit FILE]

Writes ``DIR/gpu.json`` (one results file, rewritten after each part so a run cut short keeps
what it measured) and prints one JSON line per measurement.

Parts (each time-boxed by its parameters):
- ``vae``: the engine's VAE (NB, 128 hidden, 10 latent) on synthetic sparse counts (~10% non-zero)
  held on the device, under Lightning as a run uses it. Per size, per batch size and precision:
  cells/s over a timed stretch after ``--warmup`` steps (to the end of the epoch, or
  ``--seconds``, whichever comes first), the epoch time that implies, peak GPU memory
  (``torch.cuda.max_memory_allocated``), dense-layer FLOPs per cell and the share of the card's
  fp32 / bf16 peak.
- ``scvi``: scvi-tools' SCVI, same data, model size and batch sizes, timed the same way, in a
  child process that sees scvi-tools (``--scvi-path``: a folder of installed packages); skipped
  with a message when scvi-tools cannot be imported.
- ``scgen``: scGen with its published defaults (2 x 800, latent 100, batch 32, 100 epochs, early
  stopping off so that all epochs run) through ``engine.train.run`` on a log-normalised set (the
  H. polygyrus file when given, else 2,000 synthetic cells x 7,000 genes): time to train, R^2 for
  one seed, and the CPU R^2 of the same spec from ``--scgen-cpu-json`` (or computed here with
  ``--scgen-cpu``).
- ``submit``: time from ``python -m engine submit`` to the first live point (status ``epoch`` > 0
  or a metrics.csv row) for each of ``--submit-sizes`` cells; the run is then killed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HPOLY = {
    "condition_key": "condition",
    "ctrl": "Control",
    "stim": "Hpoly.Day10",
    "cell_type_key": "cell_label",
    "predict": "Stem",
}
SYNTH = {
    "condition_key": "condition",
    "ctrl": "control",
    "stim": "stimulated",
    "cell_type_key": "cell_type",
    "predict": "B cell",
}
# Dense (no sparsity) peak FLOP/s from NVIDIA's data sheets: fp32 on the CUDA cores (what a
# float32 matmul uses at torch's default 'highest' precision) and bf16 on the tensor cores.
# Matched by the first key contained in the device name.
PEAKS = [
    ("H100 PCIe", {"fp32": 51.2e12, "bf16": 756e12}),
    ("H100 NVL", {"fp32": 60e12, "bf16": 835e12}),
    ("H100", {"fp32": 67e12, "bf16": 989e12}),  # SXM5 (the "H100 80GB HBM3")
    ("H200", {"fp32": 67e12, "bf16": 989e12}),
    ("A100", {"fp32": 19.5e12, "bf16": 312e12}),
    ("L40S", {"fp32": 91.6e12, "bf16": 362e12}),
]


def log(record: dict) -> None:
    print(json.dumps(record, default=str), flush=True)


# ----------------------------------------------------------------------------- data
def sparse_counts(n: int, genes: int, density: float = 0.1, seed: int = 0, distinct: int = 50_000):
    """UMI-like counts, ``density`` of them non-zero: each cell follows one of 10 expression
    programs (gene-specific detection rates), non-zero values geometric (mean 2). Up to
    ``distinct`` cells are drawn; larger sets repeat them (the speed of training does not depend
    on the values, and 1M cells are built in seconds)."""
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    m = min(n, distinct)
    w = rng.gamma(0.6, 1.0, size=(10, genes)).astype(np.float32)
    p = np.minimum(w / w.mean(1, keepdims=True) * density, 0.95).astype(np.float32)
    types = rng.integers(0, 10, m)
    data, indices, counts = [], [], []
    for s in range(0, m, 10_000):
        t = types[s : s + 10_000]
        r, c = np.nonzero(rng.random((len(t), genes), dtype=np.float32) < p[t])
        data.append(rng.geometric(0.5, size=r.size).astype(np.float32))
        indices.append(c.astype(np.int32))
        counts.append(np.bincount(r, minlength=len(t)))
    data, indices, counts = np.concatenate(data), np.concatenate(indices), np.concatenate(counts)
    reps = -(-n // m)
    counts = np.tile(counts, reps)[:n]
    indptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    nnz = int(indptr[-1])
    return sp.csr_matrix(
        (np.tile(data, reps)[:nnz], np.tile(indices, reps)[:nnz], indptr), shape=(n, genes)
    )


def counts_file(n: int, genes: int, path: Path) -> Path:
    import anndata as ad
    import pandas as pd

    from engine.io import write_h5ad

    x = sparse_counts(n, genes)
    a = ad.AnnData(
        X=x,
        obs=pd.DataFrame(index=[f"c{i}" for i in range(n)]),
        var=pd.DataFrame(index=[f"g{i}" for i in range(genes)]),
    )
    return write_h5ad(a, path, compression=None)  # pandas 3's string index included


# ----------------------------------------------------------------------------- the machine
def peaks_for(name: str) -> dict | None:
    for key, peak in PEAKS:
        if key.lower() in str(name).lower():
            return {"matched": key, **peak}
    return None


def machine(device: str) -> dict:
    import torch

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "device": device,
        "cpu_threads": torch.get_num_threads(),
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
    }
    for pkg in ("pytorch-lightning", "lightning", "anndata", "scanpy", "numpy", "scipy"):
        try:
            from importlib.metadata import version

            info[pkg] = version(pkg)
        except Exception:
            info[pkg] = None
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        info.update(
            card=p.name,
            card_memory_gb=round(p.total_memory / 2**30, 1),
            multiprocessors=p.multi_processor_count,
            peak_flops=peaks_for(p.name),
        )
        try:
            out = subprocess.run(
                ["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            info["nvidia_smi"] = out.stdout.strip()
            info["driver"] = out.stdout.strip().split(",")[-1].strip() if out.stdout else None
        except (OSError, subprocess.SubprocessError) as exc:
            info["nvidia_smi"] = f"unavailable: {exc}"
    else:
        info["card"] = None
    return info


# ----------------------------------------------------------------------------- VAE timing
def _timer_callback(base, warmup: int, seconds: float, sync):
    """A Lightning callback (subclass of ``base``) that times the steps after ``warmup`` to the
    end of the epoch or until ``seconds`` have passed, and then stops training."""

    class Timer(base):
        def __init__(self):
            self.t0 = self.dt = None
            self.steps = 0
            self.full_epoch = False
            self.batch = 0

        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if batch_idx == warmup:
                sync()
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            if self.t0 is None or self.dt is not None:
                return
            self.steps += 1
            x = batch["x"] if isinstance(batch, dict) and "x" in batch else None
            self.batch = int(x.shape[0]) if x is not None else self.batch
            if time.perf_counter() - self.t0 > seconds:
                sync()
                self.dt = time.perf_counter() - self.t0
                trainer.should_stop = True

        def on_train_epoch_end(self, trainer, module):
            if self.t0 is not None and self.dt is None:
                sync()
                self.dt = time.perf_counter() - self.t0
                self.full_epoch = True

    return Timer()


def flops_share(cells_per_s: float, genes: int, precision: str, peak: dict | None) -> dict:
    from bench.throughput import vae_train_flops_per_cell

    per_cell = vae_train_flops_per_cell(genes)
    achieved = cells_per_s * per_cell
    key = "bf16" if precision.startswith("bf16") else "fp32"
    return {
        "flops_per_cell": per_cell,
        "achieved_tflops": round(achieved / 1e12, 4),
        "peak_used": key,
        "share_of_peak": round(achieved / peak[key], 5) if peak else None,
    }


def _vae_size(n: int, args: dict, q) -> None:
    """All batch sizes and precisions at one size, in one process (the data built once)."""
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

    dev, genes = args["device"], args["genes"]
    cuda = dev == "cuda"

    def sync():
        if cuda:
            torch.cuda.synchronize()

    t = time.perf_counter()
    x = sparse_counts(n, genes)
    t_data = time.perf_counter() - t
    t = time.perf_counter()
    xm = DeviceMatrix(x, dev, budget=int(args["budget_gb"] * 2**30))
    sync()
    t_upload = time.perf_counter() - t
    peak = peaks_for(torch.cuda.get_device_name(0)) if cuda else None
    base = {
        "part": "vae",
        "method": "engine",
        "n": n,
        "genes": genes,
        "density": round(x.nnz / (n * genes), 4),
        "data_s": round(t_data, 2),
        "upload_s": round(t_upload, 2),
        "held_dense_on_device": xm.is_dense,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }
    idx = np.arange(n)
    for bs in args["batch_sizes"]:
        for precision in args["precisions"]:
            if precision != "32" and bs != max(args["batch_sizes"]) and not args["all_bf16"]:
                continue  # bf16 at the largest batch only (time box)
            rec = {**base, "batch_size": bs, "precision": precision}
            steps_in_epoch = n // bs
            if steps_in_epoch <= args["warmup"] + 2:
                q.put({**rec, "skipped": f"{steps_in_epoch} steps per epoch: too few to time"})
                continue
            try:
                torch.manual_seed(0)
                if cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                loader = Batches({"x": xm}, idx, bs, shuffle=True, seed=0, drop_last=True)
                timer = _timer_callback(pl.Callback, args["warmup"], args["seconds"], sync)
                trainer = pl.Trainer(
                    max_epochs=1,
                    precision=precision,
                    accelerator="gpu" if cuda else "cpu",
                    devices=1,
                    logger=False,
                    enable_progress_bar=False,
                    enable_model_summary=False,
                    enable_checkpointing=False,
                    num_sanity_val_steps=0,
                    limit_val_batches=0,
                    callbacks=[timer],
                )
                trainer.fit(LitModel(VAE(genes, 128, 10)), train_dataloaders=loader)
                cells = timer.steps * bs
                cps = cells / timer.dt
                rec.update(
                    cells_per_s=round(cps, 1),
                    timed_s=round(timer.dt, 3),
                    timed_steps=timer.steps,
                    full_epoch_timed=timer.full_epoch,
                    epoch_s=round(n / cps, 3),
                    peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1)
                    if cuda
                    else None,
                    data_on_device_mb=round(n * genes * 4 / 2**20, 1) if xm.is_dense else None,
                    **flops_share(cps, genes, precision, peak),
                )
            except Exception as exc:  # one failed configuration must not end the benchmark
                rec["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
                if cuda:
                    torch.cuda.empty_cache()
            q.put(rec)
    q.put(None)


def _in_child(target, *a) -> list[dict]:
    """Run ``target(*a, q)`` in a spawned process; collect what it puts until ``None``."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=target, args=(*a, q))
    p.start()
    out = []
    while True:
        try:
            item = q.get(timeout=5)
        except Exception:
            if not p.is_alive():
                break
            continue
        if item is None:
            break
        out.append(item)
        log(item)
    p.join(timeout=60)
    if p.exitcode not in (0, None) and not out:
        out.append({"error": f"child exit code {p.exitcode}"})
    return out


def part_vae(a: argparse.Namespace) -> list[dict]:
    args = {
        "device": a.device,
        "genes": a.genes,
        "batch_sizes": a.batch_sizes,
        "precisions": a.precisions,
        "seconds": a.seconds,
        "warmup": a.warmup,
        "budget_gb": a.budget_gb,
        "all_bf16": a.all_bf16,
    }
    out = []
    for n in a.sizes:
        out += [{**r, "n": r.get("n", n)} for r in _in_child(_vae_size, n, args)]
    return out


# ----------------------------------------------------------------------------- scvi-tools
def scvi_worker(
    n: int, genes: int, batch_sizes: list[int], seconds: float, warmup: int, device: str
) -> None:
    """SCVI (NB, 128 hidden, 10 latent, one layer) on the same counts, timed like the engine at
    each batch size; prints one ``RESULT {json}`` line per measurement."""
    warnings.filterwarnings("ignore")
    import torch

    cuda = device == "cuda"
    base = {
        "part": "vae",
        "method": "scvi",
        "n": n,
        "genes": genes,
        "precision": "32",
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
    }

    def emit(rec: dict) -> None:
        print("RESULT " + json.dumps(rec, default=str), flush=True)

    try:
        import anndata as ad
        import lightning.pytorch as lp
        import scvi
    except Exception as exc:
        emit({**base, "skipped": f"scvi-tools cannot be imported: {type(exc).__name__}: {exc}"})
        return
    base["version"] = scvi.__version__
    adata = ad.AnnData(X=sparse_counts(n, genes))
    t = time.perf_counter()
    scvi.model.SCVI.setup_anndata(adata)
    base["setup_s"] = round(time.perf_counter() - t, 2)
    peak = peaks_for(torch.cuda.get_device_name(0)) if cuda else None

    def sync():
        if cuda:
            torch.cuda.synchronize()

    for bs in batch_sizes:
        rec = {**base, "batch_size": bs}
        if n // bs <= warmup + 2:
            continue
        try:
            torch.manual_seed(0)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            model = scvi.model.SCVI(
                adata, n_hidden=128, n_latent=10, n_layers=1, gene_likelihood="nb"
            )
            timer = _timer_callback(lp.Callback, warmup, seconds, sync)
            model.train(
                max_epochs=1,
                accelerator="gpu" if cuda else "cpu",
                devices=1,
                batch_size=bs,
                train_size=1.0,
                early_stopping=False,
                enable_progress_bar=False,
                callbacks=[timer],
                logger=False,
                enable_checkpointing=False,
            )
            cps = timer.steps * bs / timer.dt
            rec.update(
                cells_per_s=round(cps, 1),
                timed_s=round(timer.dt, 3),
                timed_steps=timer.steps,
                full_epoch_timed=timer.full_epoch,
                epoch_s=round(n / cps, 3),
                peak_gpu_mb=round(torch.cuda.max_memory_allocated() / 2**20, 1) if cuda else None,
                **flops_share(cps, genes, "32", peak),
            )
        except Exception as exc:
            rec["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        emit(rec)


def part_scvi(a: argparse.Namespace) -> list[dict]:
    """Each size in a child python whose path adds ``--scvi-path`` (scvi-tools' own packages,
    kept out of the engine's process)."""
    env = dict(os.environ)
    if a.scvi_path:
        env["PYTHONPATH"] = os.pathsep.join([str(a.scvi_path), env.get("PYTHONPATH", "")])
    batch_sizes = a.scvi_batch_sizes or a.batch_sizes
    out: list[dict] = []
    for n in a.sizes:
        code = (
            "from bench.gpu_bench import scvi_worker; "
            f"scvi_worker({n}, {a.genes}, {batch_sizes!r}, {a.seconds}, {a.warmup}, {a.device!r})"
        )
        error = None
        try:
            proc = subprocess.run(
                [sys.executable, "-c", code],
                capture_output=True,
                text=True,
                cwd=ROOT,
                env=env,
                timeout=a.scvi_timeout,
            )
            stdout, stderr = proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
            stderr, error = "", f"over {a.scvi_timeout} s"
        recs = [json.loads(ln[7:]) for ln in stdout.splitlines() if ln.startswith("RESULT ")]
        if not recs or error:
            tail = (stderr.strip().splitlines() or ["?"])[-1][:300]
            recs.append({"part": "vae", "method": "scvi", "n": n, "error": error or tail})
        for rec in recs:
            log(rec)
        out += recs
        if any(r.get("skipped") for r in recs):
            break  # not installed: one message is enough
    return out


def ratios(records: list[dict]) -> list[dict]:
    """Engine / scvi-tools cells/s at each (size, batch size), fp32."""
    key = lambda r: (r.get("n"), r.get("batch_size"))  # noqa: E731
    scvi = {key(r): r for r in records if r.get("method") == "scvi" and r.get("cells_per_s")}
    out = []
    for r in records:
        if r.get("method") == "engine" and r.get("precision") == "32" and r.get("cells_per_s"):
            s = scvi.get(key(r))
            if s:
                out.append(
                    {
                        "n": r["n"],
                        "batch_size": r["batch_size"],
                        "engine_cells_per_s": r["cells_per_s"],
                        "scvi_cells_per_s": s["cells_per_s"],
                        "ratio": round(r["cells_per_s"] / s["cells_per_s"], 2),
                    }
                )
    return out


# ----------------------------------------------------------------------------- scGen
def scgen_data(a: argparse.Namespace, tmp: Path) -> tuple[str, dict, str]:
    """The H. polygyrus file when present, else 2,000 synthetic cells x 7,000 genes, logCPM."""
    if a.scgen_data and Path(a.scgen_data).exists():
        return str(a.scgen_data), HPOLY, Path(a.scgen_data).name
    from engine import preprocess as pp
    from engine.demos import synthetic_perturbation
    from engine.io import write_h5ad

    cells, genes = a.scgen_synthetic
    counts = synthetic_perturbation(n_cells=cells, n_genes=genes, seed=0)
    lognorm, _ = pp.apply(
        counts, pp.Recipe([pp.Step("keep_counts"), pp.Step("normalize", {"target_sum": 1e4})])
    )
    path = write_h5ad(lognorm, tmp / "scgen_synthetic.h5ad")
    return str(path), SYNTH, f"synthetic_perturbation({cells}x{genes}, seed=0) logCPM"


def scgen_once(data: str, design: dict, epochs: int, device: str, tmp: Path) -> dict:
    import pandas as pd

    from engine import io
    from engine.spec import RunSpec
    from engine.train import run

    out = tmp / f"scgen-{device}"
    shutil.rmtree(out, ignore_errors=True)
    spec = RunSpec(
        model="scgen",
        data=data,
        out=str(out),
        device=device,
        epochs=epochs,
        patience=epochs,
        seed=0,
        **design,
    )
    t = time.perf_counter()
    metrics = run(spec)
    wall = time.perf_counter() - t
    status = json.loads((out / "status.json").read_text())
    rows = pd.read_csv(out / "metrics.csv")
    return {
        "device": status.get("device"),
        "epochs_run": int(len(rows)),
        "train_s": status.get("elapsed_s"),
        "run_wall_s": round(wall, 2),
        "r2_mean_all": metrics.get("r2_mean_all"),
        "r2_mean_top100": metrics.get("r2_mean_top100"),
        "data_fingerprint": io.fingerprint(io.read(data)),
        "spec": {k: v for k, v in spec.to_dict().items() if k not in ("out", "data")},
    }


def part_scgen(a: argparse.Namespace, tmp: Path) -> dict:
    """scGen on the device, and the CPU R^2 of the same spec: from ``--scgen-cpu-json`` when it
    matches (same data fingerprint and epochs), else trained here on the CPU (``--scgen-cpu``
    auto), in the same script."""
    data, design, name = scgen_data(a, tmp)
    res: dict = {"part": "scgen", "data": name, "epochs": a.scgen_epochs, **design}
    res[a.device] = scgen_once(data, design, a.scgen_epochs, a.device, tmp)
    log({"part": "scgen", a.device: res[a.device]})
    if a.device == "cpu" or a.scgen_cpu == "no":
        return res
    cpu = None
    if a.scgen_cpu == "auto" and a.scgen_cpu_json and Path(a.scgen_cpu_json).exists():
        ref = json.loads(Path(a.scgen_cpu_json).read_text()).get("cpu") or {}
        same = ref.get("data_fingerprint") == res[a.device]["data_fingerprint"] and (
            ref.get("spec", {}).get("epochs") == a.scgen_epochs
        )
        if same:
            cpu = {**ref, "source": str(a.scgen_cpu_json)}
        else:
            res["cpu_note"] = f"{a.scgen_cpu_json} is for other data or epochs: trained here"
    if cpu is None:
        import torch

        torch.set_num_threads(os.cpu_count() or 1)
        cpu = scgen_once(data, design, a.scgen_epochs, "cpu", tmp)
        cpu["source"] = f"trained in this run on the CPU ({torch.get_num_threads()} threads)"
        log({"part": "scgen", "cpu": cpu})
    res["cpu"] = cpu
    if cpu.get("r2_mean_all") is not None and res[a.device].get("r2_mean_all") is not None:
        res["r2_diff_vs_cpu"] = round(res[a.device]["r2_mean_all"] - cpu["r2_mean_all"], 4)
    return res


# ----------------------------------------------------------------------------- submit latency
def first_live_point(data: Path, device: str, home: Path, timeout: float) -> dict:
    """Seconds from ``python -m engine submit`` to the first live point; the run is then killed
    (its process group: the supervisor and the training process it started)."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "SCWB_HOME": str(home), "PYTHONPATH": path}
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "submit", "--model", "vae", "--data", str(data)]
        + ["--epochs", "1000", "--device", device],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=120,
    )
    t_cli = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.strip()[-300:]}
    run_dir = Path(proc.stdout.strip().splitlines()[-1])
    rec: dict = {"submit_cli_s": round(t_cli, 2)}
    seen_running = None
    status: dict = {}
    try:
        while time.perf_counter() - t0 < timeout:
            try:
                status = json.loads((run_dir / "status.json").read_text())
            except (OSError, ValueError):
                status = {}
            if status.get("state") == "running" and seen_running is None:
                seen_running = time.perf_counter() - t0
            if status.get("state") in ("failed", "cancelled", "interrupted"):
                rec["error"] = f"run {status.get('state')}: {status.get('error')}"
                break
            live = float(status.get("epoch") or 0) > 0 or (run_dir / "metrics.csv").exists()
            if live:
                rec.update(
                    first_live_point_s=round(time.perf_counter() - t0, 2),
                    running_after_s=round(seen_running, 2) if seen_running else None,
                    epoch_at_first_point=status.get("epoch"),
                    cells_per_s_reported=status.get("cells_per_s"),
                    device=status.get("device"),
                )
                break
            time.sleep(0.05)
        else:
            rec["error"] = f"no live point within {timeout} s (state {status.get('state')})"
    finally:
        pid = (status or {}).get("supervisor_pid")
        if not pid:
            try:
                pid = json.loads((run_dir / "status.json").read_text()).get("supervisor_pid")
            except (OSError, ValueError):
                pid = None
        if pid:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(int(pid), signal.SIGKILL)  # submit started it in its own session
        if rec.get("error"):
            log_file = run_dir / "worker.log"
            if log_file.exists():
                rec["worker_log_tail"] = log_file.read_text(errors="replace")[-1500:]
    return rec


def part_submit(a: argparse.Namespace, tmp: Path) -> list[dict]:
    out = []
    os.environ["SCWB_MEMORY_BUDGET_GB"] = str(a.budget_gb)  # the runs hold the split on the card
    for n in a.submit_sizes:
        t = time.perf_counter()
        path = counts_file(n, a.genes, tmp / f"counts_{n}.h5ad")
        rec = {
            "part": "submit",
            "n": n,
            "genes": a.genes,
            "file_mb": round(path.stat().st_size / 2**20, 1),
            "write_s": round(time.perf_counter() - t, 2),
            "memory_budget_gb": a.budget_gb,
        }
        rec.update(first_live_point(path, a.device, tmp / f"home_{n}", a.submit_timeout))
        path.unlink(missing_ok=True)
        log(rec)
        out.append(rec)
    return out


# ----------------------------------------------------------------------------- pytest
def pytest_summary(junit: str | None) -> dict | None:
    if not junit or not Path(junit).exists():
        return None
    import xml.etree.ElementTree as ET

    root = ET.parse(junit).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    tot = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skipped = [], []
    for s in suites:
        for k in tot:
            tot[k] += int(s.get(k, 0))
        for case in s.iter("testcase"):
            name = f"{case.get('classname')}::{case.get('name')}"
            for tag in ("failure", "error"):
                el = case.find(tag)
                if el is not None:
                    failed.append({"test": name, "message": (el.get("message") or "")[:300]})
            el = case.find("skipped")
            if el is not None:
                skipped.append({"test": name, "reason": (el.get("message") or "")[:200]})
    tot["passed"] = tot["tests"] - tot["failures"] - tot["errors"] - tot["skipped"]
    return {**tot, "failed": failed, "skipped_tests": skipped}


# ----------------------------------------------------------------------------- main
def ints(text: str) -> list[int]:
    return [int(float(v)) for v in str(text).split(",") if v.strip()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu.json")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--dry-run", action="store_true", help="recorded in the results")
    ap.add_argument("--parts", default="vae,scvi,scgen,submit")
    ap.add_argument("--sizes", type=ints, default=ints("10000,200000,1000000"))
    ap.add_argument("--genes", type=int, default=2000)
    ap.add_argument("--batch-sizes", type=ints, default=ints("128,1024,4096"))
    ap.add_argument("--precisions", default="32,bf16-mixed")
    ap.add_argument(
        "--all-bf16", action="store_true", help="bf16 at every batch size (default: largest)"
    )
    ap.add_argument("--seconds", type=float, default=5.0, help="time box of one timed stretch")
    ap.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    ap.add_argument("--budget-gb", type=float, default=40.0, help="SCWB_MEMORY_BUDGET_GB")
    ap.add_argument("--scvi-path", help="folder with scvi-tools and its extra packages")
    ap.add_argument(
        "--scvi-batch-sizes",
        type=ints,
        default=ints("128,4096"),
        help="scvi-tools' batch sizes (fewer than the engine's: time box)",
    )
    ap.add_argument("--scvi-timeout", type=float, default=150.0, help="per size")
    ap.add_argument("--scgen-data", help="log-normalised .h5ad (hpoly_small.h5ad)")
    ap.add_argument(
        "--scgen-synthetic",
        type=ints,
        default=ints("2000,7000"),
        help="cells,genes of the synthetic set used when --scgen-data is absent",
    )
    ap.add_argument("--scgen-epochs", type=int, default=100)
    ap.add_argument(
        "--scgen-cpu",
        choices=["auto", "yes", "no"],
        default="auto",
        help="the CPU R^2: auto = from --scgen-cpu-json when it matches, else trained here",
    )
    ap.add_argument(
        "--scgen-cpu-json",
        default=str(ROOT / "bench" / "results" / "gpu" / "scgen_cpu.json"),
        help="the CPU reference (written by --parts scgen --device cpu)",
    )
    ap.add_argument("--submit-sizes", type=ints, default=ints("10000,1000000"))
    ap.add_argument("--submit-timeout", type=float, default=180.0)
    ap.add_argument("--pytest-junit", help="junit XML of the gpu tests, summarised in the results")
    a = ap.parse_args(argv)
    a.precisions = [p for p in a.precisions.split(",") if p]
    a.parts = [p for p in a.parts.split(",") if p]
    return a


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    a = parse(argv)
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "dry_run": a.dry_run,
        "args": {k: v for k, v in vars(a).items()},
        "machine": machine(a.device),
        "pytest_gpu": pytest_summary(a.pytest_junit),
        "parts_s": {},
    }
    if a.device == "cuda" and not results["machine"].get("card"):
        results["error"] = "no CUDA device"

    def save() -> None:
        tmp_file = out_dir / ".gpu.json.tmp"
        tmp_file.write_text(json.dumps(results, indent=2, default=str))
        tmp_file.replace(out_dir / "gpu.json")

    save()
    with tempfile.TemporaryDirectory(prefix="scwb-gpu-bench-") as tmp_s:
        tmp = Path(tmp_s)
        for part in a.parts:
            t = time.perf_counter()
            try:
                if part == "vae":
                    results["vae"] = part_vae(a)
                elif part == "scvi":
                    results["scvi"] = part_scvi(a)
                elif part == "scgen":
                    results["scgen"] = part_scgen(a, tmp)
                elif part == "submit":
                    results["submit"] = part_submit(a, tmp)
                else:
                    results.setdefault("errors", []).append(f"unknown part {part!r}")
            except Exception as exc:
                traceback.print_exc()
                results.setdefault("errors", []).append(
                    f"{part}: {type(exc).__name__}: {str(exc)[:300]}"
                )
            results["parts_s"][part] = round(time.perf_counter() - t, 1)
            if "vae" in results and "scvi" in results:
                results["engine_vs_scvi"] = ratios(results["vae"] + results["scvi"])
            save()
    if a.device == "cpu" and "scgen" in results and not a.dry_run:
        ref = out_dir / "scgen_cpu.json"  # the CPU reference a GPU run compares with
        ref.write_text(json.dumps(results["scgen"], indent=2, default=str))
    log({"written": str(out_dir / "gpu.json"), "parts_s": results["parts_s"]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
