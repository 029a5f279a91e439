"""`python -m dsfnet.warmup` (make install): a later process loads every numba kernel from the cache."""

import json
import os
import subprocess
import sys

from tests.project import PROJECT_ROOT

COUNT = """
import json
from dsfnet.warmup import warm_up
from dsfnet.cluster import jaccard as j
from dsfnet import evaluation as e
warm_up()
kernels = [j._reciprocal, j._weights, j._jaccard, j._query_expansion, e._ranks]  # the others inline
print(json.dumps({k.py_func.__name__: [sum(k.stats.cache_hits.values()), sum(k.stats.cache_misses.values())]
                  for k in kernels}))
"""


def kernel_stats(cache_dir) -> dict[str, list[int]]:
    env = {**os.environ, "NUMBA_CACHE_DIR": str(cache_dir)}
    done = subprocess.run([sys.executable, "-c", COUNT], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
                          check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_after_the_warm_up_no_kernel_compiles_again(tmp_path):
    first = kernel_stats(tmp_path)  # an empty cache: the warm-up compiles every kernel (and writes the cache)
    assert all(misses >= 1 for _, misses in first.values()), first
    later = kernel_stats(tmp_path)  # a fresh process, as the first epoch of `make run` after `make install`
    assert set(later) == {"_reciprocal", "_weights", "_jaccard", "_query_expansion", "_ranks"}
    for name, (hits, misses) in later.items():
        assert hits >= 1 and misses == 0, (name, hits, misses)
    done = subprocess.run([sys.executable, "-m", "dsfnet.warmup"], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          env={**os.environ, "NUMBA_CACHE_DIR": str(tmp_path)}, check=True)
    assert done.stdout.startswith("numba kernels ready: jaccard")
