"""Every setting of the method, as plain dataclasses (no torch import, so the params loader is cheap).

The network, training and clustering settings, and the switches of DSFNet's three parts (all off is the
Cluster Contrast baseline). Their defaults are the CPU default; docs/method.md gives the equation behind
each DSFNet field.
"""

from __future__ import annotations

from dataclasses import dataclass, field

LAMBDA_MODES = ("schedule", "agreement")
DDO_BASES = ("fused", "global")
DDO_PART_PAIRS = ("all", "same_camera")  # dsfnet.ddo.part_pairs
LINKAGES = ("complete", "average")  # SCNet's secondary clustering; single linkage would chain like DBSCAN
KNN_BACKENDS = ("auto", "faiss", "torch", "symmetric")
SECONDARY = ("hard", "camera")  # SCNet's sub-clusters: hard-sample groups (linkage) | one per camera (views)
POSITIVES = ("own", "hardest", "all")


MEMORY_FORMATS = ("auto", "channels_last", "contiguous")  # model.memory_format
FEATURE_RUNTIMES = ("auto", "torch", "onnxruntime")  # train.feature_runtime
MEMORY_UPDATES = ("momentum", "hardest")  # train.memory_update (Cluster Contrast's CM and CM_Hard)


@dataclass
class ModelConfig:
    arch: str = "resnet18"
    pretrained: str | None = None  # null | imagenet (torchvision's file in the torch hub cache) | a local path
    allow_download: bool = False  # pretrained: imagenet may download torchvision's file when a network is there
    last_stride: int = 1
    pooling: str = "avg"  # avg (paper) or gem (reference code default)
    # channels_last | contiguous | auto: channels_last for mobilenet_v2 and resnet50, whose convolutions run
    # 1.2-1.9x faster that way on CPU (on GPUs too, by NVIDIA's guidance; not measured here); contiguous for
    # resnet18, slower that way at 64x32 (bench/bench_cpu.py)
    memory_format: str = "auto"

    def check(self) -> None:
        if self.memory_format not in MEMORY_FORMATS:
            raise ValueError(f"model.memory_format must be one of {list(MEMORY_FORMATS)}, got {self.memory_format!r}")


@dataclass
class TrainConfig:
    epochs: int = 12
    iters: int = 40
    batch_size: int = 64
    num_instances: int = 4
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    gamma: float = 0.1
    temperature: float = 0.05
    memory_momentum: float = 0.1
    # how a batch moves the cluster centroids of ClusterNCE: momentum (every sample, in turn: the reference's
    # default) | hardest (per cluster, only its batch member least similar to the centroid: Cluster Contrast's
    # --use-hard, the hardest-positive memory of HCM)
    memory_update: str = "momentum"
    height: int = 64  # 256×128 in the paper setting
    width: int = 32
    workers: int = 0
    feature_batch_size: int = 128
    # the feature passes of clustering and evaluation: torch | onnxruntime | auto (ONNX Runtime where it
    # measured faster: mobilenet_v2 on CPU, passes of 2,048+ images, when installed: pip install '.[onnx]';
    # dsfnet/inference.py)
    feature_runtime: str = "auto"
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda
    amp: bool = True  # mixed precision (float16 autocast + grad scaling) on CUDA; CPU runs stay float32
    gpus: int = 1  # processes for the train stage: > 1 starts it under torchrun (DDP, one per GPU)
    cache_images: bool = True  # keep every train image decoded and resized (H×W×3 bytes each), shared with workers
    bn_group: int = 0  # BatchNorm normalises groups of this many consecutive images (per-GPU BN); 0: whole batch

    def check(self) -> None:
        if self.feature_runtime not in FEATURE_RUNTIMES:
            raise ValueError(f"train.feature_runtime must be one of {list(FEATURE_RUNTIMES)}, "
                             f"got {self.feature_runtime!r}")
        if self.memory_update not in MEMORY_UPDATES:
            raise ValueError(f"train.memory_update must be one of {list(MEMORY_UPDATES)}, got {self.memory_update!r}")


