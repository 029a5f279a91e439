"""Backbone + BN neck (the Cluster Contrast network), with FINet's part branches (dsfnet/models/finet.py).

In training mode the network returns a `ReIDOutput` of BN-neck features (the memories normalise them);
in eval mode it returns the one L2-normalised feature used for retrieval: FINet's fused feature when
`fuse_parts`, else the global one. `embed()` gives every branch, L2-normalised, for clustering.
The part branches are not user settings: `build_model(config, method)` derives them from DSFNet's.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from dsfnet.config import DSFNetConfig, ModelConfig
from dsfnet.models.finet import IntegrationHead, integrate, part_features
from dsfnet.models.pretrained import load_pretrained, resolve_pretrained

ARCHS = {"resnet18": torchvision.models.resnet18, "resnet50": torchvision.models.resnet50,
         "mobilenet_v2": torchvision.models.mobilenet_v2}
CHANNELS_LAST_ARCHS = ("mobilenet_v2", "resnet50")  # measured faster channels-last on CPU (bench/bench_cpu.py)


def uses_channels_last(config: ModelConfig) -> bool:
    """Whether the trunk runs channels-last: a speed choice only; features agree to float rounding."""
    config.check()
    if config.memory_format == "auto":
        return config.arch in CHANNELS_LAST_ARCHS
    return config.memory_format == "channels_last"


class ReIDOutput(NamedTuple):
    """Every branch of one batch. Features are BN-neck outputs (L2-normalised from `embed`)."""

    global_: torch.Tensor  # (B, D)
    parts: torch.Tensor | None  # (B, P, D), or None without part branches
    fused: torch.Tensor  # (B, (P + 1)·D) unit-norm weighted concatenation of global and parts (= global alone)
    weights: torch.Tensor | None  # (B, P + 1) integration weights, global first


class GeneralizedMeanPooling(nn.Module):
    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))
        self.eps = eps

    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | int = 1) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), output_size).pow(1.0 / self.p)


class AveragePooling(nn.Module):
    def forward(self, x: torch.Tensor, output_size: tuple[int, int] | int = 1) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x, output_size)


def bn_neck(dim: int) -> nn.BatchNorm1d:
    """BNNeck with a frozen zero bias, as in Cluster Contrast."""
    neck = nn.BatchNorm1d(dim)
    neck.bias.requires_grad_(False)
    nn.init.constant_(neck.weight, 1.0)
    nn.init.constant_(neck.bias, 0.0)
    return neck


def mobilenet_trunk(config: ModelConfig) -> tuple[nn.Sequential, int]:
    """torchvision's MobileNetV2 `features` (1280 channels, stride 32) and its width.

    `last_stride: 1` sets the stride of its last stride-2 convolution (block 14's depthwise one) to 1:
    stride 16, so 128x64 inputs keep an 8x4 map instead of 4x2.
    """
    net = torchvision.models.mobilenet_v2(weights=None)
    if config.pretrained:
        load_pretrained(net, resolve_pretrained(config.pretrained, config.arch, config.allow_download), config.arch)
    if config.last_stride == 1:
        strided = [m for m in net.features.modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2)]
        strided[-1].stride = (1, 1)
    return net.features, net.last_channel


class ReIDNet(nn.Module):
    """`num_parts` horizontal part branches (0: global only); `fuse_parts`: FINet's learned integration."""

    def __init__(self, config: ModelConfig, num_parts: int = 0, fuse_parts: bool = False):
        super().__init__()
        if config.arch not in ARCHS:
            raise ValueError(f"model.arch must be one of {sorted(ARCHS)}, got {config.arch!r}")
        if config.pooling not in ("avg", "gem"):
            raise ValueError(f"model.pooling must be 'avg' or 'gem', got {config.pooling!r}")
        if num_parts < 0 or (fuse_parts and num_parts == 0):
            raise ValueError(f"num_parts must be >= 0 (and > 0 to fuse parts), got {num_parts}")
        if config.arch == "mobilenet_v2":
            self.trunk, self.feature_dim = mobilenet_trunk(config)
        else:
            resnet = ARCHS[config.arch](weights=None)
            if config.pretrained:
                load_pretrained(resnet, resolve_pretrained(config.pretrained, config.arch, config.allow_download),
                                config.arch)
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
        self.arch = config.arch
        self.num_parts = num_parts
        self.fuse_parts = fuse_parts
        self.pool = AveragePooling() if config.pooling == "avg" else GeneralizedMeanPooling()
        self.neck = bn_neck(self.feature_dim)
        self.part_necks = nn.ModuleList(bn_neck(self.feature_dim) for _ in range(num_parts))
        self.integration = IntegrationHead(self.feature_dim, num_parts + 1) if fuse_parts else None
        self.set_channels_last(uses_channels_last(config))

    def set_channels_last(self, on: bool) -> None:
        """Run the trunk (and convert its input) channels-last or contiguous: speed only, same features."""
        self.channels_last = on
        self.trunk.to(memory_format=torch.channels_last if on else torch.contiguous_format)

    @property
    def embedding_dim(self) -> int:
        """Size of the retrieval feature: FINet's fused one concatenates the global and P part features."""
        return self.feature_dim * (self.num_parts + 1) if self.fuse_parts else self.feature_dim

    def branches(self, images: torch.Tensor) -> ReIDOutput:
        """All branches: BN-neck global and part features, integration weights and the fused feature."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        fmap = self.trunk(images)
        global_ = self.neck(self.pool(fmap).flatten(1))
        if not self.num_parts:
            return ReIDOutput(global_, None, F.normalize(global_, dim=1), None)
        parts = part_features(self.pool, fmap, self.part_necks)
        fused, weights = integrate(global_, parts, self.integration)
        return ReIDOutput(global_, parts, fused, weights)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> ReIDOutput:
        """Every branch, L2-normalised, in eval mode: what clustering and DDO work on."""
        out = self.branches(images)
        parts = F.normalize(out.parts, dim=2) if out.parts is not None else None
        return ReIDOutput(F.normalize(out.global_, dim=1), parts, out.fused, out.weights)

    def forward(self, images: torch.Tensor) -> ReIDOutput | torch.Tensor:
        out = self.branches(images)
        if self.training:
            return out
        return out.fused if self.fuse_parts else F.normalize(out.global_, dim=1)


def build_model(config: ModelConfig, method: DSFNetConfig | None = None, seed: int | None = None) -> ReIDNet:
    """The network `method` needs (part branches for FINet/DDO; None: the baseline's global branch).

    With `seed`, the initial weights come from that seed and the global RNG state is left as it was.
    """
    parts, fuse = (method.num_parts, method.fuses) if method is not None else (0, False)
    if seed is None:
        return ReIDNet(config, parts, fuse)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ReIDNet(config, parts, fuse)
