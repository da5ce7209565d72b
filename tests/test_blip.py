"""BlipPolicy specifics: the captioning prompt, BLIP checkpoint interop, LoRA, and bad input.

The family-independent behaviour (greedy decoding, log-probs, gradients, save/load) is checked for BLIP too in
`test_hf_captioner.py`.
"""

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

from discritune_trl import BlipPolicy
from discritune_trl.models.blip import BlipPolicyConfig
from discritune_trl.testing.blip import random_images, tiny_blip, tiny_blip_config, tiny_wordpiece_tokenizer


@pytest.fixture
def blip():
    return tiny_blip()


@pytest.fixture
def policy(blip):
    return BlipPolicy.from_blip(*blip)


def test_prompt_is_read_but_neither_returned_nor_scored(policy, blip):
    model, processor = blip
    tokenizer = processor.tokenizer
    assert policy.config.prompt == "a picture of "
    prompt_ids = tokenizer("a picture of", add_special_tokens=False)["input_ids"]
    assert policy._prefix_ids.tolist() == [model.config.text_config.bos_token_id, *prompt_ids]  # [DEC] a picture of

    pixel_values = policy.preprocess(random_images(2))
    out = policy.generate_captions(pixel_values, max_new_tokens=8, do_sample=True)
    # BLIP's own generate returns the prompt with the caption; the policy returns the caption only.
    blip_ids = model.generate(pixel_values, input_ids=torch.tensor([[2, *prompt_ids, 3]] * 2), max_new_tokens=1)
    assert blip_ids[0, 1 : 1 + len(prompt_ids)].tolist() == prompt_ids
    assert out.sequences.shape[1] <= 8 and not any(text.startswith("a picture of") for text in out.texts)

    # The prompt changes what the caption is conditioned on, but it is not scored itself.
    no_prompt = BlipPolicy.from_blip(model, processor, prompt="")
    assert no_prompt._prefix_ids.tolist() == [model.config.text_config.bos_token_id]
    with_prompt = policy.caption_log_probs(out.sequences, out.caption_mask, pixel_values, reduction="none")
    without = no_prompt.caption_log_probs(out.sequences, out.caption_mask, pixel_values, reduction="none")
    assert with_prompt.shape == without.shape == out.sequences.shape
    assert not torch.allclose(with_prompt, without)


def test_blip_generate_with_prompt_matches_policy_greedy(policy, blip):
    """The policy decodes exactly as BLIP's own `generate` with the same prompt, when both stop at [SEP] only."""
    model, processor = blip
    policy = BlipPolicy.from_blip(model, processor, stop_at_full_stop=False)
    pixel_values = policy.preprocess(random_images(3, seed=2))
    ours = policy.generate_captions(pixel_values, max_new_tokens=10)
    prompt = processor(text=["a picture of"] * 3, return_tensors="pt")
    theirs = model.generate(pixel_values, input_ids=prompt.input_ids, max_new_tokens=10)
    prefix_length = policy._prefix_ids.numel()
    theirs = theirs[:, prefix_length:]
    for row in range(3):
        length = int(ours.caption_mask[row].sum())
        assert ours.sequences[row, :length].tolist() == theirs[row, :length].tolist()


def test_any_blip_config_works_and_defaults_to_the_policy_options(blip):
    model, processor = blip
    plain_config = BlipConfig(**{k: v for k, v in model.config.to_dict().items() if k != "model_type"})
    policy = BlipPolicy(plain_config, processor=processor)
    assert isinstance(policy.config, BlipPolicyConfig) and policy.config.freeze_vision_encoder
    assert isinstance(policy, BlipForConditionalGeneration)
    assert not any(p.requires_grad for p in policy.vision_model.parameters())


