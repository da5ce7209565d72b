"""The example scripts run end to end offline, on data and checkpoints written here."""

import json
import os
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl import ClipCapPolicy, DiscriminativeRewardModel
from discritune_trl.scripts import train as train_script
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_config, tiny_open_clip_retriever


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_example(script: str, *args: str, timeout: int = 300, **env_overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    env.update(env_overrides)
    command = [sys.executable, os.path.join(ROOT, "examples", script), *args]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def local_model_flags(folder) -> list[str]:
    """Write a tiny ClipCap (saved folder) and a tiny open_clip retriever (checkpoint + architecture JSON) into
    `folder`, as a user would have them on disk, and return the flags that point the example at them."""
    tiny_clipcap_policy(seed=0).save_pretrained(str(folder / "clipcap"))
    retriever = tiny_open_clip_retriever(seed=0)
    torch.save(retriever.model.state_dict(), folder / "retriever.pt")
    (folder / "retriever.json").write_text(json.dumps(tiny_open_clip_config()))
    return [
        "--model_name_or_path", str(folder / "clipcap"),
        "--retriever_model_cfg", str(folder / "retriever.json"),
        "--retriever_checkpoint", str(folder / "retriever.pt"),
    ]  # fmt: skip


def test_custom_retriever_example_prints_rewards():
    result = run_example("custom_retriever.py")
    assert "reward" in result.stdout.lower()


def test_finetune_clipcap_on_a_saved_dataset_and_local_checkpoints(tmp_path):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]
    data = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict({"image": images[:8]}),
            "test": datasets.Dataset.from_dict({"image": images[8:]}),
        }
    ).cast_column("image", datasets.Image())
    data.save_to_disk(str(tmp_path / "data"))
    shifted = [Image.fromarray(rng.integers(0, 64, (32, 32, 3), dtype=np.uint8)) for _ in range(5)]
    datasets.Dataset.from_dict({"image": shifted}).cast_column("image", datasets.Image()).save_to_disk(
        str(tmp_path / "shifted")
    )

    output_dir = tmp_path / "out"
    result = run_example(
        "finetune_clipcap.py",
        "--dataset_name", str(tmp_path / "data"),
        "--cross_domain_eval", f"shifted={tmp_path / 'shifted'}:train",
        *local_model_flags(tmp_path),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--per_device_eval_batch_size", "4",
        "--max_steps", "2",
        "--learning_rate", "1e-3",
        "--max_completion_length", "6",
        "--eval_num_beams", "2",
        "--report_to", "none",
        "--save_strategy", "no",
        "--use_cpu",
    )  # fmt: skip
    metrics = json.loads((output_dir / "metrics.json").read_text())
    assert 0 <= metrics["before"]["eval_test_p_at_1"] <= 100 and 0 <= metrics["after"]["eval_test_p_at_1"] <= 100
    assert metrics["before"]["eval_test_num_candidates"] == 4  # the test split of --dataset_name
    assert metrics["after"]["eval_shifted_num_candidates"] == 5  # the cross-domain set
    assert str(output_dir) in result.stdout
    policy = ClipCapPolicy.from_pretrained(str(output_dir))
    assert policy.generate_captions(pixel_values=policy.preprocess(images[:2]), max_new_tokens=6).texts
    assert "DiscriTune" in (output_dir / "README.md").read_text()


def test_num_hard_negatives_on_the_clipcap_example_command_line(tmp_path, monkeypatch, load_example):
    rng = np.random.default_rng(3)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(12)]
    images = datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())
    datasets.DatasetDict({"train": images.select(range(8)), "test": images.select(range(8, 12))}).save_to_disk(
        str(tmp_path / "data")
    )
    widths = []
    forward = DiscriminativeRewardModel.forward

    def recording_forward(self, *args, **kwargs):  # the width of logits: in-batch images + mined negatives
        output = forward(self, *args, **kwargs)
        widths.append(output.logits.shape[1])
        return output

    monkeypatch.setattr(DiscriminativeRewardModel, "forward", recording_forward)
    module = load_example("finetune_clipcap.py")
    module.main(
        *module.parse_arguments(
            [
                "--dataset_name", str(tmp_path / "data"),
                "--dataset_test_split", "",
                *local_model_flags(tmp_path),
                "--output_dir", str(tmp_path / "out"),
                "--num_hard_negatives", "5",
                "--per_device_train_batch_size", "4",
                "--max_steps", "1",
                "--max_completion_length", "4",
                "--report_to", "none",
                "--save_strategy", "no",
                "--use_cpu",
            ]
        )
    )  # fmt: skip
    assert widths == [4 + 5]  # the flag reached the reward model: 5 mined candidates per caption
    card = (tmp_path / "out" / "README.md").read_text()
    assert '"num_hard_negatives": 5' in card and '"hard_negative_bank_size": 8' in card
    assert "OpenCLIPRetriever" in card


def test_evaluation_sets_of_the_clipcap_example(tmp_path):
    module = train_script
    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(3)]
    datasets.Dataset.from_dict({"image": images}).save_to_disk(str(tmp_path / "one"))
    single = module.load_eval_datasets(
        module.ScriptArguments(dataset_name=str(tmp_path / "one"), dataset_test_split="x")
    )
    assert isinstance(single, datasets.Dataset) and len(single) == 3  # a saved Dataset has no splits to pick from
    for entry in ("no-equals-sign", "=path", "x=", "x=a", "x=b"):
        with pytest.raises(ValueError, match="expected NAME=PATH or NAME=PATH:SPLIT"):
            module.load_eval_datasets(
                module.ScriptArguments(dataset_name=None, dataset_test_split="x", cross_domain_eval=[entry])
            )


