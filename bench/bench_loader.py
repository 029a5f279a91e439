"""Can the train loader feed a GPU? Images/s of the epoch loader at 256×128 by train.workers, with and without
the decoded-image cache (train.cache_images).

    python bench/bench_loader.py [--workers 0 2 4 8] [--images 2000] [--batches 40] [--batch 64]

Source crops are synthetic JPEGs at Market-1501's native 128×64, resized up to 256×128 as in training. Each
row is the epoch loader the trainer builds (`dsfnet.trainer.epoch_loader`: camera-aware P×K sampler,
flip + pad + crop + erasing, collate): the cache's preload (decode + resize of every image, once per run,
in `workers` threads) is timed apart, then images/s over --batches batches after the first (worker start-up
excluded; at least 6 batches per worker, so the prefetch queue is a small part). "per core" divides by
min(workers, cores), so the figure carries to a bigger box.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from dataclasses import replace

import numpy as np
import torch

from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.trainer import TrainConfig, epoch_loader


def measure(records, labels, config: TrainConfig, batches: int) -> tuple[float, float]:
    """(preload seconds, images/s) of one epoch loader."""
    cache: dict | None = {} if config.cache_images else None
    start = time.perf_counter()
    loader = epoch_loader(records, labels, config, epoch=0, image_cache=cache)
    if cache is not None and config.workers == 0:
        loader.dataset.preload()  # workers > 0: epoch_loader preloaded (threads); 0: the first epoch does it
    preload_s = time.perf_counter() - start
    stream = iter(loader)
    next(stream)  # worker start-up and the first batch
    images, start = 0, time.perf_counter()
    for _ in range(batches):  # wall time over many batches: the workers' prefetch queue cannot flatter it
        try:
            batch = next(stream)
        except StopIteration:
            stream = iter(loader)
            batch = next(stream)
        images += len(batch[0])
    return preload_s, images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2, 4, 8])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    warnings.filterwarnings("ignore", message="This DataLoader will create")  # more workers than cores: on purpose
    torch.set_num_threads(1)  # as in a loader worker; the main process's threads would compete with them
    with tempfile.TemporaryDirectory() as root:
        data = generate_synthetic(root, SyntheticConfig(profile="default", height=128, width=64), progress=False)
        records = data.train[: args.images]
        labels = np.unique([r.pid for r in records], return_inverse=True)[1]
        print(f"train loader at {args.height}×{args.width}, batch {args.batch}, {len(records)} synthetic 128×64 "
              f"JPEGs, {cores} cores")
        print(f"{'workers':>7} {'cache':>5} {'preload s':>9} {'images/s':>9} {'per core':>9}")
        for workers in args.workers:
            for cache in (False, True):
                config = TrainConfig(batch_size=args.batch, num_instances=4, height=args.height, width=args.width,
                                     workers=workers)
                preload_s, rate = measure(records, labels, replace(config, cache_images=cache),
                                          max(args.batches, 6 * workers))
                used = max(1, min(workers, cores))
                print(f"{workers:>7} {'on' if cache else 'off':>5} {preload_s:>9.1f} {rate:>9.0f} {rate / used:>9.0f}",
                      flush=True)


if __name__ == "__main__":
    main()
