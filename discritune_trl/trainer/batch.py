"""`DiscriTuneBatch`: the one layout of what `DiscriTuneCollator` hands `DiscriTuneTrainer`, and the dataset columns
the collator and the frozen-embedding cache share."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch


# Dataset columns. `INDEX_COLUMN` is added by the trainer (each row's dataset index, for logging); the embedding
# columns by `cache_frozen_embeddings`, and a collated batch carries them under the same names.
INDEX_COLUMN = "_discritune_index"
POLICY_EMBEDS_COLUMN = "policy_image_embeds"
RETRIEVER_EMBEDS_COLUMN = "retriever_image_embeds"

# One tensor, or one per retriever when the reward model has several; a retriever's pixels may also be a mapping of
# tensors (SigLIP2's `BatchFeature`: patches, patch mask, grid shapes).
ImageTensors = torch.Tensor | Mapping[str, torch.Tensor] | list[torch.Tensor | Mapping[str, torch.Tensor]]


@dataclass(eq=False)  # fields are tensors: compare them with torch, not ==
class DiscriTuneBatch(Mapping):
    """One collated batch of `B` images: what the policy reads, what the retriever reads, and bookkeeping.

    For the policy exactly one of `policy_pixel_values` (from `policy.preprocess`) and `policy_image_embeds` (cached
    `policy.encode_images` output) is set; for the retriever exactly one of `retriever_pixel_values` and
    `retriever_image_embeds` (a list with one tensor per retriever when the reward model has several). A batch in
    which no image could be decoded holds neither (`num_images == 0`).

    It is also a read-only `Mapping` of its set fields, and has `.to(...)`, so that `Trainer._prepare_inputs` and
    Accelerate's data loaders move it to the device as they move a dict (they rebuild a mapping as
    `type(batch)(dict(batch))`, which this class accepts).

    Args:
        image_index (`torch.LongTensor` of shape `[B]`): each image's row index in the dataset (for logging and
            for putting evaluation captions back in dataset order); -1 where the dataset has no index column.
        num_unreadable_images (`torch.LongTensor`, 0-d): rows of this batch dropped because their image could not
            be decoded.
        policy_pixel_values (`torch.Tensor` of shape `[B, ...]` or a `Mapping` of tensors, *optional*): the policy's
            pixels, as its `preprocess` returns them: a tensor, or a `transformers.BatchFeature` when the policy reads
            several inputs per image whose shapes vary between images (`VLMPolicy`: prompt ids, tiles, patch grids).
        policy_image_embeds (`torch.Tensor` of shape `[B, ...]`, *optional*): the policy's cached frozen features.
        retriever_pixel_values (`torch.Tensor`, `BatchFeature` or a list of them, *optional*): the retriever's
            pixels, as `reward_model.preprocess` returns them: a `[B, 3, H, W]` tensor, or a `BatchFeature` for a
            retriever that reads several tensors per image (`Siglip2Model`: patches, patch mask, grid shapes); a
            list with one per retriever when the reward model has several.
        retriever_image_embeds (`torch.Tensor` or `list[torch.Tensor]`, *optional*): the retriever's cached
            L2-normalised `[B, D]` image embeddings.
    """

    image_index: torch.LongTensor
    num_unreadable_images: torch.LongTensor | None = None
    policy_pixel_values: torch.Tensor | None = None
    policy_image_embeds: torch.Tensor | None = None
    retriever_pixel_values: ImageTensors | None = None
    retriever_image_embeds: ImageTensors | None = None

    def __post_init__(self):
        if isinstance(self.image_index, Mapping):  # rebuilt from a mapping, as Trainer and Accelerate do
            values = dict(self.image_index)
            unknown = sorted(set(values) - _FIELD_NAMES)
            if unknown:
                raise TypeError(f"DiscriTuneBatch has no field(s) {unknown}; its fields are {sorted(_FIELD_NAMES)}.")
            if "image_index" not in values:
                raise TypeError(f"A DiscriTuneBatch needs image_index; got only {sorted(values)}.")
            for name in _FIELD_NAMES:
                setattr(self, name, values.get(name))
        if self.num_unreadable_images is None:
            self.num_unreadable_images = torch.tensor(0)
        for model, pixels, embeds in (
            ("policy", self.policy_pixel_values, self.policy_image_embeds),
            ("retriever", self.retriever_pixel_values, self.retriever_image_embeds),
        ):
            if pixels is not None and embeds is not None:
                raise ValueError(f"A batch holds {model}_pixel_values or {model}_image_embeds, not both.")
            if (pixels is None and embeds is None) != (self.num_images == 0):
                raise ValueError(
                    f"A batch of {self.num_images} image(s) needs exactly one of {model}_pixel_values and "
                    f"{model}_image_embeds (neither when no image could be read)."
                )

    @property
    def num_images(self) -> int:
        """`B`, the number of readable images in the batch."""
        return self.image_index.shape[0]

    @property
    def policy_inputs(self) -> dict[str, torch.Tensor]:
        """The policy's image input, as keyword arguments: `{"image_embeds": ...}` or `{"pixel_values": ...}`."""
        return _model_inputs("policy", self.policy_pixel_values, self.policy_image_embeds)

    @property
    def retriever_inputs(self) -> dict[str, ImageTensors]:
        """The reward model's image input, as keyword arguments: `{"image_embeds": ...}` or `{"pixel_values": ...}`."""
        return _model_inputs("retriever", self.retriever_pixel_values, self.retriever_image_embeds)

    def to(self, *args: Any, **kwargs: Any) -> DiscriTuneBatch:
        """A batch with every tensor moved to a device (`batch.to("cuda")`), or with the floating-point tensors cast
        (`batch.to(torch.bfloat16)`): as `transformers.BatchFeature.to`, the index and the count stay integers."""
        device = kwargs.get("device", next((arg for arg in args if isinstance(arg, (str, int, torch.device))), None))

        def move(value):
            if isinstance(value, Mapping):  # a `BatchFeature`: a VLMPolicy's (prompt ids + image inputs) or SigLIP2's
                return type(value)({key: move(tensor) for key, tensor in value.items()})
            if isinstance(value, (list, tuple)):
                return [move(tensor) for tensor in value]
            if torch.is_floating_point(value):
                return value.to(*args, **kwargs)
            return value.to(device, non_blocking=kwargs.get("non_blocking", False)) if device is not None else value

        return DiscriTuneBatch(**{name: move(value) for name, value in self._set_fields().items()})

    # The read-only Mapping of the set fields.

    def _set_fields(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in _FIELDS if getattr(self, field.name) is not None}

    def __getitem__(self, name: str) -> Any:
        value = getattr(self, name, None) if name in _FIELD_NAMES else None
        if value is None:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(self._set_fields())

    def __len__(self) -> int:
        return len(self._set_fields())


_FIELDS = dataclasses.fields(DiscriTuneBatch)
_FIELD_NAMES = frozenset(field.name for field in _FIELDS)  # the cached columns are two of them, by the same names


def _model_inputs(model: str, pixel_values: Any, image_embeds: Any) -> dict[str, Any]:
    if image_embeds is not None:
        return {"image_embeds": image_embeds}
    if pixel_values is not None:
        return {"pixel_values": pixel_values}
    raise ValueError(f"This batch holds no readable image, so there is no {model} input.")
