"""The workspace folder (``$SCWB_HOME``) that holds datasets and runs, and safe names inside it."""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

from engine import settings
from engine.errors import ScwbError

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def home() -> Path:
    """``$SCWB_HOME`` or ``~/.scworkbench``; created on first use."""
    root = settings.get().home
    if root.exists() and not root.is_dir():
        raise ScwbError(f"SCWB_HOME {root} is not a folder; point it at one.")
    if root.is_symlink() and not root.exists():
        raise ScwbError(f"SCWB_HOME {root} is a broken or looping link; point it at a folder.")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file, a symbolic link loop, a folder that cannot be made
        raise ScwbError(
            f"SCWB_HOME {root} cannot be the workspace folder ({exc.strerror or exc}); "
            "point it at a folder."
        ) from None
    return root


def _sub(name: str) -> Path:
    """A folder of the workspace, made on first use; one line when it cannot be (a file in its
    place, or a link to an unmounted disk, raised FileExistsError on every page)."""
    d = home() / name
    try:
        d.mkdir(exist_ok=True)
    except OSError as exc:
        raise ScwbError(
            f"{d} cannot be the workspace's {name} folder ({exc.strerror or exc})."
        ) from None
    if not d.is_dir():
        raise ScwbError(f"{d} is not a folder: the workspace keeps its {name} there.")
    return d


def datasets_dir() -> Path:
    return _sub("datasets")


def runs_dir() -> Path:
    return _sub("runs")


def safe_name(name: str, what: str = "name") -> str:
    """A file name that cannot leave its folder: letters, digits, '.', '_' and '-' only."""
    cleaned = _SAFE.sub("_", str(name).strip()).strip("._-")
    if not cleaned:
        raise ScwbError(
            f"The {what} {name!r} has no usable characters: use letters, digits, '_' or '-'."
        )
    return cleaned[:80]


def inside(base: Path, name: str) -> Path:
    """``base / name`` after sanitising, refusing anything that would escape ``base``."""
    path = (base / safe_name(name)).resolve()
    if base.resolve() not in path.parents:
        raise ScwbError(f"{name!r} is not a name inside the workspace.")
    return path


def allowed_server_roots() -> list[Path]:
    """Folders the app may read server-side paths from (``$SCWB_DATA_ROOTS``, ':'-separated)."""
    return list(settings.get().data_roots)


def check_server_path(path: str | Path) -> Path:
    """Resolve a path typed in the app; refuse it unless it lies under an allowed root."""
    roots = allowed_server_roots()
    if not roots:
        raise ScwbError(
            "Reading files by server path is off: the operator can allow folders with SCWB_DATA_ROOTS."
        )
    p = Path(path).expanduser().resolve()
    if not any(p == r or r in p.parents for r in roots):
        raise ScwbError(
            f"{path} is outside the folders this server allows ({', '.join(map(str, roots))})."
        )
    if not p.exists():
        raise ScwbError(f"{path} does not exist.")
    if p.is_dir():
        _check_members(p, path, roots)
    return p


MAX_FOLDER_ENTRIES = 200_000  # a 10x folder holds 3 files, a zarr store one per chunk


def _check_members(folder: Path, path: str | Path, roots: list[Path]) -> None:
    """A folder (10x output, zarr store) read by server path: every link in it must resolve
    under an allowed root too, or a 'barcodes.tsv' linked to a file elsewhere would read that
    file into cell names that any user of the app can see."""
    seen = 0
    for top, dirs, files in os.walk(folder, followlinks=False):
        for name in (*dirs, *files):
            seen += 1
            if seen > MAX_FOLDER_ENTRIES:
                raise ScwbError(
                    f"{path} holds more than {MAX_FOLDER_ENTRIES:,} files: not a data folder."
                )
            member = Path(top) / name
            if not member.is_symlink():
                continue
            try:
                target = member.resolve()
            except (OSError, RuntimeError):  # a link loop (RuntimeError on Python 3.11)
                raise ScwbError(
                    f"{path}: {member.relative_to(folder)} is a link that leads nowhere (a loop)."
                ) from None
            if not any(target == r or r in target.parents for r in roots):
                raise ScwbError(
                    f"{path}: {member.relative_to(folder)} links to a file outside the folders "
                    "this server allows."
                )


def check_output_file(path: str | os.PathLike, flag: str = "-o") -> Path:
    """A file the command line is asked to write: never inside a run folder (its weights,
    results or record would be replaced) nor in the workspace's datasets (a file the listing
    describes otherwise). One line; nothing is written."""
    target = Path(path)
    where = _not_in_datasets(target, flag)
    for folder in (where.parent, *where.parent.parents):
        if (folder / "run.json").is_file():
            raise ScwbError(f"{flag} {target}: write it outside the run folder {folder.name}.")
    if where.is_dir():
        raise ScwbError(f"{flag} {target} is a folder; name a file.")
    if where.exists() and not where.is_file():  # written beside, then renamed over it
        raise ScwbError(
            f"{flag} {target} is not a regular file (a device, pipe or socket); name a file "
            "(nothing was written)."
        )
    if where.parent.is_dir():  # a folder that cannot take a file is said before any work
        _probe_writable(where.parent, f"{flag} {target}")
    return target


