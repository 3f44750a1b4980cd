"""scGen's levers (issue 15), each measured against the mean-shift baseline on the same cells.

    python -m bench.scgen_levers [--sets kang_counts_small] [--variants default,sampled] [--seeds 0,1,2]
    python -m bench.scgen_levers --sets hpoly_small --variants default,e300 --jobs 12 --tag h100 \
        --out $OUT/scgen_levers.json --deadline 300      (a machine with many cores and a GPU)

A variant changes one thing against the app's default (the model's parameters or the input's
preprocessing); every variant runs leave-one-cell-type-out over the seeds, so scGen and the
mean-shift baseline are compared per cell type on identical cells. Rows are merged into
bench/results/scgen_levers.json; ``python -m bench.report`` renders them.

``--jobs N`` trains every (variant, seed, cell type) in its own process, N at a time (one torch
thread each; on a GPU machine they share the card): the same splits, seeds and models as a
leave-all-out run, which trains the cell types one after the other (bit for bit at the same
thread count; one thread against two moved R² by up to 0.002 after 2 epochs on hpoly). ``--tag`` names the machine
in the block's key (``e300@h100``) so that figures from another machine never replace this one's.
``--deadline`` stops there and keeps only the seeds whose every cell type finished.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from bench.quality import OUT, SCGEN, TRAINING, prepared
from engine import preprocess as pp
from engine import train
from engine.spec import RunSpec

CPM = pp.Step("normalize", {"target_sum": 1e6})
CP10K = pp.Step("normalize", {"target_sum": 1e4})
HVG = pp.Step("hvg", {"n_top": 2000})


class Variant(NamedTuple):
    what: str  # what it changes against the defaults
    how: str | None  # a change to the input's recipe (recipe_for), or None
    params: dict  # model parameters
    training: dict = {}  # RunSpec training settings (epochs, patience, ...)


VARIANTS = {
    "default": Variant("the app's defaults (paired delta, residual output)", None, {}),
    "decoded": Variant(
        "prediction: the decoder's output (output 'decoded', the scGen package's; the default "
        "before 2026-11-27)",
        None,
        {"output": "decoded"},
    ),
    "sampled": Variant(
        "stimulation vector: the scGen package's resampled delta (the default before)",
        None,
        {"delta": "sampled"},
    ),
    "sampled-kl5e-3": Variant(
        "resampled delta and KL weight 5e-3",
        None,
        {"delta": "sampled", "kl_weight": 5e-3},
    ),
    "kl5e-4": Variant("KL weight 5e-4 (default 5e-5)", None, {"kl_weight": 5e-4}),
    "kl5e-3": Variant("KL weight 5e-3", None, {"kl_weight": 5e-3}),
    "kl5e-2": Variant("KL weight 5e-2", None, {"kl_weight": 5e-2}),
    "hvg2000": Variant("input: 2,000 highly variable genes", "hvg", {}),
    "cp10k": Variant("input: log CP10k (scanpy's default) instead of log CPM", "cp10k", {}),
    "package-decoder": Variant(
        "decoder: the scGen package's (latent -> 800 -> genes, BatchNorm, LeakyReLU and dropout on "
        "the output too) instead of the encoder mirrored with a linear output",
        None,
        {"decoder": "package"},
    ),
    "e300": Variant(
        "training: up to 300 epochs (default 100; early-stopping patience 25 as before)",
        None,
        {},
        {"epochs": 300},
    ),
    "dropout0": Variant(
        "network: no dropout (default 0.2, the published; dropout shrinks what the decoder "
        "gives back)",
        None,
        {"dropout": 0.0},
    ),
    "dropout0.1": Variant("network: dropout 0.1 (default 0.2)", None, {"dropout": 0.1}),
    "dropout0-kl5e-4": Variant(
        "network: no dropout and KL weight 5e-4", None, {"dropout": 0.0, "kl_weight": 5e-4}
    ),
    "latent10": Variant("network: latent 10 (default 100)", None, {"n_latent": 10}),
    "small": Variant(
        "network: 2x256 hidden, latent 20 (default 2x800, latent 100)",
        None,
        {"n_hidden": 256, "n_latent": 20},
    ),
    "residual": Variant(
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


def _spec(
    set_key: str, var: str, data: str, seed: int, out: Path, predict: str, cap: int = 0
) -> RunSpec:
    v = VARIANTS[var]
    design = SCGEN[set_key][2]
    training = dict(v.training)
    if cap:  # a smoke test's epochs (recorded in the block's training settings)
        training["epochs"] = min(training.get("epochs", cap), cap)
    return RunSpec(
        model="scgen",
        data=data,
        predict=predict,
        seed=seed,
        out=str(out),
        params=v.params,
        **training,
        **design,
    )


def _block(var: str, run: Path, per_seed: dict, tag: str | None) -> dict:
    """One variant's record: what it changes, the parameters and training settings it ran with
    (the defaults of the day and the lever), where, and each seed's leave-one-out table."""
    spec = json.loads((run / "run.json").read_text())
    block = {
        "what": VARIANTS[var].what,
        "params": spec["params"],
        "training": {k: spec.get(k) for k in TRAINING},
        "seeds": per_seed,
        "date": time.strftime("%Y-%m-%d"),
    }
    if tag:
        block["device"] = _device_name()
    return block


