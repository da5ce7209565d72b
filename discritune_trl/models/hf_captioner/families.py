"""How each family of `transformers` image-to-text models encodes images, scores text and generates.

The policy code in :mod:`.policy_mixin` is the same for every captioner; what differs between BLIP, a
`VisionEncoderDecoderModel` and GIT is only *where* the image enters the text model. A
:class:`CaptionerFamily` answers exactly those questions, for a model passed in as an argument, so one
family object serves both the BLIP subclass (`model is self`) and the generic wrapper (`model` is a submodule).

Every family aligns logits with the text ids: `logits[:, t]` is the distribution of `input_ids[:, t + 1]`.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import BlipForConditionalGeneration, GenerationConfig, GitForCausalLM, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput


class CaptionerFamily:
    """One family of image-to-text models, seen through the few operations a DiscriTune policy needs.

    Attributes:
        name (`str`): short name used in messages and docs.
        caches_image_features (`bool`): whether the frozen vision encoder can run apart from the text model, so
            that its output can be cached and passed back as `image_embeds`. When False, `encode` is the
            identity and the text model reads pixel values directly.
    """

    name: str = ""
    caches_image_features: bool = True

    def matches(self, model: nn.Module) -> bool:
        """Whether `model` belongs to this family."""
        raise NotImplementedError

    def vision_encoder(self, model: nn.Module) -> nn.Module:
        """The image encoder that `freeze_vision_encoder=True` freezes."""
        raise NotImplementedError

    def encode(self, model: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
        """Image features the text model attends to (`[B, N, D]`), or the pixels for non-separable families."""
        raise NotImplementedError

    def start_token_ids(self, model: nn.Module) -> list[int]:
        """Token ids the text model starts from, before the prompt."""
        raise NotImplementedError

    def end_token_id(self, model: nn.Module) -> int | None:
        """The id that ends a caption besides full stops (`[SEP]` for BERT-style decoders, EOS for GPT-2)."""
        raise NotImplementedError

    def logits(
        self, model: nn.Module, image_features: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Teacher-forced next-token logits `[B, T, V]` for `input_ids [B, T]` (image features already per row)."""
        raise NotImplementedError

    def generate(
        self,
        model: nn.Module,
        image_features: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        generation_config: GenerationConfig,
    ) -> torch.Tensor:
        """`transformers` generation from per-image features and a shared prefix; returns prefix + new ids."""
        raise NotImplementedError


def _config_token(config, name: str) -> int | None:
    """A token id from a config, reading the first element when the config stores a list."""
    value = getattr(config, name, None)
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    return value


class BlipFamily(CaptionerFamily):
    """`BlipForConditionalGeneration`: ViT -> a BERT decoder that cross-attends to the image tokens.

    The decoder starts from `[DEC]` (`text_config.bos_token_id`) and stops at `[SEP]`, as in BLIP's own
    `generate`.
    """

    name = "blip"

    def matches(self, model):
        return isinstance(model, BlipForConditionalGeneration)

    def vision_encoder(self, model):
        return model.vision_model

    def encode(self, model, pixel_values):
        return model.vision_model(pixel_values=pixel_values).last_hidden_state  # [B, 1 + patches, D_v]

    def start_token_ids(self, model):
        return [model.config.text_config.bos_token_id]

    def end_token_id(self, model):
        return model.config.text_config.sep_token_id

    def logits(self, model, image_features, input_ids, attention_mask):
        return model.text_decoder(
            input_ids=input_ids, attention_mask=attention_mask, encoder_hidden_states=image_features, use_cache=False
        ).logits

    def generate(self, model, image_features, input_ids, attention_mask, generation_config):
        image_mask = torch.ones(image_features.shape[:-1], dtype=torch.long, device=image_features.device)
        return model.text_decoder.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            encoder_hidden_states=image_features,
            encoder_attention_mask=image_mask,
            generation_config=generation_config,
        )


