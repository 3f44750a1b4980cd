"""Datasets in the workspace: ``$SCWB_HOME/datasets/KEY.h5ad`` + ``KEY.json`` (metadata and the
description) + ``KEY.qc.npz`` (per-cell QC), the last two written once, for the Data page.

Every dataset has a stable **key** (``slug-hash``: an ASCII slug of its name, eight hex digits of
a hash of its whole content, and ``-2``, ``-3``... when needed), safe for file names and never
shared by two different datasets whatever their names. The user's name is kept as a **label**
beside it (any Unicode, any length). ``save`` returns the key; ``load(key)`` gives exactly that
data back. Saving the same content under the same name again returns the same key.

Files from users are read, described and written in a memory-capped child process
(``import_file``, ``import_upload``); nothing is saved unless it was read and described.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import sys
import threading
import time
import unicodedata
from pathlib import Path
from typing import IO, Any

import anndata as ad

from engine import io, reader, runs, summary, workspace
from engine.errors import ScwbError

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
INCOMING = ".incoming"


# ----------------------------------------------------------------------------- keys
SLUG_MAX = 48  # with "-" and 8 hex digits a key stays well under the 80 that keys allow


def slug(name: str) -> str:
    """An ASCII hint of ``name`` for a key (lossy on purpose: identity is the hash beside it).
    A long name is cut between words, so that the hint never says something else (a cut in the
    middle of "hvg300" read as 30 genes)."""
    text = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode()
    text = re.sub(r"\.(h5ad|h5|zip|csv|tsv|gz|txt)$", "", text.strip(), flags=re.I)
    text = re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_")
    if len(text) > SLUG_MAX:
        cut = text[: SLUG_MAX + 1]
        text = cut[: cut.rfind("_")] if "_" in cut[SLUG_MAX // 2 :] else text[:SLUG_MAX]
    return text.strip("_") or "d"


def check_key(key: str) -> str:
    key = str(key)
    if key.endswith(".h5ad"):
        key = key[: -len(".h5ad")]
    if not _KEY.match(key):
        raise ScwbError(f"{key!r} is not a dataset key (see `python -m engine datasets list`).")
    return key


def path(key: str) -> Path:
    """The ``.h5ad`` of dataset ``key`` (the key is checked, never rewritten)."""
    return workspace.datasets_dir() / f"{check_key(key)}.h5ad"


def _meta_path(key: str) -> Path:
    return workspace.datasets_dir() / f"{check_key(key)}.json"


def meta(key: str) -> dict[str, Any]:
    """The stored metadata of ``key`` (label, fingerprint, shape, ...); ``{}`` when none."""
    m = runs.read_json(_meta_path(key), {})
    return m if isinstance(m, dict) else {}


def label(key: str) -> str:
    """The user's name for ``key`` (the key itself for datasets saved before labels existed)."""
    return str(meta(key).get("name") or key)


_FINGERPRINT = re.compile(r"[0-9a-f]{16}")


def _stamp(st: os.stat_result) -> dict[str, int]:
    """What a dataset's record keeps of its file, to tell later that the file is as saved."""
    return {"file_size": st.st_size, "file_mtime_ns": st.st_mtime_ns}


def _trusted(record: dict, st: os.stat_result) -> str | None:
    """The record's fingerprint when it is well formed and its stamp matches the file."""
    fp = record.get("fingerprint")
    stamped = all(record.get(k) == v for k, v in _stamp(st).items())
    return fp if stamped and isinstance(fp, str) and _FINGERPRINT.fullmatch(fp) else None


