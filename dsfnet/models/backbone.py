"""Backbone + BN neck, the Cluster Contrast baseline network.

In training mode the network returns the BN-neck feature (the memory normalises it); in eval mode it
returns the L2-normalised feature used for clustering and retrieval.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

ARCHS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50}


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    pretrained: str | None = None  # local path to ImageNet weights (torchvision state_dict); no downloads
    last_stride: int = 1
    pooling: str = "avg"  # avg (paper) or gem (reference code default)


class GeneralizedMeanPooling(nn.Module):
    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


class ReIDNet(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {sorted(ARCHS)}, got {config.arch!r}")
        if config.pooling not in ("avg", "gem"):
            raise ValueError(f"model.pooling must be 'avg' or 'gem', got {config.pooling!r}")
        resnet = ARCHS[config.arch](weights=None)
        if config.pretrained:
            path = Path(config.pretrained)
            if not path.is_file():
                raise FileNotFoundError(f"model.pretrained: weights file {path} does not exist")
            state = torch.load(path, map_location="cpu", weights_only=True)
            resnet.load_state_dict(state)
        if config.last_stride == 1:
            block = resnet.layer4[0]
            strided_conv = block.conv2 if hasattr(block, "conv3") else block.conv1  # Bottleneck vs BasicBlock
            strided_conv.stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.trunk = nn.Sequential(
            resnet.conv1, resnet.bn1, resnet.relu, resnet.maxpool,
            resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4,
        )
        self.feature_dim = resnet.fc.in_features
        self.pool = nn.AdaptiveAvgPool2d(1) if config.pooling == "avg" else GeneralizedMeanPooling()
        self.neck = nn.BatchNorm1d(self.feature_dim)
        self.neck.bias.requires_grad_(False)
        nn.init.constant_(self.neck.weight, 1.0)
        nn.init.constant_(self.neck.bias, 0.0)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.trunk(images)).flatten(1)
        feature = self.neck(pooled)
        return feature if self.training else F.normalize(feature, dim=1)


def build_model(config: ModelConfig) -> ReIDNet:
    return ReIDNet(config)
