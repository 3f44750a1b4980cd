"""The command line: ``python -m engine COMMAND ...`` (the same calls the app makes).

Bad input ends with a non-zero exit and one line on stderr; no traceback (``SCWB_DEBUG=1`` shows it).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
from collections.abc import Callable
from dataclasses import MISSING
from pathlib import Path
from typing import Any

from engine.errors import ScwbError


def _kv(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return key, value


SPEC_POSITIONAL_REQUIRED = ("model", "data")


def _add_train_options(p: argparse.ArgumentParser) -> None:
    """One option per ``RunSpec`` field that has a flag (engine.spec lists them once)."""
    from dataclasses import fields

    from engine.spec import RunSpec

    for f in fields(RunSpec):
        flag = f.metadata.get("flag")
        if not flag:
            continue
        kw = dict(f.metadata.get("argparse", {}))
        if f.name == "params":
            kw["type"] = _kv
        if kw.get("action") == "append":
            kw.setdefault("default", [])
        elif f.name not in SPEC_POSITIONAL_REQUIRED and f.default is not MISSING:
            kw.setdefault("default", f.default)
        p.add_argument(
            flag,
            dest=f.name,
            required=f.name in SPEC_POSITIONAL_REQUIRED,
            help=f.metadata["help"],
            **kw,
        )


def _spec(args: argparse.Namespace, out: str = "", **overrides: Any):
    """The ``RunSpec`` the options describe (``--param`` pairs become its params dict)."""
    from dataclasses import fields

    from engine.spec import RunSpec

    values = {f.name: getattr(args, f.name) for f in fields(RunSpec) if hasattr(args, f.name)}
    values["params"] = dict(values.get("params") or [])
    values["train_on"] = values.get("train_on") or None
    values.update(_data(args.data))
    if values.get("epochs") is not None:
        values["epochs_set_by"] = "user"  # --epochs: Results does not blame a time budget
    return RunSpec(**{**values, "out": out, **overrides})


def _extra_rank() -> bool:
    """A process a multi-device run started (Lightning re-runs this command line with its rank
    set): rank 0 has already checked the file and made the folder."""
    return any(os.environ.get(k, "0") != "0" for k in ("LOCAL_RANK", "NODE_RANK", "RANK"))


def _data(data: str) -> dict[str, str]:
    """``--data``: a file, or a workspace dataset's key (the Data page's "Key", ``datasets list``),
    which the run then records as the app's runs do (key, label, fingerprint). Neither: refused
    here, before a run is queued that could only fail."""
    from engine import datasets

    p = Path(data)
    if p.exists():
        from engine import reader

        if not _extra_rank():
            reader.vet(p)  # a file that would hang or crash a reader is refused here, not queued
        return {"data": str(p.resolve()), "dataset_name": p.name}
    if datasets.exists(data):
        key = datasets.check_key(data)
        return {
            "data": str(datasets.path(key)),
            "dataset_key": key,
            "dataset_name": datasets.label(key),
            "data_fingerprint": datasets.fingerprint(key),
        }
    raise ScwbError(
        f"{data} does not exist: give a file or a workspace dataset key "
        "(`python -m engine datasets list`)."
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
        "--from-raw",
        action="store_true",
        help="start from adata.raw (the values kept before gene selection and scaling)",
    )
    p.add_argument(
        "--subset",
        metavar="KEY=V1,V2",
        action="append",
        help="keep cells whose obs[KEY] is one of the values (a comma inside a value: \\,); "
        "repeat it for more values or another column (cells must match every column)",
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
    p.add_argument(
        "--leiden",
        type=float,
        metavar="RESOLUTION",
        help="Leiden clusters in obs['leiden'] (last step; 1.0 is scanpy's default)",
    )
    p.add_argument("--save-recipe", metavar="JSON", help="also write the recipe used")

    p = sub.add_parser("train", help="train a model in this process, writing RUN_DIR")
    _add_train_options(p)
    p.add_argument("--out", required=True, help="run folder to write")

    p = sub.add_parser(
        "submit", help="queue a training in the background; prints its run folder at once"
    )
    _add_train_options(p)
    p.add_argument(
        "--seeds",
        metavar="0,1,2",
        help="one run per seed, in one comparison group (overrides --seed)",
    )
    p.add_argument(
        "--launcher",
        choices=["local", "slurm"],
        default=None,
        help="where the run trains: this machine (default) or a SLURM cluster ($SCWB_LAUNCHER)",
    )

    p = sub.add_parser("runs", help="list runs in the workspace ($SCWB_HOME)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser(
        "compare",
        help="finished runs side by side: each metric as mean +- sd over seeds, and paired "
        "comparisons of every model against the baselines",
    )
    p.add_argument("runs", nargs="*", help="run ids or folders (default: those of --group)")
    p.add_argument("--group", help="every run of this comparison group (as submit --seeds made)")
    p.add_argument("--metric", help="the metric of the paired comparisons (default: the task's)")
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

    p = sub.add_parser(
        "export",
        help="write a run's files: the whole run as .zip (default RUN.zip here), the annotated "
        ".h5ad, the model, the reproduce script or the metrics CSV; streamed, at any size",
    )
    p.add_argument("run", help="run id or folder")
    from engine.export import PARTS

    for part, text in PARTS.items():
        p.add_argument(f"--{part.replace('_', '-')}", metavar="FILE", help=f"write {text} to FILE")

    p = sub.add_parser("models", help="list the models, their tasks and parameters")
    p.add_argument("name", nargs="?", help="one model: its parameters, defaults and choices")
    p.add_argument("--json", action="store_true")

    sub.add_parser("device", help="show the compute devices")

    p = sub.add_parser("datasets", help="list or delete the datasets of the workspace")
    ds = p.add_subparsers(dest="datasets_command", required=True)
    ds.add_parser("list", help="key, shape, contents and name of each").add_argument(
        "--json", action="store_true"
    )
    ds.add_parser("delete", help="delete one (refused while a run uses it)").add_argument("key")
    return ap


def _subsets(given: list[str]) -> dict[str, list[str]]:
    """``--subset KEY=V1,V2`` options as column -> values: ``\\,`` is a comma inside a value
    ("CD4 T, naive" was cut in two), and a column named twice gets the values of both."""
    out: dict[str, list[str]] = {}
    for text in given:
        key, eq, values = text.partition("=")
        if not eq or not key:
            raise ScwbError(f"--subset takes KEY=V1,V2 (got {text!r}).")
        parts = [v.replace("\x00", ",") for v in values.replace("\\,", "\x00").split(",")]
        out.setdefault(key, []).extend(v for v in parts if v and v not in out.get(key, []))
    return out


def recipe_from_args(args: argparse.Namespace):
    from engine.preprocess import Recipe, Step

    if args.recipe:
        return Recipe.load(args.recipe)
    steps = []
    if args.from_raw:
        steps.append(Step("from_raw"))
    for key, values in _subsets(args.subset or []).items():
        steps.append(Step("subset", {"key": key, "values": values}))
    # "given" is "not the default": 0 or 150 given were dropped silently (the step checks them)
    if args.min_genes or args.min_counts or args.max_pct_mito != 100:
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
    if args.hvg is not None:
        steps.append(Step("hvg", {"n_top": args.hvg}))
    if args.arcsinh is not None:
        steps.append(Step("arcsinh", {"cofactor": args.arcsinh}))
    if args.scale:
        clip = {"max_value": args.clip} if args.scale == "zscore" else {}  # z-score's alone
        steps.append(Step("scale", {"method": args.scale, **clip}))
    if args.leiden is not None:
        steps.append(Step("leiden", {"resolution": args.leiden}))
    return Recipe(steps)


def cmd_info(args: argparse.Namespace) -> int:
    from engine import reader

    d = reader.describe_file(args.file)  # read in a memory-capped child process
    if args.json:
        print(_json(d))
        return 0
    print(
        f"{d['n_obs']} cells x {d['n_vars']} genes; X: {d['x_kind']} ({'sparse' if d['sparse'] else 'dense'}, "
        f"{100 * d['sparsity']:.1f}% zeros, {d['memory_mb']} MB)"
    )
    for k, v in d["layers"].items():
        print(f"layer {k}: {v}")
    for col, counts in d["labels"].items():
        shown = ", ".join(f"{k}: {v}" for k, v in list(counts.items())[:8])  # "3: 806"
        print(f"label {col}: {len(counts)} values ({shown}{', ...' if len(counts) > 8 else ''})")
    if d["embeddings"]:
        print("embeddings: " + ", ".join(d["embeddings"]))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from engine import io, workspace
    from engine.demos import load_demo

    workspace.check_output_file(args.out)
    print(io.write_h5ad(load_demo(args.name), args.out))
    return 0


def _distinct_files(source: str, *outputs: tuple[str, str]) -> None:
    """Each output names a file of its own: not the input (it would be replaced by a result or
    a recipe) nor another output. One line; nothing is written."""
    seen = {Path(source).resolve(): "the input"}
    for flag, path in outputs:
        where = Path(path).resolve()
        if where in seen:
            raise ScwbError(
                f"{flag} {path} is {seen[where]}; name another file (nothing was written)."
            )
        seen[where] = flag


def cmd_preprocess(args: argparse.Namespace) -> int:
    from engine import io, pp_memory, reader, workspace
    from engine.preprocess import apply

    recipe = recipe_from_args(args)
    workspace.check_output_file(args.out)
    _distinct_files(args.file, ("-o", args.out))
    if args.save_recipe:  # a file written too: the same checks as -o, and never -o or the input
        workspace.check_output_file(args.save_recipe, "--save-recipe")
        _distinct_files(args.file, ("-o", args.out), ("--save-recipe", args.save_recipe))
    reader.vet(args.file)  # read in a child first: a damaged file costs the child, not this one
    adata = io.read(args.file)
    print(f"memory: {pp_memory.check(adata, recipe, copy=False).line()}", flush=True)
    out, report = apply(adata, recipe, copy=False)  # the input is not needed afterwards
    io.write_h5ad(out, args.out)
    if args.save_recipe:
        from engine.runs import atomic_write_text

        atomic_write_text(Path(args.save_recipe), recipe.to_json())
    for row in report:
        print(
            f"{row['step']:<14} {row['n_obs']:>8} cells {row['n_vars']:>7} genes  {row['seconds']:.2f}s"
            + (f"  ({row['note']})" if row.get("note") else "")
        )
    return 0


def _json(obj: object) -> str:
    """``--json`` output: strict JSON (NaN as null), as the run folder's files are written."""
    from engine.runs import json_text

    return json_text(obj)


