"""One run over two devices (Lightning DDP, here two CPU processes with gloo): a cancel keeps
the best weights and writes the metrics, scGen leave-one-out completes, and ranks given by a
SLURM-style environment train disjoint shards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from engine import runs
from engine.device import usable_cores
from tests.conftest import ROOT

TIMEOUT = 300
# a CPU device is a process on a core of its own: two devices are refused on one core
pytestmark = pytest.mark.skipif(usable_cores() < 2, reason="two CPU devices need two cores")


def _engine(*args: str) -> list[str]:
    return [sys.executable, "-m", "engine", *args]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "LOCAL_RANK"))}
    return {**env, "PYTHONPATH": str(ROOT), **extra}


def test_cancel_of_a_two_device_run_keeps_best_weights(tmp_path, lognorm_file):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        _engine(
            "train", "--model", "mlp", "--data", lognorm_file, "--label-key", "cell_type",
            "--out", str(run), "--epochs", "500", "--batch-size", "16", "--devices", "2",
            "--device", "cpu",
        ),
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        t0 = time.time()
        while runs.read_metrics_csv(run).shape[0] < 2:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.time() - t0 < TIMEOUT, "no epoch finished"
            time.sleep(0.5)
        (run / "cancel").write_text("now")
        t_cancel = time.time()
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert time.time() - t_cancel < 60, "every rank stopped at once, not after a grace period"
    assert proc.returncode == 0, proc.stdout.read().decode()[-3000:]
    assert runs.read_status(run)["state"] == "cancelled"
    assert (run / "model.pt").exists() and (run / "results.h5ad").exists()
    assert json.loads((run / "metrics.json").read_text())["test_accuracy"] > 0.5


def test_scgen_leave_one_out_over_two_devices(tmp_path, lognorm_file):
    run = tmp_path / "loo"
    out = subprocess.run(
        _engine(
            "train", "--model", "scgen", "--data", lognorm_file, "--out", str(run),
            "--condition-key", "condition", "--ctrl", "control", "--stim", "stimulated",
            "--cell-type-key", "cell_type", "--predict", "all", "--epochs", "2",
            "--param", "n_hidden=32", "--param", "n_latent=8", "--devices", "2", "--device", "cpu",
        ),
        env=_env(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    assert runs.read_status(run)["state"] == "completed"
    table = runs.read_json(run / "metrics.json")
    assert len(table["cell_types"]) == 4
    assert len((run / "loo.csv").read_text().splitlines()) == 5


SHARD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import numpy as np, torch
    from engine import toolkit

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))
            self.seen = []
        def loss(self, batch, **_):
            if self.training:
                self.seen += batch["idx"].tolist()
            return {"loss": (self.w - batch["x"].mean()) ** 2}

    out = Path(sys.argv[1])
    n = 64
    cols = {"x": torch.arange(n, dtype=torch.float32), "idx": torch.arange(n)}
    split = {"train": np.arange(48), "val": np.arange(48, 64)}
    ctx = toolkit.FitContext(run_dir=out, device="cpu", epochs=1, batch_size=8, lr=0.1,
                             patience=5, seed=0, devices=2)
    module = Recorder()
    trained, _ = toolkit.fit(module, ctx, cols, split)
    rank = toolkit.is_rank_zero()
    (out / f"seen-{0 if rank else 1}.json").write_text(json.dumps(module.seen))
    """
)


def test_ranks_from_a_slurm_environment_train_disjoint_shards(tmp_path):
    script = tmp_path / "shards.py"
    script.write_text(SHARD_SCRIPT)
    common = dict(
        SLURM_NTASKS="2",
        SLURM_NTASKS_PER_NODE="2",
        SLURM_JOB_NAME="scwb-test",
        SLURM_JOB_ID="4242",
        SLURM_NODELIST="localhost",
        SLURM_NODEID="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(20000 + os.getpid() % 20000),
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)],
            env=_env(**common, SLURM_PROCID=str(r), SLURM_LOCALID=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    for p in procs:
        p.wait(timeout=TIMEOUT)
        assert p.returncode == 0, p.stdout.read().decode()[-3000:]
    seen = [set(json.loads((tmp_path / f"seen-{r}.json").read_text())) for r in (0, 1)]
    assert seen[0] and seen[1] and not seen[0] & seen[1], "each rank trains its own shard"
    assert seen[0] | seen[1] <= set(range(48))
    assert len(seen[0]) == len(seen[1]) == 24


@pytest.mark.parametrize("n", [48])
def test_shards_cover_the_split(n):
    from engine.data import Batches

    idx = np.arange(n)
    x = {"x": __import__("torch").arange(n)}
    seen = [
        {int(v) for b in Batches(x, idx, 8, shuffle=True, seed=1, rank=r, world=2) for v in b["x"]}
        for r in (0, 1)
    ]
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(n))
