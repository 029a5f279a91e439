"""Micro-batching for the model server: concurrent requests share one forward pass.

`mlflow models serve` runs each request's predict in its own thread. Forwards run one at a time
(concurrent ones would only fight over the same cores), and whatever requests queued up while one ran
are embedded together in the next: a bigger batch uses the cores better, and an idle server adds no wait.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future

import torch


class MicroBatcher:
    """`batcher(images)` → `forward(images)`, with calls from other threads merged into one forward."""

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], max_batch: int = 64):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.forward = forward
        self.max_batch = max_batch
        self.pending: queue.SimpleQueue[tuple[torch.Tensor, Future]] = queue.SimpleQueue()
        self.batch_sizes: deque[int] = deque(maxlen=1000)  # images per recent forward, for tests and benchmarks
        self._start = threading.Lock()
        self._worker: threading.Thread | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self._ensure_worker()
        result: Future = Future()
        self.pending.put((images, result))
        return result.result()

    def _ensure_worker(self) -> None:
        with self._start:  # started on first use: a server forks its workers after loading the model
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._serve, name="micro-batcher", daemon=True)
                self._worker.start()

    def _take(self) -> list[tuple[torch.Tensor, Future]]:
        """The oldest waiting call, plus every other waiting call that still fits in `max_batch`."""
        items = [self.pending.get()]
        size = len(items[0][0])
        while size < self.max_batch:
            try:
                item = self.pending.get_nowait()
            except queue.Empty:
                break
            if size + len(item[0]) > self.max_batch:
                self.pending.put(item)  # next round (order among waiting calls does not matter)
                break
            items.append(item)
            size += len(item[0])
        return items

    def _serve(self) -> None:
        while True:
            items = self._take()
            sizes = [len(images) for images, _ in items]
            try:
                output = self.forward(torch.cat([images for images, _ in items]) if len(items) > 1 else items[0][0])
            except BaseException as error:  # every waiting caller gets the error, the worker keeps serving
                for _, result in items:
                    result.set_exception(error)
                continue
            self.batch_sizes.append(sum(sizes))
            for (_, result), rows in zip(items, torch.split(output, sizes), strict=True):
                result.set_result(rows)
