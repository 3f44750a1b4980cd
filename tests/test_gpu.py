"""The engine on a CUDA card: every model, the queue's GPU slots, the split on the device, bf16
mixed precision, and a GPU checkpoint used on the CPU.

Every test here is marked ``gpu`` and skipped where ``torch.cuda.is_available()`` is false.
``SCWB_TEST_DEVICE=cpu`` runs the same bodies on the CPU (a self-check of the tests themselves on
a machine without a GPU); ``bench/gpu.sh`` runs them on the card with ``pytest -m gpu``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from engine import models

ROOT = Path(__file__).resolve().parent.parent
DEVICE = os.environ.get("SCWB_TEST_DEVICE", "cuda").strip().lower() or "cuda"
# conftest points PYTHONPATH at the repository alone; child processes here also keep the path
# they were started with (bench/gpu.sh installs the missing packages to a folder on it)
CHILD_PYTHONPATH = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
RUN_FILES = (
    "run.json",
    "status.json",
    "metrics.csv",
    "metrics.json",
    "model.pt",
    "model.json",
    "split.npz",
    "results.h5ad",
)


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _skip_reason() -> str | None:
    if DEVICE not in ("cuda", "cpu"):
        return f"SCWB_TEST_DEVICE={DEVICE!r}: use cuda (the default) or cpu"
    if DEVICE == "cuda" and not _cuda_available():
        return (
            "no CUDA GPU: torch.cuda.is_available() is false "
            "(SCWB_TEST_DEVICE=cpu runs these test bodies on the CPU)"
        )
    return None


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_skip_reason() is not None, reason=_skip_reason() or ""),
]


# ----------------------------------------------------------------------------- helpers
def card_name() -> str:
    from engine import device

    return device.device_name(DEVICE)


def has_field(name: str) -> bool:
    from engine.spec import RunSpec

    return name in {f.name for f in dataclasses.fields(RunSpec)}


PERTURB = {
    "condition_key": "condition",
    "ctrl": "control",
    "stim": "stimulated",
    "cell_type_key": "cell_type",
    "predict": "B cell",
}
SMALL_PARAMS = {
    "mlp": {"hidden": "32"},
    "vae": {"n_hidden": 32, "n_latent": 8, "kl_warmup": 2},
    "scgen": {"n_hidden": 64, "n_latent": 16},
}


def spec_for(model: str, counts_file: str, lognorm_file: str, out: Path, **over):
    """A small, fast RunSpec for ``model`` on the shared test data, on ``DEVICE``."""
    from engine.spec import RunSpec

    info = models.get(model)
    kw: dict = {
        "model": model,
        "out": str(out),
        "device": DEVICE,
        "epochs": 2,
        "seed": 0,
        "params": dict(SMALL_PARAMS.get(model, {})),
    }
    if info.task == "classify":
        kw.update(data=lognorm_file, label_key="cell_type")
    elif info.task == "reconstruct":
        kw.update(data=lognorm_file)
    elif info.task == "embed":
        kw.update(data=counts_file, label_key="cell_type")
    else:  # perturb
        kw.update(data=lognorm_file, **PERTURB)
    params = over.pop("params", None)
    if params:
        kw["params"].update(params)
    kw.update(over)
    return RunSpec(**kw)


def check_run_folder(run_dir: Path) -> dict:
    """Every file of the run-folder contract, state completed, finite metrics; return them."""
    import anndata as ad
    import pandas as pd

    missing = [f for f in RUN_FILES if not (run_dir / f).exists()]
    assert not missing, f"{run_dir} lacks {missing}"
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "completed", status
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert len(rows) >= 1 and "epoch" in rows
    metrics = json.loads((run_dir / "metrics.json").read_text())
    numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    assert numbers, metrics
    # undefined by design: a silhouette over one label; the change of "control unchanged" (no
    # change has no correlation or direction: NaN, shown as a dash)
    from engine import metric_names

    undefined = {p + k for p in metric_names.NO_CHANGE for k in metric_names.CHANGE_METRICS}
    bad = {
        k: v
        for k, v in numbers.items()
        if not math.isfinite(v) and not k.endswith("silhouette") and k not in undefined
    }
    assert not bad, f"non-finite metrics {bad}"
    for k in undefined & set(numbers):
        assert math.isnan(numbers[k]), f"{k} = {numbers[k]}: the unchanged control has no change"
    split = np.load(run_dir / "split.npz")
    assert len(split["train"]) > 0
    res = ad.read_h5ad(run_dir / "results.h5ad")
    assert res.n_obs > 0
    return metrics


def load_weights_on_cpu(path: Path) -> dict:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and state
    return state


# ----------------------------------------------------------------------------- every model
@pytest.mark.parametrize("model", list(models.REGISTRY))
def test_every_model_trains_on_the_device(model, counts_file, lognorm_file, tmp_path):
    from engine.train import run

    spec = spec_for(model, counts_file, lognorm_file, tmp_path / "run")
    run(spec)
    run_dir = tmp_path / "run"
    check_run_folder(run_dir)
    record = json.loads((run_dir / "run.json").read_text())
    status = json.loads((run_dir / "status.json").read_text())
    assert record["device_used"] == DEVICE
    assert record["device_name"] == status["device"] == card_name()
    if DEVICE == "cuda":
        assert "CPU" not in status["device"]
    state = load_weights_on_cpu(run_dir / "model.pt")
    if models.get(model).kind == "torch":
        import torch

        tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
        assert tensors and all(t.device.type == "cpu" for t in tensors)


# ----------------------------------------------------------------------------- the queue
def test_submitted_run_gets_its_slot_gpu_and_names_the_card(counts_file, tmp_path, monkeypatch):
    """A queued run's training process sees CUDA_VISIBLE_DEVICES = its slot and status.json names
    the card; the first live point arrives, and a cancel ends it."""
    from engine import jobs, runs

    monkeypatch.delenv("SCWB_SLOTS", raising=False)
    monkeypatch.setenv("PYTHONPATH", CHILD_PYTHONPATH)
    spec = spec_for("vae", counts_file, "", tmp_path / "unused", epochs=500)
    run_dir = jobs.submit(spec)
    env: dict[str, str] | None = None
    status: dict = {}
    try:
        deadline = time.time() + 240
        while time.time() < deadline:
            status = runs.read_status(run_dir)
            assert status["state"] in ("queued", "running"), status
            if env is None and status.get("pid") and status["state"] == "running":
                try:
                    raw = Path(f"/proc/{status['pid']}/environ").read_bytes()
                    env = dict(
                        kv.split("=", 1)
                        for kv in raw.decode(errors="replace").split("\0")
                        if "=" in kv
                    )
                except OSError:
                    pass
            if env is not None and status.get("device") and float(status.get("epoch") or 0) > 0:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"no live point within 240 s: {status}")
    finally:
        if runs.read_status(run_dir).get("state") in runs.ACTIVE:
            jobs.cancel(run_dir)
        end = jobs.wait(run_dir, timeout=120)
    assert end["state"] in ("cancelled", "completed"), end
    assert status["device"] == card_name()
    inherited = os.environ.get("CUDA_VISIBLE_DEVICES")
    if DEVICE == "cuda" and jobs.gpu_count() > 0:
        # slot i is the i-th GPU this process sees: the i-th entry of an inherited list (a
        # scheduler's allocation), else physical GPU i
        ids = [v.strip() for v in inherited.split(",")] if inherited else None
        expected = ids[status["slot"]] if ids else str(status["slot"])
        assert env.get("CUDA_VISIBLE_DEVICES") == expected, (
            env.get("CUDA_VISIBLE_DEVICES"),
            expected,
        )
    else:  # no GPU visible: the worker leaves the variable as it found it
        assert env.get("CUDA_VISIBLE_DEVICES") == inherited


# ----------------------------------------------------------------------------- the split
def test_split_is_held_on_the_device_when_it_fits(counts_adata):
    import torch

    from engine.data import Batches, DeviceMatrix

    x = counts_adata.X
    held = DeviceMatrix(x, DEVICE, budget=2**30)
    assert held.is_dense
    assert held.dense.device.type == DEVICE
    np.testing.assert_array_equal(held.dense[:5].cpu().numpy(), x[:5].toarray())
    # over the budget: sparse on the host, each batch densified and moved to the device
    streamed = DeviceMatrix(x, DEVICE, budget=1024)
    assert not streamed.is_dense
    idx = torch.arange(0, 64)
    assert streamed.rows(idx).device.type == DEVICE
    torch.testing.assert_close(streamed.rows(idx), held.rows(idx))
    batch = next(iter(Batches({"x": held}, np.arange(x.shape[0]), 128, shuffle=True)))
    assert batch["x"].device.type == DEVICE and batch["x"].shape == (128, x.shape[1])


# ----------------------------------------------------------------------------- bf16
# bf16 keeps 8 bits of mantissa (relative rounding 2^-9 ~ 0.2%). Under autocast the matrix
# products run in bf16 while softmax, log, lgamma, the losses and the optimiser stay in fp32, so the
# rounding moves each step a little and the training path drifts from fp32's, as a change of seed
# does. The claim tested is therefore: bf16-mixed moves a metric no more than twice the distance
# between two fp32 seeds (the seed also draws the split), never more than the stated floor where
# the seeds agree more closely than that, and never more than three times that floor.
# Measured: VAE test ELBO 0.01% apart after 4 and 20 epochs on the CPU, latent kNN equal. scGen R²
# (mean, all genes) after 15 epochs, still far from converged: fp32 seeds 0.690 and 0.631 on the
# CPU (bf16 0.674 and 0.620), and on an H100 fp32 0.659 against bf16 0.740 (seed 0): 0.08 apart,
# which failed the first version of this test (a fixed 0.03). After 60 epochs the fp32 seeds give
# 0.925, 0.946 and 0.926 on the CPU, so scGen now trains 60 epochs (not yet timed on a card: 4x
# the old test's epochs, 3 runs; about ten minutes in bf16 on a CPU, which the dry run leaves out).
BF16_EPOCHS = {"vae": 4, "scgen": 60}
BF16_TOL = {
    "vae": {"test_elbo": ("rel", 0.01), "latent_knn_accuracy": ("abs", 0.05)},
    "scgen": {"r2_mean_all": ("abs", 0.03), "r2_mean_top100": ("abs", 0.05)},
}


def _apart(kind: str, a: float, b: float) -> float:
    return abs(a - b) / max(abs(a), 1e-12) if kind == "rel" else abs(a - b)


@pytest.mark.parametrize("model", ["vae", "scgen"])
def test_bf16_mixed_matches_fp32(model, counts_file, lognorm_file, tmp_path):
    if not has_field("precision"):
        pytest.skip("RunSpec has no 'precision' field yet (the integrator adds it)")
    from engine.train import run

    out = {}
    for precision, seed in (("32", 0), ("32", 1), ("bf16-mixed", 0)):
        folder = tmp_path / f"{precision}-{seed}"
        spec = spec_for(
            model,
            counts_file,
            lognorm_file,
            folder,
            epochs=BF16_EPOCHS[model],
            precision=precision,
            seed=seed,
        )
        run(spec)
        out[precision, seed] = check_run_folder(folder)
        assert json.loads((folder / "run.json").read_text())["precision"] == precision
    fp32, other_seed, bf16 = out["32", 0], out["32", 1], out["bf16-mixed", 0]
    for key, (kind, floor) in BF16_TOL[model].items():
        seeds_apart = _apart(kind, fp32[key], other_seed[key])
        allowed = min(max(floor, 2 * seeds_apart), 3 * floor)  # one odd seed cannot excuse all
        diff = _apart(kind, fp32[key], bf16[key])
        assert diff <= allowed, (
            f"{model} {key}: fp32 {fp32[key]} vs bf16 {bf16[key]} ({kind} diff {diff:.4g}), more "
            f"than {allowed:.4g} (fp32 seed 1 gave {other_seed[key]}: {seeds_apart:.4g} apart)"
        )
    if DEVICE == "cpu":  # deterministic on the CPU: identical numbers would mean fp32 ran twice
        assert any(fp32[k] != bf16[k] for k in BF16_TOL[model]), "bf16-mixed changed nothing"


# ----------------------------------------------------------------------------- checkpoints
# fp32 on both sides: only the order of summation differs between cuBLAS and the CPU (~1e-6
# relative); the tolerance leaves room for TF32 matrix products (10-bit mantissa, ~1e-3) should a
# library switch them on.
PREDICT_TOL = 2e-3


@pytest.mark.parametrize("model", ["mlp", "autoencoder", "vae"])
def test_checkpoint_from_the_device_predicts_the_same_on_the_cpu(
    model, counts_file, lognorm_file, tmp_path
):
    import anndata as ad

    from engine.train import run

    spec = spec_for(model, counts_file, lognorm_file, tmp_path / "run")
    run(spec)
    run_dir = tmp_path / "run"
    check_run_folder(run_dir)
    load_weights_on_cpu(run_dir / "model.pt")
    out = tmp_path / "pred.h5ad"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": CHILD_PYTHONPATH}
    proc = subprocess.run(
        [sys.executable, "-m", "engine", "predict", "--run", str(run_dir)]
        + ["--data", spec.data, "-o", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    trained = ad.read_h5ad(run_dir / "results.h5ad")
    pred = ad.read_h5ad(out)
    if model == "mlp":
        pairs = [(trained.obs["pred_confidence"], pred.obs["pred_confidence"])]
        assert (
            trained.obs["pred_cell_type"].astype(str) == pred.obs["pred_cell_type"].astype(str)
        ).mean() > 0.99
    elif model == "autoencoder":
        pairs = [(trained.obsm["X_autoencoder"], pred.obsm["X_autoencoder"])]
        if "reconstruction" in trained.layers and "reconstruction" in pred.layers:
            pairs.append((trained.layers["reconstruction"], pred.layers["reconstruction"]))
        elif (run_dir / "sample.h5ad").exists() and "reconstruction" in pred.layers:
            smp = ad.read_h5ad(run_dir / "sample.h5ad")  # a large run keeps a sample's layers
            rows = np.asarray(smp.uns["scwb"]["stored"]["rows"])
            pairs.append((smp.layers["reconstruction"], pred.layers["reconstruction"][rows]))
    else:
        pairs = [(trained.obsm["X_vae"], pred.obsm["X_vae"])]
    for a, b in pairs:
        a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
        scale = max(1.0, float(np.abs(a).max()))
        np.testing.assert_allclose(b, a, rtol=PREDICT_TOL, atol=PREDICT_TOL * scale)
