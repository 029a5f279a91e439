"""The pyfunc model locally and behind a real `mlflow models serve` process on 127.0.0.1.

A FINet network (random init: the arithmetic is the point, not retrieval quality) over tiny synthetic
crops, logged with the same helper the register stage uses, into a sqlite registry in a temp dir.
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import requests
import torch
from mlflow.tracking import MlflowClient
from PIL import Image

from dsfnet.checkpoint import save_checkpoint
from dsfnet.config import DSFNetConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.features import extract_features
from dsfnet.models import ModelConfig, build_model
from pipeline.serving import decode_embeddings, encode_image, log_reid_model

HEIGHT, WIDTH = 32, 16
pytestmark = pytest.mark.e2e


def register_champion(root: Path, checkpoint: Path, tags: dict[str, str] | None = None) -> str:
    """Log `checkpoint` as the register stage does into root/mlflow.db as dsfnet-reid v1 @champion (with
    `tags` on the version); returns the store's URI."""
    uri = f"sqlite:///{root / 'mlflow.db'}"
    cwd = os.getcwd()
    os.chdir(root)  # the default artifact root is relative to the working directory
    try:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        with mlflow.start_run():
            log_reid_model(checkpoint, flip=True, registered_model_name="dsfnet-reid")
        client = MlflowClient()
        client.set_registered_model_alias("dsfnet-reid", "champion", "1")
        for key, value in (tags or {}).items():
            client.set_model_version_tag("dsfnet-reid", "1", key, value)
    finally:
        os.chdir(cwd)
    return uri


def wait_ok(url: str, timeout: float = 240, process: subprocess.Popen | None = None,
            log: Path | None = None) -> None:
    """Until `url` answers 200; fails with the log's tail when `process` exits first or time runs out."""
    tail = (lambda: log.read_text()[-3000:]) if log is not None else (lambda: "")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            pytest.fail(f"{process.args[:4]} exited ({process.returncode}): {tail()}")
        try:
            if requests.get(url, timeout=3).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    pytest.fail(f"{url} did not answer within {timeout:.0f} s: {tail()}")


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """(working dir, tracking URI, query records) with models:/dsfnet-reid@champion registered."""
    root = tmp_path_factory.mktemp("serving")
    torch.manual_seed(0)
    save_checkpoint(root / "model.pt", build_model(ModelConfig(), DSFNetConfig()), ModelConfig(), height=HEIGHT,
                    width=WIDTH)
    data = generate_synthetic(root / "data", SyntheticConfig(profile="tiny", height=HEIGHT * 2, width=WIDTH * 2),
                              progress=False)
    uri = register_champion(root, root / "model.pt")
    return root, uri, data.query[:5]


@pytest.fixture(scope="module")
def local_model(registry):
    root, uri, _ = registry
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.pyfunc.load_model("models:/dsfnet-reid@champion")


def test_local_predictions_equal_the_evaluate_stage_embeddings(registry, local_model):
    root, _, records = registry
    from dsfnet.checkpoint import load_checkpoint

    network, _ = load_checkpoint(root / "model.pt")
    expected = extract_features(network, records, HEIGHT, WIDTH, flip=True, progress=False)
    by_bytes = np.asarray(local_model.predict(pd.DataFrame({"image": [encode_image(r.path) for r in records]})))
    by_path = np.asarray(local_model.predict(pd.DataFrame({"path": [r.path for r in records]})))
    assert by_bytes.shape == (len(records), network.embedding_dim) == (len(records), 3 * 512)
    np.testing.assert_allclose(by_bytes, expected, atol=1e-5)
    np.testing.assert_allclose(by_path, expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(by_bytes, axis=1), 1.0, atol=1e-5)
    assert local_model.metadata.metadata["embedding_dim"] == 3 * 512


def test_the_model_is_logged_as_code_not_as_a_pickle(local_model):
    from mlflow.models.model import MODEL_CODE_PATH

    flavor = local_model.metadata.flavors["python_function"]
    assert Path(flavor[MODEL_CODE_PATH]).name == "serving_model.py" and "python_model" not in flavor
    assert set(flavor["artifacts"]) == {"checkpoint", "onnx"} and flavor["config"]["flip"] is True


