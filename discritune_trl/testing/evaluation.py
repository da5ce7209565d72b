"""A hand-built `Retriever` with known rankings, for tests of retrieval metrics and distractor mining.

`ColorRetriever` has no learned weights: an image embeds as its mean colour's similarity to a small
palette, a caption as the palette colours it names. "a red square" therefore retrieves the reddest image,
and an empty caption matches every image equally.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from ..models.policy import to_rgb
from ..retrievers.base import Retriever


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


class ColorRetriever(Retriever):
    """A weight-free retriever over the colours in `PALETTE` (embedding dim = palette size + 1).

    Image embedding: `softmax(-sharpness * distance(mean RGB, palette colour))` over the palette, plus a
    constant last dimension. Text embedding: counts of the palette words in the caption, plus the same
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
        # Images may differ in size: each is reduced to its mean colour, broadcast to a 1 x 1 "image".
        means = [torch.from_numpy(np.asarray(image, dtype=np.float32)).mean(dim=(0, 1)) for image in to_rgb(images)]
        return (torch.stack(means) / 255.0)[:, :, None, None]  # [N, 3, 1, 1]

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        mean_rgb = pixel_values.float().mean(dim=(2, 3))  # [N, 3]
        distance = torch.cdist(mean_rgb, self.palette)  # [N, P]
        weights = torch.softmax(-self.sharpness * distance, dim=1)  # [N, P]
        embeds = torch.cat([weights, torch.full_like(weights[:, :1], 0.1)], dim=1)  # [N, P + 1]
        return torch.nn.functional.normalize(embeds, dim=1)

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
    import spacy

    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("attribute_ruler")
    ruler.add(patterns=[[{"IS_PUNCT": False}]], attrs={"POS": "X"})
    for word, (lemma, pos) in lexicon.items():
        ruler.add(patterns=[[{"LOWER": word}]], attrs={"LEMMA": lemma, "POS": pos})
    return nlp
