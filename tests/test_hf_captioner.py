"""The policy interface over every supported transformers captioner family (tiny models, no download).

Each family is checked against the model's *own* public forward (pixel values in, logits out), so these tests
do not reuse the family code they test.
"""

import pytest
import torch
from torch import nn
from transformers import BlipForConditionalGeneration, GPT2Config, GPT2LMHeadModel, ViTConfig, ViTModel

from discritune_trl.models.blip import BlipPolicy
from discritune_trl.models.hf_captioner import HFCaptionerPolicy
from discritune_trl.testing.blip import random_images, tiny_blip, tiny_bpe_tokenizer, tiny_git, tiny_vit_gpt2


def build_blip(freeze_vision_encoder=True):
    return BlipPolicy.from_blip(*tiny_blip(), freeze_vision_encoder=freeze_vision_encoder)


def build_vit_gpt2(freeze_vision_encoder=True):
    model, image_processor, tokenizer = tiny_vit_gpt2()
    return HFCaptionerPolicy.from_captioner(
        model, image_processor=image_processor, tokenizer=tokenizer, freeze_vision_encoder=freeze_vision_encoder
    )


def build_git(freeze_vision_encoder=True):
    model, processor = tiny_git()
    return HFCaptionerPolicy.from_captioner(model, processor, freeze_vision_encoder=freeze_vision_encoder)


BUILDERS = {"blip": build_blip, "vit-gpt2": build_vit_gpt2, "git": build_git}


def reference_logits(policy, pixel_values, text_ids):
    """Next-token logits `[B, T, V]` for the full text `text_ids` from the model's own forward on pixels."""
    model = policy.captioner_model
    if policy.family.name == "blip":
        return model(pixel_values=pixel_values, input_ids=text_ids).logits
    if policy.family.name == "git":
        return model(input_ids=text_ids, pixel_values=pixel_values).logits[:, -text_ids.shape[1] :]
    return model(pixel_values=pixel_values, decoder_input_ids=text_ids).logits


def prefix_ids(policy, batch_size):
    return policy._prefix_ids.unsqueeze(0).expand(batch_size, -1)


@pytest.fixture(params=list(BUILDERS))
def family(request):
    return request.param


@pytest.fixture
def pixel_values(family):
    policy = BUILDERS[family]()
    return policy.preprocess(random_images(3, seed=1))


def test_greedy_equals_stepwise_argmax(family, pixel_values):
    policy = BUILDERS[family]()
    out = policy.generate_captions(pixel_values, max_new_tokens=8)
    stop_ids = torch.tensor(policy.stop_token_ids)
    with torch.no_grad():
        for row in range(pixel_values.shape[0]):
            text_ids = prefix_ids(policy, 1)
            expected = []
            for _ in range(8):
                next_id = reference_logits(policy, pixel_values[row : row + 1], text_ids)[0, -1].argmax()
                expected.append(int(next_id))
                text_ids = torch.cat([text_ids, next_id.view(1, 1)], dim=1)
                if next_id in stop_ids:
                    break
            length = int(out.caption_mask[row].sum())
            assert out.sequences[row, :length].tolist() == expected
            assert bool(out.stopped[row]) == (expected[-1] in stop_ids.tolist())
    assert out.texts == [t.strip() for t in policy.tokenizer.batch_decode(out.sequences, skip_special_tokens=True)]


def test_one_beam_equals_greedy(family, pixel_values):
    policy = BUILDERS[family]()
    greedy = policy.generate_captions(pixel_values, max_new_tokens=6)
    beam = policy.generate_captions(pixel_values, max_new_tokens=6, num_beams=1)
    assert torch.equal(greedy.sequences, beam.sequences)
    beams = policy.generate_captions(pixel_values, max_new_tokens=6, num_beams=3, num_return_sequences=2)
    assert beams.sequences.shape[0] == 6 and len(beams.texts) == 6


