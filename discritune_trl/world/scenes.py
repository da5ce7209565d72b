"""Scenes of the synthetic world: a few coloured shapes on a background, sampled from a seed and drawn with PIL.

A scene is data (:class:`Scene`); drawing it is a pure function of that data (:func:`render_scene`). Two
domains share the same objects but differ in how scenes are composed and drawn:

- ``"in_domain"``: 1–2 objects on a plain dark background. The captioner and the retriever are trained here.
- ``"shifted"``: 3 objects on other, noisy backgrounds. Nothing is trained here; it plays the paper's
  cross-domain test sets.

Everything random comes from a `numpy` generator seeded by ``(seed, split, index)``, so any image can be
regenerated on its own, in any order, bit-identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw


COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 190, 70),
    "blue": (60, 100, 240),
    "yellow": (240, 220, 40),
    "purple": (160, 70, 210),
    "orange": (245, 140, 30),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")
# Side of the shape's bounding box, as a fraction of the image side.
SIZES: dict[str, float] = {"small": 0.26, "large": 0.42}
# Centre of each named position, as fractions of the image side (x, y).
POSITIONS: dict[str, tuple[float, float]] = {
    "top left": (0.27, 0.27),
    "top right": (0.73, 0.27),
    "bottom left": (0.27, 0.73),
    "bottom right": (0.73, 0.73),
    "center": (0.5, 0.5),
}
CORNERS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")


@dataclass(frozen=True)
class DomainSpec:
    """How scenes of one domain are composed and drawn.

    Args:
        name: the domain's name, stored in the dataset's ``domain`` column.
        num_objects: the object counts a scene may have (uniformly drawn).
        backgrounds: named background colours (uniformly drawn).
        pixel_noise: standard deviation of the per-pixel grey Gaussian noise added to the image, in
            0–255 units (0 for clean rendering).
        jitter: largest random shift of an object's centre, as a fraction of the image side.
    """

    name: str
    num_objects: tuple[int, ...]
    backgrounds: dict[str, tuple[int, int, int]]
    pixel_noise: float = 0.0
    jitter: float = 0.04


IN_DOMAIN = DomainSpec(
    name="in_domain",
    num_objects=(1, 2),
    backgrounds={
        "black": (15, 15, 15),
        "gray": (70, 70, 70),
        "brown": (60, 40, 25),
        "dark green": (20, 55, 30),
        "dark blue": (20, 25, 65),
    },
)
SHIFTED = DomainSpec(
    name="shifted",
    num_objects=(3,),
    backgrounds={"teal": (20, 70, 75), "maroon": (80, 20, 40), "olive": (65, 65, 20)},
    pixel_noise=18.0,
)
DOMAINS: dict[str, DomainSpec] = {IN_DOMAIN.name: IN_DOMAIN, SHIFTED.name: SHIFTED}


@dataclass(frozen=True)
class SceneObject:
    """One shape in a scene. `position` names where it sits; `center` is its exact centre in [0, 1]²."""

    shape: str
    color: str
    size: str
    position: str
    center: tuple[float, float]


@dataclass(frozen=True)
class Scene:
    """A background and its objects, listed in reading order (top to bottom, left to right)."""

    domain: str
    background: str
    objects: tuple[SceneObject, ...] = field(default_factory=tuple)


def scene_rng(seed: int, split_index: int, image_index: int) -> np.random.Generator:
    """The generator that draws image `image_index` of split number `split_index` (independent of any other)."""
    return np.random.default_rng([seed, split_index, image_index])


def sample_scene(rng: np.random.Generator, domain: DomainSpec) -> Scene:
    """Draw a scene of `domain`: its object count, background, and each object's attributes and place."""
    num_objects = int(rng.choice(domain.num_objects))
    if num_objects == 1:
        positions = [str(rng.choice(CORNERS + ("center",)))]
    else:
        if num_objects > len(CORNERS):
            raise ValueError(f"A scene holds at most {len(CORNERS)} objects (one per corner); got {num_objects}.")
        positions = [CORNERS[i] for i in sorted(rng.choice(len(CORNERS), size=num_objects, replace=False))]
    objects = []
    for position in positions:
        base_x, base_y = POSITIONS[position]
        dx, dy = rng.uniform(-domain.jitter, domain.jitter, size=2)
        objects.append(
            SceneObject(
                shape=str(rng.choice(SHAPES)),
                color=str(rng.choice(list(COLORS))),
                size=str(rng.choice(list(SIZES))),
                position=position,
                center=(float(base_x + dx), float(base_y + dy)),
            )
        )
    background = str(rng.choice(list(domain.backgrounds)))
    return Scene(domain=domain.name, background=background, objects=tuple(objects))


def _draw_shape(draw: ImageDraw.ImageDraw, obj: SceneObject, canvas_size: int) -> None:
    half = SIZES[obj.size] * canvas_size / 2
    cx, cy = obj.center[0] * canvas_size, obj.center[1] * canvas_size
    box = (cx - half, cy - half, cx + half, cy + half)
    fill = COLORS[obj.color]
    if obj.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif obj.shape == "square":
        inset = half * 0.15  # a square's area would otherwise dwarf the other shapes of the same size
        draw.rectangle((box[0] + inset, box[1] + inset, box[2] - inset, box[3] - inset), fill=fill)
    elif obj.shape == "triangle":
        draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=fill)
    elif obj.shape == "cross":
        arm = half * 0.38
        draw.rectangle((cx - half, cy - arm, cx + half, cy + arm), fill=fill)
        draw.rectangle((cx - arm, cy - half, cx + arm, cy + half), fill=fill)
    else:
        raise ValueError(f"Unknown shape {obj.shape!r}; known shapes: {SHAPES}.")


def render_scene(
    scene: Scene, image_size: int = 32, rng: np.random.Generator | None = None, supersample: int = 4
) -> Image.Image:
    """Draw `scene` as an `image_size`² RGB image.

    Shapes are drawn at `supersample` times the size and downscaled, which anti-aliases their edges.
    `rng` draws the pixel noise of noisy domains (required there, unused otherwise).
    """
    domain = DOMAINS[scene.domain]
    canvas_size = image_size * supersample
    canvas = Image.new("RGB", (canvas_size, canvas_size), domain.backgrounds[scene.background])
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw_shape(draw, obj, canvas_size)
    image = canvas.resize((image_size, image_size), Image.Resampling.BOX)
    if domain.pixel_noise > 0:
        if rng is None:
            raise ValueError(f"Domain {domain.name!r} draws pixel noise: pass rng=scene_rng(...).")
        pixels = np.asarray(image, dtype=np.float32)
        noise = rng.normal(0.0, domain.pixel_noise, size=pixels.shape[:2] + (1,))  # [H, W, 1]: grey noise
        image = Image.fromarray(np.clip(pixels + noise, 0, 255).round().astype(np.uint8))
    return image
