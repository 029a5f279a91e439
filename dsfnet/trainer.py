"""The unsupervised training loop: re-cluster every epoch, then contrast against cluster centroids.

This is the Cluster Contrast baseline. DSFNet's parts plug in at the marked seams: the features that
are clustered and the distance (DDO), the clustering itself (SCNet), and the heads/losses (FINet).
"""

from __future__ import annotations

import logging
import os
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch.utils.data import DataLoader

from dsfnet.cluster import ClusterConfig, NoClusterError, cluster_features
from dsfnet.data.loader import CameraAwarePKSampler, ImageDataset, collate_images
from dsfnet.data.records import ImageRecord
from dsfnet.data.transforms import build_train_transform
from dsfnet.features import extract_features
from dsfnet.memory import ClusterMemory

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 10
    iters: int = 50
    batch_size: int = 64
    num_instances: int = 4
    lr: float = 3.5e-4
    weight_decay: float = 5e-4
    step_size: int = 20
    gamma: float = 0.1
    temperature: float = 0.05
    memory_momentum: float = 0.1
    height: int = 128
    width: int = 64
    workers: int = 2
    feature_batch_size: int = 128
    seed: int = 1
    device: str = "auto"  # auto | cpu | cuda


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
    purity: float
    nmi: float
    ari: float
    loss: float
    lr: float
    extract_s: float
    knn_s: float
    jaccard_s: float
    dbscan_s: float
    train_s: float

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


def label_quality(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Purity, NMI and ARI of the clustered (non-outlier) samples against ground-truth ids."""
    kept = labels >= 0
    if not kept.any():
        return {"purity": 0.0, "nmi": 0.0, "ari": 0.0}
    lab, tru = labels[kept], truth[kept]
    _, tru_idx = np.unique(tru, return_inverse=True)
    table = np.zeros((lab.max() + 1, tru_idx.max() + 1), dtype=np.int64)
    np.add.at(table, (lab, tru_idx), 1)
    return {
        "purity": float(table.max(axis=1).sum() / kept.sum()),
        "nmi": float(normalized_mutual_info_score(tru, lab)),
        "ari": float(adjusted_rand_score(tru, lab)),
    }


def _cycle(loader: DataLoader) -> Iterator:
    while True:
        yield from loader


@dataclass
class TrainResult:
    history: list[EpochStats]
    labels: list[np.ndarray]  # pseudo-labels of every epoch, for monitoring


def _save_state(path: Path, fingerprint: str, next_epoch: int, model, optimizer, scheduler,
                result: TrainResult, extra: dict) -> None:
    """Everything needed to continue after `next_epoch - 1` exactly as if never stopped; atomic write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "fingerprint": fingerprint,
        "next_epoch": next_epoch,
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "history": [h.as_dict() for h in result.history],
        "labels": result.labels,
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
        "extra": extra,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_resume_state(path: str | Path | None, fingerprint: str) -> dict | None:
    """The saved state at `path` if it belongs to this exact run (same fingerprint), else None."""
    if path is None or not Path(path).is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)  # our own file: numpy RNG state inside
    if state.get("fingerprint") != fingerprint:
        log.warning("ignoring %s: it was written for different data or parameters", path)
        return None
    return state