def _scalars(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}


TERMINATED = False  # set by SIGTERM under ``python -m engine`` (engine/__main__.py)


def cmd_train(args: argparse.Namespace) -> int:
    from engine import workspace
    from engine.train import run

    out = Path(args.out).resolve()
    claimed = not _extra_rank()  # the other ranks find the folder their rank 0 has just made
    if claimed:
        workspace.check_new_run_folder(args.out)
        workspace.claim_run_folder(out)  # two commands naming one new folder: one gets it
    try:
        metrics = run(_spec(args, str(out)))
    except BaseException as exc:
        if TERMINATED and isinstance(exc, SystemExit):  # Lightning's exit after our interrupt
            exc = KeyboardInterrupt("terminated (SIGTERM)")
        if claimed and not (out / "status.json").exists():  # refused before it started: the
            workspace.release_run_folder(out)  # folder is as it was, for the corrected command
        elif claimed:  # else it stays "running" until
            from engine import runs  # a listing calls it interrupted, for no given reason

            why = (
                str(exc)
                if isinstance(exc, ScwbError | KeyboardInterrupt)
                else f"{type(exc).__name__}: {exc}"
            )
            with contextlib.suppress(OSError):
                runs.record_end(
                    out,
                    state="cancelled" if isinstance(exc, KeyboardInterrupt) else "failed",
                    error=(why.splitlines() or ["interrupted"])[0][:500],
                )
        if isinstance(exc, KeyboardInterrupt):
            raise exc from None  # exit 130, "error: interrupted"
        raise
    if metrics:  # the extra processes of a multi-device run print nothing
        print(_json(_scalars(metrics)))
        from engine import progress, runs

        spec = runs.read_json(out / "run.json", {}) or {}
        note = progress.unstable_note(spec, metrics, runs.read_metrics_csv(out))
        if note:
            print(f"warning: {note}", file=sys.stderr)
    return 0


