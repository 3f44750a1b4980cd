"""How long a run will take on this machine, before it is submitted; torch-free.

The cost of one training cell is counted from the model's dense layers (``2 * in * out`` FLOPs per
linear layer forward, three times that with the backward pass) plus a fixed cost per optimiser
step; the machine's speed comes from, best first:

1. earlier completed runs of the same model on this device (``cells_per_s`` in their
   ``status.json``, which already includes validation and logging), scaled to the new shape;
2. a short warm-up benchmark of this device (plain PyTorch, a few seconds), cached in
   ``$SCWB_HOME/throughput.json`` and run in a subprocess (``python -m engine.estimate --bench
   cpu``), so the app process never imports torch; earlier runs of other models calibrate it.

On a CPU the default epochs are shortened to fit a few minutes (``SCWB_CPU_BUDGET_S``, 180 s);
on a GPU each model keeps its published default.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from engine import models, runs, workspace

MIN_EPOCHS = 5
# never shortened below this many optimiser steps (or the published epochs, if fewer): scGen cut
# to 5 epochs (110 steps on 700 cells) lost to the mean-shift baseline it beats at 100; the scGen
# package's early stopping ends near 1,400 steps on a 2,000-cell set
MIN_STEPS = 1000
VAL_COST = 0.05  # validation: 1/8 of the training cells, forward only, in large batches
LIGHTNING_STEP_S = {"cpu": 0.0015, "cuda": 0.0015, "mps": 0.002}  # hooks, callback, loader
DEFAULT_STARTUP_S = {"cpu": 20.0, "cuda": 30.0, "mps": 25.0}  # process start, imports, reading
BENCH_FILE = "throughput.json"


def budget_s() -> float:
    from engine import settings

    return settings.get().cpu_budget_s


# ----------------------------------------------------------------------------- model cost
def _widths(text: Any) -> list[int]:
    if isinstance(text, (list, tuple)):
        return [int(v) for v in text]
    return [int(p) for p in str(text).replace(" ", "").split(",") if p]


def dense_layers(
    model: str,
    n_genes: int,
    params: dict[str, Any] | None = None,
    n_classes: int = 2,
    n_batch: int = 0,
) -> list[tuple[int, int]]:
    """(in, out) of every linear layer of ``model`` on ``n_genes`` inputs (the registry's
    ``models.dense_layers``); empty for the scikit-learn baselines."""
    info = models.get(model)
    if info.kind == "sklearn":
        return []
    p = {**info.defaults(), **(params or {})}
    layers = models.dense_layers(info, p, int(n_genes), int(n_classes), int(n_batch))
    # a model added to the registry without a cost formula: a one-layer guess, never a crash
    return layers or [(int(n_genes), 128), (128, int(n_genes))]


def flops_per_cell(model: str, n_genes: int, params=None, n_classes: int = 2, n_batch: int = 0):
    """Dense-layer FLOPs to train on one cell: forward 2*in*out per layer, backward twice that."""
    return 3.0 * sum(2 * a * b for a, b in dense_layers(model, n_genes, params, n_classes, n_batch))


# ----------------------------------------------------------------------------- this machine
@dataclass
class Device:
    kind: str  # cpu | cuda | mps
    name: str  # "CPU (12 threads)", "NVIDIA H100 80GB HBM3"


def _cpu_threads() -> int:
    env = os.environ.get("OMP_NUM_THREADS")
    if env and env.isdigit() and int(env) > 0:
        return int(env)
    from engine.device import usable_cores

    return usable_cores()


@functools.cache
def _gpu_names() -> list[str]:
    from engine import jobs

    if jobs.gpu_count() == 0 or not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        return [line.strip() for line in out.stdout.splitlines() if line.strip()]
    except (OSError, subprocess.SubprocessError):
        return []


def device(requested: str = "auto") -> Device:
    """The device a run asking for ``requested`` would use here (without importing torch)."""
    gpus = _gpu_names() if requested in ("auto", "cuda", "gpu") else []
    if gpus:
        return Device("cuda", gpus[0])
    bench = (read_benchmarks().get("cpu") or {}) if requested != "mps" else {}
    return Device("cpu", bench.get("name") or f"CPU ({_cpu_threads()} threads)")


# ----------------------------------------------------------------------------- benchmark
def bench_path() -> Path:
    return workspace.home() / BENCH_FILE


def read_benchmarks() -> dict[str, dict]:
    """The cached warm-up measurements of this host, by device kind."""
    data = runs.read_json(bench_path(), {}) or {}
    host = socket.gethostname()
    return {
        k: v
        for k, v in data.items()
        if isinstance(v, dict) and v.get("host") == host and v.get("step_s") and v.get("flop_rate")
    }


def benchmark_pending(kind: str) -> bool:
    from engine import procs

    lock = runs.read_json(bench_path().with_suffix(f".{kind}.lock"), {}) or {}
    return bool(lock.get("pid")) and procs.pid_alive(lock["pid"], "engine.estimate")


def start_benchmark(kind: str = "cpu") -> bool:
    """Measure this device in a detached subprocess unless a measurement exists or is running;
    True while one is (now) running. ``SCWB_BENCHMARK=0`` turns it off."""
    from engine import settings

    if not settings.get().benchmark or kind in read_benchmarks():
        return False
    if benchmark_pending(kind):
        return True
    lock = bench_path().with_suffix(f".{kind}.lock")
    tried = (runs.read_json(lock, {}) or {}).get("started", 0)
    failed = (runs.read_json(bench_path(), {}) or {}).get(kind, {})
    if time.time() - float(tried or 0) < 600 or (
        isinstance(failed, dict)
        and failed.get("failed")
        and failed.get("host") == socket.gethostname()
    ):
        return False  # it died or failed lately: no retry loop
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.estimate", "--bench", kind, "--out", str(bench_path())],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
        close_fds=True,
        env=env,
    )
    runs.write_json(lock, {"pid": proc.pid, "started": time.time()})
    return True


def _bench(kind: str, seconds: float = 1.5) -> dict[str, Any]:
    """Time plain-PyTorch training steps (Adam) of a tiny network (the fixed cost per step) and
    of a wide one with a small and a large batch (the cost per weight per step, the optimiser's
    share, and the FLOP rate of the forward and backward passes)."""
    import torch
    from torch import nn

    dev = torch.device("cuda" if kind == "cuda" else kind)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def per_step(shape: list[int], batch: int, share: float) -> float:
        layers: list[nn.Module] = []
        for a, b in zip(shape[:-1], shape[1:], strict=True):
            layers += [nn.Linear(a, b), nn.ReLU()]
        net = nn.Sequential(*layers[:-1]).to(dev)
        opt = torch.optim.Adam(net.parameters(), lr=1e-3)
        x = torch.randn(batch, shape[0], device=dev)

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            loss = (net(x) - x[:, : shape[-1]]).pow(2).mean()
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        # the fastest of five stretches (as timeit does): another process busy for a moment
        # made the mean of one stretch 10-30x slow, and the figure is cached for good
        best = float("inf")
        for _ in range(5):
            sync()
            n, t0 = 0, time.perf_counter()
            while time.perf_counter() - t0 < seconds * share / 5 or n < 2:
                step()
                n += 1
            sync()
            best = min(best, (time.perf_counter() - t0) / n)
        return best

    wide = [1000, 1000, 1000] if kind == "cpu" else [4096] * 4
    small, large = (8, 512) if kind == "cpu" else (8, 8192)
    tiny = per_step([64, 16, 64], 128, 0.2)
    t_small = per_step(wide, small, 0.4)
    t_large = per_step(wide, large, 0.4)
    pairs = list(zip(wide[:-1], wide[1:], strict=True))
    flops = 3 * sum(2 * a * b for a, b in pairs)
    weights = sum(a * b + b for a, b in pairs)
    per_cell = max((t_large - t_small) / (large - small), 1e-12)
    name = (
        torch.cuda.get_device_name(0)
        if kind == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    return {
        "name": name,
        "host": socket.gethostname(),
        "threads": torch.get_num_threads(),
        "step_s": tiny,
        "weight_s": max(t_small - tiny - small * per_cell, 0.0) / weights,
        "flop_rate": flops / per_cell,
        "measured": runs.now(),
        "torch": torch.__version__,
    }


# ----------------------------------------------------------------------------- earlier runs
def _ts(text: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(text)).timestamp()
    except (TypeError, ValueError):
        return None


def earlier_runs(dev: Device, root: Path | None = None, limit: int = 200) -> list[dict[str, Any]]:
    """Completed torch runs on this device (same host when recorded), newest first: model, shape,
    batch size, measured cells/s and the time outside the training loop."""
    root = Path(root or workspace.runs_dir())
    host = socket.gethostname()
    out = []
    dirs = sorted((p for p in root.iterdir() if p.is_dir()), reverse=True) if root.exists() else []
    for p in dirs[:limit]:
        status = runs.read_status(p)
        if status.get("state") != "completed" or not status.get("cells_per_s"):
            continue
        if status.get("host") and status["host"] != host:
            continue
        spec = runs.read_json(p / "run.json", {}) or {}
        if spec.get("device_name") != dev.name and status.get("device") != dev.name:
            continue
        try:
            info = models.get(spec.get("model", ""))
        except Exception:
            continue
        if info.kind != "torch" or not spec.get("data_shape"):
            continue
        started, finished = _ts(status.get("started")), _ts(status.get("finished"))
        elapsed = float(status.get("elapsed_s") or 0)
        out.append(
            {
                "id": p.name,
                "model": info.name,
                "n_genes": int(spec["data_shape"][1]),
                "params": spec.get("params") or {},
                "batch_size": int(spec.get("batch_size") or info.batch_size),
                "cells_per_s": float(status["cells_per_s"]),
                "after_s": max(0.0, finished - started - elapsed) if started and finished else None,
            }
        )
    return out


# ----------------------------------------------------------------------------- the estimate
def n_weights(model: str, n_genes: int, params=None, n_classes: int = 2, n_batch: int = 0) -> int:
    """Weights and biases of the dense layers (what the optimiser updates every step)."""
    return sum(a * b + b for a, b in dense_layers(model, n_genes, params, n_classes, n_batch))


# a guess of a modest CPU / GPU, used only to rescale a measured speed to another shape
GUESS = {
    "cpu": {"step_s": 0.003, "weight_s": 5e-9, "flop_rate": 1e10},
    "cuda": {"step_s": 0.002, "weight_s": 1e-11, "flop_rate": 1e13},
}


def seconds_per_cell(
    speed: dict, model: str, n_genes: int, params=None, batch: int = 128, n_classes: int = 2
) -> float:
    """Training seconds per cell: the fixed and per-weight cost of a step shared by its ``batch``
    cells, plus the cell's own FLOPs; validation adds ``VAL_COST``."""
    per_step = speed["step_s"] + n_weights(model, n_genes, params, n_classes) * speed["weight_s"]
    flops = flops_per_cell(model, n_genes, params, n_classes)
    return (per_step / max(int(batch), 1) + flops / speed["flop_rate"]) * (1 + VAL_COST)


