"""Render docs/BENCHMARKS.md from bench/results/*.json (run the benchmarks first).

python -m bench.report
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    return df.round(digits).to_markdown(index=False)


def quality(q: dict) -> list[str]:
    out = ["## Model quality on real data (`python -m bench.quality`)", ""]
    if "classify" in q:
        out += [
            "### Classification: Kang PBMC control cells (8,684 cells; logCPM, 2,000 HVG, z-score), 4 cell types",
            "",
        ]
        out += [_md(pd.DataFrame([{"model": k, **v} for k, v in q["classify"].items()])), ""]
    if "reconstruct" in q:
        out += [
            "### Reconstruction: CyTOF (3,000 cells x 23 markers; arcsinh(x/5), MinMax), latent size 4",
            "",
        ]
        out += [_md(pd.DataFrame([{"model": k, **v} for k, v in q["reconstruct"].items()]), 5), ""]
    if "embed" in q:
        out += [
            "### Latent embedding: Kang PBMC control counts (genes in >= 20 cells), latent size 10",
            "",
            "kNN accuracy: a 15-NN classifier fitted on the training cells' latent codes predicts the test cells' cell types. Silhouette: by cell type, on up to 5,000 cells.",
            "",
        ]
        out += [_md(pd.DataFrame([{"model": k, **v} for k, v in q["embed"].items()])), ""]
    if "scgen" in q:
        out += [
            "### Perturbation: scGen leave-one-cell-type-out against both baselines",
            "",
            "Each row trains a fresh scGen (published defaults: 2x800, latent 100, KL 5e-5, Adam 1e-3, batch 32, early stopping patience 25) without that cell type's stimulated cells, then predicts them. "
            "`noshift`: the control cells unchanged; `meanshift`: control + mean (stimulated - control) shift of the training cell types in gene space. "
            "R² = squared Pearson correlation of per-gene means (scGen's `reg_mean_plot`), on all genes and on the top-100 Wilcoxon DEGs of the held-out type.",
            "",
        ]
        for name, block in q["scgen"].items():
            t = pd.DataFrame(block["table"])
            cols = {
                "cell_type": "cell type",
                "n_ctrl": "ctrl cells",
                "n_stim": "stim cells",
                "epochs": "epochs",
                "r2_mean_all": "scGen R² all",
                "baseline_noshift_r2_mean_all": "noshift R² all",
                "baseline_meanshift_r2_mean_all": "meanshift R² all",
                "r2_mean_top100": "scGen R² top100",
                "baseline_noshift_r2_mean_top100": "noshift R² top100",
                "baseline_meanshift_r2_mean_top100": "meanshift R² top100",
                "pearson_delta": "scGen Pearson Δ",
                "direction_top20": "scGen direction top20",
            }
            t = t[list(cols)].rename(columns=cols)
            t["beats noshift"] = t["scGen R² all"] > t["noshift R² all"]
            t["beats meanshift"] = t["scGen R² all"] > t["meanshift R² all"]
            out += [
                f"#### {name} (seed {block['seed']}, at most {block['epochs_max']} epochs per cell type, {block['seconds'] / 60:.1f} min on this CPU)",
                "",
                _md(t),
                "",
            ]
            out += [
                f"scGen beats the no-shift baseline on {int(t['beats noshift'].sum())}/{len(t)} cell types and the mean-shift baseline on {int(t['beats meanshift'].sum())}/{len(t)}.",
                "",
            ]
    return out


# fp32 (non-tensor-core) dense peak of the cards the device tool lends, from NVIDIA's data sheets
FP32_PEAK = {"H100": 67e12, "H200": 67e12}


def _peak_flops(card: str | None) -> float | None:
    if not card:
        return None
    if "H100" in card and "PCIe" in card:
        return 51e12
    return next((v for k, v in FP32_PEAK.items() if k in card), None)


def _ratio(rows: pd.DataFrame, n: int, a: str, b: str) -> str:
    """Ratio of medians, with the range of the repeat-paired ratios when there are repeats."""
    ra = rows[(rows["n"] == n) & (rows["method"] == a)]
    rb = rows[(rows["n"] == n) & (rows["method"] == b)]
    if ra.empty or rb.empty:
        return ""
    text = f"{ra['cells_per_s'].iloc[0] / rb['cells_per_s'].iloc[0]:.2f}"
    if "cells_per_s_repeats" in rows and isinstance(ra["cells_per_s_repeats"].iloc[0], list):
        pairs = [
            x / y
            for x, y in zip(
                ra["cells_per_s_repeats"].iloc[0], rb["cells_per_s_repeats"].iloc[0], strict=False
            )
        ]
        if len(pairs) > 1:
            text += f" [{min(pairs):.2f}-{max(pairs):.2f}]"
    return text


def throughput(t: dict) -> list[str]:
    out = [
        "## Training throughput (`python -m bench.throughput`)",
        "",
        f"Machine: {t['machine']['cpu_threads']} CPU threads, GPU: {t['machine']['cuda'] or 'none'}; Python {t['machine']['python']}, torch {t['machine']['torch']}; {t['machine']['date']}. VAE (NB, n_hidden 128, n_latent 10, one layer), batch 128, synthetic negative-binomial counts x 2,000 genes; cells/s over a fixed number of batches after 5 warm-up batches; peak RSS of the measuring process.",
        "",
    ]
    rows = pd.DataFrame([r for r in t["throughput"] if "cells_per_s" in r])
    if not rows.empty:
        wide = rows.pivot_table(index="n", columns="method", values="cells_per_s")
        mem = rows.pivot_table(index="n", columns="method", values="peak_mb")
        table = pd.DataFrame({"cells": wide.index})
        for m in wide.columns:
            table[f"{m} cells/s"] = wide[m].to_numpy()
        for other, label in (("bare", "bare"), ("scvi", "scvi-tools"), ("naive", "naive")):
            if {"engine", other} <= set(wide.columns):
                table[f"engine / {label}"] = [_ratio(rows, n, "engine", other) for n in wide.index]
        flops = t["machine"].get("vae_train_flops_per_cell")
        if flops and "engine" in wide.columns:
            achieved = wide["engine"].to_numpy() * flops
            table["engine GFLOP/s"] = achieved / 1e9
            peak = _peak_flops(t["machine"].get("cuda"))
            if peak:
                table["share of fp32 peak"] = [f"{a / peak:.1%}" for a in achieved]
        for m in mem.columns:
            table[f"{m} peak MB"] = mem[m].to_numpy()
        out += [_md(table, 2), ""]
        reps = int(rows.get("repeats", pd.Series([1])).max())
        if reps > 1:
            out += [
                f"Each cells/s is the median of {reps} interleaved repeats; each ratio is the ratio of "
                "the medians, with the lowest and highest ratio of the repeats paired in order "
                "(engine's i-th against the other's i-th) in brackets.",
                "",
            ]
        if flops:
            out += [
                f"GFLOP/s: {flops / 1e6:.2f} MFLOP of dense-layer work to train on one cell "
                "(forward + backward, 3 x 2 x in x out per linear layer) x the engine's cells/s; "
                "the NB likelihood and other elementwise work are not counted, so it is a lower bound.",
                "",
            ]
    skipped = {r.get("skipped") for r in t["throughput"] if r.get("skipped")}
    if skipped:
        out += [
            f"scvi-tools: not measured ({'; '.join(skipped)}; `pip install -r requirements-bench.txt` adds it).",
            "",
        ]
    if t.get("scale"):
        s = pd.DataFrame(t["scale"])[["n", "cells_per_s", "epoch_s_estimate", "peak_mb"]].rename(
            columns={"n": "cells", "epoch_s_estimate": "s per epoch (from cells/s)"}
        )
        out += ["### Scale curve (engine data path)", "", _md(s, 2), ""]
    if t.get("preprocessing"):
        p = pd.DataFrame(t["preprocessing"])
        out += [
            "### Preprocessing: filter genes, keep counts, logCPM, 2,000 HVG, z-score",
            "",
            _md(p, 2),
            "",
        ]
        if len(p) == 2 and "seconds" in p:
            ratio = p.set_index("which")["seconds"]
            out += [
                f"Engine / direct scanpy calls: {ratio['engine'] / ratio['scanpy']:.2f}x time.",
                "",
            ]
    return out


def latency(a: dict) -> list[str]:
    out = [
        "## App latency (`python -m bench.app_latency`)",
        "",
        "Page script time in AppTest (the same script a browser session runs): first run, then a rerun with the dataset cached.",
        "",
    ]
    wide = pd.DataFrame(a["pages"]).pivot_table(
        index="page", columns="n", values=["first_run_s", "rerun_s"]
    )
    wide.columns = [
        f"{'first run' if what == 'first_run_s' else 'rerun'} s, {n:,} cells"
        for what, n in wide.columns
    ]
    out += [_md(wide.reset_index(), 2), ""]
    out += [
        "Time from submitting a VAE run to its first epoch point on the live curve (worker start, data load, one epoch):",
        "",
        _md(pd.DataFrame(a["first_point"]), 2),
        "",
    ]
    return out


def main() -> None:
    import torch

    lines = [
        "# Benchmarks",
        "",
        f"Generated by `python -m bench.report` from `bench/results/*.json`. Python {platform.python_version()}, torch {torch.__version__}, on the CI-class machine (2 CPU cores, no GPU) unless a section says otherwise.",
        "",
    ]
    for name, fn in (("quality", quality), ("throughput", throughput), ("app_latency", latency)):
        data = _load(name)
        if data:
            lines += fn(data)
    notes = ROOT / "docs" / "BENCHMARKS.notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    (ROOT / "docs" / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print(ROOT / "docs" / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
