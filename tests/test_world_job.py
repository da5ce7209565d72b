"""The main job end to end on a tiny world: the report files exist and results.json is well-formed; every flag of
the command line is honoured on the world path, or refused by name."""

import json
import os

import pytest

from discritune_trl import ClipCapPolicy, DiscriTuneConfig
from discritune_trl.testing.world import tiny_world_config
from discritune_trl.world import WORLD_TRAINING_DEFAULTS, run_world_job, world_training_config


def test_world_training_config_takes_the_world_defaults_and_every_given_field_wins(tmp_path):
    args = world_training_config(output_dir=str(tmp_path), learning_rate=3e-4)
    assert args.learning_rate == 3e-4
    assert args.max_steps == WORLD_TRAINING_DEFAULTS["max_steps"]


def test_the_main_job_selects_its_checkpoint_on_validation_and_clips_nothing(tmp_path):
    assert DiscriTuneConfig(output_dir=str(tmp_path)).max_grad_norm == 0.0  # the paper clips nothing
    args = world_training_config(output_dir=str(tmp_path))
    assert (args.eval_strategy, args.eval_steps, args.eval_on_start) == ("steps", 50, True)
    assert (args.save_strategy, args.save_steps) == ("steps", 50)
    assert args.load_best_model_at_end and args.metric_for_best_model == "p_at_1" and args.greater_is_better


def test_tiny_world_job_writes_a_well_formed_report(tmp_path):
    output_dir = tmp_path / "out"
    args = world_training_config(
        output_dir=str(output_dir),
        use_cpu=True,
        disable_tqdm=True,
        max_steps=4,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=12,
        learning_rate=1e-3,
        eval_strategy="steps",
        eval_steps=2,
        eval_on_start=True,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
    )
    cache = str(tmp_path / "cache")
    run_world_job(args, cache_dir=cache, world_config=tiny_world_config(), validation_images=12)

    results = json.loads((output_dir / "results.json").read_text())
    for split in ("in_domain", "shifted"):
        block = results[split]
        assert set(block["p_at_1"]) == {"before", "after", "human", "descriptive"}
        assert all(0 <= value <= 100 for value in block["p_at_1"].values())
        assert block["num_candidates"] == 12  # fewer test images than 100: all of them
        assert set(block["color_word_rate"]) == {"before", "after", "human"}
        assert set(block["bleu_4"]) == set(block["cider"]) == {"before", "after"}
        assert set(block["greedy_p_at_1"]) == {"before", "after"}  # both decodings, side by side
        assert all(0 <= value <= 100 for value in block["greedy_p_at_1"].values())
    assert results["runtime_seconds"] > 0
    assert results["training"]["max_steps"] == 4 and results["training"]["validation_images"] == 12
    # The checkpoint is selected on the held-out training images: evaluated at the start and every 2 steps.
    selection = results["selection"]
    assert set(selection["validation"]) == {"0", "2", "4"} and selection["metric"] == "eval_p_at_1"
    validation = {int(step): value for step, value in selection["validation"].items()}
    best_checkpoint = max((2, 4), key=lambda step: validation[step])
    expected = 0 if validation[0] >= validation[best_checkpoint] else best_checkpoint
    assert selection["kept_step"] == expected
    assert isinstance(results["collapse_alarms"], list)
    markdown = (output_dir / "results.md").read_text()
    assert "DiscriTune-World (after)" in markdown and "Shifted-domain test" in markdown
    assert "ClipCap-World (MLE, before), greedy" in markdown and "Checkpoint kept: step" in markdown
    for name in ("training_curves.png", "captions_before_after.png", "README.md", "model.safetensors"):
        assert os.path.getsize(output_dir / name) > 0, name
    assert '"in_domain_p_at_1"' in (output_dir / "README.md").read_text()  # the model card reports the results
    ClipCapPolicy.from_pretrained(str(output_dir))


def test_the_command_line_honours_dash_flags_and_lora_on_the_world(tmp_path, load_example):
    """The bug: dash spellings (`--max-steps`) were overwritten by the world's values, `--use_peft` dropped."""
    module = load_example("finetune_clipcap.py")
    output_dir = tmp_path / "out"
    parsed = module.parse_arguments(
        [
            "--max-steps", "2",
            "--learning-rate", "1e-3",
            "--per-device-train-batch-size", "8",
            "--per_device_eval_batch_size", "12",
            "--eval-strategy", "no", "--eval_on_start", "false", "--save_strategy", "no",
            "--load_best_model_at_end", "false",
            "--output-dir", str(output_dir),
            "--world_cache_dir", str(tmp_path / "cache"),
            "--use_peft", "--lora_r", "2",
            "--use_cpu", "--disable_tqdm", "true",
        ]
    )  # fmt: skip
    training_args = parsed[1]
    assert (training_args.max_steps, training_args.learning_rate) == (2, 1e-3)
    assert training_args.logging_steps == WORLD_TRAINING_DEFAULTS["logging_steps"]  # not given: the world's
    module.main(*parsed, world_config=tiny_world_config())

    results = json.loads((output_dir / "results.json").read_text())
    assert results["training"]["max_steps"] == 2 and results["training"]["learning_rate"] == 1e-3
    assert results["training"]["eval_strategy"] == "no" and results["training"]["validation_images"] == 0
    assert json.loads((output_dir / "adapter_config.json").read_text())["r"] == 2  # --use_peft reached the world


def test_the_world_defaults_show_in_help_and_a_named_dataset_keeps_the_papers(load_example, capsys):
    module = load_example("finetune_clipcap.py")
    with pytest.raises(SystemExit):
        module.parse_arguments(["--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "Without --dataset_name" in help_text and "the embedded synthetic world runs" in help_text
    assert "(default: 2e-05)" in help_text  # the learning rate this path uses
    _, training_args, *_ = module.parse_arguments(["--dataset_name", "./data", "--use_cpu"])
    assert training_args.max_steps == -1 and training_args.learning_rate == 1e-7


@pytest.mark.parametrize(
    "argv, name",
    [
        (["--model_name_or_path", "./weights.pt"], "model_name_or_path"),
        (["--retriever-pretrained", "laion2b"], "retriever_pretrained"),
        (["--max_train_samples", "8"], "max_train_samples"),
    ],
)
def test_a_flag_that_cannot_apply_to_the_world_is_refused_by_name(argv, name, load_example):
    with pytest.raises(ValueError, match=f"--{name}=.*does not apply to the embedded world"):
        load_example("finetune_clipcap.py").parse_arguments(argv)
