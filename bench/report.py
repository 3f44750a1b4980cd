"""Render docs/BENCHMARKS.md from bench/results/*.json (run the benchmarks first).

python -m bench.report
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import pandas as pd

from engine import models

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"


def _load(name: str) -> dict | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def _md(df: pd.DataFrame, digits: int = 3) -> str:
    return df.round(digits).to_markdown(index=False)


def _configs(rows: list[dict]):
    """Per-seed rows of one benchmark as ``engine.seeds`` configurations (one per model)."""
    from engine import seeds

    configs: dict[str, seeds.Config] = {}
    for r in rows:
        c = configs.setdefault(
            r["model"],
            seeds.Config(r["model"], r["model"], "", r["model"], r.get("baseline", False)),
        )
        c.runs[int(r["seed"])] = {
            k: v for k, v in r.items() if isinstance(v, (int, float)) and k not in ("seed",)
        }
    return list(configs.values())


def seed_table(block: dict, metrics: list[str]) -> list[str]:
    """Mean ± sd over seeds of each model, and each model paired against the reference
    baseline on the same seeds (same splits)."""
    from engine import metric_names, seeds

    configs = _configs(block["rows"])
    ref = next((c for c in configs if c.model == block.get("reference")), None)
    rows = []
    for c in configs:
        row = {"model": c.model, "seeds": len(c.runs)}
        for m in metrics:
            if c.text(m):
                row[metric_names.name(m)] = c.text(m)
        if ref is not None and c is ref and metrics:
            row[f"Δ {metric_names.name(metrics[0])} vs {ref.model} (paired)"] = "(reference)"
        if ref is not None and c is not ref and metrics:
            p = seeds.paired(c, ref, metrics[0])
            verdict = (
                "better"
                if p.n > 1 and p.p < 0.05 and p.wins > p.n / 2
                else "worse"
                if p.n > 1 and p.p < 0.05
                else "within spread"
            )
            row[f"Δ {metric_names.name(metrics[0])} vs {ref.model} (paired)"] = (
                f"{p.diff:+.3f} ± {p.sd:.3f}, p={p.p:.2g}, {verdict}"
                if p.n > 1 and p.p == p.p
                else f"{p.diff:+.3f} (no spread)"
            )
        mean_s, _, n_s = c.summary("seconds")
        if n_s:
            row["seconds"] = f"{mean_s:.1f}"
        rows.append(row)
    return [pd.DataFrame(rows).to_markdown(index=False), ""]


def _scgen_params(block: dict) -> tuple[str, str, bool]:
    """(output, delta, recorded) a scGen block was measured with. bench.quality and
    bench.scgen_levers record the run's parameters; a block from before they did reads as runs
    of then do (``models.recorded_params``: the decoder's output), and its vector was the paired
    one (bench.quality's tables were rerun when that default changed)."""
    p = block.get("params")
    recorded = isinstance(p, dict)
    how = models.recorded_params("scgen", p if recorded else {})
    return str(how.get("output")), str(how.get("delta") if recorded else "paired"), recorded


def _scgen_cut(block: dict) -> bool:
    """Whether a block's predictions, and the mean-shift baseline, were cut at 0: the 'decoder'
    parameter came with the cut (one commit), so a block recording it was scored with the cut."""
    p = block.get("params")
    return isinstance(p, dict) and "decoder" in p


def _scgen_how(block: dict) -> str:
    output, delta, recorded = _scgen_params(block)
    how = models.SCGEN_OUTPUTS.get(output, "")
    cut = _scgen_cut(block)
    return (
        f"{how} (`output={output}`) and the `{delta}` stimulation vector"
        + ("" if recorded else " (measured before 2026-11-27)")
        + (
            "; predictions and the mean-shift baseline cut at 0 (the data are never negative)"
            if cut
            else "; predictions not cut at 0 (scored before they were)"
            if recorded
            else ""
        )
    )


def _scgen_tables(
    name: str, block: dict, ceiling: dict | None = None, weighted: dict | None = None
) -> list[str]:
    per_seed = block.get("seeds") or {str(block.get("seed", 0)): block}
    frames = []
    for seed, b in per_seed.items():
        t = pd.DataFrame(b["table"])
        t["seed"] = int(seed)
        frames.append(t)
    t = pd.concat(frames)
    cols = {
        "r2_mean_all": "scGen R² all",
        "baseline_noshift_r2_mean_all": "noshift R² all",
        "baseline_meanshift_r2_mean_all": "meanshift R² all",
        "r2_mean_top100": "scGen R² top100",
        "baseline_meanshift_r2_mean_top100": "meanshift R² top100",
    }
    g = t.groupby("cell_type")
    out = g[["n_ctrl", "n_stim"]].first()
    out["epochs"] = g["epochs"].mean().round(0).astype(int)
    for k, label in cols.items():
        m, sd = g[k].mean(), g[k].std(ddof=1).fillna(0)
        out[label] = [
            f"{a:.3f} ± {b:.3f}" if len(per_seed) > 1 else f"{a:.3f}"
            for a, b in zip(m, sd, strict=True)
        ]
    if weighted:  # bench.quality's scgen_weighted step: no training, the same for every seed
        out["cell-weighted meanshift R² all"] = [
            f"{weighted.get(ct, float('nan')):.3f}" for ct in out.index
        ]
    if ceiling:  # bench.quality's scgen_ceiling step: the same for every seed
        out["noise ceiling R² all"] = [f"{ceiling.get(ct, float('nan')):.3f}" for ct in out.index]
    beats = (t["r2_mean_all"] > t["baseline_meanshift_r2_mean_all"]).groupby(t["cell_type"])
    out["beats meanshift (seeds)"] = [f"{int(v.sum())}/{len(v)}" for _, v in beats]
    out = out.reset_index().rename(
        columns={"cell_type": "cell type", "n_ctrl": "ctrl cells", "n_stim": "stim cells"}
    )
    n = len(per_seed)
    minutes = sum(b.get("seconds", 0) for b in per_seed.values()) / 60
    mean_beats = g["r2_mean_all"].mean() > g["baseline_meanshift_r2_mean_all"].mean()
    single = " (one seed: not yet repeated over seeds)" if n == 1 else ""
    return [
        f"#### {name} ({n} seed{'s' if n > 1 else ''}: {', '.join(per_seed)}; {minutes:.1f} min on this CPU){single}",
        "",
        out.to_markdown(index=False, disable_numparse=True),
        "",
        f"Prediction: {_scgen_how(block)}. Mean over seeds: scGen above the mean-shift baseline on {int(mean_beats.sum())}/{len(mean_beats)} cell types.",
        "",
    ]


def scgen_levers(d: dict) -> list[str]:
    """bench/scgen_levers.py: each lever against the mean-shift baseline, per cell type."""
    out = [
        "## scGen's levers (`python -m bench.scgen_levers`)",
        "",
        "Each variant changes what its row names against the app's defaults and runs "
        "leave one cell type out over the seeds. A cell reads: scGen's R² (mean expression, all genes) minus the "
        "mean-shift baseline's on the same held-out cells, mean ± sd over seeds (seeds where "
        "scGen is above). Variants that change the input change both numbers. `output`: the "
        "prediction a row was measured with (`residual`: each control cell + the decoded change, "
        "the default since 2026-11-27; `decoded`: the decoder's output, the default before, so "
        "rows measured before then changed their lever on top of it); `cut at 0`: the "
        "prediction and the mean-shift baseline's were cut at 0 (the default since 2026-11-27; "
        "rows without it were scored uncut, and the cut moves both R²). `machine`: where it "
        "trained (rows from a GPU machine come from `bench/gpu_levers.sh`, every cell type in "
        "its own process on the card; compare them with the same machine's defaults row scored "
        "the same way: the same seed on another machine differs by about as much as two seeds "
        "do).",
        "",
    ]
    measured = (_load("quality") or {}).get("scgen", {})
    for set_key, variants in d.items():
        seed_sets = {frozenset(v["seeds"]) for v in variants.values()}
        same = measured.get(set_key, {})
        if "default" not in variants and seed_sets == {frozenset(same.get("seeds", {}))}:
            # no defaults row of its own: bench.quality's scGen table on the same seeds, said so
            variants = {
                "default": {
                    "what": f"the scGen table above (same seeds; delta={_scgen_params(same)[1]})",
                    "seeds": same["seeds"],
                    "params": same.get("params"),
                },
                **variants,
            }
        rows = []
        # the defaults first; another machine's rows after this one's, cut rows before uncut
        # ones, each group's defaults row first
        order = sorted(
            variants.items(),
            key=lambda kv: (
                kv[0] != "default",
                "device" in kv[1],
                not _scgen_cut(kv[1]),
                kv[0].split("@")[0] not in ("default", "default-uncut"),
            ),
        )
        for _, block in order:
            t = pd.concat(
                [pd.DataFrame(b["table"]).assign(seed=int(s)) for s, b in block["seeds"].items()]
            )
            t["diff"] = t["r2_mean_all"] - t["baseline_meanshift_r2_mean_all"]
            g = t.groupby("cell_type")
            row = {
                "variant": block["what"],
                "output": _scgen_params(block)[0] + (", cut at 0" if _scgen_cut(block) else ""),
                "machine": block.get("device", "this CPU"),
            }
            for ct, x in g:
                sd = x["diff"].std(ddof=1) if len(x) > 1 else 0.0
                row[ct] = (
                    f"{x['diff'].mean():+.3f} ± {sd:.3f} ({int((x['diff'] > 0).sum())}/{len(x)})"
                )
            above = (g["diff"].mean() > 0).sum()
            row["types above"] = f"{above}/{g.ngroups}"
            row["scGen R² (mean of types)"] = f"{g['r2_mean_all'].mean().mean():.3f}"
            rows.append(row)
        n = len(next(iter(variants.values()))["seeds"])
        out += _text_table(f"#### {set_key} ({n} seeds)", rows)
    return out


def _text_table(title: str, rows: list[dict]) -> list[str]:
    """A titled table of cells that are already text (``mean ± sd`` and the like)."""
    return [title, "", pd.DataFrame(rows).to_markdown(index=False, disable_numparse=True), ""]


def quality(q: dict) -> list[str]:
    out = [
        "## Model quality on real data (`python -m bench.quality`)",
        "",
        "Each figure is the mean ± standard deviation over the seeds named in its section; a seed "
        "drives the split, so every model of a row set was scored on the same test cells per seed, "
        "and the Δ column is the paired difference to the reference baseline (two-sided paired "
        "t-test over seeds: `engine.seeds.paired`, as the Compare page shows it). Seconds are "
        "wall time per run on the 2-core machine while other work shared it: read them as rough.",
        "",
    ]
    meta = q.get("meta", {})

    def seeds_of(step: str) -> str:
        s = meta.get(step, {}).get("seeds")
        return f" (seeds {', '.join(map(str, s))})" if s else ""

    sections = (
        ("classify", "Classification", ["test_accuracy", "test_f1_macro"]),
        ("abnormality", "Abnormality, leave one population out", ["abnormality_auroc"]),
        ("reconstruct", "Reconstruction", ["test_mse"]),
        ("embed", "Latent embedding", ["latent_knn_accuracy", "latent_silhouette"]),
    )
    notes = {
        "abnormality": "Train on every population but one (the reference group), score the "
        "left-out population as the abnormal cells: AUROC of its cells against held-out test "
        "cells of the reference group, averaged over every left-out population, then over seeds. "
        "IsolationForest (scikit-learn defaults) is fitted on the same reference training cells.",
        "embed": "kNN accuracy: a 15-NN classifier fitted on the training cells' latent codes "
        "predicts the test cells' cell types. Silhouette: by cell type, on up to 5,000 cells.",
        "classify": "`logreg (old default)` is the previous default (Adam on mini-batches, no L2 "
        "penalty) measured in the same run; `majority class` predicts the training cells' most "
        "frequent type for every test cell.",
    }
    for step, title, metrics in sections:
        if step not in q or not isinstance(q[step], dict):
            continue
        out += [f"### {title}{seeds_of(step)}", ""]
        if step in notes:
            out += [notes[step], ""]
        for block in q[step].values():
            if not isinstance(block, dict) or "rows" not in block:
                continue
            out += [f"#### {block['title']}", ""]
            out += seed_table(block, metrics)
    if "scgen" in q:
        out += [
            "### Perturbation: scGen leave-one-cell-type-out against both baselines",
            "",
            "Each row trains a fresh scGen (the app's defaults: the published network and training, 2x800, latent 100, KL 5e-5, Adam 1e-3, batch 32, early stopping patience 25, with the paired stimulation vector: the mean over the training cell types of their latent shift) without that cell type's stimulated cells, then predicts them. "
            "Under each table: the prediction it was measured with (the default since 2026-11-27: each control cell + the decoded change, `output=residual`; before: the decoder's output, as the scGen package predicts, now `output=decoded`, in the levers table below and the notes). "
            "`noshift`: the control cells unchanged; `meanshift`: control + mean (stimulated - control) shift of the training cell types in gene space. "
            "R² = squared Pearson correlation of per-gene means (scGen's `reg_mean_plot`), on all genes and on the top-100 Wilcoxon DEGs of the held-out type; mean ± sd over seeds. "
            "`noise ceiling`: the R² (all genes) a perfect prediction would be expected to reach against the held-out type's real stimulated cells, whose mean is noisy when they are few (split-half of those cells lifted to all of them by the Spearman-Brown formula: `engine.evaluate.noise_ceiling`, the figure the Results page shows; `python -m bench.quality --only scgen_ceiling`). Where the mean-shift baseline is already near it, no model can be shown to be better on that type. "
            "`cell-weighted meanshift`: a stronger mean-shift baseline, for reading the margins (not the app's): each training type's shift weighted by the harmonic mean of its control and stimulated cell counts instead of equally (`engine.perturb.mean_shift(weighted=True)`; `python -m bench.quality --only scgen_weighted`); the app's baseline and scGen's paired vector weight types equally. "
            "`beats meanshift` counts seeds against the app's baseline.",
            "",
        ]
        for name, block in q["scgen"].items():
            out += _scgen_tables(
                name,
                block,
                (q.get("scgen_ceiling") or {}).get(name),
                (q.get("scgen_weighted") or {}).get(name),
            )
    return out


# fp32 (non-tensor-core) dense peak of the cards the device tool lends, from NVIDIA's data sheets
FP32_PEAK = {"H100": 67e12, "H200": 67e12}


def scgen_diagnose(d: dict) -> list[str]:
    """bench/scgen_diagnose.py: scGen's decoded change taken apart, per held-out cell type."""
    out = [
        "## Where scGen's change falls short (`python -m bench.scgen_diagnose`)",
        "",
        "The app's leave-one-out scGen models (defaults; the same seeds and weights as the scGen "
        "tables above), each held-out type's prediction rescored after training, so every "
        "column uses the same weights. R² columns read as the difference from the mean-shift "
        "baseline on the same cells, mean ± sd over seeds: `scGen` the app's prediction; "
        "`weighted delta` the paired vector with training types weighted by cells (harmonic mean "
        "of their control and stimulated counts); `gain (train)` the decoded change times one "
        "gain fitted on the training types; `gain (oracle)` and `meanshift gain (oracle)` the "
        "change times the gain that best fits the held-out type's real change (it uses the "
        "answer: not a method, a bound on what the amplitude alone could give). `shift r`: the "
        "correlation over genes of the predicted and the real change (the direction alone). "
        "`gains`: the fitted gain on the training types, then the oracle's. `decoded at training "
        "types`: the same vector decoded at the training types' control cells instead of the "
        "held-out type's (one change for all types, as the mean-shift's, but the model's); "
        "`identity removed`: the vector without its component along the held-out type's "
        "identity (its control cells' latent mean minus the mean of all types'), and `identity "
        "cos` the cosine of the two. `scGen 95% interval`: scGen's R² minus the baseline's, "
        "95% interval over the held-out type's cells (bootstrap; mean of the seeds' bounds), and "
        "in how many seeds it lies wholly above or below 0.",
        "",
    ]
    diffs = {
        "scGen": "scgen",
        "weighted delta": "weighted delta",
        "gain (train)": "gain (train)",
        "gain (oracle)": "gain (oracle)",
        "cell-weighted meanshift": "cell-weighted meanshift",
        "meanshift gain (oracle)": "meanshift gain (oracle)",
        "decoded at training types": "decoded at training types",
        "identity removed": "identity removed",
    }

    def ms(v: pd.Series, sign: bool = True) -> str:
        sd = v.std(ddof=1) if len(v) > 1 else 0.0
        return f"{v.mean():+.3f} ± {sd:.3f}" if sign else f"{v.mean():.2f} ± {sd:.2f}"

    for set_key, block in d.items():
        t = pd.concat(
            [pd.DataFrame(rows).assign(seed=int(s)) for s, rows in block["seeds"].items()]
        )
        rows = []
        for ct, x in t.groupby("cell_type"):
            row = {"cell type": ct, "meanshift R²": f"{x['meanshift'].mean():.3f}"}
            for label, col in diffs.items():
                if col in x:  # results written before a column existed lack it
                    row[label] = ms(x[col] - x["meanshift"])
            spans = [v for v in x.get("interval", []) if isinstance(v, list | tuple)]
            if spans:  # per seed; the verdict counts the seeds
                lo, hi = np.array([v[0] for v in spans]), np.array([v[1] for v in spans])
                row["scGen 95% interval"] = (
                    f"{lo.mean():+.3f} to {hi.mean():+.3f} "
                    f"(above {int((lo > 0).sum())}, below {int((hi < 0).sum())} of {len(lo)})"
                )
            if "identity cos" in x:
                row["identity cos"] = ms(x["identity cos"], sign=False)
            row["scGen shift r"] = ms(x["scgen shift r"], sign=False)
            row["meanshift shift r"] = ms(x["meanshift shift r"], sign=False)
            row["gains (train, oracle)"] = (
                f"{x['train gain'].mean():.2f}, {x['oracle gain'].mean():.2f}"
            )
            rows.append(row)
        out += _text_table(f"#### {set_key} ({len(block['seeds'])} seeds, {block['date']})", rows)
        out += _costly_genes_table(set_key, t)
    return out


def _costly_genes_table(set_key: str, t: pd.DataFrame, n: int = 6) -> list[str]:
    """Per cell type where scGen is below the mean-shift on average: the genes that cost it most
    over all seeds (a gene's cost: scGen's squared error minus the baseline's, summed over the
    seeds where it is among the ten costliest), with the mean real and predicted changes."""
    if "genes" not in t:
        return []
    rows = []
    for ct, x in t.groupby("cell_type"):
        if (x["scgen"] - x["meanshift"]).mean() >= 0:
            continue
        g = pd.DataFrame([gene for genes in x["genes"] for gene in genes])
        top = g.groupby("gene").agg(
            cost=("cost", "sum"),
            real=("real", "mean"),
            scgen=("scgen", "mean"),
            meanshift=("meanshift", "mean"),
        )
        top = top.sort_values("cost", ascending=False).head(n)
        rows.append(
            {
                "cell type": ct,
                "genes (real change / scGen's / mean-shift's)": ", ".join(
                    f"{gene} ({r.real:+.2f} / {r.scgen:+.2f} / {r.meanshift:+.2f})"
                    for gene, r in top.iterrows()
                ),
            }
        )
    if not rows:  # scGen above the baseline on every type
        return []
    return _text_table(
        f"Where scGen's change costs it most, {set_key} (types below the baseline; "
        "log-expression changes, mean over seeds)",
        rows,
    )


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
        "Page script time in AppTest (the same script a browser session runs) with a dataset of "
        "synthetic counts x 2,000 genes loaded and a finished VAE run on it: first run, then a "
        f"rerun with the dataset cached (measured {a.get('date', 'before 2026-11-26')}).",
        "",
    ]
    failed = [f"{r['page']} at {r['n']:,}" for r in a["pages"] if r.get("exception")]
    if failed:
        out += [f"Pages that raised: {', '.join(failed)}.", ""]
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


def scale(d: dict) -> list[str]:
    """bench/scale.py: open, describe and page views, preprocessing vs scanpy, training."""
    out = [
        "## A million cells (`python -m bench.scale`)",
        "",
        f"Synthetic sparse counts x {d.get('genes', 2000):,} genes (~10% non-zero); {d.get('machine', '')}. "
        "Opening and preprocessing were measured on the 2-core machine while other work shared "
        "it (load 5-6), so single figures vary by up to 1.6x between repeats; ratios are taken "
        "within one run. The training table was measured with the machine otherwise idle "
        "(load under 1.2), the MLP with 2,000 timed batches (its steps take ~2 ms, so 200 "
        "batches were too short to time against the machine's noise).",
        "",
    ]
    res = d.get("results", [])
    opened = [r for r in res if r["stage"] == "open"]
    if opened:
        cols = {
            "n": "cells",
            "import_s": "import by server path s",
            "reader_child_peak_mb": "reader child peak MB",
            "data_first_s": "Data first view s",
            "data_rerun_s": "Data rerun s",
            "preprocess_first_s": "Preprocess first view s",
            "preprocess_rerun_s": "Preprocess rerun s",
            "describe_qc_s": "describe + QC (once, at save) s",
            "app_peak_mb": "app peak MB",
            "preview_s": "Preview (child) s",
            "preview_child_peak_mb": "Preview child peak MB",
        }
        t = pd.DataFrame(opened)[[c for c in cols if c in opened[0]]].rename(columns=cols)
        t["cells"] = t["cells"].map("{:,}".format)
        out += ["### Opening and page views", "", _md(t, 2), ""]
    pre = [r for r in res if r["stage"] == "preprocess"]
    if pre:
        rows = []
        for r in pre:
            df = pd.DataFrame(r["rows"])
            sums = df.groupby("which")["seconds"].sum()
            peaks = df.groupby("which")["peak_mb"].max()
            rows.append(
                {
                    "cells": r["n"],
                    "engine s (sum of repeats)": sums.get("engine"),
                    "scanpy s (sum of repeats)": sums.get("scanpy"),
                    "engine / scanpy": sums.get("engine") / sums.get("scanpy"),
                    "engine peak MB": peaks.get("engine"),
                    "scanpy peak MB": peaks.get("scanpy"),
                }
            )
        steps = ", ".join(step for step, _ in pre[0]["recipe"])
        rows = [r | {"cells": f"{r['cells']:,}"} for r in rows]
        out += [
            f"### Preprocessing: engine against the same scanpy calls ({steps}; fresh process each, interleaved)",
            "",
            _md(pd.DataFrame(rows), 2),
            "",
        ]
    tr = [r for r in res if r["stage"] == "train"]
    if tr:
        rows = []
        for r in tr:
            df = pd.DataFrame(r["rows"])
            if "timed_batches" not in df:
                df["timed_batches"] = 200
            for model, g in df.groupby("model"):
                rows.append(
                    {
                        "cells": r["n"],
                        "model": model,
                        "timed batches": int(g["timed_batches"].fillna(200).iloc[0]),
                        "cells/s (min-max over repeats, prefetch on/off)": f"{g['cells_per_s'].min():,.0f}-{g['cells_per_s'].max():,.0f}",
                        "median cells/s": g["cells_per_s"].median(),
                        "worker peak MB": g["peak_mb"].max(),
                    }
                )
        t = pd.DataFrame(rows).sort_values(["model", "cells"])
        spread = t.groupby("model")["median cells/s"].agg(lambda v: v.max() / v.min())
        t["cells"] = t["cells"].map("{:,}".format)
        out += [
            "### Training on the sparse host path (batch 128, 1 torch thread)",
            "",
            _md(t, 0),
            "",
            "Median cells/s, largest over smallest across sizes: "
            + ", ".join(f"{m} {v:.2f}x" for m, v in spread.items())
            + " (time per epoch is cells / cells/s: linear in cells when this is flat).",
            "",
        ]
    return out


def results_scale(d: dict, full: bool = False) -> list[str]:
    """bench/results_scale.py: results file size, Results and Compare page views, the worker's
    peak memory and the streamed export (``full``: every cell trained)."""
    cols = {
        "n": "cells",
        "model": "model",
        "run_wall_s": "run s (submit to end)",
        "worker_peak_mb": "worker peak MB",
        "results_mib_per_100k": "results MiB per 100k cells",
        "input_mib_per_100k": "input MiB per 100k cells",
        "results_over_input": "results / input",
        "first_view_s": "Results first view s",
        "rerun_s": "Results rerun s",
        "peak_rss_gb": "page process peak GB",
        "export_zip_s": "export --zip s",
        "export_peak_rss_gb": "export peak GB",
    }
    rows = [r for r in d["rows"] if r.get("model") != "compare page"]
    if not rows:
        return []
    if not full:  # the older table's columns only, as measured then
        cols = {k: v for k, v in cols.items() if k in rows[0]}
    t = pd.DataFrame(rows).reindex(columns=list(cols)).rename(columns=cols)
    title = (
        "## A million cells, every cell trained (`python -m bench.results_scale --fit-cells "
        "1000000 --name results_scale_full`)"
        if full
        else "## Results at scale (`python -m bench.results_scale`)"
    )
    out = [
        title,
        "",
        f"Runs on synthetic counts x {d.get('genes', 2000):,} genes, trained on "
        f"{d.get('fit_cells', 0):,} cells{' (one epoch)' if full else ''}, annotated and evaluated "
        "on every cell, submitted to the real worker; dense per-gene layers are stored for every "
        "cell only up to `SCWB_RESULTS_SAMPLE` cells, above that for a stratified sample "
        "(`sample.h5ad`); pages read only what they draw.",
        "",
        _md(t, 2),
        "",
    ]
    for c in (r for r in d["rows"] if r.get("model") == "compare page"):
        out += [
            f"Compare page with these runs ({c['n']:,} cells): first view "
            f"{c.get('compare_first_view_s')} s, rerun {c.get('compare_rerun_s')} s, page process "
            f"peak {c.get('compare_peak_rss_gb')} GB.",
            "",
        ]
    for b in d.get("before") or []:
        after = b.get("new_page_on_old_run_after_block_sampling", {})
        out += [
            f"Before (every cell's dense layers stored), {b['model']} at {b['n']:,} cells: "
            f"`results.h5ad` {b['results_mib']:,.0f} MiB ({b['results_over_input']:.0f}x the input); "
            f"the old page read it whole in {b['old_page_full_read_s']:.1f} s; the new page opens "
            f"such an older run in {after.get('first_view_s', float('nan')):.2f} s.",
            "",
        ]
    return out


def upload(d: dict) -> list[str]:
    """bench/upload.py: a large file through a real browser, by each uploader."""
    rows = d.get("rows") or [{"served": "app.py", **d}]
    how = {
        "serve.py": "our streaming route (`make run`: serve.py)",
        "app.py": "Streamlit's in-memory st.file_uploader (`streamlit run app.py`)",
    }
    lines = [
        "## A large upload in a real browser (`python -m bench.upload`)",
        "",
        "Debian chromium (playwright) uploads bench.scale's synthetic counts (2,000 genes) to the "
        "Data page and presses Load file; the load validates and reads the file in the reader "
        "child, describes and saves it. Memory is the resident size of the app process (its "
        "peak sampled every 0.1 s) and of the reader child.",
        "",
        "| uploader | cells | file MB | upload s | load s | app at rest MB | app peak, upload MB "
        "| app peak, load MB | app after MB | reader child peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(rows, key=lambda r: (r.get("served") != "serve.py", r["cells"])):
        lines.append(
            f"| {how.get(r.get('served'), r.get('served'))} | {r['cells']:,} | {r['file_mb']:,.0f} "
            f"| {r.get('upload_s')} | {r.get('load_s')} | {r.get('app_base_mb')} "
            f"| {r.get('app_peak_upload_mb')} | {r.get('app_peak_load_mb')} "
            f"| {r.get('app_after_load_mb')} | {r.get('reader_child_peak_mb')} |"
        )
    errors = [
        f"{r.get('served')} at {r['cells']:,} cells: {r['error']}" for r in rows if r.get("error")
    ]
    return [*lines, "", *(f"Error: {e}" for e in errors), ""]


def _gpu_runs() -> list[dict]:
    """Every GPU run under bench/results/gpu/*/gpu.json (dry runs left out), oldest first."""
    runs = []
    for f in (RESULTS / "gpu").glob("*/gpu.json"):
        d = json.loads(f.read_text())
        if not d.get("dry_run"):
            runs.append({"folder": f.parent.name, **d, "machine": d.get("machine") or {}})
    return sorted(runs, key=lambda d: str(d["machine"].get("date", "")))


def _latest(runs: list[dict], part: str) -> dict | None:
    """The newest run that measured ``part`` (a row with a figure) without an error in it."""
    key = {"vae": "cells_per_s", "scgen": "cuda", "submit": "first_live_point_s"}[part]
    for d in reversed(runs):
        failed = any(str(e).startswith(f"{part}:") for e in d.get("errors") or [])
        block = d.get(part)
        rows = block if isinstance(block, list) else [block] if isinstance(block, dict) else []
        if not failed and any(isinstance(r, dict) and r.get(key) for r in rows):
            return d
    return None


def _card(d: dict) -> str:
    return f"run {d['folder']}, {d['machine'].get('card') or 'no card named'}"


def gpu(runs: list[dict]) -> list[str]:
    """bench/gpu.sh on a lent GPU machine: the gpu tests, VAE vs scvi-tools, scGen, submit."""
    m = runs[-1]["machine"]  # the newest run's machine; each table names its own run and card
    out = [
        "## On a GPU (`bash bench/gpu.sh` on the device machine)",
        "",
        f"Card: {m.get('card')} ({m.get('card_memory_gb')} GiB, {m.get('multiprocessors')} SMs), "
        f"driver {m.get('driver')}; Python {m.get('python')}, torch {m.get('torch')} (CUDA "
        f"{m.get('torch_cuda')}), Lightning {m.get('pytorch-lightning')}, anndata {m.get('anndata')}, "
        f"numpy {m.get('numpy')}: the machine image's packages, not requirements.txt's; fp32 matrix "
        f"products at `{m.get('float32_matmul_precision')}` precision; {m.get('date')}. "
        "Each run's files are in `bench/results/gpu/<run>/`.",
        "",
        "| run | date | parts measured | gpu tests | errors |",
        "|---|---|---|---|---|",
    ]
    for d in runs:
        t = d.get("pytest_gpu") or {}
        tests = (
            f"{t.get('passed', 0)} passed, {t.get('failures', 0)} failed, {t.get('errors', 0)} errors"
            if t
            else "not run"
        )
        errs = [*([d["error"]] if d.get("error") else []), *(d.get("errors") or [])]
        errs += [
            f"{r.get('part')}: {r['error']}"
            for part in ("vae", "scvi", "submit")
            for r in (d.get(part) if isinstance(d.get(part), list) else [])
            if isinstance(r, dict) and r.get("error")
        ]
        errors = "; ".join(str(e)[:90] for e in errs) or "none"
        parts = ", ".join(p for p in d.get("parts_s", {}) if d.get(p))
        out.append(f"| {d['folder']} | {d['machine'].get('date')} | {parts} | {tests} | {errors} |")
    out.append("")
    tested = next((d for d in reversed(runs) if (d.get("pytest_gpu") or {}).get("tests")), None)
    if tested:
        t = tested["pytest_gpu"]
        out += [f"`pytest -m gpu` in run {tested['folder']}: {t['passed']} of {t['tests']} passed."]
        out += [
            f"- failed: `{f['test']}`: {(str(f.get('message') or '').splitlines() or [''])[0]}"
            for f in t.get("failed") or []
        ]
        out.append("")
    vae = _latest(runs, "vae")
    if vae:
        rows = [r for r in vae["vae"] + (vae.get("scvi") or []) if r.get("cells_per_s")]
        df = pd.DataFrame(rows)
        if "share_of_peak" not in df:
            df["share_of_peak"] = None
        table = pd.DataFrame(
            {
                "cells": [f"{n:,}" for n in df["n"]],
                "method": df["method"].replace({"scvi": "scvi-tools"}),
                "batch": df["batch_size"],
                "precision": df["precision"],
                "cells/s": df["cells_per_s"].round(0).astype(int),
                "s per epoch": df["epoch_s"],
                "peak GPU MB": df["peak_gpu_mb"],
                "share of peak": [
                    f"{v:.2%}" if isinstance(v, (int, float)) and np.isfinite(v) else "n/a"
                    for v in df["share_of_peak"]
                ],
            }
        ).iloc[np.lexsort((df["precision"], df["method"], df["batch_size"], df["n"]))]
        out += [
            f"### VAE training throughput ({_card(vae)})",
            "",
            "NB VAE, 128 hidden, 10 latent, one layer; synthetic counts x 2,000 genes, 10% non-zero, "
            "held dense on the card; cells/s over a timed stretch (to the end of the epoch, or 5 s) "
            "after 20 warm-up steps; share of the card's data-sheet fp32 (or bf16) peak from the "
            "dense-layer FLOPs per cell. Sizes with too few steps per epoch to time are left out.",
            "",
            _md(table, 3),
            "",
        ]
        ratios = vae.get("engine_vs_scvi") or []
        if ratios:
            out += [
                "Engine / scvi-tools, same card, data, model and batch size: "
                + "; ".join(
                    f"{r['n']:,} cells at batch {r['batch_size']}: {r['ratio']:.2f}x"
                    for r in ratios
                )
                + ".",
                "",
            ]
    sg = _latest(runs, "scgen")
    if sg:
        g = sg["scgen"]
        rows = [
            {
                "where": v["device"],
                "epochs": v["epochs_run"],
                "train s": v["train_s"],
                "run s": v["run_wall_s"],
                "R² mean, all genes": v["r2_mean_all"],
                "R² mean, top 100 DEGs": v["r2_mean_top100"],
            }
            for k in ("cuda", "cpu")
            if (v := g.get(k))
        ]
        cpu = g.get("cpu") or {}
        if not cpu:
            cpu_note = "no CPU reference was measured."
        elif cpu.get("source"):  # bench/gpu.sh trains it beside the tests
            cpu_note = (
                f"the CPU row is the same spec on the same machine's CPU ({cpu.get('device')}), "
                "trained while the tests ran on the card, so its time is not a clean comparison; "
                "its R² is."
            )
        else:
            cpu_note = (
                f"the CPU row is the same spec on {cpu.get('device')}, trained in the same run."
            )
        out += [
            f"### scGen, published defaults ({_card(sg)})",
            "",
            f"`{g.get('data')}`, {g.get('epochs')} epochs with no early stop, seed 0, "
            f"{g.get('predict')} cells' {g.get('stim')} state held out; {cpu_note}",
            "",
            _md(pd.DataFrame(rows), 4),
            "",
        ]
        if g.get("r2_diff_vs_cpu") is not None:
            out += [f"R² on the card minus on the CPU: {g['r2_diff_vs_cpu']:+.4f}.", ""]
    sub = _latest(runs, "submit")
    if sub:
        table = pd.DataFrame(
            [
                {
                    "cells": f"{r['n']:,}",
                    "file MB": r["file_mb"],
                    "submit s": r["submit_cli_s"],
                    "first live point s": r["first_live_point_s"],
                    "cells/s reported": r.get("cells_per_s_reported"),
                }
                for r in sub["submit"]
                if "first_live_point_s" in r
            ]
        )
        out += [
            f"### From `engine submit` to the first live point ({_card(sub)})",
            "",
            "A VAE on synthetic counts x 2,000 genes (an .h5ad written first), the split held on the "
            "card; seconds from the command until status.json shows an epoch or metrics.csv appears.",
            "",
            _md(table, 2),
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
    for name, fn in (
        ("quality", quality),
        ("scgen_levers", scgen_levers),
        ("scgen_diagnose", scgen_diagnose),
        ("throughput", throughput),
        ("app_latency", latency),
        ("scale", scale),
        ("results_scale", results_scale),
        ("results_scale_full", lambda d: results_scale(d, full=True)),
        ("upload", upload),
    ):
        data = _load(name)
        if data:
            lines += fn(data)
    gpu_runs = _gpu_runs()
    if gpu_runs:
        lines += gpu(gpu_runs)
    notes = ROOT / "docs" / "BENCHMARKS.notes.md"
    if notes.exists():
        lines += [notes.read_text()]
    (ROOT / "docs" / "BENCHMARKS.md").write_text("\n".join(lines) + "\n")
    print(ROOT / "docs" / "BENCHMARKS.md")


if __name__ == "__main__":
    main()