def _seeds(text: str | None, default: int) -> list[int]:
    if not text:
        return [default]
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ScwbError(
            f"--seeds takes comma-separated integers like 0,1,2, not {text!r}."
        ) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ScwbError(f"--seeds needs distinct integers, not {text!r}.")
    return seeds


def cmd_submit(args: argparse.Namespace) -> int:
    import secrets

    from engine import jobs, settings

    seeds = _seeds(args.seeds, args.seed)
    launcher = args.launcher or settings.get().launcher
    group = args.group or (f"seeds-{secrets.token_hex(3)}" if len(seeds) > 1 else None)
    specs = [_spec(args, seed=s, group=group, launcher=launcher) for s in seeds]
    jobs.check_room(len(specs))
    _preflight(specs)
    for spec in specs:
        print(jobs.submit(spec))
    if len(specs) > 1:  # stdout stays one run folder per line
        print(f"compare them: python -m engine compare --group {group}", file=sys.stderr)
    return 0


def _preflight(specs: list) -> None:
    """Refuse here, with exit 2, what a worker would refuse (scGen on raw counts, a missing
    label column...), as the app's Submit does: 'submit' printed a run folder and exited 0,
    and the run failed seconds later (a browser pass found the same on the app's form)."""
    from engine import io
    from engine.preflight import preflight

    adata = io.read(specs[0].data)  # one file for every seed, vetted by _data
    for spec in specs:
        preflight(spec, adata)


