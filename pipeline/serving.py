"""The MLflow pyfunc model: images in, L2-normalised embeddings out (what `mlflow models serve` runs).

Request body for `mlflow models serve`:
    {"dataframe_split": {"columns": ["image"], "data": [["<base64 JPEG/PNG>"], ...]}}
Response: {"predictions": [[e_1, ..., e_D], ...]}, one unit-norm row per image; D is in the model's
metadata (`embedding_dim`). With `"params": {"output": "base64"}` in the request each row is instead a base64
string of the D little-endian float32 values (`encode_embeddings`; `decode_embeddings` reads either form): the
same numbers, without MLflow's per-float JSON encoding, which took longer than the forward itself
(bench/bench_serving.py prints both encodings' times). For local batch use (`mlflow.pyfunc.load_model(...).predict`)
a `path` column of image files works too; a server refuses it (it would read files on the server's disk).
The registered model also carries the embedding network as ONNX (`artifacts/embedding.onnx`, when the
`onnx` extra is installed), for deployments without PyTorch; its metadata says what goes in and out. With
`runtime` (model config: auto | torch | onnxruntime; auto as train.feature_runtime) the server itself runs it.
Bad input — no image column, an empty batch, bytes that are not an image, an image over
`max_image_mb` or `max_pixels` — raises an MlflowException, which the server answers with HTTP 400 and
the message. MLflow loads the model from code (pipeline/serving_model.py), not from a pickle.
"""

from __future__ import annotations

import base64
import binascii
import io
import os
import tempfile
from importlib.metadata import version
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec
from PIL import Image

from dsfnet.checkpoint import load_checkpoint
from dsfnet.data.images import ImageDecodeError, ImageLimits, decode_image
from dsfnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD, build_test_transform
from dsfnet.features import embed_images, embed_images_onnx
from dsfnet.inference import OnnxNetwork, export_onnx, onnxruntime_installed, resolve_runtime
from dsfnet.runtime import keep_freed_memory
from pipeline.batching import MicroBatcher

INPUT_COLUMN = "image"
PATH_COLUMN = "path"
DEFAULTS = {"flip": True, "batch_size": 64, "max_image_mb": ImageLimits.max_mb,
            "max_pixels": ImageLimits.max_pixels, "runtime": "auto"}
ONNX_FILE = "embedding.onnx"
OUTPUTS = ("floats", "base64")  # request param `output`: JSON numbers, or each row's float32 bytes in base64
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
MODEL_CODE = Path(__file__).with_name("serving_model.py")  # what MLflow runs to build the model


def encode_image(path_or_bytes) -> str:
    data = path_or_bytes if isinstance(path_or_bytes, bytes) else open(path_or_bytes, "rb").read()
    return base64.b64encode(data).decode("ascii")


def encode_embeddings(embeddings: np.ndarray) -> np.ndarray:
    """Each (D,) float32 row as a base64 string of its little-endian bytes: the `output: base64` response."""
    return np.array([base64.b64encode(row.astype("<f4").tobytes()).decode("ascii") for row in embeddings],
                    dtype=object)


def decode_embeddings(predictions) -> np.ndarray:
    """The (N, D) float32 embeddings of a response's "predictions", in either `output` form."""
    rows = list(predictions)
    if rows and isinstance(rows[0], str):
        return np.stack([np.frombuffer(base64.b64decode(row), dtype="<f4") for row in rows]).astype(np.float32)
    return np.asarray(rows, dtype=np.float32)


def bad_input(message: str) -> MlflowException:
    return MlflowException(message, error_code=INVALID_PARAMETER_VALUE)  # HTTP 400 from the scoring server


def _serving() -> bool:
    return os.environ.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "").lower() == "true"


def serving_runtime(runtime: str, arch: str, device: torch.device, onnx_file: str | None) -> str:
    """What the server runs the network in: `onnxruntime` asked for runs on the CPU (even beside a GPU) and
    needs the logged ONNX file; `auto` takes ONNX Runtime only where it is faster and the file exists."""
    try:
        chosen = resolve_runtime(runtime, arch, "cpu" if runtime == "onnxruntime" else device, "model config runtime")
    except ValueError as error:
        raise MlflowException(str(error)) from None
    if chosen == "onnxruntime" and onnx_file is None:
        if runtime == "onnxruntime":
            raise MlflowException(f"model config runtime: onnxruntime, but this model was logged without {ONNX_FILE} "
                                  "(log it again with the onnx extra installed)")
        chosen = "torch"  # logged where the onnx extra was not installed
    return chosen


