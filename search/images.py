"""Decoding untrusted image bytes into RGB: type by content, pixel cap, EXIF orientation, any mode.

Used by queries (uploads, query images) and by ingest; reading files and URLs lives in ingest.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps

from search.errors import BadInputError

# Formats Pillow recognises by content that we accept; anything else is "not an image".
ALLOWED_FORMATS = {"JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "MPO"}


@dataclass(frozen=True)
class ImagePolicy:
    """Limits on what an image may cost. ``allow_private`` lets URLs reach loopback/LAN hosts."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    timeout: float = 10.0
    allow_private: bool = False


class ImageError(BadInputError):
    """One image cannot be used; ``reason`` says why and ``hint`` how to fix it."""

    def __init__(self, reason: str, hint: str):
        super().__init__(f"{reason} ({hint})")
        self.reason = reason
        self.hint = hint


def decode_image(data: bytes, policy: ImagePolicy = ImagePolicy(), name: str = "image") -> Image.Image:
    """Decode bytes into an RGB image: type by content, pixel cap, EXIF orientation, first frame."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ALLOWED_FORMATS:
                raise ImageError(
                    f"{name} is a {image.format} file, not a supported image", "use JPEG, PNG, WebP, GIF, BMP or TIFF"
                )
            width, height = image.size
            if width * height > policy.max_pixels:
                raise ImageError(
                    f"{name} is {width}x{height} pixels, over the {policy.max_pixels}-pixel cap",
                    "downscale the image or raise --max-image-pixels",
                )
            image.seek(0)  # animated images: the first frame stands for the product
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return to_rgb(image)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageError(f"{name} is a decompression bomb: {exc}", "downscale the image") from exc
    except Image.UnidentifiedImageError as exc:
        raise ImageError(f"{name} is not an image Pillow can read", "replace it with a JPEG, PNG or WebP file") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{name} is broken or truncated: {exc}", "re-export or replace the image") from exc


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to RGB: transparency on white, CMYK and 16-bit scaled properly."""
    if image.mode == "RGB":
        return image
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16/32-bit greyscale: scale the actual range into 8 bits instead of clipping to white.
        image = image.convert("F")
        low, high = image.getextrema()
        scale = 255.0 / (high - low) if high > low else 0.0
        image = image.point(lambda v: (v - low) * scale).convert("L")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
