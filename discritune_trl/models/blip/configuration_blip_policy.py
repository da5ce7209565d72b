"""Configuration of :class:`~discritune_trl.models.blip.BlipPolicy`: a `BlipConfig` plus the policy's options."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import BlipConfig


DEFAULT_BLIP_PROMPT = "a picture of "


@strict
class BlipPolicyConfig(BlipConfig):
    r"""A `transformers.BlipConfig` with the options of a DiscriTune BLIP policy.

    It keeps `model_type = "blip"`, so the `config.json` of any BLIP captioning checkpoint
    (`Salesforce/blip-image-captioning-base`) loads into it, and a saved `BlipPolicy` folder loads back into a plain
    `BlipForConditionalGeneration` (which ignores the extra fields).

    Args:
        prompt (`str`, *optional*, defaults to `"a picture of "`):
            Text BLIP reads before the caption, as in BLIP's captioning fine-tuning. It is neither returned with the
            caption nor scored by `caption_log_probs`. `""` starts captions right after `[DEC]`.
        freeze_vision_encoder (`bool`, *optional*, defaults to `True`):
            Freeze BLIP's ViT (no gradients, kept in eval mode), as the public DiscriTune BLIP setup allows. Its
            features can then be cached with `encode_images` and passed back as `image_embeds`.
        stop_at_full_stop (`bool`, *optional*, defaults to `True`):
            End captions at the first full stop as well as at `[SEP]` (the paper's rule).
        kwargs: the arguments of `transformers.BlipConfig`.
    """

    prompt: str = DEFAULT_BLIP_PROMPT
    freeze_vision_encoder: bool = True
    stop_at_full_stop: bool = True
