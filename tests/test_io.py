import gzip
import io as pyio
import json
import os
import zipfile

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from engine import checks, io
from engine.errors import ScwbError


def _small(n=30, g=12, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.poisson(2, (n, g)).astype(np.float32)
    a = ad.AnnData(
        X=sp.csr_matrix(x),
        obs=pd.DataFrame(
            {"t": pd.Categorical(["a", "b"] * (n // 2))}, index=[f"c{i}" for i in range(n)]
        ),
    )
    a.var_names = [f"G{i}" for i in range(g)]
    return a


def test_read_h5ad_path_and_upload(tmp_path):
    a = _small()
    p = io.write_h5ad(a, tmp_path / "a.h5ad")
    assert io.read(p).shape == a.shape
    with open(p, "rb") as fh:
        b = io.read(pyio.BytesIO(fh.read()), filename="upload.h5ad")
    assert (b.var_names == a.var_names).all() and b.n_obs == 30


def test_read_csv_tsv_and_gz(tmp_path):
    a = _small()
    df = pd.DataFrame(a.X.toarray(), index=a.obs_names, columns=a.var_names)
    df.to_csv(tmp_path / "m.csv")
    df.to_csv(tmp_path / "m.tsv", sep="\t")
    with gzip.open(tmp_path / "m.csv.gz", "wt") as fh:
        df.to_csv(fh)
    for name in ("m.csv", "m.tsv", "m.csv.gz"):
        b = io.read(tmp_path / name)
        assert b.shape == (30, 12)
        np.testing.assert_allclose(b.X, df.to_numpy())


def _mtx_zip(tmp_path, a, name="10x.zip"):
    folder = tmp_path / "mtx"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sp.csr_matrix(a.X).T.tocoo())
    pd.DataFrame({"id": a.var_names, "name": a.var_names, "type": "Gene Expression"}).to_csv(
        folder / "features.tsv", sep="\t", header=False, index=False
    )
    pd.Series(a.obs_names).to_csv(folder / "barcodes.tsv", sep="\t", header=False, index=False)
    for f in folder.iterdir():
        with open(f, "rb") as src, gzip.open(f"{f}.gz", "wb") as dst:
            dst.write(src.read())
    path = tmp_path / name
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for f in folder.glob("*.gz"):
            zf.write(f, f"sample/{f.name}")
    return path


def test_read_zipped_10x_mtx(tmp_path):
    a = _small()
    b = io.read(_mtx_zip(tmp_path, a))
    assert b.shape == a.shape
    np.testing.assert_allclose(b.X.toarray(), a.X.toarray())


def test_read_10x_h5(tmp_path):
    a = _small()
    m = sp.csc_matrix(a.X.T)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"], g["shape"] = (
            m.data.astype(np.int32),
            m.indices,
            m.indptr,
            np.array(m.shape),
        )
        g["barcodes"] = np.array(a.obs_names, dtype="S")
        feat = g.create_group("features")
        feat["id"] = feat["name"] = np.array(a.var_names, dtype="S")
        feat["feature_type"] = np.array(["Gene Expression"] * a.n_vars, dtype="S")
        feat["genome"] = np.array(["g"] * a.n_vars, dtype="S")
    b = io.read(path)
    assert b.shape == a.shape


def test_describe_kinds(lognorm_adata, counts_adata):
    d = io.describe(counts_adata)
    assert d["x_kind"] == "counts" and d["sparse"] and 0 < d["sparsity"] < 1
    assert set(d["labels"]) >= {"cell_type", "condition"}
    assert (
        d["labels"]["condition"]["control"] + d["labels"]["condition"]["stimulated"]
        == counts_adata.n_obs
    )
    d2 = io.describe(lognorm_adata)
    assert d2["x_kind"] == "log-normalised" and d2["layers"]["counts"] == "counts"
    assert io.matrix_kind(np.random.default_rng(0).normal(size=(50, 10))) == "scaled (z-score)"
    assert io.matrix_kind(np.random.default_rng(0).random((50, 10))) == "scaled (MinMax)"


def test_describe_embeddings_on_pbmc68k():
    from engine.demos import load_demo

    d = io.describe(load_demo("pbmc68k_reduced"))
    assert "X_umap" in d["embeddings"] and "louvain" in d["labels"]


def test_fingerprint_changes_with_content():
    a, b = _small(), _small()
    assert io.fingerprint(a) == io.fingerprint(b)
    b.X[0, 0] += 1
    assert io.fingerprint(a) != io.fingerprint(b)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p.write_bytes(b"not hdf5 at all"), "not a readable .h5ad"),
        (lambda p: p.write_bytes(b""), "empty"),
    ],
)
def test_bad_h5ad(tmp_path, make, message):
    p = tmp_path / "bad.h5ad"
    make(p)
    with pytest.raises(ScwbError, match=message):
        io.read(p)


