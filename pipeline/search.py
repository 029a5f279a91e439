"""Search a folder of person crops for the people most similar to a query image.

    python -m pipeline.search --model models:/dsfnet-reid@champion --gallery DIR --query IMG [--top-k 10]
    python -m pipeline.search --model models/model.pt --gallery DIR --query IMG --png strip.png

Each gallery embedding is cached under `--cache` (default DIR/.dsfnet-cache/) in a file named by a hash of
(model checkpoint, image bytes): a later run embeds only new or changed images, and another model shares none.
Images are decoded and embedded as the served model does (`dsfnet.features`). Scores are cosine similarities
of the L2-normalised embeddings, searched exactly.
"""

from __future__ import annotations

# Being a submodule, this runs pipeline/__init__.py first: analytics are off before MLflow is imported.
import argparse
import hashlib
import logging
import os
import pickle
import re
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from tqdm import tqdm

from dsfnet.atomic import atomic_path, sha256_file
from dsfnet.checkpoint import load_checkpoint
from dsfnet.data.images import ImageLimits, decode_image
from dsfnet.data.transforms import build_test_transform
from dsfnet.features import embed_images
from dsfnet.visualize import BLUE, image_row
from pipeline.params import ParamsError, tracking_uri

log = logging.getLogger("pipeline.search")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_DIRNAME = ".dsfnet-cache"
# Part of every cache key: bump it when preprocessing changes, so stale embeddings are never reused.
# 2: embeddings without flip are the model's output as is (no second normalisation), as evaluate has them.
CACHE_VERSION = "2"
# A scheme followed by ":/" (models:/, runs:/, file:///, s3://...); two letters at least, so C:/ is a path.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")


class SearchError(Exception):
    """A problem with the user's input (model, gallery, query); main prints it without a traceback."""


class QueryError(SearchError):
    """The query image cannot be read or decoded."""


class Match(NamedTuple):
    path: Path
    score: float


def _reason(error: BaseException) -> str:
    """The first line only: a user needs the gist, not a library's multi-line detail."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def resolve_checkpoint(model: str | Path, workdir: Path) -> tuple[Path, dict]:
    """(checkpoint file, model config) behind `model`: a local file, or an MLflow model's "checkpoint" artifact.

    An existing file wins over a URI reading of its name. The pyfunc model (pipeline/serving.py) ships the logged
    file byte for byte, so both share one embedding cache; its `model_config` (e.g. {"flip": true}) makes search
    embed as the served model does.
    """
    if isinstance(model, Path) or Path(model).exists() or not _URI.match(model):
        if not Path(model).is_file():
            raise SearchError(f"model checkpoint {Path(model)} does not exist (give a .pt file or an MLflow model URI)")
        return Path(model), {}
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.models.model import MODEL_CONFIG

    store = _tracking_store(model)
    registry = os.environ.get("MLFLOW_REGISTRY_URI") or store
    try:  # the store passed in, not set as MLflow's global URIs: a library call leaves no trace
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=model, dst_path=str(workdir), tracking_uri=store,
                                                         registry_uri=registry))
        conf = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    except (MlflowException, OSError) as error:
        raise SearchError(f"cannot load MLflow model {model} from {store}: {error}") from None
    artifact = conf.get("artifacts", {}).get("checkpoint")
    if artifact is None:
        raise SearchError(f"MLflow model {model} has no 'checkpoint' artifact: not a dsfnet-reid model")
    config = conf.get(MODEL_CONFIG)
    return local / artifact["path"], config if isinstance(config, dict) else {}


def _tracking_store(uri: str) -> str:
    """The stages' store (`pipeline.params.tracking_uri`); a missing sqlite file is an error, not a new store."""
    try:
        store = tracking_uri()
    except ParamsError as error:
        raise SearchError(f"cannot resolve {uri}: {error}") from None
    database = Path(store.removeprefix("sqlite:///").split("?")[0])
    if store.startswith("sqlite:///") and not database.is_file():
        raise SearchError(f"cannot resolve {uri}: no MLflow store at {database} (set MLFLOW_TRACKING_URI)")
    return store