def train(
    model: torch.nn.Module,
    records: Sequence[ImageRecord],
    config: TrainConfig,
    cluster_config: ClusterConfig,
    on_epoch_end: Callable[[EpochStats, np.ndarray], None] | None = None,
    progress: bool = True,
    resume_path: str | Path | None = None,
    fingerprint: str = "",
    extra: dict | None = None,
) -> TrainResult:
    """Train `model` on unlabelled `records`; returns per-epoch statistics and pseudo-labels.

    `on_epoch_end(stats, labels)` receives each epoch's statistics and pseudo-labels (for logging).
    Record pids are never used for training, only to score pseudo-label quality.
    With `resume_path`, the full training state is saved there after every epoch, and a state saved by
    an interrupted run with the same `fingerprint` is picked up: the result equals an uninterrupted run.
    `extra` is stored with the state (e.g. a tracking run id) and returned by `load_resume_state`.
    """
    seed_everything(config.seed)
    device = resolve_device(config.device)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=config.step_size, gamma=config.gamma)
    truth = np.array([r.pid for r in records])
    camids = np.array([r.camid for r in records])
    transform = build_train_transform(config.height, config.width)
    result = TrainResult(history=[], labels=[])
    first_epoch = 0
    state = load_resume_state(resume_path, fingerprint)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        result = TrainResult([EpochStats(**h) for h in state["history"]], list(state["labels"]))
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        first_epoch = state["next_epoch"]
        log.info("resuming from %s at epoch %d of %d", resume_path, first_epoch, config.epochs)

    for epoch in range(first_epoch, config.epochs):
        start = time.perf_counter()
        features = extract_features(model, records, config.height, config.width, config.feature_batch_size,
                                    config.workers, device, desc=f"epoch {epoch} features", progress=progress)
        extract_s = time.perf_counter() - start
        # --- seam: DDO (distance fusion) and SCNet (secondary clustering) replace this call ---
        pseudo = cluster_features(features, cluster_config)
        labels = pseudo.labels
        if pseudo.num_clusters == 0:
            raise NoClusterError(
                f"epoch {epoch}: DBSCAN found no cluster among {len(labels)} samples "
                f"(eps={cluster_config.eps}, min_samples={cluster_config.min_samples}); "
                f"try a larger cluster.eps or a smaller cluster.min_samples")
        sizes = np.bincount(labels[labels >= 0])

        start = time.perf_counter()
        losses: list[float] = []
        lr = optimizer.param_groups[0]["lr"]
        memory = ClusterMemory.from_labels(torch.from_numpy(features), torch.from_numpy(labels),
                                           temperature=config.temperature,
                                           momentum=config.memory_momentum).to(device)
        kept = np.flatnonzero(labels >= 0)
        dataset = ImageDataset([records[i] for i in kept], transform, labels=labels[kept].tolist())
        sampler = CameraAwarePKSampler(labels[kept], camids[kept], config.num_instances,
                                       seed=config.seed * 1000 + epoch)
        loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler,
                            num_workers=config.workers, collate_fn=collate_images,
                            drop_last=len(sampler) >= config.batch_size,
                            persistent_workers=config.workers > 0)
        batches = _cycle(loader)
        model.train()
        memory.train()
        for _ in range(config.iters):
            images, targets, _, _ = next(batches)
            loss = memory(model(images.to(device)), targets.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        scheduler.step()

        stats = EpochStats(
            epoch=epoch,
            num_samples=len(labels),
            num_clusters=pseudo.num_clusters,
            num_outliers=pseudo.num_outliers,
            outlier_ratio=pseudo.num_outliers / max(len(labels), 1),
            mean_cluster_size=float(sizes.mean()),
            max_cluster_size=int(sizes.max()),
            min_cluster_size=int(sizes.min()),
            loss=float(np.mean(losses)) if losses else float("nan"),
            lr=lr,
            extract_s=extract_s,
            knn_s=pseudo.timings["knn_s"],
            jaccard_s=pseudo.timings["jaccard_s"],
            dbscan_s=pseudo.timings["dbscan_s"],
            train_s=time.perf_counter() - start,
            **label_quality(labels, truth),
        )
        log.info("epoch %d: %d clusters, %d outliers, purity %.3f, loss %.3f "
                 "(features %.1fs, kNN %.1fs, Jaccard %.1fs, DBSCAN %.1fs, train %.1fs)", epoch, stats.num_clusters,
                 stats.num_outliers, stats.purity, stats.loss, stats.extract_s, stats.knn_s, stats.jaccard_s,
                 stats.dbscan_s, stats.train_s)
        result.history.append(stats)
        result.labels.append(labels)
        if on_epoch_end is not None:
            on_epoch_end(stats, labels)
        if resume_path is not None:
            _save_state(Path(resume_path), fingerprint, epoch + 1, model, optimizer, scheduler, result, extra or {})
    return result
