"""engine.embedding's UMAP on the path scanpy takes for many cells."""

import numpy as np

from engine import embedding


def test_umap_of_many_cells_takes_the_approximate_neighbours(monkeypatch):
    """From 4,096 cells scanpy finds neighbours with pynndescent, and scanpy 1.11.5 read that
    result with a method scipy 1.17 removed: every UMAP of that many cells failed ('csr_array'
    object has no attribute 'getnnz'). The threshold is lowered here so the same path runs on
    a few hundred cells; the clusters stay apart in the embedding."""
    assert (
        embedding.knn_transformer(4095, 15, 0) is None
    )  # below scanpy's threshold: its own exact kNN
    monkeypatch.setattr(embedding, "SCANPY_BRUTE_BELOW", 50)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 10, (3, 8))
    labels = np.repeat(np.arange(3), 100)
    x = (centres[labels] + rng.normal(0, 1, (300, 8))).astype(np.float32)
    assert (
        embedding.knn_transformer(300, 15, 0) is not None
    )  # the pynndescent path, not scanpy's brute one
    out = embedding.umap(x, n_neighbors=15, seed=0)
    coords = out["coords"]
    assert coords.shape == (300, 2) and np.isfinite(coords).all()
    means = np.array([coords[labels == k].mean(0) for k in range(3)])
    spread = max(coords[labels == k].std(0).max() for k in range(3))
    gaps = [np.linalg.norm(means[i] - means[j]) for i in range(3) for j in range(i + 1, 3)]
    assert min(gaps) > 2 * spread
