"""Stage `evaluate`: Market-protocol mAP and CMC of the trained model, rank-list pictures, embeddings.

Writes metrics/evaluate.json, plots/cmc.csv (a DVC plot) and reports/evaluate/: the CMC curve, a rank
list for a fixed sample of queries, the worst queries by AP, and the query/gallery embeddings.
"""

from __future__ import annotations

import logging

import mlflow
import numpy as np
import pandas as pd
from matplotlib.figure import Figure  # the OO API: no pyplot, no GUI backend

from dsfnet.checkpoint import load_checkpoint
from dsfnet.data import read_manifest
from dsfnet.evaluation import cosine_distance, evaluate_ranks, ranked_gallery, rerank_distance, summarise_ranks
from dsfnet.features import extract_features
from dsfnet.trainer import resolve_device
from dsfnet.visualize import rank_list_figure
from pipeline import tracking
from pipeline.cli import run_stage
from pipeline.io import staged_dir, write_csv, write_json
from pipeline.params import Params
from pipeline.paths import CHECKPOINT, CMC_PLOT, EVALUATE_REPORTS, MANIFEST, metrics_file

log = logging.getLogger(__name__)
RANK_LIST_LENGTH = 10


def _arrays(records):
    return np.array([r.pid for r in records]), np.array([r.camid for r in records])


def _metrics(distmat, q, g, max_rank: int, prefix: str = "") -> tuple[dict, np.ndarray, np.ndarray]:
    (q_pids, q_cams), (g_pids, g_cams) = q, g
    ap, first = evaluate_ranks(distmat, q_pids, g_pids, q_cams, g_cams)  # once: both summaries come from it
    mean_ap, cmc = summarise_ranks(ap, first, min(max_rank, distmat.shape[1]))
    metrics = {f"{prefix}mAP": 100 * mean_ap, f"{prefix}valid_queries": int((first >= 0).sum()),
               **{f"{prefix}rank{k}": 100 * float(cmc[k - 1]) for k in (1, 5, 10) if k <= len(cmc)}}
    return metrics, cmc, np.where(first >= 0, ap, np.nan)


