"""Identity end to end: two app sessions upload different files under one name and submit at
once; each run trains on its own data, and a run refuses data that changed after submission."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from engine import datasets, io, jobs, train
from engine.errors import ScwbError
from engine.spec import RunSpec
from tests.test_app import _small_file, _upload, app


def _submit_sk_logreg(at) -> None:
    at.switch_page("pages/train.py").run()
    next(r for r in at.radio if r.label == "Task").set_value("classify").run()
    next(m for m in at.multiselect if m.label.startswith("Models")).set_value(["sk_logreg"]).run()
    next(b for b in at.button if b.label == "Submit").click().run()
    assert not at.exception, [e.message for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_two_sessions_same_name_each_run_trains_on_its_own_data(tmp_path):
    first, second = app("data"), app("data")
    _upload(first, "cells.h5ad", _small_file(tmp_path, "a.h5ad", 40, 0))
    _upload(second, "cells.h5ad", _small_file(tmp_path, "b.h5ad", 20, 1))
    keys = {first.session_state["dataset"], second.session_state["dataset"]}
    assert len(keys) == 2
    _submit_sk_logreg(first)
    _submit_sk_logreg(second)
    rows = jobs.list_jobs()
    assert len(rows) == 2
    by_key = {}
    for r in rows:
        assert jobs.wait(r["path"], timeout=180)["state"] == "completed"
        spec = json.loads((Path(r["path"]) / "run.json").read_text())
        by_key[spec["dataset_key"]] = spec
    assert set(by_key) == keys
    for key, spec in by_key.items():
        assert spec["data_fingerprint"] == datasets.fingerprint(key)
        assert spec["data_shape"][0] == datasets.load(key).n_obs
    assert sorted(s["data_shape"][0] for s in by_key.values()) == [20, 40]


def test_run_refuses_data_that_changed_after_submission(tmp_path, lognorm_adata):
    path = io.write_h5ad(lognorm_adata, tmp_path / "d.h5ad")
    fp = io.fingerprint(io.read(path))
    changed = lognorm_adata.copy()
    changed.X = changed.X * 2
    io.write_h5ad(changed, path)
    spec = RunSpec(model="pca", data=str(path), out=str(tmp_path / "r"), data_fingerprint=fp)
    with pytest.raises(ScwbError, match="data changed since this run was submitted"):
        train.run(spec)
    assert not (tmp_path / "r" / "results.h5ad").exists()
    spec.data_fingerprint = io.fingerprint(io.read(path))
    assert np.isfinite(train.run(spec)["test_mse"])