def test_truncated_h5ad(tmp_path):
    p = io.write_h5ad(_small(), tmp_path / "a.h5ad")
    data = p.read_bytes()
    (tmp_path / "t.h5ad").write_bytes(data[: len(data) // 2])
    with pytest.raises(ScwbError):
        io.read(tmp_path / "t.h5ad")


def test_hdf5_not_anndata(tmp_path):
    with h5py.File(tmp_path / "x.h5ad", "w") as f:
        f["foo"] = np.arange(3)
    with pytest.raises(ScwbError, match="not AnnData"):
        io.read(tmp_path / "x.h5ad")


def test_renamed_txt_and_unknown_suffix(tmp_path):
    (tmp_path / "notes.h5ad").write_text("hello, I am text")
    with pytest.raises(ScwbError):
        io.read(tmp_path / "notes.h5ad")
    (tmp_path / "x.docx").write_text("x")
    with pytest.raises(ScwbError, match="unknown format"):
        io.read(tmp_path / "x.docx")


def test_pickles_refused(tmp_path):
    (tmp_path / "m.pkl").write_bytes(b"\x80\x04K\x01.")
    with pytest.raises(ScwbError, match="never loaded"):
        io.read(tmp_path / "m.pkl")


def test_csv_problems(tmp_path):
    (tmp_path / "ragged.csv").write_text("cell,g1,g2\nc1,1,2\nc2,1,2,3,4\n")
    with pytest.raises(ScwbError, match="different lengths"):
        io.read(tmp_path / "ragged.csv")
    (tmp_path / "latin.csv").write_bytes("cell,g\xe9ne\nc1,1\nc2,2\n".encode("latin-1"))
    assert io.read(tmp_path / "latin.csv").n_vars == 1
    (tmp_path / "text.csv").write_text("cell,g1\nc1,abc\nc2,1\n")
    with pytest.raises(ScwbError, match="holds .abc., not a number"):
        io.read(tmp_path / "text.csv")


def test_zip_problems(tmp_path):
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as zf:
        zf.writestr("readme.md", "nothing here")
    with pytest.raises(ScwbError, match="no 10x matrix"):
        io.read(tmp_path / "empty.zip")
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("matrix.mtx", b"0" * (200 * 2**20))
    with pytest.raises(ScwbError, match="far more than its size"):
        io.read(tmp_path / "bomb.zip")
    (tmp_path / "fake.zip").write_text("not a zip")
    with pytest.raises(ScwbError, match="not a valid zip"):
        io.read(tmp_path / "fake.zip")


def test_memory_budget_refuses_large_dense(tmp_path, monkeypatch):
    a = ad.AnnData(X=np.ones((200, 100), dtype=np.float32))
    p = io.write_h5ad(a, tmp_path / "dense.h5ad")
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(1e-6))
    with pytest.raises(ScwbError, match="memory budget"):
        io.read(p)


def test_fixed_length_strings_count_as_the_python_strings_they_become(tmp_path, monkeypatch):
    """A hostile-input pass: 2 M two-byte strings in uns, gzip-compressed to a few KB, were
    counted as 4 MB (2 bytes each) and took hundreds of MB once anndata made them str objects
    (the saved copy, rewritten as variable-length strings, was 4,700x the upload)."""
    import h5py

    from engine import checks

    p = io.write_h5ad(_small(), tmp_path / "strings.h5ad")
    n = 2_000_000
    with h5py.File(p, "r+") as f:
        ds = f["uns"].create_dataset("s", data=np.full(n, b"ab", dtype="S2"), compression="gzip")
        ds.attrs["encoding-type"] = "string-array"
        ds.attrs["encoding-version"] = "0.2.0"
    assert p.stat().st_size < 200_000
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(n * 32 / 2**30))  # over 2 B, under 64 B each
    with pytest.raises(ScwbError, match="uns needs 122.6 MB in memory, over the memory budget"):
        checks.check_h5ad(p, "strings.h5ad")


def test_an_index_counts_as_the_names_it_becomes_whatever_its_stored_type(tmp_path, monkeypatch):
    """A hostile-input pass: a var index stored as gzip-compressed int64 (20 M genes in a 400 KB
    file) was counted at 8 bytes a name; anndata makes each a Python string (about 200 B with
    its index), so the reader took 3.5 GB until its time limit. Counted at 256 B a name, and
    refused at once."""
    import h5py

    from engine import checks

    n = 200_000
    p = io.write_h5ad(ad.AnnData(sp.csr_matrix((3, n), dtype=np.float32)), tmp_path / "i.h5ad")
    with h5py.File(p, "r+") as f:
        del f["var/_index"]
        ds = f["var"].create_dataset("_index", data=np.arange(n), compression="gzip")
        ds.attrs["encoding-type"] = "array"
        ds.attrs["encoding-version"] = "0.2.0"
    with h5py.File(p) as f:  # and what HDF5 keeps for each of its chunks while reading
        chunks = checks._chunk_overhead(f["var/_index"])
    assert (
        0 < chunks < n * 8
        and checks.check_h5ad(p, "i.h5ad")["var"] == n * checks.INDEX_BYTES + chunks
    )
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(n * 64 / 2**30))  # over 8 B, under 256 B
    with pytest.raises(ScwbError, match="i.h5ad: var needs 49.1 MB in memory, over the memory"):
        checks.check_h5ad(p, "i.h5ad")

    # the same for the names of a 10x folder (4 M barcodes in an 11 KB folder were counted at
    # 32 MB) and of a table: each name counted as it becomes an index entry
    folder = tmp_path / "tenx"
    folder.mkdir()
    with gzip.open(folder / "barcodes.tsv.gz", "wt") as fh:
        fh.write("AAACCTGAGAAACCAT-1\n" * n)
    (folder / "features.tsv").write_text("".join(f"g{i}\tG{i}\n" for i in range(3)))
    (folder / "matrix.mtx").write_text(
        f"%%MatrixMarket matrix coordinate integer general\n3 {n} 0\n"
    )
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(n * 64 / 2**30))
    with pytest.raises(ScwbError, match=r"matrix.mtx \(0 entries, 200,000 cells.* over the memory"):
        io.read(folder)


def test_validation_messages():
    a = _small()
    with pytest.raises(ScwbError, match="no cells"):
        io.check_not_empty(a[:0])
    with pytest.raises(ScwbError, match="no genes"):
        io.check_not_empty(a[:, :0])
    with pytest.raises(ScwbError, match="zero"):
        io.check_not_empty(ad.AnnData(X=np.zeros((5, 3), dtype=np.float32)))
    x = np.ones((4, 3))
    x[1, 1] = np.nan
    with pytest.raises(ScwbError, match="NaN"):
        io.check_finite(x)
    x[1, 1] = np.inf
    with pytest.raises(ScwbError, match="NaN or infinite"):
        io.check_finite(x)
    with pytest.raises(ScwbError, match="negative"):
        io.check_counts(-np.ones((3, 3)))
    with pytest.raises(ScwbError, match="non-integer"):
        io.check_counts(np.full((3, 3), 0.5))
    dup = _small()
    dup.var_names = ["G0"] * dup.n_vars
    with pytest.raises(ScwbError, match="Duplicated gene"):
        io.check_unique_names(dup)
    io.check_unique_names(io.make_unique(dup))
    one = _small()
    one.obs["t"] = "only"
    with pytest.raises(ScwbError, match="1 class"):
        io.check_label(one, "t")
    miss = _small()
    miss.obs["t"] = miss.obs["t"].cat.add_categories([]).astype(object)
    miss.obs.iloc[0, 0] = None
    with pytest.raises(ScwbError, match="missing"):
        io.check_label(miss, "t")
    with pytest.raises(ScwbError, match="no value"):
        io.check_values(_small(), "t", ["zzz"])


