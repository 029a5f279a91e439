"""Flip averaging in one forward of 2B images against two forwards of B: images/s on 2 CPU cores.

    python bench/bench_flip.py [--batches 8 64] [--repeats 20]

`dsfnet.features.embed_images(flip=True)` (evaluation, serving, search) embeds a batch and its mirror images in
one forward of twice the batch; before, it ran two forwards. This times both, in PyTorch (inference mode, the
network's own memory format) and through ONNX Runtime when installed, on the networks served on CPU: the
cpu-default network (ResNet-18 with FINet, 64×32) and the cpu-imagenet one (its profile's MobileNetV2 at 128×64,
random weights: speed does not depend on them), and prints the largest difference between the two forms'
embeddings. Medians over --repeats after warm-up; run it on idle cores.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F

from dsfnet.features import embed_images, embed_images_onnx
from dsfnet.inference import OnnxNetwork, onnxruntime_installed
from dsfnet.models import build_model
from pipeline.profiles import profile_params


def two_forwards(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """The flip average as it was computed before: the image's forward plus its mirror's."""
    return F.normalize(forward(images) + forward(torch.flip(images, dims=[3])), dim=1)


def images_per_s(run: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, repeats: int) -> float:
    for _ in range(3):
        run(images)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run(images)
        times.append(time.perf_counter() - start)
    return len(images) / statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    print(f"torch threads {torch.get_num_threads()}; images/s of flip-averaged embeddings (each image and its mirror)")
    for profile in ("cpu-default", "cpu-imagenet"):
        params = profile_params(profile)
        torch.manual_seed(0)
        model = build_model(replace(params.model, pretrained=None), params.dsfnet).eval()
        height, width = params.train.height, params.train.width
        runtimes = {"torch": (lambda x, m=model: m(x).float(), lambda x, m=model: embed_images(m, x, flip=True))}
        if onnxruntime_installed():
            onnx = OnnxNetwork.export(model, height, width)
            runtimes["onnxruntime"] = (lambda x, o=onnx: o(x)["embedding"],
                                       lambda x, o=onnx: embed_images_onnx(o, x, flip=True))
        print(f"{profile}: {params.model.arch} {height}x{width}, embedding {model.embedding_dim}")
        for name, (forward, one_forward) in runtimes.items():
            for batch in args.batches:
                images = torch.rand(batch, 3, height, width)
                with torch.inference_mode():
                    before = images_per_s(partial(two_forwards, forward), images, args.repeats)
                    after = images_per_s(one_forward, images, args.repeats)
                    diff = float((two_forwards(forward, images) - one_forward(images)).abs().max())
                print(f"  {name:<11} batch {batch:>3}: two forwards {before:7.1f}, one forward {after:7.1f} img/s "
                      f"({after / before:.2f}x), max |diff| {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
