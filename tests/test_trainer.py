"""DiscriTuneTrainer on tiny models: the loss, the baselines, what trains, resume, bad input, evaluation."""

import io
import json
import os

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl import ClipCapPolicy, DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever
from discritune_trl.trainer import RunningMeanBaseline
from discritune_trl.trainer.baselines import leave_one_out_baseline
from discritune_trl.trainer.completions import completions_path


def random_images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


def image_dataset(count: int, seed: int = 0) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": random_images(count, seed)}).cast_column("image", datasets.Image())


def make_config(tmp_path, **overrides) -> DiscriTuneConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        per_device_eval_batch_size=8,
        max_steps=2,
        learning_rate=1e-2,
        max_completion_length=6,
        eval_num_beams=2,
        logging_steps=1,
        save_strategy="no",
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        seed=0,
    )
    settings.update(overrides)
    return DiscriTuneConfig(**settings)


def make_trainer(tmp_path, dataset=None, reward_model=None, **overrides) -> DiscriTuneTrainer:
    return DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=reward_model or DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=make_config(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else image_dataset(8),
    )


def first_batch(trainer: DiscriTuneTrainer) -> dict:
    rows = [trainer.train_dataset[i] for i in range(trainer.args.per_device_train_batch_size)]
    return trainer._prepare_inputs(trainer.data_collator(rows))


def test_loss_equals_hand_computation_with_running_mean(tmp_path):
    trainer = make_trainer(tmp_path, cache_embeddings=False)  # pixels; tests/test_embedding_cache.py: cached path
    policy, reward_model = trainer.model, trainer.reward_model
    batch = first_batch(trainer)
    expected_baseline, seen = 0.0, []
    for _ in range(2):  # the second step subtracts the first step's mean reward
        captions = policy.generate_captions(pixel_values=batch["policy_pixel_values"], max_new_tokens=6)
        rewards = reward_model(captions.texts, pixel_values=batch["retriever_pixel_values"]).rewards
        log_probs = policy.caption_log_probs(
            captions.sequences, captions.caption_mask, batch["policy_pixel_values"], reduction="mean"
        )
        expected = -((rewards - expected_baseline) * log_probs).mean()
        loss = trainer.compute_loss(trainer.model, batch)
        torch.testing.assert_close(loss, expected)
        seen.append(rewards.mean().item())
        assert trainer.running_mean.mean == pytest.approx(sum(seen) / len(seen), rel=1e-6)
        expected_baseline = trainer.running_mean.mean


def test_sum_reduction_and_kl_term(tmp_path):
    trainer = make_trainer(tmp_path, log_prob_reduction="sum", beta=0.5, baseline="none", cache_embeddings=False)
    batch = first_batch(trainer)
    policy = trainer.model
    # Perturb the policy so it differs from the frozen reference and the KL is positive.
    with torch.no_grad():
        policy.mapper.layers[0].weight.add_(0.5)
    captions = policy.generate_captions(pixel_values=batch["policy_pixel_values"], max_new_tokens=6)
    rewards = trainer.reward_model(captions.texts, pixel_values=batch["retriever_pixel_values"]).rewards
    tokens = policy.caption_log_probs(
        captions.sequences, captions.caption_mask, batch["policy_pixel_values"], reduction="none"
    )
    ref_tokens = trainer.ref_model.caption_log_probs(
        captions.sequences, captions.caption_mask, batch["policy_pixel_values"], reduction="none"
    )
    mask = captions.caption_mask.float()
    delta = (ref_tokens - tokens) * mask
    kl = ((delta.exp() - delta - 1) * mask).sum() / mask.sum()
    expected = -(rewards * tokens.sum(dim=1)).mean() + 0.5 * kl
    assert kl > 0
    torch.testing.assert_close(trainer.compute_loss(policy, batch), expected)


def test_running_mean_baseline_is_documented_running_mean():
    baseline = RunningMeanBaseline()
    seen = []
    for value in [1.0, 2.0, 6.0]:
        seen.append(value)
        baseline.update(value)
        assert baseline.mean == pytest.approx(sum(seen) / len(seen))
    restored = RunningMeanBaseline()
    restored.load_state_dict(baseline.state_dict())
    assert (restored.mean, restored.count) == (baseline.mean, baseline.count)


def test_leave_one_out_baseline_by_hand():
    rewards = torch.tensor([1.0, 3.0, 5.0, 0.0, 2.0, 4.0])  # two images x three captions
    expected = torch.tensor([4.0, 3.0, 2.0, 3.0, 2.0, 1.0])
    torch.testing.assert_close(leave_one_out_baseline(rewards, 3), expected)