def test_qc_metrics_from_counts_and_from_obs(counts_adata):
    qc = io.qc_metrics(counts_adata)
    x = counts_adata.X.toarray()
    np.testing.assert_array_equal(qc["n_genes_by_counts"], (x > 0).sum(1))
    np.testing.assert_allclose(qc["total_counts"], x.sum(1))
    mt = counts_adata.var_names.str.startswith("MT-")
    np.testing.assert_allclose(qc["pct_counts_mt"], 100 * x[:, mt].sum(1) / x.sum(1), rtol=1e-5)
    from engine.demos import load_demo

    pbmc = load_demo("pbmc68k_reduced")  # scaled X, QC columns in obs (percent_mito as a fraction)
    qc2 = io.qc_metrics(pbmc)
    np.testing.assert_allclose(qc2["pct_counts_mt"], pbmc.obs["percent_mito"] * 100)
    scaled = ad.AnnData(X=np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32))
    assert io.qc_metrics(scaled).empty


# ----------------------------------------------------------------------------- structure checks
def test_structural_checks_run_before_in_process_reads(tmp_path):
    """``io.read`` (trusted paths, in this process) validates like the reader child does."""
    from tests.test_bad_input import _indptr_swap, _patch_csr

    with pytest.raises(ScwbError, match="outside 0..11"):
        io.read(_patch_csr(tmp_path / "a.h5ad", indices=[(0, 2_000_000_000), (1, -5)]))
    with pytest.raises(ScwbError, match="decreasing indptr"):
        io.read(_indptr_swap(tmp_path / "b.h5ad"))


def test_every_matrix_is_sized_with_its_dtype(tmp_path, monkeypatch):
    """float64 counts 8 bytes; layers, obsm, varm and raw count, alone and together."""
    from engine import checks

    a = _small(n=40, g=10)
    a.layers["f64"] = np.ones((40, 10), np.float64)
    a.obsm["X_e"] = np.ones((40, 3), np.float64)
    a.varm["PCs"] = np.ones((10, 2), np.float32)
    a.raw = a.copy()
    p = io.write_h5ad(a, tmp_path / "a.h5ad")
    sizes = checks.check_h5ad(p, "a.h5ad")
    assert sizes["layers['f64']"] == 40 * 10 * 8
    assert sizes["obsm['X_e']"] == 40 * 3 * 8 and sizes["varm['PCs']"] == 10 * 2 * 4
    x = a.X
    assert sizes["X"] == x.nnz * (x.data.itemsize + x.indices.itemsize) + x.indptr.nbytes
    assert sizes["raw.X"] == sizes["X"]
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(3000 / 2**30))  # under the layer alone
    with pytest.raises(ScwbError, match=r"layers\['f64'\] \(dense 40 x 10\) needs 3.1 KB"):
        io.read(p)
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str((sum(sizes.values()) - 1) / 2**30))
    with pytest.raises(ScwbError, match="the whole file"):
        io.read(p)


def test_mtx_folder_is_parsed_and_checked(tmp_path):
    a = _small()
    folder = tmp_path / "plain"
    folder.mkdir()
    scipy.io.mmwrite(folder / "matrix.mtx", sp.csr_matrix(a.X).T.tocoo())
    pd.DataFrame({"id": a.var_names, "name": a.var_names}).to_csv(
        folder / "genes.tsv", sep="\t", header=False, index=False
    )
    pd.Series(a.obs_names).to_csv(folder / "barcodes.tsv", sep="\t", header=False, index=False)
    b = io.read(folder)
    np.testing.assert_allclose(b.X.toarray(), a.X.toarray())
    assert list(b.obs_names) == list(a.obs_names) and list(b.var_names) == list(a.var_names)
    (folder / "barcodes.tsv").write_text("only_one\n")
    with pytest.raises(ScwbError, match="do not belong together"):
        io.read(folder)


def test_gzip_table_is_bounded_by_streaming(tmp_path, monkeypatch):
    """A highly compressible .csv.gz is measured by decompressing it (stopping past the
    budget), not by guessing a ratio."""
    body = "cell," + ",".join(f"g{i}" for i in range(300)) + "\n"
    body += "".join(f"c{i}," + ",".join(["0"] * 300) + "\n" for i in range(3000))
    p = tmp_path / "z.csv.gz"
    p.write_bytes(gzip.compress(body.encode(), 9))
    assert p.stat().st_size * 5 < len(body) / 10  # the old 5x guess would have let it through
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(len(body) / 2 / 2**30))
    with pytest.raises(ScwbError, match="decompressed text, at least"):
        io.read(p)
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(3000 * 300 * 20 / 2 / 2**30))
    with pytest.raises(ScwbError, match="dense 3000 x 300"):
        io.read(p)
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", "1")
    assert io.read(p).shape == (3000, 300)


def test_uploads_are_streamed_in_chunks(tmp_path):
    """A file object is copied to disk in bounded chunks, never read whole."""
    data = io.write_h5ad(_small(), tmp_path / "a.h5ad").read_bytes()

    class Upload(pyio.BytesIO):
        def read(self, size=-1):
            assert size is not None and 0 < size <= 1 << 20, size
            return super().read(size)

    assert io.read(Upload(data), filename="a.h5ad").shape == (30, 12)


# ----------------------------------------------------------------------------- the reader child
def test_reader_child_crash_is_one_line_and_saves_nothing(tmp_path, monkeypatch, workspace):
    """Whatever slips past the checks costs one child: a crash by signal is one line."""
    import sys

    from engine import datasets

    p = io.write_h5ad(_small(), tmp_path / "a.h5ad")
    crash = tmp_path / "crash.sh"
    crash.write_text("#!/bin/sh\nkill -SEGV $$\n")
    crash.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(crash))
    with pytest.raises(ScwbError) as err:
        datasets.import_file(p, "a")
    assert str(err.value) == (
        "a.h5ad could not be read safely (the reader crashed with SIGSEGV); the file is malformed."
    )
    assert datasets.list_datasets() == []
    assert [q for q in (workspace / "datasets").rglob("*") if q.is_file()] == []


def test_reader_child_runs_under_a_memory_cap(tmp_path, monkeypatch):
    """The child sets RLIMIT_AS itself: with a cap too small to import numpy it fails, as one
    line, and the parent is untouched."""
    from engine import reader

    p = io.write_h5ad(_small(), tmp_path / "a.h5ad")
    with monkeypatch.context() as m:
        m.setattr(reader, "child_memory_limit", lambda: 64 * 2**20)
        with pytest.raises(ScwbError) as err:
            reader.describe_file(p)
    assert "\n" not in str(err.value) and "a.h5ad" in str(err.value)
    assert reader.describe_file(p)["n_obs"] == 30


