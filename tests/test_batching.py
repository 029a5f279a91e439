"""The server's micro-batcher: concurrent calls share forwards and each gets exactly its own rows."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from pipeline.batching import MicroBatcher


def slow_double(images: torch.Tensor) -> torch.Tensor:
    time.sleep(0.05)  # long enough for the other callers to queue up behind the first forward
    return images * 2


def test_concurrent_calls_are_batched_and_get_their_own_rows():
    batcher = MicroBatcher(slow_double, max_batch=16)
    calls = [torch.full((3, 2), float(i)) + torch.arange(3.0).unsqueeze(1) for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(batcher, calls))
    for call, result in zip(calls, results, strict=True):
        torch.testing.assert_close(result, call * 2)
    assert sum(batcher.batch_sizes) == 36
    assert max(batcher.batch_sizes) > 3  # some forwards served several calls
    assert max(batcher.batch_sizes) <= 16  # ... never more than max_batch images
    assert len(batcher.batch_sizes) < 12


def test_a_failed_forward_fails_its_callers_and_the_batcher_keeps_serving():
    failing = threading.Event()
    failing.set()

    def forward(images: torch.Tensor) -> torch.Tensor:
        if failing.is_set():
            raise RuntimeError("out of memory")
        return images + 1

    batcher = MicroBatcher(forward, max_batch=8)
    with pytest.raises(RuntimeError, match="out of memory"):
        batcher(torch.zeros(2, 1))
    failing.clear()
    torch.testing.assert_close(batcher(torch.zeros(2, 1)), torch.ones(2, 1))
    with pytest.raises(ValueError, match="max_batch"):
        MicroBatcher(forward, max_batch=0)
