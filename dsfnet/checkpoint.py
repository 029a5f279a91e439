"""Save and load a trained network together with what is needed to rebuild and feed it."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from dsfnet.atomic import atomic_path
from dsfnet.models import ModelConfig, ReIDNet


def save_checkpoint(path: str | Path, model: ReIDNet, model_config: ModelConfig, height: int, width: int,
                    extra: dict | None = None) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a truncated checkpoint."""
    payload = {
        "model_config": dataclasses.asdict(model_config),
        "num_parts": model.num_parts,
        "fuse_parts": model.fuse_parts,
        "input_size": [height, width],
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ReIDNet, dict]:
    """Rebuild the network in eval mode; returns (model, payload without the weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    settings = {**payload["model_config"], "pretrained": None}
    # checkpoints written before the part branches left the user settings keep them in model_config
    legacy_parts, legacy_fuse = settings.pop("num_parts", 0), settings.pop("fuse_parts", False)
    parts, fuse = payload.get("num_parts", legacy_parts), payload.get("fuse_parts", legacy_fuse)
    model = ReIDNet(ModelConfig(**settings), parts, fuse)
    model.load_state_dict(payload.pop("state_dict"))
    model.eval()
    return model, payload
