import io

import numpy as np
import pytest
from PIL import Image

from ml.data.preprocess import PreprocessSpec, open_image, preprocess, to_unit_gray
from tests.conftest import IMAGES

SPEC = PreprocessSpec(input_size=64)


def test_preprocess_is_deterministic_and_in_unit_range():
    image = open_image(IMAGES / "2168a917.jpg")
    first, second = preprocess(image, SPEC), preprocess(open_image(IMAGES / "2168a917.jpg"), SPEC)
    assert first.shape == (64, 64, 1)
    assert first.dtype == np.float32
    assert np.array_equal(first, second)
    assert 0.0 <= first.min() < first.max() <= 1.0


def test_rgb_and_grayscale_copies_of_an_image_preprocess_identically():
    gray = open_image(IMAGES / "IM-0117-0001.jpeg").convert("L")
    rgb = gray.convert("RGB")
    assert np.allclose(preprocess(gray, SPEC), preprocess(rgb, SPEC), atol=1 / 255)


def test_sixteen_bit_image_uses_its_full_range():
    data = np.linspace(0, 4095, 128 * 128, dtype=np.uint16).reshape(128, 128)  # 12-bit in 16
    image = Image.fromarray(data)
    gray = to_unit_gray(image)
    assert gray.min() == 0.0
    assert gray.max() == 1.0


def test_letterbox_keeps_aspect_ratio_with_black_bars():
    wide = Image.new("L", (200, 100), color=255)
    out = preprocess(wide, SPEC)[..., 0]
    assert out[0, :].max() == 0.0  # top bar
    assert out[-1, :].max() == 0.0  # bottom bar
    assert out[32, :].min() == pytest.approx(1.0)


def test_exif_orientation_is_applied():
    image = Image.new("L", (120, 80), color=0)
    image.paste(255, (0, 0, 60, 80))  # left half white
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    buffer.seek(0)
    shown = open_image(buffer)
    assert shown.size == (80, 120)
    arr = np.asarray(shown)
    assert arr[:60].mean() > 200  # white half is now on top
    assert arr[-40:].mean() < 50


def test_transparent_margins_become_black():
    rgba = Image.new("RGBA", (100, 100), (255, 255, 255, 0))
    gray = to_unit_gray(rgba)
    assert gray.max() == 0.0
