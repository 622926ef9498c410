from __future__ import annotations

import io
import os
import struct
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from biometrics.errors import ImageError
from biometrics.imaging import MAX_FILE_BYTES, load_image


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "BMP", "WEBP"])
def test_supported_formats_decode_to_bgr(fmt):
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    rgb[..., 0] = 200  # red
    image = load_image(_encode(Image.fromarray(rgb), fmt, **({"quality": 95} if fmt != "BMP" else {})))
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8
    assert image[20, 30, 2] > 180 and image[20, 30, 0] < 30  # red lands in the last (R of BGR) channel


@pytest.mark.parametrize("mode", ["RGB", "L", "P", "RGBA", "LA"])
def test_every_colour_mode_decodes_to_the_pixels_opencv_reads(mode):
    """Grey, palette and alpha photos come out as the same writable BGR array OpenCV decodes (drawing on it
    in place, as `detect --out` does, must work)."""
    rgb = np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    data = _encode(Image.fromarray(rgb).convert(mode), "PNG")
    image = load_image(data)
    expected = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (40, 60, 3) and image.flags.writeable and image.flags.c_contiguous
    np.testing.assert_array_equal(image, expected)


def test_a_16_bit_grey_png_is_scaled_to_8_bits_not_clipped_white():
    """Pillow opens 16-bit grey as mode I;16, and its own RGB conversion clips every value above 255."""
    grey = np.random.default_rng(0).integers(0, 256, (40, 60), dtype=np.uint8)
    ok, data = cv2.imencode(".png", grey.astype(np.uint16) * 257)  # 16-bit, the same picture
    assert ok and Image.open(io.BytesIO(data.tobytes())).mode.startswith("I")
    image = load_image(data.tobytes())
    assert image.shape == (40, 60, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, np.repeat(grey[..., None], 3, axis=2))


def test_exif_orientation_is_applied():
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image = load_image(_encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes()))
    assert image.shape[:2] == (60, 40)


def test_pixel_limit_is_checked_before_decoding(sample):
    with pytest.raises(ImageError, match=r"image too large \(910x1137 > 100,000 pixels\)"):
        load_image(sample("obama.jpg"), max_pixels=100_000)
    header = struct.pack(">IIBBBBB", 30_000, 30_000, 1, 0, 0, 0, 0)  # a 1-bit 30000 x 30000 PNG: a few bytes
    chunk = struct.pack(">I", len(header)) + b"IHDR" + header + struct.pack(">I", zlib.crc32(b"IHDR" + header))
    bomb = b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND"))
    with pytest.raises(ImageError, match=r"image too large \(900,000,000 pixels > 50,000,000 pixels\)"):
        load_image(bomb)  # refused by Pillow's own check, from the header, in the same words


def test_truncated_jpeg_is_an_error(sample, tmp_path):
    data = sample("obama.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageError, match="truncated"):
        load_image(truncated)


@pytest.mark.parametrize(("content", "reason"), [(b"hello, not an image\n", "not an image"), (b"", "empty")])
def test_non_images_are_errors(tmp_path, content, reason):
    path = tmp_path / "file.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageError, match=reason):
        load_image(path)


def test_a_photo_in_a_format_we_do_not_decode_says_which(tmp_path, sample):
    """A GIF, TIFF or an iPhone's HEIC named .jpg is an image of another kind, not "not an image"."""
    photo = Image.open(sample("obama.jpg"))
    for suffix, kind in (("GIF", "a GIF image"), ("TIFF", "a TIFF image")):
        path = tmp_path / f"{suffix}.jpg"
        photo.save(path, format=suffix)
        with pytest.raises(ImageError, match=f"{kind}, not supported \\(supported: JPEG"):
            load_image(path)
    heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + bytes(64)  # the box an iPhone photo starts with
    with pytest.raises(ImageError, match="a HEIC image \\(convert it to JPEG\\), not supported"):
        load_image(heic)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)


def _exif(*entries: tuple[int, int, int, int]) -> bytes:
    """An EXIF block (little-endian TIFF) of one IFD with these (tag, type, count, value or offset) entries."""
    ifd = struct.pack("<IH", 8, len(entries)) + b"".join(struct.pack("<HHII", *entry) for entry in entries)
    return b"Exif\0\0II*\0" + ifd + b"\0\0\0\0"


ROTATE_90 = (0x0112, 3, 1, 6)  # Orientation: "rotate 90 CW to display"


@pytest.mark.parametrize(
    ("exif", "shape"),
    [
        (_exif(ROTATE_90, (0x010F, 2, 20, 40)), (60, 40, 3)),  # Make: text past the block's end (Pillow warns)
        (_exif(ROTATE_90, (0x0100, 2, 4, 0x6E6F6143)), (40, 60, 3)),  # ImageWidth holding text: no orientation
    ],
    ids=["text-past-the-end", "width-holding-text"],
)
def test_corrupt_exif_is_ignored_quietly(exif, shape):
    """The photo still loads, with no Pillow warning on the user's terminal (turned as far as the EXIF allows)."""
    photo = _encode(Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8)), "JPEG", exif=exif)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_image(photo).shape == shape


def test_only_regular_files_are_read(tmp_path):
    """A FIFO named like a photo would hang the read, /dev/zero fill memory: both are refused unread."""
    fifo = tmp_path / "camera.jpg"
    os.mkfifo(fifo)
    for path in (fifo, Path("/dev/zero")):
        with pytest.raises(ImageError, match="not a regular file"):
            load_image(path)


def test_a_file_over_the_size_limit_is_refused_unread(tmp_path):
    huge = tmp_path / "huge.jpg"
    with open(huge, "wb") as file:
        file.truncate(4 * 2**30)  # sparse: takes no disk, and must take no memory either
    with pytest.raises(ImageError, match=rf"file too large \(4,096 MiB; limit {MAX_FILE_BYTES // 2**20} MiB\)"):
        load_image(huge)
