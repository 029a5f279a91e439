"""FINet, feature integration: horizontal part branches next to the global one, fused by learned weights.

The backbone's feature map gives the global feature and P horizontal stripes, each pooled and passed
through its own BN neck. The integration head scores the P + 1 L2-normalised features per sample
(softmax weights w), and the fused feature is their weighted concatenation
    f = [sqrt(w_0) g, sqrt(w_1) p_1, ..., sqrt(w_P) p_P],
unit-norm by construction, so f·f' = Σ_i w_i cos(f_i, f_i') for equal weights (docs/method.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class IntegrationHead(nn.Module):
    """FINet's per-sample weights over the P + 1 branch features (softmax); starts uniform."""

    def __init__(self, dim: int, branches: int, hidden: int = 128):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(dim * branches, hidden), nn.ReLU(inplace=True),
                                   nn.Linear(hidden, branches))
        nn.init.zeros_(self.score[2].weight)
        nn.init.zeros_(self.score[2].bias)

    def forward(self, normalised: torch.Tensor) -> torch.Tensor:  # (B, P + 1, D) → (B, P + 1)
        return torch.softmax(self.score(normalised.flatten(1)), dim=1)


def part_features(pool: nn.Module, fmap: torch.Tensor, necks: nn.ModuleList) -> torch.Tensor:
    """(B, P, D) BN-neck features of the P horizontal stripes of the feature map."""
    stripes = pool(fmap, (len(necks), 1)).flatten(2)  # (B, D, P)
    return torch.stack([neck(stripes[:, :, p]) for p, neck in enumerate(necks)], dim=1)


def integrate(global_: torch.Tensor, parts: torch.Tensor,
              head: IntegrationHead | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(fused (B, (P + 1)·D), weights (B, P + 1)); without a head (DDO alone) a uniform mix for clustering."""
    normalised = F.normalize(torch.cat([global_.unsqueeze(1), parts], dim=1), dim=2)
    if head is not None:
        weights = head(normalised)
    else:
        weights = normalised.new_full(normalised.shape[:2], 1.0 / normalised.shape[1])
    return (weights.sqrt().unsqueeze(2) * normalised).flatten(1), weights