class ReIDEmbedder(mlflow.pyfunc.PythonModel):
    """Decodes with `dsfnet.features.decode_image` and embeds with `embed_images`: what search and evaluate do."""

    def load_context(self, context) -> None:
        keep_freed_memory()  # no page-fault storm per request (dsfnet/runtime.py)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model, payload = load_checkpoint(context.artifacts["checkpoint"], map_location="cpu")
        self.model.to(self.device)
        self.transform = build_test_transform(*payload["input_size"])
        config = {**DEFAULTS, **(context.model_config or {})}
        # the same test-time flip averaging as the evaluate stage, so served embeddings are the evaluated ones
        self.flip = bool(config["flip"])
        self.batch_size = int(config["batch_size"])
        self.limits = ImageLimits.from_config(config)
        self.runtime = serving_runtime(str(config["runtime"]), self.model.arch, self.device,
                                       context.artifacts.get("onnx"))
        self.onnx = OnnxNetwork(context.artifacts["onnx"]) if self.runtime == "onnxruntime" else None
        # the server calls predict from several threads at once: they decode concurrently and share forwards
        self.batcher = MicroBatcher(self._forward, max_batch=self.batch_size)

    def _open(self, row: int, data: bytes, what: str) -> torch.Tensor:
        try:
            return decode_image(data, self.transform, self.limits)
        except ImageDecodeError as error:
            raise bad_input(f"row {row}: {what} is {error}") from None

    def _decode(self, row: int, value) -> torch.Tensor:
        if not isinstance(value, str | bytes) or not value:
            raise bad_input(f"row {row}: column {INPUT_COLUMN!r} must hold a base64-encoded image, got {value!r:.40}")
        try:
            data = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as error:
            raise bad_input(f"row {row}: column {INPUT_COLUMN!r} is not a base64-encoded image ({error})") from None
        return self._open(row, data, f"column {INPUT_COLUMN!r}")

    def _read(self, row: int, value) -> torch.Tensor:
        if _serving():
            raise bad_input(f"column {PATH_COLUMN!r} is for local batch use; a server takes {INPUT_COLUMN!r} "
                            "(base64-encoded image bytes)")
        path = Path(str(value))
        if not path.is_file():
            raise bad_input(f"row {row}: {path} does not exist")
        return self._open(row, path.read_bytes(), str(path))

    def _forward(self, batch: torch.Tensor) -> torch.Tensor:
        if self.onnx is not None:
            return embed_images_onnx(self.onnx, batch, self.flip)
        return embed_images(self.model, batch.to(self.device), self.flip)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        output = (params or {}).get("output") or OUTPUTS[0]
        if output not in OUTPUTS:
            raise bad_input(f"params output must be one of {', '.join(OUTPUTS)}, got {output!r:.40}")
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        columns = [c for c in (INPUT_COLUMN, PATH_COLUMN) if c in model_input]
        if not columns:  # schema enforcement drops unknown columns: nothing usable was sent
            raise bad_input(f"input needs a column {INPUT_COLUMN!r} of base64-encoded images")
        if len(model_input) == 0:
            raise bad_input("empty batch: send at least one image")
        column = INPUT_COLUMN if INPUT_COLUMN in columns and model_input[INPUT_COLUMN].notna().any() else columns[-1]
        values, load = model_input[column], (self._decode if column == INPUT_COLUMN else self._read)
        out = []
        for start in range(0, len(values), self.batch_size):  # decode and embed a chunk at a time
            chunk = values.iloc[start:start + self.batch_size]
            out.append(self.batcher(torch.stack([load(start + i, v) for i, v in enumerate(chunk)])))
        embeddings = torch.cat(out).numpy().astype(np.float32)
        return encode_embeddings(embeddings) if output == "base64" else embeddings


def signature(embedding_dim: int) -> ModelSignature:
    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN, required=False),
                       ColSpec("string", PATH_COLUMN, required=False)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, embedding_dim))]),
        params=ParamSchema([ParamSpec("output", "string", OUTPUTS[0])]),
    )


def requirements() -> list[str]:
    """Pinned from this environment, so MLflow need not infer them (slow) or guess."""
    names = ["torch", "torchvision", "numpy", "pandas", "pillow", "mlflow"]
    if onnxruntime_installed():
        names += ["onnx", "onnxruntime"]
    return [f"{name}=={version(name)}" for name in names]


def example_image() -> str:
    """A small grey JPEG, base64-encoded: the input example stored with the model."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 64), (128, 128, 128)).save(buffer, format="JPEG")
    return encode_image(buffer.getvalue())


def log_reid_model(checkpoint: str | Path, flip: bool = True, registered_model_name: str | None = None,
                   tags: dict[str, str] | None = None, runtime: str = "auto"):
    """Log the checkpoint as a pyfunc model in the active run (and register it); returns the ModelInfo.
    `runtime`: what the server runs the network in (model config; see the module docstring)."""
    model, payload = load_checkpoint(checkpoint)
    resolve_runtime(runtime, model.arch, "cpu", "runtime")  # a typo fails here, not when the model is served
    height, width = payload["input_size"]
    artifacts, metadata = {"checkpoint": str(checkpoint)}, {}
    with tempfile.TemporaryDirectory() as tmp:
        if onnxruntime_installed():
            artifacts["onnx"] = str(Path(tmp) / ONNX_FILE)
            export_onnx(model, artifacts["onnx"], height, width)
            metadata["onnx"] = {
                "file": f"artifacts/{ONNX_FILE}",
                "input": f"images: float32 (N, 3, {height}, {width}), RGB resized bicubic, scaled to [0, 1], "
                         f"minus mean {list(IMAGENET_MEAN)}, over std {list(IMAGENET_STD)}",
                "output": "embedding: float32 (N, embedding_dim), L2-normalised; the served embedding adds the "
                          "horizontally flipped image's and re-normalises (model config flip)"}
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),
            artifacts=artifacts,
            signature=signature(model.embedding_dim),
            input_example=pd.DataFrame({INPUT_COLUMN: [example_image()]}),
            code_paths=[str(PACKAGE_ROOT / "dsfnet"), str(PACKAGE_ROOT / "pipeline")],
            pip_requirements=requirements(),
            model_config={**DEFAULTS, "flip": flip, "runtime": runtime},
            metadata={"embedding_dim": model.embedding_dim, "input_size": list(payload["input_size"]),
                      "output": "L2-normalised embedding per image", **metadata},
            registered_model_name=registered_model_name,
            tags=tags,
        )
