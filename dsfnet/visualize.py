"""Pictures a person looks at to trust data and a model: rows of crops (contact sheets, rank lists)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from dsfnet.data.images import ImageLimits, decode_image
from dsfnet.data.records import UNLABELLED, ImageRecord

GREEN, RED, BLUE = (40, 170, 60), (210, 40, 40), (40, 90, 200)
THUMB, BORDER, LINE_H = (64, 128), 4, 14  # a cell: the crop in a BORDER-wide frame, label lines LINE_H apart below
Cell = tuple[str | Path, tuple[int, int, int] | None, Sequence[str]]  # (image path, frame colour or None, label lines)


def _thumbnail(path: str | Path, size: tuple[int, int], pad: bool, limits: ImageLimits) -> Image.Image:
    def fit(image: Image.Image) -> Image.Image:
        return ImageOps.pad(image, size, color=(200, 200, 200)) if pad else image.resize(size)

    try:
        return decode_image(Path(path).read_bytes(), fit, limits)
    except (OSError, ValueError):  # missing, unreadable or over the limits: a grey placeholder
        return Image.new("RGB", size, (160, 160, 160))


def image_row(cells: Sequence[Cell], thumb: tuple[int, int] = THUMB, border: int = BORDER, pad: bool = False,
              limits: ImageLimits = ImageLimits()) -> Image.Image:
    """The cells left to right, each crop stretched to `thumb` (`pad`: fitted, grey bands) above its label lines."""
    cell_w, frame_h = thumb[0] + 2 * border, thumb[1] + 2 * border
    lines = max((len(label) for *_, label in cells), default=1)
    row = Image.new("RGB", (len(cells) * cell_w, frame_h + lines * LINE_H), (255, 255, 255))
    draw = ImageDraw.Draw(row)
    for col, (path, colour, label) in enumerate(cells):
        x = col * cell_w
        if colour is not None:
            draw.rectangle([x, 0, x + cell_w - 1, frame_h - 1], fill=colour)
        row.paste(_thumbnail(path, thumb, pad, limits), (x + border, border))
        for i, line in enumerate(label):
            draw.text((x + 2, frame_h + i * LINE_H), line, fill=(0, 0, 0))
    return row


def rank_list_figure(queries: Sequence[ImageRecord], gallery: Sequence[ImageRecord], rankings: np.ndarray,
                     captions: Sequence[str] | None = None, thumb: tuple[int, int] = THUMB,
                     border: int = BORDER) -> Image.Image:
    """One row per query: the query (blue), then its ranked gallery images, green if the same identity, red if not.

    `rankings[r]` lists gallery indices in rank order for query r (already without the same-camera,
    same-identity items the protocol ignores). Each cell is labelled with identity and camera.
    """
    head = LINE_H if captions else 0
    row_h = head + thumb[1] + 2 * border + LINE_H
    sheet = Image.new("RGB", ((rankings.shape[1] + 1) * (thumb[0] + 2 * border), len(queries) * row_h), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for r, query in enumerate(queries):
        if captions:
            draw.text((2, r * row_h + 1), captions[r], fill=(0, 0, 0))
        ranked = [(gallery[g], GREEN if gallery[g].pid == query.pid else RED, f"{rank + 1}")
                  for rank, g in enumerate(rankings[r])]
        cells = [(rec.path, colour, [f"{label} id{rec.pid} c{rec.camid}"])
                 for rec, colour, label in [(query, BLUE, "query"), *ranked]]
        sheet.paste(image_row(cells, thumb, border), (0, r * row_h + head))
    return sheet


def contact_sheet(records: Sequence[ImageRecord], num_ids: int = 8, per_id: int = 8,
                  thumb: tuple[int, int] = THUMB) -> Image.Image:
    """Rows are the first `num_ids` identities; each row shows images from as many cameras as possible.
    Unlabelled crops (own data) are shown a row per camera instead."""
    by_pid: dict[int, dict[int, list[ImageRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.pid > 0:
            by_pid[record.pid][record.camid].append(record)
    rows: list[list[tuple]] = []
    for pid in sorted(by_pid)[:num_ids]:
        cameras = [list(v) for _, v in sorted(by_pid[pid].items())]
        picked: list[ImageRecord] = []
        while len(picked) < per_id and any(cameras):  # one image per camera before any camera repeats
            for pool in cameras:
                if pool and len(picked) < per_id:
                    picked.append(pool.pop(0))
        rows.append([(r.path, None, [f"id {pid} cam {r.camid}"]) for r in picked])
    if not rows:  # no identities: the first crops of each camera
        by_camera: dict[int, list[ImageRecord]] = defaultdict(list)
        for record in records:
            if record.pid == UNLABELLED and len(by_camera[record.camid]) < per_id:
                by_camera[record.camid].append(record)
        rows = [[(r.path, None, [f"cam {camid}"]) for r in by_camera[camid]] for camid in sorted(by_camera)[:num_ids]]
    row_h = thumb[1] + LINE_H
    sheet = Image.new("RGB", (per_id * thumb[0], max(1, len(rows)) * row_h), (255, 255, 255))
    for row, cells in enumerate(rows):
        sheet.paste(image_row(cells, thumb, border=0), (0, row * row_h))
    return sheet