def test_training_updates_mapper_and_gpt2_but_never_encoders(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=3)
    policy = trainer.model
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    retriever_before = {name: p.detach().clone() for name, p in trainer.reward_model.named_parameters()}
    trainer.train()
    changed = {name for name, p in policy.named_parameters() if not torch.equal(p, before[name])}
    assert any(name.startswith("mapper.") for name in changed)
    assert any(name.startswith("language_model.") for name in changed)
    assert not any(name.startswith("visual.") for name in changed)
    for name, parameter in trainer.reward_model.named_parameters():
        assert torch.equal(parameter, retriever_before[name]), name
    assert not any(retriever.training for retriever in trainer.reward_model.retrievers)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(baseline="mean"),
        dict(baseline="none"),
        dict(baseline="greedy", train_decoding="sample"),
        dict(baseline="greedy", train_decoding="beam", num_beams=2),
        dict(baseline="loo", train_decoding="sample", num_generations=2, top_k=10),
        dict(reward_type="accuracy"),
        dict(scale_rewards="batch"),
        dict(scale_rewards="group", train_decoding="sample", num_generations=2),
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_every_baseline_and_decoding_trains(tmp_path, overrides):
    reward_type = overrides.pop("reward_type", "log_prob")
    reward_model = DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0), reward_type=reward_type)
    trainer = make_trainer(tmp_path, reward_model=reward_model, **overrides)
    weights = trainer.model.language_model.lm_head.weight.detach().clone()
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for key in (
        "reward",
        "reward_std",
        "retrieval/accuracy",
        "baseline",
        "advantage/mean",
        "advantage/std",
        "completions/mean_length",
        "completions/min_length",
        "completions/max_length",
        "completions/clipped_ratio",
    ):
        assert np.isfinite(logs[-1][key]), key
    if overrides.get("baseline") == "none":
        assert logs[-1]["baseline"] == 0
    assert not torch.equal(weights, trainer.model.language_model.lm_head.weight)


def test_resume_gives_the_same_weights_and_baseline(tmp_path, caplog):
    dataset = image_dataset(16)
    full = make_trainer(tmp_path / "full", dataset=dataset, max_steps=4)
    full.train()

    first = make_trainer(tmp_path / "half", dataset=dataset, max_steps=4, save_strategy="steps", save_steps=2)
    first.train()
    checkpoint = os.path.join(first.args.output_dir, "checkpoint-2")
    with open(os.path.join(checkpoint, "trainer_state.json")) as handle:  # the baseline is saved with the step
        saved = json.load(handle)["stateful_callbacks"]["RunningMeanBaseline"]["attributes"]
    assert saved["count"] == 2
    resumed = make_trainer(tmp_path / "half", dataset=dataset, max_steps=4, save_strategy="steps", save_steps=2)
    resumed.train(resume_from_checkpoint=checkpoint)
    assert "missing keys" not in caplog.text  # GPT-2's tied lm_head is re-tied, not reported missing

    assert resumed.running_mean.state_dict() == full.running_mean.state_dict()  # bitwise
    for (name, p_full), (_, p_resumed) in zip(full.model.named_parameters(), resumed.model.named_parameters()):
        assert torch.equal(p_resumed, p_full), name


def test_load_best_model_at_end_selects_on_retrieval_p_at_1(tmp_path, caplog):
    config = make_config(
        tmp_path,
        max_steps=4,
        eval_strategy="steps",
        eval_steps=2,
        save_strategy="steps",
        save_steps=2,
        load_best_model_at_end=True,
    )
    assert (config.metric_for_best_model, config.greater_is_better) == ("p_at_1", True)
    trainer = DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=config,
        train_dataset=image_dataset(8),
        eval_dataset=image_dataset(12, seed=3),
    )
    trainer.train()
    evaluations = [entry["eval_p_at_1"] for entry in trainer.state.log_history if "eval_p_at_1" in entry]
    assert len(evaluations) == 2 and trainer.state.best_metric == max(evaluations)
    assert trainer.state.best_model_checkpoint.endswith(f"checkpoint-{2 + 2 * evaluations.index(max(evaluations))}")
    assert "missing keys" not in caplog.text


