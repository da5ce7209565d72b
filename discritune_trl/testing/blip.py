"""Tiny BLIP, ViT-GPT2 and GIT captioners with locally built tokenizers, for tests and examples.

Every builder returns `(model, processor)`: an architecture-identical but tiny model with random weights
(a few hundred thousand parameters) and a processor whose tokenizer is built here with the `tokenizers`
library (WordPiece for BLIP and GIT, byte-level BPE for GPT-2). Nothing is downloaded.
"""

from __future__ import annotations

import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    BertTokenizer,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
    CLIPImageProcessor,
    GitConfig,
    GitForCausalLM,
    GitProcessor,
    GPT2Config,
    GPT2LMHeadModel,
    PreTrainedTokenizerFast,
    VisionEncoderDecoderModel,
    ViTConfig,
    ViTImageProcessor,
    ViTModel,
)


TINY_IMAGE_SIZE = 32
TINY_PATCH_SIZE = 8

# A small captioning vocabulary: enough words for readable random captions and a full stop.
TINY_WORDS = (
    "a picture of photo the an and with on in is are two three red blue green yellow black white big small "
    "dog cat bird car tree house man woman child ball table chair grass sky water road sitting standing "
    "running near next to its ."
).split()


def tiny_wordpiece_tokenizer(bos_token: str | None = "[DEC]") -> BertTokenizer:
    """A lower-casing BERT WordPiece tokenizer over :data:`TINY_WORDS`, like BLIP's (which adds `[DEC]` as BOS)."""
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {token: index for index, token in enumerate(specials + sorted(set(TINY_WORDS)))}
    tokenizer = BertTokenizer(vocab=vocab)
    if bos_token is not None:
        tokenizer.add_special_tokens({"bos_token": bos_token})
    return tokenizer


def tiny_bpe_tokenizer() -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer trained here on a few sentences of :data:`TINY_WORDS`."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    corpus = [" ".join(TINY_WORDS[i : i + 6]) for i in range(0, len(TINY_WORDS), 3)]
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )


# The transformer sizes every tiny captioner here shares (text and vision towers alike).
TINY_LAYERS = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)
TINY_VISION = dict(**TINY_LAYERS, image_size=TINY_IMAGE_SIZE, patch_size=TINY_PATCH_SIZE)


def tiny_blip_config(vocab_size: int, **text_overrides) -> BlipConfig:
    """A 2-layer BLIP captioning config over 32x32 images with 8x8 patches (17 vision tokens)."""
    tokenizer_ids = dict(bos_token_id=vocab_size - 1, pad_token_id=0, sep_token_id=3, eos_token_id=3)
    text_config = dict(
        vocab_size=vocab_size, max_position_embeddings=64, **TINY_LAYERS, **{**tokenizer_ids, **text_overrides}
    )
    vision_config = dict(**TINY_VISION, initializer_range=0.02)
    return BlipConfig(text_config=text_config, vision_config=vision_config, projection_dim=32)


def tiny_blip_processor(image_size: int = TINY_IMAGE_SIZE) -> BlipProcessor:
    """BLIP's processor (CLIP-normalised square resize) with the tiny WordPiece tokenizer."""
    image_processor = BlipImageProcessor(size={"height": image_size, "width": image_size})
    return BlipProcessor(image_processor=image_processor, tokenizer=tiny_wordpiece_tokenizer())


def tiny_blip(seed: int = 0) -> tuple[BlipForConditionalGeneration, BlipProcessor]:
    """A tiny random `BlipForConditionalGeneration` and its matching processor."""
    processor = tiny_blip_processor()
    torch.manual_seed(seed)
    model = BlipForConditionalGeneration(tiny_blip_config(len(processor.tokenizer))).eval()
    return model, processor


def tiny_vit_gpt2(seed: int = 0) -> tuple[VisionEncoderDecoderModel, ViTImageProcessor, PreTrainedTokenizerFast]:
    """A tiny random ViT -> GPT-2 `VisionEncoderDecoderModel`, its image processor and its BPE tokenizer.

    The encoder (width 24) and decoder (width 32) differ, so the model carries its `enc_to_dec_proj`. The ViT keeps
    its (unused) pooler so that the model rebuilt from its config has the same parameters.
    """
    tokenizer = tiny_bpe_tokenizer()
    torch.manual_seed(seed)
    encoder = ViTModel(
        ViTConfig(
            hidden_size=24,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=TINY_IMAGE_SIZE,
            patch_size=TINY_PATCH_SIZE,
        )
    )
    eos = tokenizer.eos_token_id
    decoder_config = GPT2Config(
        vocab_size=len(tokenizer),
        n_embd=32,
        n_layer=2,
        n_head=4,
        n_positions=64,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
        add_cross_attention=True,
        is_decoder=True,
        # Untied: with tied random embeddings the start token (EOS) predicts itself and every caption is empty.
        tie_word_embeddings=False,
    )
    model = VisionEncoderDecoderModel(encoder=encoder, decoder=GPT2LMHeadModel(decoder_config))
    model.config.decoder_start_token_id = eos
    model.config.pad_token_id = eos
    model.config.eos_token_id = eos
    image_processor = ViTImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})
    return model.eval(), image_processor, tokenizer


def tiny_git(seed: int = 0) -> tuple[GitForCausalLM, GitProcessor]:
    """A tiny random `GitForCausalLM` (image tokens prepended to the text) and its processor."""
    tokenizer = tiny_wordpiece_tokenizer(bos_token=None)
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": TINY_IMAGE_SIZE}, crop_size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
    )
    config = GitConfig(
        vision_config=dict(TINY_VISION),
        vocab_size=len(tokenizer),
        max_position_embeddings=64,
        **TINY_LAYERS,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    model = GitForCausalLM(config).eval()
    return model, GitProcessor(image_processor=image_processor, tokenizer=tokenizer)


def random_images(count: int, size: int = 40, seed: int = 0, mode: str = "RGB") -> list:
    """`count` random-noise PIL images of `size`x`size` pixels in the given PIL `mode`."""
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randint(0, 256, (count, size, size, 3), generator=generator, dtype=torch.uint8).numpy()
    return [Image.fromarray(array, mode="RGB").convert(mode) for array in pixels]