def cmd_runs(args: argparse.Namespace) -> int:
    from engine import jobs, progress

    rows = jobs.list_jobs()
    if args.json:
        print(_json(rows))
        return 0
    if rows:  # the Runs page's words: whole epochs, 'fitted in one step' for a baseline
        print(f"{'run':<40} {'state':<11} {'model':<12} {'dataset':<28} progress")
    for r in rows:
        print(
            f"{r['id']:<40} {r['state'] or '?':<11} {r['model']:<12} {str(r['dataset']):<28} "
            f"{progress.progress(r)[1]}"
        )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from engine import jobs, metric_names, seeds

    if not args.runs and not args.group:
        raise ScwbError("compare: name runs, or a group with --group.")
    rows = jobs.list_jobs()
    if args.group:
        dirs = [r["path"] for r in rows if r.get("group") == args.group]
        if not dirs:
            raise ScwbError(f"compare: no run belongs to the group {args.group!r}.")
    else:
        dirs = [str(jobs.resolve_run(r)) for r in args.runs]
    configs = seeds.group([Path(d) for d in dirs], parts=metric_names.split_baselines)
    if not configs:
        raise ScwbError("compare: none of these runs has completed with metrics.")
    known = seeds.metrics_of(configs)
    if args.metric and args.metric not in known:
        raise ScwbError(
            f"compare: no run has the metric {args.metric!r}; they have {', '.join(known)}."
        )
    metric = args.metric or seeds.primary_metric(configs)
    table = seeds.table(configs, known)
    pairs = seeds.pairs(configs, metric) if metric else []
    if args.json:
        safe = [
            {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in row.items()
            }
            for row in table
        ]
        out = {
            "metric": metric,
            "table": safe,
            "paired": [p.to_dict() for p in pairs],
            "repeated_splits": seeds.repeated_splits(configs),
            "one_class": seeds.one_class_runs(configs),
        }
        print(_json(out))
        return 0
    for row in table:
        cells = [f"{metric_names.name(k)} {row[k + '_text']}" for k in known if k in row]
        print(
            f"{row['model']} ({row['seeds']} seed{'s' if row['seeds'] != 1 else ''}): "
            + "; ".join(cells)
        )
    if seeds.scopes(configs) > 1:
        print(
            "note: these runs used different data, label or task; only runs of the same "
            "one are paired."
        )
    for line in seeds.repeated_splits(configs) + seeds.one_class_runs(configs):
        print(f"note: {line}")
    for p in pairs:
        print(p.text())
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from engine import jobs

    print(jobs.cancel(args.run))
    return 0


def cmd_delete(args: argparse.Namespace) -> int:
    from engine import jobs

    jobs.delete(args.run)
    return 0


def cmd_wait(args: argparse.Namespace) -> int:
    from engine import jobs

    st = jobs.wait(args.run, timeout=args.timeout)
    print(st.get("state"))
    return 0 if st.get("state") == "completed" else 1