def test_the_onnx_file_alone_gives_the_served_embeddings(registry, local_model):
    """A deployment without PyTorch: ONNX Runtime, PIL and numpy, following the metadata's description."""
    import onnxruntime

    _, _, records = registry
    meta = local_model.metadata.metadata
    assert meta["onnx"]["file"] == "artifacts/embedding.onnx" and "minus mean" in meta["onnx"]["input"]
    path = Path(mlflow.artifacts.download_artifacts("models:/dsfnet-reid@champion")) / meta["onnx"]["file"]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    height, width = meta["input_size"]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    pixels = np.stack([(np.asarray(Image.open(r.path).convert("RGB").resize((width, height), Image.BICUBIC))
                        / 255.0 - mean) / std for r in records]).transpose(0, 3, 1, 2).astype(np.float32)
    plain, = session.run(["embedding"], {"images": pixels})
    mirrored, = session.run(["embedding"], {"images": np.ascontiguousarray(pixels[..., ::-1])})
    summed = plain + mirrored
    expected = summed / np.linalg.norm(summed, axis=1, keepdims=True)
    served = np.asarray(local_model.predict(pd.DataFrame({"image": [encode_image(r.path) for r in records]})))
    np.testing.assert_allclose(expected, served, atol=1e-4)


def test_the_server_runs_onnxruntime_when_asked_with_the_same_embeddings(registry, local_model):
    _, _, records = registry
    frame = pd.DataFrame({"image": [encode_image(r.path) for r in records]})
    in_onnx = mlflow.pyfunc.load_model("models:/dsfnet-reid@champion", model_config={"runtime": "onnxruntime"})
    np.testing.assert_allclose(np.asarray(in_onnx.predict(frame)), np.asarray(local_model.predict(frame)),
                               atol=1e-4)
    with pytest.raises(Exception, match="model config runtime must be one of"):
        mlflow.pyfunc.load_model("models:/dsfnet-reid@champion", model_config={"runtime": "tensorrt"})


def test_local_batches_are_chunked_without_changing_the_result(registry, local_model):
    _, _, records = registry
    frame = pd.DataFrame({"image": [encode_image(r.path) for r in records] * 30})  # 150 rows: 3 chunks of 64
    out = np.asarray(local_model.predict(frame))
    assert out.shape[0] == 150
    np.testing.assert_allclose(out[:5], out[-5:], atol=1e-5)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def served(root: Path, uri: str, model: str = "models:/dsfnet-reid@champion"):
    """A real `mlflow models serve` process for `model` of the store at `uri`, on a free loopback port."""
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    log = open(root / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", model,
                                "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                               cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"mlflow models serve exited: {(root / 'server.log').read_text()[-3000:]}")
            try:
                if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow models serve did not answer /ping within 180 s")
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def server(registry):
    root, uri, _ = registry
    with served(root, uri) as url:
        yield url


def invoke(url: str, body, content_type: str = "application/json") -> requests.Response:
    data = body if isinstance(body, (str, bytes)) else __import__("json").dumps(body)
    return requests.post(f"{url}/invocations", data=data, headers={"Content-Type": content_type}, timeout=120)


def images_body(values: list[str], column: str = "image") -> dict:
    return {"dataframe_split": {"columns": [column], "data": [[v] for v in values]}}


def test_served_embeddings_equal_local_predictions(server, registry, local_model):
    _, _, records = registry
    encoded = [encode_image(r.path) for r in records]
    response = invoke(server, images_body(encoded))
    assert response.status_code == 200, response.text
    served = np.array(response.json()["predictions"], dtype=np.float32)
    assert served.shape == (len(records), 3 * 512)
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(served, np.asarray(local_model.predict(pd.DataFrame({"image": encoded}))), atol=1e-5)


def test_base64_output_carries_the_same_float32_numbers(server, registry):
    """`params: {"output": "base64"}`: each row is its float32 bytes; decoded, bit-equal to the JSON floats."""
    import base64
    import json

    _, _, records = registry
    body = images_body([encode_image(r.path) for r in records])
    as_floats = invoke(server, body)
    as_base64 = invoke(server, {**body, "params": {"output": "base64"}})
    assert as_floats.status_code == as_base64.status_code == 200, as_base64.text[:300]
    rows = as_base64.json()["predictions"]
    assert len(rows) == len(records) and all(isinstance(row, str) for row in rows)
    assert len(base64.b64decode(rows[0])) == 4 * 3 * 512  # D float32 values, nothing else
    floats = np.array(json.loads(as_floats.text)["predictions"], dtype=np.float32)
    np.testing.assert_array_equal(decode_embeddings(rows), floats)
    np.testing.assert_array_equal(decode_embeddings(as_floats.json()["predictions"]), floats)
    assert len(as_base64.content) < len(as_floats.content) / 2
    wrong = invoke(server, {**body, "params": {"output": "float16"}})
    assert wrong.status_code == 400 and "params output must be one of floats, base64" in wrong.text, wrong.text[:300]


def big_png(megabytes: float) -> bytes:
    side = int((megabytes * 2**20 / 3) ** 0.5) + 8
    noise = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)  # incompressible
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG", compress_level=0)
    return buffer.getvalue()


