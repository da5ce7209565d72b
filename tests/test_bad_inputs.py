"""Bad and unusual inputs across the public API, as a new user would try them.

Each case asserts that the error is of a specific type and that its message names the offending value (or that the
unusual input works), and that the failed call changed nothing: the policy's weights, the dataset and the files it
was given are as before. Tiny models, built once per module.
"""

import json
import logging
import os
import re

import datasets
import numpy as np
import pytest
import torch
from PIL import Image
from transformers import GPT2Config, GPT2LMHeadModel

from discritune_trl import ClipCapPolicy, DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
from discritune_trl.evaluation.retrieval import precision_at_1, recall_at_k, retrieval_metrics
from discritune_trl.models.auto import load_policy
from discritune_trl.retrievers.open_clip_retriever import OpenCLIPRetriever
from discritune_trl.scripts import train as train_script
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import tiny_open_clip_retriever
from discritune_trl.trainer import discritune_trainer
from discritune_trl.utils.data import load_image_dataset


def images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


def image_dataset(count: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"image": images(count)}).cast_column("image", datasets.Image())


@pytest.fixture(scope="module")
def policy():
    return tiny_clipcap_policy(seed=0)


@pytest.fixture(scope="module")
def retriever():
    return tiny_open_clip_retriever(seed=0)


@pytest.fixture(scope="module")
def reward_model(retriever):
    return DiscriminativeRewardModel(retriever)


@pytest.fixture(scope="module")
def saved_policy(policy, tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved_policy")
    policy.save_pretrained(folder)
    return folder


def config(tmp_path, **overrides) -> DiscriTuneConfig:
    settings = dict(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_steps=1,
        learning_rate=1e-2,
        max_completion_length=6,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        cache_embeddings=False,
    )
    settings.update(overrides)
    return DiscriTuneConfig(**settings)


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}


