"""The DiscriTune policy interface, implemented once for every `transformers` image-to-text captioner.

:class:`HFCaptionerMixin` turns a captioner (reached through `self.captioner_model`) and its processor into a
:class:`~discritune_trl.models.policy.CaptioningPolicy`. The family-specific parts (where the image enters the
text model) come from a :class:`~.families.CaptionerFamily`. `BlipPolicy` and `HFCaptionerPolicy` are the two
`PreTrainedModel`s built on it.

The text a captioner reads is `start tokens + prompt + caption`: only the caption is returned by
`generate_captions` and scored by `caption_log_probs`.
"""

from __future__ import annotations

import torch
from PIL import Image
from torch import nn
from transformers import AutoImageProcessor, AutoTokenizer, GenerationConfig

from ...utils.images import to_rgb
from ..policy import (
    CaptioningPolicy,
    CaptionOutput,
    caption_generation_config,
    captions_from_generated,
    expect_tied_weights_unsaved,
    full_stop_token_ids,
    hub_kwargs,
)
from .families import CaptionerFamily


def split_processor(processor=None, image_processor=None, tokenizer=None) -> tuple:
    """`(image_processor, tokenizer)` from a combined processor (`BlipProcessor`, `GitProcessor`...) or the two parts."""
    if processor is not None:
        if image_processor is not None or tokenizer is not None:
            raise ValueError("Pass either processor= or image_processor= and tokenizer=, not both.")
        image_processor = getattr(processor, "image_processor", None)
        tokenizer = getattr(processor, "tokenizer", None)
        if image_processor is None or tokenizer is None:
            raise ValueError(
                f"processor is a {type(processor).__name__} without both an image_processor and a tokenizer; pass "
                "a captioning processor (e.g. BlipProcessor) or image_processor= and tokenizer= separately."
            )
    return image_processor, tokenizer


