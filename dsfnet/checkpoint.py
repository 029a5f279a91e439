"""Save and load a trained network together with what is needed to rebuild and feed it."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import torch

from dsfnet.models import ModelConfig, ReIDNet, build_model


def save_checkpoint(path: str | Path, model: ReIDNet, model_config: ModelConfig, height: int, width: int,
                    extra: dict | None = None) -> None:
    """Write atomically (temp file + rename) so a crash never leaves a truncated checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model_config": dataclasses.asdict(model_config),
        "input_size": [height, width],
        "state_dict": model.state_dict(),
        "extra": extra or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[ReIDNet, dict]:
    """Rebuild the network in eval mode; returns (model, payload without the weights)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    payload = torch.load(path, map_location=map_location, weights_only=True)
    config = ModelConfig(**{**payload["model_config"], "pretrained": None})
    model = build_model(config)
    model.load_state_dict(payload.pop("state_dict"))
    model.eval()
    return model, payload