def _probe_writable(folder: Path, what: str) -> None:
    """Create and remove a file in ``folder``: permissions, a read-only file system or /proc
    (where root may 'write' but no file can be made) are found before the work, in one line
    (``predict -o /proc/x.h5ad`` ended in HDF5's 'unexpected FileNotFoundError')."""
    import tempfile

    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".scwb-probe-")
    except OSError as exc:
        raise ScwbError(
            f"{what}: no file can be written in {folder} ({exc.strerror or exc}); "
            "name another folder (nothing was written)."
        ) from None
    os.close(fd)
    with contextlib.suppress(OSError):  # made, so the folder takes files; removed if it can be
        os.unlink(probe)


def check_new_run_folder(path: str | os.PathLike) -> Path:
    """``train --out``: a new or empty folder. An existing run would be replaced (its weights,
    metrics and record), and files of a folder that holds anything else overwritten."""
    target = Path(path)
    where = _not_in_datasets(target, "--out", run_folder=True)
    if where.exists() and (not where.is_dir() or any(where.iterdir())):
        what = "holds a run" if (where / "run.json").exists() else "is not an empty folder"
        raise ScwbError(f"--out {target} {what}; name a new folder (nothing was replaced).")
    runs_root = runs_dir().resolve()
    if runs_root.is_relative_to(where):  # the workspace's runs folder, or a folder above it
        raise ScwbError(
            f"--out {target} holds the workspace's runs; name a new folder, such as "
            f"{runs_root / 'my-run'} (nothing was written)."
        )
    outer = next((d for d in where.parents if (d / "run.json").is_file()), None)
    if outer is not None:  # deleting that run would take this one with it
        raise ScwbError(
            f"--out {target} is inside the run folder {outer}; name a folder outside it "
            "(nothing was written)."
        )
    return target


CLAIM = ".claimed"  # made with O_EXCL by the command that writes a new run folder


def claim_run_folder(path: Path) -> None:
    """Make ``path`` this process's run folder, atomically: two ``train --out`` naming the same
    new folder at once both passed the emptiness check and wrote one run of two models. The
    second gets one line and writes nothing."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(path / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    except FileExistsError:
        raise ScwbError(
            f"--out {path} is being written by another command; name a new folder "
            "(nothing was written)."
        ) from None
    if any(p.name != CLAIM for p in path.iterdir()):  # filled between the check and the claim
        (path / CLAIM).unlink(missing_ok=True)
        raise ScwbError(
            f"--out {path} is not an empty folder; name a new folder (nothing was replaced)."
        )


def release_run_folder(path: Path) -> None:
    """Undo ``claim_run_folder`` for a run that never started: the claim goes, and the folder
    too when nothing else is in it (a rerun with corrected options finds it new again)."""
    (path / CLAIM).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        path.rmdir()  # only when empty


def _dataset_record(path: Path) -> bool:
    """Whether ``path`` is a workspace's record of a saved dataset (it holds its fingerprint)."""
    from engine import runs  # runs.read_json: regular files only, size-capped, never raises

    return "fingerprint" in runs.read_json(path, {})


def _not_in_datasets(target: Path, flag: str, run_folder: bool = False) -> Path:
    """``target`` resolved, refused inside the workspace's datasets (files its listing
    describes) and anywhere else in the workspace but a new run folder directly in its runs:
    an export written over a slot's lock file let a queued run start beside the running one
    on one slot, and one over forms.json or the queue's records lost them (a hostile pass)."""
    where = target.resolve()
    if where.is_relative_to(datasets_dir().resolve()):
        raise ScwbError(
            f"{flag} {target}: that is a workspace dataset's folder; write elsewhere "
            "(the workspace keeps its own files)."
        )
    root = home().resolve()
    runs_root = runs_dir().resolve()
    allowed = run_folder and (
        (where.parent == runs_root and not where.name.startswith("."))
        or runs_root.is_relative_to(where)  # the runs folder or above: said by the caller
    )
    if where.is_relative_to(root) and not allowed:
        where_to = (
            f"name a new folder directly in {runs_root}, or one outside the workspace"
            if run_folder
            else "write it outside the workspace"
        )
        raise ScwbError(
            f"{flag} {target} is inside the workspace ({root}), which holds the app's own "
            f"files (locks, queue, forms, runs); {where_to} (nothing was written)."
        )
    # another workspace's (another SCWB_HOME): its saved dataset was replaced in silence and
    # then refused there as changed on disk (a hostile pass)
    for folder in where.parents:
        workspace = folder.name == "datasets" and (folder.parent / "runs").is_dir()
        if workspace and (
            _dataset_record(where.parent / f"{where.stem}.json") or (folder / ".incoming").is_dir()
        ):
            raise ScwbError(
                f"{flag} {target}: that is the datasets folder of a workspace "
                f"({folder.parent}); write elsewhere (the workspace keeps its own files)."
            )
    return where
