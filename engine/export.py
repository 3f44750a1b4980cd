"""What a user takes home from a run: a script that reproduces it, and the files as one zip."""

from __future__ import annotations

import io as _io
import json
import zipfile
from pathlib import Path

from engine import runs

SPEC_FIELDS = (
    "model",
    "label_key",
    "layer",
    "epochs",
    "batch_size",
    "lr",
    "seed",
    "device",
    "train_on",
    "params",
    "patience",
    "condition_key",
    "ctrl",
    "stim",
    "cell_type_key",
    "predict",
)


def script(run_dir: str | Path) -> str:
    """A short Python script that reruns this run with the engine and prints its metrics."""
    spec = runs.read_json(Path(run_dir) / "run.json", {}) or {}
    kwargs = {k: spec.get(k) for k in SPEC_FIELDS if spec.get(k) not in (None, "", {})}
    args = ",\n    ".join(f"{k}={v!r}" for k, v in kwargs.items())
    return f'''"""Reproduce scWorkbench run {Path(run_dir).name} (data fingerprint {spec.get("data_fingerprint", "?")}).

Run from the scWorkbench folder:  python {Path(run_dir).name}.py [DATA.h5ad] [OUT_DIR]
"""
import json
import sys

from engine.spec import RunSpec
from engine.train import run

data = sys.argv[1] if len(sys.argv) > 1 else {spec.get("data", "data.h5ad")!r}
out = sys.argv[2] if len(sys.argv) > 2 else "reproduced-{Path(run_dir).name}"
spec = RunSpec(
    data=data,
    out=out,
    {args},
)
metrics = run(spec)
print(json.dumps({{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}, indent=2))
'''


def bundle(run_dir: str | Path) -> bytes:
    """The run folder (results, model, metrics, split, spec) and the script, zipped."""
    run_dir = Path(run_dir)
    buf = _io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(run_dir.rglob("*")):
            if p.is_file() and not p.name.startswith(".") and p.name != "cancel":
                zf.write(p, p.relative_to(run_dir).as_posix())
        zf.writestr("reproduce.py", script(run_dir))
    return buf.getvalue()


def metrics_csv(run_dir: str | Path) -> str:
    metrics = runs.read_json(Path(run_dir) / "metrics.json", {}) or {}
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    return (
        "metric,value\n"
        + "\n".join(f"{k},{json.dumps(v) if isinstance(v, str) else v}" for k, v in flat.items())
        + "\n"
    )
