"""The background batch builder: same batches in the same order as without it, errors raised in
the consumer, the thread gone after an early stop."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from engine.data import Batches, DeviceMatrix
from engine.prefetch import prefetch


def _threads() -> int:
    return sum(t.name == "scwb-prefetch" for t in threading.enumerate())


def test_prefetch_yields_in_order():
    assert list(prefetch(lambda: iter(range(100)), depth=3)) == list(range(100))


def test_prefetch_raises_producer_error_in_consumer():
    def make():
        yield 1
        raise ValueError("bad batch")

    it = prefetch(make)
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(it)


def test_prefetch_stops_thread_when_consumer_stops_early():
    before = _threads()
    it = prefetch(lambda: iter(range(10_000)), depth=2)
    assert next(it) == 0
    it.close()
    deadline = time.time() + 5
    while _threads() > before and time.time() < deadline:
        time.sleep(0.05)
    assert _threads() == before


def test_host_batches_equal_with_and_without_prefetch():
    rng = np.random.default_rng(0)
    x = sp.random(300, 40, density=0.1, format="csr", random_state=0, dtype=np.float32)
    m = DeviceMatrix(x, "cpu", budget=1000)  # kept sparse on the host
    assert not m.is_dense
    labels = torch.as_tensor(rng.integers(0, 3, 300))
    cols = {"x": m, "y": labels}
    idx = np.arange(300)
    auto = Batches(cols, idx, 32, shuffle=True, seed=4)
    assert auto.prefetch > 0  # on by default for host rows
    plain = Batches(cols, idx, 32, shuffle=True, seed=4, prefetch=0)
    for _ in range(2):  # two epochs: the permutations stay in step
        got, want = list(auto), list(plain)
        assert len(got) == len(want) == len(plain)
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a["x"], b["x"]) and torch.equal(a["y"], b["y"])


def test_dense_batches_do_not_prefetch():
    x = np.ones((50, 4), dtype=np.float32)
    b = Batches({"x": DeviceMatrix(x, "cpu")}, np.arange(50), 8)
    assert b.prefetch == 0


def test_training_on_the_host_path_goes_through_prefetch(tmp_path, monkeypatch):
    """A whole run with the dense matrix over the budget: batches come from the thread."""
    import engine.data
    from engine import train
    from engine.spec import RunSpec

    used = []
    real = engine.data.prefetch

    def spy(make, depth=2):
        used.append(depth)
        return real(make, depth)

    import anndata as ad

    x = sp.random(2000, 300, density=0.05, format="csr", random_state=1, dtype=np.float32)
    x.data = np.ceil(x.data * 5)
    ad.AnnData(X=x).write_h5ad(tmp_path / "sparse.h5ad")
    monkeypatch.setattr(engine.data, "prefetch", spy)
    # dense X (2.4 MB) over the budget, sparse X (0.3 MB) and the model under it
    monkeypatch.setenv("SCWB_MEMORY_BUDGET_GB", str(2.0 * 2**20 / 2**30))
    data = str(tmp_path / "sparse.h5ad")
    spec = RunSpec(model="vae", data=data, out=str(tmp_path / "vae"), epochs=2)
    train.run(spec)
    assert used and _threads() == 0


@pytest.mark.parametrize(
    "n,bs,world", [(241, 16, 1), (482, 16, 2), (17, 16, 1), (33, 8, 2), (1, 4, 1)]
)
def test_len_is_the_number_of_batches_yielded(n, bs, world):
    """Lightning runs validation after the len()-th batch: a lone last cell that training skips
    (BatchNorm needs two) must not be counted, or no epoch ever validates."""
    x = torch.arange(n * 3, dtype=torch.float32).reshape(n, 3)
    for rank in range(world):
        b = Batches({"x": x}, np.arange(n), bs, shuffle=True, rank=rank, world=world)
        got = list(b)
        assert len(got) == len(b)
        assert all(len(batch["x"]) > 1 for batch in got) or n == 1
