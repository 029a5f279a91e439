"""bench/gpu_check.py cannot rot: its --dry-run runs every section's code on the CPU at tiny sizes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_gpu_check_dry_run_runs_every_section_and_passes_its_checks(tmp_path):
    out = tmp_path / "gpu_check.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["dry_run"] is True and report["skipped"] == []
    figures = report["figures"]
    assert {"train_plain_bn", "train_bn_group_4", "extract", "knn_backend", "cluster_400", "evaluate",
            "serve"} <= figures.keys()
    for name in ("train_plain_bn", "train_bn_group_4"):
        assert figures[name]["iters_per_s"] > 0 and figures[name]["amp"] is False  # AMP only on CUDA
    assert figures["serve"]["images_per_s"] > 0 and figures["serve"]["mean_forward_batch"] >= 1
    assert figures["cluster_400"]["clusters"] > 0
    assert set(report["checks"]) == {"amp_loss", "gpu_embeddings_match_cpu", "knn_matches_cpu"}
    assert all(check["passed"] for check in report["checks"].values()), report["checks"]
    assert "done: 3 of 3 checks passed" in proc.stdout


def test_gpu_check_refuses_to_measure_without_a_gpu_and_says_how_to_dry_run(tmp_path):
    import torch

    if torch.cuda.is_available():  # on a GPU machine the full check would run: nothing to refuse
        return
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--budget-s", "0"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 2
    assert "no CUDA device: run with --dry-run on a CPU machine" in proc.stderr
