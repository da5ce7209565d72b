"""Conversion of the checkpoints published with ClipCap (Mokady et al., 2021) into a [`ClipCapPolicy`].

The original `.pt` files are `state_dict`s of `ClipCaptionModel`: the mapper under `clip_project.*` and
GPT-2 (`GPT2LMHeadModel`) under `gpt.*`:

- MLP mapper (`coco_weights.pt`, `conceptual_weights.pt`, prefix 10): `clip_project.model.{0,2}.{weight,bias}`;
- transformer mapper (prefix 40, clip length 40, 8 layers): `clip_project.linear.*`,
  `clip_project.prefix_const` and `clip_project.transformer.layers.{i}.{norm1,attn,norm2,mlp}.*`.

Files saved by old transformers versions also hold GPT-2's causal-mask buffers (`attn.bias`,
`attn.masked_bias`); they carry no weights and are dropped.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from transformers import AutoTokenizer, GPT2Config
from transformers.utils import logging

from .configuration_clipcap import ClipCapConfig
from .modeling_clipcap import ClipCapPolicy


logger = logging.get_logger(__name__)

# (original key pattern, new key template); the first match renames a key.
_KEY_RENAMES = (
    (r"^clip_project\.model\.(0|2)\.(weight|bias)$", r"mapper.layers.\1.\2"),
    (r"^clip_project\.linear\.(weight|bias)$", r"mapper.clip_projection.\1"),
    (r"^clip_project\.prefix_const$", r"mapper.prefix_constants"),
    (r"^clip_project\.transformer\.layers\.(\d+)\.(norm1|norm2)\.(weight|bias)$", r"mapper.layers.\1.\2.\3"),
    (
        r"^clip_project\.transformer\.layers\.(\d+)\.attn\.to_queries\.weight$",
        r"mapper.layers.\1.attention.query.weight",
    ),
    (
        r"^clip_project\.transformer\.layers\.(\d+)\.attn\.to_keys_values\.weight$",
        r"mapper.layers.\1.attention.key_value.weight",
    ),
    (
        r"^clip_project\.transformer\.layers\.(\d+)\.attn\.project\.(weight|bias)$",
        r"mapper.layers.\1.attention.output.\2",
    ),
    (r"^clip_project\.transformer\.layers\.(\d+)\.mlp\.fc1\.(weight|bias)$", r"mapper.layers.\1.mlp.0.\2"),
    (r"^clip_project\.transformer\.layers\.(\d+)\.mlp\.fc2\.(weight|bias)$", r"mapper.layers.\1.mlp.2.\2"),
    (r"^gpt\.(.+)$", r"language_model.\1"),
)
_LEGACY_GPT2_BUFFER = re.compile(r"^gpt\.transformer\.h\.\d+\.attn\.(bias|masked_bias)$")


def _shortlist(keys: list[str], limit: int = 8) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:limit]) + (f" ... ({len(keys)} in all)" if len(keys) > limit else "")


def convert_original_clipcap_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename the keys of an original ClipCap `state_dict` to [`ClipCapPolicy`]'s names.

    Raises:
        ValueError: naming every key that belongs to no known part of ClipCap.
    """
    converted, unknown = {}, []
    for key, tensor in state_dict.items():
        if _LEGACY_GPT2_BUFFER.match(key):
            continue
        for pattern, template in _KEY_RENAMES:
            if re.match(pattern, key):
                converted[re.sub(pattern, template, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise ValueError(
            f"Unexpected keys in the ClipCap checkpoint: {_shortlist(unknown)}. An original ClipCap checkpoint "
            "holds only clip_project.* (MLP or transformer mapper) and gpt.* (GPT-2) weights."
        )
    return converted


def infer_original_clipcap_architecture(
    state_dict: dict[str, torch.Tensor], embed_dim: int, prefix_length: int | None = None
) -> dict[str, Any]:
    """Read the mapper's architecture off an original ClipCap `state_dict`.

    Args:
        state_dict: the original checkpoint (keys `clip_project.*`, `gpt.*`).
        embed_dim: GPT-2's width (`n_embd`).
        prefix_length: the expected prefix length, checked against the weights when given.

    Returns:
        `ClipCapConfig` fields: `mapper_type`, `prefix_length`, `clip_embed_dim` (the mapper's input width) and,
        for the transformer mapper, `mapper_clip_length` and `mapper_num_layers`.
    """
    if "clip_project.model.2.weight" in state_dict:
        first, last = state_dict["clip_project.model.0.weight"], state_dict["clip_project.model.2.weight"]
        out_dim = last.shape[0]
        if out_dim % embed_dim != 0:
            raise ValueError(
                f"clip_project.model.2.weight has {out_dim} outputs, not a multiple of GPT-2's n_embd={embed_dim}: "
                "pass the text_config the checkpoint was trained with."
            )
        architecture = {"mapper_type": "mlp", "prefix_length": out_dim // embed_dim, "clip_embed_dim": first.shape[1]}
        source = f"clip_project.model.2.weight of shape {list(last.shape)}"
    elif "clip_project.prefix_const" in state_dict:
        constants, projection = state_dict["clip_project.prefix_const"], state_dict["clip_project.linear.weight"]
        layer_ids = {
            int(match.group(1))
            for key in state_dict
            if (match := re.match(r"^clip_project\.transformer\.layers\.(\d+)\.", key))
        }
        architecture = {
            "mapper_type": "transformer",
            "prefix_length": constants.shape[0],
            "clip_embed_dim": projection.shape[1],
            "mapper_clip_length": projection.shape[0] // embed_dim,
            "mapper_num_layers": len(layer_ids),
        }
        source = f"clip_project.prefix_const of shape {list(constants.shape)}"
    else:
        raise ValueError(
            "The checkpoint holds no ClipCap mapper: expected clip_project.model.* (MLP mapper) or "
            "clip_project.linear.* / clip_project.prefix_const / clip_project.transformer.* (transformer mapper)."
        )
    if prefix_length is not None and prefix_length != architecture["prefix_length"]:
        raise ValueError(
            f"prefix_length={prefix_length} does not fit the checkpoint: {source} holds a prefix of "
            f"{architecture['prefix_length']} embeddings of width {embed_dim}. Pass "
            f"prefix_length={architecture['prefix_length']} or leave it unset."
        )
    return architecture


def load_original_clipcap_checkpoint(
    checkpoint_path: str | os.PathLike,
    *,
    policy_class: type[ClipCapPolicy] = ClipCapPolicy,
    tokenizer: Any | str = "gpt2",
    text_config: GPT2Config | dict | None = None,
    clip_model_name: str | None = "ViT-B-32",
    clip_pretrained: str | None = "openai",
    clip_model_cfg: dict | None = None,
    clip_checkpoint_path: str | None = None,
    prefix_length: int | None = None,
    normalize_prefix: bool | None = None,
    **config_kwargs: Any,
):
    """Build a [`ClipCapPolicy`] from an original ClipCap `.pt` checkpoint.

    Args:
        checkpoint_path: the `.pt` file (`coco_weights.pt`, `conceptual_weights.pt`, a transformer-mapper one).
        policy_class: the class to build (`ClipCapPolicy` or a subclass).
        tokenizer: GPT-2's tokenizer, or a name/path to load it from (`"gpt2"`, the published models' one).
        text_config: the GPT-2 architecture; GPT-2 small (the published models') by default.
        clip_model_name, clip_pretrained, clip_model_cfg, clip_checkpoint_path: the frozen encoder (see
            [`ClipCapConfig`]); the published MLP checkpoints were trained on OpenAI's ViT-B/32 (the default),
            the published transformer one on OpenAI's RN50x4 (`clip_model_name="RN50x4"`). Without
            `clip_pretrained` and `clip_checkpoint_path` the encoder keeps random weights.
        prefix_length: checked against the weights (10 for the MLP checkpoints, 40 for the transformer one);
            read from them when unset.
        normalize_prefix: L2-normalise the image embedding before the mapper; by default `True` for the
            transformer mapper (as its public inference code) and `False` for the MLP mapper.
        config_kwargs: other [`ClipCapConfig`] fields (`freeze_mapper`, `freeze_language_model`, ...).

    Raises:
        ValueError: unexpected or missing keys, a prefix length or encoder width that does not fit the weights,
            or tensors whose shapes do not match `text_config`, each named.
    """
    state_dict = _read_original_checkpoint(checkpoint_path)
    if isinstance(text_config, dict) or text_config is None:
        text_config = GPT2Config(**(text_config or {}))
    architecture = infer_original_clipcap_architecture(state_dict, text_config.n_embd, prefix_length)
    clip_embed_dim = architecture.pop("clip_embed_dim")
    if normalize_prefix is None:
        normalize_prefix = architecture["mapper_type"] == "transformer"
    config = ClipCapConfig(
        clip_model_name=clip_model_name,
        clip_pretrained=clip_pretrained,
        clip_model_cfg=clip_model_cfg,
        clip_checkpoint_path=clip_checkpoint_path,
        normalize_prefix=normalize_prefix,
        text_config=text_config,
        **architecture,
        **config_kwargs,
    )
    if clip_embed_dim != config.clip_embed_dim:
        raise ValueError(
            f"The checkpoint's mapper reads {clip_embed_dim}-dimensional image embeddings but the encoder "
            f"({clip_model_name or 'clip_model_cfg'}) produces {config.clip_embed_dim}: pass the CLIP the "
            "checkpoint was trained with (ViT-B-32 for the MLP checkpoints: 512; RN50x4 for the transformer: 640)."
        )
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = AutoTokenizer.from_pretrained(tokenizer)
    policy = policy_class(config, tokenizer=tokenizer)
    if clip_pretrained is not None or clip_checkpoint_path is not None:
        policy.load_encoder_weights()
    else:
        logger.warning("No clip_pretrained tag or clip_checkpoint_path: the ClipCap image encoder is random.")
    _load_converted_weights(policy, convert_original_clipcap_state_dict(state_dict))
    return policy.eval()


def _read_original_checkpoint(checkpoint_path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """`torch.load` of an original checkpoint, with errors that name the file and say what it holds instead."""
    path = os.fspath(checkpoint_path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No ClipCap checkpoint at {path!r}: pass the path of the .pt file.")
    if os.path.getsize(path) == 0:
        raise ValueError(f"The ClipCap checkpoint {path!r} is empty (0 bytes): download it again.")
    try:
        state_dict = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights-only errors alike: the file is not a readable checkpoint
        raise ValueError(
            f"{path!r} is not a readable PyTorch checkpoint ({type(error).__name__}: {str(error)[:200]}). An original "
            "ClipCap checkpoint is a state_dict saved with torch.save; download it again if it was cut off."
        ) from error
    if isinstance(state_dict, dict) and isinstance(state_dict.get("state_dict"), dict):
        state_dict = state_dict["state_dict"]
    if not isinstance(state_dict, dict) or not all(isinstance(value, torch.Tensor) for value in state_dict.values()):
        raise ValueError(
            f"{path!r} holds a {type(state_dict).__name__}, not a state_dict (a dict of tensors named clip_project.* "
            "and gpt.*): pass an original ClipCap checkpoint."
        )
    return state_dict


def _load_converted_weights(policy, converted: dict[str, torch.Tensor]) -> None:
    """Copy converted mapper and GPT-2 weights into `policy`, with named errors for any mismatch."""
    expected = {
        key: tensor for key, tensor in policy.state_dict().items() if key.startswith(("mapper.", "language_model."))
    }
    tied = {f"language_model.{key}" for key in policy.language_model._tied_weights_keys or {}}
    missing = [key for key in expected if key not in converted and key not in tied]
    unexpected = [key for key in converted if key not in expected]
    if missing or unexpected:
        raise ValueError(
            "The ClipCap checkpoint does not fit the configured architecture. "
            + (f"Missing keys: {_shortlist(missing)}. " if missing else "")
            + (f"Unexpected keys: {_shortlist(unexpected)}. " if unexpected else "")
            + "Check text_config (GPT-2 size) and the mapper settings against the checkpoint."
        )
    mismatched = [
        f"{key}: checkpoint {list(tensor.shape)} vs model {list(expected[key].shape)}"
        for key, tensor in converted.items()
        if tensor.shape != expected[key].shape
    ]
    if mismatched:
        raise ValueError(
            f"Shape mismatch between the ClipCap checkpoint and the model: {_shortlist(mismatched, 4)}. "
            "Pass the text_config the checkpoint was trained with."
        )
    policy.load_state_dict(converted, strict=False)


# `ClipCapPolicy.from_original_checkpoint(path, ...)` is this converter, wired here so that the modeling file does not
# import it (imports go one way: the converter reads the modeling file).
ClipCapPolicy._original_checkpoint_loader = staticmethod(load_original_clipcap_checkpoint)
