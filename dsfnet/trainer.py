"""The unsupervised training loop: re-cluster every epoch, then contrast against the memories.

With every DSFNet part off this is the Cluster Contrast baseline. Per epoch (docs/method.md):
extract every branch → pseudo-labels (DDO: fused features and the global/part Jaccard mix; else the
global feature) → SCNet's split and hard proxies → memories → `iters` steps of `DSFNetObjective` on
a camera-aware P×K loader. Runs on CPU, one GPU (AMP), or several through torchrun (DDP: clustering
on rank 0, labels broadcast, memories kept identical on every rank).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader

from dsfnet.atomic import atomic_path
from dsfnet.cluster import ClusterConfig, NoClusterError, cluster_features
from dsfnet.cluster.dbscan import camera_normalise
from dsfnet.cluster.ddo import cluster_fused
from dsfnet.cluster.part_agreement import part_agreement
from dsfnet.cluster.scnet import HardProxies, secondary_clustering, split_oversized
from dsfnet.config import DSFNetConfig, TrainConfig
from dsfnet.data.loader import CameraAwarePKSampler, ImageDataset, RankShare, collate_images
from dsfnet.data.records import ImageRecord
from dsfnet.data.transforms import build_train_transform
from dsfnet.distributed import broadcast_buffers, broadcast_object, gather_rows, rank_and_world
from dsfnet.features import extract_branches
from dsfnet.label_stats import epoch_statistics
from dsfnet.models.bn_groups import bn_group_for_rank, use_bn_groups
from dsfnet.objective import DSFNetObjective
from dsfnet.runtime import keep_freed_memory

log = logging.getLogger(__name__)
FORK_AVAILABLE = "fork" in multiprocessing.get_all_start_methods()  # workers share a cache only when forked


@dataclass
class EpochStats:
    """What one epoch's clustering and training did; ground-truth scores are for monitoring only."""

    epoch: int
    num_samples: int
    num_clusters: int
    num_outliers: int
    outlier_ratio: float
    mean_cluster_size: float
    max_cluster_size: int
    min_cluster_size: int
    purity: float  # ground-truth scores: NaN when the dataset has no train identities
    nmi: float
    ari: float
    loss: float
    lr: float
    extract_s: float
    knn_s: float
    jaccard_s: float
    dbscan_s: float
    train_s: float
    pair_precision: float = float("nan")  # same-cluster pairs that share an identity (ground truth)
    pair_recall: float = float("nan")  # same-identity pairs put in one cluster (ground truth)
    cross_camera_pair_precision: float = float("nan")  # the same, over pairs from two cameras only
    cross_camera_pair_recall: float = float("nan")
    hard_samples: int = 0  # SCNet: samples found hard (intra- or inter-class)
    intra_hard: int = 0
    inter_hard: int = 0
    hard_proxies: int = 0  # SCNet: proxies in the hard-proxy memory
    split_clusters: int = 0  # SCNet: DBSCAN clusters that secondary clustering divided
    oversized_split: int = 0  # SCNet split_oversized: clusters over the size bound whose sub-clusters became labels
    primary_clusters: int = 0  # SCNet: DBSCAN's clusters before the split (num_clusters counts after it)
    lambda_t: float = float("nan")  # DDO: weight of the part distances this epoch
    agreement: float = float("nan")  # DDO: fused/part kNN agreement
    weight_global: float = float("nan")  # FINet: mean integration weight of the global branch
    weight_part: float = float("nan")  # FINet: mean integration weight of one part branch
    part_agreement: float = float("nan")  # FINet agreement weights: mean over samples and parts
    part_agreement_min: float = float("nan")  # ... of the part that agrees least with the global feature
    loss_main: float = float("nan")
    loss_global: float = float("nan")
    loss_parts: float = float("nan")
    loss_hard: float = float("nan")
    median_cluster_size: float = float("nan")
    size_gini: float = float("nan")  # 0: equal cluster sizes; towards 1: a few clusters hold most samples
    multi_camera_share: float = float("nan")  # clusters seen by two or more cameras
    label_churn: float = float("nan")  # 1 − ARI to the previous epoch's labels (samples clustered in both)

    def as_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class TrainResult:
    history: list[EpochStats]
    labels: list[np.ndarray]  # pseudo-labels of every epoch, for monitoring


