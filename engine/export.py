"""What a user takes home from a run: a script that reproduces it, the files as one zip, and the
metrics as CSV; in memory for the app's downloads, or streamed to files (``python -m engine
export``) at any size.

The script holds the run's spec and preprocessing recipe as JSON inside string literals written
with ``repr()``, so no name, label or path from the run can become code when it runs.
"""

from __future__ import annotations

import csv
import io as _io
import json
import os
import threading
import zipfile
from pathlib import Path

import engine
from engine import csvsafe, models, runs, workspace
from engine.errors import ScwbError
from engine.spec import with_earlier_defaults

# fields a rerun must not inherit: where the data and the run folder were, and identity checks
NOT_REPLAYED = ("data", "out", "task", "dataset_key", "data_fingerprint", "launcher")


def _spec_fields() -> list[str]:
    from dataclasses import fields

    from engine.spec import RunSpec

    return [f.name for f in fields(RunSpec)]


def script(run_dir: str | Path, filename: str = "reproduce.py") -> str:
    """A Python script that reruns this run with the engine and prints its metrics. It runs
    from any folder (it finds this scWorkbench installation) and can first rebuild the input
    from the raw data with the recorded preprocessing recipe (``--raw RAW.h5ad``)."""
    run_dir = Path(run_dir)
    record = runs.read_json(run_dir / "run.json", {}) or {}
    if not record.get("model"):  # a script of '{}' replays nothing (a run deleted meanwhile)
        raise ScwbError(f"Run {run_dir.name} has no readable run.json (deleted?): no script.")
    record = with_earlier_defaults(record)  # e.g. the split scheme of a run made before it
    spec = {
        k: record[k]
        for k in _spec_fields()
        if k in record and k not in NOT_REPLAYED and record[k] not in (None, "", {}, [])
    }
    # the parameters as it ran, also for a run saved before a parameter existed
    params = models.recorded_params(spec.get("model"), spec.get("params") or {})
    if params:
        spec["params"] = params
    recipe = record.get("recipe") or {"steps": []}
    root = str(Path(engine.__file__).resolve().parent.parent)
    doc = f"Reproduce scWorkbench run {run_dir.name} (data fingerprint {record.get('data_fingerprint', '?')})."
    return f'''"""{_doc_safe(doc)}

Usage, from any folder, on any machine with scWorkbench (its engine importable, or its folder
in the SCWORKBENCH environment variable; else the folder that wrote this script):
    python {_doc_safe(filename)} [DATA.h5ad] [OUT_DIR]            # train on the preprocessed data
    python {_doc_safe(filename)} --raw RAW.h5ad [DATA] [OUT_DIR]  # apply the recorded recipe first
DATA defaults to the file the run trained on, OUT_DIR to a new folder here. Run it with the
Python that runs scWorkbench (its .venv/bin/python): the engine needs its packages.
"""
import json
import os
import sys

SCWORKBENCH = {root!r}  # where the run was made
SPEC = json.loads({json.dumps(spec, sort_keys=True)!r})
RECIPE = json.loads({json.dumps(recipe, sort_keys=True)!r})
DATA = {str(record.get("data", "data.h5ad"))!r}
OUT = {"reproduced-" + run_dir.name!r}


def _engine():
    """scWorkbench's engine: importable here, in $SCWORKBENCH, or where the run was made."""
    for folder in (None, os.environ.get("SCWORKBENCH"), SCWORKBENCH):
        if folder:
            sys.path.insert(0, folder)
        try:
            import engine  # noqa: F401

            return
        except ImportError:
            if folder:
                sys.path.remove(folder)
    sys.exit("error: scWorkbench's engine is not found: set SCWORKBENCH to its folder.")


def _new_folder(out):
    """OUT, or OUT-2, OUT-3, ... : never into an earlier reproduction."""
    n, name = 1, out
    while os.path.exists(name):
        n += 1
        name = f"{{out}}-{{n}}"
    return name


def main(argv):
    if argv[:1] in (["-h"], ["--help"]):
        print(__doc__.strip())
        return
    unknown = [a for a in argv if a.startswith("-") and a != "--raw"]
    if unknown:
        sys.exit(f"error: unknown option {{unknown[0]}} (python {{sys.argv[0]}} --help)")
    _engine()
    try:
        from engine import io, preprocess, quiet

        quiet.library_warnings_off()  # Lightning's notes (srun, deprecations) are not the run's
        from engine.spec import RunSpec
        from engine.train import run
    except ImportError as exc:
        sys.exit(
            f"error: scWorkbench's engine needs {{exc.name or 'its packages'}}: run this with "
            "the Python that runs scWorkbench (its .venv/bin/python)."
        )

    raw = None
    if argv[:1] == ["--raw"]:
        raw, argv = argv[1], argv[2:]
    data = argv[0] if len(argv) > 0 else DATA
    out = argv[1] if len(argv) > 1 else _new_folder(OUT)
    if raw is None and not os.path.exists(data):
        sys.exit(f"error: the data {{data}} is not here: python {{sys.argv[0]}} DATA.h5ad")
    if raw is not None:
        adata, _ = preprocess.apply(io.read(raw), preprocess.Recipe.from_json(json.dumps(RECIPE)))
        data = str(io.write_h5ad(adata, data if len(argv) > 0 else out + "-input.h5ad"))
    metrics = run(RunSpec(data=data, out=out, **SPEC))
    print(json.dumps({{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}, indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
'''