# ----------------------------------------------------------------------------- identity
def test_dataset_keys_never_collide_and_load_exactly(workspace):
    from engine import datasets

    a, b = _small(seed=0), _small(seed=1)
    ka, kb = datasets.save(a, "same name"), datasets.save(b, "same name")
    assert ka != kb
    np.testing.assert_array_equal(datasets.load(ka).X.toarray(), a.X.toarray())
    np.testing.assert_array_equal(datasets.load(kb).X.toarray(), b.X.toarray())
    assert datasets.save(a, "same name") == ka  # identical content and name: the same key
    # the same matrix with other labels is another dataset
    c = _small(seed=0)
    c.obs["t"] = pd.Categorical(["x", "y"] * 15)
    kc = datasets.save(c, "same name")
    assert kc not in (ka, kb)
    assert list(datasets.load(kc).obs["t"][:2]) == ["x", "y"]
    rows = {r["key"]: r for r in datasets.list_datasets()}
    assert set(rows) == {ka, kb, kc}
    assert {r["name"] for r in rows.values()} == {"same name"}
    assert rows[ka]["fingerprint"] == io.fingerprint(a) == datasets.fingerprint(ka)


@pytest.mark.parametrize(
    "names",
    [
        ("α1", "β1"),
        ("T細胞", "B細胞"),
        ("x" * 76 + ".h5ad", "x" * 76 + ".csv"),
        ("../../etc/passwd", "..\\..\\evil"),
        ("[click](http://evil.example)", "**bold**"),
    ],
)
def test_any_name_is_a_label_beside_a_safe_key(workspace, names):
    from engine import datasets

    keys = [datasets.save(_small(seed=i), n) for i, n in enumerate(names)]
    assert len(set(keys)) == 2
    for key, name in zip(keys, names, strict=True):
        assert key.isascii() and "/" not in key and "\\" not in key and len(key) <= 80
        assert datasets.label(key) == name
        assert datasets.path(key).parent == workspace / "datasets"
        assert datasets.load(key).n_obs == 30
        datasets.delete(key)
        assert not datasets.path(key).exists()
    assert datasets.list_datasets() == []


def test_a_label_is_one_line(workspace):
    """A name with a newline or tab split the datasets listing's rows in two."""
    from engine import datasets

    key = datasets.save(_small(), "two\nlines\tname\x00")
    assert datasets.label(key) == "two lines name"


def test_keys_are_checked_not_rewritten(workspace):
    from engine import datasets

    for bad in ("../x", "a/b", "", "é", ".hidden"):
        with pytest.raises(ScwbError, match="not a dataset key"):
            datasets.path(bad)


def _fake_run(workspace, run_id, state, **spec):
    from engine import runs

    d = workspace / "runs" / run_id
    d.mkdir(parents=True)
    runs.write_json(d / "run.json", spec)
    runs.write_json(d / "status.json", {"state": state})
    return d


