"""Image bytes in, a transformed image out, with bounds on what outside input may cost (PIL only: no torch)."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError


class ImageDecodeError(ValueError):
    """Bytes refused as an image; the message completes "<the input> is ..." (e.g. "not a readable image")."""


@dataclass(frozen=True)
class ImageLimits:
    """What `decode_image` accepts: a bound on work and memory per image for input from outside."""

    max_mb: float = 10.0
    max_pixels: int = 25_000_000

    @classmethod
    def from_config(cls, config: Mapping) -> ImageLimits:
        """From a served model's config (`max_image_mb`, `max_pixels`), the defaults where it says nothing."""
        return cls(float(config.get("max_image_mb", cls.max_mb)), int(config.get("max_pixels", cls.max_pixels)))


def decode_image(data: bytes, transform: Callable, limits: ImageLimits = ImageLimits()):
    """`transform` of the RGB image in `data`; over-size input is refused before any pixel is decoded.

    The pixel count comes from the header, so a small file that would unpack to a huge image costs nothing.
    """
    max_bytes = int(limits.max_mb * 1024 * 1024)
    if len(data) > max_bytes:
        raise ImageDecodeError(f"{len(data) / 2**20:.1f} MB, over the {max_bytes / 2**20:.0f} MB limit")
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > limits.max_pixels:
                raise ImageDecodeError(f"{image.width}×{image.height} pixels, over the "
                                       f"{limits.max_pixels:,} pixel limit")
            return transform(image.convert("RGB"))
    except ImageDecodeError:
        raise
    except UnidentifiedImageError:  # PIL's message names the in-memory buffer, which tells a user nothing
        raise ImageDecodeError("not a readable image (unknown image format)") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise ImageDecodeError(f"not a readable image ({str(error).strip() or type(error).__name__})") from None
