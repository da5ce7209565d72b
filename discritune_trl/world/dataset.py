"""The world as a `datasets.DatasetDict`: a training split and two test splits, in-domain and shifted.

Each row holds the rendered `image` (a `datasets.Image` feature), its reference `captions`, its full
`descriptive` caption and the scene's attributes:

============  ==========================================  ==========================================
split         images                                      `captions` (the references)
============  ==========================================  ==========================================
`train`       training domain                             "human" alt-text, mostly vague
`in_domain`   training domain, unseen scenes              "human" alt-text, mostly vague
`shifted`     shifted domain (other backgrounds, noise,   descriptive, like Concadia's descriptions
              three objects)
============  ==========================================  ==========================================
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import datasets
from tqdm.auto import tqdm

from .captions import HumanCaptionStyle, describe, describe_variant, human_caption
from .scenes import IN_DOMAIN, POSITIONS, SHIFTED, Scene, SceneObject, render_scene, sample_scene, scene_rng


SPLITS = ("train", "in_domain", "shifted")
# Which domain each split is drawn from and whether its references are "human" alt-text or descriptive.
_SPLIT_DOMAIN = {"train": IN_DOMAIN, "in_domain": IN_DOMAIN, "shifted": SHIFTED}
_SPLIT_HUMAN_REFERENCES = {"train": True, "in_domain": True, "shifted": False}

WORLD_FEATURES = datasets.Features(
    {
        "image": datasets.Image(),
        "captions": datasets.List(datasets.Value("string")),
        "descriptive": datasets.Value("string"),
        "domain": datasets.Value("string"),
        "background": datasets.Value("string"),
        "num_objects": datasets.Value("int32"),
        "shapes": datasets.List(datasets.Value("string")),
        "colors": datasets.List(datasets.Value("string")),
        "sizes": datasets.List(datasets.Value("string")),
        "positions": datasets.List(datasets.Value("string")),
    }
)


@dataclass
class WorldDataConfig:
    """What the world's images and texts look like; the same config and seed give the same dataset.

    Args:
        seed: seeds every scene, rendering and caption.
        image_size: side of the square images, in pixels.
        num_train: images in the `train` split.
        num_in_domain_test: images in the `in_domain` test split (>= 100 for P@1 with 100 candidates).
        num_shifted_test: images in the `shifted` test split (>= 100 likewise).
        captions_per_image: reference captions per image.
        human_style: how often "human" captions are vague, name shapes only, or describe.
    """

    seed: int = 0
    image_size: int = 32
    num_train: int = 10_000
    num_in_domain_test: int = 1_000
    num_shifted_test: int = 1_000
    captions_per_image: int = 5
    human_style: HumanCaptionStyle = field(default_factory=HumanCaptionStyle)

    def __post_init__(self) -> None:
        if isinstance(self.human_style, dict):  # read back from JSON
            self.human_style = HumanCaptionStyle(**self.human_style)
        for name in ("num_train", "num_in_domain_test", "num_shifted_test", "captions_per_image", "image_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1.")

    def split_size(self, split: str) -> int:
        return {"train": self.num_train, "in_domain": self.num_in_domain_test, "shifted": self.num_shifted_test}[split]

    def to_dict(self) -> dict:
        return asdict(self)


def scene_from_row(row: dict) -> Scene:
    """Rebuild the :class:`Scene` of a dataset row (object centres are the nominal ones of their positions)."""
    objects = tuple(
        SceneObject(shape=shape, color=color, size=size, position=position, center=POSITIONS[position])
        for shape, color, size, position in zip(row["shapes"], row["colors"], row["sizes"], row["positions"])
    )
    return Scene(domain=row["domain"], background=row["background"], objects=objects)


def generate_example(config: WorldDataConfig, split: str, index: int) -> dict:
    """Row `index` of `split`: a scene, its image and its texts, all drawn from one generator."""
    if split not in SPLITS:
        raise ValueError(f"Unknown split {split!r}; the world's splits are {SPLITS}.")
    rng = scene_rng(config.seed, SPLITS.index(split), index)
    scene = sample_scene(rng, _SPLIT_DOMAIN[split])
    image = render_scene(scene, config.image_size, rng)
    if _SPLIT_HUMAN_REFERENCES[split]:
        captions = [human_caption(scene, rng, config.human_style) for _ in range(config.captions_per_image)]
    else:
        captions = [describe_variant(scene, rng) for _ in range(config.captions_per_image)]
    return {
        "image": image,
        "captions": captions,
        "descriptive": describe(scene),
        "domain": scene.domain,
        "background": scene.background,
        "num_objects": len(scene.objects),
        "shapes": [obj.shape for obj in scene.objects],
        "colors": [obj.color for obj in scene.objects],
        "sizes": [obj.size for obj in scene.objects],
        "positions": [obj.position for obj in scene.objects],
    }


def generate_split(config: WorldDataConfig, split: str, progress: bool = True) -> datasets.Dataset:
    """All rows of `split` as a `datasets.Dataset` with :data:`WORLD_FEATURES`."""
    rows = [
        generate_example(config, split, index)
        for index in tqdm(range(config.split_size(split)), desc=f"world: {split} images", disable=not progress)
    ]
    columns = {name: [row[name] for row in rows] for name in WORLD_FEATURES}
    return datasets.Dataset.from_dict(columns, features=WORLD_FEATURES)


def generate_world(config: WorldDataConfig | None = None, progress: bool = True) -> datasets.DatasetDict:
    """The world's three splits (`train`, `in_domain`, `shifted`)."""
    config = config or WorldDataConfig()
    return datasets.DatasetDict({split: generate_split(config, split, progress) for split in SPLITS})
