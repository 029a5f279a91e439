"""Multi-process training (DDP) on CPU with gloo: two ranks through torchrun end with the same network."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def test_two_process_ddp_training_keeps_ranks_identical(tmp_path):
    worker = Path(__file__).with_name("ddp_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         str(worker), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    history = json.loads((tmp_path / "history.json").read_text())
    assert history["world"] == 2 and history["epochs"] == 2 and all(c > 0 for c in history["clusters"])
    first, second = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name
    # training moved the weights away from rank 0's initial ones (seeded with 0 in the worker)
    torch.manual_seed(0)
    from dsfnet.config import DSFNetConfig
    from dsfnet.models import ModelConfig, build_model
    initial = build_model(ModelConfig(), DSFNetConfig()).state_dict()
    assert not torch.equal(initial["trunk.0.weight"], first["trunk.0.weight"])
