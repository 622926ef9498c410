from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from biometrics.errors import ImageError
from biometrics.imaging import load_image


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


def test_exif_orientation_is_applied():
    rgb = np.zeros((40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image = load_image(_encode(Image.fromarray(rgb), "JPEG", exif=exif.tobytes()))
    assert image.shape[:2] == (60, 40)


def test_pixel_limit_is_checked_before_decoding(sample):
    with pytest.raises(ImageError, match="too large"):
        load_image(sample("obama.jpg"), max_pixels=100_000)


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


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(ImageError, match="no such file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageError, match="directory"):
        load_image(tmp_path)
