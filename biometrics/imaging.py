"""Safe image input: decode untrusted files into BGR uint8 arrays or fail with a clear reason."""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from biometrics.errors import ImageError

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
DEFAULT_MAX_PIXELS = 50_000_000
"""About 7000x7000: larger photos are refused before decoding, so a crafted file cannot exhaust memory."""


def load_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a JPEG/PNG/BMP/WebP file (or its bytes) to an HxWx3 BGR uint8 array.

    EXIF orientation is applied, so a phone photo comes out upright. The pixel count is checked from the
    header, before the pixels are decoded. Truncated files are an error rather than a half-grey image.
    """
    label = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else Path(source).read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{label}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{label}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{label}: cannot read file ({exc.strerror or exc})") from None
    if not data:
        raise ImageError(f"{label}: file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"{label}: not an image (supported: JPEG, PNG, BMP, WebP)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageError(f"{label}: image too large (limit {max_pixels:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as exc:  # header cut short or malformed
        raise ImageError(f"{label}: corrupt or truncated image ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise ImageError(f"{label}: image too large ({width}x{height} > {max_pixels:,} pixels)")
    if width == 0 or height == 0:
        raise ImageError(f"{label}: image has no pixels")
    try:
        image.load()
        image = ImageOps.exif_transpose(image)
        rgb = np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as exc:
        raise ImageError(f"{label}: corrupt or truncated image ({exc})") from None
    return np.ascontiguousarray(rgb[:, :, ::-1])
