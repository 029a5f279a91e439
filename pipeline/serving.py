"""The MLflow pyfunc model: images in (base64-encoded files), L2-normalised embeddings out.

Request body for `mlflow models serve`:
    {"dataframe_split": {"columns": ["image"], "data": [["<base64 JPEG/PNG>"], ...]}}
Response: {"predictions": [[e_1, ..., e_D], ...]} with unit-norm rows.
"""

from __future__ import annotations

import base64
import binascii
import io
from importlib.metadata import version

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema, TensorSpec
from PIL import Image, UnidentifiedImageError

from dsfnet.checkpoint import load_checkpoint
from dsfnet.data.transforms import build_test_transform

INPUT_COLUMN = "image"


def encode_image(path_or_bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    return base64.b64encode(data).decode("ascii")


class ReIDEmbedder(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        self.model, payload = load_checkpoint(context.artifacts["checkpoint"])
        height, width = payload["input_size"]
        self.transform = build_test_transform(height, width)
        # the same test-time flip averaging as the evaluate stage, so served embeddings are the evaluated ones
        self.flip = bool((context.model_config or {}).get("flip", False))

    def _decode(self, row: int, value: str) -> torch.Tensor:
        try:
            image = Image.open(io.BytesIO(base64.b64decode(value, validate=True)))
            return self.transform(image.convert("RGB"))
        except (binascii.Error, UnidentifiedImageError, ValueError, TypeError) as error:
            raise ValueError(f"row {row}: column {INPUT_COLUMN!r} is not a base64-encoded image ({error})") from None

    @torch.no_grad()
    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        if INPUT_COLUMN not in model_input:
            raise ValueError(f"input needs a column {INPUT_COLUMN!r} of base64-encoded images")
        images = [self._decode(i, v) for i, v in enumerate(model_input[INPUT_COLUMN])]
        if not images:
            return np.zeros((0, self.model.embedding_dim), dtype=np.float32)
        batch = torch.stack(images)
        embeddings = self.model(batch)
        if self.flip:
            embeddings = torch.nn.functional.normalize(embeddings + self.model(torch.flip(batch, dims=[3])), dim=1)
        return embeddings.numpy().astype(np.float32)


def signature(feature_dim: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, feature_dim))]),
    )


def requirements() -> list[str]:
    """Pinned from this environment, so MLflow need not infer them (slow) or guess."""
    names = ["torch", "torchvision", "numpy", "pandas", "pillow", "mlflow"]
    return [f"{name}=={version(name)}" for name in names]
