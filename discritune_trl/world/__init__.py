"""The embedded synthetic world: coloured shapes with descriptive and vague "human" captions, two domains.

See `docs/world.md`. The world plays the paper's setting offline and in minutes: a captioner trained on vague
alt-text (Conceptual Captions) is fine-tuned by DiscriTune against a retriever that reads plain descriptions
(CLIP), and tested in-domain and on a shifted domain.
"""

from .captions import (
    COLOR_WORDS,
    META_CAPTIONS,
    HumanCaptionStyle,
    color_word_rate,
    describe,
    describe_variant,
    human_caption,
    mentions_color,
)
from .dataset import SPLITS, WORLD_FEATURES, WorldDataConfig, generate_example, generate_world, scene_from_row
from .scenes import DOMAINS, IN_DOMAIN, SHIFTED, DomainSpec, Scene, SceneObject, render_scene, sample_scene
from .tokenizer import train_world_tokenizer


__all__ = [
    "COLOR_WORDS",
    "DOMAINS",
    "IN_DOMAIN",
    "META_CAPTIONS",
    "SHIFTED",
    "SPLITS",
    "WORLD_FEATURES",
    "DomainSpec",
    "HumanCaptionStyle",
    "Scene",
    "SceneObject",
    "WorldDataConfig",
    "color_word_rate",
    "describe",
    "describe_variant",
    "generate_example",
    "generate_world",
    "human_caption",
    "mentions_color",
    "render_scene",
    "sample_scene",
    "scene_from_row",
    "train_world_tokenizer",
]