def _doc_safe(text: str) -> str:
    """Text that cannot end the docstring it is placed in."""
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


_BOOKKEEPING = ("cancel", "heartbeat")  # the queue's, not the run's: nothing a user reads


def members(run_dir: str | Path) -> list[Path]:
    """The files a whole-run export holds: regular files inside the run folder, never a
    symbolic link or what it points to, nor hidden files, the queue's bookkeeping (the cancel
    marker, the heartbeat) or an empty worker log."""
    run_dir = Path(run_dir)
    out = []
    for folder, dirs, files in os.walk(run_dir, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not (Path(folder) / d).is_symlink())
        for name in sorted(files):
            p = Path(folder) / name
            if p.is_symlink() or not p.is_file() or name.startswith("."):
                continue
            top = Path(folder) == run_dir  # the queue writes at the top only
            if top and (name in _BOOKKEEPING or name == "worker.log" and not p.stat().st_size):
                continue
            out.append(p)
    return out


def bundle_size(run_dir: str | Path) -> int:
    """About the size of the whole-run zip in bytes (its files as they are; text deflates)."""
    return sum(p.stat().st_size for p in members(run_dir))


def _safe_csv(path: Path) -> str:
    """A run folder's CSV (``loo.csv``, ``gene_means.csv``: names from the data) with every text
    cell that a spreadsheet would evaluate quoted (``csvsafe``); numbers as they are. The files
    in the run folder stay as written: the engine reads them back by name."""
    out = _io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    # a field may be as long as the file (the csv module's 128 KB limit failed the whole zip
    # on one long cell: a hostile pass); the limit is the process's, so it is put back after
    with _CSV_LIMIT:  # two downloads at once (the app's threads) must not undo each other's
        limit = csv.field_size_limit()
        csv.field_size_limit(max(limit, min(path.stat().st_size + 1, 2**31 - 1)))
        try:
            with open(path, newline="", encoding="utf-8", errors="replace") as fh:
                for row in csv.reader(fh):
                    writer.writerow([c if _number(c) else csvsafe.cell(c) for c in row])
        finally:
            csv.field_size_limit(limit)
    return out.getvalue()


_CSV_LIMIT = threading.Lock()  # csv.field_size_limit is the process's


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


LEFT_OUT = "LEFT_OUT.txt"  # in a zip: the run's files that could not be read, and why


def damage(path: Path) -> str | None:
    """Why a run's .h5ad or .pt file cannot be what it claims (cut short, overwritten), or None:
    its structure is read (HDF5 groups, the weights' zip directory), not its values. A damaged
    results.h5ad was exported as if whole."""
    if path.suffix == ".h5ad":
        from engine import results as results_files

        try:
            results_files.summary(path)
        except ScwbError as exc:
            return str(exc).rstrip(".")
    elif path.suffix == ".pt":
        try:
            with zipfile.ZipFile(path) as zf:
                if not zf.namelist():
                    return f"{path.name} holds no weights"
        except (OSError, zipfile.BadZipFile, ValueError) as exc:
            return f"{path.name} is not a saved model ({str(exc).splitlines()[0][:200]})"
    return None


def _pack(run_dir: Path, fileobj) -> None:
    """Zip the run folder's ``members``; a file that cannot be read is left out and named in
    ``LEFT_OUT.txt`` (one file dated before 1980 or one long CSV cell failed the whole zip, with
    no word in the app: a hostile pass). File dates before 1980, which a zip cannot hold, are
    stored as 1980."""
    left: list[str] = []
    # .h5ad: gzip inside already
    with zipfile.ZipFile(fileobj, "w", zipfile.ZIP_DEFLATED, strict_timestamps=False) as zf:
        for p in members(run_dir):
            name = p.relative_to(run_dir).as_posix()
            if name in ("reproduce.py", LEFT_OUT):  # the zip's own: one entry of each name
                left.append(f"{name}: the run folder's own file of that name (the zip writes one)")
                continue
            try:
                if p.suffix.lower() == ".csv":  # the run's tables hold gene and cell-type names
                    zf.writestr(name, _safe_csv(p), zipfile.ZIP_DEFLATED)
                    continue
                packed = p.suffix in (".h5ad", ".pt")
                zf.write(p, name, zipfile.ZIP_STORED if packed else zipfile.ZIP_DEFLATED)
                why = damage(p) if packed else None
                if why:  # packed as it is (what is left of it may help), and said
                    left.append(f"{name}: damaged: {why} (its copy in this zip is as damaged)")
            except (OSError, ValueError, csv.Error, UnicodeError) as exc:
                # a read that failed part-way leaves a cut entry in the zip: said as such
                why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
                cut = " (its copy in this zip, if any, is incomplete)" * (name in zf.namelist())
                left.append(f"{name}: {why}{cut}")
        zf.writestr("reproduce.py", script(run_dir))
        if left:
            zf.writestr(
                LEFT_OUT,
                "Files of the run that could not be read, are damaged, or are left out of this "
                "zip:\n" + "".join(f"- {line}\n" for line in left),
            )


