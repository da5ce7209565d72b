"""`ClipCapConfig`: the architecture of a ClipCap captioner (frozen open_clip encoder -> mapper -> GPT-2)."""

from __future__ import annotations

from typing import Any

import open_clip
from transformers import GPT2Config, PreTrainedConfig

from ...utils.open_clip_utils import open_clip_model_config


MAPPER_TYPES = ("mlp", "transformer")
# Prefix lengths of the public ClipCap checkpoints: 10 for the MLP mapper (COCO, Conceptual Captions),
# 40 for the transformer mapper.
DEFAULT_PREFIX_LENGTHS = {"mlp": 10, "transformer": 40}


def open_clip_preprocess_config(
    model_cfg: dict[str, Any], model_name: str | None = None, pretrained: str | None = None
) -> dict[str, Any]:
    """The eval-time image transform settings (open_clip's `PreprocessCfg` fields) of an encoder.

    The image size comes from `model_cfg`; mean, std, interpolation and resize mode come from the pretrained
    tag's settings when there is one, else open_clip's defaults (OpenAI CLIP's mean and std).
    """
    vision_cfg = model_cfg.get("vision_cfg", {})
    settings = {
        "size": vision_cfg.get("image_size", 224),
        "mean": list(open_clip.OPENAI_DATASET_MEAN),
        "std": list(open_clip.OPENAI_DATASET_STD),
        "interpolation": "bicubic",
        "resize_mode": "shortest",
    }
    if model_name is not None and pretrained is not None:
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained) or {}
        settings.update(
            {key: tag_cfg[key] for key in ("mean", "std", "interpolation", "resize_mode") if key in tag_cfg}
        )
    settings["mean"] = [float(value) for value in settings["mean"]]
    settings["std"] = [float(value) for value in settings["std"]]
    return settings


