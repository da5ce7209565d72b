"""Tiny ClipCap policies: a 2-layer open_clip ViT, a small mapper and a 2-layer GPT-2 over a word-level
vocabulary, with random weights (about 150k parameters). Used by the tests, the trainer's tests and the
embedded world."""

from __future__ import annotations

from typing import Any

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ..models.clipcap import ClipCapConfig, ClipCapPolicy


TINY_EOS_TOKEN = "<|endoftext|>"
TINY_PAD_TOKEN = "<pad>"
TINY_UNK_TOKEN = "<unk>"
# Shapes, colours, sizes and positions: enough words for captions of a small synthetic image world.
TINY_WORDS = (
    ". , a an the one two three of and with on in at to is are left right top bottom middle center corner "
    "above below next big small large tiny red green blue yellow purple orange black white gray pink "
    "circle square triangle star cross ring dot line shape shapes image picture background"
).split()

TINY_OPEN_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 64, "head_width": 32, "layers": 2},
    # open_clip builds a text tower too; ClipCap drops it, so it is as small as possible.
    "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


def tiny_clipcap_tokenizer(words: list[str] | tuple[str, ...] = TINY_WORDS) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words` plus EOS, pad and unknown tokens, built locally.

    Words and punctuation are split apart ("a red circle." -> `a red circle .`) and decoding glues the
    punctuation back ("a red circle.").
    """
    specials = [TINY_EOS_TOKEN, TINY_PAD_TOKEN, TINY_UNK_TOKEN]
    vocab = {token: index for index, token in enumerate(specials + [w for w in dict.fromkeys(words)])}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=TINY_UNK_TOKEN))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, eos_token=TINY_EOS_TOKEN, pad_token=TINY_PAD_TOKEN, unk_token=TINY_UNK_TOKEN
    )


def tiny_clipcap_config(tokenizer: PreTrainedTokenizerFast | None = None, **overrides: Any) -> ClipCapConfig:
    """A [`ClipCapConfig`] with a tiny open_clip ViT (32 px, 2 layers, embed_dim 32), an MLP mapper with
    prefix 4 and a 2-layer GPT-2 of width 32 sized to `tokenizer`'s vocabulary (dropout off).

    `overrides` replace config fields; `text_config` overrides are merged into the tiny GPT-2 config.
    """
    tokenizer = tokenizer if tokenizer is not None else tiny_clipcap_tokenizer()
    text_config = {
        "vocab_size": len(tokenizer),
        "n_positions": 128,
        "n_embd": 32,
        "n_layer": 2,
        "n_head": 2,
        "resid_pdrop": 0.0,
        "embd_pdrop": 0.0,
        "attn_pdrop": 0.0,
        "bos_token_id": tokenizer.eos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    text_config.update(overrides.pop("text_config", {}))
    settings = {
        "clip_model_name": None,
        "clip_model_cfg": TINY_OPEN_CLIP_CFG,
        "mapper_type": "mlp",
        "prefix_length": 4,
        "mapper_clip_length": 4,
        "mapper_num_layers": 2,
        "mapper_num_heads": 4,
        "text_config": text_config,
    }
    settings.update(overrides)
    return ClipCapConfig(**settings)


def tiny_clipcap_policy(seed: int = 0, **overrides: Any) -> ClipCapPolicy:
    """A randomly initialised tiny [`ClipCapPolicy`] (see [`tiny_clipcap_config`]) with its tokenizer.

    Same `seed` and overrides give the same weights.
    """
    tokenizer = tiny_clipcap_tokenizer()
    config = tiny_clipcap_config(tokenizer, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        policy = ClipCapPolicy(config, tokenizer=tokenizer)
    return policy.eval()
