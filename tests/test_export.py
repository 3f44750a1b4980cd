"""What a user takes home: the script reruns the run and reproduces its metrics; the bundle and
the annotated .h5ad hold what they should."""

import io as pyio
import json
import subprocess
import sys
import zipfile

import anndata as ad
import pytest

from engine import export, train
from engine.spec import RunSpec
from tests.conftest import ROOT


@pytest.mark.parametrize(
    "model, kw",
    [
        ("mlp", {"label_key": "cell_type", "epochs": 4}),
        ("autoencoder", {"epochs": 3, "params": {"widths": "16,4"}}),
    ],
)
def test_script_reproduces_metrics(tmp_path, lognorm_file, model, kw):
    run_dir = tmp_path / "run"
    metrics = train.run(RunSpec(model=model, data=lognorm_file, out=str(run_dir), **kw))
    script = tmp_path / "reproduce.py"
    script.write_text(export.script(run_dir))
    out = subprocess.run(
        [sys.executable, str(script), lognorm_file, str(tmp_path / "again")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    numeric = {k: v for k, v in metrics.items() if isinstance(v, float)}
    assert numeric and all(again[k] == pytest.approx(v, rel=1e-6) for k, v in numeric.items())


def test_bundle_and_annotated_h5ad(tmp_path, lognorm_file):
    run_dir = tmp_path / "run"
    train.run(RunSpec(model="autoencoder", data=lognorm_file, out=str(run_dir), epochs=2))
    with zipfile.ZipFile(pyio.BytesIO(export.bundle(run_dir))) as zf:
        names = set(zf.namelist())
        assert {
            "run.json",
            "status.json",
            "metrics.csv",
            "metrics.json",
            "model.pt",
            "split.npz",
            "results.h5ad",
            "reproduce.py",
        } <= names
        res = ad.read_h5ad(pyio.BytesIO(zf.read("results.h5ad")))
    assert (
        "X_autoencoder" in res.obsm
        and {"reconstruction", "abnormality"} <= set(res.layers)
        and "abnormality" in res.obs
    )
    assert export.metrics_csv(run_dir).startswith("metric,value\ntest_mse,")
