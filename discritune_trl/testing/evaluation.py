"""Hand-built models with known behaviour, for tests of the evaluation suite.

`ColorRetriever` is a `Retriever` with known rankings; `ColorCaptionPolicy` a `CaptioningPolicy` that names
colours; `toy_spacy_pipeline` a blank spaCy pipeline with a hand-written lexicon.

`ColorRetriever` has no learned weights: an image embeds as its mean colour's similarity to a small
palette, a caption as the palette colours it names. "a red square" therefore retrieves the reddest image,
and an empty caption matches every image equally.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
from PIL import Image

from ..models.policy import CaptioningPolicy, CaptionOutput
from ..retrievers.base import Retriever
from ..utils.images import to_rgb


PALETTE = {
    "red": (255, 0, 0),
    "green": (0, 255, 0),
    "blue": (0, 0, 255),
    "yellow": (255, 255, 0),
    "purple": (128, 0, 128),
    "cyan": (0, 255, 255),
    "orange": (255, 165, 0),
    "black": (0, 0, 0),
    "white": (255, 255, 255),
    "gray": (128, 128, 128),
}


def solid_image(color: str | tuple[int, int, int], size: int = 8) -> Image.Image:
    """A `size` x `size` RGB image filled with a palette colour name or an RGB triple."""
    rgb = PALETTE[color] if isinstance(color, str) else tuple(color)
    return Image.new("RGB", (size, size), rgb)


def mean_color_pixels(images: list[Image.Image]) -> torch.Tensor:
    """Each image (any size or mode) reduced to its mean RGB in [0, 1], as a `[N, 3, 1, 1]` "pixel" tensor."""
    means = [torch.from_numpy(np.asarray(image, dtype=np.float32)).mean(dim=(0, 1)) for image in to_rgb(images)]
    return (torch.stack(means) / 255.0)[:, :, None, None]  # [N, 3, 1, 1]


class ColorRetriever(Retriever):
    """A weight-free retriever over the colours in `PALETTE` (embedding dim = palette size + 1).

    Image embedding: `softmax(-sharpness * distance(mean RGB, palette colour))` over the palette, rescaled
    so that a constant last component is the same for every image. Text embedding: counts of the palette words in the caption, plus the same
    constant dimension (so an empty caption has a valid embedding that ties across images). Both
    L2-normalised.
    """

    def __init__(self, sharpness: float = 20.0, scale: float = 10.0):
        super().__init__()
        self.register_buffer("palette", torch.tensor(list(PALETTE.values()), dtype=torch.float) / 255.0)  # [P, 3]
        self.words = list(PALETTE)
        self.sharpness = sharpness
        self._logit_scale = torch.tensor(scale)
        self.freeze()

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return mean_color_pixels(images)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        mean_rgb = pixel_values.float().mean(dim=(2, 3))  # [N, 3]
        distance = torch.cdist(mean_rgb, self.palette)  # [N, P]
        weights = torch.nn.functional.normalize(torch.softmax(-self.sharpness * distance, dim=1), dim=1)  # [N, P]
        # The same constant last component for every image, so a caption naming no colour ties across images.
        constant = 0.1
        return torch.cat([weights * (1 - constant**2) ** 0.5, torch.full_like(weights[:, :1], constant)], dim=1)

    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        counts = torch.zeros(len(texts), len(self.words) + 1)
        for row, text in enumerate(texts):
            tokens = text.lower().replace(".", " ").split()
            for column, word in enumerate(self.words):
                counts[row, column] = tokens.count(word)
        counts[:, -1] = 0.1
        return torch.nn.functional.normalize(counts, dim=1)  # [B, P + 1]

    @property
    def logit_scale(self) -> torch.Tensor:
        return self._logit_scale


def toy_spacy_pipeline(lexicon: dict[str, tuple[str, str]]):
    """A blank English spaCy pipeline whose `attribute_ruler` sets lemma and POS from `lexicon`.

    `lexicon` maps a lower-cased word to `(lemma, universal POS)`; other words get POS "X" and no lemma
    (`count_lemmas` then uses the token text). Nothing is downloaded.
    """
    import spacy  # optional (the `eval` extra): only the tests that build a pipeline need it

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    ruler.add(patterns=[[{"IS_PUNCT": False}]], attrs={"POS": "X"})
    for word, (lemma, pos) in lexicon.items():
        ruler.add(patterns=[[{"LOWER": word}]], attrs={"LEMMA": lemma, "POS": pos})
    return nlp


class ColorCaptionPolicy(CaptioningPolicy, torch.nn.Module):
    """A weight-free `CaptioningPolicy` that names the palette colour of an image: "a red square."

    With `vague=True` it says "a square." for every image, like an uninformative captioner. It records the
    decoding arguments of its last `generate_captions` call in `last_generate_kwargs`. `save_pretrained` /
    `from_pretrained` round-trip the `vague` flag through `policy.json`, so scripts can load it by path.
    """

    def __init__(self, vague: bool = False):
        super().__init__()
        self.vague = vague
        self.register_buffer("palette", torch.tensor(list(PALETTE.values()), dtype=torch.float) / 255.0)  # [P, 3]
        self.last_generate_kwargs: dict = {}

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        return mean_color_pixels(images)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values.float().mean(dim=(2, 3))  # [N, 3]

    def generate_captions(self, pixel_values=None, image_embeds=None, **kwargs) -> CaptionOutput:
        self.last_generate_kwargs = kwargs
        image_embeds = self.encode_images(pixel_values) if image_embeds is None else image_embeds
        nearest = torch.cdist(image_embeds, self.palette).argmin(dim=1)  # [N]
        names = list(PALETTE)
        texts = ["a square." if self.vague else f"a {names[i]} square." for i in nearest.tolist()]
        return CaptionOutput(texts=texts)

    def save_pretrained(self, path: str) -> None:
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "policy.json"), "w") as handle:
            json.dump({"vague": self.vague}, handle)

    @classmethod
    def from_pretrained(cls, path: str) -> ColorCaptionPolicy:
        with open(os.path.join(path, "policy.json")) as handle:
            return cls(**json.load(handle))
