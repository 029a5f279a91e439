"""The clustering kNN on 2 CPU cores: faiss's exact IndexFlatIP against torch's matmul + top-k.

    python bench/bench_knn.py [--sizes 9914 12936] [--dim 1280] [--k 30] [--repeats 2]

Times `dsfnet.cluster.knn.knn` with each backend on random L2-normalised features of the cpu-imagenet
clustering feature's size (MobileNetV2's global 1,280 floats; 9,914 Market validation-split and 12,936
official train images) and says whether both found the same neighbour sets. Run it on idle cores; the winner
depends on the CPU (printed first): torch was 4.6x ahead on one machine and behind faiss on an AMD EPYC,
which is why `python -m dsfnet.warmup` measures it per machine for `cluster.knn_backend: auto`.
`--dim 3840` is DDO's fused feature (global and two stripes).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dsfnet.cluster.knn import knn
from dsfnet.cluster.knn_choice import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[9914, 12936])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"cpu {cpu_model()}, torch threads {torch.get_num_threads()} (MKL {torch.backends.mkl.is_available()}), "
          f"dim {args.dim}, k {args.k}, best of {args.repeats}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        features = rng.standard_normal((n, args.dim)).astype(np.float32)
        features /= np.linalg.norm(features, axis=1, keepdims=True)
        seconds, found = {}, {}
        for backend in ("faiss", "torch"):
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                _, found[backend] = knn(features, args.k, backend=backend)
                times.append(time.perf_counter() - start)
            seconds[backend] = min(times)
        same = float((np.sort(found["faiss"], axis=1) == np.sort(found["torch"], axis=1)).mean())
        gflops = 2 * n * n * args.dim / 1e9
        print(f"N={n}: faiss {seconds['faiss']:.2f} s ({gflops / seconds['faiss']:.0f} GFLOP/s), "
              f"torch {seconds['torch']:.2f} s ({gflops / seconds['torch']:.0f} GFLOP/s), "
              f"faiss/torch {seconds['faiss'] / seconds['torch']:.1f}x, same neighbour sets {same:.4f}", flush=True)


if __name__ == "__main__":
    main()
