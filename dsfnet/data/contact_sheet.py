"""A contact sheet: a few identities (rows) across their cameras (columns), for people to look at."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

from PIL import Image, ImageDraw

from dsfnet.data.records import ImageRecord


def contact_sheet(records: Sequence[ImageRecord], num_ids: int = 8, per_id: int = 8,
                  thumb: tuple[int, int] = (64, 128), label_height: int = 12) -> Image.Image:
    """Rows are the first `num_ids` identities; each row shows images from as many cameras as possible."""
    by_pid: dict[int, dict[int, list[ImageRecord]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        if record.pid > 0:
            by_pid[record.pid][record.camid].append(record)
    pids = sorted(by_pid)[:num_ids]
    width, height = thumb
    sheet = Image.new("RGB", (per_id * width, max(1, len(pids)) * (height + label_height)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, pid in enumerate(pids):
        cameras = [list(v) for _, v in sorted(by_pid[pid].items())]
        picked: list[ImageRecord] = []
        while len(picked) < per_id and any(cameras):  # one image per camera before any camera repeats
            for pool in cameras:
                if pool and len(picked) < per_id:
                    picked.append(pool.pop(0))
        y = row * (height + label_height)
        for col, record in enumerate(picked):
            try:
                with Image.open(record.path) as image:
                    sheet.paste(image.convert("RGB").resize(thumb), (col * width, y))
            except OSError:  # an unreadable file is validation's to report; the sheet shows a grey cell
                draw.rectangle([col * width, y, (col + 1) * width - 1, y + height - 1], fill=(160, 160, 160))
            draw.text((col * width + 2, y + height), f"id {pid} cam {record.camid}", fill=(0, 0, 0))
    return sheet
