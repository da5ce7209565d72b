"""`HFCaptionerPolicy`: bring your own `transformers` image-to-text captioner as a DiscriTune policy."""

from __future__ import annotations

import transformers
from torch import nn
from transformers import PreTrainedModel

from .configuration_hf_captioner import HFCaptionerConfig
from .families import CaptionerFamily, find_family
from .policy_mixin import HFCaptionerMixin, split_processor


class HFCaptionerPolicy(HFCaptionerMixin, PreTrainedModel):
    """Any supported `transformers` captioner + its processor, as a DiscriTune policy.

    Supported families (see :mod:`.families`): `VisionEncoderDecoderModel` and other encoder-decoders whose
    encoder reads `pixel_values` (e.g. ViT-GPT2), `GitForCausalLM`, and `BlipForConditionalGeneration` (for BLIP,
    prefer :class:`~discritune_trl.models.blip.BlipPolicy`, whose checkpoints keep BLIP's parameter names).

    ```python
    model = VisionEncoderDecoderModel.from_pretrained("nlpconnect/vit-gpt2-image-captioning")
    policy = HFCaptionerPolicy.from_captioner(model, image_processor=image_processor, tokenizer=tokenizer)
    policy.save_pretrained("my-policy")  # weights under `captioner.`, config, processor
    policy = HFCaptionerPolicy.from_pretrained("my-policy")
    ```

    Args:
        config (`HFCaptionerConfig`): the wrapped model's class and config plus the policy options.
        captioner (`PreTrainedModel`, *optional*): the model to wrap; built from `config` (random weights, to be
            loaded by `from_pretrained`) when omitted.
        processor / image_processor, tokenizer (*optional*): the captioner's preprocessing; required before
            captioning.
        family (`CaptionerFamily`, *optional*): how to drive the model; found from its class when omitted.
    """

    config_class = HFCaptionerConfig
    base_model_prefix = "captioner"
    supports_gradient_checkpointing = True  # the language model's blocks (`gradient_checkpointing=True`)
    main_input_name = "pixel_values"

    def __init__(
        self,
        config: HFCaptionerConfig,
        captioner: PreTrainedModel | None = None,
        processor=None,
        *,
        image_processor=None,
        tokenizer=None,
        family: CaptionerFamily | None = None,
    ):
        super().__init__(config)
        self.captioner = captioner if captioner is not None else self._build_captioner(config)
        self.family = family if family is not None else find_family(self.captioner)
        # Registers the captioner's tied weights with the wrapper; modules already initialised keep their weights.
        self.post_init()
        self._init_policy(*split_processor(processor, image_processor, tokenizer))

    @staticmethod
    def _build_captioner(config: HFCaptionerConfig) -> PreTrainedModel:
        model_class = getattr(transformers, config.captioner_class or "", None)
        if model_class is None:
            raise ValueError(
                f"captioner_class={config.captioner_class!r} is not a transformers model class; pass captioner=."
            )
        return model_class._from_config(config.build_captioner_config())

    @classmethod
    def from_captioner(
        cls,
        model: PreTrainedModel,
        processor=None,
        *,
        image_processor=None,
        tokenizer=None,
        prompt: str = "",
        freeze_vision_encoder: bool = True,
        stop_at_full_stop: bool = True,
        family: CaptionerFamily | None = None,
    ) -> HFCaptionerPolicy:
        """Wrap an existing captioner (its weights are used as they are) and its processor.

        Raises:
            ValueError: if the model cannot generate captions from images, or the processor does not match it.
        """
        family = family if family is not None else find_family(model)
        config = HFCaptionerConfig(
            captioner_class=type(model).__name__,
            captioner_config=model.config.to_dict(),
            prompt=prompt,
            freeze_vision_encoder=freeze_vision_encoder,
            stop_at_full_stop=stop_at_full_stop,
        )
        return cls(
            config,
            captioner=model,
            processor=processor,
            image_processor=image_processor,
            tokenizer=tokenizer,
            family=family,
        )

    def _captioner_forward(self, **kwargs):
        return self.captioner(**kwargs)

    @property
    def captioner_model(self) -> nn.Module:
        """The wrapped `transformers` model."""
        return self.captioner

    def get_input_embeddings(self) -> nn.Module:
        return self.captioner.get_input_embeddings()
