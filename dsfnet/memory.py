"""Cluster memory and the ClusterNCE loss of the Cluster Contrast baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ClusterMemory(nn.Module):
    """One L2-normalised centroid per pseudo-label, updated by momentum from each training sample.

    `momentum` is the weight of the old value, as in the reference code (0.1 there). Updates are
    applied sample by sample in batch order, matching the reference's backward pass.
    """

    def __init__(self, centroids: torch.Tensor, temperature: float = 0.05, momentum: float = 0.1):
        super().__init__()
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer("features", F.normalize(centroids.detach().float(), dim=1).clone())

    @classmethod
    def from_labels(cls, features: torch.Tensor, labels: torch.Tensor, **kwargs) -> ClusterMemory:
        """Centroids are the mean feature of each cluster (outliers, label -1, ignored)."""
        keep = labels >= 0
        num_clusters = int(labels[keep].max()) + 1
        sums = torch.zeros(num_clusters, features.shape[1]).index_add_(0, labels[keep], features[keep].float())
        counts = torch.bincount(labels[keep], minlength=num_clusters).clamp(min=1).unsqueeze(1)
        return cls(sums / counts, **kwargs)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """ClusterNCE: cross-entropy of the sample against all centroids at the given temperature."""
        inputs = F.normalize(inputs, dim=1)
        # a snapshot: the momentum update below must not touch the tensor autograd saved for backward
        logits = inputs @ self.features.clone().T / self.temperature
        loss = F.cross_entropy(logits, targets)
        if self.training:
            self.update(inputs.detach(), targets)
        return loss

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        for x, y in zip(inputs, targets, strict=True):
            self.features[y] = F.normalize(self.momentum * self.features[y] + (1.0 - self.momentum) * x, dim=0)
