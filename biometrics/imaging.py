"""Safe image input: decode untrusted files into BGR uint8 arrays or fail with a clear reason."""

from __future__ import annotations

import io
import os
import re
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from biometrics.errors import ImageError
from biometrics.files import UnreadableFile, read_regular_file

SUPPORTED_FORMATS = ("JPEG", "PNG", "BMP", "WEBP")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
"""How a photo is told from other files in a folder (by name: nothing is opened to list a folder)."""
DEFAULT_MAX_PIXELS = 50_000_000
"""About 7000x7000: larger photos are refused before decoding, so a crafted file cannot exhaust memory."""
MAX_FILE_BYTES = 256 * 2**20
"""256 MiB, far above any photo within the pixel limit: a larger file is refused before it is read."""


def files_under(folder: Path) -> list[Path]:
    """Every file under ``folder`` (in sub-folders too, linked ones included, each folder once), sorted, skipping
    hidden files and folders (a name that starts with "."): a photo manager's thumbnails and a sync tool's state
    are not photos. Entries that are not regular files (a broken link, a FIFO) are listed too: whoever reads
    them reports why they cannot be read, rather than leave them out unsaid."""
    files, seen = [], {os.path.realpath(folder)}
    for top, folders, names in os.walk(folder, followlinks=True):
        kept = []
        for name in folders:
            real = os.path.realpath(Path(top, name))
            if not name.startswith(".") and real not in seen:  # a link back up (a loop), or a second way in
                seen.add(real)
                kept.append(name)
        folders[:] = kept
        files += [Path(top, name) for name in names if not name.startswith(".")]
    return sorted(files)


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def photos_under(folder: Path) -> list[Path]:
    """The image files of ``files_under(folder)``, by suffix."""
    return [path for path in files_under(folder) if is_image_name(path)]


UNSUPPORTED_SIGNATURES = {
    b"GIF87a": "a GIF image",
    b"GIF89a": "a GIF image",
    b"II*\0": "a TIFF image",
    b"MM\0*": "a TIFF image",
    b"%PDF": "a PDF document",
}
"""First bytes of files people take for photos that we do not decode (a phone's HEIC is sniffed apart)."""


def _unsupported_format(data: bytes) -> str | None:
    """What a file we do not decode is, from its first bytes, so its error says so (an iPhone's HEIC photo is
    not "not an image"); None if it is nothing we know."""
    if data[4:8] == b"ftyp":  # ISO media: HEIC/HEIF/AVIF photos, or a video
        brand = data[8:12]
        if brand.startswith((b"hei", b"hev", b"mif")):
            return "a HEIC image (convert it to JPEG)"
        return "an AVIF image" if brand.startswith(b"avi") else None
    return next((kind for magic, kind in UNSUPPORTED_SIGNATURES.items() if data.startswith(magic)), None)


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned as its EXIF orientation says, or as it is when its EXIF block is too corrupt to use. An
    upright photo (most) is returned as it is, not copied: a 12 MP copy costs ~40 ms."""
    try:
        if image.getexif().get(ExifTags.Base.Orientation, 1) == 1:
            return image
        return ImageOps.exif_transpose(image)
    except Exception:  # Pillow's EXIF code fails in many ways on a crafted block: struct.error, TypeError, ...
        return image


SIXTEEN_BIT_GREY = ("I;16", "I;16B", "I;16L", "I")
"""How Pillow opens a 16-bit greyscale PNG (its only mode above 8 bits here; 16-bit colour opens as RGB)."""


def _rgb(image: Image.Image) -> np.ndarray:
    """H x W x 3 uint8 RGB. 16-bit grey is scaled to 8 bits: Pillow's own conversion clips it, which turns an
    ordinary 16-bit scan almost white."""
    if image.mode in SIXTEEN_BIT_GREY:
        grey = (np.asarray(image).astype(np.uint32) >> 8).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=2)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def load_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode a JPEG/PNG/BMP/WebP file (or its bytes) to an HxWx3 BGR uint8 array.

    EXIF orientation is applied, so a phone photo comes out upright; a corrupt EXIF block means no turn, and
    Pillow's warnings about it are silenced (nothing the user can act on). Only regular files of at most
    ``MAX_FILE_BYTES`` are read. The pixel count is checked from the header, before the pixels are decoded
    (``max_pixels``; Pillow refuses beyond twice its ``MAX_IMAGE_PIXELS``, ~179 M, whatever it is).
    Truncated files are an error rather than a half-grey image.
    """
    label = "<bytes>" if isinstance(source, bytes) else str(source)
    try:
        data = source if isinstance(source, bytes) else read_regular_file(source, MAX_FILE_BYTES)
    except UnreadableFile as exc:
        raise ImageError(f"{label}: {exc}") from None
    if not data:
        raise ImageError(f"{label}: file is empty")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's decompression-bomb warning too: ``max_pixels`` decides
        try:
            image = Image.open(io.BytesIO(data), formats=SUPPORTED_FORMATS)
        except UnidentifiedImageError:
            kind = _unsupported_format(data)
            what = f"{kind}, not supported" if kind else "not an image"
            raise ImageError(f"{label}: {what} (supported: JPEG, PNG, BMP, WebP)") from None
        except Image.DecompressionBombError as exc:  # Pillow's hard limit, which caps ``max_pixels``
            size = re.search(r"\((\d+) pixels\)", str(exc))  # Pillow: "Image size (900000000 pixels) exceeds ..."
            pixels = f"{int(size.group(1)):,} pixels > " if size else ""
            raise ImageError(f"{label}: image too large ({pixels}{max_pixels:,} pixels)") from None
        except (OSError, SyntaxError, ValueError) as exc:  # header cut short or malformed
            raise ImageError(f"{label}: corrupt or truncated image ({exc})") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"{label}: image too large ({width}x{height} > {max_pixels:,} pixels)")
        if width == 0 or height == 0:
            raise ImageError(f"{label}: image has no pixels")
        try:
            image.load()
            image = _upright(image)
            rgb = _rgb(image)
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageError(f"{label}: corrupt or truncated image ({exc})") from None
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)  # one pass; NumPy's reversed-axis copy takes ten times as long


def shrink_to_side(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` with its longer side shrunk to ``side``, area-averaged (as a sensor farther away would see it);
    a smaller image as it is. Sizes round to the nearest pixel, at least one."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)
