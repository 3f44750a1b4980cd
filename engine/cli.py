"""The command line: ``python -m engine COMMAND ...`` (the same calls the app makes).

Bad input ends with a non-zero exit and one line on stderr; no traceback (``SCWB_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from engine.errors import ScwbError


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return key, value


def _add_train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, help="input .h5ad (or any readable format)")
    p.add_argument("--model", required=True, help="model name (python -m engine models)")
    p.add_argument(
        "--label-key", help="obs column with the labels (classifiers; colours/stratifies others)"
    )
    p.add_argument("--layer", help="layer to train on instead of X (e.g. counts)")
    p.add_argument("--epochs", type=int, help="maximum epochs (default per model)")
    p.add_argument("--batch-size", type=int, help="mini-batch size (default per model)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default per model)")
    p.add_argument("--patience", type=int, help="early-stopping patience in epochs")
    p.add_argument(
        "--seed", type=int, default=0, help="one seed for split, torch and numpy (default 0)"
    )
    p.add_argument(
        "--device", default="auto", choices=["auto", "cpu", "cuda", "mps"], help="where to train"
    )
    p.add_argument(
        "--train-on",
        metavar="KEY=V1,V2",
        help="train on these cells only, score all (e.g. condition=healthy)",
    )
    p.add_argument(
        "--param",
        action="append",
        type=_kv,
        default=[],
        metavar="NAME=VALUE",
        help="model parameter (repeatable)",
    )
    p.add_argument("--condition-key", help="perturbation: obs column with the condition")
    p.add_argument("--ctrl", help="perturbation: the control value")
    p.add_argument("--stim", help="perturbation: the stimulated value")
    p.add_argument("--cell-type-key", help="perturbation: obs column with cell types")
    p.add_argument(
        "--predict",
        metavar="CELLTYPE|all",
        help="perturbation: cell type to hold out and predict ('all': leave each out)",
    )
    p.add_argument("--group", help="comparison group name (runs compared on the same split)")
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="train one run data-parallel on N devices (GPUs, or CPU processes); default 1",
    )


def _spec(args: argparse.Namespace, out: str = ""):
    from engine.spec import RunSpec

    return RunSpec(
        model=args.model,
        data=str(Path(args.data).resolve()),
        out=out,
        label_key=args.label_key,
        layer=args.layer,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        train_on=args.train_on,
        params=dict(args.param),
        patience=args.patience,
        condition_key=args.condition_key,
        ctrl=args.ctrl,
        stim=args.stim,
        cell_type_key=args.cell_type_key,
        predict=args.predict,
        dataset_name=Path(args.data).name,
        group=args.group,
        devices=args.devices,
        launcher=(getattr(args, "launcher", None) or os.environ.get("SCWB_LAUNCHER") or "local")
        if args.command == "submit"
        else "local",
    )


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m engine",
        description="scWorkbench engine: data, preprocessing, training and runs from the command line.",
    )
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "info", help="describe a dataset (shape, what X and layers hold, label columns)"
    )
    p.add_argument("file")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = sub.add_parser("demo", help="write a bundled demo dataset to a file")
    p.add_argument("name", help="pbmc68k_reduced | synthetic_perturbation")
    p.add_argument("-o", "--out", required=True)

    p = sub.add_parser(
        "preprocess", help="apply a recipe (step options, in this order, or --recipe JSON)"
    )
    p.add_argument("file")
    p.add_argument("-o", "--out", required=True, help="output .h5ad")
    p.add_argument("--recipe", help="recipe JSON file (replaces the step options)")
    p.add_argument(
        "--subset", metavar="KEY=V1,V2", help="keep cells whose obs[KEY] is one of the values"
    )
    p.add_argument(
        "--min-genes", type=int, default=0, help="filter cells with fewer detected genes"
    )
    p.add_argument("--min-counts", type=int, default=0, help="filter cells with fewer counts")
    p.add_argument(
        "--max-pct-mito",
        type=float,
        default=100.0,
        help="filter cells above this mitochondrial percentage",
    )
    p.add_argument("--min-cells", type=int, default=0, help="filter genes seen in fewer cells")
    p.add_argument(
        "--keep-counts",
        action="store_true",
        help="copy raw counts to layers['counts'] before normalising",
    )
    p.add_argument(
        "--normalize",
        choices=["logcpm", "cp10k", "cpm"],
        help="library-size normalisation (+log1p, except cpm)",
    )
    p.add_argument("--hvg", type=int, metavar="N", help="keep the N most variable genes")
    p.add_argument(
        "--arcsinh", type=float, metavar="COFACTOR", help="asinh(x / cofactor) (cytometry)"
    )
    p.add_argument("--scale", choices=["minmax", "zscore"], help="per-gene scaling")
    p.add_argument("--clip", type=float, default=10.0, help="z-score clip value (0: none)")
    p.add_argument("--save-recipe", metavar="JSON", help="also write the recipe used")

    p = sub.add_parser("train", help="train a model in this process, writing RUN_DIR")
    _add_train_options(p)
    p.add_argument("--out", required=True, help="run folder to write")

    p = sub.add_parser(
        "submit", help="queue a training in the background; prints its run folder at once"
    )
    _add_train_options(p)
    p.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        help="where the run's process lives (default $SCWB_LAUNCHER or local)",
    )

    p = sub.add_parser("runs", help="list runs in the workspace ($SCWB_HOME)")
    p.add_argument("--json", action="store_true")

    for name, text in (
        ("cancel", "stop a queued or running run"),
        ("delete", "delete a finished run"),
        ("wait", "wait until a run ends"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("run", help="run id or folder")
        if name == "wait":
            p.add_argument("--timeout", type=float)

    p = sub.add_parser("predict", help="apply a trained run's model to new data")
    p.add_argument("--run", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("-o", "--out", required=True)
    p.add_argument(
        "--align",
        action="store_true",
        help="fill genes the data lacks with zeros instead of refusing",
    )

    p = sub.add_parser("models", help="list the models, their tasks and parameters")
    p.add_argument("--json", action="store_true")

    sub.add_parser("device", help="show the compute devices")
    return ap


def recipe_from_args(args: argparse.Namespace):
    from engine.preprocess import Recipe, Step

    if args.recipe:
        return Recipe.load(args.recipe)
    steps = []
    if args.subset:
        key, _, values = args.subset.partition("=")
        steps.append(Step("subset", {"key": key, "values": [v for v in values.split(",") if v]}))
    if args.min_genes or args.min_counts or args.max_pct_mito < 100:
        steps.append(
            Step(
                "filter_cells",
                {
                    "min_genes": args.min_genes,
                    "min_counts": args.min_counts,
                    "max_pct_mito": args.max_pct_mito,
                },
            )
        )
    if args.min_cells:
        steps.append(Step("filter_genes", {"min_cells": args.min_cells}))
    if args.keep_counts:
        steps.append(Step("keep_counts"))
    if args.normalize:
        steps.append(
            Step(
                "normalize",
                {
                    "target_sum": 1e4 if args.normalize == "cp10k" else 1e6,
                    "log": args.normalize != "cpm",
                },
            )
        )
    if args.hvg:
        steps.append(Step("hvg", {"n_top": args.hvg}))
    if args.arcsinh:
        steps.append(Step("arcsinh", {"cofactor": args.arcsinh}))
    if args.scale:
        steps.append(Step("scale", {"method": args.scale, "max_value": args.clip}))
    return Recipe(steps)


def run_command(args: argparse.Namespace) -> int:
    from engine import io

    cmd = args.command
    if cmd == "info":
        d = io.describe(io.read(args.file))
        if args.json:
            print(json.dumps(d, indent=2, default=str))
        else:
            print(
                f"{d['n_obs']} cells x {d['n_vars']} genes; X: {d['x_kind']} ({'sparse' if d['sparse'] else 'dense'}, {100 * d['sparsity']:.1f}% zeros, {d['memory_mb']} MB)"
            )
            for k, v in d["layers"].items():
                print(f"layer {k}: {v}")
            for col, counts in d["labels"].items():
                shown = ", ".join(f"{k} {v}" for k, v in list(counts.items())[:8])
                print(
                    f"label {col}: {len(counts)} values ({shown}{', ...' if len(counts) > 8 else ''})"
                )
            if d["embeddings"]:
                print("embeddings: " + ", ".join(d["embeddings"]))
        return 0
    if cmd == "demo":
        from engine.demos import load_demo

        print(io.write_h5ad(load_demo(args.name), args.out))
        return 0
    if cmd == "preprocess":
        from engine.preprocess import apply

        recipe = recipe_from_args(args)
        out, report = apply(io.read(args.file), recipe)
        io.write_h5ad(out, args.out)
        if args.save_recipe:
            Path(args.save_recipe).write_text(recipe.to_json())
        for row in report:
            print(
                f"{row['step']:<14} {row['n_obs']:>8} cells {row['n_vars']:>7} genes  {row['seconds']:.2f}s"
            )
        return 0
    if cmd == "train":
        from engine.train import run

        metrics = run(_spec(args, str(Path(args.out).resolve())))
        if not metrics:  # an extra process of a multi-device run
            return 0
        print(
            json.dumps(
                {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}, indent=2
            )
        )
        return 0
    if cmd == "submit":
        from engine import jobs

        print(jobs.submit(_spec(args)))
        return 0
    if cmd == "runs":
        from engine import jobs

        rows = jobs.list_jobs()
        if args.json:
            print(json.dumps(rows, indent=2, default=str))
        else:
            for r in rows:
                print(
                    f"{r['id']:<40} {r['state'] or '?':<11} {r['model']:<12} {r['dataset']:<28} epoch {r['epoch'] or 0}/{r['max_epochs'] or '?'}"
                )
        return 0
    if cmd in ("cancel", "delete", "wait"):
        from engine import jobs

        if cmd == "cancel":
            print(jobs.cancel(args.run))
        elif cmd == "delete":
            jobs.delete(args.run)
        else:
            st = jobs.wait(args.run, timeout=args.timeout)
            print(st.get("state"))
            return 0 if st.get("state") == "completed" else 1
        return 0
    if cmd == "predict":
        from engine.predict import predict

        out = predict(args.run, io.read(args.data), align=args.align)
        io.write_h5ad(out, args.out)
        if out.uns.get("missing_genes") is not None and len(out.uns["missing_genes"]):
            print(
                f"warning: {len(out.uns['missing_genes'])} genes were missing and set to zero",
                file=sys.stderr,
            )
        print(args.out)
        return 0
    if cmd == "models":
        from engine import models

        if args.json:
            print(
                json.dumps(
                    {
                        n: {"task": m.task, "title": m.title, "doc": m.doc, "params": m.defaults()}
                        for n, m in models.REGISTRY.items()
                    },
                    indent=2,
                )
            )
        else:
            for n, m in models.REGISTRY.items():
                print(f"{n:<12} {m.task:<12} {m.title}: {m.doc}")
        return 0
    if cmd == "device":
        from engine.device import detect

        print(json.dumps(detect(), indent=2))
        return 0
    raise ScwbError(f"Unknown command {cmd}.")


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore")
    args = parser().parse_args(argv)
    try:
        return run_command(args)
    except ScwbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("SCWB_DEBUG"):
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        print(
            f"error: unexpected {type(exc).__name__}: {first} (set SCWB_DEBUG=1 for details)",
            file=sys.stderr,
        )
        return 1
