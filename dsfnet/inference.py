"""The eval forward through ONNX Runtime: the same features (to 1e-6 measured, 1e-4 promised) at up to twice
PyTorch's CPU speed for MobileNetV2, whose depthwise convolutions PyTorch runs slowly on CPU.

Feature passes (clustering, evaluation; search stays in PyTorch) take `runtime`: `torch`, `onnxruntime`, or
`auto`: ONNX Runtime for the architectures where it measured faster, on the CPU, for passes of at least
`MIN_IMAGES_FOR_ONNXRUNTIME` images, when it is installed (`pip install '.[onnx]'`); PyTorch otherwise. The
network is exported afresh for each pass (its weights change every epoch), with TorchScript-based export,
which takes a few seconds against tens for the newer torch.export-based one.
"""

from __future__ import annotations

import importlib.util
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from dsfnet.config import FEATURE_RUNTIMES as RUNTIMES

FASTER_IN_ONNXRUNTIME = ("mobilenet_v2",)  # bench/bench_cpu.py: ResNet-18 at 64x32 is no faster there
# each pass exports the network afresh (2-4 s on 2 cores): below this many images that costs more than it saves
MIN_IMAGES_FOR_ONNXRUNTIME = 2048
BRANCH_NAMES = ("global", "parts", "fused", "weights")


def onnxruntime_installed() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("onnx", "onnxruntime"))


def resolve_runtime(runtime: str, arch: str, device: torch.device | str = "cpu",
                    setting: str = "train.feature_runtime", images: int | None = None) -> str:
    """`torch` or `onnxruntime`: what a feature pass of an `arch` network on `device` over `images` images
    (None: a server's stream of batches) runs; errors name `setting`."""
    if runtime not in RUNTIMES:
        raise ValueError(f"{setting} must be one of {list(RUNTIMES)}, got {runtime!r}")
    on_cpu = torch.device(device).type == "cpu"
    if runtime == "onnxruntime":
        if not on_cpu:
            raise ValueError(f"{setting}: onnxruntime runs on the CPU; on a GPU use torch")
        if not onnxruntime_installed():
            raise ValueError(f"{setting}: onnxruntime needs `pip install '.[onnx]'` (onnx, onnxruntime)")
        return "onnxruntime"
    worth_exporting = images is None or images >= MIN_IMAGES_FOR_ONNXRUNTIME
    if runtime == "auto" and on_cpu and arch in FASTER_IN_ONNXRUNTIME and worth_exporting and onnxruntime_installed():
        return "onnxruntime"
    return "torch"


class _Branches(nn.Module):
    """`ReIDNet.embed` as a graph with one output per branch the network has."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t for t in self.network.embed(images) if t is not None)


class _Embedding(nn.Module):
    """The retrieval embedding (`ReIDNet` in eval mode)."""

    def __init__(self, network: nn.Module):
        super().__init__()
        self.network = network

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(images)


def export_onnx(network: nn.Module, path: str | Path, height: int, width: int, branches: bool = False) -> list[str]:
    """Write the eval-mode network (any batch size, `height`×`width` RGB input named `images`) to `path`.

    `branches`: every branch of `embed` (outputs named as in `BRANCH_NAMES`); otherwise the one L2-normalised
    retrieval embedding (output `embedding`). Returns the output names. The network's mode is left as it was.
    """
    has_parts = network.num_parts > 0  # integration weights too: uniform ones without FINet's head (DDO alone)
    names = ([n for n, present in zip(BRANCH_NAMES, (True, has_parts, True, has_parts), strict=True) if present]
             if branches else ["embedding"])
    was_training = network.training  # before .eval() below, which switches the wrapped network too
    graph = (_Branches if branches else _Embedding)(network).eval()
    device = next(network.parameters()).device
    example = torch.zeros(2, 3, height, width, device=device)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TorchScript-based export is deprecated, and still the fast one
            torch.onnx.export(graph, (example,), str(path), input_names=["images"], output_names=names,
                              dynamic_axes={"images": {0: "batch"}, **{n: {0: "batch"} for n in names}},
                              dynamo=False)
    finally:
        network.train(was_training)
    return names


class OnnxNetwork:
    """An ONNX file from `export_onnx`, run by ONNX Runtime on the CPU with PyTorch's thread count; called on a
    batch, returns {output name: tensor}. `OnnxNetwork.export(network, ...)`: a snapshot of a network."""

    def __init__(self, path: str | Path):
        self.session = _session(path)
        self.names = [output.name for output in self.session.get_outputs()]

    @classmethod
    def export(cls, network: nn.Module, height: int, width: int, branches: bool = False) -> OnnxNetwork:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "network.onnx"
            export_onnx(network, path, height, width, branches)
            return cls(path)  # the session holds the graph: the file may go

    def __call__(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        outputs = self.session.run(self.names, {"images": np.ascontiguousarray(images.cpu().numpy())})
        return {name: torch.from_numpy(value) for name, value in zip(self.names, outputs, strict=True)}


def _session(path: str | Path):
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
