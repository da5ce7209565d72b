"""`VLMPolicy` over three tiny prompted vision-language families (Idefics3/SmolVLM, Qwen2-VL, LLaVA), built offline."""

import importlib.util
import os
import subprocess
import sys

import pytest
import torch
from PIL import Image

from discritune_trl.models import load_policy
from discritune_trl.models.vlm import VLMPolicy, vlm_lora_config
from discritune_trl.testing.blip import random_images
from discritune_trl.testing.vlm import TINY_VLM_FAMILIES, tiny_vlm


datasets = pytest.importorskip("datasets")
trainer_module = pytest.importorskip("discritune_trl.trainer")
from discritune_trl.testing.retrievers import tiny_open_clip_retriever  # noqa: E402


@pytest.fixture(params=TINY_VLM_FAMILIES)
def family(request):
    return request.param


def build_policy(family, **options):
    return VLMPolicy.from_vlm(*tiny_vlm(family), **options)


def images():
    """Two images of different shapes: Idefics3 splits them into different numbers of tiles, Qwen2-VL into different
    numbers of patches, and their prompts differ in length (left padding)."""
    return [Image.new("RGB", (80, 30), (200, 30, 30)), random_images(1, size=40, seed=1)[0]]


def direct_log_probs(policy, image, caption_ids):
    """Log-probs of `caption_ids [T]` from one unpadded forward of the wrapped model on prompt + caption."""
    prompt = policy.processor(text=[policy._prompt_text], images=[[image]], return_tensors="pt")
    length = prompt["input_ids"].shape[1]
    inputs = dict(prompt)
    inputs["input_ids"] = torch.cat([prompt["input_ids"], caption_ids[None]], dim=1)
    for key in ("attention_mask", "mm_token_type_ids"):
        if key in inputs:
            tail = torch.ones_like(caption_ids) if key == "attention_mask" else torch.zeros_like(caption_ids)
            inputs[key] = torch.cat([prompt[key], tail[None]], dim=1)
    with torch.no_grad():
        logits = policy.vlm(**inputs).logits[0, length - 1 : -1]  # [T, V]
    logits[:, policy.suppressed_token_ids] = float("-inf")  # never generated, so never scored (see set_processor)
    return logits.log_softmax(-1).gather(-1, caption_ids[:, None]).squeeze(-1)


def test_captions_decode_and_log_probs_equal_a_direct_forward_on_prompt_and_caption(family):
    policy = build_policy(family)
    batch = policy.preprocess(images())
    captions = policy.generate_captions(batch, max_new_tokens=6)
    assert captions.sequences.shape[0] == 2 and len(captions.texts) == 2
    special = set(policy.tokenizer.all_special_ids) - set(policy.stop_token_ids)
    for row, mask, text in zip(captions.sequences, captions.caption_mask, captions.texts):
        ids = row[mask.bool()]
        assert not set(ids.tolist()) & special  # no image placeholder or turn token inside a caption
        assert text == policy.tokenizer.decode(ids, skip_special_tokens=True).strip()

    token_log_probs = policy.caption_log_probs(captions.sequences, captions.caption_mask, batch, reduction="none")
    for index, image in enumerate(images()):
        mask = captions.caption_mask[index].bool()
        expected = direct_log_probs(policy, image, captions.sequences[index][mask])
        torch.testing.assert_close(token_log_probs[index][mask], expected, atol=1e-4, rtol=1e-4)
        assert (token_log_probs[index][~mask] == 0).all()


