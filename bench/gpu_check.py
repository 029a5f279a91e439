"""The GPU path, measured: one script to run the day a GPU is lent (about 8 minutes on one H100/H200).

    python bench/gpu_check.py [--out bench/results/gpu_check.json]   # make gpu-check
    python bench/gpu_check.py --dry-run                                # the same code, tiny sizes, on CPU

Prints, at the market1501 profile (ResNet-50, 256×128, batch 256 of 16×16, full DSFNet):
- AMP training iterations/s and peak GPU memory, with plain BN and with train.bn_group 64;
- feature extraction images/s (the per-epoch pass that clustering needs);
- kNN + k-reciprocal Jaccard + DBSCAN seconds at N = 12,936 (Market) and 100,000, 2048-d, and which
  kNN backend ran (faiss on the GPU, or torch on the GPU when faiss-gpu is missing or broken);
- evaluation at MSMT17 size (11,659 queries × 82,161 gallery);
- served embeddings images/s: the server's decode + micro-batched forward, 16 concurrent clients;
and checks: an AMP step's loss within 1 % of the float32 step from the same state, the GPU kNN equal to the
CPU result, and the GPU model's embeddings equal to the CPU model's to 1e-3. Exit status 1 if a check fails.
Only torch, torchvision, numpy, scipy, scikit-learn, numba and pillow are needed (faiss and mlflow optional),
so it runs in a stock CUDA PyTorch image. Sections past --budget-s are skipped and say so.
"""

from __future__ import annotations

import argparse
import copy
import io
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the project, when run as a script
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benches

import bench_evaluation  # noqa: E402
import bench_jaccard  # noqa: E402

from dsfnet.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from dsfnet.cluster.scnet import secondary_clustering  # noqa: E402
from dsfnet.config import DSFNetConfig, ModelConfig, TrainConfig  # noqa: E402
from dsfnet.data.images import ImageLimits, decode_image  # noqa: E402
from dsfnet.data.transforms import build_test_transform  # noqa: E402
from dsfnet.features import embed_images  # noqa: E402
from dsfnet.models import build_model  # noqa: E402
from dsfnet.models.bn_groups import use_bn_groups  # noqa: E402
from dsfnet.objective import DSFNetObjective  # noqa: E402
from dsfnet.trainer import build_optimizer, resolve_device, train_step  # noqa: E402

KNN = sys.modules["dsfnet.cluster.knn"]  # the module: the package's `knn` name is the function