class VisionEncoderDecoderFamily(CaptionerFamily):
    """Encoder-decoder models that read `pixel_values` (`VisionEncoderDecoderModel`: ViT-GPT2, TrOCR, Donut...).

    The encoder's output is passed to the model as `encoder_outputs`, so the encoder runs once per image and any
    `enc_to_dec_proj` stays trainable with the decoder.
    """

    name = "vision-encoder-decoder"

    def matches(self, model):
        config = getattr(model, "config", None)
        return (
            getattr(config, "is_encoder_decoder", False)
            and getattr(model, "main_input_name", None) == "pixel_values"
            and hasattr(model, "get_encoder")
        )

    def vision_encoder(self, model):
        return model.get_encoder()

    def encode(self, model, pixel_values):
        return model.get_encoder()(pixel_values=pixel_values).last_hidden_state  # [B, N, D_enc]

    def start_token_ids(self, model):
        start = _config_token(model.generation_config, "decoder_start_token_id")
        start = start if start is not None else _config_token(model.config, "decoder_start_token_id")
        if start is None:
            raise ValueError(
                f"{type(model).__name__}.config.decoder_start_token_id is None; set it (for GPT-2 decoders, "
                "model.config.decoder_start_token_id = tokenizer.bos_token_id) before building the policy."
            )
        return [start]

    def end_token_id(self, model):
        eos = _config_token(model.generation_config, "eos_token_id")
        return eos if eos is not None else _config_token(model.config.get_text_config(decoder=True), "eos_token_id")

    def logits(self, model, image_features, input_ids, attention_mask):
        return model(
            encoder_outputs=BaseModelOutput(last_hidden_state=image_features),
            decoder_input_ids=input_ids,
            decoder_attention_mask=attention_mask,
            use_cache=False,
        ).logits

    def generate(self, model, image_features, input_ids, attention_mask, generation_config):
        # The all-ones image mask only tells `generate` that padding is not to be inferred from the ids.
        image_mask = torch.ones(image_features.shape[:-1], dtype=torch.long, device=image_features.device)
        return model.generate(
            encoder_outputs=BaseModelOutput(last_hidden_state=image_features),
            attention_mask=image_mask,
            decoder_input_ids=input_ids,
            decoder_attention_mask=attention_mask,
            generation_config=generation_config,
        )


class GitFamily(CaptionerFamily):
    """`GitForCausalLM`: image tokens are prepended to the text inside one self-attention decoder.

    GIT's forward always runs its own image encoder on `pixel_values`, so its features cannot be cached
    (`caches_image_features=False`); a frozen encoder still receives no gradient.
    """

    name = "git"
    caches_image_features = False

    def matches(self, model):
        return isinstance(model, GitForCausalLM)

    def vision_encoder(self, model):
        return model.git.image_encoder

    def encode(self, model, pixel_values):
        return pixel_values

    def start_token_ids(self, model):
        return [model.config.bos_token_id]

    def end_token_id(self, model):
        return _config_token(model.config, "eos_token_id")

    def logits(self, model, image_features, input_ids, attention_mask):
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, pixel_values=image_features, use_cache=False
        ).logits  # [B, image_tokens + T, V]
        return logits[:, -input_ids.shape[1] :]

    def generate(self, model, image_features, input_ids, attention_mask, generation_config):
        return model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=image_features,
            generation_config=generation_config,
        )


# Checked in order; the first match wins.
CAPTIONER_FAMILIES: tuple[CaptionerFamily, ...] = (BlipFamily(), GitFamily(), VisionEncoderDecoderFamily())


def find_family(model: nn.Module) -> CaptionerFamily:
    """The :class:`CaptionerFamily` of `model`, or a `ValueError` naming the model and the supported families."""
    if not isinstance(model, PreTrainedModel):
        raise TypeError(
            f"model is a {type(model).__name__}, expected a transformers PreTrainedModel "
            "(e.g. BlipForConditionalGeneration, VisionEncoderDecoderModel or GitForCausalLM)."
        )
    for family in CAPTIONER_FAMILIES:
        if family.matches(model):
            return family
    raise ValueError(
        f"{type(model).__name__} cannot generate captions from images as a DiscriTune policy: supported are "
        "BlipForConditionalGeneration, GitForCausalLM and encoder-decoder models whose encoder reads "
        "pixel_values (VisionEncoderDecoderModel). For another family, subclass CaptionerFamily "
        "(discritune_trl.models.hf_captioner.families) and pass it as family=."
    )
