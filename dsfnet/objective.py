"""The training loss of one epoch: ClusterNCE on the main feature plus FINet's and SCNet's terms.

    L = L_nce(main) + w_g·L_nce(global) + w_p·mean_p L_nce(part_p) + λ_hard·L_hard(main)

The main feature is FINet's fused one when FINet is on, else the global one (the baseline); with
`finet.retrieval: global` the global feature is the main one and the parts keep their own terms (no
w_g term then: it would count the global loss twice). Every memory is built from the epoch's extracted
features and keyed by the same pseudo-labels.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from dsfnet.cluster.scnet import HardProxies
from dsfnet.config import DSFNetConfig
from dsfnet.memory import ClusterMemory, HardProxyMemory, centroids_of
from dsfnet.models import ReIDOutput


class DSFNetObjective(nn.Module):
    def __init__(self, branches: dict[str, np.ndarray | None], labels: np.ndarray, config: DSFNetConfig,
                 temperature: float = 0.05, momentum: float = 0.1, proxies: HardProxies | None = None,
                 memory_update: str = "momentum"):
        super().__init__()
        self.config = config
        labels_t = torch.from_numpy(np.asarray(labels)).long()
        num_clusters = int(labels_t.max()) + 1

        groups = None  # SCNet's split labels: the primary cluster of each label, unless siblings are negatives
        if config.scnet.enabled and config.scnet.split and proxies is not None:
            if not np.array_equal(labels, proxies.assignment):
                raise ValueError("dsfnet.scnet.split is on: the labels must be SCNet's sub-cluster assignment")
            if not config.scnet.sibling_negatives:
                groups = torch.from_numpy(np.asarray(proxies.owners))

        def memory(features: np.ndarray) -> ClusterMemory:
            centroids = centroids_of(torch.from_numpy(features), labels_t, num_clusters)
            return ClusterMemory(centroids, temperature=temperature, momentum=momentum, groups=groups,
                                 update=memory_update)

        self.main_key = "fused" if config.fuses else "global"
        self.main = memory(branches[self.main_key])
        self.global_memory = memory(branches["global"]) if config.fuses else None
        self.part_memories = nn.ModuleList(
            memory(branches["parts"][:, p]) for p in range(branches["parts"].shape[1])
        ) if config.finet.enabled else nn.ModuleList()
        self.hard = None
        if config.scnet.enabled:
            if proxies is None:
                raise ValueError("SCNet is enabled but no hard proxies were given")
            # proxies were found on the clustering feature (maybe camera-normalised); the memory holds the
            # main feature the loss compares against, so each proxy starts as its members' main-feature mean
            assignment = torch.from_numpy(np.asarray(proxies.assignment)).long()
            start = centroids_of(torch.from_numpy(branches[self.main_key]), assignment, len(proxies.owners))
            self.hard = HardProxyMemory(start, torch.from_numpy(proxies.owners),
                                        temperature=temperature, momentum=momentum,
                                        positive=config.scnet.positive,
                                        own_negatives=config.scnet.own_negatives,
                                        hard_negatives=config.scnet.hard_negatives)

    def forward(self, out: ReIDOutput, targets: torch.Tensor, proxy_targets: torch.Tensor | None = None,
                part_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """The total loss and its terms (floats, for logging). `part_weights` (B, P): FINet's per-sample
        agreement weights of each part loss (`dsfnet.finet.agreement_weights`)."""
        main = out.fused if self.main_key == "fused" else out.global_
        terms = {"loss_main": self.main(main, targets)}
        total = terms["loss_main"]
        if self.global_memory is not None:
            terms["loss_global"] = self.global_memory(out.global_, targets)
            total = total + self.config.finet.global_weight * terms["loss_global"]
        if len(self.part_memories):
            part_losses = [m(out.parts[:, p], targets, None if part_weights is None else part_weights[:, p])
                           for p, m in enumerate(self.part_memories)]
            terms["loss_parts"] = torch.stack(part_losses).mean()
            total = total + self.config.finet.part_weight * terms["loss_parts"]
        if self.hard is not None:
            if proxy_targets is None:
                raise ValueError("SCNet's hard-proxy term needs each sample's proxy")
            terms["loss_hard"] = self.hard(main, proxy_targets)
            total = total + self.config.scnet.lambda_hard * terms["loss_hard"]
        return total, {name: float(value.detach()) for name, value in terms.items()}
