"""Beam captioning passes `generate` an attention mask and a pad token, so transformers' "attention mask is not set"
warnings never appear, call after call (also where the pad token is the EOS token, as with GPT-2's tokenizer)."""

import logging

import pytest
import torch
from transformers.utils import logging as transformers_logging

from discritune_trl.models import BlipPolicy, HFCaptionerPolicy
from discritune_trl.testing.blip import random_images, tiny_blip, tiny_vit_gpt2
from discritune_trl.testing.clipcap import tiny_clipcap_policy


def clipcap_padding_with_eos():
    policy = tiny_clipcap_policy(seed=0)
    policy.tokenizer.pad_token = None  # as GPT-2's tokenizer: captions are padded with EOS, itself a stop token
    assert policy.pad_token_id == policy.tokenizer.eos_token_id
    return policy


def vit_gpt2():
    model, image_processor, tokenizer = tiny_vit_gpt2()
    return HFCaptionerPolicy.from_captioner(model, image_processor=image_processor, tokenizer=tokenizer)


@pytest.mark.parametrize(
    "build",
    [clipcap_padding_with_eos, lambda: BlipPolicy.from_blip(*tiny_blip()), vit_gpt2],
    ids=["clipcap", "blip", "vit-gpt2"],
)
def test_beam_captioning_prints_no_attention_mask_warning(build, caplog):
    policy = build()
    pixels = policy.preprocess(random_images(3))
    transformers_logging.warning_once.cache_clear()  # transformers prints these once per process
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            policy.generate_captions(pixel_values=pixels, num_beams=3, max_new_tokens=5)
    assert "attention mask" not in caplog.text.lower() and "attention_mask" not in caplog.text, caplog.text


def test_a_caption_token_equal_to_the_configs_pad_token_warns_raw_generate_but_not_clipcap(caplog):
    """The trigger, reproduced: `generate` drops the all-ones mask, and GPT-2 warns when a decoded token equals its
    config's `pad_token_id` (here set to the token this policy writes first, as a config whose pad token is a real
    word would). Raw `generate` on the same prefix warns; ClipCap's decoding does not."""
    policy = tiny_clipcap_policy(seed=3)
    pixels = policy.preprocess(random_images(2, seed=6))
    first_token = policy.generate_captions(pixels, max_new_tokens=1).sequences[0, 0].item()
    policy.language_model.config.pad_token_id = first_token
    transformers_logging.warning_once.cache_clear()  # the warning is printed once per process
    with torch.no_grad(), caplog.at_level(logging.WARNING):
        prefix = policy.image_conditioning(pixels, None)
        policy.language_model.generate(
            inputs_embeds=prefix,
            attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
            num_beams=3,
            max_new_tokens=4,
            pad_token_id=policy.pad_token_id,
            eos_token_id=policy.stop_token_ids,
        )
    assert "attention_mask" in caplog.text  # the trigger is real
    for decode in (
        lambda: policy.generate_captions(pixels, num_beams=3, max_new_tokens=4),
        lambda: policy.generate(pixels, num_beams=3, max_new_tokens=4),
    ):
        transformers_logging.warning_once.cache_clear()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            decode()
        assert "attention_mask" not in caplog.text
    assert policy.language_model.config.pad_token_id == first_token  # restored after decoding