def _device_name() -> str:
    from engine.device import detect

    return detect()["name"]


def _write(path: Path, results: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


def _serial(args, seeds: list[int], results: dict, path: Path, tmp: Path) -> None:
    for set_key in args.sets.split(","):
        name = SCGEN[set_key][0]
        for var in args.variants.split(","):
            data = prepared(name, recipe_for(set_key, VARIANTS[var].how), tmp)
            per_seed = {}
            for seed in seeds:
                t0 = time.time()
                run = tmp / f"{set_key}-{var}-{seed}"
                train.run(_spec(set_key, var, data, seed, run, "all", args.epochs_cap))
                per_seed[str(seed)] = {
                    "seconds": round(time.time() - t0, 1),
                    "table": pd.read_csv(run / "loo.csv").to_dict(orient="records"),
                }
                print(set_key, var, seed, per_seed[str(seed)]["seconds"], flush=True)
            key = f"{var}@{args.tag}" if args.tag else var
            results.setdefault(set_key, {})[key] = _block(var, run, per_seed, args.tag)
            _write(path, results)


def _one(job: dict) -> None:
    """A child of ``--jobs``: one variant, seed and held-out cell type; its table row to row.json."""
    import anndata as ad

    run = Path(job["run"])
    metrics = train.run(
        _spec(job["set"], job["var"], job["data"], job["seed"], run, job["cell_type"], job["cap"])
    )
    table = ad.read_h5ad(run / "results.h5ad", backed="r").uns["scwb"]["loo_table"]
    row = {k: (v.item() if hasattr(v, "item") else v) for k, v in dict(table.iloc[0]).items()}
    row.update({k: v for k, v in metrics.items() if isinstance(v, bool)})  # dropped from uns
    (run / "row.json").write_text(json.dumps(row))


def _parallel(args, seeds: list[int], results: dict, path: Path, tmp: Path) -> None:
    from engine.perturb import targets_with_enough_cells

    t_start = time.time()
    jobs, data_of = [], {}
    for set_key in args.sets.split(","):
        name, _, design = SCGEN[set_key]
        for var in args.variants.split(","):
            data_of[set_key, var] = prepared(name, recipe_for(set_key, VARIANTS[var].how), tmp)
        import anndata as ad

        obs = ad.read_h5ad(data_of[set_key, var], backed="r").obs
        types = targets_with_enough_cells(
            obs[design["condition_key"]].astype(str).to_numpy(),
            obs[design["cell_type_key"]].astype(str).to_numpy(),
            design["ctrl"],
            design["stim"],
        )
        # seed by seed, so that a deadline leaves whole seeds; the longest variants first
        variants = sorted(
            args.variants.split(","), key=lambda v: -VARIANTS[v].training.get("epochs", 0)
        )
        for seed in seeds:
            for ct in types:
                for var in variants:
                    run = tmp / f"{set_key}-{var}-{seed}-{len(jobs)}"
                    jobs.append(
                        {
                            "set": set_key,
                            "var": var,
                            "seed": seed,
                            "cell_type": ct,
                            "data": data_of[set_key, var],
                            "run": str(run),
                            "n_types": len(types),
                            "cap": args.epochs_cap,
                        }
                    )
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    pending, running, done = list(jobs), {}, []
    while pending or running:
        late = args.deadline and time.time() - t_start > args.deadline
        while pending and len(running) < args.jobs and not late:
            job = pending.pop(0)
            log = open(job["run"] + ".log", "w")  # noqa: SIM115 (closed when the job ends)
            proc = subprocess.Popen(
                [sys.executable, "-m", "bench.scgen_levers", "--one", json.dumps(job)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            running[proc] = (job, time.time(), log)
        if late:
            for proc in running:
                proc.kill()
            print(
                f"deadline: {len(running)} running and {len(pending)} pending jobs dropped",
                flush=True,
            )
            break
        time.sleep(0.5)
        for proc in [p for p in running if p.poll() is not None]:
            job, t0, log = running.pop(proc)
            log.close()
            row_file = Path(job["run"]) / "row.json"
            if proc.returncode or not row_file.exists():
                tail = Path(job["run"] + ".log").read_text().strip().splitlines()[-3:]
                print(
                    f"FAILED {job['var']} seed {job['seed']} {job['cell_type']}: {tail}", flush=True
                )
                continue
            job["row"] = json.loads(row_file.read_text())
            job["seconds"] = round(time.time() - t0, 1)
            done.append(job)
            print(
                job["set"],
                job["var"],
                job["seed"],
                job["cell_type"],
                job["seconds"],
                f"r2 {job['row']['r2_mean_all']:.4f} meanshift "
                f"{job['row']['baseline_meanshift_r2_mean_all']:.4f}",
                flush=True,
            )
            _collect(args, done, results, path)


def _collect(args, done: list[dict], results: dict, path: Path) -> None:
    """Blocks from the finished jobs: a seed counts once all its cell types finished."""
    by = {}
    for job in done:
        by.setdefault((job["set"], job["var"]), {}).setdefault(job["seed"], []).append(job)
    for (set_key, var), seeds in by.items():
        per_seed = {
            str(seed): {
                "seconds": round(sum(j["seconds"] for j in js), 1),
                "table": [j["row"] for j in sorted(js, key=lambda j: j["cell_type"])],
            }
            for seed, js in sorted(seeds.items())
            if len(js) == js[0]["n_types"]
        }
        if not per_seed:
            continue
        any_run = Path(next(iter(seeds.values()))[0]["run"])
        key = f"{var}@{args.tag}" if args.tag else var
        results.setdefault(set_key, {})[key] = _block(var, any_run, per_seed, args.tag)
    _write(path, results)


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--sets", default="kang_counts_small")
    ap.add_argument("--variants", default="default,sampled")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--jobs", type=int, default=1, help="processes at a time (one per cell type)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per process (--jobs)")
    ap.add_argument("--tag", default="", help="the machine, in the blocks' keys (variant@tag)")
    ap.add_argument("--out", default=str(OUT / "scgen_levers.json"))
    ap.add_argument("--deadline", type=float, default=0, help="seconds; 0: none (--jobs)")
    ap.add_argument(
        "--epochs-cap", type=int, default=0, help="at most this many epochs (smoke tests)"
    )
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return _one(json.loads(args.one))
    for var in args.variants.split(","):
        if var not in VARIANTS:
            raise SystemExit(f"unknown variant {var!r}; choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    results = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        if args.jobs > 1:
            _parallel(args, seeds, results, path, Path(tmp))
        else:
            _serial(args, seeds, results, path, Path(tmp))


if __name__ == "__main__":
    main()