EpochCallback = Callable[[EpochStats, np.ndarray, np.ndarray], None]


def load_resume_state(path: str | Path | None, fingerprint: str) -> dict | None:
    """The saved state at `path` if it belongs to this exact run (same fingerprint), else None."""
    if path is None or not Path(path).is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: numpy RNG state inside
    if state.get("fingerprint") != fingerprint:
        log.warning("ignoring %s: it was written for different data or parameters", path)
        return None
    return state


@dataclass
class EpochLabels:
    """One epoch's pseudo-labels and what produced them (rank 0 computes, every rank receives)."""

    labels: np.ndarray
    timings: dict[str, float]
    proxies: HardProxies | None
    extra: dict[str, float]
    part_agreement: np.ndarray | None = None  # (N, P): FINet's agreement weights, when dsfnet.finet asks for them


def pseudo_labels(branches: dict, cluster_config: ClusterConfig, method: DSFNetConfig, epoch: int,
                  epochs: int, camids: np.ndarray | None = None) -> EpochLabels:
    """DDO's fused clustering (or the baseline's on the global feature), then SCNet's hard proxies."""
    extra: dict[str, float] = {}
    if cluster_config.camera_norm:
        if camids is None:
            raise ValueError("cluster.camera_norm needs the camera of every sample")
        branches = {name: value if value is None or name == "weights" else camera_normalise(value, camids)
                    for name, value in branches.items()}
    if method.ddo.enabled:
        fused = cluster_fused(branches[method.clustered_branch], branches["parts"], cluster_config, method.ddo,
                              epoch, epochs, camids)
        pseudo = fused.pseudo
        extra.update(lambda_t=fused.lambda_t, agreement=fused.agreement)
    else:
        pseudo = cluster_features(branches["global"], cluster_config, camids)
    if pseudo.num_clusters == 0:
        raise NoClusterError(
            f"epoch {epoch}: DBSCAN found no cluster among {len(pseudo.labels)} samples "
            f"(eps={cluster_config.eps}, min_samples={cluster_config.min_samples}); "
            f"try a larger cluster.eps or a smaller cluster.min_samples")
    agreement = None
    if method.finet.enabled and method.finet.agreement_weights:
        start = time.perf_counter()
        agreement = part_agreement(branches["global"], branches["parts"], method.finet.agreement_k,
                                   cluster_config.knn_backend)
        extra.update(part_agreement=float(agreement.mean()), part_agreement_min=float(agreement.mean(axis=0).min()))
        pseudo.timings["knn_s"] += time.perf_counter() - start  # its neighbour searches
    proxies = None
    if method.scnet.enabled:
        start = time.perf_counter()
        main = branches[method.clustered_branch]
        scnet = method.scnet
        by_camera = scnet.secondary == "camera"
        if (scnet.rejoin_views or by_camera) and camids is None:
            raise ValueError(f"dsfnet.scnet.{'secondary: camera' if by_camera else 'rejoin_views'} needs the camera "
                             f"of every sample")
        proxies = secondary_clustering(main, pseudo.labels, scnet.sub_distance, scnet.min_sub_size, scnet.linkage,
                                       scnet.inter_margin, camids if (scnet.rejoin_views or by_camera) else None,
                                       by_camera=by_camera)
        pseudo.timings["dbscan_s"] += time.perf_counter() - start
        extra.update(proxies.stats(), primary_clusters=pseudo.num_clusters)
        if scnet.split:  # every sub-cluster is a pseudo-identity: DBSCAN's chained clusters come apart
            return EpochLabels(proxies.assignment.copy(), pseudo.timings, proxies, extra, agreement)
        if scnet.split_oversized:  # only the clusters too large to be one identity come apart
            labels, proxies, oversized = split_oversized(pseudo.labels, proxies, scnet.split_oversized)
            extra.update(oversized_split=oversized)
            return EpochLabels(labels, pseudo.timings, proxies, extra, agreement)
    return EpochLabels(pseudo.labels, pseudo.timings, proxies, extra, agreement)


def build_optimizer(params, config: TrainConfig) -> torch.optim.Adam:
    """Adam with the fused kernel (CPU and CUDA): one pass over the weights instead of a loop per tensor."""
    return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay, fused=True)


