"""One place that builds open_clip models, shared by `OpenCLIPRetriever` and `ClipCapPolicy`'s frozen encoder.

An open_clip model is named in one of three ways:

- an architecture name and a pretrained tag (`"ViT-B-32"`, `"openai"`), the paper's setting; needs the
  weights in open_clip's cache or a connection;
- an architecture name or config dict and a local checkpoint path (`open_clip`'s own checkpoint format);
- a config dict alone (random weights), which is how tests and the embedded world build small models.
"""

from __future__ import annotations

import copy
from typing import Any

import open_clip
import torch


def open_clip_model_config(model_name: str | None, model_cfg: dict[str, Any] | None = None) -> dict[str, Any]:
    """The architecture config of `model_name` from open_clip's registry, or `model_cfg` when given."""
    if model_cfg is not None:
        return copy.deepcopy(dict(model_cfg))
    if model_name is None:
        raise ValueError("Pass an open_clip architecture name (e.g. 'ViT-B-32') or a model_cfg dict.")
    config = open_clip.get_model_config(model_name)
    if config is None:
        raise ValueError(
            f"Unknown open_clip architecture {model_name!r}. Known names: open_clip.list_models(); "
            "or pass model_cfg={'embed_dim': ..., 'vision_cfg': {...}, 'text_cfg': {...}}."
        )
    return copy.deepcopy(config)


def build_open_clip(
    model_name: str | None = None,
    pretrained: str | None = None,
    *,
    model_cfg: dict[str, Any] | None = None,
    checkpoint_path: str | None = None,
    cache_dir: str | None = None,
) -> tuple[torch.nn.Module, Any, Any]:
    """Build an open_clip model with its eval-time image transform and its tokenizer.

    Returns:
        `(model, preprocess, tokenizer)`; the model is in eval mode.
    """
    if pretrained is not None and checkpoint_path is not None:
        raise ValueError("Pass either pretrained=<tag> or checkpoint_path=<file>, not both.")
    if model_cfg is None and pretrained is not None:
        # OpenAI's weights were trained with QuickGELU; open_clip 3 only warns when the architecture disagrees.
        quick_gelu = bool((open_clip.get_pretrained_cfg(model_name, pretrained) or {}).get("quick_gelu", False))
        try:
            model, _, preprocess = open_clip.create_model_and_transforms(
                model_name, pretrained=pretrained, cache_dir=cache_dir, force_quick_gelu=quick_gelu
            )
        except Exception as error:  # the download failed or the tag is unknown
            raise OSError(
                f"Could not load open_clip weights {model_name!r}/{pretrained!r} ({error}). Without a "
                "connection, download them elsewhere and pass checkpoint_path=<file>, or place them in "
                "open_clip's cache (cache_dir)."
            ) from error
        tokenizer = open_clip.get_tokenizer(model_name)
        return model.eval(), preprocess, tokenizer

    config = open_clip_model_config(model_name, model_cfg)
    model = open_clip.CLIP(**config)
    if checkpoint_path is not None:
        open_clip.load_checkpoint(model, checkpoint_path)
    vision_cfg = config.get("vision_cfg", {})
    image_size = vision_cfg.get("image_size", 224)
    preprocess = open_clip.image_transform(
        image_size,
        is_train=False,
        mean=vision_cfg.get("image_mean", open_clip.OPENAI_DATASET_MEAN),
        std=vision_cfg.get("image_std", open_clip.OPENAI_DATASET_STD),
    )
    context_length = config.get("text_cfg", {}).get("context_length", 77)
    tokenizer = open_clip.SimpleTokenizer(context_length=context_length)
    return model.eval(), preprocess, tokenizer
