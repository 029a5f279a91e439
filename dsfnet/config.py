"""Switches and settings of DSFNet's three parts; all off is the Cluster Contrast baseline.

docs/method.md gives the equation behind each field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LAMBDA_MODES = ("schedule", "agreement")


@dataclass
class FINetConfig:
    """Feature integration: a global and `num_parts` horizontal part branches, fused by learned weights."""

    enabled: bool = True
    num_parts: int = 2  # 2 (paper default) or 3 horizontal stripes
    global_weight: float = 1.0  # weight of ClusterNCE on the global feature
    part_weight: float = 1.0  # weight of the mean ClusterNCE over the part features

    def check(self) -> None:
        if self.num_parts not in (2, 3):
            raise ValueError(f"dsfnet.finet.num_parts must be 2 or 3, got {self.num_parts}")
        for name in ("global_weight", "part_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"dsfnet.finet.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class SCNetConfig:
    """Hard-sample secondary clustering and the hard-proxy memory it initialises."""

    enabled: bool = True
    intra_quantile: float = 0.2  # the share of each cluster least similar to its centroid is intra-class hard
    inter_margin: float = 0.0  # hard if sim(other centroid) > sim(own centroid) - margin
    sub_distance: float = 0.3  # cosine distance at which secondary (average-linkage) clustering stops merging
    lambda_hard: float = 0.5  # weight of the hard-proxy contrastive term
    positive: str = "own"  # own (the sample's proxy) | hardest (the least similar proxy of its cluster)
    own_negatives: bool = False  # the other proxies of the own cluster are negatives too (keeps sub-clusters apart)

    def check(self) -> None:
        if not 0.0 <= self.intra_quantile < 1.0:
            raise ValueError(f"dsfnet.scnet.intra_quantile must be in [0, 1), got {self.intra_quantile}")
        if not 0.0 < self.sub_distance <= 2.0:
            raise ValueError(f"dsfnet.scnet.sub_distance must be in (0, 2], got {self.sub_distance}")
        if self.positive not in ("own", "hardest"):
            raise ValueError(f"dsfnet.scnet.positive must be 'own' or 'hardest', got {self.positive!r}")
        if self.own_negatives and self.positive != "own":
            raise ValueError("dsfnet.scnet.own_negatives needs dsfnet.scnet.positive: own")
        if self.lambda_hard < 0:
            raise ValueError(f"dsfnet.scnet.lambda_hard must be >= 0, got {self.lambda_hard}")


@dataclass
class DDOConfig:
    """Dual fusion from FINet to SCNet: cluster fused features on a global/part mix of Jaccard distances."""

    enabled: bool = True
    lambda_mode: str = "agreement"  # schedule (linear lambda_start→lambda_end) | agreement (of neighbourhoods)
    lambda_start: float = 0.5
    lambda_end: float = 0.2
    lambda_max: float = 0.5  # agreement mode: λ_t = lambda_max × global/part kNN agreement

    def check(self) -> None:
        if self.lambda_mode not in LAMBDA_MODES:
            raise ValueError(f"dsfnet.ddo.lambda_mode must be one of {LAMBDA_MODES}, got {self.lambda_mode!r}")
        for name in ("lambda_start", "lambda_end", "lambda_max"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"dsfnet.ddo.{name} must be in [0, 1], got {getattr(self, name)}")


@dataclass
class DSFNetConfig:
    finet: FINetConfig = field(default_factory=FINetConfig)
    scnet: SCNetConfig = field(default_factory=SCNetConfig)
    ddo: DDOConfig = field(default_factory=DDOConfig)

    def check(self) -> None:
        self.finet.check()
        self.scnet.check()
        self.ddo.check()

    @property
    def num_parts(self) -> int:
        """Part branches the network needs: FINet trains them; DDO alone still clusters on part stripes."""
        return self.finet.num_parts if (self.finet.enabled or self.ddo.enabled) else 0

    @classmethod
    def baseline(cls) -> DSFNetConfig:
        return cls(FINetConfig(enabled=False), SCNetConfig(enabled=False), DDOConfig(enabled=False))
