"""Embeddings: the one test-time forward that evaluation, the served model and search share.

`embed_images` is the forward (and `dsfnet.data.images.decode_image` the decoder with the server's limits):
one function each, so an image is embedded alike whether it is evaluated, served or searched. The
extractors batch records.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm import tqdm

from dsfnet.data.loader import ImageDataset, collate_images
from dsfnet.data.records import ImageRecord
from dsfnet.data.transforms import build_test_transform
from dsfnet.runtime import keep_freed_memory


@torch.no_grad()
def embed_images(model: torch.nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """L2-normalised float32 embeddings (B, D), on the CPU, of a batch already on the model's device.

    The eval-mode output is unit-norm already, so it is returned as is; `flip` adds the mirror image's
    embedding and re-normalises the sum (a common test-time augmentation).
    """
    embeddings = model(images).float()
    if flip:
        embeddings = F.normalize(embeddings + model(torch.flip(images, dims=[3])).float(), dim=1)
    return embeddings.cpu()


def _eval_batches(model: torch.nn.Module, records: Sequence[ImageRecord], height: int, width: int,
                  batch_size: int, workers: int, device, desc: str, progress: bool,
                  cache: dict | None = None) -> Iterator[torch.Tensor]:
    """Test-transformed image batches on `device`, in record order, with `model` in eval mode meanwhile.

    `cache`: the trainer's decoded-image cache (its test and train transforms share the resize), so each
    epoch's feature pass decodes no image twice; the tensors are the same as decoding again.
    """
    keep_freed_memory()
    dataset = ImageDataset(records, build_test_transform(height, width), cache=cache)
    context = None
    if cache is not None and workers > 0:
        dataset.preload(threads=workers)  # filled before the workers fork, so they share it
        context = "fork"
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                        collate_fn=collate_images, multiprocessing_context=context)
    was_training = model.training
    model.eval()
    try:
        for images, *_ in tqdm(loader, desc=desc, disable=not progress, leave=False):
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
) -> np.ndarray:
    """`embed_images` of `records` (N, D), in record order."""
    chunks = [embed_images(model, images, flip)
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
) -> dict[str, np.ndarray | None]:
    """Every branch of a `ReIDNet` for clustering: global (N, D), parts (N, P, D) or None, fused (N, D),
    integration weights (N, P + 1) or None; all features L2-normalised, in record order. `cache`: see
    `_eval_batches`."""
    chunks: dict[str, list[torch.Tensor]] = {"global": [], "parts": [], "fused": [], "weights": []}
    embed = model.module.embed if hasattr(model, "module") else model.embed  # DDP wraps the network
    for images in _eval_batches(model, records, height, width, batch_size, workers, device, desc, progress,
                                cache):
        for name, value in zip(chunks, embed(images), strict=True):
            if value is not None:
                chunks[name].append(value.float().cpu())
    return {name: torch.cat(values).numpy() if values else None for name, values in chunks.items()}