def test_several_captions_per_image_are_scored_against_their_own_image(family):
    policy = build_policy(family)
    batch = policy.preprocess(images())
    torch.manual_seed(0)
    captions = policy.generate_captions(batch, max_new_tokens=5, do_sample=True, num_return_sequences=2)
    assert captions.sequences.shape[0] == 4
    log_probs = policy.caption_log_probs(captions.sequences, captions.caption_mask, batch, reduction="sum")
    for row in range(4):
        single = policy.preprocess([images()[row // 2]])
        alone = policy.caption_log_probs(
            captions.sequences[row : row + 1], captions.caption_mask[row : row + 1], single, reduction="sum"
        )
        torch.testing.assert_close(log_probs[row : row + 1], alone, atol=1e-4, rtol=1e-4)


def test_stop_tokens_follow_the_options(family):
    policy = build_policy(family)
    full_stop = policy.tokenizer.convert_tokens_to_ids(".")
    assert full_stop in policy.stop_token_ids and policy.tokenizer.eos_token_id in policy.stop_token_ids
    assert full_stop not in build_policy(family, stop_at_full_stop=False).stop_token_ids


def train(policy, tmp_path, **trainer_kwargs):
    dataset = datasets.Dataset.from_dict({"image": random_images(4, seed=3)}).cast_column("image", datasets.Image())
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-2,
        max_completion_length=4,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
    )
    settings.update(trainer_kwargs.pop("config_kwargs", {}))
    trainer = trainer_module.DiscriTuneTrainer(
        model=policy,
        reward_model=tiny_open_clip_retriever(),
        args=trainer_module.DiscriTuneConfig(**settings),
        train_dataset=dataset,
        **trainer_kwargs,
    )
    trainer.train()
    return trainer


def test_a_full_fine_tuning_step_trains_the_language_model_not_the_vision_tower_and_reloads(family, tmp_path):
    policy = build_policy(family)
    vision = {id(p) for p in policy.vision_tower.parameters()}
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    train(policy, tmp_path, config_kwargs={"train_decoding": "sample", "num_generations": 2})
    changed = {name for name, p in policy.named_parameters() if not torch.equal(p, before[name])}
    frozen = {name for name, p in policy.named_parameters() if id(p) in vision}
    assert changed and not changed & frozen
    assert all(not p.requires_grad for p in policy.vision_tower.parameters())

    policy.save_pretrained(tmp_path / "policy")
    loaded = load_policy(str(tmp_path / "policy"))
    assert type(loaded) is VLMPolicy and loaded.config.prompt == policy.config.prompt
    batch = policy.preprocess(images())
    assert (
        loaded.generate_captions(batch, max_new_tokens=6).texts
        == policy.generate_captions(batch, max_new_tokens=6).texts
    )


def test_lora_with_kl_trains_only_adapters_and_saves_loads_and_merges(family, tmp_path):
    base = build_policy(family)
    base.save_pretrained(tmp_path / "base")
    policy = load_policy(str(tmp_path / "base"))
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    trainer = train(policy, tmp_path / "run", peft_config=vlm_lora_config(r=4), config_kwargs={"beta": 0.1})
    assert any("kl" in entry for entry in trainer.state.log_history)
    trained = trainer.model
    lora_names = [name for name, _ in trained.named_parameters() if "lora_" in name]
    assert lora_names and all("vision" not in name and "visual" not in name for name in lora_names)
    for name, p in trained.get_base_model().named_parameters():
        if "lora_" not in name:
            assert torch.equal(p, before[name.replace(".base_layer", "")]), name
    assert any(p.abs().sum() > 0 for n, p in trained.named_parameters() if "lora_B" in n)

    trainer.save_model(str(tmp_path / "adapters"))
    loaded = load_policy(str(tmp_path / "adapters"))
    batch = base.preprocess(images())
    expected = trained.generate_captions(batch, max_new_tokens=6).texts
    assert loaded.generate_captions(batch, max_new_tokens=6).texts == expected
    merged = loaded.merge_and_unload()
    assert type(merged) is VLMPolicy and merged.generate_captions(batch, max_new_tokens=6).texts == expected


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_finetune_vlm(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, os.path.join(ROOT, "examples", "finetune_vlm.py"), "--report_to", "none", "--use_cpu"]
    result = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def test_finetune_vlm_runs_with_no_arguments_and_saves_lora_adapters_and_the_merged_policy(tmp_path):
    run_finetune_vlm("--output_dir", str(tmp_path / "out"))
    assert (tmp_path / "out" / "adapter_config.json").is_file()
    merged = load_policy(str(tmp_path / "out" / "merged"))
    assert type(merged) is VLMPolicy and merged.config.vlm_config["model_type"] == "idefics3"


def test_finetune_vlm_trains_and_saves_a_local_model_folder(tmp_path):
    model, processor = tiny_vlm("qwen2_vl")
    model.save_pretrained(tmp_path / "qwen2_vl")
    processor.save_pretrained(tmp_path / "qwen2_vl")
    run_finetune_vlm(
        "--model_name_or_path", str(tmp_path / "qwen2_vl"),
        "--use_lora", "false",
        "--max_steps", "1",
        "--per_device_train_batch_size", "4",
        "--max_new_tokens", "4",
        "--output_dir", str(tmp_path / "out"),
    )  # fmt: skip
    trained = load_policy(str(tmp_path / "out"))
    assert type(trained) is VLMPolicy and trained.config.vlm_config["model_type"] == "qwen2_vl"
    before = VLMPolicy.from_vlm(model, processor).state_dict()
    assert any(not torch.equal(p, before[name]) for name, p in trained.state_dict().items())


def test_smolvlm_recipe_parses_and_flags_override_it():
    spec = importlib.util.spec_from_file_location("finetune_vlm", os.path.join(ROOT, "examples", "finetune_vlm.py"))
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(example)
    recipe = os.path.join(ROOT, "examples", "recipes", "smolvlm_coco.yaml")
    script_args, training_args = example.parse_arguments(["--config", recipe, "--lora_r", "8", "--use_cpu"])
    assert script_args.model_name_or_path == "HuggingFaceTB/SmolVLM-256M-Instruct" and script_args.use_lora
    assert script_args.lora_r == 8 and script_args.retriever_name_or_path == "google/siglip2-base-patch16-224"
    assert training_args.per_device_train_batch_size == 100 and training_args.train_decoding == "greedy"


def test_lora_trains_with_gradient_checkpointing_and_the_policy_runs_in_bf16(tmp_path):
    policy = build_policy("idefics3")
    trainer = train(policy, tmp_path, peft_config=vlm_lora_config(r=4), config_kwargs={"gradient_checkpointing": True})
    assert any(getattr(module, "gradient_checkpointing", False) for module in policy.modules())
    assert any(p.abs().sum() > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)

    bf16 = build_policy("idefics3").to(torch.bfloat16)
    batch = bf16.preprocess(images())
    captions = bf16.generate_captions(batch, max_new_tokens=4)
    log_probs = bf16.caption_log_probs(captions.sequences, captions.caption_mask, batch)
    assert log_probs.dtype == torch.float32 and torch.isfinite(log_probs).all()
