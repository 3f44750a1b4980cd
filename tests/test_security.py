"""Names and paths from the UI stay inside the workspace; weights never unpickle code."""

import os
import pickle

import pytest
import torch

from engine import datasets, predict, train, workspace
from engine.errors import ScwbError
from engine.spec import RunSpec


@pytest.mark.parametrize("name", ["../../etc/passwd", "/etc/passwd", "..", "a/../../b", "x\\..\\y"])
def test_dataset_names_cannot_escape(workspace, counts_adata, name):
    try:
        saved = datasets.save(counts_adata[:10].copy(), name)
    except ScwbError:
        return  # refusing is fine too
    path = datasets.path(saved).resolve()
    assert (workspace / "datasets").resolve() in path.parents
    assert not (workspace.parent / "etc").exists()


def test_inside_refuses_empty_names(tmp_path):
    with pytest.raises(ScwbError):
        workspace.inside(tmp_path, "../")


def test_server_paths_only_below_allowed_roots(tmp_path, monkeypatch):
    with pytest.raises(ScwbError, match="off"):
        workspace.check_server_path("/etc/hostname")
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    (allowed / "ok.h5ad").write_text("x")
    (allowed / "escape.h5ad").symlink_to("/etc/hostname")
    monkeypatch.setenv("SCWB_DATA_ROOTS", str(allowed))
    assert workspace.check_server_path(allowed / "ok.h5ad") == (allowed / "ok.h5ad").resolve()
    for bad in ("/etc/hostname", str(allowed / ".." / "x"), str(allowed / "escape.h5ad")):
        with pytest.raises(ScwbError, match="outside"):
            workspace.check_server_path(bad)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch /tmp/scwb-pwned",))


def test_model_weights_never_unpickle_code(tmp_path, separable_file):
    run_dir = tmp_path / "run"
    train.run(
        RunSpec(model="logreg", data=separable_file, label_key="label", epochs=1, out=str(run_dir))
    )
    predict.load(run_dir)  # plain weights load
    with open(run_dir / "model.pt", "wb") as fh:
        pickle.dump({"w": _Evil()}, fh)
    with pytest.raises(ScwbError, match="not a plain weights file"):
        predict.load(run_dir)
    assert not os.path.exists("/tmp/scwb-pwned")
    # the weights a run writes load with weights_only=True
    torch.save({"w": torch.zeros(1)}, run_dir / "ok.pt")
    assert torch.load(run_dir / "ok.pt", weights_only=True)["w"].shape == (1,)
