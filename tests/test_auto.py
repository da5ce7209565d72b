"""`load_policy` and transformers' `AutoModel`: a saved policy by its `model_type`; LoRA adapters onto their base."""

import json

import datasets
import numpy as np
import pytest
import torch
from peft import LoraConfig, PeftModel
from PIL import Image
from transformers import AutoConfig, AutoModel

from discritune_trl import ClipCapPolicy, DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.models import HFCaptionerPolicy
from discritune_trl.models.auto import load_policy
from discritune_trl.models.blip import BlipPolicy
from discritune_trl.testing.blip import tiny_blip, tiny_vit_gpt2
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever


def images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


@pytest.mark.parametrize(
    "build", [lambda: tiny_clipcap_policy(seed=1), lambda: BlipPolicy.from_blip(*tiny_blip())], ids=["clipcap", "blip"]
)
def test_a_saved_policy_loads_back_as_its_own_class(build, tmp_path):
    policy = build()
    policy.save_pretrained(tmp_path)
    loaded = load_policy(str(tmp_path))
    assert type(loaded) is type(policy)
    for name, weight in policy.state_dict().items():
        assert torch.equal(weight, loaded.state_dict()[name]), name


def test_lora_adapters_saved_by_the_trainer_load_onto_their_base(tmp_path):
    tiny_clipcap_policy(seed=0).save_pretrained(tmp_path / "base")
    trainer = DiscriTuneTrainer(
        model=ClipCapPolicy.from_pretrained(str(tmp_path / "base")),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=DiscriTuneConfig(
            output_dir=str(tmp_path / "lora"),
            per_device_train_batch_size=4,
            max_steps=2,
            learning_rate=1e-2,
            max_completion_length=6,
            save_strategy="no",
            report_to="none",
            use_cpu=True,
        ),
        train_dataset=datasets.Dataset.from_dict({"image": images(8)}).cast_column("image", datasets.Image()),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"], fan_in_fan_out=True),
    )
    trainer.train()
    trainer.save_model()
    assert not (tmp_path / "lora" / "config.json").exists()  # adapters only

    loaded = load_policy(str(tmp_path / "lora"))
    assert isinstance(loaded, PeftModel) and isinstance(loaded.get_base_model(), ClipCapPolicy)
    pixels = loaded.preprocess(images(3, seed=1))
    trained = trainer.model
    captions = trained.generate_captions(pixel_values=pixels, max_new_tokens=6)
    torch.testing.assert_close(
        loaded.caption_log_probs(captions.sequences, captions.caption_mask, pixels),
        trained.caption_log_probs(captions.sequences, captions.caption_mask, pixels),
        rtol=0,
        atol=1e-6,
    )
    card = (tmp_path / "lora" / "README.md").read_text()
    assert "(ClipCapPolicy) with LoRA adapters" in card and f'load_policy("{tmp_path / "lora"}")' in card
    assert "pipeline_tag" not in card and "pipeline(" not in card  # an adapter folder is not a pipeline model


def test_folders_load_policy_cannot_read_say_what_to_do(tmp_path):
    with pytest.raises(ValueError, match="neither config.json nor adapter_config.json"):
        load_policy(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": None}))
    with pytest.raises(ValueError, match=r"without their base policy's path: .*PeftModel.from_pretrained"):
        load_policy(str(tmp_path))


def tiny_vit_gpt2_policy() -> HFCaptionerPolicy:
    model, image_processor, tokenizer = tiny_vit_gpt2()
    return HFCaptionerPolicy.from_captioner(model, image_processor=image_processor, tokenizer=tokenizer)


@pytest.mark.parametrize(
    "build",
    [
        lambda: tiny_clipcap_policy(seed=1),
        tiny_vit_gpt2_policy,
    ],
    ids=["clipcap", "hf_captioner"],
)
def test_transformers_auto_model_loads_a_saved_policy_as_its_own_class(build, tmp_path):
    policy = build()
    policy.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is policy.config_class
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(policy)
    for name, weight in policy.state_dict().items():
        assert torch.equal(weight, loaded.state_dict()[name]), name
    pixels = policy.preprocess(images(3, seed=2))
    for num_beams in (1, 3):  # the tokenizer came along: the same captions, greedy and beam
        assert (
            loaded.generate_captions(pixel_values=pixels, num_beams=num_beams, max_new_tokens=6).texts
            == policy.generate_captions(pixel_values=pixels, num_beams=num_beams, max_new_tokens=6).texts
        )


def test_auto_model_keeps_transformers_own_blip():
    """`BlipPolicy` keeps BLIP's model_type: transformers' AutoModel for "blip" stays transformers' BlipModel."""
    from transformers import BlipConfig, BlipModel

    assert AutoModel._model_mapping[BlipConfig] is BlipModel
