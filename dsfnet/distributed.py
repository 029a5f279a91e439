"""The few collective steps multi-GPU training needs (torchrun + DDP); each is a no-op in one process."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist


def rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Only rank 0 writes outputs, logs to trackers and saves checkpoints."""
    return rank_and_world()[0] == 0


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (pseudo-labels are computed once, on rank 0)."""
    if rank_and_world()[1] == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_rows(shard: np.ndarray, total: int) -> np.ndarray:
    """Reassemble rows that rank r computed for items r, r + world, r + 2·world, … into item order."""
    rank, world = rank_and_world()
    if world == 1:
        return shard
    shards: list[np.ndarray | None] = [None] * world
    dist.all_gather_object(shards, shard)
    out = np.empty((total, *shard.shape[1:]), dtype=shard.dtype)
    for r, part in enumerate(shards):
        out[r::world] = part
    return out


def gather_batch(*tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Every rank's batch, concatenated in rank order, so memories get identical updates everywhere."""
    _, world = rank_and_world()
    if world == 1:
        return tensors
    size = torch.tensor([len(tensors[0])], device=tensors[0].device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(int(s) for s in sizes))
    gathered = []
    for tensor in tensors:
        padded = tensor.new_zeros((longest, *tensor.shape[1:]))
        padded[: len(tensor)] = tensor
        buffers = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(buffers, padded)
        gathered.append(torch.cat([b[: int(s)] for b, s in zip(buffers, sizes, strict=True)]))
    return tuple(gathered)


def init_from_environment() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE > 1); NCCL on GPUs, gloo on CPU."""
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available() or dist.is_initialized():
        return dist.is_available() and dist.is_initialized()
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return True


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Rank 0's BN running statistics everywhere: DDP syncs buffers before each forward, not after the last."""
    if rank_and_world()[1] == 1:
        return
    for buffer in module.buffers():
        dist.broadcast(buffer, src=0)