def assert_same_weights(module: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    after = module.state_dict()
    assert after.keys() == before.keys()
    for name, tensor in before.items():
        assert torch.equal(after[name], tensor), name


def folder_listing(folder) -> dict[str, bytes]:
    return {name: open(os.path.join(folder, name), "rb").read() for name in sorted(os.listdir(folder))}


# ---------------------------------------------------------------- the config (and the example scripts' flags)

CONFIG_CASES = [
    (dict(learning_rate=0.0), "learning_rate=0.0 must be > 0"),
    (dict(learning_rate=-1e-5), "learning_rate=-1e-05 must be > 0"),
    (dict(learning_rate=float("nan")), "learning_rate=nan must be > 0"),
    (dict(max_completion_length=0), "max_completion_length=0 must be between 1 and 75"),
    (dict(num_generations=0), "num_generations=0 must be >= 1"),
    (dict(temperature=0.0), "temperature=0.0 must be > 0"),
    (dict(top_k=-1), "top_k=-1 must be >= 0"),
    (dict(top_p=1.5), "top_p=1.5 must be in (0, 1]"),
    (dict(num_beams=0), "num_beams=0"),
    (dict(eval_num_candidates=1), "eval_num_candidates=1 must be >= 2"),
    (dict(cache_batch_size=0), "cache_batch_size=0 must be >= 1"),
    (dict(beta=-0.1), "beta=-0.1 must be >= 0"),
    (dict(num_hard_negatives=-2), "num_hard_negatives=-2 must be >= 0"),
    (dict(train_decoding="nucleus"), "train_decoding='nucleus' is not one of"),
    (dict(log_prob_reduction="max"), "log_prob_reduction='max' is not one of"),
]


@pytest.mark.parametrize("overrides, message", CONFIG_CASES, ids=[str(case[0]) for case in CONFIG_CASES])
def test_config_refuses_bad_values_naming_them(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config(tmp_path, **overrides)


def test_example_flags_refuse_bad_values_naming_them(load_example, capsys):
    parse = load_example("finetune_clipcap.py").parse_arguments
    with pytest.raises(ValueError, match=re.escape("learning_rate=0.0 must be > 0")):
        parse(["--learning_rate", "0", "--use_cpu"])
    with pytest.raises(SystemExit):  # argparse's choices: exits with usage, naming the value
        parse(["--baseline", "avg", "--use_cpu"])
    assert "invalid choice: 'avg'" in capsys.readouterr().err


def test_example_cross_domain_eval_flag_without_a_name_is_refused():
    argv = ["--dataset_name", "./data", "--cross_domain_eval", "just/a/path", "--use_cpu"]
    script_args = train_script.parse_arguments(argv)[0]
    with pytest.raises(ValueError, match=re.escape("--cross_domain_eval 'just/a/path': expected NAME=PATH")):
        train_script.load_eval_datasets(script_args)


def test_example_cross_domain_eval_flag_is_refused_on_the_world():
    with pytest.raises(ValueError, match="--cross_domain_eval=.*does not apply to the embedded world"):
        train_script.parse_arguments(["--cross_domain_eval", "a=just/a/path", "--use_cpu"])


# ---------------------------------------------------------------- the trainer's arguments

TRAIN_DATASET_CASES = [
    ("DatasetDict", lambda: datasets.DatasetDict({"train": image_dataset(4), "test": image_dataset(2)}), TypeError,
     "train_dataset is a DatasetDict with splits ['train', 'test']; training reads one split: pass "
     "train_dataset=dataset['train']"),
    ("empty", lambda: image_dataset(4).select([]), ValueError, "train_dataset has no rows"),
    ("smaller than a batch", lambda: image_dataset(3), ValueError,
     "train_dataset has 3 readable image(s), fewer than per_device_train_batch_size=4"),
    ("list of ints", lambda: [1, 2, 3], TypeError, "got a list of 3 item(s) of type int"),
    ("tensor", lambda: torch.zeros(4, 3, 32, 32), TypeError, "got a Tensor of shape [4, 3, 32, 32]"),
    ("path string", lambda: "data/my_images", TypeError, "got the string 'data/my_images'"),
    ("dict of columns", lambda: {"image": images(4)}, TypeError,
     "train_dataset is a dict with keys ['image']; training reads one dataset"),
]  # fmt: skip


@pytest.mark.parametrize(
    "make, error, message", [case[1:] for case in TRAIN_DATASET_CASES], ids=[c[0] for c in TRAIN_DATASET_CASES]
)
def test_trainer_refuses_train_datasets_it_cannot_train_on(tmp_path, policy, reward_model, make, error, message):
    before = weights(policy)
    with pytest.raises(error, match=re.escape(message)):
        DiscriTuneTrainer(model=policy, reward_model=reward_model, args=config(tmp_path), train_dataset=make())
    assert_same_weights(policy, before)


@pytest.mark.parametrize(
    "eval_dataset, message",
    [
        (lambda: image_dataset(4).select([]), "eval_dataset has no rows"),
        (
            lambda: {"in_domain": image_dataset(4), "shifted": image_dataset(4).select([])},
            "eval_dataset['shifted'] has no rows",
        ),
    ],  # fmt: skip
    ids=["empty split", "empty set of a dict"],
)
def test_trainer_refuses_an_empty_evaluation_split(tmp_path, policy, reward_model, eval_dataset, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DiscriTuneTrainer(
            model=policy,
            reward_model=reward_model,
            args=config(tmp_path),
            train_dataset=image_dataset(4),
            eval_dataset=eval_dataset(),
        )


def test_trainer_refuses_a_language_model_that_is_not_a_captioning_policy(tmp_path, reward_model):
    language_model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    before = weights(language_model)
    with pytest.raises(TypeError, match="model is a GPT2LMHeadModel; DiscriTuneTrainer trains a CaptioningPolicy"):
        DiscriTuneTrainer(
            model=language_model, reward_model=reward_model, args=config(tmp_path), train_dataset=image_dataset(4)
        )
    assert_same_weights(language_model, before)


def test_trainer_refuses_a_trl_style_reward_function(tmp_path, policy):
    def caption_length_reward(completions, **kwargs):
        return [float(len(text)) for text in completions]

    before = weights(policy)
    with pytest.raises(TypeError, match="reward_model must be .* got the function 'caption_length_reward'"):
        DiscriTuneTrainer(
            model=policy, reward_model=caption_length_reward, args=config(tmp_path), train_dataset=image_dataset(4)
        )
    with pytest.raises(TypeError, match="reward_model must be .* got a NoneType"):
        DiscriTuneTrainer(model=policy, reward_model=None, args=config(tmp_path), train_dataset=image_dataset(4))
    assert_same_weights(policy, before)


def test_trainer_refuses_training_arguments_that_are_not_a_discritune_config(tmp_path, policy, reward_model):
    from transformers import TrainingArguments

    with pytest.raises(TypeError, match="args must be a DiscriTuneConfig, got TrainingArguments"):
        DiscriTuneTrainer(
            model=policy, reward_model=reward_model, args=TrainingArguments(output_dir=str(tmp_path), use_cpu=True)
        )


def test_trainer_refuses_a_missing_policy_folder(tmp_path, reward_model):
    missing = str(tmp_path / "no" / "such" / "policy")
    with pytest.raises(FileNotFoundError, match=re.escape(f"load_policy({missing!r}): no such folder")):
        DiscriTuneTrainer(model=missing, reward_model=reward_model, args=config(tmp_path))


def test_trainer_accepts_a_saved_policy_folder_and_a_list_of_images(tmp_path, saved_policy, reward_model):
    trainer = DiscriTuneTrainer(
        model=str(saved_policy), reward_model=reward_model, args=config(tmp_path), train_dataset=images(4)
    )
    assert isinstance(trainer.model, ClipCapPolicy)
    assert isinstance(trainer.train_dataset, datasets.Dataset) and len(trainer.train_dataset) == 4
    trainer.train()
    assert trainer.state.global_step == 1


def test_fp16_on_a_cpu_says_it_trains_in_fp32(tmp_path, policy, reward_model, caplog):
    DiscriTuneTrainer(model=policy, reward_model=reward_model, args=config(tmp_path), train_dataset=image_dataset(4))
    assert "fp16" not in caplog.text
    if torch.cuda.is_available():
        pytest.skip("fp16 runs on the GPU here")
    DiscriTuneTrainer(
        model=policy, reward_model=reward_model, args=config(tmp_path, fp16=True), train_dataset=image_dataset(4)
    )
    assert "fp16=True on a CPU" in caplog.text and "trains in fp32" in caplog.text


@pytest.mark.parametrize("emulated", [True, False])
def test_bf16_on_a_cpu_that_emulates_it_says_so(tmp_path, policy, reward_model, caplog, monkeypatch, emulated):
    if torch.cuda.is_available():
        pytest.skip("bf16 runs on the GPU here")
    monkeypatch.setattr(discritune_trainer, "cpu_emulates_bf16", lambda: emulated)
    DiscriTuneTrainer(
        model=policy, reward_model=reward_model, args=config(tmp_path, bf16=True), train_dataset=image_dataset(4)
    )
    assert ("without bf16 matrix instructions" in caplog.text) == emulated
    assert ("bf16=False" in caplog.text) == emulated


def test_batch_of_one_image_is_refused(tmp_path, policy, reward_model):
    with pytest.raises(ValueError, match="per_device_train_batch_size=1 on 1 process"):
        DiscriTuneTrainer(
            model=policy,
            reward_model=reward_model,
            args=config(tmp_path, per_device_train_batch_size=1),
            train_dataset=image_dataset(4),
        )


def test_a_missing_image_column_names_the_columns(tmp_path, policy, reward_model):
    dataset = datasets.Dataset.from_dict({"picture": images(4)})
    with pytest.raises(
        ValueError, match=re.escape("train_dataset has no column 'image'; its columns are ['picture']")
    ):
        DiscriTuneTrainer(model=policy, reward_model=reward_model, args=config(tmp_path), train_dataset=dataset)


def test_evaluate_refuses_an_empty_dataset(tmp_path, policy, reward_model):
    trainer = DiscriTuneTrainer(
        model=policy, reward_model=reward_model, args=config(tmp_path), train_dataset=image_dataset(4)
    )
    with pytest.raises(ValueError, match="dataset has no rows"):
        trainer.evaluate(image_dataset(3).select([]))
    with pytest.raises(ValueError, match="evaluate\\(\\) needs an eval_dataset"):
        trainer.evaluate()


# ---------------------------------------------------------------- the reward model and retrievers


def test_retriever_refuses_pixels_of_the_wrong_size(retriever):
    with pytest.raises(ValueError, match=re.escape("pixel_values of shape [2, 3, 16, 16], but this OpenCLIPRetriever "
                                                   "reads [N, 3, 32, 32] images")):  # fmt: skip
        retriever.encode_images(torch.zeros(2, 3, 16, 16))
    with pytest.raises(ValueError, match=re.escape("pixel_values of shape [3, 32, 32]")):
        retriever.encode_images(torch.zeros(3, 32, 32))


def test_reward_model_refuses_pixels_of_the_wrong_size(reward_model):
    with pytest.raises(ValueError, match=re.escape("pixel_values of shape [2, 3, 64, 64]")):
        reward_model(["a dog", "a cat"], pixel_values=torch.zeros(2, 3, 64, 64))


def test_retriever_preprocess_refuses_non_images(retriever):
    with pytest.raises(TypeError, match=re.escape("images[1] is a ndarray, expected a PIL.Image.Image")):
        retriever.preprocess([images(1)[0], np.zeros((32, 32, 3), dtype=np.uint8)])


def test_retriever_without_weights_says_how_to_get_them():
    with pytest.raises(ValueError, match=re.escape("OpenCLIPRetriever('ViT-B-32') has no weights")):
        OpenCLIPRetriever("ViT-B-32")


def test_reward_model_refuses_an_unknown_reward_type(retriever):
    with pytest.raises(ValueError, match="clipscore"):
        DiscriminativeRewardModel(retriever, reward_type="clipscore")


def test_reward_model_accepts_grayscale_and_rgba_images(reward_model):
    mixed = [images(1)[0].convert("L"), images(1, seed=1)[0].convert("RGBA")]
    output = reward_model(["a dog", "a cat"], pixel_values=reward_model.preprocess(mixed))
    assert output.rewards.shape == (2,) and torch.isfinite(output.rewards).all()


# ---------------------------------------------------------------- policies


def test_policy_refuses_caption_ids_outside_its_vocabulary(policy):
    pixels = policy.preprocess(images(2))
    vocab = policy.language_model.get_input_embeddings().num_embeddings
    ids = torch.tensor([[1, 2, vocab + 5], [1, 2, 3]])
    with pytest.raises(
        ValueError, match=re.escape(f"ids in [1, {vocab + 5}], outside this policy's vocabulary [0, {vocab})")
    ):
        policy.caption_log_probs(ids, torch.ones_like(ids), pixels)
    with pytest.raises(ValueError, match=re.escape(f"ids in [-1, 3], outside this policy's vocabulary [0, {vocab})")):
        policy.caption_log_probs(torch.tensor([[1, -1, 3]]), torch.ones(1, 3, dtype=torch.long), pixels[:1])


def test_policy_refuses_non_images_and_bad_generation_lengths(policy):
    with pytest.raises(TypeError, match=re.escape("images[0] is a str")):
        policy.preprocess(["photo.jpg"])
    with pytest.raises(ValueError, match=re.escape("max_new_tokens=0 must be between 1 and 75")):
        policy.generate_captions(pixel_values=policy.preprocess(images(1)), max_new_tokens=0)


# ---------------------------------------------------------------- loaders


def test_load_policy_on_a_missing_folder_names_it(tmp_path):
    missing = str(tmp_path / "checkpoints" / "final")
    with pytest.raises(FileNotFoundError, match=re.escape(f"load_policy({missing!r}): no such folder")):
        load_policy(missing)


def test_load_policy_on_an_invalid_config_names_the_file(saved_policy, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text('{"model_type": "clipcap",')  # cut off
    with pytest.raises(ValueError, match=re.escape(f"{broken / 'config.json'} is not a valid config.json")):
        load_policy(str(broken))
    (broken / "config.json").write_text('["a list"]')
    with pytest.raises(ValueError, match="is not a valid config.json"):
        load_policy(str(broken))
    before = folder_listing(saved_policy)
    (broken / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="model_type='llama'"):
        load_policy(str(broken))
    assert folder_listing(saved_policy) == before


def test_load_policy_on_a_file_says_to_pass_the_folder(saved_policy):
    with pytest.raises(ValueError, match="that is a file; pass the folder"):
        load_policy(str(saved_policy / "config.json"))


@pytest.mark.parametrize(
    "content, error, message",
    [
        (b"", ValueError, "is empty (0 bytes)"),
        (os.urandom(256), ValueError, "is not a readable PyTorch checkpoint"),
        ("tensor", ValueError, "holds a Tensor, not a state_dict"),
        ("list", ValueError, "holds a list, not a state_dict"),
        (None, FileNotFoundError, "No ClipCap checkpoint at"),
    ],
    ids=["zero bytes", "random bytes", "bare tensor", "list", "missing"],
)
def test_original_clipcap_checkpoint_errors_name_the_file(tmp_path, content, error, message):
    path = tmp_path / "coco_weights.pt"
    if content == "tensor":
        torch.save(torch.zeros(3), path)
    elif content == "list":
        torch.save([torch.zeros(3)], path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=re.escape(message)) as raised:
        ClipCapPolicy.from_original_checkpoint(path, clip_pretrained=None)
    assert str(path) in str(raised.value)


def test_load_image_dataset_on_a_missing_path_names_it(tmp_path):
    with pytest.raises(OSError, match=re.escape("Could not load dataset 'no_such_dataset_here' split 'train'")):
        load_image_dataset("no_such_dataset_here", "train")


# ---------------------------------------------------------------- evaluation


@pytest.mark.parametrize("which", ["text_embeds", "image_embeds"])
def test_retrieval_metrics_refuse_non_finite_embeddings(which):
    embeds = {"text_embeds": torch.randn(5, 8), "image_embeds": torch.randn(5, 8)}
    embeds[which][3, 0] = float("nan")
    with pytest.raises(ValueError, match=re.escape(f"{which} holds non-finite values (NaN or inf) in 1 row(s), e.g. "
                                                   "rows [3]")):  # fmt: skip
        precision_at_1(embeds["text_embeds"], embeds["image_embeds"], num_candidates=3)
    with pytest.raises(ValueError, match=re.escape(f"{which} holds non-finite values")):
        recall_at_k(embeds["text_embeds"], embeds["image_embeds"], ks=(1,))


def test_more_candidates_than_images_uses_every_image_with_a_warning(retriever, caplog):
    """One way everywhere (here; the trainer and the evaluate script: tests/test_trainer.py,
    tests/test_evaluation_suite.py): P@1 among all the gallery's images, one warning, the count used reported."""
    text_embeds, image_embeds = torch.randn(4, 8), torch.randn(4, 8)
    with caplog.at_level(logging.WARNING):
        assert precision_at_1(text_embeds, image_embeds, num_candidates=10) == precision_at_1(
            text_embeds, image_embeds, num_candidates=4
        )
    assert "4 images, fewer than num_candidates=10: P@1 uses all 4 images as candidates" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        metrics = retrieval_metrics(retriever, ["a", "b", "c"], images=images(3), num_candidates=100, ks=(1,))
    assert metrics["num_candidates"] == 3 and caplog.text.count("fewer than num_candidates=100") == 1
    with pytest.raises(ValueError, match=re.escape("has 1 image(s): P@1 needs at least 2")):
        precision_at_1(torch.randn(1, 8), torch.randn(1, 8), num_candidates=10)


def test_retrieval_metrics_refuse_a_single_string_and_unpaired_inputs(retriever):
    with pytest.raises(TypeError, match="got a single string"):
        retrieval_metrics(retriever, "a dog", images=images(2))
    with pytest.raises(ValueError, match=re.escape("3 captions but 2 images")):
        retrieval_metrics(retriever, ["a", "b", "c"], images=images(2), num_candidates=2)