def test_saved_policy_loads_as_plain_blip_and_back(policy, tmp_path):
    policy.save_pretrained(tmp_path)
    plain = BlipForConditionalGeneration.from_pretrained(tmp_path)
    assert all(torch.equal(value, plain.state_dict()[key]) for key, value in policy.state_dict().items())
    # A plain BLIP folder (as on the Hub) loads into BlipPolicy with the processor saved beside it.
    plain_dir = tmp_path / "plain"
    plain.save_pretrained(plain_dir)
    BlipProcessor(policy.image_processor, policy.tokenizer).save_pretrained(plain_dir)
    loaded = BlipPolicy.from_pretrained(plain_dir)
    assert loaded.config.prompt == "a picture of " and loaded.tokenizer is not None
    assert all(torch.equal(value, loaded.state_dict()[key]) for key, value in policy.state_dict().items())


def test_from_pretrained_without_a_processor_is_a_clear_error(policy, tmp_path):
    BlipForConditionalGeneration.save_pretrained(policy, tmp_path)  # weights and config only
    with pytest.raises(ValueError, match="No processor could be loaded .* pass processor="):
        BlipPolicy.from_pretrained(tmp_path)
    _, processor = tiny_blip()
    assert BlipPolicy.from_pretrained(tmp_path, processor=processor).tokenizer is processor.tokenizer


def test_lora_trains_only_the_adapters(policy):
    peft_model = get_peft_model(policy, LoraConfig(r=4, lora_alpha=8, target_modules=BlipPolicy.lora_target_modules))
    trainable = {name for name, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert any("crossattention" in name for name in trainable)
    before = {name: p.detach().clone() for name, p in peft_model.named_parameters()}

    pixel_values = peft_model.preprocess(random_images(2))
    out = peft_model.generate_captions(pixel_values, max_new_tokens=5)
    optimizer = torch.optim.SGD([p for p in peft_model.parameters() if p.requires_grad], lr=0.5)
    loss = -peft_model.caption_log_probs(out.sequences, out.caption_mask, pixel_values).mean()
    loss.backward()
    optimizer.step()
    changed = {name for name, p in peft_model.named_parameters() if not torch.equal(p, before[name])}
    # lora_B starts at zero, so the first step moves every lora_B (and nothing else: lora_A's gradient is zero).
    assert changed == {name for name in trainable if "lora_B" in name}


def test_images_of_any_mode_are_converted_and_other_inputs_rejected(policy):
    rgb = random_images(1, seed=3)[0]
    for mode in ("L", "RGBA", "P", "CMYK"):
        converted = rgb.convert(mode)
        pixel_values = policy.preprocess([converted])
        assert pixel_values.shape == (1, 3, 32, 32)
        torch.testing.assert_close(pixel_values, policy.preprocess([converted.convert("RGB")]))
    with pytest.raises(TypeError, match=r"images\[1\] is a ndarray, expected a PIL.Image.Image"):
        policy.preprocess([rgb, torch.zeros(3, 8, 8).numpy()])
    with pytest.raises(ValueError, match=r"image_embeds has shape \(1, 3, 32, 32\); expected \[B, N, D\]"):
        policy.generate_captions(image_embeds=policy.preprocess([rgb]))


def test_a_processor_that_does_not_match_is_rejected(blip):
    model, processor = blip
    wrong_size = BlipProcessor(BlipImageProcessor(size={"height": 64, "width": 64}), processor.tokenizer)
    with pytest.raises(ValueError, match=r"shape \(3, 64, 64\) but the vision encoder reads \(3, 32, 32\)"):
        BlipPolicy.from_blip(model, wrong_size)
    bigger_vocabulary = tiny_wordpiece_tokenizer()
    bigger_vocabulary.add_tokens(["zebra", "giraffe"])
    with pytest.raises(ValueError, match=r"54 tokens\) does not match the model, which embeds 52 tokens"):
        BlipPolicy.from_blip(model, image_processor=processor.image_processor, tokenizer=bigger_vocabulary)
    unready = BlipPolicy(tiny_blip_config(52))
    with pytest.raises(ValueError, match="has no processor"):
        unready.generate_captions(torch.zeros(1, 3, 32, 32))
    with pytest.raises(TypeError, match="expected a BlipForConditionalGeneration"):
        BlipPolicy.from_blip(torch.nn.Linear(2, 2), processor)
