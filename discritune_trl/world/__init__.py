"""The embedded synthetic world: coloured shapes with descriptive and vague "human" captions, two domains.

See `docs/world.md`. The world plays the paper's setting offline and in minutes: a captioner trained on vague
alt-text (Conceptual Captions) is fine-tuned by DiscriTune against a retriever that reads plain descriptions
(CLIP), and tested in-domain and on a shifted domain.
"""

from .build import WorldConfig, WorldPaths, build_world, cached_world, default_cache_dir, load_or_build_world
from .captions import (
    COLOR_WORDS,
    META_CAPTIONS,
    WORLD_REGIMES,
    HumanCaptionStyle,
    color_word_rate,
    describe,
    describe_variant,
    human_caption,
    mentions_color,
)
from .dataset import SPLITS, WORLD_FEATURES, WorldDataConfig, generate_example, generate_world, scene_from_row
from .job import WORLD_TRAINING_DEFAULTS, run_world_job, world_training_config
from .scenes import DOMAINS, IN_DOMAIN, SHIFTED, DomainSpec, Scene, SceneObject, render_scene, sample_scene
from .tokenizer import train_world_tokenizer
from .train_captioner import CaptionerTrainingConfig, build_world_clipcap, train_captioner
from .train_retriever import RetrieverTrainingConfig, default_retriever_model_cfg, save_retriever, train_retriever


__all__ = [
    "WORLD_REGIMES",
    "WORLD_TRAINING_DEFAULTS",
    "run_world_job",
    "world_training_config",
    "COLOR_WORDS",
    "CaptionerTrainingConfig",
    "RetrieverTrainingConfig",
    "WorldConfig",
    "WorldPaths",
    "build_world",
    "cached_world",
    "build_world_clipcap",
    "default_cache_dir",
    "default_retriever_model_cfg",
    "load_or_build_world",
    "save_retriever",
    "train_captioner",
    "train_retriever",
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
