"""Memories of the contrastive losses: cluster centroids (ClusterNCE) and SCNet's hard proxies."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from dsfnet.config import POSITIVES
from dsfnet.distributed import gather_batch


def occurrence_rank(targets: torch.Tensor) -> torch.Tensor:
    """For each position, how many earlier positions hold the same target (0 for the first)."""
    positions = torch.arange(len(targets), device=targets.device)
    order = torch.argsort(targets, stable=True)
    ordered = targets[order]
    starts = torch.ones_like(ordered, dtype=torch.bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group_start = torch.cummax(torch.where(starts, positions, torch.zeros_like(positions)), dim=0).values
    rank = torch.empty_like(positions)
    rank[order] = positions - group_start
    return rank


@torch.no_grad()
def momentum_update(bank: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, momentum: float) -> None:
    """bank[y] ← normalise(m·bank[y] + (1−m)·x), sample by sample in batch order.

    Done in rounds of distinct targets (a P×K batch needs K rounds, not B steps): the same result as the
    reference's per-sample loop, without a Python step per sample.
    """
    rank = occurrence_rank(targets)
    for r in range(int(rank.max()) + 1 if len(rank) else 0):
        chosen = rank == r
        rows = targets[chosen]
        bank[rows] = F.normalize(momentum * bank[rows] + (1.0 - momentum) * inputs[chosen].to(bank.dtype), dim=1)


@torch.no_grad()
def hardest_update(bank: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, momentum: float) -> None:
    """bank[y] ← normalise(m·bank[y] + (1−m)·x_h), x_h the batch sample of label y least similar to bank[y].

    Cluster Contrast's hard mode (CM_Hard): a centroid follows its hardest positive, not the mean of its batch
    members, so a cluster's outlying views keep pulling it instead of being averaged away. Ties: the first.
    """
    if not len(targets):
        return
    similarity = (F.normalize(inputs.to(bank.dtype), dim=1) * bank[targets]).sum(dim=1)
    order = torch.argsort(similarity, stable=True)  # least similar first ...
    order = order[torch.argsort(targets[order], stable=True)]  # ... within each label
    labels, counts = torch.unique_consecutive(targets[order], return_counts=True)
    first = torch.cumsum(counts, dim=0) - counts
    hardest = order[first]
    bank[labels] = F.normalize(momentum * bank[labels] + (1.0 - momentum) * inputs[hardest].to(bank.dtype), dim=1)


UPDATE_RULES = {"momentum": momentum_update, "hardest": hardest_update}  # train.memory_update


def centroids_of(features: torch.Tensor, labels: torch.Tensor, num_clusters: int | None = None) -> torch.Tensor:
    """L2-normalised mean feature of each label 0..C-1 (label -1, outliers, ignored)."""
    keep = labels >= 0
    if num_clusters is None:
        num_clusters = int(labels[keep].max()) + 1
    sums = torch.zeros(num_clusters, features.shape[1]).index_add_(0, labels[keep], features[keep].float())
    counts = torch.bincount(labels[keep], minlength=num_clusters).clamp(min=1).unsqueeze(1)
    return F.normalize(sums / counts, dim=1)


class ClusterMemory(nn.Module):
    """One L2-normalised centroid per pseudo-label, updated by momentum from each training sample.

    `momentum` is the weight of the old value, as in the reference code (0.1 there). `update`: "momentum"
    applies the updates sample by sample in batch order, matching the reference's backward pass; "hardest"
    moves each centroid once, towards its least similar batch member (`hardest_update`).
    """

    def __init__(self, centroids: torch.Tensor, temperature: float = 0.05, momentum: float = 0.1,
                 groups: torch.Tensor | None = None, update: str = "momentum"):
        super().__init__()
        if update not in UPDATE_RULES:
            raise ValueError(f"memory update must be momentum or hardest, got {update!r}")
        self.temperature = temperature
        self.momentum = momentum
        self.update_rule = UPDATE_RULES[update]
        self.register_buffer("features", F.normalize(centroids.detach().float(), dim=1).clone())
        # clusters of one group (SCNet's sub-clusters of one primary cluster) are not each other's negatives
        self.register_buffer("groups", groups.long().clone() if groups is not None else None)

    @classmethod
    def from_labels(cls, features: torch.Tensor, labels: torch.Tensor, **kwargs) -> ClusterMemory:
        """Centroids are the mean feature of each cluster (outliers, label -1, ignored)."""
        return cls(centroids_of(features, labels), **kwargs)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor,
                sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """ClusterNCE: cross-entropy of the sample against all centroids at the given temperature
        (`sample_weights`: a weighted mean over the batch instead of the plain one)."""
        inputs = F.normalize(inputs.to(self.features.dtype), dim=1)
        # a snapshot: the momentum update below must not touch the tensor autograd saved for backward
        logits = inputs @ self.features.clone().T / self.temperature
        if self.groups is not None:
            siblings = self.groups.unsqueeze(0) == self.groups[targets].unsqueeze(1)
            siblings[torch.arange(len(targets), device=targets.device), targets] = False
            logits = logits.masked_fill(siblings, float("-inf"))
        if sample_weights is None:
            loss = F.cross_entropy(logits, targets)
        else:
            weights = sample_weights.to(logits.dtype)
            loss = (F.cross_entropy(logits, targets, reduction="none") * weights).sum() / weights.sum().clamp_min(1e-12)
        if self.training:
            self.update(inputs.detach(), targets)
        return loss

    @torch.no_grad()
    def update(self, inputs: torch.Tensor, targets: torch.Tensor) -> None:
        self.update_rule(self.features, *gather_batch(inputs, targets), self.momentum)


class HardProxyMemory(nn.Module):
    """SCNet's dictionary: several proxies per cluster (its easy centroid and its hard sub-cluster centroids).

    The loss contrasts each sample with one positive proxy of its own cluster against every proxy of the
    other clusters. The positive is the sample's own proxy (`positive="own"`: the cluster keeps its modes)
    or the own-cluster proxy it is least similar to (`"hardest"`: pulls the modes together); with `"all"`
    every own-cluster proxy is a positive, the log-likelihoods averaged (CAP's inter-camera loss when the
    proxies are a cluster's cameras: each sample is pulled towards its identity's other views). With
    `own_negatives` the other proxies of the own cluster are negatives as well: a hard sub-cluster is
    treated as a candidate identity of its own. With `hard_negatives` k > 0 only the k proxies of other
    clusters most similar to the sample are negatives (CAP's hard negative mining). Each sample then updates
    its own proxy by momentum.
    """

    def __init__(self, proxies: torch.Tensor, owners: torch.Tensor, temperature: float = 0.05,
                 momentum: float = 0.1, positive: str = "own", own_negatives: bool = False, hard_negatives: int = 0):
        super().__init__()
        if positive not in POSITIVES:
            raise ValueError(f"dsfnet.scnet.positive must be one of {POSITIVES}, got {positive!r}")
        self.positive = positive
        self.own_negatives = own_negatives
        self.hard_negatives = hard_negatives
        self.temperature = temperature
        self.momentum = momentum
        self.register_buffer("features", F.normalize(proxies.detach().float(), dim=1).clone())
        self.register_buffer("owners", owners.long().clone())

    def forward(self, inputs: torch.Tensor, proxy_targets: torch.Tensor) -> torch.Tensor:
        """`proxy_targets`: the proxy each sample belongs to (and updates); its owner is the sample's cluster."""
        inputs = F.normalize(inputs.to(self.features.dtype), dim=1)
        targets = self.owners[proxy_targets]
        logits = inputs @ self.features.clone().T / self.temperature  # (B, M)
        own = self.owners.unsqueeze(0) == targets.unsqueeze(1)
        if 0 < self.hard_negatives < int((~own).sum(dim=1).min()):
            others = logits.detach().masked_fill(own, float("-inf"))
            kth = others.topk(self.hard_negatives, dim=1).values[:, -1:]
            logits = logits.masked_fill(~own & (others < kth), float("-inf"))
        if self.positive == "all":
            log_likelihood = logits.log_softmax(dim=1).masked_fill(~own, 0.0)
            loss = -(log_likelihood.sum(dim=1) / own.sum(dim=1)).mean()
        else:
            loss = self._one_positive(logits, own, targets, proxy_targets)
        if self.training:
            momentum_update(self.features, *gather_batch(inputs.detach(), proxy_targets), self.momentum)
        return loss

    def _one_positive(self, logits: torch.Tensor, own: torch.Tensor, targets: torch.Tensor,
                      proxy_targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy against one own proxy (`own` or `hardest`), the other own proxies masked unless
        `own_negatives`."""
        if self.positive == "hardest":
            positive = logits.detach().masked_fill(~own, float("inf")).argmin(dim=1)
        else:
            positive = proxy_targets
        others_of_own = own.clone()
        others_of_own[torch.arange(len(targets), device=targets.device), positive] = False
        if not self.own_negatives:
            logits = logits.masked_fill(others_of_own, float("-inf"))
        return F.cross_entropy(logits, positive)