class HFCaptionerMixin(CaptioningPolicy):
    """Implements `preprocess`, `encode_images`, `generate_captions` and the log-prob hooks for HF captioners.

    The class using it is a `PreTrainedModel` that provides `captioner_model` (the `transformers` model that
    captions), `family` (its :class:`~.families.CaptionerFamily`) and a config with `prompt`,
    `freeze_vision_encoder` and `stop_at_full_stop`. It calls :meth:`_init_policy` at the end of `__init__`.
    """

    family: CaptionerFamily

    @property
    def captioner_model(self) -> nn.Module:
        """The `transformers` model that captions."""
        raise NotImplementedError

    # ------------------------------------------------------------------ setup

    def _init_policy(self, image_processor=None, tokenizer=None) -> None:
        self.image_processor = None
        self.tokenizer = None
        self._prefix_ids = None  # [P] start tokens + prompt tokens
        self.stop_token_ids: list[int] = []  # ids that end a caption (full stops and the end token)
        expect_tied_weights_unsaved(self)
        self._freeze_vision_encoder()
        if image_processor is not None or tokenizer is not None:
            self.set_processor(image_processor=image_processor, tokenizer=tokenizer)

    def _freeze_vision_encoder(self) -> None:
        # Called again after `from_pretrained`, whose loading replaces the parameters built by `__init__`.
        if self.config.freeze_vision_encoder:
            self.family.vision_encoder(self.captioner_model).requires_grad_(False).eval()

    @property
    def caches_image_features(self) -> bool:
        """Whether `encode_images` returns frozen vision features (else it returns the pixels unchanged)."""
        return self.config.freeze_vision_encoder and self.family.caches_image_features

    def set_processor(self, processor=None, *, image_processor=None, tokenizer=None) -> None:
        """Attach the processor (or its image processor and tokenizer), after checking that it fits the model.

        Raises:
            ValueError: if the tokenizer has ids the model cannot embed, or the image processor makes images of a
                size or channel count the vision encoder does not read.
        """
        image_processor, tokenizer = split_processor(processor, image_processor, tokenizer)
        if image_processor is None or tokenizer is None:
            raise ValueError("A policy needs both an image processor and a tokenizer.")
        model = self.captioner_model
        num_embeddings = model.get_input_embeddings().num_embeddings
        if len(tokenizer) > num_embeddings:
            raise ValueError(
                f"The tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) does not match the model, which "
                f"embeds {num_embeddings} tokens; pass the processor saved with the model."
            )
        end_id = self.family.end_token_id(model)
        tokenizer_end_ids = {tokenizer.eos_token_id, tokenizer.sep_token_id} - {None}
        if end_id is not None and end_id not in tokenizer_end_ids:
            raise ValueError(
                f"The tokenizer ({type(tokenizer).__name__}) does not match the model: the model ends captions with id "
                f"{end_id}, the tokenizer's end tokens are {sorted(tokenizer_end_ids)} (eos, sep); pass the processor "
                "saved with the model."
            )
        vision_config = self.family.vision_encoder(model).config
        pixel_values = image_processor(images=[Image.new("RGB", (8, 8))], return_tensors="pt")["pixel_values"]
        expected = getattr(vision_config, "image_size", None)
        expected = tuple(expected) if isinstance(expected, (list, tuple)) else (expected, expected)
        channels = getattr(vision_config, "num_channels", pixel_values.shape[1])
        if expected != (None, None) and (
            tuple(pixel_values.shape[-2:]) != expected or pixel_values.shape[1] != channels
        ):
            raise ValueError(
                f"The image processor ({type(image_processor).__name__}) makes images of shape "
                f"{tuple(pixel_values.shape[1:])} but the vision encoder reads {(channels, *expected)}; pass the "
                "processor saved with the model."
            )
        prompt_ids = tokenizer(self.config.prompt, add_special_tokens=False)["input_ids"] if self.config.prompt else []
        self._prefix_ids = torch.tensor(self.family.start_token_ids(model) + list(prompt_ids), dtype=torch.long)
        if self.config.stop_at_full_stop:
            self.stop_token_ids = full_stop_token_ids(tokenizer, extra_ids=[end_id])
        else:
            self.stop_token_ids = [end_id] if end_id is not None else []
        if not self.stop_token_ids:
            raise ValueError(f"{type(model).__name__} defines no end-of-caption token; set stop_at_full_stop=True.")
        self.image_processor, self.tokenizer = image_processor, tokenizer

    def _require_processor(self) -> None:
        if self.tokenizer is None:
            raise ValueError(
                f"{type(self).__name__} has no processor: pass processor= when building or loading it, or call "
                "policy.set_processor(processor)."
            )

    def train(self, mode: bool = True):
        """Like `nn.Module.train`, but a frozen vision encoder stays in eval mode (its cached features stay valid)."""
        super().train(mode)
        if self.config.freeze_vision_encoder:
            self.family.vision_encoder(self.captioner_model).eval()
        return self

    # ------------------------------------------------------------------ images

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images of any mode (converted to RGB) -> `pixel_values [B, C, H, W]` for the vision encoder."""
        self._require_processor()
        return self.image_processor(images=to_rgb(images), return_tensors="pt")["pixel_values"]

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The frozen vision encoder's features `[B, N, D]`, to cache and pass back as `image_embeds`.

        When nothing can be cached (a trainable vision encoder, or GIT), this returns `pixel_values` unchanged, and
        the other methods accept it as `image_embeds` all the same.
        """
        if not self.caches_image_features:
            return pixel_values
        with torch.no_grad():
            return self.family.encode(self.captioner_model, pixel_values.to(self.dtype))

    def image_conditioning(self, pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """What the text model attends to, computed with gradients only through a trainable vision encoder."""
        self._require_processor()
        return self._image_features(pixel_values, image_embeds)

    def _image_features(self, pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass exactly one of pixel_values or image_embeds (the output of encode_images).")
        if image_embeds is not None and self.caches_image_features:
            if image_embeds.dim() != 3:
                raise ValueError(
                    f"image_embeds has shape {tuple(image_embeds.shape)}; expected [B, N, D] from "
                    "policy.encode_images(pixel_values). Pass raw pixels as pixel_values=."
                )
            return image_embeds.to(self.dtype)
        pixels = (pixel_values if pixel_values is not None else image_embeds).to(self.dtype)
        if pixels.dim() != 4:
            raise ValueError(f"pixel_values has shape {tuple(pixels.shape)}; expected [B, C, H, W].")
        frozen = self.config.freeze_vision_encoder
        with torch.set_grad_enabled(torch.is_grad_enabled() and not frozen):
            return self.family.encode(self.captioner_model, pixels)

    def _prefix(self, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        prefix_ids = self._prefix_ids.to(device).expand(batch_size, -1)  # [B, P]
        return prefix_ids, torch.ones_like(prefix_ids)

    # ------------------------------------------------------------------ generation

    def generate_captions(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 40,
        do_sample: bool = False,
        num_beams: int = 1,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
    ) -> CaptionOutput:
        """Caption a batch of images with `transformers`' `generate` (KV cache, batched stopping), in eval mode and
        without gradients.

        Decoding starts after the prompt and stops at the first full stop or end token of each row, or after
        `max_new_tokens`. Only these decoding arguments shape the distribution: the model's own generation config
        (repetition penalties, minimum lengths...) is not applied, so `caption_log_probs` scores exactly the policy
        that was sampled (at `temperature=1`).

        Args:
            pixel_values: `[B, C, H, W]` from :meth:`preprocess`, or
            image_embeds: the output of :meth:`encode_images`.
            max_new_tokens: caption length limit (the paper's 40).
            do_sample, num_beams, temperature, top_k, top_p: decoding strategy (`top_k=0` disables top-k).
            num_return_sequences: `G` captions per image, returned consecutively (`B * G` rows).

        Returns:
            :class:`CaptionOutput` with the caption ids (prompt excluded), mask, texts and stop flags.
        """
        self._require_processor()
        generation_config = self._generation_config(
            max_new_tokens, do_sample, num_beams, temperature, top_k, top_p, num_return_sequences
        )
        with self.generation_mode():
            features = self._image_features(pixel_values, image_embeds)  # [B, ...]
            prefix_ids, prefix_mask = self._prefix(features.shape[0], features.device)
            sequences = self.family.generate(
                self.captioner_model, features, prefix_ids, prefix_mask, generation_config
            )
        new_ids = sequences[:, prefix_ids.shape[1] :]  # [B * G, T]
        return captions_from_generated(new_ids, self.stop_token_ids, generation_config.pad_token_id, self.tokenizer)

    def _generation_config(
        self, max_new_tokens, do_sample, num_beams, temperature, top_k, top_p, num_return_sequences
    ) -> GenerationConfig:
        pad_token_id = self.tokenizer.pad_token_id
        if pad_token_id is None:
            pad_token_id = self.family.end_token_id(self.captioner_model)
        return caption_generation_config(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_beams=num_beams,
            num_return_sequences=num_return_sequences,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_token_ids=self.stop_token_ids,
            pad_token_id=pad_token_id,
        )

    # ------------------------------------------------------------------ log-probs (`CaptioningPolicy.caption_log_probs`)

    def caption_logits(
        self, conditioning: torch.Tensor, caption_ids: torch.LongTensor, caption_mask: torch.LongTensor
    ) -> torch.Tensor:
        """`[N, T, V]` logits of the caption tokens (never the prompt's) given the image features and the tokens
        before them: the text model reads `start tokens + prompt + caption`, in one forward pass."""
        prefix_ids, prefix_mask = self._prefix(caption_ids.shape[0], conditioning.device)  # [N, P]
        input_ids = torch.cat([prefix_ids, caption_ids], dim=1)  # [N, P + T]
        attention_mask = torch.cat([prefix_mask, caption_mask.long()], dim=1)
        logits = self.family.logits(self.captioner_model, conditioning, input_ids, attention_mask)  # [N, P + T, V]
        # The logit at position t predicts token t + 1: the caption is predicted from position P - 1 on.
        return logits[:, prefix_ids.shape[1] - 1 : -1]

    def captioning_forward(self, pixel_values=None, image_embeds=None, **kwargs):
        """Without `caption_ids`, `forward` is the wrapped captioner's own (e.g. `input_ids=`, `labels=` for
        maximum-likelihood training), unchanged."""
        if image_embeds is not None:
            raise ValueError("image_embeds is only accepted with caption_ids (the log-prob pass); pass pixel_values.")
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values
        return self._captioner_forward(**kwargs)

    def _captioner_forward(self, **kwargs):
        raise NotImplementedError

    # ------------------------------------------------------------------ checkpoints (saving: `CaptioningPolicy`)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path, *args, processor=None, image_processor=None, tokenizer=None, **kwargs
    ):
        """`PreTrainedModel.from_pretrained`, plus the processor: the one passed, else the one saved beside the weights.

        Raises:
            ValueError: if no processor is passed and none can be loaded from `pretrained_model_name_or_path`.
        """
        image_processor, tokenizer = split_processor(processor, image_processor, tokenizer)
        locate = hub_kwargs(kwargs)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model._freeze_vision_encoder()
        try:
            image_processor = image_processor or AutoImageProcessor.from_pretrained(
                pretrained_model_name_or_path, **locate
            )
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **locate)
        except (OSError, ValueError) as error:
            raise ValueError(
                f"No processor could be loaded from {pretrained_model_name_or_path!r} ({error}); pass processor= "
                "(or image_processor= and tokenizer=) to from_pretrained."
            ) from error
        model.set_processor(image_processor=image_processor, tokenizer=tokenizer)
        return model