def test_finetune_clipcap_streams_its_train_split(tmp_path):
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(10)]
    datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image()).save_to_disk(
        str(tmp_path / "data")
    )
    output_dir = tmp_path / "out"
    run_example(
        "finetune_clipcap.py",
        "--dataset_name", str(tmp_path / "data"),
        "--dataset_test_split", "",
        "--dataset_streaming",
        "--max_train_samples", "8",
        *local_model_flags(tmp_path),
        "--output_dir", str(output_dir),
        "--per_device_train_batch_size", "4",
        "--max_steps", "3",
        "--learning_rate", "1e-3",
        "--max_completion_length", "6",
        "--logging_steps", "1",
        "--log_completions",
        "--report_to", "none",
        "--save_strategy", "no",
        "--use_cpu",
    )  # fmt: skip
    (path,) = (output_dir / "completions").glob("*.jsonl")  # one file for the run
    samples = [json.loads(line) for line in path.read_text().splitlines()]
    assert {sample["step"] for sample in samples} == {1, 2, 3}
    assert {sample["image_index"] for sample in samples} <= set(range(8))  # --max_train_samples 8 of the stream
    assert (output_dir / "model.safetensors").is_file()


def test_finetune_blip_runs_with_no_arguments_without_a_world(tmp_path):
    output_dir = tmp_path / "blip"
    result = run_example(
        "finetune_blip.py",
        "--output_dir", str(output_dir),
        "--report_to", "none",
        "--use_cpu",
        DISCRITUNE_WORLD_CACHE=str(tmp_path / "no-world-here"),
    )  # fmt: skip
    assert "Using the embedded world" not in result.stdout
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "README.md").is_file()


RECIPES = os.path.join(ROOT, "examples", "recipes")


def test_clipcap_recipe_sets_the_papers_setting_and_flags_override_it(load_example):
    script_args, training_args, model_args, retriever_args, _ = load_example("finetune_clipcap.py").parse_arguments(
        ["--config", os.path.join(RECIPES, "clipcap_coco.yaml"), "--learning_rate", "3e-7", "--use_cpu"]
    )
    assert training_args.learning_rate == 3e-7  # the command line wins over the YAML
    assert training_args.per_device_train_batch_size == 100 and training_args.num_train_epochs == 20
    assert (training_args.baseline, training_args.reward_type, training_args.train_decoding) == (
        "mean",
        "log_prob",
        "greedy",
    )
    assert training_args.output_dir == "discritune-clipcap-coco"
    assert script_args.dataset_name == "./coco_karpathy" and model_args.model_name_or_path == "./coco_weights.pt"
    assert (retriever_args.retriever_model_name, retriever_args.retriever_pretrained) == ("ViT-B-32", "openai")
    assert training_args.max_steps == -1  # the world's defaults stay out of a run on a named dataset


def test_world_recipe_keeps_its_fields_over_the_world_defaults(load_example):
    from discritune_trl.world.job import WORLD_TRAINING_DEFAULTS

    script_args, training_args, *_ = load_example("finetune_clipcap.py").parse_arguments(
        ["--config", os.path.join(RECIPES, "world_greedy_baseline.yaml"), "--use_cpu"]
    )
    assert script_args.dataset_name is None  # the embedded world
    assert (training_args.baseline, training_args.train_decoding, training_args.num_beams) == ("greedy", "beam", 5)
    assert training_args.output_dir == "outputs/discritune-world-greedy-baseline"
    assert training_args.learning_rate == WORLD_TRAINING_DEFAULTS["learning_rate"]  # not in the recipe


@pytest.mark.parametrize(
    "recipe, script",
    [
        ("clipcap_conceptual_captions.yaml", "finetune_clipcap.py"),
        ("clipcap_cc3m_webdataset.yaml", "finetune_clipcap.py"),
        ("blip_coco.yaml", "finetune_blip.py"),
    ],
)
def test_every_recipe_parses_into_a_valid_config(recipe, script, load_example):
    parsed = load_example(script).parse_arguments(["--config", os.path.join(RECIPES, recipe), "--use_cpu"])
    training_args = parsed[1]
    assert training_args.learning_rate == 1e-7 and training_args.per_device_train_batch_size == 100
    assert sorted(os.listdir(RECIPES)) == sorted(
        [
            "clipcap_coco.yaml",
            "clipcap_conceptual_captions.yaml",
            "clipcap_cc3m_webdataset.yaml",
            "blip_coco.yaml",
            "world_greedy_baseline.yaml",
            "smolvlm_coco.yaml",  # LoRA's learning rate, not the paper's: tested in tests/test_vlm.py
        ]
    )  # a new recipe gets a row in this test (or its own test)


def test_a_recipe_with_an_unknown_field_is_refused(tmp_path, load_example):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("learning_rat: 1.0e-7\n")
    with pytest.raises(ValueError, match="learning_rat"):
        load_example("finetune_clipcap.py").parse_arguments(["--config", str(recipe)])


def test_custom_captioner_example_trains_evaluates_greedily_saves_and_loads_back(tmp_path):
    result = run_example("custom_captioner.py", "--output_dir", str(tmp_path / "out"), "--max_steps", "2")
    assert "eval_p_at_1" in result.stdout and "captions after loading back" in result.stdout
    assert "supports_beam_search=False: captioning with greedy decoding" in result.stdout + result.stderr
    assert (tmp_path / "out" / "config.json").exists()
