"""Two-node training as docs/scaling.md gives it: `torchrun --nnodes 2 --rdzv_backend c10d` on 127.0.0.1, one
process per node started separately (gloo, CPU), each node in its own checkout of the project. It must end
with the single-node two-process run's model, bit for bit, and only the node holding rank 0 writes outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.project import dvc, dvc_env, make_project
from tests.test_serving import free_port

pytestmark = pytest.mark.e2e

OUTPUTS = ("models/model.pt", "metrics/train.json")


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args, "-m", "pipeline.stages.train"]


def state_dict(project: Path) -> dict[str, torch.Tensor]:
    return torch.load(project / "models" / "model.pt", map_location="cpu", weights_only=False)["state_dict"]


def files(checkout: Path) -> dict[str, tuple[int, int]]:
    """(size, mtime) of every file of a checkout but git's and Python's bytecode."""
    return {str(p.relative_to(checkout)): (p.stat().st_size, p.stat().st_mtime_ns) for p in checkout.rglob("*")
            if p.is_file() and ".git" not in p.parts and "__pycache__" not in p.parts}


def test_two_nodes_train_the_single_node_model_and_only_rank_0_writes(tmp_path):
    node0 = make_project(tmp_path / "node0")
    prepared = dvc(node0, "repro", "validate")
    assert prepared.returncode == 0, prepared.stderr[-3000:]
    node1, single = tmp_path / "node1", tmp_path / "single"
    shutil.copytree(node0, node1, symlinks=True)
    shutil.copytree(node0, single, symlinks=True)
    env = {**dvc_env(), "OMP_NUM_THREADS": "1"}  # torchrun sets 1 for several local processes; equal for both

    single_run = subprocess.run(torchrun("--standalone", "--nproc_per_node", "2"), cwd=single, env=env,
                                capture_output=True, text=True, timeout=900)
    assert single_run.returncode == 0, single_run.stderr[-4000:]

    before = {checkout: files(checkout) for checkout in (node0, node1)}
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for rank, checkout in enumerate((node0, node1)):
        log = (tmp_path / f"node{rank}.log").open("w")
        nodes.append((subprocess.Popen(
            torchrun("--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", "--rdzv_backend", "c10d",
                     "--rdzv_endpoint", endpoint, "--rdzv_id", "dsfnet-two-nodes"),
            cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True), log))
    try:
        codes = [process.wait(timeout=900) for process, _ in nodes]
    finally:
        for process, log in nodes:
            if process.poll() is None:
                os.killpg(process.pid, 9)
            log.close()
    logs = [(tmp_path / f"node{rank}.log").read_text() for rank in range(2)]
    assert codes == [0, 0], "\n---\n".join(text[-3000:] for text in logs)

    writers = [checkout for checkout in (node0, node1) if (checkout / "models" / "model.pt").exists()]
    assert len(writers) == 1, "exactly one node (rank 0's) writes the model"
    other = node1 if writers[0] == node0 else node0
    assert files(other) == before[other], "the node without rank 0 wrote or changed files"
    assert all((writers[0] / name).is_file() for name in OUTPUTS)

    two_nodes, one_node = state_dict(writers[0]), state_dict(single)
    assert two_nodes.keys() == one_node.keys()
    for name, tensor in one_node.items():
        assert torch.equal(two_nodes[name], tensor), name
