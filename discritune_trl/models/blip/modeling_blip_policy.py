"""`BlipPolicy`: transformers' BLIP captioner as a DiscriTune policy.

Why a subclass of `BlipForConditionalGeneration` rather than a wrapper around one: the parameter names stay
BLIP's own, so `BlipPolicy.from_pretrained("Salesforce/blip-image-captioning-base")` loads the Hub checkpoint
without any conversion, and a saved `BlipPolicy` folder loads back into a plain `BlipForConditionalGeneration`
(for `pipeline("image-to-text")`, or anyone who never installed this library). Everything DiscriTune-specific
comes from :class:`~discritune_trl.models.hf_captioner.HFCaptionerMixin`, the same code that drives any other
captioner through `HFCaptionerPolicy`.
"""

from __future__ import annotations

from transformers import BlipForConditionalGeneration

from ..hf_captioner.families import BlipFamily
from ..hf_captioner.policy_mixin import HFCaptionerMixin, split_processor
from .configuration_blip_policy import DEFAULT_BLIP_PROMPT, BlipPolicyConfig


class BlipPolicy(HFCaptionerMixin, BlipForConditionalGeneration):
    """BLIP (ViT + BERT decoder) as a DiscriTune captioning policy.

    Build it from the Hub when connected, or from any `BlipPolicyConfig` offline:

    ```python
    policy = BlipPolicy.from_pretrained("Salesforce/blip-image-captioning-base")  # processor loaded too
    policy = BlipPolicy(BlipPolicyConfig(...), processor=processor)  # random weights, e.g. tiny for tests
    policy = BlipPolicy.from_blip(blip_model, processor)  # an already loaded BlipForConditionalGeneration
    ```

    It implements the policy interface (`preprocess`, `encode_images`, `generate_captions`,
    `caption_log_probs`) and stays a `BlipForConditionalGeneration`: `generate` is BLIP's, and so is `forward`
    except when called with `caption_ids` (the trainer's log-prob pass, see `HFCaptionerMixin.forward`).
    `save_pretrained` / `push_to_hub` also write the processor. For LoRA, wrap it with
    `peft.get_peft_model(policy, LoraConfig(target_modules=BlipPolicy.lora_target_modules))` (or pass
    `peft_config` to the trainer).

    Args:
        config (`BlipPolicyConfig`): the BLIP architecture plus `prompt`, `freeze_vision_encoder` and
            `stop_at_full_stop`. A plain `BlipConfig` is accepted and takes the policy defaults.
        processor (`BlipProcessor`, *optional*): image processor + tokenizer; required before captioning.
        image_processor, tokenizer (*optional*): the two parts, instead of `processor`.
    """

    config_class = BlipPolicyConfig
    family = BlipFamily()
    # A regex (peft's `target_modules` as a string): queries and values of the text decoder's self- and
    # cross-attention.
    lora_target_modules = r"text_decoder\.bert\.encoder\.layer\.\d+\.(attention|crossattention)\.self\.(query|value)"

    def __init__(self, config, processor=None, *, image_processor=None, tokenizer=None):
        if not isinstance(config, BlipPolicyConfig):
            config = BlipPolicyConfig(**config.to_dict())
        super().__init__(config)
        self._init_policy(*split_processor(processor, image_processor, tokenizer))

    @classmethod
    def from_blip(
        cls,
        model: BlipForConditionalGeneration,
        processor=None,
        *,
        image_processor=None,
        tokenizer=None,
        prompt: str = DEFAULT_BLIP_PROMPT,
        freeze_vision_encoder: bool = True,
        stop_at_full_stop: bool = True,
    ) -> BlipPolicy:
        """A policy with the weights of an existing `BlipForConditionalGeneration` (copied) and its processor."""
        if not isinstance(model, BlipForConditionalGeneration):
            raise TypeError(
                f"model is a {type(model).__name__}, expected a BlipForConditionalGeneration; for other captioners use "
                "HFCaptionerPolicy.from_captioner."
            )
        options = dict(prompt=prompt, freeze_vision_encoder=freeze_vision_encoder, stop_at_full_stop=stop_at_full_stop)
        config = BlipPolicyConfig(**{**model.config.to_dict(), **options})
        policy = cls(config, processor, image_processor=image_processor, tokenizer=tokenizer)
        policy.load_state_dict(model.state_dict())
        return policy.to(model.dtype)

    def _captioner_forward(self, **kwargs):
        return BlipForConditionalGeneration.forward(self, **kwargs)

    @property
    def captioner_model(self) -> BlipForConditionalGeneration:
        """The BLIP model itself: a `BlipPolicy` *is* a `BlipForConditionalGeneration`."""
        return self
