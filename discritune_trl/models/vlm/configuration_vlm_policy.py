"""Configuration of :class:`~discritune_trl.models.vlm.VLMPolicy`."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig


DEFAULT_VLM_PROMPT = "Describe this image in one sentence."


@strict
class VLMPolicyConfig(PreTrainedConfig):
    r"""Configuration of a DiscriTune policy around a prompted vision-language model (`AutoModelForImageTextToText`).

    Args:
        vlm_config (`dict`):
            The wrapped model's config, as `model.config.to_dict()` (its `model_type` picks the class).
        prompt (`str`, *optional*, defaults to `"Describe this image in one sentence."`):
            The user turn sent with the image through the processor's chat template. Neither returned with the
            caption nor scored by `caption_log_probs`.
        stop_at_full_stop (`bool`, *optional*, defaults to `True`):
            End captions at the first full stop (the paper), as well as at EOS and the end-of-turn token. Set it to
            `False` to let instruction-tuned models write several sentences.
        freeze_vision_encoder (`bool`, *optional*, defaults to `True`):
            Freeze the vision tower (no gradients, eval mode). The connector and the language model stay trainable
            (LoRA, when `peft_config` is given, trains the language model's adapters only).
    """

    model_type = "discritune_vlm"

    vlm_config: dict | None = None
    prompt: str = DEFAULT_VLM_PROMPT
    stop_at_full_stop: bool = True
    freeze_vision_encoder: bool = True

    def build_vlm_config(self) -> PreTrainedConfig:
        """The wrapped model's config object, rebuilt from `vlm_config`."""
        if not self.vlm_config or "model_type" not in self.vlm_config:
            raise ValueError(
                "VLMPolicyConfig.vlm_config must be a model config dict with a model_type; build the policy with "
                "VLMPolicy.from_vlm(model, processor)."
            )
        config_dict = dict(self.vlm_config)
        return CONFIG_MAPPING[config_dict.pop("model_type")].from_dict(config_dict)


# Lets `AutoConfig` (and so `AutoProcessor`) read a saved policy folder's config.json.
AutoConfig.register(VLMPolicyConfig.model_type, VLMPolicyConfig, exist_ok=True)
