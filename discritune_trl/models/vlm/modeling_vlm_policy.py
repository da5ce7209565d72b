"""`VLMPolicy`: a prompted vision-language model (`AutoModelForImageTextToText`) as a DiscriTune policy.

The image and a prompt ("Describe this image in one sentence.") go through the model's processor and chat template,
left-padded; the caption is the assistant's completion only. The processor's output (`input_ids`, `attention_mask`,
`pixel_values` and whatever the family adds: Idefics3's `pixel_attention_mask`, Qwen2-VL's `image_grid_thw`...) is
carried through the batch as one `transformers.BatchFeature`, so images split into a variable number of tiles or
patches need no fixed pixel shape.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch
from PIL import Image
from torch import nn
from transformers import AutoModelForImageTextToText, AutoProcessor, BatchFeature, PreTrainedModel

from ...utils.images import to_rgb
from ..policy import (
    CaptioningPolicy,
    CaptionOutput,
    caption_generation_config,
    captions_from_generated,
    captions_per_image,
    expect_tied_weights_unsaved,
    full_stop_token_ids,
    gather_token_log_probs,
    hub_kwargs,
    reduce_token_log_probs,
    token_entropies,
)
from .configuration_vlm_policy import VLMPolicyConfig


logger = logging.getLogger(__name__)

# Tokens that close an assistant turn in the chat templates of the tested families (and Gemma / Llama 3 / Phi).
END_OF_TURN_TOKENS = ("<end_of_utterance>", "<|im_end|>", "<end_of_turn>", "<|eot_id|>", "<|end|>")
# Where transformers' image-text-to-text models keep their vision tower (on the model or its `.model`).
VISION_TOWER_NAMES = ("vision_tower", "vision_model", "visual")
# The language model's attention and MLP projections, in every tested family (`peft` matches the full module name).
LANGUAGE_MODEL_LORA_TARGETS = (
    r".*(?:language_model|text_model)\.layers\.\d+\.(?:self_attn\.(?:q|k|v|o)_proj|mlp\.(?:gate|up|down)_proj)"
)


def vlm_lora_config(r: int = 16, lora_alpha: int = 32, lora_dropout: float = 0.0, **kwargs: Any):
    """A `peft.LoraConfig` on the language model's attention and MLP projections only (the vision tower and the
    connector stay as they are): the default way to fine-tune a `VLMPolicy`."""
    from peft import LoraConfig

    return LoraConfig(
        r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=LANGUAGE_MODEL_LORA_TARGETS, **kwargs
    )


class VLMPolicy(CaptioningPolicy, PreTrainedModel):
    """A prompted vision-language model + its processor, as a DiscriTune policy.

    Tested (tiny random configs, offline) with Idefics3 / SmolVLM, Qwen2-VL and LLaVA; any
    `AutoModelForImageTextToText` model whose processor has a chat template and takes `images=` should work
    (see `docs/vlm.md`).

    ```python
    model = AutoModelForImageTextToText.from_pretrained("HuggingFaceTB/SmolVLM-256M-Instruct")
    processor = AutoProcessor.from_pretrained("HuggingFaceTB/SmolVLM-256M-Instruct")
    policy = VLMPolicy.from_vlm(model, processor)  # or VLMPolicy.from_vlm_pretrained(name)
    trainer = DiscriTuneTrainer(model=policy, reward_model=..., args=..., peft_config=vlm_lora_config())
    ```

    `preprocess` returns the processor's `BatchFeature` (prompt ids + image inputs); `generate_captions` and
    `caption_log_probs` read it as `pixel_values`. Image features are not cached (`caches_image_features = False`):
    the number of image tokens varies per image, and the cache stores one fixed-shape array per image.

    Args:
        config (`VLMPolicyConfig`): the wrapped model's config plus the policy options.
        vlm (`PreTrainedModel`, *optional*): the model to wrap; built from `config` (random weights, to be loaded by
            `from_pretrained`) when omitted.
        processor (*optional*): the model's processor (with a chat template); required before captioning.
    """

    config_class = VLMPolicyConfig
    base_model_prefix = "vlm"
    supports_gradient_checkpointing = True  # the language model's (and vision tower's) blocks
    main_input_name = "pixel_values"
    caches_image_features = False
    uncached_image_features_reason = (
        "a vision-language model's image tokens vary in number per image (tiles, dynamic resolution) and are read "
        "inside its forward pass, so its image features are recomputed at every step"
    )

    def __init__(self, config: VLMPolicyConfig, vlm: PreTrainedModel | None = None, processor: Any = None):
        super().__init__(config)
        self.vlm = vlm if vlm is not None else AutoModelForImageTextToText.from_config(config.build_vlm_config())
        self.post_init()  # registers the wrapped model's tied weights; initialised modules keep their weights
        expect_tied_weights_unsaved(self)
        self.processor = None
        self.stop_token_ids: list[int] = []
        self.suppressed_token_ids: list[int] = []
        self._freeze_vision_encoder()
        if processor is not None:
            self.set_processor(processor)

    @classmethod
    def from_vlm(
        cls,
        model: PreTrainedModel,
        processor: Any,
        *,
        prompt: str | None = None,
        stop_at_full_stop: bool = True,
        freeze_vision_encoder: bool = True,
    ) -> VLMPolicy:
        """Wrap an existing vision-language model (its weights are used as they are) and its processor."""
        options = {} if prompt is None else {"prompt": prompt}
        config = VLMPolicyConfig(
            vlm_config=model.config.to_dict(),
            stop_at_full_stop=stop_at_full_stop,
            freeze_vision_encoder=freeze_vision_encoder,
            **options,
        )
        return cls(config, vlm=model, processor=processor)

    @classmethod
    def from_vlm_pretrained(cls, name_or_path: str, *, prompt: str | None = None, **kwargs: Any) -> VLMPolicy:
        """Load a Hub id or local folder of a plain vision-language model (e.g.
        `"HuggingFaceTB/SmolVLM-256M-Instruct"`) with `AutoModelForImageTextToText` and `AutoProcessor`, and wrap it.

        Args:
            name_or_path: the model's Hub id or folder.
            prompt: the captioning prompt (`VLMPolicyConfig`'s default when None).
            kwargs: `stop_at_full_stop`, `freeze_vision_encoder`, and `from_pretrained` keyword arguments (`dtype`...).
        """
        options = {key: kwargs.pop(key) for key in ("stop_at_full_stop", "freeze_vision_encoder") if key in kwargs}
        model = AutoModelForImageTextToText.from_pretrained(name_or_path, **kwargs)
        processor = AutoProcessor.from_pretrained(name_or_path, **hub_kwargs(kwargs))
        return cls.from_vlm(model, processor, prompt=prompt, **options)

    # ------------------------------------------------------------------ setup

    @property
    def vision_tower(self) -> nn.Module:
        """The wrapped model's vision encoder (frozen by `freeze_vision_encoder`)."""
        for owner in (getattr(self.vlm, "model", None), self.vlm):
            for name in VISION_TOWER_NAMES:
                module = getattr(owner, name, None) if owner is not None else None
                if isinstance(module, nn.Module):
                    return module
        raise ValueError(
            f"{type(self.vlm).__name__} has no vision tower under any of {VISION_TOWER_NAMES}; set "
            "freeze_vision_encoder=False or freeze it yourself."
        )

    def _freeze_vision_encoder(self) -> None:
        # Called again after `from_pretrained`, whose loading replaces the parameters built by `__init__`.
        if self.config.freeze_vision_encoder:
            self.vision_tower.requires_grad_(False).eval()

    def train(self, mode: bool = True):
        """Like `nn.Module.train`, but a frozen vision tower stays in eval mode."""
        super().train(mode)
        if self.config.freeze_vision_encoder:
            self.vision_tower.eval()
        return self

    def set_processor(self, processor: Any) -> None:
        """Attach the processor after checking that it fits the model, and find the ids that end a caption.

        The tokenizer is set to pad on the left (the prompts are continued by generation).

        Raises:
            ValueError: if the processor has no tokenizer or chat template, or a tokenizer larger than the model's
                vocabulary.
        """
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None or getattr(processor, "image_processor", None) is None:
            raise ValueError(
                f"processor is a {type(processor).__name__}; VLMPolicy needs the model's multimodal processor (with "
                "a tokenizer and an image processor), as AutoProcessor.from_pretrained returns it."
            )
        if not getattr(processor, "chat_template", None):
            raise ValueError(
                f"{type(processor).__name__} has no chat_template: VLMPolicy sends the image and the prompt as a "
                "user turn through it. Use an instruction-tuned model's processor or set processor.chat_template."
            )
        num_embeddings = self.vlm.get_input_embeddings().num_embeddings
        if len(tokenizer) > num_embeddings:
            raise ValueError(
                f"The tokenizer ({len(tokenizer)} tokens) does not match the model, which embeds {num_embeddings} "
                "tokens; pass the processor saved with the model."
            )
        tokenizer.padding_side = "left"
        end_ids = [tokenizer.eos_token_id, *_as_list(self.vlm.generation_config.eos_token_id)]
        end_ids += [tokenizer.convert_tokens_to_ids(token) for token in END_OF_TURN_TOKENS if token in tokenizer.vocab]
        end_ids = [i for i in end_ids if i is not None]
        if self.config.stop_at_full_stop:
            self.stop_token_ids = full_stop_token_ids(tokenizer, extra_ids=end_ids)
        else:
            self.stop_token_ids = sorted(set(end_ids))
        if not self.stop_token_ids:
            raise ValueError(f"{type(self.vlm).__name__} defines no end token; set stop_at_full_stop=True.")
        # Special tokens other than the stop tokens (image placeholders, turn markers) are never part of a caption:
        # generation suppresses them and the log-prob pass scores the same distribution.
        self.suppressed_token_ids = sorted(
            set(i for i in tokenizer.all_special_ids if i < num_embeddings) - set(self.stop_token_ids)
        )
        self.processor = processor
        self.tokenizer = tokenizer
        self._prompt_text = processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": self.config.prompt}]}],
            add_generation_prompt=True,
        )

    @property
    def processing_class(self) -> Any:
        """The processor (tokenizer, image processor and chat template), saved beside every checkpoint."""
        return self.processor

    def _require_processor(self) -> None:
        if self.processor is None:
            raise ValueError(
                f"{type(self).__name__} has no processor: pass processor= when building or loading it, or call "
                "policy.set_processor(processor)."
            )

    # ------------------------------------------------------------------ images

    def preprocess(self, images: list[Image.Image]) -> BatchFeature:
        """PIL images (any mode) -> the processor's `BatchFeature` for `B` prompts, each with its image: left-padded
        `input_ids [B, P]`, `attention_mask [B, P]`, `pixel_values` and the family's other image inputs."""
        self._require_processor()
        return self.processor(
            text=[self._prompt_text] * len(images),
            images=[[image] for image in to_rgb(images)],
            padding=True,
            return_tensors="pt",
        )

    def encode_images(self, pixel_values: BatchFeature) -> BatchFeature:
        """The processor's output unchanged (`caches_image_features` is False, see `uncached_image_features_reason`)."""
        return pixel_values

    def _prompt_inputs(self, pixel_values: Any, image_embeds: Any) -> dict[str, torch.Tensor]:
        """The processor's output on this model's device, floating-point tensors in the model's dtype."""
        self._require_processor()
        inputs = pixel_values if pixel_values is not None else image_embeds
        if not isinstance(inputs, Mapping) or "input_ids" not in inputs:
            raise TypeError(
                f"VLMPolicy reads the BatchFeature its preprocess returns (prompt ids and image inputs), got a "
                f"{type(inputs).__name__}; pass policy.preprocess(images)."
            )
        device, dtype = self.device, self.dtype
        return {
            key: value.to(device, dtype) if torch.is_floating_point(value) else value.to(device)
            for key, value in inputs.items()
        }

    # ------------------------------------------------------------------ generation

    def generate_captions(
        self,
        pixel_values: BatchFeature | None = None,
        image_embeds: BatchFeature | None = None,
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
        without gradients; each row stops at its first full stop, EOS or end-of-turn token.

        Only these decoding arguments shape the distribution (the model's own generation config is not applied), so
        `caption_log_probs` scores exactly the policy that was sampled (at `temperature=1`).

        Args:
            pixel_values: the `BatchFeature` of :meth:`preprocess` (`image_embeds` is accepted as its alias).
            max_new_tokens, do_sample, num_beams, temperature, top_k, top_p, num_return_sequences: as in
                :meth:`CaptioningPolicy.generate_captions`.

        Returns:
            :class:`CaptionOutput` with the caption ids (prompt excluded), mask, texts and stop flags.
        """
        inputs = self._prompt_inputs(pixel_values, image_embeds)
        pad_token_id = self.tokenizer.pad_token_id
        generation_config = caption_generation_config(
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            num_beams=num_beams,
            num_return_sequences=num_return_sequences,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            stop_token_ids=self.stop_token_ids,
            pad_token_id=pad_token_id if pad_token_id is not None else self.stop_token_ids[-1],
            suppress_tokens=self.suppressed_token_ids or None,
        )
        with self.generation_mode():
            sequences = self.vlm.generate(**inputs, generation_config=generation_config)
        new_ids = sequences[:, inputs["input_ids"].shape[1] :]  # [B * G, T]
        return captions_from_generated(new_ids, self.stop_token_ids, pad_token_id, self.tokenizer)

    # ------------------------------------------------------------------ log-probs

    def caption_log_probs(
        self,
        caption_ids: torch.LongTensor,
        caption_mask: torch.LongTensor,
        pixel_values: BatchFeature | None = None,
        image_embeds: BatchFeature | None = None,
        *,
        reduction: str = "mean",
        return_entropy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Teacher-forced log-probabilities of the caption tokens given image + prompt, in one forward pass of
        `prompt + caption` with gradients; the prompt and image tokens are read, never scored.

        Args:
            caption_ids: `[B * G, T]` caption ids, the G captions of each image consecutive.
            caption_mask: `[B * G, T]` 1 for caption tokens (up to and including the stop token), 0 after.
            pixel_values: the `BatchFeature` of :meth:`preprocess` for the `B` images (`image_embeds`: its alias).
            reduction: `"mean"`, `"sum"` or `"none"`.
            return_entropy: also return the `[B * G, T]` entropies of the caption positions' distributions (suppressed
                tokens excluded), as in :meth:`CaptioningPolicy.caption_log_probs`.
        """
        inputs = self._prompt_inputs(pixel_values, image_embeds)
        prompt_ids = inputs.pop("input_ids")  # [B, P]
        repeats = captions_per_image(caption_ids, caption_mask, prompt_ids.shape[0])
        inputs = repeat_images(inputs, prompt_ids.shape[0], repeats)
        prompt_ids = prompt_ids.repeat_interleave(repeats, dim=0)  # [B * G, P]
        caption_ids = caption_ids.to(prompt_ids.device)
        caption_mask = caption_mask.to(prompt_ids.device)
        num_caption_tokens = caption_ids.shape[1]
        for key, value in list(inputs.items()):
            # Per-token inputs (the attention mask, Qwen2-VL's `mm_token_type_ids`) go on over the caption.
            if torch.is_tensor(value) and value.shape == prompt_ids.shape:
                tail = caption_mask if key == "attention_mask" else torch.zeros_like(caption_ids)
                inputs[key] = torch.cat([value, tail.to(value.dtype)], dim=1)
        input_ids = torch.cat([prompt_ids, caption_ids], dim=1)  # [N, P + T]
        logits = self.vlm(
            input_ids=input_ids, **inputs, use_cache=False, logits_to_keep=num_caption_tokens + 1
        ).logits  # [N, T + 1, V]
        if self.suppressed_token_ids:  # the distribution generation samples from (see `set_processor`)
            suppressed = torch.tensor(self.suppressed_token_ids, device=logits.device)
            logits = logits.index_fill(-1, suppressed, float("-inf"))
        # The logit at position t predicts token t + 1: the caption is predicted from the prompt's last position on.
        token_log_probs = gather_token_log_probs(logits[:, :-1], caption_ids)  # [N, T]
        # After the stop token the ids are padding, which may be a suppressed token (-inf): zero, not -inf * 0.
        token_log_probs = token_log_probs.masked_fill(caption_mask == 0, 0.0)
        log_probs = reduce_token_log_probs(token_log_probs, caption_mask, reduction)
        if return_entropy:
            return log_probs, token_entropies(logits[:, :-1]) * caption_mask.to(torch.float32)
        return log_probs

    def captioning_forward(self, pixel_values=None, image_embeds=None, **kwargs):
        """Without `caption_ids`, `forward` is the wrapped model's own (e.g. `input_ids=`, `labels=`), unchanged;
        `pixel_values` may be a tensor or the `BatchFeature` of :meth:`preprocess`."""
        if image_embeds is not None:
            raise ValueError("image_embeds is only accepted with caption_ids (the log-prob pass); pass pixel_values.")
        if isinstance(pixel_values, Mapping):
            kwargs = {**pixel_values, **kwargs}
        elif pixel_values is not None:
            kwargs["pixel_values"] = pixel_values
        return self.vlm(**kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.vlm.get_input_embeddings()

    # ------------------------------------------------------------------ checkpoints

    def save_pretrained(self, save_directory, *args: Any, **kwargs: Any) -> None:
        """`CaptioningPolicy.save_pretrained` (weights under `vlm.`, config), plus the processor."""
        super().save_pretrained(save_directory, *args, **kwargs)
        if self.processor is not None and kwargs.get("is_main_process", True):
            self.processor.save_pretrained(save_directory)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, processor=None, **kwargs):
        """`PreTrainedModel.from_pretrained`, plus the processor: the one passed, else the one saved beside the
        weights.

        Raises:
            ValueError: if no processor is passed and none can be loaded from `pretrained_model_name_or_path`.
        """
        locate = hub_kwargs(kwargs)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        model._freeze_vision_encoder()
        if processor is None:
            try:
                processor = AutoProcessor.from_pretrained(pretrained_model_name_or_path, **locate)
            except (OSError, ValueError) as error:
                raise ValueError(
                    f"No processor could be loaded from {pretrained_model_name_or_path!r} ({error}); pass processor= "
                    "to from_pretrained."
                ) from error
        model.set_processor(processor)
        return model


def repeat_images(inputs: dict[str, torch.Tensor], num_images: int, repeats: int) -> dict[str, torch.Tensor]:
    """The processor's inputs for `B` images (one per row) with each image repeated `repeats` times, consecutively.

    Per-row tensors (`[B, ...]`) are repeated along dim 0. Qwen2-VL-style flattened patches (`pixel_values
    [sum of patches, D]` with `image_grid_thw [B, 3]`) are repeated image by image.
    """
    if repeats == 1:
        return dict(inputs)
    repeated = {}
    grid = inputs.get("image_grid_thw")
    for key, value in inputs.items():
        if key == "pixel_values" and grid is not None:
            per_image = value.split(grid.prod(dim=-1).tolist(), dim=0)
            repeated[key] = torch.cat([chunk for chunk in per_image for _ in range(repeats)], dim=0)
        elif torch.is_tensor(value) and value.dim() > 0 and value.shape[0] == num_images:
            repeated[key] = value.repeat_interleave(repeats, dim=0)
        else:
            raise ValueError(
                f"Cannot repeat the processor's {key!r} (shape {tuple(getattr(value, 'shape', ()))}) per image for "
                f"{repeats} captions per image: it is neither per row ([{num_images}, ...]) nor flattened patches "
                "with image_grid_thw."
            )
    return repeated


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]
