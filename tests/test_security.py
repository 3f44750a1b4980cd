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


def test_a_folder_read_by_server_path_may_not_link_outside_the_roots(tmp_path, monkeypatch):
    """A hostile-input pass: a 10x folder inside an allowed root whose barcodes.tsv linked to a
    file outside it read that file into cell names (only the folder itself was resolved)."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    tenx = allowed / "tenx"
    (tenx / "nested").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.txt").write_text("root:x:0:0\n")
    (tenx / "matrix.mtx").write_text("x")
    (allowed / "shared.tsv").write_text("AAAC\n")
    (tenx / "features.tsv").symlink_to(allowed / "shared.tsv")  # inside the roots: fine
    monkeypatch.setenv("SCWB_DATA_ROOTS", str(allowed))
    assert workspace.check_server_path(tenx) == tenx.resolve()
    (tenx / "nested" / "barcodes.tsv").symlink_to(outside / "secret.txt")
    with pytest.raises(ScwbError, match=r"nested/barcodes.tsv links to a file outside"):
        workspace.check_server_path(tenx)
    (tenx / "nested" / "barcodes.tsv").unlink()
    (tenx / "up").symlink_to(outside, target_is_directory=True)  # a linked folder, too
    with pytest.raises(ScwbError, match="up links to a file outside"):
        workspace.check_server_path(tenx)
    (tenx / "up").unlink()
    (tenx / "a").symlink_to(tenx / "b")  # a loop: one line, not 'unexpected RuntimeError'
    (tenx / "b").symlink_to(tenx / "a")
    with pytest.raises(ScwbError, match="is a link that leads nowhere"):
        workspace.check_server_path(tenx)


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
    # a zip of deflated zeros (13 KB here; 17 MB made 4 GB): refused before anything inflates
    import zipfile

    with zipfile.ZipFile(run_dir / "model.pt", "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("a/data.pkl", pickle.dumps({}))
        z.writestr("a/data/0", bytes(40_000_000))
    with pytest.raises(ScwbError, match="compressed entries"):
        predict.load(run_dir)
    # the weights a run writes load with weights_only=True
    torch.save({"w": torch.zeros(1)}, run_dir / "ok.pt")
    assert torch.load(run_dir / "ok.pt", weights_only=True)["w"].shape == (1,)


def _heap_hang_file(path):
    """A small .h5ad with one length byte of a global-heap attribute string changed: with
    h5py 3.16 / HDF5 2.0 reading its attributes loops forever inside the library (found by
    fuzzing: 10 of 3,300 one-to-eight-byte corruptions hung, none crashed)."""
    import re

    import anndata as ad
    import numpy as np
    import pandas as pd
    import scipy.sparse as sp

    a = ad.AnnData(
        X=sp.csr_matrix(np.eye(6, 4, dtype=np.float32)),
        obs=pd.DataFrame({"label": list("aabbcc")}, index=[f"c{i}" for i in range(6)]),
    )
    a.write_h5ad(path)
    b = bytearray(path.read_bytes())
    offs = [m.start() for m in re.finditer(rb"\x05\x00{7}0\.1\.0|\x04\x00{7}dict", b)]
    b[offs[4]] = 0xE1
    path.write_bytes(bytes(b))
    return path


@pytest.mark.parametrize("command", ["preprocess", "predict", "submit", "train"])
def test_a_damaged_file_never_hangs_the_command_line(
    workspace, tmp_path, monkeypatch, capsys, command
):
    """The command line read files named on it in its own process: a file whose HDF5 metadata
    makes the library loop hung preprocess, train and predict forever, and a submitted run's
    worker (blocking the queue). Every such file is now read in a child first, with a time
    limit: one line, exit 2, nothing queued or written."""
    from engine import cli, reader

    monkeypatch.setattr(reader, "READ_FLOOR_S", 5.0)
    bad = _heap_hang_file(tmp_path / "heap.h5ad")
    out = tmp_path / "out.h5ad"
    argv = {
        "preprocess": ["preprocess", str(bad), "-o", str(out), "--normalize", "logcpm"],
        "predict": ["predict", "--run", "some-run", "--data", str(bad), "-o", str(out)],
        "submit": ["submit", "--model", "mlp", "--label-key", "label", "--data", str(bad)],
        "train": ["train", "--model", "mlp", "--label-key", "label", "--data", str(bad),
                  "--out", str(tmp_path / "run")],
    }[command]  # fmt: skip
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: heap.h5ad") and "\n" not in err, err
    assert not out.exists() and not (tmp_path / "run").exists()
    queued = workspace / "runs"
    assert not queued.exists() or not any(queued.iterdir())


def test_read_time_limit_grows_with_the_work_and_the_setting_overrides_it(tmp_path, monkeypatch):
    """A minute plus 1 s per 10 MB, at most 900 s; a folder counts its files, a compressed
    file ten times its size; SCWB_READ_TIMEOUT_S, when set, is the limit (it can give a large
    file longer, not only less)."""
    from engine import reader

    monkeypatch.delenv("SCWB_READ_TIMEOUT_S", raising=False)
    small, big, gz = tmp_path / "small", tmp_path / "big", tmp_path / "t.csv.gz"
    small.write_bytes(b"x" * 1000)
    for path, size in ((big, 5 * 10**9), (gz, 10**8)):
        with open(path, "wb") as fh:  # sparse files: the size on paper, nothing on disk
            fh.truncate(size)
    folder = tmp_path / "mtx"
    folder.mkdir()
    for name in ("matrix.mtx", "barcodes.tsv"):
        with open(folder / name, "wb") as fh:
            fh.truncate(10**9)
    assert reader.read_timeout(small) == pytest.approx(60.0, abs=0.01)
    assert reader.read_timeout(big) == pytest.approx(560.0)
    assert reader.read_timeout(gz) == pytest.approx(160.0)  # 100 MB compressed: 1 GB of work
    assert reader.read_timeout(folder) == pytest.approx(260.0)
    assert reader.read_timeout(tmp_path / "huge") == pytest.approx(60.0)  # absent: the floor
    with open(big, "wb") as fh:
        fh.truncate(5 * 10**10)
    assert reader.read_timeout(big) == 900.0
    monkeypatch.setenv("SCWB_READ_TIMEOUT_S", "3600")
    assert reader.read_timeout(big) == 3600.0 and reader.read_timeout(small) == 3600.0
