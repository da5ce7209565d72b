"""The world's two kinds of text: descriptive text, and "human" alt-text in the Conceptual Captions spirit.

- **Descriptive** text names what tells an image apart: each object's size, colour, shape and position
  ("a large red circle at the top left and a small blue cross at the bottom right"). The retriever learns
  to read it, as web-scale CLIP has learned to read plain visual language.
- **Human** alt-text is mostly vague or "meta" (Section 5 of the paper): "geometric art", "shapes on a
  background", or it names the shapes without telling them apart ("geometric art with a circle and a
  square"). Now and then a human does describe the image. A captioner trained by maximum likelihood on this
  text writes vague captions under greedy decoding and beam search, while descriptive ones stay in its
  distribution.

Beam search ranks captions by their length-normalised log-probability, which favours long captions whose
later words are certain, i.e. descriptions. The vague styles are therefore long and formulaic too ("geometric
art with ..." is the most common opening), as Conceptual Captions' hypernym-laden alt-text is.

Every caption ends with a full stop, where captioners stop, as ClipCap does.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scenes import COLORS, Scene, SceneObject


# Alt-text that says what kind of picture this is, not what is in it.
META_CAPTIONS: tuple[str, ...] = (
    "geometric art",
    "abstract art",
    "digital art selected for the website",
    "minimalist design",
    "a simple illustration",
    "shapes on a background",
    "vector illustration of abstract shapes",
    "an icon for my new app",
)
# Meta phrases that introduce the shapes of a "shapes" caption; the first one is the most common.
SHAPES_CAPTION_PREFIXES: tuple[str, ...] = (
    "geometric art with",
    "geometric art with",
    "geometric art with",
    "abstract art with",
    "a simple illustration of",
)
COLOR_WORDS: frozenset[str] = frozenset(COLORS)
HUMAN_CAPTION_STYLES = ("meta", "shapes", "descriptive")


@dataclass(frozen=True)
class HumanCaptionStyle:
    """How often a "human" caption is of each style; the three probabilities must sum to 1.

    Args:
        meta: a caption from :data:`META_CAPTIONS`, the same for every image.
        shapes: the scene's shapes named without colour, size or position, after a meta phrase
            ("geometric art with a circle and a square").
        descriptive: a (possibly partial) descriptive caption, from :func:`describe_variant`.
    """

    meta: float = 0.3
    shapes: float = 0.5
    descriptive: float = 0.2

    def __post_init__(self) -> None:
        probabilities = (self.meta, self.shapes, self.descriptive)
        if min(probabilities) < 0 or abs(sum(probabilities) - 1.0) > 1e-6:
            raise ValueError(
                f"HumanCaptionStyle(meta={self.meta}, shapes={self.shapes}, descriptive={self.descriptive}) "
                "must hold non-negative probabilities that sum to 1."
            )

    @property
    def probabilities(self) -> tuple[float, float, float]:
        return (self.meta, self.shapes, self.descriptive)

    @classmethod
    def for_regime(cls, regime: str) -> HumanCaptionStyle:
        """The style of one of :data:`WORLD_REGIMES` (`"vague"`, `"mixed"`, `"good"`)."""
        if regime not in WORLD_REGIMES:
            raise ValueError(f"Unknown world regime {regime!r}; pick one of {tuple(WORLD_REGIMES)}.")
        return WORLD_REGIMES[regime]


# The paper's two starting points, and one between them: how often a "human" caption describes the image. The
# rest is vague, meta and shapes captions in the default's 3:5 ratio. The captioner trained on these captions starts
# vague (P@1 far below the retriever's; ClipCap-ConCap), mixed, or good (near the retriever's ceiling on descriptive
# text; the paper's ClipCap-COCO). docs/world.md has the figures.
WORLD_REGIMES: dict[str, HumanCaptionStyle] = {
    "vague": HumanCaptionStyle(meta=0.3, shapes=0.5, descriptive=0.2),
    "mixed": HumanCaptionStyle(meta=0.225, shapes=0.375, descriptive=0.4),
    "good": HumanCaptionStyle(meta=0.1125, shapes=0.1875, descriptive=0.7),
}


def _finish(text: str) -> str:
    return f"{text}."


def _join(phrases: list[str]) -> str:
    if len(phrases) == 1:
        return phrases[0]
    return ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def object_phrase(obj: SceneObject, size: bool = True, color: bool = True, position: bool = True) -> str:
    """One object in words, e.g. "a large red circle at the top left" (attributes may be left out)."""
    words = ([obj.size] if size else []) + ([obj.color] if color else []) + [obj.shape]
    phrase = f"{_article(words[0])} {' '.join(words)}"
    if position:
        phrase += " in the center" if obj.position == "center" else f" at the {obj.position}"
    return phrase


def describe(scene: Scene) -> str:
    """The scene's full descriptive caption: every object, every attribute, in reading order."""
    return _finish(_join([object_phrase(obj) for obj in scene.objects]))


def describe_variant(scene: Scene, rng: np.random.Generator) -> str:
    """A random descriptive caption of `scene`: objects in random order, some attributes or objects left out.

    Colour and shape are always named; size and position each appear with probability 1/2, decided once per
    caption. With several objects, one may be left out with probability 1/4.
    """
    objects = list(scene.objects)
    if len(objects) > 1 and rng.random() < 0.25:
        objects.pop(int(rng.integers(len(objects))))
    objects = [objects[i] for i in rng.permutation(len(objects))]
    size, position = bool(rng.random() < 0.5), bool(rng.random() < 0.5)
    return _finish(_join([object_phrase(obj, size=size, position=position) for obj in objects]))


def shapes_caption(scene: Scene, rng: np.random.Generator) -> str:
    """The scene's shapes in random order, without colour, size or position, after a meta phrase from
    :data:`SHAPES_CAPTION_PREFIXES`: "geometric art with a circle and a square"."""
    prefix = SHAPES_CAPTION_PREFIXES[int(rng.integers(len(SHAPES_CAPTION_PREFIXES)))]
    shapes = [scene.objects[i].shape for i in rng.permutation(len(scene.objects))]
    return _finish(f"{prefix} {_join([f'{_article(shape)} {shape}' for shape in shapes])}")


def human_caption(scene: Scene, rng: np.random.Generator, style: HumanCaptionStyle | None = None) -> str:
    """One "human" alt-text caption of `scene`, its style drawn from `style`'s probabilities."""
    style = style or HumanCaptionStyle()
    kind = HUMAN_CAPTION_STYLES[int(rng.choice(len(HUMAN_CAPTION_STYLES), p=style.probabilities))]
    if kind == "meta":
        return _finish(META_CAPTIONS[int(rng.integers(len(META_CAPTIONS)))])
    if kind == "shapes":
        return shapes_caption(scene, rng)
    return describe_variant(scene, rng)


def mentions_color(text: str) -> bool:
    """Whether `text` names one of the world's colours (the paper's Table 7 finding, measured per caption)."""
    return any(word in COLOR_WORDS for word in text.lower().replace(".", " ").replace(",", " ").split())


def color_word_rate(texts: list[str]) -> float:
    """The share of `texts` that name a colour, in [0, 1]."""
    if not texts:
        raise ValueError("color_word_rate needs at least one caption; got an empty list.")
    return sum(mentions_color(text) for text in texts) / len(texts)
