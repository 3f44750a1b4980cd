"""Model quality on real data, each model beside its honest baselines, over several seeds.

    python -m bench.quality [--seeds 0,1,2] [--only classify,abnormality,reconstruct,embed,scgen]

Every figure is the mean over the seeds with its standard deviation; a seed drives the split,
so models are compared seed by seed on the same test cells (``engine.seeds``). Writes
bench/results/quality.json; ``python -m bench.report`` renders docs/BENCHMARKS.md from it.
Data: ../shared/data (real sets) and scanpy's bundled ``pbmc68k_reduced``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from engine import io, train
from engine import preprocess as pp
from engine.spec import RunSpec

# the real data sets (../shared/data beside the checkout; SCWB_BENCH_DATA elsewhere, e.g. the GPU
# machine, where bench/gpu_wheels.sh carries a copy in .whl/data)
DATA = Path(
    os.environ.get("SCWB_BENCH_DATA")
    or Path(__file__).resolve().parent.parent.parent / "shared" / "data"
)
OUT = Path(__file__).resolve().parent / "results"

LOGCPM_HVG_Z = pp.Recipe(
    [
        pp.Step("filter_genes", {"min_cells": 3}),
        pp.Step("normalize", {"target_sum": 1e6}),
        pp.Step("hvg", {"n_top": 2000}),
        pp.Step("scale", {"method": "zscore", "max_value": 10}),
    ]
)
LOGCPM_HVG_MINMAX = pp.Recipe(
    [
        pp.Step("filter_genes", {"min_cells": 3}),
        pp.Step("normalize", {"target_sum": 1e6}),
        pp.Step("hvg", {"n_top": 2000}),
        pp.Step("scale", {"method": "minmax"}),
    ]
)
CYTOF = pp.Recipe([pp.Step("arcsinh", {"cofactor": 5}), pp.Step("scale", {"method": "minmax"})])


def _source(name: str):
    if name == "pbmc68k_reduced":
        import scanpy as sc

        return sc.datasets.pbmc68k_reduced()  # already log-normalised and scaled by scanpy
    return io.read(DATA / name)


def prepared(name: str, recipe: pp.Recipe, tmp: Path) -> str:
    """``name`` after ``recipe``, as a file in ``tmp`` named by the recipe (a stable digest: str
    hash() differs per process, so no process found another's file). A file of that name is
    reused only when its content is the same (the engine's content hash: values, names, obs and layers), so a kept folder never
    serves data made by older preprocessing code or from an older source."""
    out, _ = pp.apply(_source(name), recipe)
    path = tmp / f"{Path(name).stem}-{hashlib.sha1(recipe.to_json().encode()).hexdigest()[:8]}.h5ad"
    if not path.exists() or io.content_hash(io.read(path)) != io.content_hash(out):
        io.write_h5ad(out, path)
    return str(path)


def _run(tmp: Path, tag: str, **kw) -> dict:
    t0 = time.time()
    out = tmp / tag
    metrics = train.run(RunSpec(out=str(out), **kw))
    return {**metrics, "seconds": round(time.time() - t0, 2), "out": str(out)}


# ----------------------------------------------------------------------------- classification
CLASSIFY = {
    "pbmc68k_bulk_labels": (
        "scanpy's pbmc68k_reduced (700 cells x 765 genes, as shipped: log-normalised, scaled), "
        "`bulk_labels`, 10 classes",
        "pbmc68k_reduced",
        pp.Recipe([]),
        "bulk_labels",
    ),
    "hpoly_cell_label": (
        "Haber H. poly (892 cells; 2,000 HVG of the log-normalised values, z-score), "
        "`cell_label`, 8 epithelial types",
        "hpoly_small.h5ad",
        pp.Recipe(
            [
                pp.Step("hvg", {"n_top": 2000}),
                pp.Step("scale", {"method": "zscore", "max_value": 10}),
            ]
        ),
        "cell_label",
    ),
    "kang_small_cell_type": (
        "Kang PBMC control + stimulated (1,556 cells; logCPM, 2,000 HVG, z-score), `cell_type`, "
        "5 types",
        "kang_counts_small.h5ad",
        LOGCPM_HVG_Z,
        "cell_type",
    ),
    "kang_control_cell_type": (
        "Kang PBMC control (8,684 cells; logCPM, 2,000 HVG, z-score), `cell_type`, 4 types",
        "kang_control_counts.h5ad",
        LOGCPM_HVG_Z,
        "cell_type",
    ),
}
CLASSIFIERS = {
    "logreg": {"model": "logreg"},
    "mlp": {"model": "mlp"},
    "sk_logreg": {"model": "sk_logreg"},
    # the previous default, for the before/after notes: Adam on mini-batches, no L2 penalty
    "logreg (old default)": {"model": "logreg", "params": {"solver": "adam", "C": 1e6}},
}


def majority(data: str, label: str, split_dir: str) -> dict:
    """The majority class of the training cells predicted for every test cell."""
    from sklearn.metrics import f1_score

    y = io.read(data).obs[label].astype(str).to_numpy()
    split = np.load(Path(split_dir) / "split.npz")
    values, counts = np.unique(y[split["train"]], return_counts=True)
    pred = np.full(len(split["test"]), values[counts.argmax()])
    truth = y[split["test"]]
    return {
        "test_accuracy": float((pred == truth).mean()),
        "test_f1_macro": float(f1_score(truth, pred, average="macro", labels=np.unique(y))),
    }


def classify(tmp: Path, seeds: list[int]) -> dict:
    out = {}
    for key, (title, name, recipe, label) in CLASSIFY.items():
        data = prepared(name, recipe, tmp)
        rows = []
        for seed in seeds:
            ref = None
            for model, kw in CLASSIFIERS.items():
                m = _run(tmp, f"{key}-{model}-{seed}", data=data, label_key=label, seed=seed, **kw)
                ref = ref or m["out"]
                rows.append(
                    {"model": model, "seed": seed, "baseline": model == "sk_logreg"}
                    | {k: m[k] for k in ("test_accuracy", "test_f1_macro", "seconds")}
                )
            rows.append(
                {"model": "majority class", "seed": seed, "baseline": True, "seconds": 0.0}
                | majority(data, label, ref)
            )
        out[key] = {"title": title, "reference": "sk_logreg", "rows": rows}
        print(key, pd.DataFrame(rows).groupby("model").mean(numeric_only=True), flush=True)
    return out


# ----------------------------------------------------------------------------- abnormality
ABN_MODELS = {
    "autoencoder": {},  # the app's defaults
    # the defaults before: 32-16-8-4, 50 epochs, patience 10 (for the before/after notes)
    "autoencoder (old default)": {
        "model": "autoencoder",
        "epochs": 50,
        "patience": 10,
        "params": {"widths": "32,16,8,4"},
    },
    "pca": {"params": {"n_components": 4}},
}
ABNORMALITY = {
    "cytof_phenograph": (
        "CyTOF (3,000 cells x 23 markers; arcsinh(x/5), MinMax), 3 PhenoGraph clusters",
        "cytof_phenograph.h5ad",
        CYTOF,
        "phenograph_cluster",
        ABN_MODELS,
    ),
    "kang_control_cell_type": (
        "Kang PBMC control (8,684 cells; logCPM, 2,000 HVG, MinMax), 4 cell types",
        "kang_control_counts.h5ad",
        LOGCPM_HVG_MINMAX,
        "cell_type",
        ABN_MODELS,
    ),
}


def isolation_forest(data: str, split_dir: str, seed: int, inside: np.ndarray) -> float:
    """scikit-learn's IsolationForest fitted on the same reference training cells; AUROC as
    the engine computes it (left-out cells against held-out reference test cells)."""
    from sklearn.ensemble import IsolationForest

    from engine.tasks.reconstruct import reference_scores

    x = io.dense(io.read(data).X)
    split = dict(np.load(Path(split_dir) / "split.npz"))
    est = IsolationForest(random_state=seed).fit(x[split["train"]])
    return reference_scores(-est.score_samples(x), inside, split)["abnormality_auroc"]


def abnormality(tmp: Path, seeds: list[int]) -> dict:
    """Leave one population out: train on every other cluster (the reference group), score
    the left-out one as the abnormal cells; AUROC averaged over the left-out clusters."""
    out = {}
    for key, (title, name, recipe, label, models) in ABNORMALITY.items():
        data = prepared(name, recipe, tmp)
        col = io.read(data).obs[label].astype(str)
        groups = sorted(col.unique())
        rows = []
        for seed in seeds:
            per: dict[str, list[float]] = {}
            for left in groups:
                train_on = {label: [g for g in groups if g != left]}
                ref = None
                for model, kw in models.items():
                    m = _run(
                        tmp,
                        f"abn-{key}-{model}-{left}-{seed}".replace(" ", "_").replace("/", "_"),
                        data=data,
                        seed=seed,
                        train_on=train_on,
                        **({"model": model} | kw),
                    )
                    ref = ref or m["out"]
                    per.setdefault(model, []).append(m["abnormality_auroc"])
                inside = (col != left).to_numpy()
                per.setdefault("isolation_forest", []).append(
                    isolation_forest(data, ref, seed, inside)
                )
            for model, aurocs in per.items():
                rows.append(
                    {
                        "model": model,
                        "seed": seed,
                        "baseline": not model.startswith("autoencoder"),
                        "abnormality_auroc": float(np.mean(aurocs)),
                        "per_left_out": dict(zip(groups, aurocs, strict=True)),
                    }
                )
        out[key] = {"title": title, "reference": "pca", "rows": rows}
        print(key, pd.DataFrame(rows).groupby("model").mean(numeric_only=True), flush=True)
    return out


# ----------------------------------------------------------------------------- others
def side_by_side(tmp, key, title, data, label, seeds, models, keep, reference) -> dict:
    rows = []
    for seed in seeds:
        for model, kw in models.items():
            m = _run(
                tmp,
                f"{key}-{model}-{seed}",
                model=model,
                data=data,
                label_key=label,
                seed=seed,
                **kw,
            )
            rows.append(
                {"model": model, "seed": seed, "baseline": model == reference}
                | {k: m[k] for k in (*keep, "seconds")}
            )
    print(key, pd.DataFrame(rows).groupby("model").mean(numeric_only=True), flush=True)
    return {key: {"title": title, "reference": reference, "rows": rows}}


def reconstruct(tmp: Path, seeds: list[int]) -> dict:
    data = prepared("cytof_phenograph.h5ad", CYTOF, tmp)
    models = {"autoencoder": {}, "pca": {"params": {"n_components": 4}}}  # the defaults
    title = "CyTOF (3,000 cells x 23 markers; arcsinh(x/5), MinMax), latent size 4"
    return side_by_side(
        tmp, "cytof", title, data, "phenograph_cluster", seeds, models, ("test_mse",), "pca"
    )


def embed(tmp: Path, seeds: list[int]) -> dict:
    data = prepared(
        "kang_control_counts.h5ad", pp.Recipe([pp.Step("filter_genes", {"min_cells": 20})]), tmp
    )
    models = {"vae": {"epochs": 60}, "pca_embed": {}}
    title = "Kang PBMC control counts (genes in >= 20 cells), latent size 10"
    keep = ("latent_knn_accuracy", "latent_silhouette")
    return side_by_side(
        tmp, "kang_control", title, data, "cell_type", seeds, models, keep, "pca_embed"
    )


SCGEN = {
    "kang_counts_small": (
        "kang_counts_small.h5ad",
        pp.Recipe([pp.Step("normalize", {"target_sum": 1e6})]),
        dict(
            condition_key="condition", ctrl="control", stim="stimulated", cell_type_key="cell_type"
        ),
    ),
    "hpoly_small": (
        "hpoly_small.h5ad",
        pp.Recipe([]),
        dict(
            condition_key="condition",
            ctrl="Control",
            stim="Hpoly.Day10",
            cell_type_key="cell_label",
        ),
    ),
}


def scgen(tmp: Path, seeds: list[int], sets: list[str] | None = None) -> dict:
    """scGen leave-one-cell-type-out: every cell type's stimulated cells held out in turn."""
    out = {}
    for key, (name, recipe, design) in SCGEN.items():
        if sets and key not in sets:
            continue
        data = prepared(name, recipe, tmp)
        per_seed = {}
        for seed in seeds:
            t0 = time.time()
            run = tmp / f"scgen-{key}-{seed}"
            train.run(
                RunSpec(model="scgen", data=data, predict="all", seed=seed, out=str(run), **design)
            )
            per_seed[str(seed)] = {
                "seconds": round(time.time() - t0, 1),
                "table": pd.read_csv(run / "loo.csv").to_dict(orient="records"),
            }
        # what every seed ran with (the defaults of the day), so the report says which
        out[key] = {**_settings(json.loads((run / "run.json").read_text())), "seeds": per_seed}
    return out


def scgen_ceiling(tmp: Path, seeds: list[int]) -> dict:
    """The noise ceiling of every scGen set's held-out cells (``engine.evaluate.noise_ceiling``):
    the R² a perfect prediction would reach against each cell type's real stimulated cells. No
    training: a property of the data, the same for every seed and model. It reads ``X``, the
    matrix these sets' scGen reads and is scored on (log-normalised, no layer)."""
    import anndata as ad

    from engine.evaluate import noise_ceiling

    out = {}
    for key, (name, recipe, design) in SCGEN.items():
        a = ad.read_h5ad(prepared(name, recipe, tmp))
        cond = a.obs[design["condition_key"]].astype(str).to_numpy()
        types = a.obs[design["cell_type_key"]].astype(str).to_numpy()
        out[key] = {
            t: noise_ceiling(a.X[(types == t) & (cond == design["stim"])])
            for t in sorted(set(types))
        }
    return out


def scgen_weighted(tmp: Path, seeds: list[int]) -> dict:
    """A stronger mean-shift baseline, for the notes: each training type's shift weighted by its
    cells (``engine.perturb.mean_shift(weighted=True)``) instead of equally. R² (mean
    expression, all genes) per held-out type, on the cells the scGen tables score; no training,
    the same for every seed."""
    import anndata as ad

    from engine.evaluate import r2_pearson
    from engine.perturb import mean_shift, targets_with_enough_cells

    out = {}
    for key, (name, recipe, d) in SCGEN.items():
        a = ad.read_h5ad(prepared(name, recipe, tmp))
        cond = a.obs[d["condition_key"]].astype(str).to_numpy()
        types = a.obs[d["cell_type_key"]].astype(str).to_numpy()
        out[key] = {}
        for t in targets_with_enough_cells(cond, types, d["ctrl"], d["stim"]):
            # what a leave-out run trains on: every cell but the held-out type's stimulated ones
            trained = ~((types == t) & (cond == d["stim"]))
            ctrl_x, real_x = (
                a.X[(types == t) & (cond == d["ctrl"])],
                a.X[(types == t) & (cond == d["stim"])],
            )
            ctrl_mean = np.asarray(ctrl_x.mean(0)).ravel()
            real_mean = np.asarray(real_x.mean(0)).ravel()
            shift = mean_shift(a.X, cond, types, trained, d["ctrl"], d["stim"], weighted=True)
            out[key][t] = r2_pearson(ctrl_mean + shift, real_mean)
    return out


TRAINING = ("epochs", "batch_size", "lr", "patience", "precision")


def _settings(spec: dict) -> dict:
    """A run's scGen parameters and training settings, as recorded in a scGen block."""
    return {"params": spec["params"], "training": {k: spec[k] for k in TRAINING}}


def _same_params(stored: dict, sets: str | None) -> None:
    """``--add-seeds`` only beside seeds that ran with today's scGen parameters and training
    settings (a block from before these were recorded never matches). The code, the splits and
    the input recipe are not checked: adding seeds assumes they did not change."""
    for key in sets.split(",") if sets else SCGEN:
        if key not in stored:
            continue
        spec = RunSpec(model="scgen", data="-", predict="all", **SCGEN[key][2])
        today = _settings(asdict(spec))
        mine = {k: stored[key].get(k) for k in today}
        if mine != today:
            raise SystemExit(
                f"{key}: the stored seeds ran with other scGen parameters or training settings "
                f"than today's ({mine}); rerun every seed without --add-seeds."
            )


STEPS = {
    "classify": classify,
    "abnormality": abnormality,
    "reconstruct": reconstruct,
    "embed": embed,
    "scgen": scgen,
    "scgen_ceiling": scgen_ceiling,
    "scgen_weighted": scgen_weighted,
}


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", help="comma-separated: " + ",".join(STEPS))
    ap.add_argument("--scgen-sets", help="comma-separated: " + ",".join(SCGEN))
    ap.add_argument(
        "--add-seeds",
        action="store_true",
        help="scgen: add these seeds to each set's stored ones (same code: a long set measured "
        "in sittings) instead of replacing them",
    )
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    only = args.only.split(",") if args.only else list(STEPS)
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "quality.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, fn in STEPS.items():
            if name not in only:
                continue
            t0 = time.time()
            if name == "scgen":
                if args.add_seeds:
                    _same_params(results.get("scgen", {}), args.scgen_sets)
                block = fn(tmp, seeds, args.scgen_sets.split(",") if args.scgen_sets else None)
                stored = results.get("scgen", {})
                if args.add_seeds:
                    for key, b in block.items():
                        before = stored.get(key, {}).get("seeds", {})
                        b["seeds"] = dict(sorted({**before, **b["seeds"]}.items()))
                results["scgen"] = {**stored, **block}
            else:
                results[name] = fn(tmp, seeds)
            results.setdefault("meta", {})[name] = {
                "seeds": seeds,
                "minutes": round((time.time() - t0) / 60, 1),
                "date": time.strftime("%Y-%m-%d"),
            }
            path.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