def _cmc_figure(curves: dict[str, np.ndarray], title: str) -> Figure:
    fig = Figure(figsize=(5, 3.5))
    ax = fig.subplots()
    for label, cmc in curves.items():
        ax.plot(np.arange(1, len(cmc) + 1), 100 * cmc, marker=".", label=label)
    ax.set(xlabel="rank", ylabel="matching rate (%)", ylim=(0, 100), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


def _rank_list(dataset, distmat, rows: np.ndarray, ap: np.ndarray, caption: str):
    q_arrays, g_arrays = _arrays(dataset.query), _arrays(dataset.gallery)
    rankings = np.stack([ranked_gallery(distmat[r], q_arrays[0][r], q_arrays[1][r], *g_arrays, RANK_LIST_LENGTH)
                         for r in rows])
    captions = [caption.format(ap=100 * ap[r], path=dataset.query[r].path.rsplit("/", 1)[-1]) for r in rows]
    return rank_list_figure([dataset.query[r] for r in rows], dataset.gallery, rankings, captions)


def not_evaluated(reason: str) -> None:
    """Own data without a test split: say so in the metrics (register decides what that means), no reports."""
    with staged_dir(EVALUATE_REPORTS) as out:
        (out / "README.txt").write_text(f"not evaluated: {reason}\n")
    write_csv(CMC_PLOT, pd.DataFrame({"rank": [], "cmc_plain": []}))
    write_json(metrics_file("evaluate"), {"evaluated": False, "reason": reason})
    log.warning("not evaluated: %s", reason)


def evaluate(params: Params) -> None:
    """Evaluate models/model.pt on the manifest's query × gallery."""
    cfg = params.evaluate
    dataset = read_manifest(MANIFEST, name=params.dataset.name)
    if not dataset.has_test_split:
        not_evaluated(f"dataset {params.dataset.name!r} has no labelled query and gallery: nothing to evaluate on "
                      f"(add query/ and gallery/ folders, or query and gallery rows to the manifest)")
        return
    device = resolve_device(params.train.device)
    model, payload = load_checkpoint(CHECKPOINT, map_location=device)
    height, width = payload["input_size"]
    extract = dict(height=height, width=width, batch_size=cfg.batch_size, device=device,
                   workers=params.train.workers, flip=cfg.flip, runtime=params.train.feature_runtime)
    query = extract_features(model, dataset.query, desc="query features", **extract)
    gallery = extract_features(model, dataset.gallery, desc="gallery features", **extract)
    q, g = _arrays(dataset.query), _arrays(dataset.gallery)
    distmat = cosine_distance(query, gallery)
    metrics, cmc, ap = _metrics(distmat, q, g, cfg.max_rank)
    curves = {"plain": cmc}
    if cfg.rerank:
        reranked = rerank_distance(query, gallery, k1=cfg.rerank_k1, k2=cfg.rerank_k2, lambda_value=cfg.rerank_lambda)
        rerank_metrics, curves["re-ranked"], _ = _metrics(reranked, q, g, cfg.max_rank, prefix="rerank_")
        metrics.update(rerank_metrics)
    metrics.update(evaluated=True, num_query=len(dataset.query), num_gallery=len(dataset.gallery), flip=cfg.flip)

    write_csv(CMC_PLOT, pd.DataFrame({"rank": np.arange(1, len(cmc) + 1),
                                      **{f"cmc_{k.replace('-', '')}": 100 * v for k, v in curves.items()}}))
    valid = np.flatnonzero(~np.isnan(ap))
    sample = valid[np.linspace(0, len(valid) - 1, min(cfg.rank_list_queries, len(valid))).astype(int)]
    worst = valid[np.argsort(ap[valid], kind="stable")[: min(5, len(valid))]]
    with staged_dir(EVALUATE_REPORTS) as out:
        title = f"CMC — mAP {metrics['mAP']:.1f}%, rank-1 {metrics['rank1']:.1f}%"
        _cmc_figure(curves, title).savefig(out / "cmc.png", dpi=120)
        _rank_list(dataset, distmat, sample, ap, "AP {ap:.1f}%  {path}").save(out / "rank_list.png")
        _rank_list(dataset, distmat, worst, ap, "worst: AP {ap:.1f}%  {path}").save(out / "worst_queries.png")
        for split, feats in (("query", query), ("gallery", gallery)):
            records = getattr(dataset, split)
            np.savez_compressed(out / f"embeddings_{split}.npz", features=feats,
                                paths=np.array([r.path for r in records]), pids=_arrays(records)[0],
                                camids=_arrays(records)[1])
    write_json(metrics_file("evaluate"), metrics)

    tracking.configure(params.mlflow)
    with mlflow.start_run(run_id=tracking.training_run_id()):
        mlflow.log_metrics({f"eval.{k}": v for k, v in tracking.finite(metrics).items()})
        for name in ("cmc.png", "rank_list.png", "worst_queries.png"):
            mlflow.log_artifact(str(EVALUATE_REPORTS / name), artifact_path="reports")
    log.info("mAP %.1f%%  rank-1 %.1f%%  rank-5 %.1f%%  rank-10 %.1f%%  (%d valid queries)", metrics["mAP"],
             metrics["rank1"], metrics.get("rank5", float("nan")), metrics.get("rank10", float("nan")),
             metrics["valid_queries"])
    if cfg.rerank:
        log.info("re-ranked: mAP %.1f%%  rank-1 %.1f%%", metrics["rerank_mAP"], metrics["rerank_rank1"])


def main(argv: list[str] | None = None) -> int:
    return run_stage("evaluate", evaluate, argv)


if __name__ == "__main__":
    raise SystemExit(main())
