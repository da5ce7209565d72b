"""One owner for the reward settings: build the reward model from a config, or check a given one against it.

`DiscriTuneTrainer` calls these two functions, so a config's `reward_type`, `num_hard_negatives` and
`hard_negative_similarity_ceiling` either build the reward model (the user passes retrievers) or must agree with
the `DiscriminativeRewardModel` the user passes (which is then the authority). Nothing here imports the trainer:
`args` is read by attribute name (a `DiscriTuneConfig`, or any object with those attributes).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from typing import Any

import datasets
import torch
from torch import nn
from tqdm.auto import tqdm

from ..retrievers.base import Retriever
from ..utils.images import image_batches
from .reward_model import DiscriminativeRewardModel


logger = logging.getLogger(__name__)

# Config field -> the `DiscriminativeRewardModel` attribute it sets.
REWARD_SETTINGS = {
    "reward_type": "reward_type",
    "num_hard_negatives": "num_hard_negatives",
    "hard_negative_similarity_ceiling": "similarity_ceiling",
}


def build_reward_model(
    retrievers: Retriever | Sequence[Retriever],
    args: Any,
    train_dataset: datasets.Dataset | datasets.IterableDataset | None = None,
    hard_negative_bank: torch.Tensor | Sequence[torch.Tensor] | None = None,
    image_column: str | None = None,
    batch_size: int | None = None,
    defer_hard_negative_bank: bool = False,
) -> DiscriminativeRewardModel:
    """The `DiscriminativeRewardModel` a config describes: the one way the trainer, the examples and the main job
    build it.

    With `args.num_hard_negatives > 0` the hard-negative bank is `hard_negative_bank` when given, else the training
    images, encoded here once (with a progress bar, off with `args.disable_tqdm`) by each retriever (Appendix D.2 mines
    distractors among them).

    Args:
        retrievers: the frozen judge, or several (averaged with `multi_retriever="mean"`).
        args: a `DiscriTuneConfig` (or any object with `reward_type`, `num_hard_negatives` and
            `hard_negative_similarity_ceiling`).
        train_dataset: the training images, for the bank when `num_hard_negatives > 0` and no bank is given; a
            map-style `datasets.Dataset` (a stream cannot be encoded up front).
        hard_negative_bank: `[M, D]` image embeddings (one per retriever), e.g. from the frozen-embedding cache.
        image_column: the column of `train_dataset` holding the images (default: `args.image_column` or `"image"`).
        batch_size: images per encoder batch (default: `args.cache_batch_size` or 64).
        defer_hard_negative_bank: build without hard negatives for now; the caller then calls
            `reward_model.set_hard_negative_bank(bank, args.num_hard_negatives)` once it has the embeddings (the trainer
            does so from its frozen-embedding cache, which encodes the training images anyway).

    Returns:
        The reward model, frozen and in eval mode.
    """
    num_hard_negatives = 0 if defer_hard_negative_bank else args.num_hard_negatives
    if num_hard_negatives > 0 and hard_negative_bank is None:
        hard_negative_bank = encode_hard_negative_bank(
            retrievers,
            train_dataset,
            image_column=image_column or getattr(args, "image_column", "image"),
            batch_size=batch_size or getattr(args, "cache_batch_size", 64),
            disable_tqdm=getattr(args, "disable_tqdm", False),
        )
    reward_model = DiscriminativeRewardModel(
        retrievers,
        reward_type=args.reward_type,
        num_hard_negatives=num_hard_negatives,
        hard_negative_bank=hard_negative_bank,
        similarity_ceiling=args.hard_negative_similarity_ceiling,
    )
    return reward_model.eval()


def encode_hard_negative_bank(
    retrievers: Retriever | Sequence[Retriever],
    train_dataset: datasets.Dataset | datasets.IterableDataset | None,
    image_column: str = "image",
    batch_size: int = 64,
    disable_tqdm: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """`[M, D]` L2-normalised embeddings of the training images (one tensor per retriever when there are several),
    to mine hard negatives from, with a progress bar (unless `disable_tqdm`; `build_reward_model` passes the
    config's `disable_tqdm`).

    Raises:
        ValueError: `train_dataset` is missing or a stream (`datasets.IterableDataset`): a bank needs every training
            image up front.
    """
    retriever_list = list(retrievers) if isinstance(retrievers, (list, tuple, nn.ModuleList)) else [retrievers]
    if isinstance(train_dataset, datasets.IterableDataset):
        raise ValueError(
            "num_hard_negatives > 0 mines distractors among the training images, but train_dataset is a streaming "
            "datasets.IterableDataset whose images cannot be encoded up front. Use a map-style dataset (no "
            "--dataset_streaming), pass a DiscriminativeRewardModel with its own hard_negative_bank, or set "
            "num_hard_negatives=0."
        )
    if not isinstance(train_dataset, datasets.Dataset):
        raise ValueError(
            f"num_hard_negatives > 0 needs the training images to mine distractors from, got train_dataset of type "
            f"{type(train_dataset).__name__}; pass a datasets.Dataset, or a hard_negative_bank."
        )
    if image_column not in train_dataset.column_names:
        raise ValueError(
            f"train_dataset has no column {image_column!r} to build the hard-negative bank from; its columns are "
            f"{train_dataset.column_names}. Set image_column."
        )
    dataset = train_dataset.select_columns([image_column])
    feature = dataset.features[image_column]
    if isinstance(feature, datasets.Image) and not feature.decode:
        dataset = dataset.cast_column(image_column, datasets.Image(decode=True))
    banks: list[list[torch.Tensor]] = [[] for _ in retriever_list]
    progress = tqdm(
        total=len(dataset), desc="Encoding the training images (hard-negative bank)", unit="img", disable=disable_tqdm
    )
    with torch.no_grad():
        for images in image_batches(dataset, batch_size, image_column):
            for bank, retriever in zip(banks, retriever_list):
                device = next(retriever.parameters(), torch.empty(0)).device
                bank.append(retriever.encode_images(retriever.preprocess(images).to(device)).float().cpu())
            progress.update(len(images))
    progress.close()
    tensors = [torch.cat(bank) for bank in banks]
    return tensors if len(tensors) > 1 else tensors[0]


def user_set_reward_settings(args: Any) -> dict[str, Any]:
    """The reward settings of `args` that differ from their dataclass default, i.e. that the user set.

    A field set explicitly to its default value cannot be told apart from an unset one, and counts as unset.
    """
    defaults = (
        {field.name: field.default for field in dataclasses.fields(args)} if dataclasses.is_dataclass(args) else {}
    )
    return {
        name: getattr(args, name)
        for name in REWARD_SETTINGS
        if hasattr(args, name) and (name not in defaults or getattr(args, name) != defaults[name])
    }


def check_reward_model_matches(reward_model: nn.Module, args: Any) -> None:
    """Raise when a reward setting the user set in `args` disagrees with the reward model passed to the trainer.

    A passed reward model is the authority: the config's `reward_type`, `num_hard_negatives` and
    `hard_negative_similarity_ceiling` are left at their defaults, or must equal the reward model's. A field counts
    as set by the user when it differs from the `DiscriTuneConfig` default (see `user_set_reward_settings`).
    """
    for name, value in user_set_reward_settings(args).items():
        attribute = REWARD_SETTINGS[name]
        if not hasattr(reward_model, attribute):
            continue
        used = getattr(reward_model, attribute)
        if used != value:
            raise ValueError(
                f"{name}={value!r} in the config, but the reward model passed to the trainer has "
                f"{attribute}={used!r}, and a passed reward model keeps its own settings. Either drop {name} from "
                f"the config (or set it to {used!r}), or pass the retriever(s) instead of a reward model so that the "
                f"trainer builds the reward model with {name}={value!r}."
            )


def describe_reward_model(reward_model: nn.Module) -> dict[str, Any]:
    """What the reward model actually used is: its settings and its retrievers (class and name / pretrained tag)."""
    retrievers = getattr(reward_model, "retrievers", None)
    retrievers = list(retrievers) if retrievers is not None else [getattr(reward_model, "retriever", reward_model)]
    banks = getattr(reward_model, "hard_negative_banks", None) or []
    return {
        "class": type(reward_model).__name__,
        "reward_type": getattr(reward_model, "reward_type", None),
        "num_hard_negatives": getattr(reward_model, "num_hard_negatives", 0),
        "hard_negative_similarity_ceiling": getattr(reward_model, "similarity_ceiling", None),
        "hard_negative_bank_size": int(getattr(reward_model, banks[0]).shape[0]) if banks else 0,
        "multi_retriever": getattr(reward_model, "multi_retriever", None) if len(retrievers) > 1 else None,
        "retrievers": [describe_retriever(retriever) for retriever in retrievers],
    }


def describe_retriever(retriever: nn.Module) -> str:
    """`ClassName (name, pretrained=tag)` with whatever of the name and pretrained tag the retriever records."""
    config = getattr(getattr(retriever, "model", None), "config", None)
    details = [
        str(value)
        for value in (
            getattr(retriever, "model_name", None),
            getattr(config, "_name_or_path", None) or getattr(config, "name_or_path", None),
        )
        if value
    ]
    pretrained = getattr(retriever, "pretrained", None)
    if pretrained:
        details.append(f"pretrained={pretrained}")
    return f"{type(retriever).__name__} ({', '.join(details)})" if details else type(retriever).__name__
