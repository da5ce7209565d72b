"""Images in, the way every part of the library reads them: decoding, conversion to RGB, batching.

The policies, the retrievers, the collator, the frozen-embedding cache and evaluation all go through these helpers,
so that an image looks the same to each of them, and the same as in an image viewer:

- orientation: a JPEG's EXIF orientation tag is applied (`PIL.ImageOps.exif_transpose`), as viewers and
  `datasets.Image` do; the tag is then removed, so applying it twice is harmless;
- transparency (`LA`, `La`, `PA`, `P` with a transparent colour, `RGBA`, `RGBa`) is composited onto **white**, the
  background a browser or an image viewer shows a transparent PNG on (PIL's own `convert("RGB")` drops the alpha
  channel, which shows whatever colour the invisible pixels happen to hold, often black);
- high bit depth is scaled, not clipped: 16-bit grayscale (`I;16`, `I;16B`, `I;16L`, `I;16N`) and 32-bit integer
  (`I`, read as 16-bit data, the range 16-bit PNG and TIFF files decode to) map `0..65535` to `0..255`;
  32-bit float (`F`) maps `0.0..1.0` to `0..255` (the float convention of torchvision, scikit-image and float TIFF
  viewers); values outside those ranges are clipped, NaN reads as 0. (PIL's `convert` clips both at 255, which
  turns a 16-bit photo nearly white.)
- every other mode PIL can convert (`1`, `L`, `P`, `CMYK`, `YCbCr`, `RGBX`, `LAB`, `HSV`) goes through
  `PIL.Image.convert("RGB")`.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import numpy as np
from PIL import Image, ImageOps


_EXIF_ORIENTATION = 0x0112
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_ALPHA_MODES = ("LA", "La", "PA", "RGBA", "RGBa")
_BACKGROUND = (255, 255, 255)  # transparency is shown on white


def decode_image(value: Any) -> Image.Image:
    """A `datasets.Image` value (decoded or not), a path or a PIL image, to a fully loaded, upright PIL image in its
    stored mode (EXIF orientation applied; see `to_rgb` for the conversion to RGB).

    Raises:
        TypeError: `value` is none of those.
        OSError, ValueError, ...: the file is missing, truncated or not an image (raised here, at load time, not
            later inside a model).
    """
    if isinstance(value, Image.Image):
        return _upright(value)
    if isinstance(value, str):
        image = Image.open(value)
    elif isinstance(value, dict) and (value.get("bytes") is not None or value.get("path")):
        source = io.BytesIO(value["bytes"]) if value.get("bytes") is not None else value["path"]
        image = Image.open(source)
    else:
        raise TypeError(f"Cannot read an image from a {type(value).__name__}.")
    image.load()  # truncated files fail here, not later inside the model
    return _upright(image)


def _upright(image: Image.Image) -> Image.Image:
    """`image` turned as its EXIF orientation tag says (a new image without the tag), or `image` itself when it has
    no such tag."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) == 1:
        return image
    return ImageOps.exif_transpose(image)


def to_rgb(images: Sequence[Image.Image]) -> list[Image.Image]:
    """PIL images of any mode to upright 8-bit RGB images that look as an image viewer shows them.

    EXIF orientation is applied, transparency is composited onto white, 16-bit and 32-bit integer grayscale maps
    `0..65535` to `0..255`, float grayscale maps `0.0..1.0` to `0..255` (see the module docstring for each mode).
    RGB images without an orientation tag are returned as they are.

    Raises:
        TypeError: an entry is not a PIL image (names its index and type).
        ValueError: a mode PIL cannot convert to RGB (names the index and the mode).
    """
    converted = []
    for index, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(
                f"images[{index}] is a {type(image).__name__}, expected a PIL.Image.Image; "
                "decode it first (e.g. with datasets.Image() or PIL.Image.open)."
            )
        try:
            converted.append(_to_rgb(_upright(image)))
        except ValueError as error:
            raise ValueError(
                f"images[{index}] has mode {image.mode!r}, which cannot be converted to RGB ({error}); convert it "
                "to RGB first."
            ) from error
    return converted


def _to_rgb(image: Image.Image) -> Image.Image:
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.int64).clip(0, 65535)
        gray = ((values * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257): exact for 8-bit data * 257
        return Image.fromarray(gray).convert("RGB")
    if mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        gray = np.round(values.clip(0.0, 1.0) * 255.0).astype(np.uint8)
        return Image.fromarray(gray).convert("RGB")
    if mode == "P" and "transparency" in image.info:
        image, mode = image.convert("RGBA"), "RGBA"
    if mode in _ALPHA_MODES:
        rgba = image.convert("RGBA") if mode != "La" else image.convert("LA").convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*_BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


def image_batches(
    images: Sequence[Image.Image] | datasets.Dataset, batch_size: int, image_column: str = "image"
) -> Iterator[list[Image.Image]]:
    """Consecutive lists of at most `batch_size` PIL images from a sequence or from a dataset's `image_column`."""
    for start in range(0, len(images), batch_size):
        if isinstance(images, datasets.Dataset):
            yield images[start : start + batch_size][image_column]
        else:
            yield list(images[start : start + batch_size])