def test_several_evaluation_sets_are_reported_by_name_and_can_pick_the_best_model(tmp_path):
    def trainer_with(**overrides):
        return DiscriTuneTrainer(
            model=tiny_clipcap_policy(seed=0),
            reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
            args=make_config(tmp_path, max_steps=4, eval_strategy="steps", eval_steps=2, **overrides),
            train_dataset=image_dataset(8),
            eval_dataset={"in_domain": image_dataset(12, seed=3), "shifted": image_dataset(10, seed=4)},
        )

    with pytest.raises(ValueError, match=r"\['in_domain_p_at_1', 'shifted_p_at_1'\]: pick one"):
        trainer_with(save_strategy="steps", save_steps=2, load_best_model_at_end=True)  # p_at_1 is not reported
    trainer = trainer_with(
        save_strategy="steps", save_steps=2, load_best_model_at_end=True, metric_for_best_model="shifted_p_at_1"
    )
    trainer.train()
    evaluations = [entry for entry in trainer.state.log_history if any(key.startswith("eval_") for key in entry)]
    assert [sorted(key for key in entry if key.endswith("num_candidates")) for entry in evaluations] == [
        ["eval_in_domain_num_candidates"],
        ["eval_shifted_num_candidates"],
    ] * 2
    shifted = [entry["eval_shifted_p_at_1"] for entry in evaluations if "eval_shifted_p_at_1" in entry]
    assert trainer.state.best_metric == max(shifted)
    metrics = trainer.evaluate()
    assert metrics["eval_in_domain_num_candidates"] == 12 and metrics["eval_shifted_num_candidates"] == 10


def test_evaluate_can_report_greedy_p_at_1_beside_beam_search(tmp_path):
    eval_set = image_dataset(12, seed=3)
    metrics = make_trainer(tmp_path, eval_report_greedy=True).evaluate(eval_set)  # eval_num_beams=2
    greedy = make_trainer(tmp_path, eval_num_beams=1).evaluate(eval_set)
    assert metrics["eval_greedy_p_at_1"] == greedy["eval_p_at_1"]
    assert metrics["eval_greedy_caption_mean_words"] == greedy["eval_caption_mean_words"]
    assert metrics["eval_p_at_1"] == make_trainer(tmp_path).evaluate(eval_set)["eval_p_at_1"]  # beam unchanged

    with pytest.raises(ValueError, match="shifted_greedy_p_at_1"):  # not reported without eval_report_greedy
        DiscriTuneTrainer(
            model=tiny_clipcap_policy(seed=0),
            reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
            args=make_config(
                tmp_path,
                eval_strategy="steps",
                save_strategy="steps",
                load_best_model_at_end=True,
                metric_for_best_model="shifted_greedy_p_at_1",
            ),
            train_dataset=image_dataset(8),
            eval_dataset={"in_domain": eval_set, "shifted": image_dataset(10, seed=4)},
        )
    DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=make_config(
            tmp_path,
            eval_strategy="steps",
            save_strategy="steps",
            load_best_model_at_end=True,
            metric_for_best_model="shifted_greedy_p_at_1",
            eval_report_greedy=True,
        ),
        train_dataset=image_dataset(8),
        eval_dataset={"in_domain": eval_set, "shifted": image_dataset(10, seed=4)},
    )


def test_save_model_writes_a_loadable_policy_and_a_model_card(tmp_path):
    trainer = make_trainer(tmp_path, max_steps=1)
    trainer.train()
    out = str(tmp_path / "final")
    trainer.save_model(out)
    card = open(os.path.join(out, "README.md")).read()
    assert "DiscriTune" in card and "dessi2023discritune" in card and '"baseline": "mean"' in card
    assert "base_model" not in card and "No evaluation was run." in card  # a local policy: no Hub base model
    assert "pipeline_tag: image-text-to-text\n" in card and f'pipeline("image-text-to-text", model="{out}")' in card
    loaded = ClipCapPolicy.from_pretrained(out)
    pixels = trainer.model.preprocess(random_images(3, seed=5))
    original = trainer.model.generate_captions(pixel_values=pixels, max_new_tokens=6)
    again = loaded.generate_captions(pixel_values=pixels, max_new_tokens=6)
    assert original.texts == again.texts
    torch.testing.assert_close(
        loaded.caption_log_probs(original.sequences, original.caption_mask, pixels),
        trainer.model.caption_log_probs(original.sequences, original.caption_mask, pixels),
        rtol=0,
        atol=0,
    )


