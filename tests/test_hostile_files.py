"""Files a hostile pass (2026-11-28) found read wrongly or refused with the wrong reason: each is
now read as it should be, or refused in one line by ``python -m engine info`` (exit 2)."""

from __future__ import annotations

import gzip
import io as pyio
import zipfile

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from engine import cli
from engine import io as engine_io
from engine.errors import ScwbError


def _base(path, n=60, g=40):
    rng = np.random.default_rng(0)
    x = rng.poisson(1.5, (n, g)).astype(np.float32)
    obs = pd.DataFrame(
        {"ct": pd.Categorical(rng.choice(["A", "B", "C"], n)), "depth": rng.random(n)},
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(sp.csr_matrix(x), obs=obs, var=pd.DataFrame(index=[f"G{j}" for j in range(g)]))
    a.write_h5ad(path)
    return a


def _info(path, capsys) -> tuple[int, str]:
    code = cli.main(["info", str(path)])
    out = capsys.readouterr()
    return code, (out.err.strip() if code else out.out)


def _codes_2d(path):
    _base(path)
    with h5py.File(path, "r+") as f:
        c = f["obs/ct/codes"][()]
        del f["obs/ct/codes"]
        f.create_dataset("obs/ct/codes", data=np.stack([c, c], 1))


def _raw_rows(path):
    a = _base(path)
    a.raw = a.copy()
    a.write_h5ad(path)
    with h5py.File(path, "r+") as f:
        g, m = f["raw/X"], sp.csr_matrix(np.ones((120, 40), np.float32))
        for k in ("data", "indices", "indptr"):
            del g[k]
            g.create_dataset(k, data=getattr(m, k))
        g.attrs["shape"] = np.array([120, 40])


@pytest.mark.parametrize(
    "build, said",
    [
        (_codes_2d, "obs column 'ct' codes holds 60x2 values for 60 rows"),
        (_raw_rows, "raw.X has 120 rows for 60 cells"),
    ],
)
def test_damaged_h5ad_entries_are_named(tmp_path, capsys, build, said):
    """2-D categorical codes read as a column of tuples (info and train accepted them, and the
    run failed after training on writing its results); raw.X's wrong row count was reported as
    X's."""
    path = tmp_path / "case.h5ad"
    build(path)
    code, err = _info(path, capsys)
    assert code == 2 and said in err and "damaged" in err and "\n" not in err, err


def test_a_file_without_x_is_said_so_not_called_all_zeros(tmp_path, capsys):
    a = _base(tmp_path / "case.h5ad")
    ad.AnnData(obs=a.obs, var=a.var).write_h5ad(tmp_path / "nox.h5ad")
    code, out = _info(tmp_path / "nox.h5ad", capsys)
    assert code == 0 and "missing (no X)" in out
    with pytest.raises(ScwbError, match="no X matrix"):
        engine_io.check_not_empty(engine_io.read(tmp_path / "nox.h5ad"))


def test_a_complex_obs_column_becomes_text(tmp_path):
    """pyarrow could not show it: the Data page's table failed in the server's log."""
    path = tmp_path / "case.h5ad"
    _base(path)
    with h5py.File(path, "r+") as f:
        del f["obs/depth"]
        d = f.create_dataset("obs/depth", data=(np.arange(60) % 3) + 1j * np.arange(60))
        d.attrs["encoding-type"], d.attrs["encoding-version"] = "array", "0.2.0"
    a = engine_io.canonical(engine_io.read(path))
    assert (
        isinstance(a.obs["depth"].dtype, pd.CategoricalDtype) and a.obs["depth"].iloc[1] == "(1+1j)"
    )


@pytest.mark.parametrize(
    "text, said",
    [
        # no header row: the first cell's name and values became the gene names
        ("c1,1,2,3\nc2,4,5,6\n", "no header row"),
        # a short row was padded with NaN in silence (then refused as 'X holds NaN values')
        ("cell,G1,G2,G3\nc1,1,2,3\nc2,4\n", "rows of different lengths (line 3: 2 fields"),
        ("cell;G1;G2\nc1;1,5;2\nc2;3;4\n", "Separated by ';'?"),
    ],
)
def test_tables_read_wrongly_before_are_refused(tmp_path, capsys, text, said):
    path = tmp_path / "case.csv"
    path.write_text(text)
    code, err = _info(path, capsys)
    assert code == 2 and said in err and "\n" not in err, err


@pytest.mark.parametrize(
    "text",
    [
        "cell,7157,1956\nc1,1,2\nc2,3,4\n",  # Entrez ids for gene names, cells named
        "cell,G1,G2\nc1,,2\nc2,3,4\n",  # an empty value, not a short row: read (refused later)
        "G1,G2\nc1,1,2\nc2,3,4\n",  # R's write.table: the header one field short
    ],
)
def test_tables_that_are_fine_still_read(tmp_path, text):
    path = tmp_path / "case.csv"
    path.write_text(text)
    a = engine_io.read(path)
    assert a.shape == (2, 2)


def test_a_trailing_blank_line_in_a_10x_folder_is_not_a_line(tmp_path):
    """'features.tsv has 4 lines' (for 3 genes) refused a folder whose only fault was a blank
    line at the end."""
    m = "%%MatrixMarket matrix coordinate integer general\n3 2 3\n1 1 5\n2 2 3\n3 1 1\n"
    buf = pyio.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("matrix.mtx", m)
        zf.writestr(
            "features.tsv",
            "E1\tA\tGene Expression\nE2\tB\tGene Expression\nE3\tC\tGene Expression\n\n",
        )
        zf.writestr("barcodes.tsv.gz", gzip.compress(b"AAA-1\nCCC-1\n\n\n"))
    path = tmp_path / "tenx.zip"
    path.write_bytes(buf.getvalue())
    a = engine_io.read(path)
    assert a.shape == (2, 3) and list(a.var_names) == ["A", "B", "C"]


def _tenx_h5(path, feature_type=b"Gene Expression"):
    m = sp.csc_matrix(np.arange(20).reshape(5, 4) % 3, dtype=np.int32)
    with h5py.File(path, "w") as f:
        g = f.create_group("matrix")
        g["data"], g["indices"], g["indptr"] = m.data, m.indices.astype(np.int64), m.indptr
        g["shape"] = np.array([5, 4], np.int32)
        g["barcodes"] = np.array([f"BC{i}".encode() for i in range(4)])
        fe = g.create_group("features")
        fe["id"] = np.array([f"ENSG{i}".encode() for i in range(5)])
        fe["name"] = np.array([f"G{i}".encode() for i in range(5)])
        fe["feature_type"] = np.array([feature_type] * 5)
        fe["genome"] = np.array([b"GRCh38"] * 5)


def test_10x_h5_of_antibodies_alone_and_an_h5ad_named_h5(tmp_path, capsys):
    """An antibody-only 10x .h5 read as 0 genes (scanpy keeps Gene Expression alone); an .h5ad
    saved as .h5 was called a damaged 10x file."""
    _tenx_h5(tmp_path / "adt.h5", b"Antibody Capture")
    a = engine_io.read(tmp_path / "adt.h5")
    assert a.shape == (4, 5) and set(a.var["feature_types"]) == {"Antibody Capture"}
    _base(tmp_path / "x.h5ad")
    (tmp_path / "x.h5ad").rename(tmp_path / "anndata.h5")
    code, out = _info(tmp_path / "anndata.h5", capsys)
    assert code == 0 and "60 cells x 40 genes" in out


def test_review_cases_of_the_new_table_and_gene_checks(tmp_path, capsys):
    """A review: a wide header (over 4 KB) with one empty value was refused as 'rows of
    different lengths'; a table without a header row whose first cell is 'cell1' slipped past
    the header check; a nullable var['mt'] with a gap failed describe."""
    genes = [f"GENE{i:05d}" for i in range(1000)]
    rows = ["cell," + ",".join(genes)] + [f"c{r}," + ",".join("1" for _ in genes) for r in range(3)]
    rows[2] = rows[2].replace(",1,", ",,", 1)
    (tmp_path / "wide.csv").write_text("\n".join(rows) + "\n")
    assert engine_io.read(tmp_path / "wide.csv").shape == (3, 1000)
    (tmp_path / "nohead.csv").write_text("cell1,1,2,3\ncell2,4,5,6\n")
    code, err = _info(tmp_path / "nohead.csv", capsys)
    assert code == 2 and "no header row" in err
    var = pd.DataFrame(
        {"mt": pd.array([True, None, False, False], dtype="boolean")},
        index=["MT-CO1", "A", "B", "C"],
    )
    a = ad.AnnData(np.ones((3, 4), np.float32), var=var)
    assert engine_io.describe(a)["mito_genes"] == 1
