"""A word-level tokenizer for the world's captioner, trained with the `tokenizers` library.

The world's language is a few dozen words, so one token per word (and one per punctuation mark) keeps the
captioner's vocabulary, embeddings and softmax tiny. The result is a `PreTrainedTokenizerFast`, saved and
loaded with the captioner like any Hugging Face tokenizer.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from .captions import META_CAPTIONS, SHAPES_CAPTION_PREFIXES
from .scenes import COLORS, POSITIONS, SHAPES, SIZES


PAD_TOKEN = "<pad>"
EOS_TOKEN = "<|endoftext|>"
UNK_TOKEN = "<unk>"


def world_vocabulary_text() -> list[str]:
    """Text that holds every word the world's captions can use, so no word is missing from a small corpus."""
    attribute_words = [*COLORS, *SHAPES, *SIZES, *POSITIONS]
    return [*META_CAPTIONS, *SHAPES_CAPTION_PREFIXES, " ".join(attribute_words), "a an and at in the, ."]


def train_world_tokenizer(texts: Iterable[str]) -> PreTrainedTokenizerFast:
    """Train a lower-cased word-level tokenizer on `texts` (plus the world's whole vocabulary).

    Words are split on whitespace and punctuation, so "left," is two tokens and the full stop is a token of
    its own (captioners stop on it). Decoding joins words with spaces and removes the space before
    punctuation, giving back the world's caption text exactly ("a red circle.").

    Returns:
        A `PreTrainedTokenizerFast` whose `eos_token` is `<|endoftext|>`, `pad_token` is `<pad>` and
        `unk_token` is `<unk>`.
    """
    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK_TOKEN))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)  # only its cleanup: " ." -> "."
    trainer = trainers.WordLevelTrainer(special_tokens=[PAD_TOKEN, EOS_TOKEN, UNK_TOKEN], min_frequency=1)
    tokenizer.train_from_iterator([*world_vocabulary_text(), *texts], trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        clean_up_tokenization_spaces=False,
    )
