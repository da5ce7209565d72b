"""Pretrain the world's retriever: a small open_clip CLIP, trained contrastively on (image, descriptive text).

It plays the paper's frozen CLIP ViT-B/32: a judge that reads plain visual descriptions. It only ever sees
the training domain; each step pairs every image with a freshly drawn description of it (the full one, or
one with objects reordered and some attributes or objects left out), so it learns to read partial
descriptions too, as CLIP reads captions that mention only part of an image.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from typing import Any

import datasets
import numpy as np
import open_clip
import torch
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ..utils.open_clip_utils import build_open_clip
from .captions import describe_variant
from .dataset import scene_from_row


RETRIEVER_CHECKPOINT = "open_clip_model.safetensors"
RETRIEVER_CONFIG = "open_clip_config.json"


def default_retriever_model_cfg(image_size: int = 32) -> dict[str, Any]:
    """The world's open_clip architecture: a 3-layer ViT on 8x8 patches and a 2-layer causal text tower.

    The text tower keeps CLIP's 49,408-token BPE vocabulary so `open_clip.SimpleTokenizer` reads any caption;
    its context is 32 tokens, enough for the world's longest description.
    """
    return {
        "embed_dim": 64,
        "vision_cfg": {"image_size": image_size, "patch_size": 8, "width": 96, "layers": 3, "head_width": 32},
        "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    }


@dataclass
class RetrieverTrainingConfig:
    """How the world's retriever is trained.

    Args:
        model_cfg: open_clip architecture config (`embed_dim`, `vision_cfg`, `text_cfg`); `None` for
            :func:`default_retriever_model_cfg`.
        steps: optimizer steps.
        batch_size: (image, text) pairs per step; every other pair of the batch is a negative.
        learning_rate: peak AdamW learning rate, reached after `warmup_steps` and decayed to 0 by a cosine.
        warmup_steps: linear warm-up steps.
        weight_decay: AdamW weight decay (not applied to gains, biases, embeddings and the temperature).
        full_description_prob: chance that an image is paired with its full description rather than a
            partial one from :func:`describe_variant`.
        seed: seeds the initial weights, the batches and the drawn descriptions.
    """

    model_cfg: dict[str, Any] | None = None
    steps: int = 400
    batch_size: int = 128
    learning_rate: float = 1e-3
    warmup_steps: int = 50
    weight_decay: float = 0.1
    full_description_prob: float = 0.4
    seed: int = 0

    def resolved_model_cfg(self, image_size: int) -> dict[str, Any]:
        return self.model_cfg if self.model_cfg is not None else default_retriever_model_cfg(image_size)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        # As in open_clip's training: no decay on gains, biases, embeddings or the temperature.
        is_exempt = parameter.ndim < 2 or "embedding" in name or "logit_scale" in name
        (no_decay if is_exempt else decay).append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + np.cos(np.pi * progress))


def preprocess_split(preprocess: Any, split: datasets.Dataset, desc: str, progress: bool = True) -> torch.Tensor:
    """All images of `split` through the model's eval transform: `[N, 3, H, W]`."""
    return torch.stack(
        [preprocess(image.convert("RGB")) for image in tqdm(split["image"], desc=desc, disable=not progress)]
    )


def train_retriever(
    train_split: datasets.Dataset, config: RetrieverTrainingConfig, image_size: int = 32, progress: bool = True
) -> tuple[torch.nn.Module, Any, Any]:
    """Train an open_clip CLIP on `train_split`'s images and descriptions of them.

    Returns:
        `(model, preprocess, tokenizer)` as from `build_open_clip`; the model is in eval mode.
    """
    model_cfg = config.resolved_model_cfg(image_size)
    torch.manual_seed(config.seed)
    model, preprocess, tokenizer = build_open_clip(model_cfg=model_cfg)
    pixel_values = preprocess_split(preprocess, train_split, "retriever: preprocess images", progress)  # [N, 3, H, W]
    rows = train_split.remove_columns("image").to_list()
    scenes = [scene_from_row(row) for row in rows]
    if len(scenes) < config.batch_size:
        raise ValueError(
            f"The training split has {len(scenes)} images, fewer than batch_size={config.batch_size}; "
            "use a smaller batch or a larger split."
        )

    rng = np.random.default_rng(config.seed)
    loss_fn = open_clip.ClipLoss()
    optimizer = torch.optim.AdamW(_param_groups(model, config.weight_decay), lr=config.learning_rate)
    max_log_scale = float(np.log(100.0))  # open_clip clamps the temperature at 100, as OpenAI CLIP
    model.train()
    bar = tqdm(range(config.steps), desc="retriever: contrastive training", disable=not progress)
    for step in bar:
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * _lr_factor(step, config.warmup_steps, config.steps)
        indices = rng.choice(len(scenes), size=config.batch_size, replace=False)
        texts = [
            rows[i]["descriptive"] if rng.random() < config.full_description_prob else describe_variant(scenes[i], rng)
            for i in indices
        ]
        image_features = model.encode_image(pixel_values[indices], normalize=True)  # [B, D]
        text_features = model.encode_text(tokenizer(texts), normalize=True)  # [B, D]
        loss = loss_fn(image_features, text_features, model.logit_scale.exp())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, max_log_scale)
        if step % 20 == 0 or step == config.steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}", scale=f"{model.logit_scale.exp().item():.1f}")
    return model.eval(), preprocess, tokenizer


def save_retriever(model: torch.nn.Module, model_cfg: dict[str, Any], output_dir: str) -> tuple[str, str]:
    """Write the open_clip checkpoint (safetensors) and its architecture config (JSON) into `output_dir`.

    Returns:
        `(checkpoint_path, config_path)`; load them back with
        `OpenCLIPRetriever(model_cfg=json.load(open(config_path)), checkpoint_path=checkpoint_path)`.
    """
    os.makedirs(output_dir, exist_ok=True)
    checkpoint_path = os.path.join(output_dir, RETRIEVER_CHECKPOINT)
    config_path = os.path.join(output_dir, RETRIEVER_CONFIG)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, checkpoint_path)
    with open(config_path, "w") as file:
        json.dump(model_cfg, file, indent=2)
    return checkpoint_path, config_path


@torch.no_grad()
def encode_images(model: torch.nn.Module, pixel_values: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """`[N, 3, H, W]` pixels to `[N, D]` L2-normalised image embeddings, in batches."""
    return torch.cat(
        [
            model.encode_image(pixel_values[i : i + batch_size], normalize=True)
            for i in range(0, len(pixel_values), batch_size)
        ]
    )


@torch.no_grad()
def encode_texts(model: torch.nn.Module, tokenizer: Any, texts: list[str], batch_size: int = 500) -> torch.Tensor:
    """Texts to `[N, D]` L2-normalised text embeddings, in batches."""
    return torch.cat(
        [
            model.encode_text(tokenizer(texts[i : i + batch_size]), normalize=True)
            for i in range(0, len(texts), batch_size)
        ]
    )