SIZES = {
    "full": {"arch": "resnet50", "height": 256, "width": 128, "batch": 256, "instances": 16, "bn_group": 64,
             "train_n": 12936, "clusters": 751, "iters": 20, "warmup": 3, "extract_n": 8192, "feature_batch": 256,
             "knn_n": [12936, 100000], "eval": (11659, 82161, 3060, 15), "requests": 400, "request_images": 8,
             "clients": 16},
    "dry": {"arch": "resnet18", "height": 32, "width": 16, "batch": 16, "instances": 4, "bn_group": 4,
            "train_n": 96, "clusters": 12, "iters": 1, "warmup": 1, "extract_n": 48, "feature_batch": 16,
            "knn_n": [400], "eval": (30, 200, 15, 3), "requests": 8, "request_images": 2, "clients": 4},
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class Report:
    """Figures and checks as they come: printed at once, kept for the JSON file."""

    def __init__(self, budget_s: float):
        self.start = time.perf_counter()
        self.budget_s = budget_s
        self.figures: dict[str, object] = {}
        self.checks: dict[str, dict] = {}
        self.skipped: list[str] = []

    def over_budget(self, section: str) -> bool:
        if time.perf_counter() - self.start > self.budget_s:
            self.skipped.append(section)
            print(f"[{self.elapsed():6.1f}s] {section}: skipped, past --budget-s {self.budget_s:.0f}", flush=True)
            return True
        return False

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def figure(self, name: str, value, text: str) -> None:
        self.figures[name] = value
        print(f"[{self.elapsed():6.1f}s] {text}", flush=True)

    def check(self, name: str, passed: bool, text: str) -> None:
        self.checks[name] = {"passed": bool(passed), "detail": text}
        print(f"[{self.elapsed():6.1f}s] check {name}: {'PASS' if passed else 'FAIL'} ({text})", flush=True)


def training_case(size: dict, device: torch.device, seed: int = 0):
    """Full DSFNet at the profile's size: memories over `train_n` samples in `clusters` pseudo-identities."""
    method = DSFNetConfig()
    model = build_model(ModelConfig(arch=size["arch"]), method, seed=seed)
    dim, parts = model.feature_dim, model.num_parts
    features = bench_jaccard.clustered(size["train_n"], dim * (parts + 1), per_id=size["train_n"] // size["clusters"])
    rng = np.random.default_rng(seed)
    branches = {"fused": features,
                "global": bench_jaccard.clustered(size["train_n"], dim, seed=1),
                "parts": np.stack([bench_jaccard.clustered(size["train_n"], dim, seed=2 + p) for p in range(parts)],
                                  axis=1)}
    primary = rng.integers(0, size["clusters"], size["train_n"])
    proxies = secondary_clustering(features, primary, 0.6, 4)
    labels = proxies.assignment
    objective = DSFNetObjective(branches, labels, method, proxies=proxies)
    # one P×K batch: batch / instances pseudo-identities with `instances` images each
    chosen = rng.choice(np.unique(labels), size["batch"] // size["instances"], replace=False)
    indices = np.concatenate([rng.choice(np.flatnonzero(labels == c), size["instances"]) for c in chosen])
    images = torch.randn(size["batch"], 3, size["height"], size["width"])
    if device.type == "cuda":
        images = images.pin_memory()
    batch = (images, torch.from_numpy(labels[indices]), torch.zeros(len(indices)), torch.from_numpy(indices))
    return model.to(device), objective.to(device), batch, labels


def train_section(report: Report, size: dict, device: torch.device, bn_group: int) -> None:
    name = f"train_bn_group_{bn_group}" if bn_group else "train_plain_bn"
    if report.over_budget(name):
        return
    model, objective, batch, labels = training_case(size, device)
    use_bn_groups(model, bn_group)
    config = TrainConfig(batch_size=size["batch"])
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], config)
    use_amp = device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    model.train()
    objective.train()

    def step():
        train_step(model, objective, optimizer, scaler, batch, labels, device, use_amp)

    for _ in range(size["warmup"]):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = timed(lambda: [step() for _ in range(size["iters"])], device) / size["iters"]
    peak_gb = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    report.figure(name, {"iter_s": seconds, "iters_per_s": 1 / seconds, "images_per_s": size["batch"] / seconds,
                         "peak_gb": peak_gb, "amp": use_amp},
                  f"{name}: {1 / seconds:.2f} it/s ({size['batch'] / seconds:.0f} images/s), "
                  f"peak {peak_gb:.1f} GB, AMP {use_amp}")


def amp_check(report: Report, size: dict, device: torch.device) -> None:
    """One step from the same state with and without AMP: the losses agree to 1 %."""
    if report.over_budget("amp_loss"):
        return
    model, objective, batch, labels = training_case(size, device)
    losses = {}
    for amp in (False, True):
        net, obj = copy.deepcopy(model).train(), copy.deepcopy(objective).train()
        optimizer = build_optimizer([p for p in net.parameters() if p.requires_grad], TrainConfig())
        use_amp = amp and device.type == "cuda"
        scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
        losses[amp] = train_step(net, obj, optimizer, scaler, batch, labels, device, use_amp)[0]
    relative = abs(losses[True] - losses[False]) / abs(losses[False])
    report.check("amp_loss", relative <= 1e-2, f"float32 loss {losses[False]:.5f}, AMP {losses[True]:.5f}, "
                 f"relative difference {relative:.2e}, tolerance 1e-2")


def extraction_section(report: Report, size: dict, device: torch.device) -> None:
    if report.over_budget("extract"):
        return
    model = build_model(ModelConfig(arch=size["arch"]), DSFNetConfig(), seed=0).to(device).eval()
    batch = torch.randn(size["feature_batch"], 3, size["height"], size["width"])
    batch = batch.pin_memory() if device.type == "cuda" else batch
    rounds = max(1, size["extract_n"] // size["feature_batch"])

    def extract():
        for _ in range(rounds):
            out = model.embed(batch.to(device, non_blocking=True))
            out.fused.float().cpu()

    extract()  # warm-up (cudnn picks its kernels)
    seconds = timed(extract, device)
    images = rounds * size["feature_batch"]
    report.figure("extract", {"images_per_s": images / seconds, "images": images},
                  f"feature extraction: {images / seconds:.0f} images/s ({images} images, every branch)")


def embedding_check(report: Report, size: dict, device: torch.device) -> None:
    """The same checkpoint's embeddings on the GPU and on the CPU (float32, flip on, as served)."""
    if report.over_budget("gpu_embeddings_match_cpu"):
        return
    model = build_model(ModelConfig(arch=size["arch"]), DSFNetConfig(), seed=0).eval()
    images = torch.randn(16, 3, size["height"], size["width"])
    on_cpu = embed_images(model, images, flip=True)
    on_device = embed_images(copy.deepcopy(model).to(device), images.to(device), flip=True)
    worst = float((on_cpu - on_device).abs().max())
    tf32 = torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    report.check("gpu_embeddings_match_cpu", worst <= 1e-3,
                 f"max |difference| {worst:.2e} over {images.shape[0]} images, tolerance 1e-3 "
                 f"(TF32 convolutions {'on' if device.type == 'cuda' and tf32 else 'off'})")


def knn_backend() -> str:
    if KNN.faiss is None:
        return "torch on the GPU (faiss not installed)" if torch.cuda.is_available() else "torch on the CPU"
    if KNN.faiss_gpu_usable():
        return "faiss on the GPU"
    return "faiss on the CPU" + (" (faiss GPU unusable or absent)" if torch.cuda.is_available() else "")


def exact_top_k(features: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """CPU reference: float64 inner products in blocks, sorted (ties by index)."""
    x = features.astype(np.float64)
    sims, found = np.empty((len(x), k)), np.empty((len(x), k), dtype=np.int64)
    for start in range(0, len(x), 1024):
        block = x[start : start + 1024] @ x.T
        order = np.argsort(-block, axis=1, kind="stable")[:, :k]
        sims[start : start + 1024] = np.take_along_axis(block, order, 1)
        found[start : start + 1024] = order
    return sims, found


def clustering_section(report: Report, size: dict) -> None:
    backend = knn_backend()
    report.figure("knn_backend", backend, f"kNN backend: {backend}")
    for number, n in enumerate(size["knn_n"]):
        if report.over_budget(f"cluster_{n}"):
            continue
        figures = bench_jaccard.measure(n)
        report.figure(f"cluster_{n}", figures,
                      f"N={n}: kNN {figures['knn_s']:.2f}s, Jaccard (kNN included) {figures['jaccard_s']:.2f}s, "
                      f"DBSCAN {figures['dbscan_s']:.2f}s, {figures['clusters']} clusters, "
                      f"peak host RAM above the features {figures['peak_above_features_mb']:.0f} MB")
        if number == 0 and not report.over_budget("knn_matches_cpu"):
            features = bench_jaccard.clustered(n)
            sims, found = KNN.knn(features, 30)
            ref_sims, ref_found = exact_top_k(features, 30)
            same = float((found == ref_found).mean())
            worst = float(np.abs(sims - ref_sims).max())
            report.check("knn_matches_cpu", worst <= 1e-4 and same >= 0.999,
                         f"{backend} vs float64 CPU at N={n}, k=30: {100 * same:.3f} % of neighbours identical "
                         f"(ties may swap), max |similarity difference| {worst:.1e}")


def evaluation_section(report: Report, size: dict) -> None:
    if report.over_budget("evaluate"):
        return
    bench_evaluation.SIZES["check"] = size["eval"]
    figures = bench_evaluation.measure("check")
    report.figure("evaluate", figures, f"evaluation {figures['queries']} × {figures['gallery']}: "
                  f"{figures['seconds']:.1f}s, peak {figures['peak_mb']:.0f} MB above the distance matrix")


def jpeg(rng: np.random.Generator, height: int, width: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(buffer, format="JPEG")
    return buffer.getvalue()


def serving_section(report: Report, size: dict, device: torch.device) -> None:
    """What the served model does per request (pipeline/serving.py): decode, then the micro-batched forward."""
    if report.over_budget("serve"):
        return
    from pipeline.batching import MicroBatcher

    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "model.pt"
        model_config = ModelConfig(arch=size["arch"])
        save_checkpoint(checkpoint, build_model(model_config, DSFNetConfig(), seed=0), model_config,
                        size["height"], size["width"])
        model, payload = load_checkpoint(checkpoint, map_location="cpu")
    model.to(device).eval()
    transform = build_test_transform(*payload["input_size"])
    batcher = MicroBatcher(lambda images: embed_images(model, images.to(device), flip=True), max_batch=64)
    rng = np.random.default_rng(0)
    bodies = [[jpeg(rng, size["height"], size["width"]) for _ in range(size["request_images"])]
              for _ in range(size["requests"])]

    def request(images: list[bytes]) -> torch.Tensor:
        return batcher(torch.stack([decode_image(data, transform, ImageLimits()) for data in images]))

    request(bodies[0])  # warm-up
    start = time.perf_counter()
    with ThreadPoolExecutor(size["clients"]) as pool:
        results = list(pool.map(request, bodies))
    seconds = time.perf_counter() - start
    images = sum(len(r) for r in results)
    mean_batch = float(np.mean(batcher.batch_sizes))
    report.figure("serve", {"images_per_s": images / seconds, "requests_per_s": len(bodies) / seconds,
                            "mean_forward_batch": mean_batch},
                  f"served embeddings: {images / seconds:.0f} images/s, {len(bodies) / seconds:.0f} requests/s "
                  f"({size['clients']} clients × {size['request_images']} images, mean forward batch "
                  f"{mean_batch:.1f}, flip on)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU: the code path, no figures")
    parser.add_argument("--out", type=Path, help="also write the figures and checks as JSON here")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip the sections that would start later")
    args = parser.parse_args()
    size = SIZES["dry" if args.dry_run else "full"]
    device = torch.device("cpu") if args.dry_run else resolve_device("auto")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    elif not args.dry_run:
        print("no CUDA device: run with --dry-run on a CPU machine", file=sys.stderr)
        return 2
    report = Report(args.budget_s)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    report.figure("machine", {"device": name, "torch": torch.__version__, "python": platform.python_version(),
                              "cpu_threads": torch.get_num_threads()},
                  f"{name}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads, "
                  f"{'dry run' if args.dry_run else 'market1501 profile'}: {size['arch']} "
                  f"{size['height']}×{size['width']}, batch {size['batch']}")
    train_section(report, size, device, 0)
    train_section(report, size, device, size["bn_group"])
    amp_check(report, size, device)
    extraction_section(report, size, device)
    embedding_check(report, size, device)
    clustering_section(report, size)
    evaluation_section(report, size)
    serving_section(report, size, device)
    failed = [name for name, check in report.checks.items() if not check["passed"]]
    print(f"[{report.elapsed():6.1f}s] done: {len(report.checks) - len(failed)} of {len(report.checks)} checks "
          f"passed{', failed: ' + ', '.join(failed) if failed else ''}"
          f"{', skipped: ' + ', '.join(report.skipped) if report.skipped else ''}", flush=True)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"dry_run": args.dry_run, "seconds": report.elapsed(),
                                        "figures": report.figures, "checks": report.checks,
                                        "skipped": report.skipped}, indent=2, default=float) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
