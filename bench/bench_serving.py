"""Load test of `mlflow models serve`: throughput, latency and error codes under concurrent, partly bad traffic.

    python bench/bench_serving.py [--requests 1000] [--concurrency 8] [--batch 8] [--malformed 0.1]
                                  [--checkpoint models/model.pt] [--workers 1] [--runtime auto|torch|onnxruntime]
                                  [--arch resnet18 --size 64x32 | --profile cpu-imagenet] [--output floats|base64]

Logs the checkpoint (default: models/model.pt when it exists, else a random-init DSFNet network at 64×32)
as the pipeline's pyfunc model into a temporary sqlite registry, serves it on 127.0.0.1, sends the requests
(each `--batch` real synthetic crops; a `--malformed` share are broken in turn: not JSON, no image
column, not an image, an empty batch) and prints requests/s, images/s, p50/p99 latency and the 2xx/4xx/5xx
counts (5xx must stay 0), then the bare forward the server runs (`dsfnet.features.embed_images`, flip on)
on the same batch in this process, and the ratio served/bare (goal ≥ 0.8). `--output base64` asks for the
embeddings as base64 float32 rows (request params) instead of JSON numbers.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np
import requests
import torch

from dsfnet.checkpoint import load_checkpoint, save_checkpoint
from dsfnet.config import DSFNetConfig
from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.data.images import decode_image
from dsfnet.data.transforms import build_test_transform
from dsfnet.features import embed_images, embed_images_onnx
from dsfnet.inference import OnnxNetwork, resolve_runtime
from dsfnet.models import ModelConfig, build_model
from pipeline.profiles import profile_params
from pipeline.serving import OUTPUTS, encode_embeddings, encode_image, log_reid_model

MALFORMED = [
    ("not JSON", "{ this is not json"),
    ("no image column", json.dumps({"dataframe_split": {"columns": ["img"], "data": [["x"]]}})),
    ("not an image", json.dumps({"dataframe_split": {"columns": ["image"], "data": [[encode_image(b"nope" * 50)]]}})),
    ("empty batch", json.dumps({"dataframe_split": {"columns": ["image"], "data": []}})),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(root: Path, uri: str, workers: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri,
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    process = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", "models:/dsfnet-reid/1",
                                "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", str(workers)],
                               cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    for _ in range(360):
        try:
            if requests.get(f"{url}/ping", timeout=2).status_code == 200:
                return process, url
        except requests.ConnectionError:
            time.sleep(0.5)
    os.killpg(process.pid, signal.SIGTERM)
    raise SystemExit("the server did not answer /ping within 3 minutes")


def send_all(url: str, bodies: list[str], concurrency: int) -> tuple[list[tuple[int, float, str]], float]:
    """(status, seconds, body) of every request, sent `concurrency` at a time, and the wall time of it all."""
    sessions = [requests.Session() for _ in range(concurrency)]

    def send(i: int) -> tuple[int, float, str]:
        start = time.perf_counter()
        response = sessions[i % concurrency].post(f"{url}/invocations", data=bodies[i], timeout=120,
                                                  headers={"Content-Type": "application/json"})
        return response.status_code, time.perf_counter() - start, bodies[i]

    send(0)  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(send, range(len(bodies))))
    return results, time.perf_counter() - start


def bare_images_per_s(model: torch.nn.Module, batch: torch.Tensor, runtime: str, seconds: float = 10.0) -> float:
    """What the server's own forward (`embed_images`, flip on, in `runtime`) does without HTTP, decoding or
    batching."""
    if resolve_runtime(runtime, model.arch) == "onnxruntime":
        onnx = OnnxNetwork.export(model, *batch.shape[2:])
        forward = lambda: embed_images_onnx(onnx, batch, flip=True)  # noqa: E731
    else:
        forward = lambda: embed_images(model, batch, flip=True)  # noqa: E731
    for _ in range(3):
        forward()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        forward()
        runs += 1
    return runs * len(batch) / (time.perf_counter() - start)


def encoding_ms(embeddings: np.ndarray, repeats: int = 20) -> dict[str, float]:
    """Milliseconds MLflow's scoring server spends writing one response of these embeddings, per output form."""
    from mlflow.pyfunc.scoring_server import predictions_to_json

    forms = {"floats": embeddings, "base64": encode_embeddings(embeddings)}
    timings = {}
    for name, predictions in forms.items():
        start = time.perf_counter()
        for _ in range(repeats):
            predictions_to_json(predictions, io.StringIO())
        timings[name] = (time.perf_counter() - start) / repeats * 1000
    return timings