def test_log_probs_equal_hand_computation_on_caption_tokens_only(family, pixel_values):
    policy = BUILDERS[family]()
    out = policy.generate_captions(pixel_values, max_new_tokens=6, do_sample=True)
    token_log_probs = policy.caption_log_probs(out.sequences, out.caption_mask, pixel_values, reduction="none")
    assert token_log_probs.shape == out.sequences.shape  # no column for the start token or the prompt

    num_prefix = policy._prefix_ids.numel()
    text_ids = torch.cat([prefix_ids(policy, 3), out.sequences], dim=1)
    with torch.no_grad():
        logits = reference_logits(policy, pixel_values, text_ids)
    expected = logits[:, num_prefix - 1 : -1].log_softmax(-1).gather(-1, out.sequences.unsqueeze(-1)).squeeze(-1)
    expected = expected * out.caption_mask
    torch.testing.assert_close(token_log_probs, expected, atol=1e-5, rtol=1e-5)

    mean = policy.caption_log_probs(out.sequences, out.caption_mask, pixel_values)
    torch.testing.assert_close(mean, expected.sum(1) / out.caption_mask.sum(1), atol=1e-5, rtol=1e-5)


def test_several_captions_per_image_are_consecutive(family, pixel_values):
    policy = BUILDERS[family]()
    torch.manual_seed(0)
    out = policy.generate_captions(pixel_values, max_new_tokens=5, do_sample=True, num_return_sequences=2)
    assert out.sequences.shape[0] == 6
    grouped = policy.caption_log_probs(out.sequences, out.caption_mask, pixel_values, reduction="sum")
    one_by_one = torch.stack(
        [
            policy.caption_log_probs(
                out.sequences[i : i + 1],
                out.caption_mask[i : i + 1],
                pixel_values[i // 2 : i // 2 + 1],
                reduction="sum",
            )[0]
            for i in range(6)
        ]
    )
    torch.testing.assert_close(grouped, one_by_one, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="G captions per image"):
        policy.caption_log_probs(out.sequences[:5], out.caption_mask[:5], pixel_values)


def test_cached_image_embeds_give_the_same_results(family, pixel_values):
    policy = BUILDERS[family]()
    image_embeds = policy.encode_images(pixel_values)
    if policy.family.caches_image_features:
        assert image_embeds.dim() == 3 and image_embeds.shape[0] == 3  # [B, N, D] vision features
    else:
        assert image_embeds is pixel_values  # GIT: nothing to cache
    from_pixels = policy.generate_captions(pixel_values, max_new_tokens=6)
    from_embeds = policy.generate_captions(image_embeds=image_embeds, max_new_tokens=6)
    assert torch.equal(from_pixels.sequences, from_embeds.sequences)
    torch.testing.assert_close(
        policy.caption_log_probs(from_pixels.sequences, from_pixels.caption_mask, pixel_values),
        policy.caption_log_probs(from_pixels.sequences, from_pixels.caption_mask, image_embeds=image_embeds),
    )
    with pytest.raises(ValueError, match="exactly one"):
        policy.generate_captions(pixel_values, image_embeds)


@pytest.mark.parametrize("freeze", [True, False])
def test_gradients_reach_the_decoder_and_only_a_trainable_vision_encoder(family, pixel_values, freeze):
    policy = BUILDERS[family](freeze_vision_encoder=freeze)
    policy.train()
    vision_encoder = policy.family.vision_encoder(policy.captioner_model)
    assert vision_encoder.training is not freeze
    out = policy.generate_captions(pixel_values, max_new_tokens=5)
    image_embeds = policy.encode_images(pixel_values)
    policy.caption_log_probs(out.sequences, out.caption_mask, image_embeds=image_embeds).mean().backward()

    vision_ids = {id(p) for p in vision_encoder.parameters()}
    text_grads = [p.grad for p in policy.parameters() if id(p) not in vision_ids and p.grad is not None]
    assert text_grads and any(g.abs().sum() > 0 for g in text_grads)
    vision_grads = [p.grad for p in vision_encoder.parameters() if p.grad is not None]
    if freeze:
        assert not vision_grads and not any(p.requires_grad for p in vision_encoder.parameters())
    else:
        assert any(g.abs().sum() > 0 for g in vision_grads)


def test_save_and_load_is_bit_identical(family, pixel_values, tmp_path):
    policy = BUILDERS[family]()
    policy.save_pretrained(tmp_path)
    loaded = type(policy).from_pretrained(tmp_path)
    state, loaded_state = policy.state_dict(), loaded.state_dict()
    assert state.keys() == loaded_state.keys()
    assert all(torch.equal(state[key], loaded_state[key]) for key in state)
    assert loaded.config.prompt == policy.config.prompt and loaded.stop_token_ids == policy.stop_token_ids
    assert not any(p.requires_grad for p in loaded.family.vision_encoder(loaded.captioner_model).parameters())
    images = random_images(2, seed=5)
    assert torch.equal(loaded.preprocess(images), policy.preprocess(images))
    before = policy.generate_captions(pixel_values, max_new_tokens=6)
    after = loaded.generate_captions(pixel_values, max_new_tokens=6)
    assert torch.equal(before.sequences, after.sequences) and before.texts == after.texts


def test_models_that_cannot_caption_images_are_rejected():
    tokenizer = tiny_bpe_tokenizer()
    text_only = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=16, n_layer=1, n_head=2))
    with pytest.raises(ValueError, match="GPT2LMHeadModel cannot generate captions from images"):
        HFCaptionerPolicy.from_captioner(text_only, image_processor=None, tokenizer=tokenizer)
    image_only = ViTModel(ViTConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2))
    with pytest.raises(ValueError, match="ViTModel cannot generate captions"):
        HFCaptionerPolicy.from_captioner(image_only)
    with pytest.raises(TypeError, match="expected a transformers PreTrainedModel"):
        HFCaptionerPolicy.from_captioner(nn.Linear(2, 2))