class FakeHub:
    """Stands in for `huggingface_hub.HfApi` (no network): records the repo and copies what would be uploaded."""

    def __init__(self, root):
        self.root, self.calls = root, []

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs.get("private")))
        return type("RepoUrl", (), {"repo_id": f"me/{repo_id}"})()

    def upload_folder(self, repo_id, folder_path, ignore_patterns=(), **kwargs):
        import fnmatch
        import shutil

        self.calls.append(("upload_folder", repo_id, kwargs.get("commit_message")))
        target = self.root / repo_id
        for name in os.listdir(folder_path):
            if not any(fnmatch.fnmatch(name, pattern) for pattern in ignore_patterns):
                copy = shutil.copytree if os.path.isdir(os.path.join(folder_path, name)) else shutil.copy
                copy(os.path.join(folder_path, name), target / name)
        return f"https://huggingface.co/{repo_id}"


def test_push_to_hub_uploads_the_policy_and_its_model_card(tmp_path, monkeypatch):
    import transformers.trainer

    hub = FakeHub(tmp_path / "hub")
    (hub.root / "me" / "clipcap-discritune").mkdir(parents=True)
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    trainer = make_trainer(
        tmp_path, max_steps=1, output_dir=str(tmp_path / "clipcap-discritune"), hub_private_repo=True
    )
    trainer.model.config._name_or_path = "someone/clipcap-coco"  # as after from_pretrained("someone/clipcap-coco")
    trainer.train()
    trainer.push_to_hub(dataset_name="my-images")

    assert hub.calls[0] == ("create_repo", "clipcap-discritune", True)
    assert hub.calls[-1] == ("upload_folder", "me/clipcap-discritune", "End of training")
    pushed = hub.root / "me" / "clipcap-discritune"
    card = (pushed / "README.md").read_text()
    assert "dessi2023discritune" in card and "- discritune\n" in card
    assert "base_model: someone/clipcap-coco\n" in card and "datasets:\n- my-images\n" in card
    assert 'load_policy("me/clipcap-discritune")  # ClipCapPolicy' in card  # usage reads the pushed repo
    assert not any(name.startswith("checkpoint-") for name in os.listdir(pushed))
    loaded = ClipCapPolicy.from_pretrained(str(pushed))  # what a user gets back from the Hub
    for (name, pushed_param), (_, trained) in zip(loaded.named_parameters(), trainer.model.named_parameters()):
        torch.testing.assert_close(pushed_param, trained, rtol=0, atol=0, msg=name)


def test_evaluate_reports_p_at_1_with_fewer_candidates_than_asked(tmp_path, caplog):
    trainer = make_trainer(tmp_path)
    metrics = trainer.evaluate(image_dataset(12, seed=3))
    assert metrics["eval_num_candidates"] == 12
    assert 0.0 <= metrics["eval_p_at_1"] <= 100.0
    assert "fewer than eval_num_candidates" in caplog.text


def test_evaluate_reports_trainers_speed_metrics_per_evaluation_set(tmp_path):
    trainer = make_trainer(tmp_path)  # per_device_eval_batch_size=8
    metrics = trainer.evaluate({"a": image_dataset(12, seed=3), "b": image_dataset(9, seed=4)})
    for prefix, num_images in (("eval_a", 12), ("eval_b", 9)):
        runtime = metrics[f"{prefix}_runtime"]
        assert runtime > 0
        assert metrics[f"{prefix}_samples_per_second"] == pytest.approx(num_images / runtime, rel=0.01)
        assert metrics[f"{prefix}_steps_per_second"] == pytest.approx(2 / runtime, rel=0.01)  # 2 batches of <= 8
    logged = [entry for entry in trainer.state.log_history if "eval_a_runtime" in entry]
    assert len(logged) == 1 and logged[0]["eval_a_samples_per_second"] == metrics["eval_a_samples_per_second"]


def test_the_short_last_batch_is_dropped_in_training_but_every_image_is_evaluated(tmp_path):
    # 9 images in batches of 4: the last batch would hold one image, with no distractor to discriminate against.
    trainer = make_trainer(tmp_path, dataset=image_dataset(9), max_steps=-1, num_train_epochs=2)
    seen = []
    original = trainer.reward_model.forward
    trainer.reward_model.forward = lambda *args, **kwargs: seen.append(original(*args, **kwargs)) or seen[-1]
    trainer.train()
    assert [tuple(output.logits.shape) for output in seen] == [(4, 4)] * 4  # 2 full batches x 2 epochs
    texts, text_embeds, image_embeds = trainer.caption_dataset(image_dataset(9, seed=1))
    assert len(texts) == text_embeds.shape[0] == image_embeds.shape[0] == 9
    assert trainer.evaluate(image_dataset(9, seed=1))["eval_num_candidates"] == 9


