"""Procedural synthetic pedestrians written in Market-1501 layout.

The embedded default dataset: it needs no download and is deterministic from a seed. Identities differ
in clothing colours, pattern, skin/hair and bag; colours come from a small palette so many identities
share a top or a bottom (hard negatives). Cameras differ in colour cast, brightness, background and
blur, so matching across cameras is harder than within one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from dsfnet.data.market1501 import SPLIT_DIRS, read_market1501
from dsfnet.data.records import DatasetError, ReIDDataset

CLOTHING_PALETTE = np.array(
    [
        (20, 20, 20), (235, 235, 235), (128, 128, 128), (180, 30, 30), (30, 60, 170), (40, 130, 50),
        (230, 200, 40), (120, 70, 30), (240, 130, 30), (120, 40, 140), (240, 150, 180), (30, 140, 150),
        (90, 110, 60), (20, 30, 80),
    ],
    dtype=np.float32,
)
SKIN_TONES = np.array([(250, 215, 180), (225, 180, 140), (190, 140, 100), (140, 95, 60), (95, 60, 40)], np.float32)
HAIR_COLOURS = np.array([(15, 15, 15), (70, 45, 25), (150, 110, 60), (210, 190, 140), (160, 160, 160)], np.float32)
PATTERNS = ("solid", "stripes", "checks")


@dataclass
class SyntheticConfig:
    num_train_ids: int = 100
    num_test_ids: int = 100
    num_cameras: int = 6
    cameras_per_id: int = 3
    images_per_camera: int = 4
    height: int = 128
    width: int = 64
    seed: int = 0


@dataclass(frozen=True)
class _Identity:
    top: np.ndarray
    bottom: np.ndarray
    skin: np.ndarray
    hair: np.ndarray
    pattern: str
    pattern_colour: np.ndarray
    bag: np.ndarray | None
    build: float  # body width factor


@dataclass(frozen=True)
class _Camera:
    gain: np.ndarray  # per-channel colour cast
    brightness: float
    background: np.ndarray
    blur: float
    noise: float


def _make_identity(rng: np.random.Generator) -> _Identity:
    top, bottom = rng.choice(len(CLOTHING_PALETTE), size=2, replace=True)
    jitter = lambda: rng.normal(0, 8, size=3).astype(np.float32)  # noqa: E731 - tiny local helper
    return _Identity(
        top=CLOTHING_PALETTE[top] + jitter(),
        bottom=CLOTHING_PALETTE[bottom] + jitter(),
        skin=SKIN_TONES[rng.integers(len(SKIN_TONES))],
        hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        pattern_colour=CLOTHING_PALETTE[rng.integers(len(CLOTHING_PALETTE))],
        bag=CLOTHING_PALETTE[rng.integers(len(CLOTHING_PALETTE))] if rng.random() < 0.4 else None,
        build=float(rng.uniform(0.85, 1.15)),
    )


def _make_camera(rng: np.random.Generator) -> _Camera:
    return _Camera(
        gain=rng.uniform(0.75, 1.25, size=3).astype(np.float32),
        brightness=float(rng.uniform(0.7, 1.2)),
        background=rng.uniform(40, 200, size=3).astype(np.float32),
        blur=float(rng.uniform(0.0, 1.0)),
        noise=float(rng.uniform(2.0, 10.0)),
    )


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(colour, 0, 255).astype(int)
    return int(r), int(g), int(b)


def render_pedestrian(identity: _Identity, camera: _Camera, rng: np.random.Generator, height: int, width: int):
    """Draw one crop of `identity` as seen by `camera`, with pose/box jitter."""
    scale = 2  # draw large, downsample: smoother edges
    H, W = height * scale, width * scale
    bg = camera.background + rng.normal(0, 10, size=3)
    img = Image.new("RGB", (W, H), _rgb(bg))
    draw = ImageDraw.Draw(img)
    # ground/scene stripe so backgrounds are not flat
    draw.rectangle([0, int(H * rng.uniform(0.6, 0.8)), W, H], fill=_rgb(bg * 0.7))

    cx = W / 2 + rng.normal(0, W * 0.05)
    top_y = H * rng.uniform(0.02, 0.08)
    body_h = H * rng.uniform(0.88, 0.96) - top_y
    half_w = W * 0.22 * identity.build

    head_r = body_h * 0.075
    head_cy = top_y + head_r
    draw.ellipse([cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r], fill=_rgb(identity.skin))
    draw.pieslice([cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r], 180, 360, fill=_rgb(identity.hair))

    torso_top, torso_bot = head_cy + head_r, top_y + body_h * 0.55
    torso = [cx - half_w, torso_top, cx + half_w, torso_bot]
    draw.rectangle(torso, fill=_rgb(identity.top))
    if identity.pattern == "stripes":
        step = max(2, int((torso_bot - torso_top) / 6))
        for y in range(int(torso_top), int(torso_bot), 2 * step):
            draw.rectangle([torso[0], y, torso[2], y + step], fill=_rgb(identity.pattern_colour))
    elif identity.pattern == "checks":
        cell = max(2, int(half_w / 2))
        for i, y in enumerate(range(int(torso_top), int(torso_bot), cell)):
            for j, x in enumerate(range(int(torso[0]), int(torso[2]), cell)):
                if (i + j) % 2:
                    draw.rectangle([x, y, x + cell, y + cell], fill=_rgb(identity.pattern_colour))
    arm_w = half_w * 0.35
    sleeve_bottom = torso_bot - (torso_bot - torso_top) * 0.1
    for x0, x1 in ((cx - half_w - arm_w, cx - half_w), (cx + half_w, cx + half_w + arm_w)):
        draw.rectangle([x0, torso_top, x1, sleeve_bottom], fill=_rgb(identity.top * 0.9))

    leg_top, leg_bot = torso_bot, top_y + body_h
    stride = rng.uniform(0, half_w * 0.5)
    for side in (-1, 1):
        x_in = cx + side * 1
        x_out = cx + side * (half_w * 0.9) + side * stride
        leg = [(x_in, leg_top), (cx + side * half_w * 0.9, leg_top), (x_out, leg_bot),
               (x_in + side * half_w * 0.2, leg_bot)]
        draw.polygon(leg, fill=_rgb(identity.bottom))
        draw.rectangle([min(x_out, x_in), leg_bot - body_h * 0.03, max(x_out, x_in), leg_bot], fill=(25, 25, 25))

    if identity.bag is not None and rng.random() < 0.85:  # sometimes hidden by the viewpoint
        side = 1 if rng.random() < 0.5 else -1
        bx = cx + side * half_w
        draw.rectangle([min(bx, bx + side * half_w * 0.8), torso_top + body_h * 0.1,
                        max(bx, bx + side * half_w * 0.8), torso_bot], fill=_rgb(identity.bag))

    if camera.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(camera.blur * scale))
    img = img.resize((width, height), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    pixels = np.asarray(img, dtype=np.float32)
    pixels = pixels * camera.gain * camera.brightness * rng.uniform(0.9, 1.1)
    pixels += rng.normal(0, camera.noise, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _identity_plan(config: SyntheticConfig, rng: np.random.Generator) -> list[int]:
    return sorted(rng.choice(config.num_cameras, size=config.cameras_per_id, replace=False).tolist())


def generate_synthetic(root: str | Path, config: SyntheticConfig, progress: bool = True) -> ReIDDataset:
    """Write the synthetic benchmark under `root` (Market-1501 layout) and return it as a dataset.

    Train ids are 1..num_train_ids, test ids follow. Each test id contributes one query per camera it
    appears in; its other images go to the gallery, so every query has a cross-camera match.
    """
    if config.cameras_per_id < 2 or config.cameras_per_id > config.num_cameras:
        raise DatasetError(
            f"synthetic.cameras_per_id must be in [2, synthetic.num_cameras={config.num_cameras}], "
            f"got {config.cameras_per_id}"
        )
    if config.images_per_camera < 2:
        raise DatasetError(f"synthetic.images_per_camera must be >= 2, got {config.images_per_camera}")
    root = Path(root)
    for folder in SPLIT_DIRS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for stale in (root / folder).glob("*.jpg"):
            stale.unlink()

    camera_rng = np.random.default_rng([config.seed, 0])
    cameras = [_make_camera(camera_rng) for _ in range(config.num_cameras)]
    total_ids = config.num_train_ids + config.num_test_ids
    for pid in tqdm(range(1, total_ids + 1), desc="synthetic ids", disable=not progress):
        rng = np.random.default_rng([config.seed, 1, pid])
        identity = _make_identity(rng)
        is_train = pid <= config.num_train_ids
        for camid in _identity_plan(config, rng):
            for frame in range(config.images_per_camera):
                image = render_pedestrian(identity, cameras[camid], rng, config.height, config.width)
                name = f"{pid:04d}_c{camid + 1}s1_{frame * 25:06d}_00.jpg"
                split = "train" if is_train else ("query" if frame == 0 else "gallery")
                image.save(root / SPLIT_DIRS[split] / name, quality=92)
    return read_market1501(root, name="synthetic")