def test_a_processor_that_does_not_match_the_model_is_rejected():
    model, image_processor, _ = tiny_vit_gpt2()
    _, blip_processor = tiny_blip()
    with pytest.raises(ValueError, match="does not match the model: the model ends captions with id 0"):
        HFCaptionerPolicy.from_captioner(model, image_processor=image_processor, tokenizer=blip_processor.tokenizer)
    big_tokenizer = tiny_bpe_tokenizer()
    big_tokenizer.add_tokens([f"word{i}" for i in range(200)])
    with pytest.raises(ValueError, match="embeds 395 tokens"):
        HFCaptionerPolicy.from_captioner(model, image_processor=image_processor, tokenizer=big_tokenizer)
    git, git_processor = tiny_git()
    git_processor.image_processor.crop_size = {"height": 48, "width": 48}
    git_processor.image_processor.size = {"shortest_edge": 48}
    with pytest.raises(
        ValueError, match=r"makes images of shape \(3, 48, 48\) but the vision encoder reads \(3, 32, 32\)"
    ):
        HFCaptionerPolicy.from_captioner(git, git_processor)


def test_forward_routes_the_trainers_log_prob_pass_and_keeps_the_captioner_forward(family, pixel_values):
    policy = BUILDERS[family]()
    out = policy.generate_captions(pixel_values, max_new_tokens=5)
    through_forward = policy(
        pixel_values, caption_ids=out.sequences, caption_mask=out.caption_mask, log_prob_reduction="none"
    )
    torch.testing.assert_close(
        through_forward, policy.caption_log_probs(out.sequences, out.caption_mask, pixel_values, reduction="none")
    )
    text_ids = torch.cat([prefix_ids(policy, 3), out.sequences], dim=1)
    plain_kwargs = {"decoder_input_ids" if policy.family.name == "vision-encoder-decoder" else "input_ids": text_ids}
    if family == "blip":  # BlipPolicy is a BlipForConditionalGeneration: its own forward, unbound
        captioner_logits = BlipForConditionalGeneration.forward(
            policy, pixel_values=pixel_values, **plain_kwargs
        ).logits
    else:
        captioner_logits = policy.captioner(pixel_values=pixel_values, **plain_kwargs).logits
    torch.testing.assert_close(policy(pixel_values=pixel_values, **plain_kwargs).logits, captioner_logits)
    with pytest.raises(ValueError, match="image_embeds is only accepted with caption_ids"):
        policy(image_embeds=policy.encode_images(pixel_values), **plain_kwargs)