@dataclass
class ClusterConfig:
    k1: int = 30
    k2: int = 6
    eps: float = 0.5  # 0.6 in the paper (ImageNet-initialised); from scratch 0.5 keeps clusters purer
    min_samples: int = 4
    camera_norm: bool = True  # cluster on features minus their camera's mean (ours; the paper profiles set false)
    camera_penalty: float = 0.0  # same-camera neighbours count this much less similar in the kNN (ours; 0 = off)
    # the exact k1-NN search: auto (faiss's GPU index where it works, else torch's matrix product + top-k, which
    # on 2 CPU cores is 4.5x faster than faiss's CPU IndexFlatIP with the same neighbours: bench/bench_knn.py)
    # | faiss | torch
    knn_backend: str = "auto"

    def check(self) -> None:
        if self.knn_backend not in KNN_BACKENDS:
            raise ValueError(f"cluster.knn_backend must be one of {list(KNN_BACKENDS)}, got {self.knn_backend!r}")
        if not 0.0 <= self.camera_penalty < 2.0:
            raise ValueError(f"cluster.camera_penalty must be in [0, 2), got {self.camera_penalty}")


@dataclass
class FINetConfig:
    """Feature integration: a global and `num_parts` horizontal part branches, fused by learned weights."""

    enabled: bool = True
    num_parts: int = 2  # 2 (paper default) or 3 horizontal stripes
    global_weight: float = 1.0  # weight of ClusterNCE on the global feature
    part_weight: float = 1.0  # weight of the mean ClusterNCE over the part features
    # PPLR's reading: weight each sample's part loss by how much that part's k nearest neighbours agree with
    # the global feature's (Jaccard of the two neighbour sets, re-measured every epoch; the loss is the
    # weighted mean over each process's batch), so occluded or misaligned parts teach less
    agreement_weights: bool = False
    agreement_k: int = 20
    # fused: the integrated feature is the main one (its loss, SCNet's proxies, retrieval); global: PPLR's
    # reading, where parts only teach through their own losses and the global feature is trained and retrieved
    retrieval: str = "fused"

    def check(self) -> None:
        if self.retrieval not in ("fused", "global"):
            raise ValueError(f"dsfnet.finet.retrieval must be 'fused' or 'global', got {self.retrieval!r}")
        if self.num_parts not in (2, 3):
            raise ValueError(f"dsfnet.finet.num_parts must be 2 or 3, got {self.num_parts}")
        if self.agreement_k < 1:
            raise ValueError(f"dsfnet.finet.agreement_k must be >= 1, got {self.agreement_k}")
        for name in ("global_weight", "part_weight"):
            if getattr(self, name) < 0:
                raise ValueError(f"dsfnet.finet.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class SCNetConfig:
    """Secondary clustering inside every cluster: its hard sub-clusters become proxies (and labels)."""

    enabled: bool = True
    secondary: str = "hard"  # hard: complete-linkage sub-clusters | camera: one sub-cluster per camera (its views)
    split: bool = True  # every sub-cluster is a pseudo-label of its own (False: only the hard-proxy memory sees them)
    sibling_negatives: bool = True  # with split: sub-clusters of one primary cluster are each other's negatives
    linkage: str = "complete"  # complete (no chaining) | average
    sub_distance: float = 0.6  # cosine distance at which secondary clustering stops merging
    min_sub_size: int = 4  # smaller sub-clusters join the nearest kept one
    inter_margin: float = 0.0  # inter-class hard if sim(other centroid) > sim(own centroid) - margin (monitoring)
    lambda_hard: float = 0.5  # weight of the hard-proxy contrastive term
    positive: str = "own"  # own (the sample's proxy) | hardest (its cluster's least similar) | all (every one)
    own_negatives: bool = False  # the other proxies of the own cluster are negatives too (keeps sub-clusters apart)
    hard_negatives: int = 0  # only the k proxies of other clusters most similar to the sample are negatives (0: all)
    rejoin_views: bool = False  # a sub-cluster seen only by cameras its core never saw rejoins the core (a view)
    # with split false: a DBSCAN cluster over this many times the median cluster size is chained, and its
    # sub-clusters become pseudo-labels of their own (0: none; on Market DBSCAN leaves clusters of 400-1,140
    # images where no identity has more than 72)
    split_oversized: float = 0.0

    def check(self) -> None:
        if self.secondary not in SECONDARY:
            raise ValueError(f"dsfnet.scnet.secondary must be one of {SECONDARY}, got {self.secondary!r}")
        if self.secondary == "camera" and self.split and self.enabled:
            raise ValueError("dsfnet.scnet.secondary: camera needs dsfnet.scnet.split: false (a pseudo-identity per "
                             "camera would cut every cross-camera pair retrieval is scored on)")
        if self.linkage not in LINKAGES:
            raise ValueError(f"dsfnet.scnet.linkage must be one of {LINKAGES}, got {self.linkage!r}")
        if not 0.0 < self.sub_distance <= 2.0:
            raise ValueError(f"dsfnet.scnet.sub_distance must be in (0, 2], got {self.sub_distance}")
        if self.min_sub_size < 1:
            raise ValueError(f"dsfnet.scnet.min_sub_size must be >= 1, got {self.min_sub_size}")
        if self.positive not in POSITIVES:
            raise ValueError(f"dsfnet.scnet.positive must be one of {POSITIVES}, got {self.positive!r}")
        if self.own_negatives and self.positive != "own":
            raise ValueError("dsfnet.scnet.own_negatives needs dsfnet.scnet.positive: own")
        if self.hard_negatives < 0:
            raise ValueError(f"dsfnet.scnet.hard_negatives must be >= 0 (0: every proxy), got {self.hard_negatives}")
        if self.lambda_hard < 0:
            raise ValueError(f"dsfnet.scnet.lambda_hard must be >= 0, got {self.lambda_hard}")
        if self.split_oversized < 0 or 0 < self.split_oversized <= 1:
            raise ValueError(f"dsfnet.scnet.split_oversized must be 0 (off) or > 1 (times the median cluster size), "
                             f"got {self.split_oversized}")
        if self.split_oversized and self.enabled and (self.split or self.secondary == "camera"):
            raise ValueError("dsfnet.scnet.split_oversized needs dsfnet.scnet.split: false (split: true already "
                             "splits every cluster) and secondary: hard (camera sub-clusters would cut views apart)")


@dataclass
class DDOConfig:
    """Dual fusion from FINet to SCNet: cluster fused features on a global/part mix of Jaccard distances."""

    enabled: bool = True
    lambda_mode: str = "agreement"  # schedule (linear lambda_start→lambda_end) | agreement (of neighbourhoods)
    lambda_start: float = 0.5
    lambda_end: float = 0.2
    lambda_max: float = 0.5  # agreement mode: λ_t = lambda_max × global/part kNN agreement
    base: str = "fused"  # the feature of the first term (and of SCNet's sub-clusters): fused (FINet's z) | global
    # which pairs the part term judges: all (the paper's reading) | same_camera (ours: pairs across cameras keep
    # the first term's distance, because a stripe's neighbours are mostly its own camera's images and mixing in
    # the part term pushes the cross-camera pairs retrieval is scored on over eps; needs the cameras)
    part_pairs: str = "all"

    def check(self) -> None:
        if self.part_pairs not in DDO_PART_PAIRS:
            raise ValueError(f"dsfnet.ddo.part_pairs must be one of {DDO_PART_PAIRS}, got {self.part_pairs!r}")
        if self.base not in DDO_BASES:
            raise ValueError(f"dsfnet.ddo.base must be one of {DDO_BASES}, got {self.base!r}")
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
    def fuses(self) -> bool:
        """FINet's integration head is built and its fused feature is the main (trained, retrieved) one."""
        return self.finet.enabled and self.finet.retrieval == "fused"

    @property
    def clustered_branch(self) -> str:
        """The branch DDO's first term (when on) and SCNet's sub-clusters use: `ddo.base` with DDO on, else
        FINet's fused feature where FINet fuses, else the global one."""
        if self.ddo.enabled:
            return self.ddo.base
        return "fused" if self.fuses else "global"

    @property
    def num_parts(self) -> int:
        """Part branches the network needs: FINet trains them; DDO alone still clusters on part stripes."""
        return self.finet.num_parts if (self.finet.enabled or self.ddo.enabled) else 0

    @classmethod
    def baseline(cls) -> DSFNetConfig:
        return cls(FINetConfig(enabled=False), SCNetConfig(enabled=False), DDOConfig(enabled=False))