@dataclass
class Estimate:
    model: str
    kind: str  # torch | sklearn
    device: Device
    epochs: int | None  # what the run will get (None: a one-step baseline)
    published_epochs: int | None
    shortened: bool
    n_train: int
    seconds: float | None  # None: unknown yet
    source: str  # where the speed comes from
    pending: bool = False  # a benchmark is measuring this machine now
    n_models: int = 1  # leave-one-out: one model per target
    over_budget: bool = False  # the fewest epochs that train the model take longer than the budget
    startup_s: float = 0.0  # in ``seconds``: starting the process and reading the data
    full_batch: bool = False  # L-BFGS: one step an epoch, ending once converged (epochs: a cap)

    @property
    def where(self) -> str:
        return "GPU" if self.device.kind == "cuda" else self.device.name

    def epochs_text(self) -> str:
        if self.epochs is None:
            return "no epochs (fitted in one step)"
        if self.full_batch:  # 'epochs: 50' read as 50 epochs for a fit that converged at 6
            return (
                self._epochs_text(f"up to {self.epochs}")
                + " · one full-batch L-BFGS step per epoch, ending once converged"
            )
        return self._epochs_text(str(self.epochs))

    def _epochs_text(self, n: str) -> str:
        if self.shortened and self.over_budget:
            return (
                f"epochs: {n} (shortened on this CPU, to the fewest that give this model "
                f"~{MIN_STEPS:,} optimiser steps, longer than ~{fmt_duration(budget_s())}; "
                f"published default {self.published_epochs})"
            )
        if self.shortened:
            return (
                f"epochs: {n} (shortened to fit ~{fmt_duration(budget_s())} on this CPU; "
                f"published default {self.published_epochs})"
            )
        if self.over_budget:
            return (
                f"epochs: {n} (published default: longer than "
                f"~{fmt_duration(budget_s())} on this CPU, but fewer would leave it under-trained)"
            )
        if self.published_epochs and self.epochs == self.published_epochs:
            if self.seconds is None:
                return f"epochs: {n} (published default)"
            why = "on this GPU" if self.device.kind == "cuda" else "fits on this CPU"
            return f"epochs: {n} (published default, {why})"
        return f"epochs: {n}"

    def text(self) -> str:
        if self.kind == "sklearn":
            return "fitted in one step: seconds to a minute on the CPU"
        if self.seconds is None:
            return (
                "measuring this machine's speed (a few seconds)..."
                if self.pending
                else "no estimate yet: no earlier run or benchmark on this device"
            )
        models_part = f" x {self.n_models} models (leave-one-out)" if self.n_models > 1 else ""
        # the fixed part named: '20 s' for a 2-epoch run read as the training's own time
        start = f"~{fmt_duration(self.startup_s)} to start and read the data, then " * bool(
            self.startup_s
        )
        lead, cap = ("at most about", "up to ") if self.full_batch else ("about", "")
        return (
            f"{lead} {fmt_duration(self.seconds)} on {self.device.name}: {start}{cap}"
            f"{self.epochs} epochs x {self.n_train:,} training cells{models_part}; {self.source}"
        )