def check_model_matches(model: torch.nn.Module, method: DSFNetConfig) -> None:
    parts, fuse = getattr(model, "num_parts", 0), getattr(model, "fuse_parts", False)
    if parts != method.num_parts or fuse != method.fuses:
        raise ValueError(f"the network has num_parts={parts}, fuse_parts={fuse} but the DSFNet settings need "
                         f"num_parts={method.num_parts}, fuse_parts={method.fuses}; build it with "
                         f"dsfnet.models.build_model(model_config, method)")


@dataclass
class Session:
    """What every epoch works with: the network on its device, the optimiser state and the process rank."""

    model: torch.nn.Module
    network: torch.nn.Module  # the model, or its DDP wrapper
    device: torch.device
    use_amp: bool
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.StepLR
    scaler: torch.amp.GradScaler
    rank: int = 0
    world: int = 1


def setup(model: torch.nn.Module, config: TrainConfig, method: DSFNetConfig) -> Session:
    """Seed, place the model (DDP under torchrun), build Adam, the step schedule and the AMP scaler."""
    rank, world = rank_and_world()
    seed_everything(config.seed)
    device = resolve_device(config.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", rank)))
        torch.cuda.set_device(device)
    if config.batch_size % world:
        raise ValueError(f"train.batch_size ({config.batch_size}) must split evenly over the {world} processes "
                         f"of train.gpus")
    bn_group = bn_group_for_rank(config.bn_group, config.batch_size, world)
    if bn_group:
        layers = use_bn_groups(model, bn_group)
        log.info("train.bn_group: %d BatchNorm layers normalise groups of %d images", layers, bn_group)
    model.to(device)
    use_amp = config.amp and device.type == "cuda"
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    network = model
    if world > 1:
        # DDO without FINet keeps part branches that no loss reaches
        unused = method.num_parts > 0 and not method.finet.enabled
        network = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], config)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    return Session(model, network, device, use_amp, optimizer, scheduler, scaler, rank, world)


