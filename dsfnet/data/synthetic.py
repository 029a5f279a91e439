"""Procedural synthetic pedestrians written in Market-1501 layout: the offline benchmark.

Deterministic from a seed and hard in the ways real ReID is hard:
- inter-class similar: clothing colours come from a small, skewed palette (black, grey, navy, white are
  common), so many identities share a top or a bottom;
- intra-class dissimilar: every camera has its own white balance, brightness/contrast, blur, noise,
  resolution, background scene, typical viewpoint (front/back/side change what is visible: a logo, a
  backpack, the face), box jitter and occlusions, so one person varies more across cameras than two
  people do within one camera;
- the gallery holds distractors (pid 0000) and junk boxes (pid -1) as Market-1501 does.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from dsfnet.data.market1501 import SPLIT_DIRS, read_market1501
from dsfnet.data.records import DatasetError, ReIDDataset

# Clothing palette, most common first: colours are drawn with probability ∝ 1/(rank+1.5).
CLOTHING_PALETTE = np.array(
    [
        (25, 25, 28), (125, 125, 130), (30, 40, 90), (235, 235, 235), (60, 90, 160), (120, 75, 40),
        (180, 30, 35), (40, 110, 55), (220, 190, 50), (235, 130, 40), (120, 45, 140), (235, 150, 185),
        (35, 140, 150), (95, 110, 60),
    ],
    dtype=np.float32,
)
SKIN_TONES = np.array([(250, 215, 180), (225, 180, 140), (190, 140, 100), (140, 95, 60), (95, 60, 40)], np.float32)
HAIR_COLOURS = np.array([(15, 15, 15), (70, 45, 25), (150, 110, 60), (210, 190, 140), (160, 160, 160)], np.float32)
TEXTURES = ("solid", "stripes", "checks", "logo")
VIEWPOINTS = ("front", "back", "side")
SCENES = ("plain", "gradient", "pavement", "buildings")


@dataclass
class SyntheticConfig:
    """Sizes come from `profile` (tiny | default | market); any size set here overrides the profile."""

    profile: str = "default"
    num_train_ids: int | None = None
    num_test_ids: int | None = None
    num_cameras: int | None = None
    cameras_per_id: int | None = None  # most cameras one identity appears in (at least 2)
    images_per_camera: int | None = None  # most images of one identity in one camera (at least 2)
    num_distractors: int | None = None  # gallery images of people outside the test set (pid 0000)
    num_junk: int | None = None  # gallery boxes with no usable person (pid -1), dropped at load
    height: int = 128
    width: int = 64
    seed: int = 0

    def resolved(self) -> SyntheticConfig:
        if self.profile not in PROFILES:
            raise DatasetError(f"synthetic.profile must be one of {sorted(PROFILES)}, got {self.profile!r}")
        base = PROFILES[self.profile]
        sizes = {f: getattr(self, f) if getattr(self, f) is not None else base[f] for f in base}
        return dataclasses.replace(self, **sizes)


PROFILES: dict[str, dict[str, int]] = {
    # seconds: for tests
    "tiny": dict(num_train_ids=10, num_test_ids=6, num_cameras=3, cameras_per_id=2, images_per_camera=3,
                 num_distractors=4, num_junk=2),
    # minutes on 2 CPU cores: `make run`
    "default": dict(num_train_ids=100, num_test_ids=100, num_cameras=6, cameras_per_id=4, images_per_camera=4,
                    num_distractors=60, num_junk=20),
    # Market-1501 scale (~750 train ids, ~13k train images): benchmarks
    "market": dict(num_train_ids=750, num_test_ids=750, num_cameras=6, cameras_per_id=6, images_per_camera=6,
                   num_distractors=2000, num_junk=500),
}


@dataclass(frozen=True)
class Identity:
    build: float  # torso width factor
    stature: float  # body height factor
    skin: np.ndarray
    hair: np.ndarray
    long_hair: bool
    top: np.ndarray
    texture: str
    texture_colour: np.ndarray
    bottom: np.ndarray
    shorts: bool
    shoes: np.ndarray
    bag: str | None  # backpack | handbag
    bag_colour: np.ndarray
    hat: np.ndarray | None


@dataclass(frozen=True)
class Camera:
    gain: np.ndarray  # per-channel white balance
    brightness: float
    contrast: float
    blur: float
    noise: float
    resolution: float  # fraction of the output size the camera really resolves
    scene: str
    scene_colours: np.ndarray  # (3, 3) colours of the background scene
    viewpoints: np.ndarray  # probabilities of front / back / side
    jitter: float  # box jitter, as a fraction of the box
    occlusion: float  # probability that something covers part of the person


def _palette_colour(rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / (np.arange(len(CLOTHING_PALETTE)) + 1.5)
    index = rng.choice(len(CLOTHING_PALETTE), p=weights / weights.sum())
    return CLOTHING_PALETTE[index] + rng.normal(0, 7, size=3).astype(np.float32)


def make_identity(rng: np.random.Generator) -> Identity:
    bag = rng.choice(["none", "backpack", "handbag"], p=[0.5, 0.3, 0.2])
    return Identity(
        build=float(rng.uniform(0.8, 1.2)),
        stature=float(rng.uniform(0.88, 1.0)),
        skin=SKIN_TONES[rng.integers(len(SKIN_TONES))],
        hair=HAIR_COLOURS[rng.integers(len(HAIR_COLOURS))],
        long_hair=bool(rng.random() < 0.35),
        top=_palette_colour(rng),
        texture=str(rng.choice(TEXTURES, p=[0.55, 0.2, 0.1, 0.15])),
        texture_colour=_palette_colour(rng),
        bottom=_palette_colour(rng),
        shorts=bool(rng.random() < 0.2),
        shoes=_palette_colour(rng) * 0.6,
        bag=None if bag == "none" else str(bag),
        bag_colour=_palette_colour(rng),
        hat=_palette_colour(rng) if rng.random() < 0.15 else None,
    )


def make_camera(rng: np.random.Generator) -> Camera:
    return Camera(
        gain=rng.uniform(0.8, 1.2, size=3).astype(np.float32),
        brightness=float(rng.uniform(0.7, 1.2)),
        contrast=float(rng.uniform(0.7, 1.2)),
        blur=float(rng.uniform(0.0, 1.0)),
        noise=float(rng.uniform(2.0, 10.0)),
        resolution=float(rng.uniform(0.4, 1.0)),
        scene=str(rng.choice(SCENES)),
        # streets are mostly grey and brown: muted scene colours, a grey level plus a small tint
        scene_colours=(rng.uniform(60, 190, size=(3, 1)) + rng.uniform(-25, 25, size=(3, 3))).astype(np.float32),
        viewpoints=rng.dirichlet([0.6, 0.6, 0.6]),
        jitter=float(rng.uniform(0.02, 0.08)),
        occlusion=float(rng.uniform(0.0, 0.25)),
    )


def _rgb(colour: np.ndarray) -> tuple[int, int, int]:
    r, g, b = np.clip(colour, 0, 255).astype(int)
    return int(r), int(g), int(b)


def _draw_scene(draw: ImageDraw.ImageDraw, camera: Camera, rng: np.random.Generator, W: int, H: int) -> None:
    sky, ground, accent = (c + rng.normal(0, 8, size=3) for c in camera.scene_colours)
    horizon = int(H * rng.uniform(0.55, 0.8))
    if camera.scene == "gradient":
        for y in range(0, H, 4):
            t = y / H
            draw.rectangle([0, y, W, y + 4], fill=_rgb(sky * (1 - t) + ground * t))
        return
    draw.rectangle([0, 0, W, H], fill=_rgb(sky))
    if camera.scene == "plain":
        return
    draw.rectangle([0, horizon, W, H], fill=_rgb(ground))
    if camera.scene == "pavement":
        step = max(4, H // 12)
        for y in range(horizon, H, step):
            draw.line([0, y, W, y], fill=_rgb(ground * 0.75), width=2)
    else:  # buildings: a few blocks and windows behind the person
        for _ in range(3):
            x0 = int(rng.uniform(-0.2, 0.9) * W)
            top = int(rng.uniform(0.05, 0.4) * H)
            draw.rectangle([x0, top, x0 + int(W * rng.uniform(0.3, 0.6)), horizon], fill=_rgb(accent))
            for wy in range(top + 6, horizon - 6, 14):
                draw.rectangle([x0 + 4, wy, x0 + 10, wy + 6], fill=_rgb(accent * 0.6))


def render_pedestrian(identity: Identity, camera: Camera, rng: np.random.Generator, height: int, width: int,
                      viewpoint: str | None = None, person: bool = True) -> Image.Image:
    """One crop of `identity` as `camera` sees it (viewpoint, jitter, occlusion, optics)."""
    scale = 2  # draw at twice the size, then downsample: smoother edges
    H, W = height * scale, width * scale
    img = Image.new("RGB", (W, H))
    draw = ImageDraw.Draw(img)
    _draw_scene(draw, camera, rng, W, H)
    view = viewpoint or str(rng.choice(VIEWPOINTS, p=camera.viewpoints))

    if person:
        jitter = camera.jitter
        cx = W / 2 + rng.normal(0, jitter) * W
        top_y = H * (0.03 + abs(rng.normal(0, jitter)))
        body_h = H * identity.stature * rng.uniform(1 - jitter, 1.0) - top_y
        half_w = W * 0.25 * identity.build * (0.7 if view == "side" else 1.0)
        _draw_person(draw, identity, view, rng, cx, top_y, body_h, half_w)

    if rng.random() < camera.occlusion:  # a pole, a car, another pedestrian's shoulder
        kind = rng.integers(3)
        colour = _rgb(rng.uniform(20, 200, size=3))
        if kind == 0:
            x = rng.uniform(0, W)
            draw.rectangle([x, 0, x + W * rng.uniform(0.1, 0.25), H], fill=colour)
        elif kind == 1:
            draw.rectangle([0, H * rng.uniform(0.55, 0.75), W, H], fill=colour)
        else:
            side = rng.choice([0, W])
            draw.ellipse([side - W * 0.35, H * 0.2, side + W * 0.35, H * 0.8], fill=colour)

    if camera.blur > 0:
        img = img.filter(ImageFilter.GaussianBlur(camera.blur * scale))
    low = (max(8, int(width * camera.resolution)), max(16, int(height * camera.resolution)))
    img = img.resize(low, Image.BILINEAR).resize((width, height), Image.BILINEAR)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    pixels = np.asarray(img, dtype=np.float32)
    pixels = (pixels - 128.0) * camera.contrast + 128.0
    pixels = pixels * camera.gain * camera.brightness * rng.uniform(0.9, 1.1)
    pixels += rng.normal(0, camera.noise, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _draw_person(draw: ImageDraw.ImageDraw, ident: Identity, view: str, rng: np.random.Generator,
                 cx: float, top_y: float, body_h: float, half_w: float) -> None:
    torso_top = _draw_head(draw, ident, view, cx, top_y, body_h)
    torso_bot = top_y + body_h * 0.55
    _draw_torso(draw, ident, view, cx, half_w, torso_top, torso_bot)
    _draw_legs(draw, ident, view, rng, cx, top_y, body_h, half_w, torso_bot)
    _draw_bag(draw, ident, view, rng, cx, body_h, half_w, torso_top, torso_bot)


def _draw_head(draw: ImageDraw.ImageDraw, ident: Identity, view: str, cx: float, top_y: float,
               body_h: float) -> float:
    """Head, hair and hat; returns where the torso starts."""
    head_r = body_h * 0.075
    head_cy = top_y + head_r
    head = [cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r]
    if view == "back":
        draw.ellipse(head, fill=_rgb(ident.hair))
    else:
        draw.ellipse(head, fill=_rgb(ident.skin))
        draw.pieslice(head, 180, 360, fill=_rgb(ident.hair))
    if ident.long_hair:
        draw.rectangle([cx - head_r, head_cy, cx + head_r, head_cy + head_r * 1.6], fill=_rgb(ident.hair))
        if view != "back":
            draw.ellipse([cx - head_r * 0.7, head_cy - head_r * 0.5, cx + head_r * 0.7, head_cy + head_r * 0.9],
                         fill=_rgb(ident.skin))
    if ident.hat is not None:
        draw.rectangle([cx - head_r * 1.15, head_cy - head_r * 1.1, cx + head_r * 1.15, head_cy - head_r * 0.3],
                       fill=_rgb(ident.hat))

    return head_cy + head_r


def _draw_torso(draw: ImageDraw.ImageDraw, ident: Identity, view: str, cx: float, half_w: float,
                torso_top: float, torso_bot: float) -> None:
    """Top with its texture, and the sleeves."""
    torso = [cx - half_w, torso_top, cx + half_w, torso_bot]
    draw.rectangle(torso, fill=_rgb(ident.top))
    tex = _rgb(ident.texture_colour)
    if ident.texture == "stripes":
        step = max(2, int((torso_bot - torso_top) / 6))
        for y in range(int(torso_top), int(torso_bot), 2 * step):
            draw.rectangle([torso[0], y, torso[2], min(y + step, torso_bot)], fill=tex)
    elif ident.texture == "checks":
        cell = max(2, int(half_w / 2))
        for i, y in enumerate(range(int(torso_top), int(torso_bot), cell)):
            for j, x in enumerate(range(int(torso[0]), int(torso[2]), cell)):
                if (i + j) % 2:
                    draw.rectangle([x, y, min(x + cell, torso[2]), min(y + cell, torso_bot)], fill=tex)
    elif ident.texture == "logo" and view == "front":  # a chest print only shows from the front
        r = half_w * 0.45
        cy = torso_top + (torso_bot - torso_top) * 0.35
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tex)

    arm_w = half_w * (0.5 if view == "side" else 0.35)
    sleeve_bottom = torso_bot - (torso_bot - torso_top) * 0.1
    arms = [(cx - half_w * 0.3, cx + half_w * 0.3)] if view == "side" else \
        [(cx - half_w - arm_w, cx - half_w), (cx + half_w, cx + half_w + arm_w)]
    for x0, x1 in arms:
        draw.rectangle([x0, torso_top, x1, sleeve_bottom], fill=_rgb(ident.top * 0.85))



def _draw_legs(draw: ImageDraw.ImageDraw, ident: Identity, view: str, rng: np.random.Generator, cx: float,
               top_y: float, body_h: float, half_w: float, torso_bot: float) -> None:
    leg_top, leg_bot = torso_bot, top_y + body_h
    knee = leg_top + (leg_bot - leg_top) * 0.45
    stride = rng.uniform(0, half_w * (0.8 if view == "side" else 0.4))
    for side in (-1, 1):
        x_in = cx + side * 1
        x_out = cx + side * (half_w * 0.85 + stride)
        leg = [(x_in, leg_top), (cx + side * half_w * 0.9, leg_top), (x_out, leg_bot),
               (x_in + side * half_w * 0.2, leg_bot)]
        draw.polygon(leg, fill=_rgb(ident.bottom))
        if ident.shorts:
            draw.rectangle([min(x_in, x_out), knee, max(x_in, x_out), leg_bot], fill=_rgb(ident.skin))
        draw.rectangle([min(x_out, x_in), leg_bot - body_h * 0.03, max(x_out, x_in), leg_bot],
                       fill=_rgb(ident.shoes))



def _draw_bag(draw: ImageDraw.ImageDraw, ident: Identity, view: str, rng: np.random.Generator, cx: float,
              body_h: float, half_w: float, torso_top: float, torso_bot: float) -> None:
    bag = _rgb(ident.bag_colour)
    if ident.bag == "backpack":
        if view == "back":  # the whole pack covers the back
            draw.rectangle([cx - half_w * 0.8, torso_top + body_h * 0.04, cx + half_w * 0.8, torso_bot * 0.98],
                           fill=bag)
        elif view == "side":
            draw.rectangle([cx + half_w, torso_top + body_h * 0.04, cx + half_w * 1.7, torso_bot * 0.95], fill=bag)
        else:  # straps only
            for sx in (-0.6, 0.6):
                draw.line([cx + sx * half_w, torso_top, cx + sx * half_w, torso_bot * 0.9], fill=bag, width=3)
    elif ident.bag == "handbag" and view != "back":
        side = 1 if view == "side" else rng.choice([-1, 1])
        bx = cx + side * half_w * 1.2
        draw.rectangle([min(bx, bx + side * half_w * 0.8), torso_bot - body_h * 0.05,
                        max(bx, bx + side * half_w * 0.8), torso_bot + body_h * 0.12], fill=bag)


def _market_name(pid: int, camid: int, frame: int) -> str:
    return f"{pid:04d}_c{camid + 1}s1_{frame:06d}_00.jpg" if pid >= 0 else f"-1_c{camid + 1}s1_{frame:06d}_00.jpg"


def generate_synthetic(root: str | Path, config: SyntheticConfig, progress: bool = True) -> ReIDDataset:
    """Write the benchmark under `root` (Market-1501 layout) and return it as read back.

    Train ids are 1..num_train_ids, test ids follow. Each identity appears in 2..cameras_per_id cameras
    with 2..images_per_camera images each; a test identity gives one query per camera, the rest go to the
    gallery, so every query has a cross-camera match.
    """
    cfg = config.resolved()
    if not 2 <= cfg.cameras_per_id <= cfg.num_cameras:
        raise DatasetError(f"synthetic.cameras_per_id must be in [2, synthetic.num_cameras={cfg.num_cameras}], "
                           f"got {cfg.cameras_per_id}")
    if cfg.images_per_camera < 2:
        raise DatasetError(f"synthetic.images_per_camera must be >= 2, got {cfg.images_per_camera}")
    if min(cfg.num_train_ids, cfg.num_test_ids) < 1:
        raise DatasetError("synthetic.num_train_ids and synthetic.num_test_ids must be >= 1")
    root = Path(root)
    for folder in SPLIT_DIRS.values():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for stale in (root / folder).glob("*.jpg"):
            stale.unlink()

    camera_rng = np.random.default_rng([cfg.seed, 0])
    cameras = [make_camera(camera_rng) for _ in range(cfg.num_cameras)]
    total_ids = cfg.num_train_ids + cfg.num_test_ids
    for pid in tqdm(range(1, total_ids + 1), desc="synthetic identities", disable=not progress):
        rng = np.random.default_rng([cfg.seed, 1, pid])
        identity = make_identity(rng)
        num_cams = int(rng.integers(2, cfg.cameras_per_id + 1))
        split_dir = "train" if pid <= cfg.num_train_ids else None
        for camid in sorted(rng.choice(cfg.num_cameras, size=num_cams, replace=False).tolist()):
            for frame in range(int(rng.integers(2, cfg.images_per_camera + 1))):
                image = render_pedestrian(identity, cameras[camid], rng, cfg.height, cfg.width)
                split = split_dir or ("query" if frame == 0 else "gallery")
                image.save(root / SPLIT_DIRS[split] / _market_name(pid, camid, frame * 25), quality=92)

    extras = np.random.default_rng([cfg.seed, 2])
    gallery = root / SPLIT_DIRS["gallery"]
    for index in range(cfg.num_distractors):  # people who are in no query
        camid = int(extras.integers(cfg.num_cameras))
        image = render_pedestrian(make_identity(extras), cameras[camid], extras, cfg.height, cfg.width)
        image.save(gallery / _market_name(0, camid, index * 25), quality=92)
    for index in range(cfg.num_junk):  # background or a sliver of a person: unusable boxes
        camid = int(extras.integers(cfg.num_cameras))
        with_person = bool(extras.random() < 0.4)
        image = render_pedestrian(make_identity(extras), cameras[camid], extras, cfg.height, cfg.width,
                                  person=with_person)
        if with_person:  # a box that caught only a head and shoulders
            image = image.crop((0, 0, cfg.width, cfg.height // 3)).resize((cfg.width, cfg.height))
        image.save(gallery / _market_name(-1, camid, index * 25), quality=92)
    return read_market1501(root, name="synthetic")
