"""Embeddings: the one test-time forward that evaluation, the served model and search share.

`embed_images` is the forward (and `dsfnet.data.images.decode_image` the decoder with the server's limits):
one function each, so an image is embedded alike whether it is evaluated, served or searched. The
extractors batch records, and can run the same forward through ONNX Runtime (dsfnet/inference.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from dsfnet.data.loader import ImageDataset, collate_images
from dsfnet.data.records import ImageRecord
from dsfnet.data.transforms import build_test_transform
from dsfnet.inference import OnnxNetwork, resolve_runtime
from dsfnet.runtime import keep_freed_memory

log = logging.getLogger(__name__)
_announced: set[tuple[str, str]] = set()


def chosen_runtime(model: torch.nn.Module, runtime: str, device, images: int) -> str:
    """`dsfnet.inference.resolve_runtime` for this network and pass, logged the first time each choice is made."""
    network = model.module if hasattr(model, "module") else model  # DDP wraps the network
    chosen = resolve_runtime(runtime, getattr(network, "arch", ""), device, images=images)
    if (runtime, chosen) not in _announced:
        _announced.add((runtime, chosen))
        log.info("feature passes run in %s (train.feature_runtime: %s)", chosen, runtime)
    return chosen


@torch.no_grad()
def embed_images(model: torch.nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """L2-normalised float32 embeddings (B, D), on the CPU, of a batch already on the model's device.

    The eval-mode output is unit-norm already, so it is returned as is; `flip` adds the mirror image's
    embedding and re-normalises the sum (a common test-time augmentation). The images and their mirrors go
    through one forward of twice the batch, not two (bench/bench_flip.py: faster on small served batches).
    """
    if not flip:
        return model(images).float().cpu()
    return _add_mirrors(model(with_mirrors(images)).float()).cpu()


def embed_images_onnx(onnx: OnnxNetwork, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """`embed_images` through an exported network (`dsfnet.inference.export_onnx`, output `embedding`)."""
    if not flip:
        return onnx(images)["embedding"]
    return _add_mirrors(onnx(with_mirrors(images))["embedding"])


def with_mirrors(images: torch.Tensor) -> torch.Tensor:
    """(2B, C, H, W): the batch, then each image mirrored left-right, in the same order."""
    return torch.cat([images, torch.flip(images, dims=[3])])


def _add_mirrors(embeddings: torch.Tensor) -> torch.Tensor:
    """Each image's embedding plus its mirror's (`with_mirrors` order), re-normalised."""
    half = len(embeddings) // 2
    return F.normalize(embeddings[:half] + embeddings[half:], dim=1)


def _eval_batches(model: torch.nn.Module, records: Sequence[ImageRecord], height: int, width: int,
                  batch_size: int, workers: int, device, desc: str, progress: bool,
                  cache: dict | None = None) -> Iterator[torch.Tensor]:
    """Test-transformed image batches on `device`, in record order, with `model` in eval mode meanwhile.

    `cache`: the trainer's decoded-image cache (its test and train transforms share the resize), so each
    epoch's feature pass decodes no image twice; the tensors are the same as decoding again.
    """
    keep_freed_memory()
    dataset = ImageDataset(records, build_test_transform(height, width), cache=cache)
    if dataset.stacks_batches:  # cached images: converted a whole batch at a time, no loader workers needed
        if workers > 0:
            dataset.preload(threads=workers)  # the images not cached yet, decoded in `workers` threads
        starts = range(0, len(dataset), batch_size)
        batches: Iterator[torch.Tensor] = (dataset.stacked_batch(range(start, min(start + batch_size, len(dataset))))
                                           for start in starts)
        total = len(starts)
        # the one draw a DataLoader makes from torch's generator (its workers' base seed), so that every seeded
        # run's random stream, and with it each result measured before this path existed, stays as it was
        torch.empty((), dtype=torch.int64).random_()
    else:
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                            collate_fn=collate_images)
        batches = (images for images, *_ in loader)
        total = len(loader)
    was_training = model.training
    model.eval()
    try:
        for images in tqdm(batches, total=total, desc=desc, disable=not progress, leave=False):
            yield images.to(device)
    finally:
        model.train(was_training)


def extract_features(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    height: int,
    width: int,
    batch_size: int = 128,
    workers: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "features",
    progress: bool = True,
    flip: bool = False,
    runtime: str = "torch",
) -> np.ndarray:
    """`embed_images` of `records` (N, D), in record order; `runtime`: see dsfnet/inference.py."""
    embed = lambda images: embed_images(model, images, flip)  # noqa: E731
    if chosen_runtime(model, runtime, device, len(records)) == "onnxruntime":
        onnx = OnnxNetwork.export(model, height, width)
        embed = lambda images: embed_images_onnx(onnx, images, flip)  # noqa: E731
    chunks = [embed(images)
              for images in _eval_batches(model, records, height, width, batch_size, workers, device, desc, progress)]
    return torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), dtype=np.float32)


@torch.no_grad()
def extract_branches(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    height: int,
    width: int,
    batch_size: int = 128,
    workers: int = 0,
    device: str | torch.device = "cpu",
    desc: str = "features",
    progress: bool = True,
    cache: dict | None = None,
    runtime: str = "torch",
) -> dict[str, np.ndarray | None]:
    """Every branch of a `ReIDNet` for clustering: global (N, D), parts (N, P, D) or None, fused (N, D),
    integration weights (N, P + 1) or None; all features L2-normalised, in record order. `cache`: see
    `_eval_batches`; `runtime`: see dsfnet/inference.py."""
    chunks: dict[str, list[torch.Tensor]] = {"global": [], "parts": [], "fused": [], "weights": []}
    network = model.module if hasattr(model, "module") else model  # DDP wraps the network
    if chosen_runtime(model, runtime, device, len(records)) == "onnxruntime":
        onnx = OnnxNetwork.export(network, height, width, branches=True)

        def embed(images: torch.Tensor) -> list[torch.Tensor | None]:
            out = onnx(images)
            return [out.get(name) for name in chunks]
    else:
        embed = network.embed
    for images in _eval_batches(model, records, height, width, batch_size, workers, device, desc, progress,
                                cache):
        for name, value in zip(chunks, embed(images), strict=True):
            if value is not None:
                chunks[name].append(value.float().cpu())
    return {name: torch.cat(values).numpy() if values else None for name, values in chunks.items()}
