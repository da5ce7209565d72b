"""Tiny retrievers built from configs with random weights: open_clip CLIP, transformers CLIP, SigLIP and SigLIP2."""

from __future__ import annotations

import json
from typing import Any

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    CLIPConfig,
    CLIPImageProcessor,
    CLIPModel,
    PreTrainedTokenizerFast,
    Siglip2Config,
    Siglip2ImageProcessor,
    Siglip2Model,
    Siglip2Tokenizer,
    SiglipConfig,
    SiglipImageProcessor,
    SiglipModel,
)

from ..retrievers.open_clip_retriever import OpenCLIPRetriever
from ..retrievers.transformers_retriever import TransformersCLIPRetriever


TINY_IMAGE_SIZE = 32

# Words the tiny BPE tokenizer is trained on; anything else still tokenizes (character pieces).
_TINY_CORPUS = [
    "a photo of a red circle on a blue square.",
    "a green triangle next to a yellow star, small and large.",
    "two black dogs and one white cat play in the park.",
    "a man rides a horse on the beach at sunset.",
    "an empty street with cars, trees and a tall building.",
]


def tiny_open_clip_config(embed_dim: int = 16, context_length: int = 77) -> dict[str, Any]:
    """An open_clip `CLIP` architecture config: ViT on 32x32 images and a 2-layer causal text tower.

    It keeps CLIP's real 49,408-token vocabulary so `open_clip.SimpleTokenizer` works unchanged (~0.8M parameters,
    most of them the token-embedding table).
    """
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": TINY_IMAGE_SIZE, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
        "text_cfg": {"context_length": context_length, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
    }


def tiny_open_clip_retriever(seed: int = 0, **config_kwargs: Any) -> OpenCLIPRetriever:
    """A randomly initialised `OpenCLIPRetriever` (same weights for the same `seed`)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return OpenCLIPRetriever(None, model_cfg=tiny_open_clip_config(**config_kwargs))


def tiny_bpe_tokenizer(vocab_size: int = 300, model_max_length: int = 77) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained in memory on a few sentences, with CLIP-style BOS/EOS and a pad token."""
    specials = ["<pad>", "<|startoftext|>", "<|endoftext|>"]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    bos_id, eos_id = backend.token_to_id(specials[1]), backend.token_to_id(specials[2])
    backend.post_processor = processors.TemplateProcessing(
        single=f"{specials[1]} $A {specials[2]}", special_tokens=[(specials[1], bos_id), (specials[2], eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token=specials[0],
        bos_token=specials[1],
        eos_token=specials[2],
        model_max_length=model_max_length,
    )


def tiny_siglip2_tokenizer(vocab_size: int = 200, model_max_length: int = 16) -> Siglip2Tokenizer:
    """A `Siglip2Tokenizer` (Gemma-style BPE that lowercases, what `AutoTokenizer` loads for a `siglip2` folder) with
    a BPE vocabulary trained in memory on a few sentences."""
    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # Siglip2Tokenizer's defaults, ids 0-4
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    # Siglip2Tokenizer's own normalisation and pre-tokenisation, so that the merges learned here apply there.
    backend.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Replace(" ", "\u2581")])
    backend.pre_tokenizer = pre_tokenizers.Split(pattern="\u2581", behavior="merged_with_previous")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False)
    backend.train_from_iterator(_TINY_CORPUS, trainer=trainer)
    model = json.loads(backend.to_str())["model"]
    merges = [tuple(merge) if isinstance(merge, list) else tuple(merge.split(" ")) for merge in model["merges"]]
    return Siglip2Tokenizer(vocab=model["vocab"], merges=merges, model_max_length=model_max_length)


def _tiny_text_config(tokenizer: PreTrainedTokenizerFast, max_positions: int, hidden_size: int) -> dict[str, Any]:
    return {
        "vocab_size": len(tokenizer),
        "hidden_size": hidden_size,
        "intermediate_size": 2 * hidden_size,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "max_position_embeddings": max_positions,
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
    }


_TINY_VISION_CONFIG = {
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": 8,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}


TRANSFORMERS_RETRIEVER_TYPES = ("clip", "siglip", "siglip2")


def tiny_transformers_clip_retriever(seed: int = 0, model_type: str = "clip") -> TransformersCLIPRetriever:
    """A randomly initialised `TransformersCLIPRetriever` over a tiny `CLIPModel` (`model_type="clip"`),
    `SiglipModel` (`"siglip"`) or `Siglip2Model` (`"siglip2"`: NaFlex, images resized to at most 16 patches of 8x8
    pixels keeping their aspect ratio), with the in-memory BPE tokenizer of `tiny_bpe_tokenizer`.

    Save it with `save_transformers_retriever` for `TransformersCLIPRetriever.from_pretrained`."""
    size = {"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if model_type == "clip":
            tokenizer = tiny_bpe_tokenizer(model_max_length=77)
            config = CLIPConfig(
                text_config=_tiny_text_config(tokenizer, 77, hidden_size=16),
                vision_config=_TINY_VISION_CONFIG,
                projection_dim=16,
            )
            model = CLIPModel(config)
            image_processor = CLIPImageProcessor(size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size=size)
        elif model_type == "siglip":
            tokenizer = tiny_bpe_tokenizer(model_max_length=16)
            config = SiglipConfig(
                # SigLIP has no projection: both towers share the hidden size.
                text_config=_tiny_text_config(tokenizer, 16, hidden_size=_TINY_VISION_CONFIG["hidden_size"]),
                vision_config=_TINY_VISION_CONFIG,
            )
            model = SiglipModel(config)
            image_processor = SiglipImageProcessor(size=size)
        elif model_type == "siglip2":
            tokenizer = tiny_siglip2_tokenizer(model_max_length=16)
            patch_size, num_patches = _TINY_VISION_CONFIG["patch_size"], (TINY_IMAGE_SIZE // 8) ** 2
            vision_config = {key: value for key, value in _TINY_VISION_CONFIG.items() if key != "image_size"}
            config = Siglip2Config(
                text_config=_tiny_text_config(tokenizer, 16, hidden_size=_TINY_VISION_CONFIG["hidden_size"]),
                vision_config={**vision_config, "num_patches": num_patches},  # a 4x4 grid of position embeddings
            )
            model = Siglip2Model(config)
            image_processor = Siglip2ImageProcessor(patch_size=patch_size, max_num_patches=num_patches)
        else:
            raise ValueError(f"model_type={model_type!r} is not one of {TRANSFORMERS_RETRIEVER_TYPES}.")
    return TransformersCLIPRetriever(model.eval(), tokenizer=tokenizer, image_processor=image_processor)


def save_transformers_retriever(retriever: TransformersCLIPRetriever, path: str) -> str:
    """Save the model, tokenizer and image processor of `retriever` in one folder, as a Hub checkpoint holds them, so
    that `TransformersCLIPRetriever.from_pretrained(path)` (and the scripts' retriever flags) load it back."""
    retriever.model.save_pretrained(path)
    retriever.tokenizer.save_pretrained(path)
    retriever.image_processor.save_pretrained(path)
    return str(path)
