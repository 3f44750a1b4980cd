"""Build batches in a background thread while the model trains on the previous one.

On the sparse host path (``DeviceMatrix`` kept as CSR because the dense matrix exceeds the
budget) slicing and densifying a batch is host work the training step need not wait for. One
producer thread keeps the order deterministic; a bounded queue caps memory at ``depth`` batches;
an exception in the producer is raised in the consumer; closing the consumer stops the thread.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

_END = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(make: Callable[[], Iterator[Any]], depth: int = 2) -> Iterator[Any]:
    """Yield what ``make()`` yields, in order, produced up to ``depth`` items ahead in a thread."""
    q: queue.Queue = queue.Queue(maxsize=max(1, int(depth)))
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in make():
                if not put(item):
                    return
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put(_Failure(exc))
            return
        put(_END)

    thread = threading.Thread(target=work, name="scwb-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            item = q.get()
            if item is _END:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)
