"""Search a folder of person crops for the people most similar to a query image.

    python -m pipeline.search --model models:/dsfnet-reid@champion --gallery DIR --query IMG [--top-k 10]
    python -m pipeline.search --model models/model.pt --gallery DIR --query IMG --png strip.png

The gallery is embedded once: each embedding is cached under `--cache` (default DIR/.dsfnet-cache/) in a
file named by a hash of (model identity, image bytes), so a later run embeds only new or changed images,
and a retrained model never reuses another model's embeddings. Scores are cosine similarities (inner
products of L2-normalised embeddings, searched exactly with faiss `IndexFlatIP`).
"""

from __future__ import annotations

# Being a submodule, this runs pipeline/__init__.py first: analytics are off before MLflow is imported.
import argparse
import hashlib
import io
import logging
import os
import pickle
import re
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

import faiss
import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from dsfnet.checkpoint import load_checkpoint
from dsfnet.data.transforms import build_test_transform
from dsfnet.models import ReIDNet

log = logging.getLogger("pipeline.search")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
CACHE_DIRNAME = ".dsfnet-cache"
# Part of every cache key: bump it when preprocessing changes, so stale embeddings are never reused.
CACHE_VERSION = "1"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# A scheme followed by ":/" (models:/, runs:/, file:///, s3://...); two letters at least, so C:/ is a path.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:/")

# The PNG strip: one tile per image (query first), the crop fitted into THUMB_W×THUMB_H above a label band.
THUMB_W, THUMB_H = 64, 128
LABEL_H = 26
TILE_PAD = 4
TILE_W, TILE_H = THUMB_W + 2 * TILE_PAD, THUMB_H + 2 * TILE_PAD + LABEL_H


class SearchError(Exception):
    """A problem with the user's input (model, gallery, query); main prints it without a traceback."""


class QueryError(SearchError):
    """The query image cannot be read or decoded."""


class Match(NamedTuple):
    path: Path
    score: float


def is_model_uri(model: str | Path) -> bool:
    """An existing local file always wins, so odd file names are never mistaken for URIs."""
    return not isinstance(model, Path) and not Path(model).exists() and bool(_URI.match(model))


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def resolve_checkpoint(model: str | Path, workdir: Path) -> tuple[Path, dict]:
    """(checkpoint file, model config) behind `model`: a local path, or an MLflow model's "checkpoint" artifact.

    The pyfunc model (pipeline/serving.py) ships the checkpoint file itself, so the downloaded file is
    byte-identical to the one logged: the same model found either way shares one embedding cache. The
    config is the pyfunc `model_config` (e.g. {"flip": true}), so search embeds as the served model does.
    """
    if not is_model_uri(model):
        path = Path(model)
        if not path.is_file():
            raise SearchError(f"model checkpoint {path} does not exist (give a .pt file or an MLflow model URI)")
        return path, {}
    from mlflow.exceptions import MlflowException
    from mlflow.models import Model
    from mlflow.models.model import MODEL_CONFIG

    uri = str(model)
    store = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if store == DEFAULT_TRACKING_URI and not Path("mlflow.db").is_file():
        raise SearchError(f"cannot resolve {uri}: no MLflow store at ./mlflow.db (set MLFLOW_TRACKING_URI)")
    try:
        local = Path(mlflow_download(uri, workdir, store))
        conf = Model.load(str(local / "MLmodel")).flavors.get("python_function", {})
    except (MlflowException, OSError) as error:
        raise SearchError(f"cannot load MLflow model {uri} from {store}: {error}") from None
    artifact = conf.get("artifacts", {}).get("checkpoint")
    if artifact is None:
        raise SearchError(f"MLflow model {uri} has no 'checkpoint' artifact: not a dsfnet-reid model")
    config = conf.get(MODEL_CONFIG)
    return local / artifact["path"], config if isinstance(config, dict) else {}


def mlflow_download(uri: str, workdir: Path, store: str) -> str:
    """Passes the store explicitly rather than setting MLflow's global URIs: a library call leaves no trace."""
    import mlflow

    registry = os.environ.get("MLFLOW_REGISTRY_URI") or store
    return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(workdir), tracking_uri=store,
                                               registry_uri=registry)


def list_images(root: Path, exclude: Path | None = None) -> list[Path]:
    """Every .jpg/.jpeg/.png under `root` (any case), sorted, skipping the cache folder."""
    exclude = exclude.resolve() if exclude is not None else None
    found = []
    for path in root.rglob("*"):
        if path.suffix.lower() not in IMAGE_SUFFIXES or not path.is_file():
            continue
        if exclude is not None and path.resolve().is_relative_to(exclude):
            continue
        found.append(path)
    return sorted(found)


def _reason(error: BaseException) -> str:
    """One short line: PIL names an in-memory buffer instead of the file, which says nothing to a user."""
    if isinstance(error, UnidentifiedImageError):
        return "not a decodable image (JPEG/PNG)"
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


