"""Tiny vision-language models (`AutoModelForImageTextToText`) with processors written here, for tests and examples.

Each builder returns `(model, processor)`: a tiny random model of the family's real architecture and its real
processor class, made of the byte-level BPE tokenizer of :mod:`.blip` (plus the family's special tokens), the
family's image processor at a tiny size, and a chat template in the family's format. Nothing is downloaded.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import (
    CLIPImageProcessor,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessor,
    Idefics3Processor,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessor,
    Qwen2VLProcessor,
    Qwen2VLVideoProcessor,
)

from .blip import TINY_IMAGE_SIZE, TINY_PATCH_SIZE, tiny_bpe_tokenizer


TINY_VLM_FAMILIES = ("idefics3", "qwen2_vl", "llava")

_TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
_TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


def _chat_template(user: str, image: str, end: str, assistant: str) -> str:
    """A one-image chat template in a family's format: `user` + image placeholder + text + `end`, then `assistant`."""
    return (
        "{% for message in messages %}"
        + user
        + "{% for item in message['content'] %}{% if item['type'] == 'image' %}"
        + image
        + "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}"
        + end
        + "{% endfor %}{% if add_generation_prompt %}"
        + assistant
        + "{% endif %}"
    )


def _tokenizer(special_tokens: list[str]):
    tokenizer = tiny_bpe_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": special_tokens})
    return tokenizer


def _text_config(tokenizer, **overrides: Any) -> dict[str, Any]:
    ids = dict(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return {**_TINY_TEXT, **ids, **overrides}


def tiny_idefics3(seed: int = 0) -> tuple[Idefics3ForConditionalGeneration, Idefics3Processor]:
    """A tiny Idefics3 (SmolVLM's architecture): images are split into 32x32 tiles plus a global view, so the number
    of tiles per image varies with its aspect ratio; 4 image tokens per tile."""
    row_col = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    tokenizer = _tokenizer(["<fake_token_around_image>", "<image>", "<end_of_utterance>", "<global-img>", *row_col])
    template = _chat_template("{{ message['role'] | capitalize }}:", "<image>", "<end_of_utterance>\n", "Assistant:")
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 2 * TINY_IMAGE_SIZE}, max_image_size={"longest_edge": TINY_IMAGE_SIZE}
    )
    processor = Idefics3Processor(
        image_processor=image_processor, tokenizer=tokenizer, image_seq_len=4, chat_template=template
    )
    config = Idefics3Config(
        vision_config=dict(**_TINY_VISION, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE),
        text_config=dict(model_type="llama", **_text_config(tokenizer)),
        scale_factor=2,  # (32 / 8)^2 patches / 2^2 = 4 image tokens per tile
        image_token_id=processor.image_token_id,
        tie_word_embeddings=False,
    )
    return _build(Idefics3ForConditionalGeneration, config, seed), processor


def tiny_qwen2_vl(seed: int = 0) -> tuple[Qwen2VLForConditionalGeneration, Qwen2VLProcessor]:
    """A tiny Qwen2-VL: dynamic resolution, so each image becomes its own number of 8x8 patches (flattened into one
    `pixel_values [sum of patches, D]` with `image_grid_thw`), merged 2x2 into image tokens; M-RoPE positions."""
    tokenizer = _tokenizer(["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>", "<|im_end|>"])
    template = _chat_template(
        "<|im_start|>{{ message['role'] }}\n",
        "<|vision_start|><|image_pad|><|vision_end|>",
        "<|im_end|>\n",
        "<|im_start|>assistant\n",
    )
    image_processor = Qwen2VLImageProcessor(
        min_pixels=(2 * TINY_PATCH_SIZE) ** 2,
        max_pixels=(4 * TINY_PATCH_SIZE) ** 2,
        patch_size=TINY_PATCH_SIZE,
        merge_size=2,
        temporal_patch_size=2,
    )
    processor = Qwen2VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(patch_size=TINY_PATCH_SIZE, merge_size=2, temporal_patch_size=2),
        chat_template=template,
    )
    rope = {"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}
    config = Qwen2VLConfig(
        vision_config=dict(
            depth=2,
            embed_dim=32,
            hidden_size=32,
            num_heads=4,
            mlp_ratio=2,
            patch_size=TINY_PATCH_SIZE,
            spatial_merge_size=2,
            temporal_patch_size=2,
        ),
        text_config=_text_config(tokenizer, rope_parameters=rope),
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        vision_start_token_id=tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        tie_word_embeddings=False,
    )
    return _build(Qwen2VLForConditionalGeneration, config, seed), processor


def tiny_llava(seed: int = 0) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A tiny LLaVA: a CLIP vision tower on a fixed 32x32 image (16 patch tokens, the class token dropped), an MLP projector and
    a Llama language model."""
    tokenizer = _tokenizer(["<image>", "<|im_end|>"])
    template = _chat_template("{{ message['role'] | upper }}: ", "<image>\n", "<|im_end|>\n", "ASSISTANT:")
    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size=size)
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=TINY_PATCH_SIZE,
        vision_feature_select_strategy="default",  # drop CLIP's class token, as LLaVA-1.5 does
        num_additional_image_tokens=1,
        chat_template=template,
    )
    config = LlavaConfig(
        vision_config=dict(
            model_type="clip_vision_model",
            **_TINY_VISION,
            image_size=TINY_IMAGE_SIZE,
            patch_size=TINY_PATCH_SIZE,
            projection_dim=32,
        ),
        text_config=dict(model_type="llama", **_text_config(tokenizer)),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    return _build(LlavaForConditionalGeneration, config, seed), processor


TINY_VLM_BUILDERS = {"idefics3": tiny_idefics3, "qwen2_vl": tiny_qwen2_vl, "llava": tiny_llava}


def tiny_vlm(family: str = "idefics3", seed: int = 0) -> tuple[PreTrainedModel, Any]:
    """The tiny model and processor of `family` (one of :data:`TINY_VLM_FAMILIES`)."""
    if family not in TINY_VLM_BUILDERS:
        raise ValueError(f"family={family!r} is not one of {TINY_VLM_FAMILIES}.")
    return TINY_VLM_BUILDERS[family](seed)


def _build(model_class: type[PreTrainedModel], config, seed: int) -> PreTrainedModel:
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return model_class(config).eval()