def test_delete_refuses_while_a_run_uses_the_dataset(workspace, capsys):
    from engine import datasets, runs
    from engine.cli import main

    key = datasets.save(_small(), "used")
    other = datasets.save(_small(seed=3), "other")
    run = _fake_run(workspace, "r1", "queued", dataset_key=key)
    _fake_run(workspace, "r2", "running", data=str(datasets.path(key)))
    _fake_run(workspace, "r3", "running", dataset_key=other)
    with pytest.raises(ScwbError, match="used by the queued run r1 and 1 more"):
        datasets.delete(key)
    assert main(["datasets", "delete", key]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "used by" in err[0]
    assert datasets.path(key).exists()
    runs.write_json(run / "status.json", {"state": "completed"})
    runs.write_json(workspace / "runs" / "r2" / "status.json", {"state": "failed"})
    assert main(["datasets", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {r["key"] for r in listed} == {key, other} and all("fingerprint" in r for r in listed)
    assert main(["datasets", "delete", key]) == 0
    assert not datasets.path(key).exists() and datasets.path(other).exists()
    assert main(["datasets", "delete", key]) == 2  # gone: one line, not a traceback
    assert "No dataset" in capsys.readouterr().err


# ----------------------------------------------------------------------------- disk full
def test_disk_full_on_upload_is_one_line_and_leaves_nothing(tmp_path, monkeypatch, workspace):
    import errno

    from engine import datasets

    data = io.write_h5ad(_small(), tmp_path / "a.h5ad").read_bytes()

    def full(fh, block):
        raise OSError(errno.ENOSPC, "No space left on device")

    # contexts, not monkeypatch.undo(): that would also undo the workspace fixture's SCWB_HOME
    with monkeypatch.context() as m:
        m.setattr(io, "_write_chunk", full)
        with pytest.raises(ScwbError, match="The disk is full"):
            datasets.import_upload(pyio.BytesIO(data), "a", filename="a.h5ad")
    assert [q for q in (workspace / "datasets").rglob("*") if q.is_file()] == []
    real_replace = os.replace

    def full_replace(src, dst):
        if str(dst).endswith(".h5ad"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full_replace)
    with pytest.raises(ScwbError, match="The disk is full"):
        datasets.save(_small(), "b")
    assert [q for q in (workspace / "datasets").rglob("*") if q.is_file()] == []


def test_hdf5_links_and_10x_h5_structure_are_checked(tmp_path):
    other = io.write_h5ad(_small(seed=5), tmp_path / "someone_elses.h5ad")
    p = io.write_h5ad(_small(), tmp_path / "a.h5ad")
    with h5py.File(p, "r+") as f:
        f["obsm/X_theirs"] = h5py.ExternalLink(str(other), "/X")
    with pytest.raises(ScwbError, match=r"obsm\['X_theirs'\] links to another file"):
        io.read(p)
    a = _small()
    m = sp.csc_matrix(a.X.T)
    path = tmp_path / "f.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        indices = m.indices.copy()
        indices[0] = 2_000_000_000
        g["data"], g["indices"], g["indptr"], g["shape"] = m.data, indices, m.indptr, m.shape
    with pytest.raises(ScwbError, match="index 2000000000 outside 0..11"):
        io.read(path)


def test_incoming_files_left_by_a_killed_server_are_swept(workspace):
    import time

    from engine import datasets

    incoming = workspace / "datasets" / ".incoming"
    incoming.mkdir(parents=True)
    stale, fresh = incoming / "old.h5ad", incoming / "busy.h5ad"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"y")  # another session's upload in progress: kept
    old = time.time() - datasets.STALE_S - 60
    os.utime(stale, (old, old))
    datasets.save(_small(), "a")
    assert not stale.exists() and fresh.exists()


def test_mtx_side_files_are_bounded_while_counted(tmp_path, monkeypatch):
    """A gzipped barcodes.tsv that decompresses past the budget is refused while streaming."""
    folder = tmp_path / "tenx"
    folder.mkdir()
    (folder / "matrix.mtx").write_text(
        "%%MatrixMarket matrix coordinate integer general\n2 3 1\n1 1 4\n"
    )
    (folder / "genes.tsv").write_text("G1\tG1\nG2\tG2\n")
    (folder / "barcodes.tsv.gz").write_bytes(gzip.compress(b"c\n" * (4 << 20), 9))
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str((2 << 20) / 2**30))
    with pytest.raises(ScwbError, match=r"barcodes.tsv.gz \(decompressed, at least\)"):
        io.read(folder)


def test_wide_table_header_spanning_chunks_is_counted(tmp_path, monkeypatch):
    """A header longer than one read chunk still gives the right column count."""
    n_genes = 120_000  # ~1.1 MB header
    header = "cell," + ",".join(f"gene{i}" for i in range(n_genes)) + "\n"
    p = tmp_path / "wide.csv"
    p.write_text(header + "c0," + ",".join(["1"] * n_genes) + "\n")
    from engine import checks

    assert checks.table_bounds(p, "wide.csv", ",") == (1, n_genes)


def test_cytometry_arcsinh_layer_is_recognised_not_called_zscore():
    rng = np.random.default_rng(0)
    raw = np.concatenate(
        [rng.normal(0, 2, (500, 10)), rng.lognormal(5, 1, (500, 10))], axis=1
    ).astype(np.float32)  # negative noise around zero, and bright markers
    assert io.matrix_kind(raw) == "raw intensities"
    assert io.matrix_kind(np.arcsinh(raw / 5)) == "arcsinh-transformed"
    z = (raw - raw.mean(0)) / raw.std(0)
    assert io.matrix_kind(z) == "scaled (z-score)"
    from engine import preprocess as pp

    steps = pp.Recipe.suggest({"x_kind": "arcsinh-transformed"}).steps
    assert [s.name for s in steps] == ["scale"] and steps[0].params["method"] == "minmax"


def test_real_cytof_arcsinh_layer():
    from tests.conftest import shared_file

    a = ad.read_h5ad(shared_file("cytof_phenograph.h5ad"))
    assert io.matrix_kind(a.X) == "raw intensities"
    assert io.matrix_kind(a.layers["arcsinh5"]) == "arcsinh-transformed"


@pytest.mark.parametrize("kind", ["csr", "csc", "dense"])
def test_gene_values_read_one_gene_for_some_cells(kind, tmp_path, monkeypatch):
    """engine.summary.gene_values (Explore's gene colour) without loading X: every storage."""
    import anndata as ad
    import scipy.sparse as sp

    from engine import summary

    monkeypatch.setattr(summary, "GENE_SLAB", 37)  # many slabs, rows split across them
    x = sp.random(300, 25, density=0.3, format="csr", random_state=0, dtype=np.float32)
    m = {"csr": x, "csc": x.tocsc(), "dense": x.toarray()}[kind]
    path = tmp_path / f"{kind}.h5ad"
    ad.AnnData(m).write_h5ad(path)
    rows = np.random.default_rng(0).choice(300, 120, replace=True)  # unsorted, repeated
    for j in (0, 11, 24):
        assert np.allclose(summary.gene_values(path, j, rows), x[rows, j].toarray().ravel())
    assert summary.gene_values(path, 3, np.array([], dtype=int)).shape == (0,)


def test_gene_values_add_duplicate_entries_and_obsm_frames_count(tmp_path):
    """A CSR/CSC file may store one (cell, gene) twice: scipy adds them up, and so do we; a data
    frame in obsm (spatial coordinates) is an embedding with its columns."""
    import anndata as ad
    import scipy.sparse as sp

    from engine import summary

    data, index = np.array([1.0, 2.0, 5.0], np.float32), np.array([0, 0, 1])
    csr = sp.csr_matrix((data, index, np.array([0, 2, 3])), shape=(2, 3))  # cell 0, gene 0 twice
    csc = sp.csc_matrix((data, index, np.array([0, 2, 3, 3])), shape=(2, 3))  # the same
    for m, name in ((csr, "csr"), (csc, "csc")):
        a = ad.AnnData(m)
        a.obsm["spatial"] = pd.DataFrame({"x": [0.0, 1.0], "y": [2.0, 3.0]}, index=a.obs_names)
        a.obsm["X_umap"] = np.zeros((2, 2), np.float32)
        path = tmp_path / f"{name}.h5ad"
        a.write_h5ad(path)
        assert summary.gene_values(path, 0, np.array([0, 1])).tolist() == [3.0, 0.0]
        assert summary.obsm_dims(path) == {"spatial": 2, "X_umap": 2}
        assert summary.obsm_coords(path, "spatial").tolist() == [[0.0, 2.0], [1.0, 3.0]]


def test_nullable_string_columns_are_read_and_written(tmp_path, workspace):
    """pandas' ``string`` dtype (every text column under pandas 3, and what anndata >= 0.11 reads
    back from files written with it): the engine saves such data instead of failing on anndata's
    opt-in setting (seen on the GPU machine, whose image has pandas 3)."""
    from engine import datasets

    a = _small()
    a.obs["donor"] = pd.array(["d1", "d2", "d3"] * 10, dtype="string")
    a.obs_names = pd.Index(a.obs_names, dtype="string")
    out = io.write_h5ad(a, tmp_path / "direct.h5ad")
    back = ad.read_h5ad(out)
    assert list(back.obs["donor"].astype(str)) == ["d1", "d2", "d3"] * 10
    assert list(back.obs_names) == list(a.obs_names)
    # a file written elsewhere with nullable strings: imported through the reader child
    foreign = tmp_path / "foreign.h5ad"
    with ad.settings.override(allow_write_nullable_strings=True):
        a.write_h5ad(foreign)
    key = datasets.import_file(foreign, "foreign")
    loaded = datasets.load(key)
    assert loaded.shape == a.shape
    assert sorted(loaded.obs["donor"].astype(str).unique()) == ["d1", "d2", "d3"]


@pytest.mark.parametrize("shape", ["deep", "cycle", "wide"])
def test_nested_groups_are_refused_quickly(tmp_path, shape):
    """500 levels of 4,000-character group names in uns took 139 s to refuse (h5py's
    visititems looks every object up by its full path); a hard-link cycle ran into Python's
    recursion limit. A capped walk by relative names refuses both at once, in one short line."""

    path = tmp_path / f"{shape}.h5ad"
    ad.AnnData(X=np.ones((6, 4), np.float32)).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        g = f["uns"]
        if shape == "deep":
            for _ in range(500):
                g = g.create_group("d" * 4000)
        elif shape == "cycle":
            g.create_group("a")["loop"] = f["uns"]
        else:  # many objects in one group
            big = g.create_group("many")
            for i in range(150):  # over the cap of 100 patched in below
                big.create_group(f"g{i}")
    if shape == "wide":
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(checks, "MAX_OBJECTS", 100)
            with pytest.raises(ScwbError, match="more than 100 HDF5 objects"):
                io.read(path)
    else:
        with pytest.raises(ScwbError, match="nests groups more than 32 levels deep") as err:
            io.read(path)
        assert len(str(err.value)) < 200 and "\n" not in str(err.value)


def test_bool_float16_and_repeated_sparse_entries(tmp_path):
    """Three files the reader took and a later step misread: a bool X (normalize failed with
    'Cannot cast ufunc divide output to bool'), sparse float16 (called a damaged file), and a
    column twice in one CSR row (hvg failed on 'infinity', models summed silently). Imports
    and preprocessing take them in canonical form (``io.canonical``); ``io.read`` keeps the
    bytes a file holds, so a saved dataset's fingerprint never changes under its runs."""
    from engine import reader

    a = ad.AnnData(X=(np.arange(24).reshape(6, 4) % 3 == 0))
    a.write_h5ad(tmp_path / "bool.h5ad")
    x = io.canonical(io.read(tmp_path / "bool.h5ad")).X
    assert x.dtype == np.float32 and x.sum() == 8

    ad.AnnData(X=sp.csr_matrix(np.eye(6, 4, dtype=np.float32))).write_h5ad(tmp_path / "f16.h5ad")
    with h5py.File(tmp_path / "f16.h5ad", "r+") as f:
        data = f["X/data"][:].astype(np.float16)
        del f["X/data"]
        f["X/data"] = data
    with pytest.raises(ScwbError, match="sparse matrix of float16, which scipy cannot hold"):
        io.read(tmp_path / "f16.h5ad")

    ad.AnnData(X=sp.csr_matrix(np.eye(6, 4, dtype=np.float32))).write_h5ad(tmp_path / "dup.h5ad")
    with h5py.File(tmp_path / "dup.h5ad", "r+") as f:
        # row 0 holds column 0 twice (1 + 2); rows 1-3 one entry each, rows 4-5 none
        indices = np.array([0, 0, 1, 2, 3], dtype=f["X/indices"].dtype)
        data = np.array([1, 2, 1, 1, 1], dtype=np.float32)
        indptr = np.array([0, 2, 3, 4, 5, 5, 5], dtype=f["X/indptr"].dtype)
        for k, v in (("indices", indices), ("data", data), ("indptr", indptr)):
            del f[f"X/{k}"]
            f[f"X/{k}"] = v
    assert io.read(tmp_path / "dup.h5ad").X.nnz == 5  # as the file holds it
    reader.read_untrusted(tmp_path / "dup.h5ad", "dup.h5ad", tmp_path / "imported.h5ad")
    x = io.read(tmp_path / "imported.h5ad").X
    assert x.has_canonical_format and x[0, 0] == 3.0 and x.nnz == 4


def test_reading_a_saved_dataset_keeps_its_fingerprint(tmp_path):
    """Genes reordered with X[:, perm] leave CSR indices unsorted; sorting them on every read
    changed the fingerprint runs recorded at submit ('The data changed since this run was
    submitted' for every run on such a dataset)."""
    rng = np.random.default_rng(0)
    x = sp.random(40, 30, density=0.3, format="csr", random_state=0, dtype=np.float32)
    x = x[:, rng.permutation(30)]
    assert not x.has_sorted_indices
    a = ad.AnnData(X=x)
    before = io.fingerprint(a)
    a.write_h5ad(tmp_path / "perm.h5ad")
    assert io.fingerprint(io.read(tmp_path / "perm.h5ad")) == before


def test_obs_columns_of_records_become_text(tmp_path):
    """An obs column of a compound dtype (a record per cell) was read as such and crashed the
    Data page on every later visit ("Unsupported numpy type 20"): it enters as text."""
    import anndata as ad
    import h5py
    import pandas as pd

    from engine import io

    a = ad.AnnData(np.ones((4, 3), np.float32), obs=pd.DataFrame(index=list("abcd")))
    a.obs["cell_type"] = pd.Categorical(["x", "y", "x", "y"])
    path = tmp_path / "records.h5ad"
    a.write_h5ad(path)
    with h5py.File(path, "a") as f:
        f["obs/cmp"] = np.zeros(4, [("a", "f4"), ("b", "i4")])
        f["obs/cmp"].attrs["encoding-type"] = "array"
        f["obs/cmp"].attrs["encoding-version"] = "0.2.0"
        f["obs"].attrs["column-order"] = ["cell_type", "cmp"]
    got = io.canonical(io.read(path))
    assert got.obs["cmp"].dtype == "category" and got.obs["cmp"].iloc[0] == "(0.0, 0)"
    assert list(got.obs["cell_type"]) == ["x", "y", "x", "y"]


def test_values_beyond_float32_are_refused_not_turned_into_infinities():
    """A float64 X with values of 1e300: predict cast it to float32 (inf) and wrote NaN
    probabilities and the first class for every cell, exit 0."""
    import scipy.sparse as sp

    from engine import io
    from engine.errors import ScwbError

    x = np.ones((3, 2))
    x[1, 1] = 1e300
    for m in (x, sp.csr_matrix(x)):
        with pytest.raises(ScwbError, match="beyond what models compute safely in 32-bit"):
            io.check_finite(m)
    # finite in float32, yet its squares and sums are not: scikit-learn's "unexpected
    # ValueError ... too large", or an MLP trained on with a loss of 1e34 (a hostile pass)
    for big in (np.full((2, 2), 3e38, np.float32), np.full((2, 2), -2e15), np.int64(10**17)):
        with pytest.raises(ScwbError, match=r"holds values up to .*at most 1e\+15"):
            io.check_finite(np.atleast_2d(big))
    io.check_finite(np.full((2, 2), 1e15))  # far beyond any measurement, still computable


@pytest.mark.parametrize(
    "name, text",
    [
        ("mac.csv", ",g1,g2\rc1,0,1\rc2,2,3\r"),  # Excel's "CSV (Macintosh)": CR alone
        ("rwt.tsv", "g1\tg2\n1\t0\t1\n2\t2\t3\n"),  # R write.table: header one field short
        ("rx.csv", "X,g1,g2\n1,0,1\n2,2,3\n"),  # R read.csv's name for the row names
        ("pandas.csv", ",g1,g2\n0,0,1\n1,2,3\n"),  # pandas to_csv of a numbered index
        ("quoted.csv", '"","g1","g2"\n"c1",0,1\n"c2",2,3\n'),  # R write.csv
    ],
)
def test_tables_written_by_r_excel_and_pandas_are_read(tmp_path, name, text):
    """The checks that refuse a table without cell names or naming a gene twice must not refuse
    these (a review found the first three refused by them)."""
    (tmp_path / name).write_text(text, newline="")
    a = io.read(tmp_path / name)
    assert a.shape == (2, 2) and list(a.var_names) == ["g1", "g2"]
    assert np.asarray(a.X).tolist() == [[0, 1], [2, 3]]


def test_one_chunk_holding_the_whole_dataset_is_read(tmp_path, monkeypatch):
    """rhdf5 stores a dataset as one chunk by default: a 267 MB X in one chunk is data, not a
    decompression bomb (refused by the chunk check before a review caught it)."""
    import h5py

    from engine import checks

    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", "2")
    path = tmp_path / "whole.h5ad"
    ad.AnnData(np.ones((10, 5), np.float32)).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        attrs = dict(f["X"].attrs)
        del f["X"]
        d = f.create_dataset("X", shape=(70_000, 1000), dtype=np.float32, chunks=(70_000, 1000))
        d.attrs.update(attrs)
    assert checks.check_h5ad(path, "whole.h5ad")["X"] == 70_000 * 1000 * 4


def test_values_in_zero_one_with_small_noise_are_scaled_not_arcsinh():
    """scanpy's simulated krumsiek11 (values 0-1, noise to -0.016) was called
    'arcsinh-transformed', a cytometry transform, and the QC message repeated it."""
    sc = pytest.importorskip("scanpy")
    assert io.matrix_kind(sc.datasets.krumsiek11().X) == "scaled (MinMax)"
    rng = np.random.default_rng(0)
    asinh = np.arcsinh((rng.gamma(2.0, 200.0, (200, 10)) - 20) / 5).astype(np.float32)
    assert io.matrix_kind(asinh) == "arcsinh-transformed"  # cytometry keeps its name


def test_files_that_read_but_could_not_be_saved_again(tmp_path):
    """A hostile-input pass: `info` accepted them, then `preprocess` and `train` (after its last
    epoch) failed with 'unexpected ...' when saving: obs's '_index' naming one of its own
    columns, and an HDF5 object reference in uns."""
    import h5py

    from engine import reader

    a = _small()
    a.obs["num"] = np.arange(a.n_obs, dtype=float)
    p = io.write_h5ad(a, tmp_path / "index.h5ad")
    with h5py.File(p, "r+") as f:
        f["obs"].attrs["_index"] = "num"
    back = io.read(p)
    assert back.obs.index.name is None and "num" in back.obs
    io.write_h5ad(back, tmp_path / "again.h5ad")  # saved: "also used by a column" before
    p = io.write_h5ad(_small(), tmp_path / "ref.h5ad")
    with h5py.File(p, "r+") as f:
        f["uns"].create_dataset("ref", data=f["X"].ref, dtype=h5py.ref_dtype)
    with pytest.raises(ScwbError, match=r"uns\['ref'\] holds HDF5 references"):
        io.read(p)
    with pytest.raises(ScwbError, match=r"uns\['ref'\] holds HDF5 references"):
        reader.run_child(p, "ref.h5ad")
    # a column of them in obs (or var) was read, trained on, then failed the last write
    p = io.write_h5ad(_small(), tmp_path / "refcol.h5ad")
    with h5py.File(p, "r+") as f:
        f["obs"].create_dataset(
            "r", data=[f["X"].ref] * f["obs/_index"].shape[0], dtype=h5py.ref_dtype
        )
        f["obs"].attrs["column-order"] = [*f["obs"].attrs["column-order"], "r"]
    with pytest.raises(ScwbError, match=r"obs\['r'\] holds HDF5 references"):
        reader.run_child(p, "refcol.h5ad")


def test_table_cell_names_are_kept_as_written(tmp_path):
    """A hostile-input pass: CSV cell names went through number parsing ('0001' read as 1) and
    missing-value parsing ('NA', 'null' read as NaN, then reported as duplicated 'nan' cells)."""
    (tmp_path / "ids.csv").write_text("cell,g1,g2\n0001,1,2\nNA,0,1\nnull,3,3\n1e3,2,2\n")
    a = io.read(tmp_path / "ids.csv")
    assert list(a.obs_names) == ["0001", "NA", "null", "1e3"]
    assert a.X.sum() == 14
    (tmp_path / "ids.tsv.gz").write_bytes(
        __import__("gzip").compress(b"barcode\tg1\n007\t1\n008\t2\n")
    )
    assert list(io.read(tmp_path / "ids.tsv.gz").obs_names) == ["007", "008"]
    # R's write.table: the header one field short (the review: every name read as NaN)
    (tmp_path / "r.tsv").write_text("g1\tg2\nc1\t1\t2\nc2\t3\t4\n")
    (tmp_path / "r2.tsv").write_text("g1\tg2\n0001\t1\t2\nNA\t3\t4\n")
    assert list(io.read(tmp_path / "r.tsv").obs_names) == ["c1", "c2"]
    assert list(io.read(tmp_path / "r2.tsv").obs_names) == ["0001", "NA"]


def _hostile_base(path, **uns):
    """60 cells x 12 genes, CSR counts, a label: the base of a hostile-input pass's files."""
    x = np.random.default_rng(0).poisson(3, (60, 12)).astype(np.float32)
    obs = pd.DataFrame(
        {"label": pd.Categorical(np.array(["a", "b", "c"])[np.arange(60) % 3])},
        index=[f"c{i}" for i in range(60)],
    )
    a = ad.AnnData(sp.csr_matrix(x), obs=obs)
    a.var_names = [f"G{i}" for i in range(12)]
    a.uns.update(uns)
    a.write_h5ad(path)
    return path


def _swap(f, path, values):
    del f[path]
    f[path] = values


@pytest.mark.parametrize(
    "case, message",
    [
        # scipy.sparse in uns was never checked: an index of -7 was saved with the dataset and
        # crashed scipy (exit 139) once the matrix was used
        ("uns_sparse", r"uns\['m'\] has an index -7 outside 0..4"),
        ("uns_nested_sparse", r"uns\['d'\] has an index 2000000000 outside"),
        # read by the command line, refused by the app's first step in scipy's words
        ("big_endian_indices", r"X/indices is stored as >i4 integers"),
        ("int8_indices", r"X/indices is stored as \|i1 integers"),
        ("int16_indptr", r"X/indptr is stored as <i2 integers"),
        ("float128_data", r"sparse matrix of float128 \(extended precision\)"),
        # read as a column '_index', then a run failed on writing its results after training
        ("obs_order_lists_index", r"obs has a column named '_index'"),
        ("var_without_encoding", r"var has a column named '_index'"),
    ],
)
def test_files_that_read_but_fail_later_are_refused_when_read(tmp_path, case, message):
    """A hostile-input pass: each of these files passed `info` and the upload and failed
    later (a segfault, a failed run after its training, scipy's words in the app). Each is
    now refused where it is read, in one line that names the entry."""
    eye = sp.csr_matrix(np.eye(5, dtype=np.float32))
    uns = {"d": {"e": {"m": eye}}} if case == "uns_nested_sparse" else {"m": eye}
    path = _hostile_base(tmp_path / f"{case}.h5ad", **uns)
    with h5py.File(path, "r+") as f:
        if case == "uns_sparse":
            f["uns/m/indices"][0] = -7
        elif case == "uns_nested_sparse":
            f["uns/d/e/m/indices"][0] = 2_000_000_000
        elif case == "big_endian_indices":
            _swap(f, "X/indices", f["X/indices"][:].astype(">i4"))
        elif case == "int8_indices":
            _swap(f, "X/indices", f["X/indices"][:].astype(np.int8))
        elif case == "int16_indptr":
            _swap(f, "X/indptr", f["X/indptr"][:].astype(np.int16))
        elif case == "float128_data":
            _swap(f, "X/data", f["X/data"][:].astype(np.longdouble))
        elif case == "obs_order_lists_index":
            f["obs"].attrs["column-order"] = np.array(["label", "_index"], dtype=object)
        elif case == "var_without_encoding":
            del f["var"].attrs["encoding-type"], f["var"].attrs["encoding-version"]
    with pytest.raises(ScwbError, match=message) as e:
        io.read(path)
    assert "\n" not in str(e.value)


def test_a_recipe_of_lists_in_uns_is_recorded_with_a_run(tmp_path):
    """A hostile-input pass: a file whose uns['recipe'] held a list (any pipeline's) made every
    training on it fail ("can only convert an array of size 1 to a Python scalar") where the
    run's record was written. Arrays are written as lists."""
    from engine import runs

    a = io.read(_hostile_base(tmp_path / "r.h5ad", recipe={"steps": ["normalize", "log1p"]}))
    runs.write_json(tmp_path / "run.json", {"recipe": a.uns["recipe"]})
    assert json.loads((tmp_path / "run.json").read_text())["recipe"] == {
        "steps": ["normalize", "log1p"]
    }


def test_readers_wait_for_a_slot_and_refuse_in_one_line(tmp_path, monkeypatch):
    """A hostile-input pass: two tabs uploading at once ran two reader children of 3.7 GB
    each, and nothing limited a third. Readers hold one of a machine-wide number of slots
    (``SCWB_READERS``, else what the memory holds); one that waits too long is refused."""
    import threading
    import time

    from engine import reader

    monkeypatch.setenv("SCWB_READERS", "1")
    assert reader.reader_slots() == 1
    held, release = threading.Event(), threading.Event()

    def hold():
        with reader.reader_slot("first.h5ad", 5):
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    assert held.wait(5)
    t0 = time.monotonic()
    said = r"^second.h5ad was not read: 1 other file was being read"
    with pytest.raises(ScwbError, match=said), reader.reader_slot("second.h5ad", 0.5):
        pass
    assert time.monotonic() - t0 >= 0.5
    release.set()
    t.join()
    with reader.reader_slot("third.h5ad", 0.5):  # free again
        pass
    monkeypatch.delenv("SCWB_READERS")
    assert reader.reader_slots() >= 1


@pytest.mark.parametrize(
    "case, said",
    [
        ("coo", "its X is stored as coo_matrix (encoding version 0.1.0), which anndata does not"),
        ("version", "its X is stored as csr_matrix (encoding version 9.9.9), which anndata"),
        ("no_encoding", "its X is not a matrix (a single value, an empty group, or a sparse"),
        ("scalar", "its X is not a matrix (a single value, an empty group, or a sparse"),
    ],
)
def test_what_anndata_cannot_read_is_said_in_a_users_words(tmp_path, case, said):
    """A hostile-input pass: "No read method registered for IOSpec(...). You may need to update
    your installation of anndata." and a list of classes cut off mid-line were said as they
    came. Each now names the entry and what to do, in one line."""
    path = tmp_path / f"{case}.h5ad"
    ad.AnnData(sp.csr_matrix(np.eye(6, 4, dtype=np.float32))).write_h5ad(path)
    with h5py.File(path, "r+") as f:
        if case == "coo":
            f["X"].attrs["encoding-type"] = "coo_matrix"
        elif case == "version":
            f["X"].attrs["encoding-version"] = "9.9.9"
        elif case == "no_encoding":
            del f["X"].attrs["encoding-type"], f["X"].attrs["encoding-version"]
        else:
            del f["X"]
            f["X"] = np.float32(1.0)
    with pytest.raises(ScwbError) as e:
        io.read(path)
    message = str(e.value)
    assert said in message and "\n" not in message and "<class" not in message, message
    assert "update your installation" not in message
