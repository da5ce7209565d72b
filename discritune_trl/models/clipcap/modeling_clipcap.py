"""`ClipCapPolicy`: frozen open_clip image encoder -> trainable mapper -> GPT-2 prefix language model.

ClipCap (Mokady et al., 2021) maps a CLIP image embedding to `prefix_length` GPT-2 input embeddings; GPT-2
then writes the caption after this soft prompt. DiscriTune fine-tunes the mapper and GPT-2; the encoder stays
frozen, so its output (`image_embeds`) can be computed once per image and passed back instead of pixels.
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Callable
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoTokenizer, DynamicCache, GenerationConfig, GPT2LMHeadModel, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutput
from transformers.utils import logging

from ...utils.images import to_rgb
from ...utils.open_clip_utils import build_open_clip
from ..policy import (
    CaptioningPolicy,
    CaptionOutput,
    captions_from_generated,
    check_generation_arguments,
    decode_with_log_probs,
    expect_tied_weights_unsaved,
    full_stop_token_ids,
    hub_kwargs,
    masked_decoding,
)
from .configuration_clipcap import ClipCapConfig
from .mappers import build_mapper
from .processing_clipcap import clipcap_image_transform


logger = logging.get_logger(__name__)

# transformers renamed GPT-2's `past_key_values` argument to `cache` (5.2x; the old name warns until 5.40).
_CACHE_ARGUMENT = "cache" if "cache" in inspect.signature(GPT2LMHeadModel.forward).parameters else "past_key_values"


class ClipCapPolicy(CaptioningPolicy, PreTrainedModel):
    """ClipCap as a DiscriTune policy: `visual` (frozen open_clip vision tower) -> `mapper` -> `language_model`.

    Build it with:

    - `ClipCapPolicy.from_original_checkpoint(path, ...)`: the `.pt` files published with ClipCap;
    - `ClipCapPolicy.from_pretrained(folder_or_repo)`: a policy saved with `save_pretrained` (offline when
      local: the encoder's architecture is in `config.json`, its weights in `model.safetensors`, the tokenizer
      and image transform settings next to them);
    - `ClipCapPolicy.from_pretrained_components(config, ...)`: a new ClipCap (random mapper) on pretrained
      encoder weights and, optionally, a pretrained GPT-2, as ClipCap training starts;
    - `ClipCapPolicy(config, tokenizer=...)`: random weights everywhere (tests, the embedded world).

    Args:
        config ([`ClipCapConfig`]): the architecture.
        tokenizer (`PreTrainedTokenizerBase`, *optional*): GPT-2's tokenizer (any tokenizer with an EOS token
            and a vocabulary matching `config.text_config.vocab_size`); needed to decode captions.

    The encoder is frozen: its parameters never require grad and `.train()` leaves it in eval mode.
    `config.freeze_mapper` / `config.freeze_language_model` freeze the other two parts.
    """

    config_class = ClipCapConfig
    base_model_prefix = "clipcap"
    supports_gradient_checkpointing = True  # the language model's blocks (`gradient_checkpointing=True`)
    supports_log_probs_from_generation = True  # `generate_with_log_probs`: the one-pass training step
    supports_static_cache = True  # `generate_captions(static_cache=True)`
    main_input_name = "pixel_values"
    input_modalities = ("image", "text")
    _no_split_modules = ["GPT2Block"]
    lora_target_modules = ["c_attn"]  # default LoRA targets: GPT-2's attention (Conv1D: fan_in_fan_out=True)

    def __init__(self, config: ClipCapConfig, tokenizer: Any | None = None):
        super().__init__(config)
        # Only the vision tower is kept; for open_clip ViTs and ResNets it includes the final projection,
        # so `visual(pixels)` is what `CLIP.encode_image` returns (unnormalised).
        clip_model, _, _ = build_open_clip(model_cfg=config.clip_model_cfg)
        self.visual = clip_model.visual
        self.mapper = build_mapper(config)
        self.language_model = GPT2LMHeadModel(config.text_config)
        self.image_transform = clipcap_image_transform(config.clip_preprocess_cfg)
        self.tokenizer = tokenizer
        self._stop_token_ids: list[int] | None = None
        self.post_init()
        # What `generate` (transformers' pipelines) decodes with unless told otherwise: the paper's evaluation decoding,
        # as `caption_images`. Saved as generation_config.json; stop tokens and padding come from the tokenizer.
        self.generation_config = GenerationConfig(num_beams=5, max_new_tokens=40)
        expect_tied_weights_unsaved(self)
        self.apply_freezing()

    # ------------------------------------------------------------------ construction helpers

    def _init_weights(self, module: nn.Module) -> None:
        # The encoder keeps open_clip's initialisation (or its loaded weights), GPT-2 its own
        # (`GPT2PreTrainedModel._init_weights` runs on it), the mapper PyTorch's defaults as in ClipCap.
        return

    def apply_freezing(self) -> ClipCapPolicy:
        """Set `requires_grad` from the config: encoder always frozen, mapper / GPT-2 per `freeze_*`."""
        self.visual.requires_grad_(False)
        self.visual.eval()
        self.mapper.requires_grad_(not self.config.freeze_mapper)
        self.language_model.requires_grad_(not self.config.freeze_language_model)
        return self

    def train(self, mode: bool = True) -> ClipCapPolicy:
        super().train(mode)
        # The frozen encoder never switches on dropout / batch-norm updates.
        self.visual.eval()
        return self

    def load_encoder_weights(self) -> ClipCapPolicy:
        """Load the encoder weights named by `config.clip_pretrained` or `config.clip_checkpoint_path`.

        Raises:
            ValueError: if the config names neither.
            OSError: if the weights are not available offline (see `build_open_clip`).
        """
        config = self.config
        if config.clip_pretrained is None and config.clip_checkpoint_path is None:
            raise ValueError(
                "The config names no encoder weights: set clip_pretrained=<open_clip tag, e.g. 'openai'> or "
                "clip_checkpoint_path=<open_clip checkpoint file>."
            )
        if config.clip_pretrained is not None:
            clip_model, _, _ = build_open_clip(config.clip_model_name, config.clip_pretrained)
        else:
            clip_model, _, _ = build_open_clip(
                config.clip_model_name, model_cfg=config.clip_model_cfg, checkpoint_path=config.clip_checkpoint_path
            )
        self.visual.load_state_dict(clip_model.visual.state_dict())
        return self

    @classmethod
    def from_pretrained_components(
        cls,
        config: ClipCapConfig,
        tokenizer: Any | None = None,
        language_model_name_or_path: str | os.PathLike | None = None,
        **hub_kwargs: Any,
    ) -> ClipCapPolicy:
        """A new ClipCap: encoder weights from the config's pretrained tag / checkpoint, a randomly initialised
        mapper, and GPT-2 (with its tokenizer, unless `tokenizer` is given) from `language_model_name_or_path`
        (e.g. `"gpt2"`) when given.

        `hub_kwargs` (`cache_dir`, `revision`, `local_files_only`, ...) go to GPT-2's `from_pretrained`.
        """
        if language_model_name_or_path is not None:
            language_model = GPT2LMHeadModel.from_pretrained(language_model_name_or_path, **hub_kwargs)
            config.text_config = language_model.config
            if tokenizer is None:
                tokenizer = AutoTokenizer.from_pretrained(language_model_name_or_path, **hub_kwargs)
        policy = cls(config, tokenizer=tokenizer)
        if language_model_name_or_path is not None:
            policy.language_model.load_state_dict(language_model.state_dict())
        if config.clip_pretrained is not None or config.clip_checkpoint_path is not None:
            policy.load_encoder_weights()
        return policy

    # `load_original_clipcap_checkpoint`, set by `convert_original` when the package loads: the converter imports
    # this file, never the reverse.
    _original_checkpoint_loader: ClassVar[Callable[..., PreTrainedModel]]

    @classmethod
    def from_original_checkpoint(cls, checkpoint_path: str | os.PathLike, **kwargs: Any) -> ClipCapPolicy:
        """Load a checkpoint published with ClipCap (`coco_weights.pt`, `conceptual_weights.pt`, the
        transformer-mapper one). See [`load_original_clipcap_checkpoint`] for the arguments."""
        return ClipCapPolicy._original_checkpoint_loader(checkpoint_path, policy_class=cls, **kwargs)

    # ------------------------------------------------------------------ loading (saving: `CaptioningPolicy`)

    @classmethod
    def from_pretrained(
        cls, pretrained_model_name_or_path: str | os.PathLike, *args: Any, tokenizer: Any | None = None, **kwargs: Any
    ) -> ClipCapPolicy:
        """`PreTrainedModel.from_pretrained`, plus the tokenizer saved next to the weights (or `tokenizer`) and the
        `generation_config.json` that `generate` (and transformers' pipelines) decode with.

        The frozen encoder's weights are part of `model.safetensors` and its architecture and image transform are in
        `config.json`, so a saved folder is self-contained.
        """
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(pretrained_model_name_or_path, **hub_kwargs(kwargs))
            except (OSError, ValueError) as error:
                logger.warning(
                    f"No tokenizer found with {pretrained_model_name_or_path} ({error}); pass tokenizer=... "
                    "to decode captions."
                )
        model.tokenizer = tokenizer
        try:  # what `generate` and the pipelines decode with (transformers loads it only for GenerationMixin models)
            model.generation_config = GenerationConfig.from_pretrained(pretrained_model_name_or_path, **hub_kwargs(kwargs))
        except OSError:
            pass  # a folder saved before ClipCap had a generation config: the defaults set in __init__
        model.apply_freezing()
        return model

    # ------------------------------------------------------------------ images

    def preprocess(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images of any mode -> `[N, 3, H, W]` pixels, with the encoder's own eval transform."""
        return torch.stack([self.image_transform(image) for image in to_rgb(images)])

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Run the frozen encoder: `[N, 3, H, W]` pixels -> `[N, D]` unnormalised image embeddings."""
        self._check_pixel_values(pixel_values)
        parameter = next(self.visual.parameters())
        with torch.no_grad():
            return self.visual(pixel_values.to(device=parameter.device, dtype=parameter.dtype))

    def _check_pixel_values(self, pixel_values: torch.Tensor) -> None:
        size = self.config.clip_preprocess_cfg["size"]
        height, width = (size, size) if isinstance(size, int) else tuple(size)
        if not isinstance(pixel_values, torch.Tensor) or not pixel_values.is_floating_point():
            found = pixel_values.dtype if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise TypeError(
                f"pixel_values must be a floating-point tensor, got {found}; use policy.preprocess(images)."
            )
        if pixel_values.dim() != 4 or pixel_values.shape[1] != 3 or tuple(pixel_values.shape[2:]) != (height, width):
            raise ValueError(
                f"pixel_values has shape {list(pixel_values.shape)}, expected [N, 3, {height}, {width}] "
                "(RGB at the encoder's image size); use policy.preprocess(images)."
            )

    def image_conditioning(self, pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """`[B, P, E]` GPT-2 prefix embeddings of the images (the mapper's output, with gradients)."""
        return self.prefix_embeds(self._image_embeds(pixel_values, image_embeds))

    def _image_embeds(self, pixel_values: torch.Tensor | None, image_embeds: torch.Tensor | None) -> torch.Tensor:
        """`[B, D]` encoder outputs from exactly one of `pixel_values` / `image_embeds`."""
        if (pixel_values is None) == (image_embeds is None):
            raise ValueError("Pass exactly one of pixel_values or image_embeds.")
        if pixel_values is not None:
            return self.encode_images(pixel_values)
        if not isinstance(image_embeds, torch.Tensor) or not image_embeds.is_floating_point():
            found = image_embeds.dtype if isinstance(image_embeds, torch.Tensor) else type(image_embeds).__name__
            raise TypeError(f"image_embeds must be a floating-point tensor, got {found}.")
        if image_embeds.dim() != 2 or image_embeds.shape[1] != self.config.clip_embed_dim:
            raise ValueError(
                f"image_embeds has shape {list(image_embeds.shape)}, expected [N, {self.config.clip_embed_dim}] "
                "(the output of policy.encode_images); the encoder that produced them does not match this "
                "policy's mapper."
            )
        return image_embeds

    def prefix_embeds(self, image_embeds: torch.Tensor) -> torch.Tensor:
        """The mapper: `[B, D]` image embeddings -> `[B, P, E]` GPT-2 prefix embeddings (with gradients)."""
        parameter = next(self.mapper.parameters())
        image_embeds = image_embeds.to(device=parameter.device, dtype=parameter.dtype)
        if self.config.normalize_prefix:
            image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        return self.mapper(image_embeds)

    # ------------------------------------------------------------------ tokens

    @property
    def stop_token_ids(self) -> list[int]:
        """Ids that end a caption: every token whose text contains "." plus EOS (computed once)."""
        if self._stop_token_ids is None:
            tokenizer = self._require_tokenizer()
            self._stop_token_ids = full_stop_token_ids(tokenizer, [tokenizer.eos_token_id])
        return self._stop_token_ids

    @property
    def pad_token_id(self) -> int:
        """Id written after a caption's stop token (the tokenizer's pad token, else EOS)."""
        tokenizer = self._require_tokenizer()
        return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def _require_tokenizer(self) -> Any:
        if self.tokenizer is None:
            raise ValueError(
                "This ClipCapPolicy has no tokenizer; pass tokenizer=... when building it "
                "(e.g. GPT2TokenizerFast.from_pretrained('gpt2')) or set policy.tokenizer."
            )
        return self.tokenizer

    # ------------------------------------------------------------------ teacher forcing

    def caption_logits(
        self, prefix_embeds: torch.Tensor, input_ids: torch.LongTensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """GPT-2 logits for each caption token given the prefix and the tokens before it, in one forward pass.

        Args:
            prefix_embeds: `[B, P, E]` mapper output.
            input_ids: `[B, T]` caption token ids (right-padded).
            attention_mask: `[B, T]` 1 for caption tokens.

        Returns:
            `[B, T, V]` logits; `logits[:, t]` is the distribution of `input_ids[:, t]` (already shifted).
        """
        batch, length = input_ids.shape
        token_embeds = self.language_model.get_input_embeddings()(input_ids)  # [B, T, E]
        inputs_embeds = torch.cat([prefix_embeds.to(token_embeds.dtype), token_embeds], dim=1)  # [B, P + T, E]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        prefix_mask = attention_mask.new_ones(batch, prefix_embeds.shape[1])
        outputs = self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=torch.cat([prefix_mask, attention_mask], dim=1),
            use_cache=False,
            # The last prefix position predicts the first caption token; the last position predicts nothing.
            logits_to_keep=length + 1,
        )
        return outputs.logits[:, :-1]  # [B, T, V]

    def captioning_forward(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutput:
        """Teacher-forced captioning: the standard maximum-likelihood loss of ClipCap pretraining.

        Args:
            pixel_values: `[B, 3, H, W]` images, or
            image_embeds: `[B, D]` their `encode_images` output.
            input_ids: `[B, T]` caption ids (end them with the full stop / EOS the model should learn to emit).
            attention_mask: `[B, T]` 1 for caption tokens, 0 for padding.
            labels: `[B, T]` targets, -100 where ignored; usually `input_ids` with padding set to -100.

        This is what `forward` does without `caption_ids`; with `caption_ids` / `caption_mask` /
        `log_prob_reduction`, `forward` returns `caption_log_probs(...)` (the trainer's pass, see `CaptioningPolicy`).

        Returns:
            `CausalLMOutput` with `logits` `[B, T, V]` over the caption tokens only, aligned with `input_ids`
            (`logits[:, t]` predicts `input_ids[:, t]`, no further shift), and `loss`, the mean cross-entropy
            over the labelled tokens, when `labels` is given.
        """
        if input_ids is None:
            raise ValueError("forward needs input_ids (the captions); use generate_captions to write captions.")
        prefix = self.prefix_embeds(self._image_embeds(pixel_values, image_embeds))
        logits = self.caption_logits(prefix, input_ids, attention_mask)
        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(
                logits.float().flatten(0, 1), labels.to(logits.device).flatten(), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)

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
        static_cache: bool = False,
    ) -> CaptionOutput:
        """Caption a batch of images, without gradients, in eval mode (no dropout).

        Greedy by default (the paper's training decoding); `num_beams=5` is the paper's evaluation decoding;
        `do_sample=True` samples with `temperature` / `top_k` (0: off) / `top_p`. Every row stops at its own
        first full stop (any token whose text contains ".") or EOS, or after `max_new_tokens`. Decoding is
        `GPT2LMHeadModel.generate` on the prefix embeddings (KV cache, batched stopping). `static_cache=True` decodes
        with a static KV cache (`cache_implementation="static"`), which `generate` compiles with `torch.compile` on
        CUDA (a compilation per batch shape); the same captions.

        Returns:
            [`CaptionOutput`] with `B * num_return_sequences` rows, the captions of each image consecutive.
        """
        self._check_generation_arguments(max_new_tokens, do_sample, num_beams, num_return_sequences)
        stop_token_ids = self.stop_token_ids
        sampling = {"temperature": temperature, "top_k": top_k, "top_p": top_p} if do_sample else {}
        with self.generation_mode(), masked_decoding(self.language_model):
            prefix = self.prefix_embeds(self._image_embeds(pixel_values, image_embeds))  # [B, P, E]
            generated = self.language_model.generate(
                inputs_embeds=prefix,
                attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device),
                max_new_tokens=max_new_tokens,
                do_sample=do_sample,
                num_beams=num_beams,
                num_return_sequences=num_return_sequences,
                eos_token_id=stop_token_ids,
                pad_token_id=self.pad_token_id,
                use_cache=True,
                **({"cache_implementation": "static"} if static_cache else {}),
                **sampling,
            )  # [B * G, T] new tokens only (no prompt ids when generating from inputs_embeds)
        return captions_from_generated(generated, stop_token_ids, self.pad_token_id, self.tokenizer)

    @classmethod
    def can_generate(cls) -> bool:
        """`generate` follows transformers' contract, so pipelines and `generation_config` work with ClipCap."""
        return True

    def generate(
        self,
        pixel_values: torch.Tensor | None = None,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        generation_config: GenerationConfig | None = None,
        **kwargs: Any,
    ) -> torch.LongTensor | Any:
        """transformers' `generate` contract (what the `image-text-to-text` pipeline calls, with `ClipCapProcessor`'s
        output): caption the images after an optional text prompt and return the prompt ids followed by the new ids.

        `generate_captions` is the DiscriTune interface (masks, stop flags, texts); this is the same decoding behind
        transformers' conventions. Decoding follows `generation_config` (default `self.generation_config`: beam search
        with 5 beams and at most 40 new tokens, the paper's evaluation decoding, saved as `generation_config.json`)
        updated by `kwargs`. As in `generate_captions`, every row stops at its first full stop or EOS (or at an
        `eos_token_id` the config adds). Without a prompt, the new ids are `generate_captions(...)`'s with the same
        settings.

        Args:
            pixel_values: `[B, 3, H, W]` images (`ClipCapProcessor` / `preprocess`), or
            image_embeds: `[B, D]` their `encode_images` output.
            input_ids: `[B, L]` prompt ids, left-padded (`[B, 0]` or `None`: no prompt).
            attention_mask: `[B, L]` 1 for prompt tokens, 0 for padding.
            generation_config: replaces `self.generation_config`.
            kwargs: generation settings (`max_new_tokens`, `num_beams`, `do_sample`, ...), on top of the config.

        Returns:
            `[B * num_return_sequences, L + T]` ids (or transformers' generate output with those `sequences`, when
            `return_dict_in_generate=True`).

        Raises:
            TypeError: for keyword arguments that are not generation settings.
            ValueError: if `input_ids` has another batch size than the images.
        """
        config = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        unused = config.update(**kwargs)
        if unused:
            raise TypeError(f"ClipCapPolicy.generate got {sorted(unused)}, which are not generation settings.")
        # A ClipCap caption ends at its first full stop, whatever EOS the config names (Trainer aligns the saved
        # generation config's eos_token_id with the tokenizer's EOS): the config's ids are added to the stop tokens.
        configured = config.eos_token_id if isinstance(config.eos_token_id, list) else [config.eos_token_id]
        config.eos_token_id = list(dict.fromkeys([*self.stop_token_ids, *(i for i in configured if i is not None)]))
        if config.pad_token_id is None:
            config.pad_token_id = self.pad_token_id
        config.use_cache = True
        return_sequences = config.num_return_sequences or 1  # transformers 5.2x leaves unset fields None
        if config.max_new_tokens is not None:
            self._check_generation_arguments(
                config.max_new_tokens, bool(config.do_sample), config.num_beams or 1, return_sequences
            )
        with self.generation_mode(), masked_decoding(self.language_model):
            prefix = self.image_conditioning(pixel_values, image_embeds)  # [B, P, E]
            batch, device = prefix.shape[0], prefix.device
            if input_ids is None:
                input_ids = torch.zeros(batch, 0, dtype=torch.long, device=device)
            if input_ids.shape[0] != batch:
                raise ValueError(f"input_ids has {input_ids.shape[0]} rows for {batch} images: one prompt per image.")
            input_ids = input_ids.to(device)
            attention_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask.to(device)
            prompt_embeds = self.language_model.get_input_embeddings()(input_ids).to(prefix.dtype)  # [B, L, E]
            output = self.language_model.generate(
                inputs_embeds=torch.cat([prefix, prompt_embeds], dim=1),
                attention_mask=torch.cat([attention_mask.new_ones(prefix.shape[:2]), attention_mask], dim=1),
                generation_config=config,
            )  # new ids only (generating from inputs_embeds)
        prompts = input_ids.repeat_interleave(return_sequences, dim=0)
        if isinstance(output, torch.Tensor):
            return torch.cat([prompts, output], dim=1)
        output.sequences = torch.cat([prompts, output.sequences], dim=1)
        return output

    def _check_generation_arguments(
        self, max_new_tokens: int, do_sample: bool, num_beams: int, num_return_sequences: int
    ) -> None:
        check_generation_arguments(max_new_tokens, do_sample, num_beams, num_return_sequences)
        if self.config.prefix_length + max_new_tokens > self.config.text_config.n_positions:
            raise ValueError(
                f"prefix_length={self.config.prefix_length} + max_new_tokens={max_new_tokens} exceeds GPT-2's "
                f"n_positions={self.config.text_config.n_positions}; lower max_new_tokens."
            )

    def generate_with_log_probs(
        self,
        pixel_values: torch.Tensor | None = None,
        image_embeds: torch.Tensor | None = None,
        *,
        max_new_tokens: int = 40,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        num_return_sequences: int = 1,
    ) -> CaptionOutput:
        """Greedy or sampled captions and their tokens' log-probabilities from one decoding pass, with gradients
        through the mapper and GPT-2's KV cache (see `CaptioningPolicy.generate_with_log_probs`).

        The same captions as `generate_captions(...)` when no dropout is active, and `token_log_probs` equal to the
        teacher-forced `caption_log_probs(..., reduction="none")` (`token_entropies` too, from the same logits). The graph holds every decoding step's activations
        and cached keys and values until the backward pass (see `docs/throughput.md` for its memory).
        """
        self._check_generation_arguments(max_new_tokens, do_sample, 1, num_return_sequences)
        prefix = self.image_conditioning(pixel_values, image_embeds)  # [B, P, E]
        prefix = prefix.repeat_interleave(num_return_sequences, dim=0)  # [B * G, P, E]
        cache = DynamicCache(config=self.language_model.config)
        attention_mask = torch.ones(prefix.shape[:2], dtype=torch.long, device=prefix.device)  # grows by one a step

        def next_logits(tokens: torch.LongTensor | None) -> torch.Tensor:
            nonlocal attention_mask
            if tokens is None:  # the prefix: its last position predicts the first caption token
                inputs = {"inputs_embeds": prefix}
            else:
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones(tokens.shape[0], 1)], dim=1)
                inputs = {"input_ids": tokens.unsqueeze(1)}
            inputs[_CACHE_ARGUMENT] = cache
            outputs = self.language_model(**inputs, attention_mask=attention_mask, use_cache=True, logits_to_keep=1)
            return outputs.logits[:, -1]  # [B * G, V]

        stop_token_ids = self.stop_token_ids
        generated, token_log_probs, entropies = decode_with_log_probs(
            next_logits,
            max_new_tokens=max_new_tokens,
            stop_token_ids=stop_token_ids,
            pad_token_id=self.pad_token_id,
            do_sample=do_sample,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            return_entropies=True,
        )  # [B * G, T] each
        captions = captions_from_generated(generated, stop_token_ids, self.pad_token_id, self.tokenizer)
        mask = captions.caption_mask.to(token_log_probs.dtype)
        captions.token_log_probs = token_log_probs * mask
        captions.token_entropies = entropies * mask
        return captions


AutoConfig.register(ClipCapConfig.model_type, ClipCapConfig, exist_ok=True)
