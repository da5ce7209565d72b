"""A few DiscriTune steps through the unchanged `DiscriTuneTrainer`, with BlipPolicy and HFCaptionerPolicy.

Skipped where `DiscriTuneTrainer` is not importable (a branch cut before the trainer landed).
"""

import pytest
import torch

from discritune_trl.models.blip import BlipPolicy
from discritune_trl.models.hf_captioner import HFCaptionerPolicy
from discritune_trl.testing.blip import random_images, tiny_blip, tiny_git, tiny_vit_gpt2


trainer_module = pytest.importorskip("discritune_trl.trainer")
if not hasattr(trainer_module, "DiscriTuneTrainer"):
    pytest.skip("DiscriTuneTrainer is not in this checkout", allow_module_level=True)
datasets = pytest.importorskip("datasets")
from discritune_trl.testing.retrievers import tiny_open_clip_retriever  # noqa: E402


def blip_policy():
    return BlipPolicy.from_blip(*tiny_blip())


def vit_gpt2_policy():
    model, image_processor, tokenizer = tiny_vit_gpt2()
    return HFCaptionerPolicy.from_captioner(model, image_processor=image_processor, tokenizer=tokenizer)


def git_policy():
    return HFCaptionerPolicy.from_captioner(*tiny_git())


def run_steps(policy, tmp_path, **trainer_kwargs):
    dataset = datasets.Dataset.from_dict({"image": random_images(8, seed=3)}).cast_column("image", datasets.Image())
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        max_completion_length=6,
        train_decoding="sample",
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    settings.update(trainer_kwargs.pop("config_kwargs", {}))
    resume_from_checkpoint = trainer_kwargs.pop("resume_from_checkpoint", None)
    trainer = trainer_module.DiscriTuneTrainer(
        model=policy,
        reward_model=tiny_open_clip_retriever(),
        args=trainer_module.DiscriTuneConfig(**settings),
        train_dataset=dataset,
        **trainer_kwargs,
    )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


@pytest.mark.parametrize("build", [blip_policy, vit_gpt2_policy, git_policy], ids=["blip", "vit-gpt2", "git"])
def test_a_few_discritune_steps_train_the_decoder_only(build, tmp_path):
    policy = build()
    vision_encoder = policy.family.vision_encoder(policy.captioner_model)
    vision_ids = {id(p) for p in vision_encoder.parameters()}
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    trainer = run_steps(policy, tmp_path)

    logged = [entry for entry in trainer.state.log_history if "reward" in entry]
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(entry["reward"])) for entry in logged)
    changed = {name for name, p in policy.named_parameters() if not torch.equal(p, before[name])}
    vision_names = {name for name, p in policy.named_parameters() if id(p) in vision_ids}
    assert changed and not changed & vision_names

    trainer.save_model(str(tmp_path / "final"))
    loaded = type(policy).from_pretrained(tmp_path / "final")
    assert all(torch.equal(p, loaded.state_dict()[name]) for name, p in policy.state_dict().items())


def test_lora_with_kl_to_the_adapter_free_policy_trains_only_adapters(tmp_path):
    from peft import LoraConfig

    policy = blip_policy()
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    peft_config = LoraConfig(r=4, lora_alpha=8, target_modules=BlipPolicy.lora_target_modules)
    trainer = run_steps(policy, tmp_path, peft_config=peft_config, config_kwargs={"beta": 0.1})
    assert any("kl" in entry for entry in trainer.state.log_history)
    base = trainer.model.get_base_model()
    for name, p in base.named_parameters():
        if "lora_" not in name:  # the BLIP weights themselves (names unchanged by the LoRA wrapping)
            key = name.replace(".base_layer", "")
            assert torch.equal(p, before[key]), name
    assert any(not torch.equal(p, torch.zeros_like(p)) for n, p in base.named_parameters() if "lora_B" in n)


def test_blip_resumes_from_a_checkpoint_with_its_tied_decoder_head(tmp_path, caplog):
    first = run_steps(blip_policy(), tmp_path, config_kwargs={"save_strategy": "steps", "save_steps": 1})
    resumed = run_steps(blip_policy(), tmp_path, resume_from_checkpoint=str(tmp_path / "checkpoint-1"))
    assert "missing keys" not in caplog.text  # the decoder head tied to the word embeddings is re-tied
    head = resumed.model.text_decoder.cls.predictions.decoder
    assert head.weight is resumed.model.text_decoder.bert.embeddings.word_embeddings.weight
    assert resumed.state.global_step == first.state.global_step == 2


@pytest.mark.parametrize("build", [blip_policy, vit_gpt2_policy, git_policy], ids=["blip", "vit-gpt2", "git"])
def test_gradient_checkpointing_trains(build, tmp_path):
    policy = build()
    before = {name: p.detach().clone() for name, p in policy.named_parameters() if p.requires_grad}
    run_steps(policy, tmp_path, config_kwargs={"gradient_checkpointing": True})
    assert any(getattr(module, "gradient_checkpointing", False) for module in policy.modules())
    assert any(not torch.equal(p, before[name]) for name, p in policy.named_parameters() if p.requires_grad)
