"""Beam captioning passes `generate` an attention mask and a pad token, so transformers' "attention mask is not set"
warnings never appear, call after call (also where the pad token is the EOS token, as with GPT-2's tokenizer)."""

import pytest

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
def test_beam_captioning_prints_no_attention_mask_warning(build, capfd):
    policy = build()
    pixels = policy.preprocess(random_images(3))
    capfd.readouterr()
    for _ in range(3):
        policy.generate_captions(pixel_values=pixels, num_beams=3, max_new_tokens=5)
    err = capfd.readouterr().err
    assert "attention mask" not in err.lower() and "attention_mask" not in err, err