def test_streaming_datasets_train_and_evaluate_without_a_cache(tmp_path):
    stream = image_dataset(12).to_iterable_dataset()
    with pytest.raises(ValueError, match="no column 'picture'"):
        make_trainer(tmp_path, dataset=stream, image_column="picture")
    trainer = make_trainer(tmp_path, dataset=stream, max_steps=3, log_completions=True, num_completions_to_print=4)
    assert isinstance(trainer.train_dataset, datasets.IterableDataset)  # not materialised to be cached
    trainer.train()
    rewards = [entry["reward"] for entry in trainer.state.log_history if "reward" in entry]
    assert len(rewards) == 3 and all(np.isfinite(rewards))
    lines = open(completions_path(trainer.args.output_dir, trainer.run_id)).read().splitlines()
    assert sorted(json.loads(line)["image_index"] for line in lines[-4:]) == [
        8,
        9,
        10,
        11,
    ]  # step 3: the stream read in order
    metrics = trainer.evaluate(image_dataset(10, seed=2).to_iterable_dataset())
    assert metrics["eval_num_candidates"] == 10


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path):
    def loss_and_gradients(**overrides):
        # Both two-pass: gradient checkpointing rules out the one-pass step (tests/test_one_pass.py).
        trainer = make_trainer(
            tmp_path / str(len(overrides)), max_steps=1, logprobs_from_generation="false", **overrides
        )
        if overrides:
            trainer.model.gradient_checkpointing_enable()  # what train() does with gradient_checkpointing=True
        trainer.model.train()
        loss = trainer.compute_loss(trainer.model, first_batch(trainer))
        loss.backward()
        return loss.detach(), {name: p.grad for name, p in trainer.model.named_parameters() if p.grad is not None}

    loss, gradients = loss_and_gradients()
    checkpointed_loss, checkpointed_gradients = loss_and_gradients(gradient_checkpointing=True)
    assert torch.equal(loss, checkpointed_loss) and gradients.keys() == checkpointed_gradients.keys()
    for name, gradient in gradients.items():
        torch.testing.assert_close(checkpointed_gradients[name], gradient, rtol=1e-5, atol=1e-6, msg=name)
    trainer = make_trainer(tmp_path / "train", gradient_checkpointing=True)
    trainer.train()
    assert all(block.gradient_checkpointing for block in trainer.model.language_model.transformer.h)


def test_gradient_accumulation_warns_that_each_micro_batch_forms_its_own_candidate_pools(tmp_path, caplog):
    make_trainer(tmp_path, pool_size=4, gradient_accumulation_steps=2)
    assert "candidate pool" not in caplog.text  # full pools of 4: accumulating only adds pools
    make_trainer(tmp_path, pool_size=-1, gradient_accumulation_steps=2)
    assert "gradient_accumulation_steps=2" in caplog.text and "3 in-batch distractors, not the 7" in caplog.text
    caplog.clear()
    trainer = make_trainer(tmp_path, gradient_accumulation_steps=2)  # pool_size=100 (the paper) on batches of 4
    assert "3 in-batch distractors, not the paper's 99" in caplog.text
    assert "gradient_accumulation_steps=2 does not help: each micro-batch forms its own pools" in caplog.text
    seen = []
    original = trainer.reward_model.forward
    trainer.reward_model.forward = lambda *args, **kwargs: seen.append(original(*args, **kwargs)) or seen[-1]
    trainer.train()
    assert [tuple(output.logits.shape) for output in seen] == [(4, 4)] * 4  # 2 steps x 2 micro-batches of 4


