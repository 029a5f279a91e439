"""Torch datasets over image records, and the camera-aware P×K sampler."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import torchvision.transforms as T
from PIL import Image
from torch.utils.data import Dataset, Sampler

from dsfnet.data.records import ImageRecord


def split_deterministic(transform: Callable) -> tuple[Callable | None, Callable]:
    """(the leading resize of a Compose, the rest): the part whose output can be cached per image."""
    if not isinstance(transform, T.Compose):
        return None, transform
    steps = list(transform.transforms)
    count = 0
    while count < len(steps) and type(steps[count]) is T.Resize:
        count += 1
    return (T.Compose(steps[:count]) if count else None), T.Compose(steps[count:])


def _tensor_normalise(transform: Callable) -> tuple[Sequence[float], Sequence[float]] | None:
    """(mean, std) when `transform` is exactly Compose([ToTensor(), Normalize(mean, std)])."""
    steps = list(transform.transforms) if isinstance(transform, T.Compose) else [transform]
    if len(steps) != 2 or type(steps[0]) is not T.ToTensor or type(steps[1]) is not T.Normalize:
        return None
    return steps[1].mean, steps[1].std


class ImageDataset(Dataset):
    """Yields (image tensor, label, camid, index); `labels` defaults to the records' pids.

    With a `cache` dict (shared across epochs by the caller), each image is decoded and resized once and
    kept; later reads only run the random augmentation, with the same result as decoding again.
    """

    def __init__(self, records: Sequence[ImageRecord], transform: Callable, labels: Sequence[int] | None = None,
                 cache: dict | None = None):
        self.records = list(records)
        self.transform = transform
        self.labels = list(labels) if labels is not None else [r.pid for r in self.records]
        self.cache = cache
        self.prefix, self.rest = split_deterministic(transform) if cache is not None else (None, transform)
        self.cache_key = repr(self.prefix)
        self.batch_normalise = _tensor_normalise(self.rest) if cache is not None else None  # see stacked_batch

    def __len__(self) -> int:
        return len(self.records)

    def _decode_uncached(self, path: str):
        with Image.open(path) as img:
            image = img.convert("RGB")
        return self.prefix(image) if self.prefix is not None else image

    def _decoded(self, path: str):
        key = (str(path), self.cache_key)
        image = self.cache.get(key)
        if image is None:
            image = self._decode_uncached(path)
            self.cache[key] = image
        return image

    def preload(self, threads: int = 1) -> None:
        """Fill the cache now (what the first epoch otherwise does on the way), decoding in `threads` threads.

        Loader workers forked afterwards read the filled cache without copying it (pixel buffers are
        never written); before the fork each worker would fill its own copy and drop it with the epoch.
        """
        if self.cache is None:
            raise ValueError("preload needs a dataset built with a cache dict")
        paths = dict.fromkeys(str(r.path) for r in self.records)
        missing = [path for path in paths if (path, self.cache_key) not in self.cache]
        if threads <= 1:
            for path in missing:
                self._decoded(path)
            return
        with ThreadPoolExecutor(threads) as pool:  # PIL releases the GIL while decoding and resizing
            images = list(pool.map(self._decode_uncached, missing))
        for path, image in zip(missing, images, strict=True):
            self.cache[(path, self.cache_key)] = image

    @property
    def stacks_batches(self) -> bool:
        """Whether `stacked_batch` can serve this dataset: cached images and a test transform (the cached
        resize, then exactly ToTensor and Normalize; a train transform's random steps are per image)."""
        return self.batch_normalise is not None

    def stacked_batch(self, indices: Sequence[int]) -> torch.Tensor:
        """The images at `indices` as one (B, 3, H, W) tensor, converted and normalised as a whole batch.

        Equal bit for bit to stacking `self[i][0]` (the same float operations in the same order, per pixel),
        at a fraction of the per-image cost: `python bench/bench_cpu.py --profiles cpu-imagenet` measured the
        test batches of a 9,914-image pass at 1.2-1.5 s one image at a time, 0.4 s this way.
        """
        if self.batch_normalise is None:
            raise ValueError("stacked_batch needs a cache and a transform that is a resize, ToTensor, Normalize")
        mean, std = self.batch_normalise
        pixels = np.stack([np.asarray(self._decoded(self.records[i].path)) for i in indices])  # (B, H, W, 3)
        images = torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous().to(torch.get_default_dtype()).div(255)
        mean = torch.as_tensor(mean, dtype=images.dtype).view(1, -1, 1, 1)
        std = torch.as_tensor(std, dtype=images.dtype).view(1, -1, 1, 1)
        return images.sub_(mean).div_(std)

    def __getitem__(self, index: int):
        record = self.records[index]
        if self.cache is not None:
            image = self.rest(self._decoded(record.path))
        else:
            with Image.open(record.path) as img:
                image = self.transform(img.convert("RGB"))
        return image, self.labels[index], record.camid, index


class CameraAwarePKSampler(Sampler[int]):
    """P identities × K instances per batch, picking the K instances from as many cameras as possible.

    Cross-camera positives in a batch are what teach camera invariance (Cluster Contrast's
    RandomMultipleGallerySampler has the same intent). `labels` are pseudo-labels (>= 0).
    """

    def __init__(self, labels: Sequence[int], camids: Sequence[int], num_instances: int, seed: int = 0):
        self.num_instances = num_instances
        self.by_label: dict[int, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
        for index, (label, camid) in enumerate(zip(labels, camids, strict=True)):
            self.by_label[int(label)][int(camid)].append(index)
        self.label_ids = sorted(self.by_label)
        self.epoch = 0
        self.seed = seed

    def __len__(self) -> int:
        return len(self.label_ids) * self.num_instances

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _instances(self, label: int, rng: np.random.Generator) -> list[int]:
        cameras = [list(rng.permutation(idx)) for idx in self.by_label[label].values()]
        rng.shuffle(cameras)
        picked: list[int] = []
        # round-robin over cameras: one image per camera before any camera repeats
        while len(picked) < self.num_instances and any(cameras):
            for pool in cameras:
                if pool and len(picked) < self.num_instances:
                    picked.append(int(pool.pop()))
        while len(picked) < self.num_instances:  # small cluster: repeat with replacement
            picked.append(int(rng.choice(picked)))
        return picked

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        for label in rng.permutation(self.label_ids):
            yield from self._instances(int(label), rng)


class RankShare(Sampler[list[int]]):
    """Rank `rank`'s consecutive share of each batch of `batches` (every rank iterates the same batches).

    Cutting one P×K batch into `world` slices is what DataParallel did in the published runs: the union
    over ranks is the single-process batch, in the same order.
    """

    def __init__(self, batches: Iterable[list[int]], rank: int, world: int):
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        self.batches, self.rank, self.world = batches, rank, world

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            bounds = np.linspace(0, len(batch), self.world + 1).round().astype(int)
            share = batch[bounds[self.rank] : bounds[self.rank + 1]]
            if not share:
                raise ValueError(f"a batch of {len(batch)} images cannot feed {self.world} processes; "
                                 f"lower train.gpus or raise train.batch_size")
            yield share


def collate_images(batch):
    images, labels, camids, indices = zip(*batch, strict=True)
    return torch.stack(images), torch.tensor(labels), torch.tensor(camids), torch.tensor(indices)
