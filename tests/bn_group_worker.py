"""One training step of full DSFNet, split like the published 4-GPU runs (tests/test_bn_groups.py).

`build_case` makes the network, memories and batch; `step` runs the trainer's own setup + train_step and
returns what the test compares. Under `torchrun --nproc_per_node 4` each gloo rank steps on its share
of the batch with plain per-rank BN; the test runs the same step in one process with train.bn_group.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dsfnet.cluster.scnet import secondary_clustering
from dsfnet.config import DSFNetConfig, ModelConfig, TrainConfig
from dsfnet.data.loader import RankShare
from dsfnet.distributed import init_from_environment, rank_and_world
from dsfnet.models import build_model
from dsfnet.objective import DSFNetObjective
from dsfnet.trainer import setup, train_step

BATCH, GROUP = 16, 4
HEIGHT, WIDTH = 32, 16


@dataclass
class Case:
    model: torch.nn.Module
    objective: DSFNetObjective
    images: torch.Tensor
    indices: torch.Tensor
    labels: np.ndarray
    proxy_of: np.ndarray


def build_case() -> Case:
    """The same network, memories and batch in every process (all seeded).

    The network runs in float64 so that the comparison sees the grouping, not float32's summation order
    (which differs with the thread count); the losses stay float32, as in training.
    """
    method = DSFNetConfig()
    model = build_model(ModelConfig(arch="resnet18"), method, seed=0).double()
    generator = torch.Generator().manual_seed(1)
    train_images = torch.randn(32, 3, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)
    model.eval()
    out = model.embed(train_images)
    branches = {name: getattr(out, key).float().numpy()
                for name, key in (("global", "global_"), ("parts", "parts"), ("fused", "fused"))}
    primary = np.arange(32) // 4  # 8 pseudo-identities of 4 images
    proxies = secondary_clustering(branches["fused"], primary, sub_distance=0.6, min_size=1)
    labels = proxies.assignment.copy()
    objective = DSFNetObjective(branches, labels, method, proxies=proxies)
    indices = torch.from_numpy(np.random.default_rng(2).permutation(32)[:BATCH])
    noise = torch.randn(BATCH, 3, HEIGHT, WIDTH, generator=generator, dtype=torch.float64)
    images = train_images[indices] + 0.1 * noise
    return Case(model, objective, images, indices, labels, proxies.assignment)


def step(case: Case, bn_group: int, share: slice = slice(None)) -> dict:
    """One trainer step on `case.images[share]`; the loss, gradients, BN buffers and memories after it."""
    config = TrainConfig(batch_size=BATCH, bn_group=bn_group, height=HEIGHT, width=WIDTH, device="cpu")
    session = setup(case.model, config, DSFNetConfig())
    indices = case.indices[share]
    batch = (case.images[share], torch.from_numpy(case.labels[indices.numpy()]), torch.zeros(len(indices)), indices)
    session.network.train()
    case.objective.train()
    loss, _, _ = train_step(session.network, case.objective, session.optimizer, session.scaler, batch,
                            case.proxy_of, session.device, False)
    return {
        "loss": loss,
        "grads": {name: p.grad.clone() for name, p in case.model.named_parameters() if p.grad is not None},
        "buffers": {name: b.clone() for name, b in case.model.named_buffers()},
        "memories": {name: b.clone() for name, b in case.objective.named_buffers()},
        "grouped": sorted({type(m).__name__ for m in case.model.modules() if "BatchNorm" in type(m).__name__}),
    }


def main(out: Path) -> None:
    assert init_from_environment(), "expected torchrun's environment"
    rank, world = rank_and_world()
    share = next(iter(RankShare([list(range(BATCH))], rank, world)))
    result = step(build_case(), bn_group=0, share=slice(share[0], share[-1] + 1))
    losses = [None] * world
    torch.distributed.all_gather_object(losses, result["loss"])
    result["loss"] = float(np.mean(losses))  # DDP's gradient is the mean of the ranks' losses' gradients
    if rank == 0:
        torch.save(result, out / "ddp.pt")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
