import gzip
import io as pyio
import zipfile

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.io
import scipy.sparse as sp

from engine import io
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
    with pytest.raises(ScwbError, match="holds text"):
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
    np.testing.assert_array_equal(qc["n_genes"], (x > 0).sum(1))
    np.testing.assert_allclose(qc["total_counts"], x.sum(1))
    assert qc["pct_mito"].between(0, 100).all()
    from engine.demos import load_demo

    pbmc = load_demo("pbmc68k_reduced")  # scaled X, QC columns in obs (percent_mito as a fraction)
    qc2 = io.qc_metrics(pbmc)
    np.testing.assert_allclose(qc2["pct_mito"], pbmc.obs["percent_mito"] * 100)
    scaled = ad.AnnData(X=np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32))
    assert io.qc_metrics(scaled).empty
