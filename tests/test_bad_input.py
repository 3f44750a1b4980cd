"""The bad-input corpus: each kind through the command line (non-zero exit, one line on stderr)
and, for files, through the app's Data page (one readable message, the page keeps working).
Every fixture is generated here; docs/RELIABILITY.md lists the cases and their outcomes."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine.cli import main


def _adata(n=60, g=12, counts=True, seed=0) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    x = (
        rng.poisson(3, (n, g)).astype(np.float32)
        if counts
        else rng.random((n, g)).astype(np.float32) * 5
    )
    obs = pd.DataFrame(
        {
            "label": pd.Categorical(np.array(["a", "b", "c"])[np.arange(n) % 3]),
            "condition": pd.Categorical(np.where(np.arange(n) % 2, "stim", "ctrl")),
            "cell_type": pd.Categorical(np.array(["T", "B"])[(np.arange(n) // 2) % 2]),
        },
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(X=sp.csr_matrix(x), obs=obs)
    a.var_names = [f"G{i}" for i in range(g)]
    return a


def _write(a: ad.AnnData, p: Path) -> Path:
    a.write_h5ad(p)
    return p


def _lognorm(a: ad.AnnData) -> ad.AnnData:
    a.X = sp.csr_matrix(np.log1p(a.X.toarray()) + 0.01)
    return a


TRAIN = [
    "train",
    "--model",
    "mlp",
    "--label-key",
    "label",
    "--epochs",
    "1",
    "--out",
    "{tmp}/run",
    "--data",
]
SCGEN = [
    "train",
    "--model",
    "scgen",
    "--condition-key",
    "condition",
    "--ctrl",
    "ctrl",
    "--stim",
    "stim",
    "--cell-type-key",
    "cell_type",
    "--predict",
    "T",
    "--epochs",
    "1",
    "--out",
    "{tmp}/run",
    "--data",
]
VAE = ["train", "--model", "vae", "--epochs", "1", "--out", "{tmp}/run", "--layer", "X", "--data"]


def _nan(a):
    x = a.X.toarray()
    x[0, 0] = np.nan
    a.X = x
    return a


def _inf(a):
    x = a.X.toarray()
    x[1, 1] = np.inf
    a.X = x
    return a


def _set(a, **obs):
    for k, v in obs.items():
        a.obs[k] = v
    return a


def _put(p: Path, data: str | bytes) -> Path:
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return p


def _zip(p: Path, name: str, data: str) -> Path:
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr(name, data)
    return p


def _bomb(p: Path) -> Path:
    with zipfile.ZipFile(p, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("matrix.mtx", b"0" * (300 * 2**20))
    return p


def _trunc(p: Path) -> Path:
    _write(_adata(), p)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 3])
    return p


def _hdf5(p: Path) -> Path:
    with h5py.File(p, "w") as f:
        f["something"] = np.arange(5)
    return p


def _missing_labels(a):
    labels = a.obs["label"].astype(object)
    labels.iloc[3] = None
    a.obs["label"] = labels
    return a


def _no_ctrl_target(a):
    return a[~((a.obs["cell_type"] == "T") & (a.obs["condition"] == "ctrl"))].copy()


def _dup_genes(a):
    a.var_names = ["G0"] * a.n_vars
    return a


def _dup_cells(a):
    a.obs_names = ["c0"] * a.n_obs
    return a


def _rare(a):
    labels = a.obs["label"].astype(str)
    labels.iloc[0] = "rare"
    a.obs["label"] = labels
    return a


# id: (make(tmp) -> file, command args (file appended), expected words)
CORPUS = {
    "truncated_h5ad": (lambda t: _trunc(t / "t.h5ad"), ["info"], "truncated"),
    "hdf5_not_anndata": (lambda t: _hdf5(t / "x.h5ad"), ["info"], "not AnnData"),
    "renamed_txt": (
        lambda t: _put(t / "notes.h5ad", "just some notes"),
        ["info"],
        "not a readable .h5ad",
    ),
    "empty_file": (lambda t: _put(t / "e.h5ad", b""), ["info"], "empty"),
    "unknown_extension": (lambda t: _put(t / "m.xlsx", "x"), ["info"], "unknown format"),
    "pickle_upload": (lambda t: _put(t / "model.pkl", b"\x80\x04K\x01."), ["info"], "never loaded"),
    "zero_cells": (lambda t: _write(_adata()[:0].copy(), t / "z.h5ad"), TRAIN, "no cells"),
    "zero_genes": (lambda t: _write(_adata()[:, :0].copy(), t / "z.h5ad"), TRAIN, "no genes"),
    "all_zero": (
        lambda t: _write(
            ad.AnnData(X=np.zeros((30, 5), np.float32), obs=_adata(30).obs), t / "z.h5ad"
        ),
        TRAIN,
        "zero",
    ),
    "nan_values": (lambda t: _write(_nan(_adata()), t / "n.h5ad"), TRAIN, "NaN"),
    "inf_values": (lambda t: _write(_inf(_adata()), t / "i.h5ad"), TRAIN, "infinite"),
    "negative_for_counts": (
        lambda t: _write(
            ad.AnnData(X=-np.ones((30, 5), np.float32), obs=_adata(30).obs), t / "neg.h5ad"
        ),
        VAE,
        "negative",
    ),
    "non_integer_for_counts": (
        lambda t: _write(_adata(counts=False), t / "f.h5ad"),
        VAE,
        "non-integer",
    ),
    "duplicated_genes": (
        lambda t: _write(_dup_genes(_adata()), t / "d.h5ad"),
        TRAIN,
        "Duplicated gene",
    ),
    "duplicated_cells": (
        lambda t: _write(_dup_cells(_adata()), t / "d.h5ad"),
        TRAIN,
        "Duplicated cell",
    ),
    "one_class_label": (
        lambda t: _write(_set(_adata(), label="only"), t / "o.h5ad"),
        TRAIN,
        "1 class",
    ),
    "missing_labels": (
        lambda t: _write(_missing_labels(_adata()), t / "m.h5ad"),
        TRAIN,
        "missing values",
    ),
    "no_stim_value": (
        lambda t: _write(_lognorm(_set(_adata(), condition="ctrl")), t / "s.h5ad"),
        SCGEN,
        "no stimulated value",
    ),
    "target_without_control": (
        lambda t: _write(_lognorm(_no_ctrl_target(_adata())), t / "c.h5ad"),
        SCGEN,
        "no control cells",
    ),
    "class_too_small_for_split": (
        lambda t: _write(_rare(_adata()), t / "r.h5ad"),
        TRAIN,
        "needs at least 3",
    ),
    "non_utf8_csv_with_text": (
        lambda t: _put(t / "x.csv", "cell,g1\nc1,\xe9t\xe9\n".encode("latin-1")),
        ["info"],
        "holds text",
    ),
    "ragged_csv": (
        lambda t: _put(t / "r.csv", "cell,g1,g2\nc1,1,2\nc2,1,2,3,4\n"),
        ["info"],
        "different lengths",
    ),
    "zip_without_matrix": (
        lambda t: _zip(t / "n.zip", "readme.txt", "hi"),
        ["info"],
        "no 10x matrix",
    ),
    "zip_bomb": (lambda t: _bomb(t / "b.zip"), ["info"], "far more than its size"),
    "not_a_zip": (lambda t: _put(t / "f.zip", "nope"), ["info"], "not a valid zip"),
    "gzip_garbage_csv": (
        lambda t: _put(t / "g.csv.gz", gzip.compress(b"\x00\x01\x02" * 10)[:20]),
        ["info"],
        "could not be read",
    ),
    "scaled_data_for_scgen_counts": (lambda t: _write(_adata(), t / "c.h5ad"), SCGEN, "raw counts"),
}


@pytest.mark.parametrize("case", list(CORPUS))
def test_cli_one_line_nonzero(case, tmp_path, capsys):
    make, args, words = CORPUS[case]
    path = make(tmp_path)
    argv = [a.format(tmp=tmp_path) for a in args] + [str(path)]
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0
    assert len(err) == 1 and err[0].startswith("error: ") and words in err[0], err
    assert not (tmp_path / "run" / "results.h5ad").exists()


def test_memory_budget_is_checked_before_loading(tmp_path, monkeypatch, capsys):
    _write(ad.AnnData(X=np.ones((300, 100), np.float32)), tmp_path / "dense.h5ad")
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", "0.00001")
    assert main(["info", str(tmp_path / "dense.h5ad")]) != 0
    assert "memory budget" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, words",
    [
        (["--epochs", "-1"], "epochs"),
        (["--lr", "0"], "learning rate"),
        (["--batch-size", "0"], "batch size"),
        (["--param", "dropout=3"], "out of range"),
        (["--param", "hidden=x"], "comma-separated"),
    ],
)
def test_cli_hyperparameters_out_of_range(tmp_path, capsys, args, words):
    path = _write(_adata(), tmp_path / "ok.h5ad")
    assert (
        main(
            [
                "train",
                "--data",
                str(path),
                "--model",
                "mlp",
                "--label-key",
                "label",
                "--out",
                str(tmp_path / "r"),
                *args,
            ]
        )
        != 0
    )
    assert words in capsys.readouterr().err


def test_recipe_with_unknown_step(tmp_path, capsys):
    path = _write(_adata(), tmp_path / "ok.h5ad")
    (tmp_path / "r.json").write_text(json.dumps({"steps": [{"name": "denoise_magic"}]}))
    assert (
        main(
            [
                "preprocess",
                str(path),
                "-o",
                str(tmp_path / "o.h5ad"),
                "--recipe",
                str(tmp_path / "r.json"),
            ]
        )
        != 0
    )
    assert "Unknown recipe step 'denoise_magic'" in capsys.readouterr().err


# .xlsx and .pkl never reach the app: the uploader accepts only the readable types
FILE_CASES = [
    c
    for c, (_, args, _) in CORPUS.items()
    if args == ["info"] and c not in ("unknown_extension", "pickle_upload")
]


@pytest.mark.parametrize("case", FILE_CASES)
def test_app_upload_shows_one_line_and_keeps_working(case, tmp_path):
    from streamlit.testing.v1 import AppTest

    from engine import datasets
    from tests.conftest import ROOT

    path = CORPUS[case][0](tmp_path)
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/data.py").run()
    at.file_uploader[0].upload(path.name, path.read_bytes()).run()
    next(b for b in at.button if b.label == "Load file").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and "\n" not in errors[0] and CORPUS[case][2] in errors[0], errors
    assert datasets.list_datasets() == []
    good = _write(_adata(), tmp_path / "good.h5ad")
    at.file_uploader[0].clear().upload("good.h5ad", good.read_bytes()).run()
    next(b for b in at.button if b.label == "Load file").click().run()
    assert [d["name"] for d in datasets.list_datasets()] == ["good"]


@pytest.mark.parametrize(
    "case",
    [
        "nan_values",
        "one_class_label",
        "missing_labels",
        "class_too_small_for_split",
        "duplicated_genes",
    ],
)
def test_app_train_refuses_at_once(case, tmp_path):
    from streamlit.testing.v1 import AppTest

    from engine import datasets, io, jobs, runs, workspace
    from tests.conftest import ROOT

    bad = io.read(CORPUS[case][0](tmp_path))
    name = datasets.save(bad, "bad")
    runs.write_json(workspace.home() / "state.json", {"dataset": name})
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    if case != "one_class_label":
        next(b for b in at.button if b.label == "Submit").click().run()
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and CORPUS[case][2] in errors[0], errors
    else:  # a one-value column is no label column: the page never offers it
        label_box = next(b for b in at.selectbox if b.label == "Label column")
        assert "label" not in label_box.options and label_box.options
    assert jobs.list_jobs() == []