def fingerprint(key: str) -> str:
    """Return ``key``'s data fingerprint (``engine.io.fingerprint``; runs record it and refuse
    to start when the data no longer matches) once its file is known to be the one saved.

    A file whose size and time match its record is the one that was read safely when it was
    imported. Any other (a dataset saved before records kept them, a file changed or damaged
    on disk, a damaged record) is read again in a child process first: a damaged file is one
    line here, never a hang or a crash of the process that would read it next, and a file that
    reads but holds other data is named as changed, not taken for the saved one."""
    p = path(key)
    try:
        st = p.stat()
    except OSError:
        raise ScwbError(f"No dataset {key!r} in the workspace.") from None
    if trusted := _trusted(meta(key), st):
        return trusted
    state = (str(p), st.st_size, st.st_mtime_ns)
    with _CHECKING.setdefault(str(p), threading.Lock()):  # two tabs: one read, not two
        if state in _REFUSED:  # said once per state of the file, not read again each rerun
            raise ScwbError(_REFUSED[state])
        m = meta(key)  # another thread may have stamped it meanwhile
        if trusted := _trusted(m, st):
            return trusted
        fp = m.get("fingerprint")
        fp = fp if isinstance(fp, str) and _FINGERPRINT.fullmatch(fp) else None
        name = label(key)
        try:
            now = reader.run_child(
                p, name.replace("/", "_"), check_only=True, fingerprint=True
            ).get("fingerprint")
            if fp and fp != now:
                raise ScwbError(
                    f"Dataset {name!r} no longer holds the data it was saved with (its file "
                    "changed on disk): load the file again, or delete this dataset."
                )
        except ScwbError as exc:
            _REFUSED[state] = str(exc)
            raise
        if p.stat().st_mtime_ns == st.st_mtime_ns:  # read as it was: trusted from now on
            with contextlib.suppress(OSError):  # (a record lost: this much of it again)
                runs.write_json(_meta_path(key), {**m, "fingerprint": now, **_stamp(st)})
        return str(now)


_CHECKING: dict[str, threading.Lock] = {}
_REFUSED: dict[tuple[str, int, int], str] = {}  # file state -> why it was refused


def exists(key: str) -> bool:
    try:
        return path(key).exists()
    except ScwbError:
        return False


