"""`python -m dsfnet.warmup` (make install): a later process loads every numba kernel from the cache."""

import json
import os
import subprocess
import sys

from tests.project import PROJECT_ROOT

COUNT = """
import json, runpy
runpy.run_module("dsfnet.warmup", run_name="__main__")  # what `make install` runs
from dsfnet.cluster import jaccard as j
from dsfnet import evaluation as e
kernels = [j._reciprocal, j._weights, j._jaccard, j._query_expansion, e._ranks]  # the others inline
print(json.dumps({k.py_func.__name__: [sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())]
                  for k in kernels}))
"""


def kernel_stats(cache_dir) -> tuple[dict[str, list[int]], str]:
    """(hits and misses per kernel, what the warm-up printed) in a fresh process."""
    # its own DSFNET_CACHE_DIR: the kNN choice it stores must not reach the other tests (conftest.py)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir), "DSFNET_CACHE_DIR": str(cache_dir / "dsfnet")}
    done = subprocess.run([sys.executable, "-c", COUNT], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          check=True)
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def test_after_the_warm_up_no_kernel_compiles_again(tmp_path):
    first, printed = kernel_stats(tmp_path)  # an empty cache: the warm-up compiles every kernel (and caches it)
    assert all(misses >= 1 for _, misses in first.values()), first
    assert printed.startswith("numba kernels ready: jaccard"), printed
    assert "kNN backend for cluster.knn_backend auto on this CPU: " in printed and "(measured: " in printed, printed
    later, printed = kernel_stats(tmp_path)  # a fresh process, as the first epoch of `make run` after `make install`
    assert "(kept: " in printed, printed  # measured once per machine
    assert set(later) == {"_reciprocal", "_weights", "_jaccard", "_query_expansion", "_ranks"}
    for name, (hits, misses) in later.items():
        assert hits >= 1 and misses == 0, (name, hits, misses)