def cmd_predict(args: argparse.Namespace) -> int:
    from engine import io, jobs, reader, workspace
    from engine.predict import predict

    workspace.check_output_file(args.out)
    _distinct_files(args.data, ("-o", args.out))  # -o over --data replaced the user's file
    reader.vet(args.data)  # the data first: a damaged file is said before anything else
    # a folder holding a model (run.json or not: a copied model folder) or a workspace run id
    run = args.run if Path(args.run).is_dir() else jobs.resolve_run(args.run)
    out = predict(run, io.read(args.data), align=args.align)
    io.write_h5ad(out, args.out)
    missing = out.uns.get("scwb", {}).get("missing_genes")
    if missing is not None and len(missing):
        print(f"warning: {len(missing)} genes were missing and set to zero", file=sys.stderr)
    print(args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from engine import export, jobs

    run_dir = jobs.resolve_run(args.run)
    state = jobs.effective_status(run_dir).get("state")
    if state in ("queued", "running"):
        print(
            f"warning: {run_dir.name} is {state}: the export holds what it has written so far",
            file=sys.stderr,
        )
    wanted = {p: getattr(args, p) for p in export.PARTS if getattr(args, p) is not None}
    wanted = wanted or {"zip": f"{run_dir.name}.zip"}
    for target in export.write(run_dir, wanted):
        print(target)
    if "zip" in wanted:
        left = export.left_out(wanted["zip"])
        if left:
            print(
                f"warning: {wanted['zip']} holds {left} file(s) of the run that are damaged or "
                f"could not be read: its {export.LEFT_OUT} names them",
                file=sys.stderr,
            )
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from engine import models

    chosen = [models.get(args.name)] if args.name else list(models.REGISTRY.values())
    if args.json:
        print(
            json.dumps(
                {
                    m.name: {
                        "task": m.task,
                        "title": m.title,
                        "doc": m.doc,
                        "params": m.defaults(),
                        "param_info": {
                            k: {"help": p.help, "choices": p.choices, "low": p.low, "high": p.high}
                            for k, p in m.params.items()
                        },
                    }
                    for m in chosen
                },
                indent=2,
            )
        )
        return 0
    for m in chosen:
        print(f"{m.name:<12} {m.task:<12} {m.title}: {m.doc}")
        if args.name:  # one model: what --param takes
            for k, p in m.params.items():
                allowed = (
                    " | ".join(map(str, p.choices))
                    if p.choices
                    else f"{p.low:g} to {p.high:g}"
                    if p.low is not None and p.high is not None
                    else ""
                )
                print(f"  --param {k}={p.default}" + (f"  [{allowed}]" if allowed else ""))
                print(f"      {p.help}")
    return 0


def cmd_device(args: argparse.Namespace) -> int:
    from engine.device import detect

    print(json.dumps(detect(), indent=2))
    return 0


def cmd_datasets(args: argparse.Namespace) -> int:
    from engine import datasets

    if args.datasets_command == "list":
        return datasets.cli_list(args.json)
    return datasets.cli_delete(args.key)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "info": cmd_info,
    "demo": cmd_demo,
    "preprocess": cmd_preprocess,
    "train": cmd_train,
    "submit": cmd_submit,
    "runs": cmd_runs,
    "compare": cmd_compare,
    "cancel": cmd_cancel,
    "delete": cmd_delete,
    "wait": cmd_wait,
    "predict": cmd_predict,
    "export": cmd_export,
    "models": cmd_models,
    "device": cmd_device,
    "datasets": cmd_datasets,
}


def run_command(args: argparse.Namespace) -> int:
    return COMMANDS[args.command](args)


# control characters (ANSI escapes, carriage returns, C1 codes) and bidirectional overrides:
# names from a data file reached the terminal raw, where ESC ] 52 can write the clipboard
_UNPRINTABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _visible(text: str) -> str:
    return _UNPRINTABLE.sub(lambda m: ascii(m.group())[1:-1], text)


class _Printable(io.TextIOBase):
    """A text stream that writes control characters as escapes (``\x1b``): everything the
    command line prints, names from the data included, reaches the terminal as text."""

    def __init__(self, raw: Any) -> None:
        self._raw = raw

    def write(self, text: str) -> int:
        self._raw.write(_visible(text))
        return len(text)

    def flush(self) -> None:
        self._raw.flush()

    def isatty(self) -> bool:
        return self._raw.isatty()

    def fileno(self) -> int:
        return self._raw.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return getattr(self._raw, "encoding", "utf-8")


def main(argv: list[str] | None = None) -> int:
    from engine import quiet

    quiet.library_warnings_off()  # the libraries' chatter is not the user's concern here
    out, err = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = _Printable(out), _Printable(err)
    try:
        return _main(argv)
    finally:
        sys.stdout, sys.stderr = out, err


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    try:
        code = run_command(args)
        sys.stdout.flush()  # short output still buffered meets a closed pipe here
        return code
    except BrokenPipeError:  # `... | head`: the reader has gone, nothing is wrong
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.__stdout__.fileno())
        return 141  # 128 + SIGPIPE, as the shell reports a pipe closed early
    except ScwbError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # a path the system refused (a file where a folder must be, /proc, no permission):
        # one line naming it, exit 2, instead of "unexpected NotADirectoryError" (a hostile
        # pass); an OSError without a path is unexpected below
        if exc.filename is None or not exc.strerror:
            return _unexpected(exc)
        print(f"error: {exc.filename}: {exc.strerror}; name another path.", file=sys.stderr)
        return 2
    except Exception as exc:
        return _unexpected(exc)


def _unexpected(exc: Exception) -> int:
    """One line for an error no check foresaw (its traceback with SCWB_DEBUG=1), exit 1."""
    from engine import settings

    if settings.get().debug:
        raise exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    print(
        f"error: unexpected {type(exc).__name__}: {first} (set SCWB_DEBUG=1 for details)",
        file=sys.stderr,
    )
    return 1
