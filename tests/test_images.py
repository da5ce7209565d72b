"""Every PIL mode a dataset can hold decodes to what an image viewer shows: each against its 8-bit RGB twin."""

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever
from discritune_trl.utils.images import decode_image, to_rgb


RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (6, 7, 3), dtype=np.uint8)  # the twin every colour mode is compared with
GRAY = RNG.integers(0, 256, (6, 7), dtype=np.uint8)  # the twin of every grayscale mode
ALPHA = np.where(RNG.random((6, 7)) < 0.5, 0, 255).astype(np.uint8)  # half the pixels fully transparent
WHITE = np.full_like(RGB, 255)


def pixels(image: Image.Image) -> np.ndarray:
    (converted,) = to_rgb([image])
    assert converted.mode == "RGB"
    return np.asarray(converted).astype(int)


def gray_rgb(gray: np.ndarray) -> np.ndarray:
    return np.repeat(gray[..., None], 3, axis=2).astype(int)


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I;16L", "I;16N", "I"])
def test_sixteen_bit_grayscale_is_scaled_not_clipped(mode):
    sixteen_bit = GRAY.astype(np.uint32) * 257  # 8-bit 0..255 -> 16-bit 0..65535, what a 16-bit file holds
    if mode == "I":
        image = Image.fromarray(sixteen_bit.astype(np.int32))
    else:  # the raw bytes in the mode's byte order (PIL's convert between 16-bit modes clips at 255)
        byte_order = {"I;16": "<", "I;16L": "<", "I;16B": ">", "I;16N": "="}[mode]
        image = Image.frombytes(mode, (7, 6), sixteen_bit.astype(f"{byte_order}u2").tobytes())
    assert image.mode == mode
    np.testing.assert_array_equal(pixels(image), gray_rgb(GRAY))


def test_float_grayscale_reads_zero_to_one():
    image = Image.fromarray(GRAY.astype(np.float32) / 255.0)
    assert image.mode == "F"
    np.testing.assert_array_equal(pixels(image), gray_rgb(GRAY))
    out_of_range = Image.fromarray(np.array([[-1.0, 0.5, 7.0, np.nan]], dtype=np.float32))
    np.testing.assert_array_equal(pixels(out_of_range)[0, :, 0], [0, 128, 255, 0])


@pytest.mark.parametrize("mode", ["L", "P", "CMYK", "RGBX"])
def test_opaque_modes_match_their_rgb_twin(mode):
    twin = gray_rgb(GRAY) if mode == "L" else RGB.astype(int)
    source = Image.fromarray(GRAY) if mode == "L" else Image.fromarray(RGB)
    image = source.convert(mode) if mode != "P" else source.quantize(256)
    if mode == "P":  # a palette of at most 256 colours: the twin is the quantized image itself
        twin = np.asarray(image.convert("RGB")).astype(int)
        assert "transparency" not in image.info
    np.testing.assert_array_equal(pixels(image), twin)


def test_one_bit_is_black_and_white():
    bits = GRAY > 127
    np.testing.assert_array_equal(pixels(Image.fromarray(bits)), gray_rgb(np.where(bits, 255, 0)))


def test_ycbcr_matches_its_twin_up_to_rounding():
    image = Image.fromarray(RGB).convert("YCbCr")
    assert np.abs(pixels(image) - RGB.astype(int)).max() <= 3  # YCbCr <-> RGB is a lossy 8-bit round trip


@pytest.mark.parametrize("mode", ["RGBA", "RGBa", "LA", "La", "PA"])
def test_transparency_is_composited_on_white(mode):
    colour = mode.startswith("RGB") or mode == "PA"
    base = RGB if colour else gray_rgb(GRAY).astype(np.uint8)
    expected = np.where(ALPHA[..., None] == 255, base, WHITE).astype(int)
    if colour:
        image = Image.fromarray(np.dstack([RGB, ALPHA]))
        if mode == "PA":
            image = Image.fromarray(np.dstack([RGB, ALPHA])).convert("PA")
            expected = np.where(ALPHA[..., None] == 255, np.asarray(image.convert("RGB")), WHITE).astype(int)
    else:
        image = Image.fromarray(np.dstack([GRAY, ALPHA]))
    image = image.convert(mode)
    assert image.mode == mode
    np.testing.assert_array_equal(pixels(image), expected)
    if mode in ("RGBA", "LA"):  # PIL's own convert drops the alpha channel (and cannot convert La at all)
        assert not np.array_equal(np.asarray(image.convert("RGB")).astype(int), expected)


def test_palette_transparency_is_composited_on_white():
    palette_indices = (GRAY // 64).astype(np.uint8)  # 4 colours, index 0 transparent
    image = Image.fromarray(palette_indices, mode="P")
    colours = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (90, 90, 90)]
    image.putpalette([value for colour in colours for value in colour])
    image.info["transparency"] = 0
    expected = np.array([colours[i] if i else (255, 255, 255) for i in palette_indices.flatten()]).reshape(6, 7, 3)
    np.testing.assert_array_equal(pixels(image), expected)


def exif_rotated_jpeg(array: np.ndarray, orientation: int) -> bytes:
    """`array` stored as a JPEG whose EXIF tag says how to turn it to show it upright."""
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=100, subsampling=0, exif=exif.tobytes())
    return buffer.getvalue()


def test_exif_orientation_is_applied_once():
    upright = np.kron(RGB, np.ones((8, 8, 1), dtype=np.uint8))  # blocks survive JPEG compression
    stored = np.rot90(upright, k=-1)  # orientation 8: a viewer turns it 90 degrees anticlockwise to show it upright
    data = exif_rotated_jpeg(np.ascontiguousarray(stored), orientation=8)
    decoded = decode_image({"bytes": data, "path": None})
    assert decoded.size == (upright.shape[1], upright.shape[0])
    assert np.abs(np.asarray(decoded).astype(int) - upright).mean() < 3
    # to_rgb on the decoded image (the training path) and on the raw file (a user's PIL image) agree: once each.
    np.testing.assert_array_equal(pixels(decoded), pixels(Image.open(io.BytesIO(data))))
    # and datasets' own decoding (the evaluation path) shows the same picture
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": data, "path": None}]}).cast_column(
        "image", datasets.Image()
    )
    np.testing.assert_array_equal(pixels(dataset[0]["image"]), pixels(decoded))


def test_models_read_a_sixteen_bit_image_like_its_eight_bit_twin():
    twin = Image.fromarray(GRAY)
    sixteen_bit = Image.fromarray(GRAY.astype(np.uint16) * 257)
    policy, retriever = tiny_clipcap_policy(seed=0), tiny_open_clip_retriever(seed=0)
    torch.testing.assert_close(policy.preprocess([sixteen_bit]), policy.preprocess([twin]), rtol=0, atol=0)
    torch.testing.assert_close(retriever.preprocess([sixteen_bit]), retriever.preprocess([twin]), rtol=0, atol=0)


def test_errors_name_the_entry():
    with pytest.raises(TypeError, match=r"images\[1\] is a ndarray"):
        to_rgb([Image.fromarray(RGB), RGB])
    with pytest.raises(TypeError, match="Cannot read an image from a int"):
        decode_image(3)