class ClipCapConfig(PreTrainedConfig):
    r"""Configuration of a [`ClipCapPolicy`]: a frozen open_clip image encoder, a trainable mapper that turns
    the image embedding into `prefix_length` GPT-2 input embeddings, and a GPT-2 language model.

    The encoder's architecture is always stored as an open_clip config dict (`clip_model_cfg`), so a saved
    policy rebuilds its encoder from `config.json` and reads the weights from `model.safetensors`, with no
    download. `clip_model_name` / `clip_pretrained` / `clip_checkpoint_path` only say where the encoder weights
    come from when a *new* policy is built with [`ClipCapPolicy.from_pretrained_components`] or
    [`ClipCapPolicy.from_original_checkpoint`].

    > Parameters that control the frozen image encoder

    clip_model_name (`str`, *optional*, defaults to `"ViT-B-32"`):
        open_clip architecture name (the paper's ClipCap checkpoints use OpenAI CLIP ViT-B/32). Ignored when
        `clip_model_cfg` is given, except to look up the pretrained tag's preprocessing settings.
    clip_pretrained (`str`, *optional*):
        open_clip pretrained tag (e.g. `"openai"`). Also sets `quick_gelu` and the image normalisation the
        tag was trained with.
    clip_model_cfg (`dict`, *optional*):
        open_clip architecture dict (`{"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}`). Resolved
        from `clip_model_name` when not given. Only the vision tower is built.
    clip_checkpoint_path (`str`, *optional*):
        Local open_clip checkpoint with the encoder weights (instead of a pretrained tag).
    clip_preprocess_cfg (`dict`, *optional*):
        open_clip `PreprocessCfg` fields (`size`, `mean`, `std`, `interpolation`, `resize_mode`) of the image
        transform `ClipCapPolicy.preprocess` applies. Resolved from the encoder when not given.

    > Parameters that control the mapper

    mapper_type (`str`, *optional*, defaults to `"mlp"`):
        `"mlp"`: Linear-Tanh-Linear, hidden size `prefix_length * n_embd // 2` (the public COCO and
        Conceptual Captions checkpoints). `"transformer"`: a linear map to `mapper_clip_length` tokens followed
        by a transformer over them and `prefix_length` learned constants, whose outputs are the prefix.
    prefix_length (`int`, *optional*):
        Number of GPT-2 input embeddings the image becomes; 10 for `"mlp"`, 40 for `"transformer"` by default.
    mapper_clip_length (`int`, *optional*, defaults to 40):
        Transformer mapper only: number of tokens the image embedding is first projected to.
    mapper_num_layers (`int`, *optional*, defaults to 8):
        Transformer mapper only: number of transformer layers.
    mapper_num_heads (`int`, *optional*, defaults to 8):
        Transformer mapper only: attention heads (must divide GPT-2's `n_embd`).
    mapper_mlp_ratio (`float`, *optional*, defaults to 2.0):
        Transformer mapper only: hidden size of each layer's MLP relative to `n_embd`.
    normalize_prefix (`bool`, *optional*, defaults to `False`):
        L2-normalise the image embedding before the mapper (the public transformer-mapper checkpoint was
        trained this way; the MLP checkpoints were not).

    > Parameters that control the language model and training

    text_config (`GPT2Config` or `dict`, *optional*):
        The GPT-2 language model. Defaults to GPT-2 small (the architecture of `gpt2` on the Hub).
    freeze_mapper (`bool`, *optional*, defaults to `False`):
        Keep the mapper's weights fixed (`requires_grad=False`).
    freeze_language_model (`bool`, *optional*, defaults to `False`):
        Keep GPT-2's weights fixed (the transformer-mapper ClipCap variant trains the mapper only).
    """

    model_type = "clipcap"
    sub_configs_defaults = {"text_config": GPT2Config}

    clip_model_name: str | None = "ViT-B-32"
    clip_pretrained: str | None = None
    clip_model_cfg: dict | None = None
    clip_checkpoint_path: str | None = None
    clip_preprocess_cfg: dict | None = None
    mapper_type: str = "mlp"
    prefix_length: int | None = None
    mapper_clip_length: int = 40
    mapper_num_layers: int = 8
    mapper_num_heads: int = 8
    mapper_mlp_ratio: float = 2.0
    normalize_prefix: bool = False
    text_config: dict | PreTrainedConfig | None = None
    freeze_mapper: bool = False
    freeze_language_model: bool = False

    def __post_init__(self, **kwargs):
        # Configs saved before the reduction became a per-call argument hold `log_prob_reduction="mean"`, which is
        # what every call defaults to; any other value would now be ignored, so it is refused.
        log_prob_reduction = kwargs.pop("log_prob_reduction", "mean")
        if log_prob_reduction != "mean":
            raise ValueError(
                f"log_prob_reduction={log_prob_reduction!r} is no longer a ClipCapConfig field: pass "
                "reduction= to caption_log_probs, or set DiscriTuneConfig.log_prob_reduction for training."
            )
        super().__post_init__(**kwargs)
        if not isinstance(self.text_config, GPT2Config):  # transformers < 5.20 leaves sub-configs as given
            self.text_config = GPT2Config(**(self.text_config or {}))
        if self.mapper_type not in MAPPER_TYPES:
            raise ValueError(f"mapper_type={self.mapper_type!r} is not one of {MAPPER_TYPES}.")
        if self.prefix_length is None:
            self.prefix_length = DEFAULT_PREFIX_LENGTHS[self.mapper_type]
        if self.prefix_length < 1:
            raise ValueError(f"prefix_length={self.prefix_length} must be >= 1.")
        if self.clip_model_cfg is None:
            self.clip_model_cfg = open_clip_model_config(self.clip_model_name)
            if self.clip_pretrained is not None:
                tag_cfg = open_clip.get_pretrained_cfg(self.clip_model_name, self.clip_pretrained) or {}
                if tag_cfg.get("quick_gelu", False):
                    # OpenAI's CLIP weights were trained with QuickGELU; the bare architecture uses GELU.
                    self.clip_model_cfg["quick_gelu"] = True
        if self.clip_preprocess_cfg is None:
            self.clip_preprocess_cfg = open_clip_preprocess_config(
                self.clip_model_cfg, self.clip_model_name, self.clip_pretrained
            )
        if self.mapper_type == "transformer" and self.text_config.n_embd % self.mapper_num_heads != 0:
            raise ValueError(
                f"mapper_num_heads={self.mapper_num_heads} does not divide the GPT-2 width "
                f"n_embd={self.text_config.n_embd}; pick a divisor."
            )

    @property
    def clip_embed_dim(self) -> int:
        """Width of the frozen encoder's output (`image_embeds`), i.e. the mapper's input size."""
        return int(self.clip_model_cfg["embed_dim"])