@pytest.mark.parametrize(("name", "body", "content_type", "message"), [
    ("not JSON", "this is not json {", "application/json", "Invalid input"),
    ("missing column", {"dataframe_split": {"columns": ["img"], "data": [["abc"]]}}, "application/json",
     "needs a column 'image'"),
    ("not an image", images_body([encode_image(b"GIF89a but not really an image")]), "application/json",
     "not a readable image"),
    ("not base64", images_body(["%%% not base64 %%%"]), "application/json", "not a base64-encoded image"),
    ("empty batch", {"dataframe_split": {"columns": ["image"], "data": []}}, "application/json", "empty batch"),
    ("server-side path", images_body(["/etc/passwd"], column="path"), "application/json", "local batch use"),
])
def test_bad_requests_get_a_4xx_with_a_clear_message(server, name, body, content_type, message):
    response = invoke(server, body, content_type)
    assert 400 <= response.status_code < 500, (name, response.status_code, response.text[:500])
    assert message in response.text, (name, response.text[:500])
    assert requests.get(f"{server}/ping", timeout=5).status_code == 200


def test_a_20_mb_image_is_refused_and_the_server_stays_up(server, registry):
    data = big_png(20)
    assert len(data) > 20 * 2**20
    response = invoke(server, images_body([encode_image(data)]))
    assert response.status_code == 400 and "over the 10 MB limit" in response.text, response.text[:300]
    _, _, records = registry
    ok = invoke(server, images_body([encode_image(records[0].path)]))
    assert ok.status_code == 200 and len(ok.json()["predictions"]) == 1


def test_the_runtime_falls_back_to_pytorch_for_a_model_logged_without_its_onnx_file():
    from mlflow.exceptions import MlflowException

    from pipeline.serving import serving_runtime

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert serving_runtime("auto", "mobilenet_v2", cpu, "embedding.onnx") == "onnxruntime"
    assert serving_runtime("auto", "mobilenet_v2", cpu, None) == "torch"  # logged without the onnx extra
    assert serving_runtime("auto", "mobilenet_v2", cuda, "embedding.onnx") == "torch"
    assert serving_runtime("onnxruntime", "resnet18", cuda, "embedding.onnx") == "onnxruntime"  # on the CPU
    with pytest.raises(MlflowException, match="logged without embedding.onnx"):
        serving_runtime("onnxruntime", "mobilenet_v2", cpu, None)
    with pytest.raises(MlflowException, match="model config runtime must be one of"):
        serving_runtime("tensorrt", "resnet18", cpu, "embedding.onnx")