def fmt_duration(seconds: float) -> str:
    s = max(0.0, float(seconds))
    if s < 60:
        return f"{max(5, int(round(s / 5) * 5))} s"
    if s < 3600:
        return f"{int(round(s / 60))} min"
    h, m = divmod(int(round(s / 60)), 60)
    return f"{h} h {m} min" if m else f"{h} h"


def estimate(
    model: str,
    n_genes: int,
    n_train: int,
    params: dict[str, Any] | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    requested: str = "auto",
    n_classes: int = 2,
    n_models: int = 1,
    dev: Device | None = None,
    start: bool = True,
) -> Estimate:
    """The run's duration and its default epochs on the device ``requested`` would use.

    ``epochs`` None: the model's published default, shortened on a CPU to fit ``budget_s()``.
    ``start``: begin measuring this machine in the background when nothing is known yet.
    """
    info = models.get(model)
    dev = dev or device(requested)
    if info.kind == "sklearn":
        return Estimate(model, "sklearn", dev, None, None, False, n_train, 5.0, "one fit")
    batch = int(batch_size or info.batch_size)
    rate, source = None, ""
    bench = read_benchmarks().get(dev.kind)
    past = earlier_runs(dev)
    same = [r for r in past if r["model"] == model]

    def spc(speed: dict, r: dict | None = None) -> float:
        if r is None:
            return seconds_per_cell(speed, model, n_genes, params, batch, n_classes)
        return seconds_per_cell(speed, r["model"], r["n_genes"], r["params"], r["batch_size"])

    def plural(n: int) -> str:
        return f"{n} earlier run{'s' * (n > 1)}"

    if bench:
        speed = {
            **bench,
            "step_s": bench["step_s"] + LIGHTNING_STEP_S.get(dev.kind, 0.002),
            "weight_s": bench.get("weight_s", 0.0),
        }
        rate = 1.0 / spc(speed)
        # other models calibrate only a network of about their size: what separates a small
        # network's real speed from the benchmark's (fixed costs per step) does not scale to
        # one a hundred times larger (three small runs made a first scGen 100x too slow: a
        # browser pass)
        size = max(n_weights(model, n_genes, params, n_classes), 1)
        similar = [
            r for r in past if 0.1 <= n_weights(r["model"], r["n_genes"], r["params"]) / size <= 10
        ]
        calib = (same or similar)[:20]
        if calib:  # how far this machine's real runs were from the benchmark's prediction
            rate *= statistics.median(r["cells_per_s"] * spc(speed, r) for r in calib)
            source = (
                f"measured from {plural(len(calib))}"
                if same
                else f"warm-up benchmark of this machine, calibrated by {plural(len(calib))}"
            )
        elif past:
            source = (
                "from a warm-up benchmark of this machine (rough: no earlier run of a "
                "network this size to calibrate it)"
            )
        else:
            source = "from a warm-up benchmark of this machine"
    elif same:  # no benchmark: the same model's measured speed, rescaled to this shape
        guess = GUESS["cuda" if dev.kind == "cuda" else "cpu"]
        rate = statistics.median(r["cells_per_s"] * spc(guess, r) for r in same[:20]) / spc(guess)
        source = f"measured from {plural(len(same[:20]))}"
    pending = False
    if rate is None and start:
        pending = start_benchmark(dev.kind)
    afters = [r["after_s"] for r in same if r["after_s"] is not None]
    startup = DEFAULT_STARTUP_S.get(dev.kind, 20.0) + (statistics.median(afters) if afters else 0)
    published = info.epochs
    shortened = over_budget = False
    full_batch = {**info.defaults(), **(params or {})}.get("solver") == "lbfgs"
    if epochs is None:
        epochs = published
        if dev.kind == "cpu" and rate:
            per_epoch = n_train * n_models / rate
            fit = int((budget_s() - startup) / per_epoch) if per_epoch > 0 else published
            if fit < published and full_batch:  # one L-BFGS step an epoch: cut to the budget
                epochs, shortened = max(MIN_EPOCHS, fit), True
            elif fit < published:
                floor = max(MIN_EPOCHS, math.ceil(MIN_STEPS * batch / max(int(n_train), 1)))
                floor = min(published, floor)
                epochs, over_budget = max(floor, fit), fit < floor
                shortened = epochs < published
    seconds = None
    if rate:
        seconds = startup + epochs * n_train * n_models / rate
    return Estimate(
        model,
        "torch",
        dev,
        int(epochs),
        published,
        shortened,
        int(n_train),
        seconds,
        source,
        pending,
        n_models,
        over_budget,
        startup,
        full_batch,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m engine.estimate")
    ap.add_argument("--bench", choices=("cpu", "cuda", "mps"), required=True)
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else bench_path()
    try:
        try:
            result = _bench(args.bench)
        except Exception as exc:  # recorded, so that the app does not start it again and again
            result = {"host": socket.gethostname(), "failed": f"{type(exc).__name__}: {exc}"[:300]}
        data = runs.read_json(out, {}) or {}
        data[args.bench] = result
        runs.write_json(out, data)
    finally:
        out.with_suffix(f".{args.bench}.lock").unlink(missing_ok=True)
    print(json.dumps(result))
    return 0 if math.isfinite(result.get("flop_rate", float("nan"))) else 1


if __name__ == "__main__":
    sys.exit(main())