def report(args: argparse.Namespace, results: list[tuple[int, float, str]], good: str, wall: float,
           bare: float, encoding: dict[str, float]) -> None:
    codes = np.array([code for code, _, _ in results])
    latency = np.array([seconds for _, seconds, _ in results]) * 1000
    good_latency = np.array([seconds for _, seconds, body in results if body is good]) * 1000
    images_per_s = sum(1 for code, _, body in results if body is good and code == 200) * args.batch / wall
    print(f"{args.requests} requests, concurrency {args.concurrency}, {args.batch} images each, "
          f"{args.malformed:.0%} malformed, server workers {args.workers}, torch threads {torch.get_num_threads()}, "
          f"model {args.described}, runtime {args.runtime} ({args.resolved}), output {args.output}")
    print(f"wall {wall:.1f} s: {args.requests / wall:.1f} requests/s, {images_per_s:.1f} images/s served")
    print(f"latency all: p50 {np.percentile(latency, 50):.0f} ms, p99 {np.percentile(latency, 99):.0f} ms; "
          f"well-formed: p50 {np.percentile(good_latency, 50):.0f} ms, p99 {np.percentile(good_latency, 99):.0f} ms")
    ok, client_errors = int(((codes >= 200) & (codes < 300)).sum()), int(((codes >= 400) & (codes < 500)).sum())
    print(f"status: 2xx {ok}, 4xx {client_errors}, 5xx {int((codes >= 500).sum())}")
    print(f"bare forward (flip-averaged, batch {args.batch}): {bare:.1f} images/s; served/bare = "
          f"{images_per_s / bare:.2f} (goal >= 0.8)")
    print(f"MLflow's JSON encoding of one response ({args.batch} embeddings of {args.embedding_dim} floats): "
          + ", ".join(f"output {name} {ms:.1f} ms" for name, ms in encoding.items()))
    if (codes >= 500).any():
        raise SystemExit("5xx responses: the server failed on some requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--batch", type=int, default=8, help="images per well-formed request")
    parser.add_argument("--malformed", type=float, default=0.1)
    parser.add_argument("--checkpoint", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers of the server")
    parser.add_argument("--arch", default="resnet18", help="network of the random-init model (no --checkpoint)")
    parser.add_argument("--size", default="64x32", help="HEIGHTxWIDTH of the random-init model")
    parser.add_argument("--profile", help="a random-init model of this profile's network, input size and DSFNet "
                                          "parts instead of --arch/--size's FINet network (e.g. cpu-imagenet)")
    parser.add_argument("--runtime", default="auto", choices=["auto", "torch", "onnxruntime"],
                        help="the served model's runtime (model config)")
    parser.add_argument("--output", default=OUTPUTS[0], choices=OUTPUTS,
                        help="the embeddings as JSON numbers or as base64 float32 rows (request params)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        checkpoint = args.checkpoint
        if not checkpoint.is_file():
            torch.manual_seed(0)
            checkpoint = root / "model.pt"
            height, width = (int(v) for v in args.size.split("x"))
            config, method = ModelConfig(arch=args.arch), DSFNetConfig()
            if args.profile:
                params = profile_params(args.profile)
                config, method, height, width = params.model, params.dsfnet, params.train.height, params.train.width
            save_checkpoint(checkpoint, build_model(config, method), config, height=height, width=width)
            parts = "+".join(p for p in ("finet", "scnet", "ddo") if getattr(method, p).enabled) or "baseline"
            args.described = f"random-init {args.profile + ' ' if args.profile else ''}({parts})"
        model, payload = load_checkpoint(checkpoint)
        if args.checkpoint.is_file():
            args.described = checkpoint.name
        args.described += f" {model.arch} {'x'.join(map(str, payload['input_size']))}"
        args.resolved = resolve_runtime(args.runtime, model.arch)
        paths = [r.path for r in generate_synthetic(root / "data", SyntheticConfig(profile="tiny"),
                                                    progress=False).query[: args.batch]]
        transform = build_test_transform(*payload["input_size"])
        batch = torch.stack([decode_image(Path(path).read_bytes(), transform) for path in paths])
        good = json.dumps({"dataframe_split": {"columns": ["image"], "data": [[encode_image(p)] for p in paths]},
                           **({"params": {"output": "base64"}} if args.output == "base64" else {})})
        rng = np.random.default_rng(0)
        bodies = [MALFORMED[i % len(MALFORMED)][1] if rng.random() < args.malformed else good
                  for i in range(args.requests)]

        uri = f"sqlite:///{root / 'mlflow.db'}"
        os.chdir(root)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        with mlflow.start_run():
            log_reid_model(checkpoint, flip=True, registered_model_name="dsfnet-reid", runtime=args.runtime)
        process, url = start_server(root, uri, args.workers)
        try:
            results, wall = send_all(url, bodies, args.concurrency)
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
    with torch.inference_mode():
        embeddings = embed_images(model.eval(), batch, flip=True).numpy()
    args.embedding_dim = embeddings.shape[1]
    report(args, results, good, wall, bare_images_per_s(model, batch, args.runtime), encoding_ms(embeddings))


if __name__ == "__main__":
    main()
