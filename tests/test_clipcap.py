"""ClipCapPolicy: decoding, log-probabilities, gradients, save/load, bad input (tiny random models)."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from transformers import GPT2LMHeadModel

from discritune_trl import ClipCapPolicy
from discritune_trl.testing.clipcap import (
    TINY_OPEN_CLIP_CFG,
    tiny_clipcap_config,
    tiny_clipcap_policy,
    tiny_clipcap_tokenizer,
)
from discritune_trl.utils.open_clip_utils import build_open_clip


@pytest.fixture(scope="module")
def policy() -> ClipCapPolicy:
    # GPT-2's usual initialisation (std 0.02) gives almost flat distributions and endless repetitions; std 1
    # gives decisive, varied captions whose rows stop at different lengths.
    return tiny_clipcap_policy(seed=1, text_config={"initializer_range": 1.0})


@pytest.fixture(scope="module")
def pixel_values() -> torch.Tensor:
    return torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def step_by_step_greedy(policy: ClipCapPolicy, pixel_values: torch.Tensor, max_new_tokens: int) -> list[list[int]]:
    """Reference decoding: full forward pass per token, argmax, no cache; each row cut after its first stop."""
    prefix = policy.prefix_embeds(policy.encode_images(pixel_values))
    embeds, tokens = prefix, []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            next_ids = policy.language_model(inputs_embeds=embeds).logits[:, -1].argmax(dim=-1)  # [B]
            tokens.append(next_ids)
            embeds = torch.cat([embeds, policy.language_model.transformer.wte(next_ids)[:, None]], dim=1)
    rows = torch.stack(tokens, dim=1).tolist()
    stops = set(policy.stop_token_ids)
    captions = []
    for row in rows:
        end = next((i + 1 for i, token in enumerate(row) if token in stops), len(row))
        captions.append(row[:end])
    return captions


def test_greedy_equals_step_by_step_argmax(policy, pixel_values):
    output = policy.generate_captions(pixel_values, max_new_tokens=20)
    generated = [row[: int(n)] for row, n in zip(output.sequences.tolist(), output.caption_mask.sum(1))]
    assert generated == step_by_step_greedy(policy, pixel_values, 20)
    assert output.texts == [policy.tokenizer.decode(row, skip_special_tokens=True).strip() for row in generated]


def test_beam_search_with_one_beam_equals_greedy(policy, pixel_values):
    greedy = policy.generate_captions(pixel_values, max_new_tokens=15)
    beam = policy.generate_captions(pixel_values, max_new_tokens=15, num_beams=1)
    assert torch.equal(greedy.sequences, beam.sequences) and greedy.texts == beam.texts


def test_image_embeds_give_the_same_captions_as_pixels(policy, pixel_values):
    from_pixels = policy.generate_captions(pixel_values, max_new_tokens=10)
    from_embeds = policy.generate_captions(image_embeds=policy.encode_images(pixel_values), max_new_tokens=10)
    assert torch.equal(from_pixels.sequences, from_embeds.sequences)


@pytest.mark.parametrize("sampling", [False, True])
def test_each_row_stops_at_its_own_first_full_stop(policy, pixel_values, sampling):
    torch.manual_seed(0)
    options = {"do_sample": True, "num_return_sequences": 4} if sampling else {}
    output = policy.generate_captions(pixel_values, max_new_tokens=30, **options)
    stops = torch.tensor(policy.stop_token_ids)
    lengths = output.caption_mask.sum(dim=1)
    assert output.sequences.shape[0] == 6 * (4 if sampling else 1)
    assert len(set(lengths.tolist())) > 2, "rows should stop at different positions"
    for row, mask, length, stopped in zip(output.sequences, output.caption_mask, lengths, output.stopped):
        caption = row[:length]
        assert mask[:length].all() and not mask[length:].any()
        assert (row[length:] == policy.pad_token_id).all()
        # No stop token inside the caption; the last one is a stop token exactly when the row stopped.
        assert not torch.isin(caption[:-1], stops).any()
        assert bool(torch.isin(caption[-1], stops)) == bool(stopped)
    assert output.stopped.any()
    full_stop_id = policy.tokenizer.convert_tokens_to_ids(".")
    assert full_stop_id in policy.stop_token_ids and policy.tokenizer.eos_token_id in policy.stop_token_ids


def test_sampling_and_beam_search_return_consecutive_rows_per_image(policy, pixel_values):
    beams = policy.generate_captions(pixel_values, max_new_tokens=10, num_beams=3, num_return_sequences=2)
    assert beams.sequences.shape[0] == 12 and len(beams.texts) == 12
    # Each image's two captions are conditioned on that image: the top beam of image i is first in its pair.
    top = policy.generate_captions(pixel_values, max_new_tokens=10, num_beams=3)
    assert beams.texts[::2] == top.texts


def test_log_probs_match_hand_computation(policy, pixel_values):
    output = policy.generate_captions(pixel_values, max_new_tokens=12)
    ids, mask = output.sequences, output.caption_mask
    token_log_probs = policy.caption_log_probs(ids, mask, pixel_values, reduction="none")
    prefix = policy.prefix_embeds(policy.encode_images(pixel_values))
    with torch.no_grad():
        for row in range(ids.shape[0]):
            embeds = prefix[row : row + 1]
            for t in range(int(mask[row].sum())):
                expected = policy.language_model(inputs_embeds=embeds).logits[0, -1].log_softmax(-1)[ids[row, t]]
                torch.testing.assert_close(token_log_probs[row, t], expected, rtol=1e-4, atol=1e-4)
                embeds = torch.cat([embeds, policy.language_model.transformer.wte(ids[row, t : t + 1])[None]], 1)
    assert (token_log_probs[mask == 0] == 0).all()
    summed = policy.caption_log_probs(ids, mask, pixel_values, reduction="sum")
    mean = policy.caption_log_probs(ids, mask, pixel_values)  # default: length-normalised
    torch.testing.assert_close(summed, token_log_probs.sum(1))
    torch.testing.assert_close(mean, summed / mask.sum(1))


def test_log_probs_of_several_captions_per_image(policy, pixel_values):
    torch.manual_seed(3)
    output = policy.generate_captions(pixel_values, max_new_tokens=8, do_sample=True, num_return_sequences=3)
    grouped = policy.caption_log_probs(output.sequences, output.caption_mask, pixel_values)
    repeated = policy.caption_log_probs(
        output.sequences, output.caption_mask, image_embeds=policy.encode_images(pixel_values).repeat_interleave(3, 0)
    )
    torch.testing.assert_close(grouped, repeated)


def test_forward_loss_is_caption_cross_entropy(policy, pixel_values):
    ids = torch.randint(3, 40, (6, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 6, [1] * 2 + [0] * 4, [1] * 5 + [0], [1] * 6])
    labels = ids.masked_fill(mask == 0, -100)
    output = policy(pixel_values=pixel_values, input_ids=ids, attention_mask=mask, labels=labels)
    assert output.logits.shape == (6, 6, len(policy.tokenizer))
    token_log_probs = policy.caption_log_probs(ids, mask, pixel_values, reduction="none")
    torch.testing.assert_close(output.loss, -token_log_probs.sum() / mask.sum())


def test_gradients_reach_mapper_and_language_model_not_encoder(pixel_values):
    policy = tiny_clipcap_policy(seed=1).train()
    assert not policy.visual.training and policy.language_model.training
    ids = torch.randint(3, 40, (6, 5))
    policy.caption_log_probs(ids, torch.ones_like(ids), pixel_values).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in policy.mapper.parameters())
    assert policy.language_model.transformer.h[0].attn.c_attn.weight.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in policy.visual.parameters())


@pytest.mark.parametrize("frozen", ["freeze_mapper", "freeze_language_model"])
def test_freeze_options(frozen, pixel_values):
    policy = tiny_clipcap_policy(seed=1, **{frozen: True})
    ids = torch.randint(3, 40, (6, 5))
    policy.caption_log_probs(ids, torch.ones_like(ids), pixel_values).sum().backward()
    mapper_grads = [p.grad for p in policy.mapper.parameters()]
    lm_grads = [p.grad for p in policy.language_model.parameters()]
    frozen_grads, trained_grads = (mapper_grads, lm_grads) if frozen == "freeze_mapper" else (lm_grads, mapper_grads)
    assert all(g is None for g in frozen_grads) and any(g is not None for g in trained_grads)


def test_preprocess_converts_any_mode_to_rgb(policy):
    images = [
        Image.new("L", (40, 50), 128),
        Image.new("RGBA", (32, 32), (255, 0, 0, 10)),
        Image.new("CMYK", (64, 48)),
        Image.new("P", (20, 20)),
        Image.new("RGB", (33, 31), (0, 255, 0)),
    ]
    pixel_values = policy.preprocess(images)
    assert pixel_values.shape == (5, 3, 32, 32) and pixel_values.dtype == torch.float32
    rgb = policy.preprocess([Image.new("L", (40, 50), 128).convert("RGB")])
    assert torch.equal(pixel_values[0], rgb[0])
    with pytest.raises(TypeError, match="PIL"):
        policy.preprocess([torch.zeros(3, 32, 32)])


def test_save_and_load_are_bit_identical(tmp_path, pixel_values):
    policy = tiny_clipcap_policy(seed=2, mapper_type="transformer", normalize_prefix=True)
    policy.save_pretrained(tmp_path)
    loaded = ClipCapPolicy.from_pretrained(tmp_path)
    assert loaded.config.mapper_type == "transformer" and loaded.config.normalize_prefix
    for (name, before), (name_after, after) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert name == name_after and torch.equal(before, after), name
    ids = torch.randint(3, 40, (6, 7))
    assert torch.equal(policy(pixel_values, input_ids=ids).logits, loaded(pixel_values, input_ids=ids).logits)
    assert policy.generate_captions(pixel_values).texts == loaded.generate_captions(pixel_values).texts
    image = Image.new("RGB", (50, 40), (10, 20, 30))
    assert torch.equal(policy.preprocess([image]), loaded.preprocess([image]))
    assert not any(p.requires_grad for p in loaded.visual.parameters())


def test_bad_inputs_raise_clear_errors(policy, pixel_values):
    with pytest.raises(ValueError, match=r"expected \[N, 3, 32, 32\]"):
        policy.generate_captions(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=r"expected \[N, 3, 32, 32\]"):
        policy.encode_images(torch.randn(3, 32, 32))
    with pytest.raises(TypeError, match="floating-point"):
        policy.encode_images(torch.zeros(2, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(ValueError, match="does not match this policy's mapper"):
        policy.generate_captions(image_embeds=torch.randn(2, 512))
    with pytest.raises(ValueError, match="max_new_tokens=76"):
        policy.generate_captions(pixel_values, max_new_tokens=76)
    with pytest.raises(ValueError, match="exactly one"):
        policy.generate_captions(pixel_values, image_embeds=torch.randn(6, 32))
    with pytest.raises(ValueError, match="num_return_sequences=2"):
        policy.generate_captions(pixel_values, num_return_sequences=2)
    with pytest.raises(ValueError, match="3 images"):
        policy.caption_log_probs(torch.ones(4, 2, dtype=torch.long), torch.ones(4, 2), pixel_values[:3])
    with pytest.raises(ValueError, match="reduction='max'"):
        policy.caption_log_probs(torch.ones(6, 2, dtype=torch.long), torch.ones(6, 2), pixel_values, reduction="max")


def test_encoder_weights_come_from_a_local_open_clip_checkpoint(tmp_path):
    clip_model, _, _ = build_open_clip(model_cfg=TINY_OPEN_CLIP_CFG)
    torch.save({"state_dict": clip_model.state_dict()}, tmp_path / "clip.pt")
    tokenizer = tiny_clipcap_tokenizer()
    config = tiny_clipcap_config(tokenizer, clip_checkpoint_path=str(tmp_path / "clip.pt"))
    policy = ClipCapPolicy.from_pretrained_components(config, tokenizer=tokenizer)
    for name, weight in clip_model.visual.state_dict().items():
        assert torch.equal(policy.visual.state_dict()[name], weight), name
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(policy.encode_images(pixel_values), clip_model.encode_image(pixel_values))
    with pytest.raises(ValueError, match="names no encoder weights"):
        tiny_clipcap_policy().load_encoder_weights()


def test_language_model_and_tokenizer_come_from_a_pretrained_gpt2_folder(tmp_path):
    tokenizer = tiny_clipcap_tokenizer()
    config = tiny_clipcap_config(tokenizer)
    gpt2 = GPT2LMHeadModel(config.text_config)
    gpt2.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    policy = ClipCapPolicy.from_pretrained_components(config, language_model_name_or_path=tmp_path)
    for name, weight in gpt2.state_dict().items():
        assert torch.equal(policy.language_model.state_dict()[name], weight), name
    assert policy.tokenizer.convert_tokens_to_ids(".") == tokenizer.convert_tokens_to_ids(".")
