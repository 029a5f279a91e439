"""Run by tests/test_ddp.py under `torchrun --nproc_per_node 2`: train full DSFNet with gloo on CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from dsfnet.cluster import ClusterConfig
from dsfnet.config import DSFNetConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.distributed import init_from_environment, is_main_process, rank_and_world
from dsfnet.models import ModelConfig, build_model
from dsfnet.trainer import TrainConfig, seed_everything, train


def main(out: Path) -> None:
    assert init_from_environment(), "expected torchrun's environment"
    rank, world = rank_and_world()
    data = generate_synthetic(out / f"data{rank}", SyntheticConfig(profile="tiny", height=32, width=16),
                              progress=False)
    method = DSFNetConfig()
    seed_everything(rank)  # different initial weights per rank: DDP must broadcast rank 0's
    model = build_model(ModelConfig(), method)
    config = TrainConfig(epochs=2, iters=2, batch_size=8, num_instances=2, height=32, width=16, workers=0)
    result = train(model, data.train, config, ClusterConfig(k1=10, k2=3, eps=0.6, min_samples=3), method,
                   progress=False)
    torch.save(model.state_dict(), out / f"rank{rank}.pt")
    if is_main_process():
        (out / "history.json").write_text(json.dumps({"world": world, "epochs": len(result.history),
                                                      "clusters": [h.num_clusters for h in result.history]}))
    else:
        assert result.history == [], "only rank 0 keeps statistics"
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