class Searcher:
    """Embeds a gallery (through the cache) and answers top-k queries against it.

    `flip` averages each embedding with its mirror image's; None takes it from the MLflow model's config (off
    for a bare checkpoint). After `index`: `embedded` counts the images run through the network (0 on a warm
    cache), `skipped` lists the unreadable gallery files as (path, reason).
    """

    def __init__(self, model: str | Path, batch_size: int = 64, progress: bool = False,
                 device: str | torch.device = "cpu", flip: bool | None = None):
        with tempfile.TemporaryDirectory(prefix="dsfnet-search-") as workdir:
            checkpoint, config = resolve_checkpoint(model, Path(workdir))
            self.model_id = sha256_file(checkpoint)
            try:
                net, payload = load_checkpoint(checkpoint, map_location=device)
                self.model, self.transform = net.to(device), build_test_transform(*payload["input_size"])
            except (pickle.UnpicklingError, EOFError):
                raise SearchError(f"cannot load checkpoint {model}: not a PyTorch checkpoint file") from None
            except KeyError as error:
                raise SearchError(f"cannot load checkpoint {model}: not a dsfnet checkpoint (no {error})") from None
            except (RuntimeError, ValueError, TypeError) as error:
                raise SearchError(f"cannot load checkpoint {model}: {_reason(error)}") from None
        self.limits = ImageLimits.from_config(config)  # the served model's, so search accepts what it accepts
        self.device = torch.device(device)
        self.flip = bool(config.get("flip", False)) if flip is None else flip
        self.batch_size, self.progress = batch_size, progress
        self.paths: list[Path] = []
        self.embeddings = np.zeros((0, self.model.embedding_dim), dtype=np.float32)
        self.embedded, self.skipped = 0, []

    def _decode(self, path: Path) -> torch.Tensor:
        return decode_image(path.read_bytes(), self.transform, self.limits)

    def _embed(self, tensors: list[torch.Tensor]) -> np.ndarray:
        return embed_images(self.model, torch.stack(tensors).to(self.device), self.flip).numpy()

    def _skip(self, path: Path, error: BaseException) -> None:
        log.warning("skipping gallery image %s: %s", path, _reason(error))
        self.skipped.append((path, _reason(error)))

    def index(self, gallery_dir: str | Path, cache_dir: str | Path | None = None) -> Searcher:
        """Embed the images (any case of IMAGE_SUFFIXES, recursively) that the cache lacks; load the rest."""
        gallery = Path(gallery_dir)
        if not gallery.is_dir():
            raise SearchError(f"gallery folder {gallery} does not exist")
        cache = Path(cache_dir) if cache_dir is not None else gallery / CACHE_DIRNAME
        files = sorted(p for p in gallery.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                       and not p.resolve().is_relative_to(cache.resolve()))
        if not files:
            raise SearchError(f"gallery {gallery} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SearchError(f"cannot create the embedding cache {cache} ({error}); pass --cache DIR") from None
        self.skipped, self.embedded = [], 0
        vectors, missing = {}, []
        for path in files:
            try:
                key = f"{CACHE_VERSION}:{self.model_id}:flip={int(self.flip)}:{sha256_file(path)}"
            except OSError as error:
                self._skip(path, error)
                continue
            entry = cache / f"{hashlib.sha256(key.encode()).hexdigest()}.npy"
            try:  # a damaged or foreign entry is a miss (and rewritten), never an error
                vector = np.load(entry, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                vector = None
            if vector is not None and vector.shape == (self.model.embedding_dim,):
                vectors[path] = vector.astype(np.float32)
            else:
                missing.append((path, entry))
        vectors.update(self._embed_into_cache(missing))
        self.paths = [p for p in files if p in vectors]
        if not self.paths:
            raise SearchError(f"gallery {gallery}: none of its {len(files)} image files could be read")
        self.embeddings = np.stack([vectors[p] for p in self.paths])
        return self

    def _embed_into_cache(self, missing: list[tuple[Path, Path]]) -> dict[Path, np.ndarray]:
        """Embed the (image, cache entry) pairs a batch at a time and cache each embedding; skip unreadable ones."""
        vectors: dict[Path, np.ndarray] = {}
        show = self.progress and bool(missing)
        with tqdm(total=len(missing), desc="embedding gallery", unit="img", disable=not show) as bar:
            for start in range(0, len(missing), self.batch_size):
                chunk, decoded = missing[start : start + self.batch_size], []
                for path, entry in chunk:
                    try:
                        decoded.append((path, entry, self._decode(path)))
                    except (OSError, ValueError) as error:  # ValueError: dsfnet.features.ImageDecodeError
                        self._skip(path, error)
                if decoded:
                    for (path, entry, _), vector in zip(decoded, self._embed([t for *_, t in decoded]), strict=True):
                        with atomic_path(entry) as tmp:  # an interrupted run leaves no truncated entry behind
                            np.save(tmp, vector, allow_pickle=False)
                        vectors[path] = vector
                    self.embedded += len(decoded)
                bar.update(len(chunk))
        return vectors

    def embed_query(self, image_path: str | Path) -> np.ndarray:
        path = Path(image_path)
        try:
            tensor = self._decode(path)
        except (OSError, ValueError) as error:
            raise QueryError(f"cannot read query image {path}: {_reason(error)}") from None
        return self._embed([tensor])

    def search(self, image_path: str | Path, k: int = 10) -> list[Match]:
        """The k gallery images most similar to the query, best first (fewer if the gallery is smaller)."""
        return self.search_embedding(self.embed_query(image_path), k)

    def search_embedding(self, query: np.ndarray, k: int = 10) -> list[Match]:
        """As `search`, for a query already embedded (shape (1, D) or (D,), L2-normalised); none for k < 1."""
        scores = self.embeddings @ np.asarray(query, dtype=np.float32).reshape(-1)
        return [Match(self.paths[i], float(scores[i])) for i in np.argsort(-scores, kind="stable")[: max(k, 0)]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.search", description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True,
                        help="a .pt checkpoint, or an MLflow model URI (models:/name@alias, models:/name/1, runs:/...)")
    parser.add_argument("--gallery", required=True, type=Path, help="folder of gallery images (searched recursively)")
    parser.add_argument("--query", required=True, type=Path, help="the query image")
    parser.add_argument("--top-k", type=int, default=10, help="number of matches (default: 10)")
    parser.add_argument("--png", type=Path, help="also write the query and its matches as a PNG strip here")
    parser.add_argument("--cache", type=Path, help=f"embedding cache folder (default: GALLERY/{CACHE_DIRNAME})")
    parser.add_argument("--flip", action=argparse.BooleanOptionalAction, default=None,
                        help="average each embedding with its mirror image's (default: the MLflow model's "
                             "config, off for a .pt file)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass (default: 64)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        if args.top_k < 1:  # before the (slow) gallery pass, as a bad query is
            raise SearchError(f"--top-k must be >= 1, got {args.top_k}")
        searcher = Searcher(args.model, batch_size=args.batch_size, progress=True, flip=args.flip)
        query = searcher.embed_query(args.query)
        matches = searcher.index(args.gallery, args.cache).search_embedding(query, args.top_k)
    except SearchError as error:
        print(f"ERROR [search]: {error}", file=sys.stderr)
        return 2
    log.info("gallery: %d images (%d embedded now, %d from cache, %d skipped)", len(searcher.paths),
             searcher.embedded, len(searcher.paths) - searcher.embedded, len(searcher.skipped))
    print(f"query: {args.query}\n{'rank':>4}  {'score':>7}  path")
    for rank, match in enumerate(matches, start=1):
        print(f"{rank:>4}  {match.score:7.4f}  {match.path}")
    if args.png is not None:  # the query framed as in the evaluate stage's rank lists, then the matches best first
        cells = [(args.query, BLUE, ["query"])] + [(m.path, None, [f"#{rank}", f"{m.score:.4f}"])
                                                   for rank, m in enumerate(matches, start=1)]
        try:
            with atomic_path(args.png) as tmp:
                image_row(cells, pad=True, limits=searcher.limits).save(tmp, format="PNG")
        except OSError as error:
            print(f"ERROR [search]: cannot write {args.png}: {error}", file=sys.stderr)
            return 2
        log.info("wrote %s", args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