def _batches(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class Searcher:
    """Embeds a gallery (through the cache) and answers top-k queries against it.

    `flip` averages each embedding with its mirror image's, as the evaluate stage and the served model
    may; None takes it from the MLflow model's config (off for a bare checkpoint, as in `extract_features`).
    `embedded` counts the images the last `index` call ran through the network (0 on a warm cache);
    `skipped` lists the gallery files that could not be read, as (path, reason).
    """

    def __init__(self, model: str | Path, batch_size: int = 64, progress: bool = False,
                 device: str | torch.device = "cpu", flip: bool | None = None):
        with tempfile.TemporaryDirectory(prefix="dsfnet-search-") as workdir:
            checkpoint, config = resolve_checkpoint(model, Path(workdir))
            self.model_id = file_sha256(checkpoint)
            try:
                net, payload = load_checkpoint(checkpoint, map_location=device)
                height, width = payload["input_size"]
            except (pickle.UnpicklingError, EOFError):
                raise SearchError(f"cannot load checkpoint {model}: not a PyTorch checkpoint file") from None
            except KeyError as error:
                raise SearchError(f"cannot load checkpoint {model}: not a dsfnet checkpoint (no {error})") from None
            except (RuntimeError, ValueError, TypeError) as error:
                raise SearchError(f"cannot load checkpoint {model}: {_reason(error)}") from None
        self.model: ReIDNet = net.to(device).eval()
        self.transform = build_test_transform(height, width)
        self.device = torch.device(device)
        self.flip = bool(config.get("flip", False)) if flip is None else flip
        self.batch_size = batch_size
        self.progress = progress
        self.paths: list[Path] = []
        self.embeddings = np.zeros((0, self.model.embedding_dim), dtype=np.float32)
        self.embedded = 0
        self.skipped: list[tuple[Path, str]] = []
        self._index: faiss.IndexFlatIP | None = None

    def cache_key(self, image_sha256: str) -> str:
        embedding = f"{CACHE_VERSION}:{self.model_id}:flip={int(self.flip)}"
        return hashlib.sha256(f"{embedding}:{image_sha256}".encode()).hexdigest()

    def _decode(self, data: bytes) -> torch.Tensor:
        with Image.open(io.BytesIO(data)) as image:
            return self.transform(image.convert("RGB"))

    @torch.no_grad()
    def _embed(self, tensors: list[torch.Tensor]) -> np.ndarray:
        batch = torch.stack(tensors).to(self.device)
        out = self.model(batch).float()
        if self.flip:
            out = out + self.model(torch.flip(batch, dims=[3])).float()
        return torch.nn.functional.normalize(out, dim=1).cpu().numpy()

    def index(self, gallery_dir: str | Path, cache_dir: str | Path | None = None) -> Searcher:
        """Embed what the cache lacks, load the rest from it, and build the faiss index."""
        gallery = Path(gallery_dir)
        if not gallery.is_dir():
            raise SearchError(f"gallery folder {gallery} does not exist")
        cache = Path(cache_dir) if cache_dir is not None else gallery / CACHE_DIRNAME
        files = list_images(gallery, exclude=cache)
        if not files:
            raise SearchError(f"gallery {gallery} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
        try:
            cache.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise SearchError(f"cannot create the embedding cache {cache} ({error}); pass --cache DIR") from None

        self.skipped, self.embedded = [], 0
        vectors: dict[Path, np.ndarray] = {}
        missing: list[tuple[Path, Path]] = []  # (image, cache file to write)
        for path in files:
            try:
                entry = cache / f"{self.cache_key(file_sha256(path))}.npy"
            except OSError as error:
                self._skip(path, error)
                continue
            vector = _read_cached(entry, self.model.embedding_dim)
            if vector is None:
                missing.append((path, entry))
            else:
                vectors[path] = vector

        show = self.progress and bool(missing)
        with tqdm(total=len(missing), desc="embedding gallery", unit="img", disable=not show) as bar:
            for chunk in _batches(missing, self.batch_size):
                decoded = []
                for path, entry in chunk:
                    try:
                        decoded.append((path, entry, self._decode(path.read_bytes())))
                    except (OSError, ValueError, Image.DecompressionBombError) as error:
                        self._skip(path, error)
                if decoded:
                    for (path, entry, _), vector in zip(decoded, self._embed([t for *_, t in decoded]), strict=True):
                        _write_cached(entry, vector)
                        vectors[path] = vector
                    self.embedded += len(decoded)
                bar.update(len(chunk))

        self.paths = [p for p in files if p in vectors]
        if not self.paths:
            raise SearchError(f"gallery {gallery}: none of its {len(files)} image files could be read")
        self.embeddings = np.stack([vectors[p] for p in self.paths]).astype(np.float32)
        self._index = faiss.IndexFlatIP(self.embeddings.shape[1])
        self._index.add(self.embeddings)
        return self

    def _skip(self, path: Path, error: BaseException) -> None:
        log.warning("skipping gallery image %s: %s", path, _reason(error))
        self.skipped.append((path, _reason(error)))

    def embed_query(self, image_path: str | Path) -> np.ndarray:
        path = Path(image_path)
        try:
            tensor = self._decode(path.read_bytes())
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise QueryError(f"cannot read query image {path}: {_reason(error)}") from None
        return self._embed([tensor])

    def search(self, image_path: str | Path, k: int = 10) -> list[Match]:
        """The k gallery images most similar to the query, best first (fewer if the gallery is smaller)."""
        return self.search_embedding(self.embed_query(image_path), k)

    def search_embedding(self, query: np.ndarray, k: int = 10) -> list[Match]:
        """As `search`, for a query already embedded (shape (1, D) or (D,), L2-normalised)."""
        if self._index is None:
            raise SearchError("call index(gallery_dir) before search()")
        if k < 1:
            raise SearchError(f"top-k must be >= 1, got {k}")
        query = np.ascontiguousarray(query, dtype=np.float32).reshape(1, -1)
        scores, rows = self._index.search(query, min(k, len(self.paths)))
        return [Match(self.paths[row], float(score)) for row, score in zip(rows[0], scores[0], strict=True)
                if row >= 0]


def _read_cached(entry: Path, dim: int) -> np.ndarray | None:
    """A damaged or foreign cache file counts as a miss (it is rewritten), never as an error."""
    try:
        vector = np.load(entry, allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    return vector.astype(np.float32) if vector.shape == (dim,) else None


def _write_cached(entry: Path, vector: np.ndarray) -> None:
    """Atomic (temp file + rename), so an interrupted run never leaves a truncated entry behind."""
    tmp = entry.with_name(f"{entry.stem}.{os.getpid()}.tmp")
    with open(tmp, "wb") as handle:
        np.save(handle, vector.astype(np.float32), allow_pickle=False)
    os.replace(tmp, entry)


def format_table(query: str | Path, matches: Sequence[Match]) -> str:
    lines = [f"query: {query}", f"{'rank':>4}  {'score':>7}  path"]
    lines += [f"{rank:>4}  {m.score:7.4f}  {m.path}" for rank, m in enumerate(matches, start=1)]
    return "\n".join(lines)


def _tile(path: str | Path, lines: Sequence[str], font: ImageFont.ImageFont | ImageFont.FreeTypeFont) -> Image.Image:
    tile = Image.new("RGB", (TILE_W, TILE_H), "white")
    try:
        with Image.open(path) as image:
            thumb = ImageOps.pad(image.convert("RGB"), (THUMB_W, THUMB_H), color=(200, 200, 200))
    except (OSError, ValueError, Image.DecompressionBombError):  # vanished since indexing: grey placeholder
        thumb = Image.new("RGB", (THUMB_W, THUMB_H), (200, 200, 200))
    tile.paste(thumb, (TILE_PAD, TILE_PAD))
    draw = ImageDraw.Draw(tile)
    y = THUMB_H + 2 * TILE_PAD
    for line in lines:
        draw.text((TILE_PAD, y), line, fill="black", font=font)
        y += LABEL_H // 2
    return tile


def strip_size(num_matches: int) -> tuple[int, int]:
    """(width, height) of the strip for a query and `num_matches` results."""
    return (num_matches + 1) * TILE_W, TILE_H


def write_strip(out: str | Path, query: str | Path, matches: Sequence[Match]) -> Path:
    """The query, then the matches left to right, each labelled with its rank and score."""
    font = ImageFont.load_default()
    strip = Image.new("RGB", strip_size(len(matches)), "white")
    strip.paste(_tile(query, ["query"], font), (0, 0))
    for rank, match in enumerate(matches, start=1):
        strip.paste(_tile(match.path, [f"#{rank}", f"{match.score:.4f}"], font), (rank * TILE_W, 0))
    draw = ImageDraw.Draw(strip)
    draw.line([(TILE_W - 1, 0), (TILE_W - 1, TILE_H)], fill=(220, 30, 30), width=2)  # query | results
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    strip.save(out, format="PNG")
    return out


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
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        if args.top_k < 1:
            raise SearchError(f"--top-k must be >= 1, got {args.top_k}")
        if not args.query.is_file():  # before the (slow) gallery pass
            raise QueryError(f"query image {args.query} does not exist")
        searcher = Searcher(args.model, batch_size=args.batch_size, progress=True, flip=args.flip)
        query = searcher.embed_query(args.query)  # a bad query fails before a large gallery is embedded
        searcher.index(args.gallery, args.cache)
        matches = searcher.search_embedding(query, args.top_k)
    except SearchError as error:
        print(f"ERROR [search]: {error}", file=sys.stderr)
        return 2
    log.info("gallery: %d images (%d embedded now, %d from cache, %d skipped)", len(searcher.paths),
             searcher.embedded, len(searcher.paths) - searcher.embedded, len(searcher.skipped))
    print(format_table(args.query, matches))
    if args.png is not None:
        try:
            log.info("wrote %s", write_strip(args.png, args.query, matches))
        except OSError as error:
            print(f"ERROR [search]: cannot write {args.png}: {error}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
