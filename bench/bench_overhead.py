"""Training-iteration overhead: a full iteration vs the bare backbone forward+backward on the same batch.

    python bench/bench_overhead.py [--arch resnet18] [--height 64 --width 32] [--batch 64] [--iters 20]
                                   [--workers 0] [--device cpu] [--no-cache-images]

"bare" is trunk + pooling + BN neck forward and backward of a trivial loss on a batch already in memory.
"iteration" is what the trainer does per step: the next P×K batch from the DataLoader (augmentation of
images decoded and resized once, `train.cache_images`, as from the second epoch on; --no-cache-images decodes
every time), every branch forward, ClusterNCE/FINet/SCNet losses, memory updates, backward and the Adam step.
Medians over --iters steps after 3 warm-up steps, for the baseline and for full DSFNet.
With --bn-group N the iteration is also timed with BatchNorm over groups of N images (train.bn_group),
and the last column is its time over the plain-BN iteration.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time

import numpy as np
import torch

from dsfnet.cluster import ClusterConfig
from dsfnet.config import DSFNetConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.features import extract_branches
from dsfnet.models import ModelConfig, build_model
from dsfnet.models.bn_groups import use_bn_groups
from dsfnet.objective import DSFNetObjective
from dsfnet.trainer import (
    TrainConfig,
    build_optimizer,
    cycle,
    epoch_loader,
    pseudo_labels,
    resolve_device,
    train_step,
)


def median_seconds(step, iters: int, device: torch.device) -> float:
    return interleaved([step], iters, device)[0]


def interleaved(steps, iters: int, device: torch.device) -> list[float]:
    """Median seconds of each step, run in turn every round (3 warm-up rounds): drift hits them alike."""
    times: list[list[float]] = [[] for _ in steps]
    for i in range(iters + 3):
        for spent, step in zip(times, steps, strict=True):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if i >= 3:
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def measure(data, method: DSFNetConfig, args, device: torch.device) -> dict[str, float]:
    """Seconds of the bare forward+backward, the iteration, and (--bn-group) the iteration with BN groups."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=args.arch), method).to(device)
    branches = extract_branches(model, data.train, args.height, args.width, device=device, progress=False)
    camids_all = np.array([r.camid for r in data.train])
    clustered = pseudo_labels(branches, ClusterConfig(k1=30, k2=6, eps=0.5, min_samples=4, camera_norm=True),
                              method, 0, 1, camids_all)
    labels = clustered.labels
    objective = DSFNetObjective(branches, labels, method, proxies=clustered.proxies).to(device).train()
    proxy_of = clustered.proxies.assignment[labels >= 0] if clustered.proxies is not None else None
    config = TrainConfig(height=args.height, width=args.width, batch_size=args.batch, workers=args.workers)
    cache = {} if args.cache_images else None
    loader = epoch_loader(data.train, labels, config, epoch=0, image_cache=cache)
    if args.cache_images:
        loader.dataset.preload()  # as from the second epoch on: every image decoded and resized once
    stream = cycle(loader)
    use_amp = device.type == "cuda"
    networks = [model]
    if args.bn_group:  # the same network and memories, with BN over groups: timed in turn with the plain one
        grouped = copy.deepcopy(model)
        use_bn_groups(grouped, args.bn_group)
        networks.append(grouped)
    runs = []
    for network in networks:
        network.train()
        runs.append((network, copy.deepcopy(objective),
                     build_optimizer([p for p in network.parameters() if p.requires_grad], config),
                     torch.amp.GradScaler("cuda", enabled=use_amp)))
    current: list = []

    def step(run):
        def go():
            if run is runs[0]:
                current[:] = [next(stream)]  # one batch per round, for every network
            network, loss, optimizer, scaler = run
            train_step(network, loss, optimizer, scaler, current[0], proxy_of, device, use_amp)
        return go

    iterations = interleaved([step(run) for run in runs], args.iters, device)
    images = next(stream)[0].to(device)

    def bare():
        with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
            feature = model.neck(model.pool(model.trunk(images)).flatten(1))
        feature.float().pow(2).mean().backward()
        model.zero_grad(set_to_none=True)

    figures = {"bare": median_seconds(bare, args.iters, device), "iteration": iterations[0]}
    if args.bn_group:
        figures["grouped"] = iterations[1]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--profile", default="default")
    parser.add_argument("--bn-group", type=int, default=0, help="also time BatchNorm over groups of this many images")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-cache-images", dest="cache_images", action="store_false",
                        help="decode every image each time (train.cache_images: false)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    with tempfile.TemporaryDirectory() as root:
        data = generate_synthetic(root, SyntheticConfig(profile=args.profile, height=max(args.height, 128),
                                                        width=max(args.width, 64)), progress=False)
        print(f"{args.arch} {args.height}×{args.width}, batch {args.batch}, workers {args.workers}, {device}, "
              f"{torch.get_num_threads()} threads")
        grouped_header = f" {'bn_group ' + str(args.bn_group):>13} {'ratio':>6}" if args.bn_group else ""
        print(f"{'method':>9} {'bare fwd+bwd':>12} {'iteration':>10} {'ratio':>6}{grouped_header}")
        for name, method in (("baseline", DSFNetConfig.baseline()), ("dsfnet", DSFNetConfig())):
            t = measure(data, method, args, device)
            row = f"{name:>9} {1000 * t['bare']:>10.1f}ms {1000 * t['iteration']:>8.1f}ms " \
                  f"{t['iteration'] / t['bare']:>6.2f}"
            if args.bn_group:
                row += f" {1000 * t['grouped']:>11.1f}ms {t['grouped'] / t['iteration']:>6.2f}"
            print(row, flush=True)


if __name__ == "__main__":
    main()
