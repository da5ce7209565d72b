"""The main job end to end on a tiny world: the report files exist and results.json is well-formed."""

import json
import os

from discritune_trl import ClipCapPolicy, DiscriTuneConfig
from discritune_trl.testing.world import tiny_world_config
from discritune_trl.world import WORLD_TRAINING_DEFAULTS, run_world_job
from discritune_trl.world.job import apply_world_defaults


def test_world_defaults_never_override_what_the_user_set(tmp_path):
    args = DiscriTuneConfig(output_dir=str(tmp_path), learning_rate=3e-4)
    apply_world_defaults(args, given_flags={"learning_rate"})
    assert args.learning_rate == 3e-4
    assert args.max_steps == WORLD_TRAINING_DEFAULTS["max_steps"]


def test_the_main_job_selects_its_checkpoint_on_validation_and_clips_nothing(tmp_path):
    args = DiscriTuneConfig(output_dir=str(tmp_path))
    assert args.max_grad_norm == 0.0  # the paper clips nothing (benchmarks/world_ablations.md: clipping did not help)
    apply_world_defaults(args)
    assert (args.eval_strategy, args.eval_steps, args.eval_on_start) == ("steps", 50, True)
    assert (args.save_strategy, args.save_steps) == ("steps", 50)
    assert args.load_best_model_at_end and args.metric_for_best_model == "p_at_1" and args.greater_is_better


def test_tiny_world_job_writes_a_well_formed_report(tmp_path):
    output_dir = tmp_path / "out"
    args = DiscriTuneConfig(
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
    given = {"max_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "learning_rate"}
    given |= {"eval_strategy", "eval_steps", "eval_on_start", "save_strategy", "save_steps", "load_best_model_at_end"}
    cache = str(tmp_path / "cache")
    run_world_job(args, given, cache_dir=cache, world_config=tiny_world_config(), validation_images=12)

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