def restore(session: Session, state: dict) -> tuple[int, TrainResult]:
    """Continue from a saved state: weights, optimiser, schedule, RNG streams; returns (next epoch, result)."""
    session.model.load_state_dict(state["model"])
    session.optimizer.load_state_dict(state["optimizer"])
    session.scheduler.load_state_dict(state["scheduler"])
    session.scaler.load_state_dict(state["scaler"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    return state["next_epoch"], TrainResult([EpochStats(**h) for h in state["history"]], list(state["labels"]))


def save_state(path: Path, fingerprint: str, next_epoch: int, session: Session, result: TrainResult,
               extra: dict) -> None:
    """Everything needed to continue after `next_epoch - 1` exactly as if never stopped."""
    state = {
        "fingerprint": fingerprint,
        "next_epoch": next_epoch,
        "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "scheduler": session.scheduler.state_dict(),
        "scaler": session.scaler.state_dict(),
        "history": [h.as_dict() for h in result.history],
        "labels": result.labels,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "extra": extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def cluster_epoch(session: Session, records: Sequence[ImageRecord], camids: np.ndarray, config: TrainConfig,
                  cluster_config: ClusterConfig, method: DSFNetConfig, epoch: int,
                  progress: bool, image_cache: dict | None = None) -> tuple[dict, EpochLabels]:
    """Every branch of every record (each rank embeds a shard), then rank 0's pseudo-labels on every rank."""
    start = time.perf_counter()
    rank, world = session.rank, session.world
    branches = extract_branches(session.model, records[rank::world], config.height, config.width,
                                config.feature_batch_size, config.workers, session.device,
                                desc=f"epoch {epoch} features", progress=progress and rank == 0, cache=image_cache,
                                runtime=config.feature_runtime)
    if world > 1:
        branches = {k: gather_rows(v, len(records)) if v is not None else None for k, v in branches.items()}
    extract_s = time.perf_counter() - start
    clustered = pseudo_labels(branches, cluster_config, method, epoch, config.epochs, camids) if rank == 0 else None
    clustered = broadcast_object(clustered)
    clustered.timings["extract_s"] = extract_s
    return branches, clustered


def epoch_loader(records: Sequence[ImageRecord], labels: np.ndarray, config: TrainConfig, epoch: int,
                 rank: int = 0, image_cache: dict | None = None, world: int = 1) -> DataLoader:
    """The epoch's camera-aware P×K batches over the clustered records (outliers left out).

    `train.batch_size` is the batch of one step over all processes, as in the papers (256 over 4 GPUs):
    every rank draws the same batches and takes its own consecutive share of each.
    """
    kept = np.flatnonzero(labels >= 0)
    camids = np.array([records[i].camid for i in kept])
    dataset = ImageDataset([records[i] for i in kept], build_train_transform(config.height, config.width),
                           labels=labels[kept].tolist(), cache=image_cache)
    sampler = CameraAwarePKSampler(labels[kept], camids, config.num_instances, seed=config.seed * 1000 + epoch)
    batches = BatchSampler(sampler, config.batch_size, drop_last=len(sampler) >= config.batch_size)
    context = None
    if image_cache is not None and config.workers > 0:
        dataset.preload(threads=config.workers)  # before the workers fork: they share the decoded images
        context = "fork"
    return DataLoader(dataset, batch_sampler=RankShare(batches, rank, world) if world > 1 else batches,
                      num_workers=config.workers, collate_fn=collate_images, persistent_workers=config.workers > 0,
                      pin_memory=torch.cuda.is_available(), multiprocessing_context=context)


def cycle(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


def train_step(network, objective: DSFNetObjective, optimizer, scaler, batch, proxy_of: np.ndarray | None,
               device: torch.device, use_amp: bool, part_weights_of: np.ndarray | None = None):
    """One optimisation step on a sampler batch; returns (loss, loss terms, network output).
    `proxy_of`, `part_weights_of`: each kept sample's SCNet proxy and FINet agreement weights (or None)."""
    images, targets, _, indices = batch
    targets = targets.to(device)
    proxy_targets = torch.from_numpy(proxy_of[indices.numpy()]).to(device) if proxy_of is not None else None
    part_weights = (torch.from_numpy(part_weights_of[indices.numpy()]).to(device)
                    if part_weights_of is not None else None)
    with torch.autocast(device_type=device.type, dtype=torch.float16, enabled=use_amp):
        out = network(images.to(device, non_blocking=True))
    out = type(out)(*(t.float() if t is not None else None for t in out))  # losses in float32
    loss, terms = objective(out, targets, proxy_targets, part_weights)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach()), terms, out


def run_iterations(session: Session, objective: DSFNetObjective, loader: DataLoader, clustered: EpochLabels,
                   iters: int) -> dict[str, float]:
    """`iters` steps; returns the mean loss, the mean of each loss term and FINet's mean integration weights."""
    kept = np.flatnonzero(clustered.labels >= 0)
    proxy_of = clustered.proxies.assignment[kept] if clustered.proxies is not None else None
    part_weights_of = clustered.part_agreement[kept] if clustered.part_agreement is not None else None
    session.network.train()
    objective.train()
    losses: list[float] = []
    terms: dict[str, list[float]] = {}
    weights: list[np.ndarray] = []
    batches = cycle(loader)
    for _ in range(iters):
        loss, parts, out = train_step(session.network, objective, session.optimizer, session.scaler, next(batches),
                                      proxy_of, session.device, session.use_amp, part_weights_of)
        losses.append(loss)
        for name, value in parts.items():
            terms.setdefault(name, []).append(value)
        if out.weights is not None and session.model.fuse_parts:
            weights.append(out.weights.detach().mean(dim=0).cpu().numpy())
    summary = {"loss": float(np.mean(losses)) if losses else float("nan")}
    summary.update({name: float(np.mean(values)) for name, values in terms.items()})
    if weights:
        mean = np.mean(weights, axis=0)
        summary.update(weight_global=float(mean[0]), weight_part=float(mean[1:].mean()))
    return summary


def epoch_stats(epoch: int, clustered: EpochLabels, previous: np.ndarray | None, camids: np.ndarray,
                truth: np.ndarray | None, steps: dict[str, float], lr: float, train_s: float) -> EpochStats:
    labels, timings = clustered.labels, clustered.timings
    sizes = np.bincount(labels[labels >= 0])
    return EpochStats(
        epoch=epoch, num_samples=len(labels), num_clusters=int(sizes.size), num_outliers=int((labels < 0).sum()),
        outlier_ratio=float((labels < 0).mean()), mean_cluster_size=float(sizes.mean()),
        max_cluster_size=int(sizes.max()), min_cluster_size=int(sizes.min()), lr=lr,
        extract_s=timings["extract_s"], knn_s=timings["knn_s"], jaccard_s=timings["jaccard_s"],
        dbscan_s=timings["dbscan_s"], train_s=train_s,
        **epoch_statistics(labels, camids, previous, truth), **clustered.extra, **steps)


def log_epoch(stats: EpochStats, method: DSFNetConfig) -> None:
    scnet = (f", SCNet split {stats.split_clusters} of {stats.primary_clusters} DBSCAN clusters "
             f"({stats.hard_samples} hard samples, {stats.hard_proxies} proxies)") if method.scnet.enabled else ""
    log.info("epoch %d: %d clusters, %d outliers, purity %.3f, loss %.3f%s%s "
             "(features %.1fs, kNN %.1fs, Jaccard %.1fs, DBSCAN+SCNet %.1fs, train %.1fs)", stats.epoch,
             stats.num_clusters, stats.num_outliers, stats.purity, stats.loss,
             f", λ_t {stats.lambda_t:.2f}" if method.ddo.enabled else "", scnet,
             stats.extract_s, stats.knn_s, stats.jaccard_s, stats.dbscan_s, stats.train_s)


def train(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    config: TrainConfig,
    cluster_config: ClusterConfig,
    method: DSFNetConfig | None = None,
    on_epoch_end: EpochCallback | None = None,
    progress: bool = True,
    state_path: str | Path | None = None,
    fingerprint: str = "",
    resume: dict | None = None,
    extra: dict | None = None,
) -> TrainResult:
    """Train `model` on unlabelled `records`; returns per-epoch statistics and pseudo-labels.

    `method` switches DSFNet's parts (None: the Cluster Contrast baseline). `on_epoch_end(stats, labels,
    features)` gets each epoch's statistics, pseudo-labels and the retrieval features they were clustered
    from (rank 0 only). Record pids are never used for training, only to score pseudo-label quality.
    With `state_path`, the full state (and `extra`, read when `on_epoch_end` has returned) is saved there
    after every epoch under `fingerprint`; `resume`, a state from `load_resume_state`, continues it to the
    result of an uninterrupted run.
    """
    method = method or DSFNetConfig.baseline()
    method.check()
    check_model_matches(model, method)
    keep_freed_memory()
    session = setup(model, config, method)
    camids = np.array([r.camid for r in records])
    if cluster_config.camera_norm and len(np.unique(camids)) < 2:
        log.info("cluster.camera_norm skipped: every training image comes from one camera, so subtracting "
                 "its mean would only shift every feature alike")
        cluster_config = replace(cluster_config, camera_norm=False)
    truth = np.array([r.pid for r in records])
    truth = truth if (truth >= 0).all() else None  # unlabelled (own data): no ground-truth scores
    # decoded, resized images shared by every epoch's loader (and, by fork, its workers)
    image_cache: dict | None = {} if config.cache_images and (config.workers == 0 or FORK_AVAILABLE) else None
    first_epoch, result = restore(session, resume) if resume is not None else (0, TrainResult([], []))
    if resume is not None:
        log.info("resuming at epoch %d of %d", first_epoch, config.epochs)
    for epoch in range(first_epoch, config.epochs):
        branches, clustered = cluster_epoch(session, records, camids, config, cluster_config, method, epoch,
                                            progress, image_cache)
        start = time.perf_counter()
        objective = DSFNetObjective(branches, clustered.labels, method, config.temperature, config.memory_momentum,
                                    clustered.proxies, config.memory_update).to(session.device)
        loader = epoch_loader(records, clustered.labels, config, epoch, session.rank, image_cache, session.world)
        lr = session.optimizer.param_groups[0]["lr"]
        steps = run_iterations(session, objective, loader, clustered, config.iters)
        session.scheduler.step()
        broadcast_buffers(model)  # every rank embeds next epoch's shard with the same network
        if session.rank != 0:
            continue
        stats = epoch_stats(epoch, clustered, result.labels[-1] if result.labels else None, camids, truth, steps,
                            lr, time.perf_counter() - start)
        log_epoch(stats, method)
        result.history.append(stats)
        result.labels.append(clustered.labels)
        if on_epoch_end is not None:
            on_epoch_end(stats, clustered.labels, branches["fused" if method.fuses else "global"])
        if state_path is not None:
            save_state(Path(state_path), fingerprint, epoch + 1, session, result, extra or {})
    return result