def left_out(zip_path: str | Path) -> int:
    """How many of the run's files a written zip names in its ``LEFT_OUT.txt`` (0: none)."""
    with zipfile.ZipFile(zip_path) as zf:
        if LEFT_OUT not in zf.namelist():
            return 0
        return sum(line.startswith("- ") for line in zf.read(LEFT_OUT).decode().splitlines())


def bundle(run_dir: str | Path) -> bytes:
    """The run folder (results, the stored sample, model, metrics, split, spec) and the script,
    zipped in memory (the app's download). Compressed files (.h5ad, .pt) are stored as they
    are: deflating a million-cell results file again costs minutes and saves little."""
    if not (Path(run_dir) / "run.json").is_file():
        raise ScwbError(f"Run {Path(run_dir).name} is gone (deleted?): nothing to zip.")
    buf = _io.BytesIO()
    _pack(Path(run_dir), buf)
    return buf.getvalue()


# what ``python -m engine export`` can write: part -> what it is
PARTS = {
    "zip": "the whole run with reproduce.py",
    "h5ad": "the annotated .h5ad (results.h5ad)",
    "model": "the model weights (model.pt)",
    "script": "the script that reproduces the run",
    "metrics_csv": "the metrics as CSV",
}
# the file in the run folder each part needs
SOURCES = {
    "zip": "run.json",
    "h5ad": "results.h5ad",
    "model": "model.pt",
    "script": "run.json",
    "metrics_csv": "metrics.json",
}


def _check(run_dir: Path, wanted: dict[str, str | Path]) -> dict[str, Path]:
    """Every part known, its source a regular file of the run (never a link), every target a
    distinct file name outside the run folder: all checked before anything is written."""
    from engine.errors import ScwbError

    if not wanted:
        raise ScwbError("export: name at least one part to write.")
    seen, out = set(), {}
    for part, raw in wanted.items():
        if part not in PARTS:
            raise ScwbError(f"export: no part {part!r}; choose from {', '.join(PARTS)}.")
        target = Path(str(raw))
        if not str(raw).strip() or not target.name or target.name in (".", ".."):
            raise ScwbError(f"export: --{part.replace('_', '-')} needs a file name, not {raw!r}.")
        source = run_dir / SOURCES[part]
        if source.is_symlink() or not source.is_file():
            raise ScwbError(f"export: run {run_dir.name} has no {SOURCES[part]}.")
        why = damage(source) if part in ("h5ad", "model") else None
        if why:
            raise ScwbError(f"export: run {run_dir.name} is damaged: {why}.")
        where = target.resolve()
        try:  # not into this or another run, nor the workspace's datasets, nor onto a folder
            workspace.check_output_file(target, f"--{part.replace('_', '-')}")
        except ScwbError as exc:
            raise ScwbError(f"export: {exc}") from None
        if where in seen:
            raise ScwbError(f"export: two parts would be written to {target}.")
        seen.add(where)
        out[part] = target
    return out


def write(run_dir: str | Path, wanted: dict[str, str | Path]) -> list[Path]:
    """Write the export parts ``{part: target}`` (keys of ``PARTS``), streaming; each target
    appears whole or not at all (written beside it, then renamed), and nothing is written
    unless every part can be."""
    import shutil

    from engine.errors import ScwbError

    run_dir = Path(run_dir)
    done = []
    for part, target in _check(run_dir, wanted).items():
        partial = runs.temp_path(target, ".partial")  # each writer its own
        try:
            if part == "zip":
                with open(partial, "wb") as fh:
                    _pack(run_dir, fh)
            elif part in ("h5ad", "model"):
                shutil.copyfile(run_dir / SOURCES[part], partial)
            else:
                text = (
                    script(run_dir, filename=Path(target).name)
                    if part == "script"
                    else metrics_csv(run_dir)
                )
                partial.write_text(text)
            partial.replace(target)  # a new entry: never writes through a link at the target
        except OSError as exc:
            raise ScwbError(
                f"export: {PARTS[part]} to {target} failed: {exc.strerror or exc}."
            ) from None
        finally:
            partial.unlink(missing_ok=True)
        done.append(target)
    return done


def metrics_csv(run_dir: str | Path) -> str:
    metrics = runs.read_metrics(Path(run_dir) / "metrics.json", {}) or {}
    if not metrics:  # a header alone read as a run without metrics (a run deleted meanwhile)
        raise ScwbError(f"Run {Path(run_dir).name} has no readable metrics.json (deleted?).")
    flat = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str, bool))}
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["metric", "value"])
    for k, v in flat.items():
        w.writerow([csvsafe.cell(k), csvsafe.cell(v)])
    return buf.getvalue()
