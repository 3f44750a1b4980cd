"""Model quality on the real datasets of ../shared/data, each model beside its baseline.

    python -m bench.quality [--epochs N] [--only scgen|classify|reconstruct|embed]

Writes bench/results/quality.json and prints Markdown tables for docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import warnings
from pathlib import Path

import pandas as pd

from engine import io, train
from engine import preprocess as pp
from engine.spec import RunSpec

DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data"
OUT = Path(__file__).resolve().parent / "results"


def prepared(name: str, recipe: pp.Recipe, tmp: Path) -> str:
    out, _ = pp.apply(io.read(DATA / name), recipe)
    return str(
        io.write_h5ad(out, tmp / f"{Path(name).stem}-{abs(hash(recipe.to_json())) % 10**6}.h5ad")
    )


def scgen_loo(tmp: Path, epochs: int, seed: int) -> dict:
    designs = {
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
        "kang_counts_small": (
            "kang_counts_small.h5ad",
            pp.Recipe([pp.Step("normalize", {"target_sum": 1e6})]),
            dict(
                condition_key="condition",
                ctrl="control",
                stim="stimulated",
                cell_type_key="cell_type",
            ),
        ),
    }
    results = {}
    for key, (name, recipe, design) in designs.items():
        data = prepared(name, recipe, tmp)
        t0 = time.time()
        train.run(
            RunSpec(
                model="scgen",
                data=data,
                predict="all",
                epochs=epochs,
                seed=seed,
                out=str(tmp / f"scgen-{key}"),
                **design,
            )
        )
        table = pd.read_csv(tmp / f"scgen-{key}" / "loo.csv")
        results[key] = {
            "seconds": round(time.time() - t0, 1),
            "epochs_max": epochs,
            "seed": seed,
            "table": table.to_dict(orient="records"),
        }
    return results


def side_by_side(
    tmp: Path, data: str, label_key: str, seed: int, models: dict[str, dict], keep: tuple[str, ...]
) -> dict:
    """Train each model (name -> RunSpec options) on the same data and split; keep these metrics
    and the wall time of each."""
    rows = {}
    for model, kw in models.items():
        t0 = time.time()
        m = train.run(
            RunSpec(
                model=model,
                data=data,
                label_key=label_key,
                seed=seed,
                out=str(tmp / model),
                **kw,
            )
        )
        rows[model] = {k: m[k] for k in keep} | {"seconds": round(time.time() - t0, 1)}
    return rows


def classify(tmp: Path, seed: int) -> dict:
    recipe = pp.Recipe(
        [
            pp.Step("filter_genes", {"min_cells": 3}),
            pp.Step("normalize", {"target_sum": 1e6}),
            pp.Step("hvg", {"n_top": 2000}),
            pp.Step("scale", {"method": "zscore", "max_value": 10}),
        ]
    )
    data = prepared("kang_control_counts.h5ad", recipe, tmp)
    models = {"mlp": {"epochs": 50}, "logreg": {"epochs": 50}, "sk_logreg": {}}
    return side_by_side(tmp, data, "cell_type", seed, models, ("test_accuracy", "test_f1_macro"))


def reconstruct(tmp: Path, seed: int) -> dict:
    recipe = pp.Recipe(
        [pp.Step("arcsinh", {"cofactor": 5}), pp.Step("scale", {"method": "minmax"})]
    )
    data = prepared("cytof_phenograph.h5ad", recipe, tmp)
    models = {"autoencoder": {"epochs": 100}, "pca": {"params": {"n_components": 4}}}
    return side_by_side(tmp, data, "phenograph_cluster", seed, models, ("test_mse",))


def embed(tmp: Path, seed: int) -> dict:
    data = prepared(
        "kang_control_counts.h5ad", pp.Recipe([pp.Step("filter_genes", {"min_cells": 20})]), tmp
    )
    models = {"vae": {"epochs": 60}, "pca_embed": {}}
    return side_by_side(
        tmp, data, "cell_type", seed, models, ("latent_knn_accuracy", "latent_silhouette")
    )


def main() -> None:
    warnings.filterwarnings("ignore")
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["scgen", "classify", "reconstruct", "embed"])
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "quality.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, fn in (
            ("classify", lambda: classify(tmp, args.seed)),
            ("reconstruct", lambda: reconstruct(tmp, args.seed)),
            ("embed", lambda: embed(tmp, args.seed)),
            ("scgen", lambda: scgen_loo(tmp, args.epochs, args.seed)),
        ):
            if args.only in (None, name):
                results[name] = fn()
                path.write_text(json.dumps(results, indent=2))
                print(name, json.dumps(results[name], indent=1)[:2000], flush=True)


if __name__ == "__main__":
    main()
