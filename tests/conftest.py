"""Shared fixtures: a private workspace per test, small generated datasets, ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from engine import quiet  # noqa: E402

quiet.library_warnings_off()  # the libraries' chatter; our own warnings stay visible
ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
os.environ.setdefault("SCWB_CANCEL_GRACE_S", "20")
# a page's uncaught error stays an exception in AppTest (the app shows it as one line)
os.environ.setdefault("SCWB_PAGE_ERRORS", "raise")


# the scGen design the app tests train: the held-out B cells of the synthetic data, control ->
# stimulated (RunSpec keywords)
SCGEN_B_CELLS = dict(
    condition_key="condition",
    ctrl="control",
    stim="stimulated",
    cell_type_key="cell_type",
    predict="B cell",
)


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test where that folder is absent."""
    path = SHARED / name
    if not path.exists():
        pytest.skip(f"{path} is not present (../shared/data is optional)")
    return path


def finish_preview(at, timeout: float = 240):
    """Rerun the Preprocess page (as its progress fragment does each second) until its
    background Preview has ended; return the AppTest."""
    import time

    t0 = time.time()
    while "pp_job" in at.session_state:
        assert time.time() - t0 < timeout, "the background Preview did not end"
        time.sleep(0.5)
        at.run(timeout=60)
    return at


@pytest.fixture(autouse=True)
def workspace(tmp_path, monkeypatch):
    home = tmp_path / "scwb"
    monkeypatch.setenv("SCWB_HOME", str(home))
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv("SCWB_DATA_ROOTS", raising=False)
    return home


@pytest.fixture(scope="session")
def counts_adata():
    from engine.demos import synthetic_perturbation

    return synthetic_perturbation(n_cells=600, n_genes=200, seed=1)


@pytest.fixture(scope="session")
def lognorm_adata(counts_adata):
    from engine import preprocess as pp

    out, _ = pp.apply(
        counts_adata, pp.Recipe([pp.Step("keep_counts"), pp.Step("normalize", {"target_sum": 1e4})])
    )
    return out


@pytest.fixture
def lognorm_file(tmp_path, lognorm_adata):
    from engine.io import write_h5ad

    return str(write_h5ad(lognorm_adata, tmp_path / "lognorm.h5ad"))


@pytest.fixture
def counts_file(tmp_path, counts_adata):
    from engine.io import write_h5ad

    return str(write_h5ad(counts_adata, tmp_path / "counts.h5ad"))


@pytest.fixture
def separable_file(tmp_path):
    """Two well separated Gaussian blobs: any classifier must get them right."""
    import anndata as ad
    import pandas as pd

    from engine.io import write_h5ad

    rng = np.random.default_rng(0)
    n, g = 300, 20
    y = rng.integers(0, 3, n)
    centres = rng.normal(0, 4, (3, g))
    x = (centres[y] + rng.normal(0, 1, (n, g))).astype(np.float32)
    a = ad.AnnData(
        X=x,
        obs=pd.DataFrame(
            {"label": pd.Categorical(np.array(["a", "b", "c"])[y])},
            index=[f"c{i}" for i in range(n)],
        ),
    )
    a.var_names = [f"g{i}" for i in range(g)]
    return str(write_h5ad(a, tmp_path / "separable.h5ad"))
