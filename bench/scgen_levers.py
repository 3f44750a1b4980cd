"""scGen's levers (issue 15), each measured against the mean-shift baseline on the same cells.

    python -m bench.scgen_levers [--sets kang_counts_small] [--variants default,sampled] [--seeds 0,1,2]

A variant changes one thing against the app's default (the model's parameters or the input's
preprocessing); every variant runs leave-one-cell-type-out over the seeds, so scGen and the
mean-shift baseline are compared per cell type on identical cells. Rows are merged into
bench/results/scgen_levers.json; ``python -m bench.report`` renders them.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from bench.quality import OUT, SCGEN, prepared
from engine import preprocess as pp
from engine import train
from engine.spec import RunSpec

CPM = pp.Step("normalize", {"target_sum": 1e6})
CP10K = pp.Step("normalize", {"target_sum": 1e4})
HVG = pp.Step("hvg", {"n_top": 2000})

# name -> (what it changes, extra recipe steps or a replacement recipe per set, model params)
VARIANTS = {
    "default": ("the app's defaults (paired delta, residual output)", None, {}),
    "decoded": (
        "prediction: the decoder's output (output 'decoded', the scGen package's; the default "
        "before 2026-11-27)",
        None,
        {"output": "decoded"},
    ),
    "sampled": (
        "stimulation vector: the scGen package's resampled delta (the default before)",
        None,
        {"delta": "sampled"},
    ),
    "sampled-kl5e-3": (
        "resampled delta and KL weight 5e-3",
        None,
        {"delta": "sampled", "kl_weight": 5e-3},
    ),
    "kl5e-4": ("KL weight 5e-4 (default 5e-5)", None, {"kl_weight": 5e-4}),
    "kl5e-3": ("KL weight 5e-3", None, {"kl_weight": 5e-3}),
    "kl5e-2": ("KL weight 5e-2", None, {"kl_weight": 5e-2}),
    "hvg2000": ("input: 2,000 highly variable genes", "hvg", {}),
    "cp10k": ("input: log CP10k (scanpy's default) instead of log CPM", "cp10k", {}),
    "residual": (
        "prediction: each control cell + the decoded change (output 'residual', the default "
        "since 2026-11-27)",
        None,
        {"output": "residual"},
    ),
}


def recipe_for(set_key: str, how: str | None) -> pp.Recipe:
    base = SCGEN[set_key][1]
    if how is None:
        return base
    if how == "hvg":
        return pp.Recipe([*base.steps, HVG])
    if how == "cp10k":
        if not any(s.name == "normalize" for s in base.steps):
            raise SystemExit(f"{set_key} comes log-normalised: cp10k does not apply")
        return pp.Recipe([CP10K if s.name == "normalize" else s for s in base.steps])
    raise ValueError(how)


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="kang_counts_small")
    ap.add_argument("--variants", default="default,sampled")
    ap.add_argument("--seeds", default="0,1,2")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    path = OUT / "scgen_levers.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for set_key in args.sets.split(","):
            name, _, design = SCGEN[set_key]
            for var in args.variants.split(","):
                what, how, params = VARIANTS[var]
                data = prepared(name, recipe_for(set_key, how), tmp)
                per_seed = {}
                for seed in seeds:
                    t0 = time.time()
                    run = tmp / f"{set_key}-{var}-{seed}"
                    train.run(
                        RunSpec(
                            model="scgen",
                            data=data,
                            predict="all",
                            seed=seed,
                            out=str(run),
                            params=params,
                            **design,
                        )
                    )
                    per_seed[str(seed)] = {
                        "seconds": round(time.time() - t0, 1),
                        "table": pd.read_csv(run / "loo.csv").to_dict(orient="records"),
                    }
                    print(set_key, var, seed, per_seed[str(seed)]["seconds"], flush=True)
                results.setdefault(set_key, {})[var] = {
                    "what": what,
                    # the parameters it ran with: the defaults of the day and the lever
                    "params": json.loads((run / "run.json").read_text())["params"],
                    "seeds": per_seed,
                    "date": time.strftime("%Y-%m-%d"),
                }
                path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