# ----------------------------------------------------------------------------- saving
def _register(tmp_h5ad: Path, name: str, info: dict[str, Any], extra: dict[str, Any]) -> str:
    """Give the written file ``tmp_h5ad`` its key (claimed with O_EXCL on KEY.json, so two
    sessions never get one key for different data) and move it into place."""
    folder = workspace.datasets_dir()
    name = _one_line(name)
    base = f"{slug(name)}-{info['content'][:8]}"
    record = {
        "key": "",
        "name": name,
        "fingerprint": info["fingerprint"],
        **_stamp(tmp_h5ad.stat()),  # os.replace below keeps the size and time
        "content": info["content"],
        "created": runs.now(),
        "n_obs": info["n_obs"],
        "n_vars": info["n_vars"],
        "x_kind": info["describe"].get("x_kind"),
        **extra,
        # what the Data page shows, computed once here instead of on every first view
        "describe": json.loads(json.dumps(info["describe"], default=str)),
    }
    # the same content saved under the same name before keys kept 48 characters of the name
    # (they kept 24): that dataset, not a second copy
    short = f"{slug(name)[:24].strip('_') or 'd'}-{info['content'][:8]}"
    for key in {short} - {base}:
        old = runs.read_json(folder / f"{key}.json", {})
        if (
            old.get("content") == info["content"]
            and old.get("name") == str(name)
            and (folder / f"{key}.h5ad").exists()
        ):
            tmp_h5ad.unlink(missing_ok=True)
            summary.remove_qc(tmp_h5ad)
            return key
    for i in range(1, 1000):
        key = base if i == 1 else f"{base}-{i}"
        meta_p = folder / f"{key}.json"
        try:
            fd = os.open(meta_p, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            old = runs.read_json(meta_p, {}) or {}
            if (
                old.get("content") == info["content"]
                and old.get("name") == str(name)
                and (folder / f"{key}.h5ad").exists()
            ):
                tmp_h5ad.unlink(missing_ok=True)  # identical content and name: the same key
                summary.remove_qc(tmp_h5ad)
                return key
            continue
        record["key"] = key
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(json.dumps(record, indent=2, default=str))
                fh.flush()
                os.fsync(fh.fileno())
            summary.move_qc(tmp_h5ad, folder / f"{key}.h5ad")
            os.replace(tmp_h5ad, folder / f"{key}.h5ad")
        except BaseException as exc:
            meta_p.unlink(missing_ok=True)
            tmp_h5ad.unlink(missing_ok=True)
            summary.remove_qc(tmp_h5ad)
            summary.remove_qc(folder / f"{key}.h5ad")
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                raise io.disk_full() from None
            raise
        return key
    raise ScwbError(f"Too many datasets named {name!r} with the same content.")


STALE_S = 6 * 3600  # an incoming file this old was left by a killed server: removed


def _incoming() -> Path:
    """The folder where uploads and new datasets are written before they get their key; files
    a killed server left there are removed on the next use."""
    d = workspace.datasets_dir() / INCOMING
    d.mkdir(exist_ok=True)
    now = time.time()
    for p in d.iterdir():
        with contextlib.suppress(OSError):
            if now - p.stat().st_mtime > STALE_S:
                if p.is_dir() and not p.is_symlink():  # a preview's job folder (pp_child.start)
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink()
    return d


def save(
    adata: ad.AnnData,
    name: str,
    source: str = "",
    parent: str | None = None,
    report: list | None = None,
) -> str:
    """Write ``adata`` (data already in this process: demos, preprocessing results) with
    ``name`` as its label; return its key."""
    if not str(name).strip():
        raise ScwbError("A dataset needs a name.")
    d = io.describe(adata)  # refuses what cannot be described before anything is written
    info = {
        "describe": d,
        "fingerprint": io.fingerprint(adata),
        "content": io.content_hash(adata),
        "n_obs": d["n_obs"],
        "n_vars": d["n_vars"],
    }
    tmp = _incoming() / f"{secrets.token_hex(8)}.h5ad"
    try:
        io.write_h5ad(adata, tmp)
        summary.write_qc(adata, tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        summary.remove_qc(tmp)
        raise
    return _register(tmp, name, info, {"source": source, "parent": parent, "report": report})


def name_taken(name: str) -> str | None:
    """The key of a dataset already labelled ``name`` (as ``_register`` would store it), or
    None: two datasets of one name could not be told apart on Train, Runs or Compare."""
    clean = _one_line(name)  # records saved before labels were normalised: compared as such
    return next((r["key"] for r in list_datasets() if _one_line(r["name"]) == clean), None)


MAX_LABEL = 120  # characters of a dataset's label


def _one_line(name: str) -> str:
    """A label as stored: one line (a newline in it broke the listing's rows in two), in one
    Unicode spelling (NFC, no invisible format characters), of at
    most ``MAX_LABEL`` characters (a 5,000-character name filled the Runs and Results headers
    screens deep, and every row of `engine runs`: a hostile pass)."""
    text = re.sub(r"[\x00-\x1f\x7f]+", " ", str(name))
    # one spelling of what reads the same: 'Café' typed composed and decomposed, or with a
    # zero-width space, were two names a person could not tell apart (a hostile pass)
    text = unicodedata.normalize("NFC", text)
    text = "".join(
        c
        for c in text
        if unicodedata.category(c) != "Cf" or c in "\u200c\u200d"  # joiners
    ).strip()
    return text if len(text) <= MAX_LABEL else text[: MAX_LABEL - 1].rstrip() + "…"


def free_name(base: str) -> str:
    """``base``, or ``base_2``, ``base_3``, ...: the first name no dataset has (a second
    preprocessing of one file was offered the first one's name)."""
    taken = {r["name"] for r in list_datasets()}
    if base not in taken:
        return base
    return next(f"{base}_{i}" for i in range(2, 10_000) if f"{base}_{i}" not in taken)


def new_incoming() -> Path:
    """A fresh path in the incoming folder for a file that ``adopt`` will register."""
    return _incoming() / f"{secrets.token_hex(8)}.h5ad"


def adopt(
    tmp_h5ad: Path,
    name: str,
    info: dict[str, Any],
    source: str = "",
    parent: str | None = None,
    report: list | None = None,
    unique: bool = False,
) -> str:
    """Register a file a child process wrote in the incoming folder (``engine.pp_child``) with
    its description; return its key. The file is moved, never read again. ``unique``: refuse a
    name another dataset has."""
    if not str(name).strip():
        raise ScwbError("A dataset needs a name.")
    if unique and name_taken(name):
        raise ScwbError(
            f"A dataset is already named {str(name).strip()!r}: save this one under another name."
        )
    tmp_h5ad = Path(tmp_h5ad)
    if tmp_h5ad.parent.resolve() != _incoming().resolve() or not tmp_h5ad.exists():
        raise ScwbError("That preview is gone; press Preview again.")
    return _register(tmp_h5ad, name, info, {"source": source, "parent": parent, "report": report})


def import_file(
    source_path: str | os.PathLike, name: str, display: str | None = None, source: str = ""
) -> str:
    """Read a user's file in a memory-capped child process, then save it with ``name`` as its
    label; return its key. Nothing is saved unless it was read and described."""
    if not str(name).strip():
        raise ScwbError("A dataset needs a name.")
    tmp = _incoming() / f"{secrets.token_hex(8)}.h5ad"
    try:
        info = reader.read_untrusted(source_path, display or str(source_path), tmp)
        return _register(tmp, name, info, {"source": source, "parent": None, "report": None})
    finally:
        tmp.unlink(missing_ok=True)
        summary.remove_qc(tmp)
        runs.remove_temps(tmp)


def incoming_upload(filename: str) -> Path:
    """A fresh path in the incoming folder for an upload named ``filename`` (its suffix kept:
    the reader picks the format by it); the app's upload route streams a request body here."""
    return _incoming() / f"{secrets.token_hex(8)}{io._suffix(filename)}"


UPLOAD_GONE = f"That upload is gone (uploads wait {STALE_S // 3600} hours): upload the file again."


def import_received(upload: Path | None, name: str, filename: str, source: str = "") -> str:
    """``import_file`` a file received in the incoming folder, then remove it whatever happens
    (``None``, or a file no longer there: ``UPLOAD_GONE``)."""
    ours = upload is not None and Path(upload).parent.resolve() == _incoming().resolve()
    try:
        if not ours or not Path(upload).is_file():
            raise ScwbError(UPLOAD_GONE)
        return import_file(upload, name, display=filename, source=source)
    finally:
        if ours:
            Path(upload).unlink(missing_ok=True)


def import_upload(fileobj: IO[bytes], name: str, filename: str, source: str = "") -> str:
    """Stream an uploaded file to disk in chunks, then ``import_file`` it; the copy is removed
    whatever happens (a full disk is one line, with nothing left behind)."""
    upload = incoming_upload(filename)
    try:
        io.copy_stream(fileobj, upload)
    except BaseException:
        upload.unlink(missing_ok=True)
        raise
    return import_received(upload, name, filename, source)


# ----------------------------------------------------------------------------- listing
def list_datasets() -> list[dict[str, Any]]:
    """One row per dataset, newest first: ``key``, ``name`` (the label), ``fingerprint``,
    ``path``, ``size_mb``, shape and provenance. Never writes."""
    rows = []
    for p in workspace.datasets_dir().glob("*.h5ad"):
        if not _KEY.match(p.stem):
            continue
        try:
            st = p.stat()
        except OSError:
            continue
        m = runs.read_json(p.with_suffix(".json"), {}) or {}
        rows.append(
            {
                "key": p.stem,
                "name": str(m.get("name") or p.stem),
                "fingerprint": m.get("fingerprint"),
                "path": str(p),
                "size_mb": round(st.st_size / 2**20, 2),
                "mtime": st.st_mtime,
                # a hand-edited metadata file: text as text, counts as counts, else None
                **{
                    k: m.get(k) if isinstance(m.get(k), str) else None
                    for k in ("source", "parent", "created", "x_kind")
                },
                **{k: m.get(k) if type(m.get(k)) is int else None for k in ("n_obs", "n_vars")},
            }
        )
    rows.sort(key=lambda r: r["mtime"], reverse=True)
    return rows


def description(key: str) -> dict[str, Any] | None:
    """The ``io.describe`` stored when ``key`` was saved (None for datasets saved before)."""
    d = meta(key).get("describe")
    return d if isinstance(d, dict) and "x_kind" in d else None


def load(key: str) -> ad.AnnData:
    """Dataset ``key``, read in this process once its file is known to be intact."""
    fingerprint(key)
    return io.read(path(key))


# ----------------------------------------------------------------------------- deleting
def users(key: str, active_only: bool = True) -> list[dict[str, Any]]:
    """Queued or running runs of the workspace that train on dataset ``key`` (every run of it,
    whatever its state, with ``active_only=False``)."""
    key = check_key(key)
    target = str(path(key).resolve())
    out = []
    root = workspace.runs_dir()
    for run_dir in sorted(root.iterdir()) if root.exists() else []:
        if not run_dir.is_dir() or run_dir.name.startswith("."):
            continue
        state = runs.read_status(run_dir).get("state")
        if active_only and state not in runs.ACTIVE:
            continue
        spec = runs.read_json(run_dir / "run.json", {}) or {}
        data = str(spec.get("data") or "")
        uses = spec.get("dataset_key") == key
        if not uses and data:
            with contextlib.suppress(OSError, ValueError):
                uses = str(Path(data).resolve()) == target
        if uses:
            out.append({"id": run_dir.name, "state": state})
    return out


def check_deletable(key: str) -> None:
    """Refuse, in one line, to delete a dataset that is missing or that a queued or running run
    uses (the Data page asks this before it asks the user)."""
    key = check_key(key)
    if not path(key).exists():
        raise ScwbError(f"No dataset {key!r} in the workspace.")
    busy = users(key)
    if busy:
        first = busy[0]
        more = f" and {len(busy) - 1} more" if len(busy) > 1 else ""
        raise ScwbError(
            f"The dataset {label(key)!r} ({key}) is used by the {first['state']} run "
            f"{first['id']}{more}; cancel it or wait until it ends, then delete."
        )


def delete(key: str) -> None:
    """Delete dataset ``key``; refused while a queued or running run uses it."""
    check_deletable(key)
    p = path(check_key(key))
    if p.is_dir() and not p.is_symlink():  # not what the workspace writes: said, not removed
        raise ScwbError(f"{p} is a folder, not a dataset file: remove it by hand.")
    p.unlink(missing_ok=True)
    summary.remove_qc(p)
    _meta_path(key).unlink(missing_ok=True)


# ----------------------------------------------------------------------------- command line
def cli_list(as_json: bool = False) -> int:
    """``python -m engine datasets list [--json]``."""
    rows = list_datasets()
    if as_json:
        print(json.dumps([{k: v for k, v in r.items() if k != "mtime"} for r in rows], indent=2))
        return 0
    for r in rows:
        shape = f"{r['n_obs'] or '?'} x {r['n_vars'] or '?'}"
        print(f"{r['key']:<36} {shape:>16}  {r['x_kind'] or '?':<22} {r['name']}")
    if not rows:
        print("no datasets", file=sys.stderr)
    return 0


def cli_delete(key: str) -> int:
    """``python -m engine datasets delete KEY`` (ScwbError -> exit 2 in the CLI)."""
    name = label(check_key(key))
    delete(key)
    print(f"deleted {key} ({name})")
    return 0
