"""Configuration of :class:`~discritune_trl.models.hf_captioner.HFCaptionerPolicy`."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers import CONFIG_MAPPING, AutoConfig, PreTrainedConfig


@strict
class HFCaptionerConfig(PreTrainedConfig):
    r"""Configuration of a DiscriTune policy around any supported `transformers` image-to-text model.

    Args:
        captioner_class (`str`):
            Name of the `transformers` model class, e.g. `"VisionEncoderDecoderModel"` or `"GitForCausalLM"`.
        captioner_config (`dict`):
            The wrapped model's config, as `model.config.to_dict()`.
        prompt (`str`, *optional*, defaults to `""`):
            Text the captioner reads before the caption (after its start token); neither returned with the caption
            nor scored by `caption_log_probs`.
        freeze_vision_encoder (`bool`, *optional*, defaults to `True`):
            Freeze the image encoder (no gradients, eval mode); where the family allows, its features can be cached
            with `encode_images`.
        stop_at_full_stop (`bool`, *optional*, defaults to `True`):
            End captions at the first full stop as well as at the model's end token.
    """

    model_type = "discritune_hf_captioner"

    captioner_class: str | None = None
    captioner_config: dict | None = None
    prompt: str = ""
    freeze_vision_encoder: bool = True
    stop_at_full_stop: bool = True

    def build_captioner_config(self) -> PreTrainedConfig:
        """The wrapped model's config object, rebuilt from `captioner_config`."""
        if not self.captioner_config or "model_type" not in self.captioner_config:
            raise ValueError(
                "HFCaptionerConfig.captioner_config must be a model config dict with a model_type; build the "
                "policy with HFCaptionerPolicy.from_captioner(model, processor)."
            )
        config_dict = dict(self.captioner_config)
        return CONFIG_MAPPING[config_dict.pop("model_type")].from_dict(config_dict)


# Lets `AutoConfig` (and so `AutoTokenizer` / `AutoProcessor`) read a saved policy folder's config.json.
AutoConfig.register(HFCaptionerConfig.model_type, HFCaptionerConfig, exist_ok=True)
