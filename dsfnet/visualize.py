"""Pictures a person looks at to trust a model: rank lists with true/false matches marked."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from dsfnet.data.records import ImageRecord

GREEN, RED, BLUE = (40, 170, 60), (210, 40, 40), (40, 90, 200)


def _thumbnail(path: str, size: tuple[int, int]) -> Image.Image:
    try:
        with Image.open(path) as image:
            return image.convert("RGB").resize(size)
    except OSError:
        return Image.new("RGB", size, (160, 160, 160))


def rank_list_figure(queries: Sequence[ImageRecord], gallery: Sequence[ImageRecord], rankings: np.ndarray,
                     captions: Sequence[str] | None = None, thumb: tuple[int, int] = (64, 128),
                     border: int = 4) -> Image.Image:
    """One row per query: the query (blue), then its ranked gallery images, green if the same identity, red if not.

    `rankings[r]` lists gallery indices in rank order for query r (already without the same-camera,
    same-identity items the protocol ignores). Each cell is labelled with identity and camera.
    """
    cols = rankings.shape[1] + 1
    cell_w, cell_h = thumb[0] + 2 * border, thumb[1] + 2 * border + 14
    head = 14 if captions else 0
    sheet = Image.new("RGB", (cols * cell_w, len(queries) * (cell_h + head)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for row, query in enumerate(queries):
        y = row * (cell_h + head)
        if captions:
            draw.text((2, y + 1), captions[row], fill=(0, 0, 0))
        cells = [(query, BLUE, "query")] + [
            (gallery[g], GREEN if gallery[g].pid == query.pid else RED, f"{rank + 1}")
            for rank, g in enumerate(rankings[row])
        ]
        for col, (record, colour, label) in enumerate(cells):
            x = col * cell_w
            draw.rectangle([x, y + head, x + cell_w - 1, y + head + thumb[1] + 2 * border - 1], fill=colour)
            sheet.paste(_thumbnail(record.path, thumb), (x + border, y + head + border))
            draw.text((x + 2, y + head + thumb[1] + 2 * border), f"{label} id{record.pid} c{record.camid}",
                      fill=(0, 0, 0))
    return sheet
