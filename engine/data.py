"""Getting cells to the model fast: matrices held on the device, batches by index.

No per-cell Dataset objects: the whole split lives as one tensor on the device (or as a sparse
matrix densified one batch at a time when the dense matrix would exceed the memory budget), and
a batch is a shuffled slice of row indices.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from engine.errors import ScwbError
from engine.io import memory_budget
from engine.prefetch import prefetch


class DeviceMatrix:
    """Rows of a cells x genes matrix on ``device``: dense when it fits the budget, else sparse on
    the host and densified per batch."""

    def __init__(self, x: Any, device: str | torch.device, budget: int | None = None):
        budget = memory_budget() if budget is None else budget
        self.shape = x.shape
        self.device = torch.device(device)
        self.sparse_host: sp.csr_matrix | None = None
        dense_bytes = x.shape[0] * x.shape[1] * 4
        if sp.issparse(x) and dense_bytes > budget:
            self.sparse_host = sp.csr_matrix(x, dtype=np.float32)
            self.dense = None
        else:
            arr = x.toarray() if sp.issparse(x) else np.asarray(x)
            self.dense = torch.as_tensor(
                np.ascontiguousarray(arr, dtype=np.float32), device=self.device
            )

    @property
    def is_dense(self) -> bool:
        return self.dense is not None

    def rows(self, idx: torch.Tensor) -> torch.Tensor:
        if self.dense is not None:
            return self.dense.index_select(0, idx.to(self.device))
        block = torch.from_numpy(self.sparse_host[idx.cpu().numpy()].toarray())
        if self.device.type == "cuda":  # page-locked, so the copy overlaps the running step
            block = block.pin_memory()
        return block.to(self.device, non_blocking=True)


class Batches:
    """An iterable of dict batches over rows ``index`` of the given columns; Lightning takes it
    as a dataloader. Each epoch draws a new seeded permutation when ``shuffle``."""

    def __init__(
        self,
        columns: dict[str, DeviceMatrix | torch.Tensor],
        index: np.ndarray,
        batch_size: int,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
        prefetch: int | None = None,
    ):
        if len(index) == 0:
            raise ScwbError("A split part is empty: the data has too few cells for this split.")
        self.columns = columns
        self.index = torch.as_tensor(np.asarray(index), dtype=torch.long)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.generator = torch.Generator().manual_seed(seed)
        # dropping a last batch of 1 keeps BatchNorm defined; never drop everything
        self.drop_last = drop_last and len(index) > batch_size
        # data-parallel: every rank draws the same permutation and takes an equal, disjoint share
        self.rank, self.world = rank, world
        self.per_rank = len(index) // world if world > 1 else len(index)
        # batches built ahead in a thread: by default only when rows come from a host matrix
        self.prefetch = (2 if self._host_rows() else 0) if prefetch is None else prefetch

    def _n_cut(self) -> int:
        """Slices of ``batch_size`` cut from this rank's share (the last may be short)."""
        n = self.per_rank
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _lone_last(self) -> bool:
        """Whether the last slice is a single cell that training skips (BatchNorm needs two)."""
        n = self.per_rank
        return not self.drop_last and self.shuffle and n > 1 and n % self.batch_size == 1

    def __len__(self) -> int:
        # exactly the batches __iter__ yields: Lightning runs validation after the last one
        return self._n_cut() - int(self._lone_last())

    def _host_rows(self) -> bool:
        return any(isinstance(c, DeviceMatrix) and not c.is_dense for c in self.columns.values())

    def _device(self) -> torch.device:
        """Where the batch indices live: with the data, unless rows come from a host matrix."""
        cols = list(self.columns.values())
        if not cols or self._host_rows():
            return torch.device("cpu")
        return cols[0].device

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        if self.prefetch > 0:
            return prefetch(self._batches, self.prefetch)
        return self._batches()

    def _batches(self) -> Iterator[dict[str, torch.Tensor]]:
        order = (
            self.index[torch.randperm(len(self.index), generator=self.generator)]
            if self.shuffle
            else self.index
        )
        # one host->device copy of the epoch's order, not one per batch
        order = order.to(self._device(), non_blocking=True)
        if self.world > 1:
            order = order[self.rank * self.per_rank : (self.rank + 1) * self.per_rank]
        for b in range(len(self)):  # a lone last cell is left out (see _lone_last)
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            yield {
                k: (
                    c.rows(idx)
                    if isinstance(c, DeviceMatrix)
                    else c.index_select(0, idx.to(c.device))
                )
                for k, c in self.columns.items()
            }


def encode_labels(values: Any) -> tuple[np.ndarray, list[str]]:
    """Integer codes and the class names they stand for (sorted, as strings)."""
    s = np.asarray(values).astype(str)
    classes = sorted(set(s))
    lookup = {c: i for i, c in enumerate(classes)}
    return np.array([lookup[v] for v in s], dtype=np.int64), classes
