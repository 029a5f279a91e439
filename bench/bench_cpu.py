"""How far each phase of a CPU training epoch is from the machine's floor, on the networks users train on CPU.

    python bench/bench_cpu.py [--profiles cpu-imagenet cpu-default] [--iters 10] [--no-compile]

For each profile (its network, input size, batch and DSFNet parts; random weights, since speed does not
depend on them) on the synthetic default set, in one process:

- the epoch's phases as the trainer runs them: the feature pass (`extract_branches` over the train set from the
  decoded-image cache in the trainer's `train.feature_runtime`, export included, img/s), a train step
  (`train_step` on the epoch's P×K loader: augmentation, every branch, every loss, memory updates, backward,
  Adam; img/s) and kNN + Jaccard + DBSCAN (+ SCNet) seconds;
- floors for the same network and batch: the eval forward under `torch.inference_mode` (eager, channels-last,
  `torch.compile` unless --no-compile, ONNX Runtime when installed, and OpenVINO when installed — not a
  dependency: `pip install openvino` to see it — once in float32 and once at its default precision, which is
  bfloat16 on CPUs with AMX), each checked against the eager features
  (max |difference| after L2 normalisation; ≤ 1e-4 passes), and the bare forward + backward + Adam step of the
  trunk, pool and neck (and, for comparison only, the same step under bfloat16 autocast);
- the ratio of each trainer phase to its best floor (feature pass: the fastest forward that passes the check).

Medians over --iters repetitions after warm-up; nothing else should run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F

from dsfnet.data import SyntheticConfig, generate_synthetic
from dsfnet.features import _eval_batches, extract_branches
from dsfnet.inference import OnnxNetwork, onnxruntime_installed, resolve_runtime
from dsfnet.models import build_model
from dsfnet.objective import DSFNetObjective
from dsfnet.runtime import keep_freed_memory
from dsfnet.trainer import build_optimizer, cycle, epoch_loader, pseudo_labels, train_step
from pipeline.profiles import profile_params

TOLERANCE = 1e-4


def median_seconds(step: Callable[[], object], iters: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def forward_floors(model: torch.nn.Module, images: torch.Tensor, iters: int, compile_: bool) -> dict[str, dict]:
    """img/s and max |difference| to eager of each way to run the eval forward on one batch."""
    model.eval()
    with torch.inference_mode():
        reference = F.normalize(model(images).float(), dim=1)
    floors: dict[str, dict] = {}

    def record(name: str, run: Callable[[], torch.Tensor]) -> None:
        try:
            with torch.inference_mode():
                got = F.normalize(torch.as_tensor(run()).float(), dim=1)
                seconds = median_seconds(run, iters)
        except Exception as error:  # noqa: BLE001 - a floor that cannot run here is reported, not fatal
            floors[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0][:80]}"}
            return
        floors[name] = {"img_s": len(images) / seconds, "max_diff": float((got - reference).abs().max())}

    trainer_format = model.channels_last
    model.set_channels_last(False)
    record("eager", lambda: model(images))
    model.set_channels_last(True)
    record("channels-last", lambda: model(images))
    model.set_channels_last(False)
    if compile_:
        compiled = torch.compile(model)
        start = time.perf_counter()
        record("torch.compile", lambda: compiled(images))
        floors["torch.compile"]["compile_s"] = time.perf_counter() - start
    if onnxruntime_installed():
        onnx = OnnxNetwork.export(model, *images.shape[2:])  # what the trainer's feature passes run
        record("onnxruntime", lambda: onnx(images)["embedding"])
    else:
        floors["onnxruntime"] = {"error": "not installed (pip install '.[onnx]')"}
    for name, network in openvino_networks(model, *images.shape[2:]).items():
        record(name, lambda network=network: network(images.numpy()))
    model.set_channels_last(trainer_format)
    return floors


def openvino_networks(model: torch.nn.Module, height: int, width: int) -> dict[str, Callable]:
    """The exported embedding network compiled by OpenVINO (when installed) in float32 and at its default
    precision, each a callable on a numpy batch; {} without OpenVINO or the onnx extra."""
    if importlib.util.find_spec("openvino") is None or not onnxruntime_installed():
        return {}
    import openvino

    from dsfnet.inference import export_onnx

    core = openvino.Core()
    hint = core.get_property("CPU", "INFERENCE_PRECISION_HINT")
    default = hint.to_string() if hasattr(hint, "to_string") else str(hint)
    networks = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/network.onnx"
        export_onnx(model, path, height, width)
        for label, settings in (("f32", {"INFERENCE_PRECISION_HINT": "f32"}), (f"default, {default}", {})):
            compiled = core.compile_model(path, "CPU", {"INFERENCE_NUM_THREADS": torch.get_num_threads(), **settings})
            request = compiled.create_infer_request()
            networks[f"openvino {label}"] = lambda batch, request=request: request.infer({0: batch})[0].copy()
    return networks


def bare_step_seconds(model: torch.nn.Module, images: torch.Tensor, config, iters: int, bf16: bool = False) -> float:
    """Trunk + pool + neck forward, a trivial loss, backward and the fused Adam step on a batch in memory;
    `bf16`: the forward under CPU bfloat16 autocast (not a floor: its losses are not the float32 ones)."""
    model.train()
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], config)

    if model.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            feature = model.neck(model.pool(model.trunk(images)).flatten(1))
        optimizer.zero_grad(set_to_none=True)
        feature.float().pow(2).mean().backward()
        optimizer.step()
    return median_seconds(step, iters)


def measure(name: str, data, iters: int, compile_: bool, pass_images: int) -> dict:
    params = profile_params(name)
    params.model = replace(params.model, pretrained=None)  # speed does not depend on the weights
    config, method = params.train, params.dsfnet
    torch.manual_seed(0)
    model = build_model(params.model, method)
    records = data.train
    cache: dict = {}
    passed = (records * (pass_images // len(records) + 1))[:pass_images]  # a Market-size pass over these images
    extract = lambda: extract_branches(model, passed, config.height, config.width,  # noqa: E731
                                       config.feature_batch_size, progress=False, cache=cache,
                                       runtime=config.feature_runtime)
    branches = extract_branches(model, records, config.height, config.width, config.feature_batch_size,
                                progress=False, cache=cache, runtime=config.feature_runtime)  # fills the cache
    onnx_passes = resolve_runtime(config.feature_runtime, params.model.arch, images=pass_images) == "onnxruntime"
    start = time.perf_counter()
    if onnx_passes:  # the process's first export, which the trainer pays once per run
        OnnxNetwork.export(model, config.height, config.width, branches=True)
    first_export_s = time.perf_counter() - start
    feature_s = median_seconds(extract, max(1, iters // 3), warmup=0)
    # the pass's two costs outside the forward: the network's export (ONNX Runtime only) and the test batches
    export_s = (median_seconds(lambda: OnnxNetwork.export(model, config.height, config.width, branches=True),
                               max(1, iters // 3), warmup=1)
                if onnx_passes else 0.0)
    batches_s = median_seconds(lambda: sum(1 for _ in _eval_batches(model, passed, config.height, config.width,
                                                                     config.feature_batch_size, 0, "cpu", "", False,
                                                                     cache)),
                               max(1, iters // 3), warmup=0)
    camids = np.array([r.camid for r in records])
    start = time.perf_counter()
    clustered = pseudo_labels(branches, params.cluster, method, 0, config.epochs, camids)
    cluster_s = time.perf_counter() - start
    objective = DSFNetObjective(branches, clustered.labels, method, config.temperature, config.memory_momentum,
                                clustered.proxies, config.memory_update).train()
    loader = epoch_loader(records, clustered.labels, config, 0, image_cache=cache)
    kept = clustered.labels >= 0
    proxy_of = clustered.proxies.assignment[kept] if clustered.proxies is not None else None
    batches = cycle(loader)
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], config)
    model.train()
    step_s = median_seconds(lambda: train_step(model, objective, optimizer, torch.amp.GradScaler("cuda", enabled=False),
                                               next(batches), proxy_of, torch.device("cpu"), False), iters)
    images = next(batches)[0]  # one train batch, augmented as the trainer gets it
    trainer_format = model.channels_last
    bare = {}
    for on in (False, True):
        model.set_channels_last(on)
        bare["channels-last" if on else "contiguous"] = config.batch_size / bare_step_seconds(model, images, config,
                                                                                             iters)
    model.set_channels_last(trainer_format)
    best_bare = max(bare, key=bare.get)
    bf16_img_s = config.batch_size / bare_step_seconds(model, images, config, iters, bf16=True)
    test_batch = torch.randn(config.feature_batch_size, 3, config.height, config.width)
    floors = forward_floors(model, test_batch, iters, compile_)
    return {"profile": name, "arch": params.model.arch, "size": f"{config.height}x{config.width}",
            "batch": config.batch_size, "images": len(records), "pass_images": pass_images,
            "feature_img_s": pass_images / feature_s, "feature_s": feature_s, "export_s": export_s,
            "batches_s": batches_s, "first_export_s": first_export_s, "bare_bf16_img_s": bf16_img_s,
            "trainer_format": "channels-last" if trainer_format else "contiguous",
            "trainer_runtime": resolve_runtime(config.feature_runtime, params.model.arch, images=pass_images),
            "train_img_s": config.batch_size / step_s, "bare_train_img_s": bare[best_bare],
            "bare_floor": best_bare, "bare_by_format": bare,
            "cluster_s": cluster_s, **{f"{k}": v for k, v in clustered.timings.items()}, "floors": floors}


def report(row: dict) -> str:
    floors = row["floors"]
    passing = {k: v for k, v in floors.items() if "img_s" in v and v["max_diff"] <= TOLERANCE}
    best = max(passing, key=lambda k: passing[k]["img_s"])
    lines = [f"{row['profile']}: {row['arch']} {row['size']}, train batch {row['batch']}, {row['images']} images "
             f"(feature pass over {row['pass_images']}), "
             f"trainer runs {row['trainer_format']}, feature passes in {row['trainer_runtime']}"
             + (" (exported afresh each pass, as every epoch)" if row["trainer_runtime"] == "onnxruntime" else ""),
             f"  {'phase':<34} {'trainer':>10} {'floor':>10} {'ratio':>6}",
             f"  {'feature pass (img/s)':<34} {row['feature_img_s']:>10.0f} {passing[best]['img_s']:>10.0f} "
             f"{passing[best]['img_s'] / row['feature_img_s']:>6.2f}  (floor: {best}; the pass's "
             f"{row['feature_s']:.1f} s hold {row['export_s']:.1f} s of export and {row['batches_s']:.1f} s "
             f"of test batches from the cache; the process's first export took {row['first_export_s']:.1f} s)",
             f"  {'train step (img/s)':<34} {row['train_img_s']:>10.0f} {row['bare_train_img_s']:>10.0f} "
             f"{row['bare_train_img_s'] / row['train_img_s']:>6.2f}  (floor: bare fwd+bwd+Adam, "
             f"{row['bare_floor']}; " + ", ".join(f"{k} {v:.0f}" for k, v in row["bare_by_format"].items())
             + f"; bf16 autocast {row['bare_bf16_img_s']:.0f}, not a floor: other losses)",
             f"  {'kNN + Jaccard + DBSCAN (+SCNet) s':<34} {row['cluster_s']:>10.2f}   (kNN {row['knn_s']:.2f}, "
             f"Jaccard {row['jaccard_s']:.2f}, DBSCAN+SCNet {row['dbscan_s']:.2f})",
             "  forward floors (img/s, max |diff| to eager after L2 norm):"]
    for name, floor in floors.items():
        if "error" in floor:
            lines.append(f"    {name:<22} {floor['error']}")
        else:
            extra = f", compile {floor['compile_s']:.0f} s" if "compile_s" in floor else ""
            verdict = "ok" if floor["max_diff"] <= TOLERANCE else "DIFFERS"
            lines.append(f"    {name:<22} {floor['img_s']:>8.0f}  {floor['max_diff']:.1e} {verdict}{extra}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["cpu-imagenet", "cpu-default"])
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile floor")
    parser.add_argument("--synthetic", default="default", help="synthetic profile of the images (tiny for a check)")
    parser.add_argument("--pass-images", type=int, default=9914,
                        help="images in the measured feature pass (the train images repeated; default: the Market "
                             "validation split's train set)")
    args = parser.parse_args()
    applied = keep_freed_memory()
    print(f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__},"
          f" malloc keeps freed memory: {applied}", flush=True)
    with tempfile.TemporaryDirectory() as root:
        data = generate_synthetic(root, SyntheticConfig(profile=args.synthetic, height=128, width=64),
                                  progress=False)
        for name in args.profiles:
            print(report(measure(name, data, args.iters, args.compile, args.pass_images)), flush=True)


if __name__ == "__main__":
    main()