def test_completions_are_logged_with_image_reward_and_advantage_one_file_per_run(tmp_path, capsys):
    trainer = make_trainer(tmp_path, log_completions=True, num_completions_to_print=2)
    trainer.train()
    path = completions_path(trainer.args.output_dir, trainer.run_id)
    samples = [json.loads(line) for line in open(path).read().splitlines()]
    assert len(samples) == 4  # two per logging step
    assert [sample["step"] for sample in samples] == [1, 1, 2, 2]
    for sample in samples:
        assert 0 <= sample["image_index"] < 8 and isinstance(sample["caption"], str)
        assert np.isfinite(sample["reward"]) and np.isfinite(sample["advantage"])
    printed = capsys.readouterr().out  # printed, whatever the log level
    assert "Completions at step 2" in printed and samples[-1]["caption"][:20] in printed
    # A second run in the same output_dir writes its own file instead of appending to the first one's.
    again = make_trainer(tmp_path, log_completions=True, num_completions_to_print=2)
    again.run_id = trainer.run_id + "-again"
    again.train()
    assert len(open(path).read().splitlines()) == 4
    assert len(open(completions_path(again.args.output_dir, again.run_id)).read().splitlines()) == 4
    # Off by default (as TRL's log_completions): no file.
    quiet = make_trainer(tmp_path / "quiet")
    quiet.train()
    assert not os.path.exists(os.path.join(quiet.args.output_dir, "completions"))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(baseline="loo"), "num_generations >= 2"),
        (dict(baseline="greedy"), "train_decoding='sample'"),
        (dict(num_generations=3), "would repeat"),
        (dict(max_completion_length=80), "at most 75"),
        (dict(baseline="typo"), "baseline='typo'"),
        (dict(reward_type="clipscore"), "reward_type='clipscore'"),
        (dict(top_p=0.0), "top_p=0.0"),
    ],
)
def test_invalid_configs_fail_at_construction(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        make_config(tmp_path, **overrides)


def test_dataset_without_the_image_column_names_the_columns(tmp_path):
    dataset = datasets.Dataset.from_dict({"picture": random_images(4), "caption": ["x"] * 4})
    with pytest.raises(ValueError, match=r"no column 'image'.*\['picture', 'caption'\]"):
        make_trainer(tmp_path, dataset=dataset)


def test_batch_of_one_without_hard_negatives_is_refused(tmp_path):
    with pytest.raises(ValueError, match="per_device_train_batch_size=1 .* leaves no in-batch distractors"):
        make_trainer(tmp_path, per_device_train_batch_size=1)


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    good = []
    for image in random_images(8):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        good.append({"bytes": buffer.getvalue(), "path": None})
    good[1] = {"bytes": good[1]["bytes"][:40], "path": None}  # truncated file
    good[5] = {"bytes": b"not an image at all", "path": None}
    dataset = datasets.Dataset.from_dict({"image": good}).cast_column("image", datasets.Image())
    trainer = make_trainer(tmp_path, dataset=dataset)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert logs[-1]["data/unreadable_images"] == 2
    assert trainer.state.global_step == 2


class NaNRewardModel(DiscriminativeRewardModel):
    def compute_rewards(self, logits, target_indices):
        return torch.full((logits.shape[0],), float("nan"))


def test_nan_reward_stops_before_any_checkpoint(tmp_path):
    reward_model = NaNRewardModel(tiny_open_clip_retriever(seed=0))
    trainer = make_trainer(tmp_path, reward_model=reward_model, save_strategy="steps", save_steps=1)
    with pytest.raises(FloatingPointError, match="Non-finite reward at training step 1"):
        trainer.train()
    output_dir = trainer.args.output_dir
    assert not os.path.isdir(output_dir) or not any(name.startswith("checkpoint") for name in os.listdir(output_dir))


def test_a_cpu_run_does_not_ask_for_pinned_memory(tmp_path):
    import warnings

    if torch.cuda.is_available():
        pytest.skip("this machine has an accelerator")
    trainer = make_trainer(tmp_path, max_steps=1, use_cpu=False)  # as the examples run, on a machine without GPU
    assert trainer.args.dataloader_pin_memory is False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
        trainer.evaluate(image_dataset(6, seed=1))
    assert not [str(warning.message) for warning in caught if "pin_memory" in str(warning.message)]


def test_bf16_autocast_steps_on_cpu(tmp_path):
    trainer = make_trainer(tmp_path, bf16=True, max_steps=1)
    assert trainer.accelerator.native_amp  # autocast really runs in bf16 on CPU
    trainer.train()
    assert np.isfinite(trainer.state.log_history[0]["loss"])


def test_fp16_config_constructs_and_steps_on_cpu(tmp_path):
    # Accelerate runs fp16 autocast and loss scaling on CUDA only; on CPU the same config trains in fp32.
    trainer = make_trainer(tmp_path, fp16=True, max_steps=1)
    assert trainer.accelerator.mixed_precision == "fp16"
    trainer.train()
    assert np.isfinite(trainer.state.log_history[0]["loss"])


def test_lora_trains_only_adapters(tmp_path):
    from peft import LoraConfig

    trainer = DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
        args=make_config(tmp_path, beta=0.1),
        train_dataset=image_dataset(8),
        peft_config=LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, init_lora_weights=False),
    )
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name for name in changed)
    assert any(np.isfinite(entry.get("kl", np.nan)) for entry in trainer.state.log_history)
