"""The clustering kNN on 2 CPU cores: faiss's IndexFlatIP, torch's matmul + top-k and the symmetric search.

    python bench/bench_knn.py [--sizes 9914 12936] [--dim 1280] [--k 30] [--repeats 2] [--ddo-parts 2]

Times `dsfnet.cluster.knn.knn` with each backend on random L2-normalised features of the cpu-imagenet
clustering feature's size (MobileNetV2's global 1,280 floats; 9,914 Market validation-split and 12,936
official train images) and says whether each found the same neighbour sets as faiss. Run it on idle cores;
the winner depends on the CPU (printed first): torch was 4.6x ahead on one machine and behind faiss on an AMD
EPYC, which is why `python -m dsfnet.warmup` measures it per machine for `cluster.knn_backend: auto`.
`symmetric` (`knn.symmetric_knn`) multiplies each block pair of the self-similarity matrix once.

`--ddo-parts P` times DDO's clustering search instead: the fused feature ((P + 1)·dim floats, FINet off: the
uniform concatenation of the global feature and P stripes) and each stripe, searched one by one with faiss
and with torch, against `ddo.branch_neighbours` with the symmetric search (one pass; the fused feature's
neighbours from the stripes' products).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from dsfnet.cluster.ddo import branch_neighbours
from dsfnet.cluster.knn import knn
from dsfnet.cluster.knn_choice import cpu_model
from dsfnet.config import ClusterConfig


def unit_features(rng, n: int, dim: int) -> np.ndarray:
    features = rng.standard_normal((n, dim)).astype(np.float32)
    return features / np.linalg.norm(features, axis=1, keepdims=True)


def best_time(search, repeats: int):
    times, found = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        found = search()
        times.append(time.perf_counter() - start)
    return min(times), found


def same_sets(a: np.ndarray, b: np.ndarray) -> float:
    return float((np.sort(a, axis=1) == np.sort(b, axis=1)).mean())


def single(rng, n: int, args) -> None:
    features = unit_features(rng, n, args.dim)
    seconds, found = {}, {}
    for backend in ("faiss", "torch", "symmetric"):
        seconds[backend], (_, found[backend]) = best_time(lambda b=backend: knn(features, args.k, backend=b),
                                                          args.repeats)
    gflops = 2 * n * n * args.dim / 1e9
    print(f"N={n}: " + ", ".join(f"{b} {s:.2f} s ({gflops / s:.0f} GFLOP/s)" for b, s in seconds.items())
          + f"; faiss/torch {seconds['faiss'] / seconds['torch']:.1f}x, "
          f"faiss/symmetric {seconds['faiss'] / seconds['symmetric']:.1f}x; same neighbour sets as faiss: "
          f"torch {same_sets(found['faiss'], found['torch']):.4f}, "
          f"symmetric {same_sets(found['faiss'], found['symmetric']):.4f}", flush=True)


def ddo(rng, n: int, args) -> None:
    parts = [unit_features(rng, n, args.dim) for _ in range(args.ddo_parts)]
    fused = np.concatenate([unit_features(rng, n, args.dim), *parts], axis=1) / np.sqrt(args.ddo_parts + 1)
    branches = [fused, *parts]
    seconds, found = {}, {}
    for backend in ("faiss", "torch", "symmetric"):
        config = ClusterConfig(k1=args.k, knn_backend=backend)
        seconds[backend], found[backend] = best_time(lambda c=config: branch_neighbours(branches, c, None),
                                                     args.repeats)
    same = {b: min(same_sets(x[1], y[1]) for x, y in zip(found["faiss"], found[b], strict=True))
            for b in ("torch", "symmetric")}
    print(f"N={n}, DDO (fused {fused.shape[1]} floats + {args.ddo_parts} stripes of {args.dim}): "
          + ", ".join(f"{b} {s:.2f} s" for b, s in seconds.items())
          + f"; faiss/symmetric {seconds['faiss'] / seconds['symmetric']:.1f}x, "
          f"torch/symmetric {seconds['torch'] / seconds['symmetric']:.1f}x; same neighbour sets as faiss "
          f"(worst branch): torch {same['torch']:.4f}, symmetric {same['symmetric']:.4f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[9914, 12936])
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--k", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--ddo-parts", type=int, default=0, help="time DDO's search of a fused feature and P stripes")
    args = parser.parse_args()
    print(f"cpu {cpu_model()}, torch threads {torch.get_num_threads()} (MKL {torch.backends.mkl.is_available()}), "
          f"dim {args.dim}, k {args.k}, best of {args.repeats}")
    rng = np.random.default_rng(0)
    for n in args.sizes:
        (ddo if args.ddo_parts else single)(rng, n, args)


if __name__ == "__main__":
    main()
