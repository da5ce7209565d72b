"""LoRA on ClipCap's GPT-2 attention through `peft.get_peft_model` on the whole policy."""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model

from discritune_trl.testing.clipcap import tiny_clipcap_policy


def lora_config() -> LoraConfig:
    # GPT-2's c_attn is a transformers Conv1D, whose weight is stored transposed: fan_in_fan_out=True.
    return LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], lora_dropout=0.0, fan_in_fan_out=True)


def test_lora_trains_only_adapters_and_the_adapter_loads_back(tmp_path):
    pixel_values = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = get_peft_model(tiny_clipcap_policy(seed=4), lora_config())
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in name or ".lora_B." in name for name in trainable)
    assert all("language_model" in name and "c_attn" in name for name in trainable)

    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    captions = model.generate_captions(pixel_values, max_new_tokens=6)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        loss = -model.caption_log_probs(captions.sequences, captions.caption_mask, pixel_values).mean()
        loss.backward()
        optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and changed <= trainable
    trained = model.caption_log_probs(captions.sequences, captions.caption_mask, pixel_values)
    base = tiny_clipcap_policy(seed=4).caption_log_probs(captions.sequences, captions.caption_mask, pixel_values)
    assert (trained > base).all()

    model.save_pretrained(tmp_path)
    assert (tmp_path / "adapter_model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(tiny_clipcap_policy(seed=4), tmp_path)
    reloaded_log_probs = reloaded.caption_log_probs(captions.sequences, captions.caption_mask, pixel_values)
    torch.testing.assert_close(reloaded_log_probs, trained, rtol=0, atol=1e-6)
    assert (
        reloaded.generate_captions(pixel_values, max_new_tokens=6).texts
        == model.generate_captions(pixel_values, max_new_tokens=6).texts
    )
