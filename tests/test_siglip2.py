"""A SigLIP2 (NaFlex `Siglip2Model`) retriever loaded from a saved folder: its patches, patch mask and grid shapes
travel through the reward model, the collator, the frozen-embedding cache, training and evaluation."""

import importlib.util
import os
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer, TransformersCLIPRetriever
from discritune_trl.evaluation import encode_gallery
from discritune_trl.scripts.arguments import RetrieverArguments, build_retriever
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.retrievers import save_transformers_retriever, tiny_transformers_clip_retriever
from discritune_trl.trainer import DiscriTuneCollator


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CAPTIONS = ["a red circle on a blue square.", "two black dogs play in the park.", "a man rides a horse.", ""]


def image_dataset(count: int, seed: int = 0) -> datasets.Dataset:
    """Random images of different aspect ratios, so that SigLIP2 pads some images' patch sequences."""
    rng = np.random.default_rng(seed)
    sizes = [(32, 32), (48, 24), (20, 40), (33, 17)]
    images = [Image.fromarray(rng.integers(0, 256, (*sizes[i % len(sizes)], 3), dtype=np.uint8)) for i in range(count)]
    return datasets.Dataset.from_dict({"image": images}).cast_column("image", datasets.Image())


@pytest.fixture(scope="module")
def siglip2_folder(tmp_path_factory):
    return save_transformers_retriever(
        tiny_transformers_clip_retriever(seed=0, model_type="siglip2"), tmp_path_factory.mktemp("siglip2")
    )


@pytest.fixture(scope="module")
def retriever(siglip2_folder):
    return TransformersCLIPRetriever.from_pretrained(siglip2_folder)


def test_reward_logits_are_siglip2s_own_logits_without_the_bias(retriever):
    images = image_dataset(4)["image"]
    pixel_values = retriever.preprocess(images)
    assert not pixel_values["pixel_attention_mask"].all()  # some images fill fewer than max_num_patches patches
    output = DiscriminativeRewardModel(retriever)(CAPTIONS, pixel_values=pixel_values)

    # Siglip2Model's own forward on the same inputs: logits_per_text = scale * cos + bias.
    text_inputs = retriever.tokenize(CAPTIONS)
    with torch.no_grad():
        model_output = retriever.model(**text_inputs, **pixel_values)
    expected = model_output.logits_per_text - retriever.model.logit_bias
    torch.testing.assert_close(output.logits, expected, rtol=1e-5, atol=1e-5)
    # Retrieval ranks the candidates exactly as the model's sigmoid scores do (the bias shifts every logit alike).
    assert torch.equal(output.logits.argmax(dim=1), model_output.logits_per_text.argmax(dim=1))
    torch.testing.assert_close(output.rewards, output.logits.log_softmax(dim=1).diagonal())


def test_the_scripts_retriever_flags_load_a_siglip2_folder(siglip2_folder, retriever):
    loaded = build_retriever(RetrieverArguments(retriever_transformers_model=siglip2_folder))
    assert type(loaded.model).__name__ == "Siglip2Model"
    images = image_dataset(3)["image"]
    assert torch.equal(
        loaded.encode_images(loaded.preprocess(images)), retriever.encode_images(retriever.preprocess(images))
    )


def test_finetune_vlm_retriever_flag_loads_a_siglip2_folder(siglip2_folder):
    spec = importlib.util.spec_from_file_location("finetune_vlm", os.path.join(ROOT, "examples", "finetune_vlm.py"))
    example = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = example  # its dataclasses resolve their annotations through sys.modules
    spec.loader.exec_module(example)
    recipe = os.path.join(ROOT, "examples", "recipes", "smolvlm_coco.yaml")
    script_args, _ = example.parse_arguments(
        ["--config", recipe, "--retriever_name_or_path", siglip2_folder, "--use_cpu"]
    )
    assert type(example.build_retriever(script_args).model).__name__ == "Siglip2Model"


def make_trainer(tmp_path, retriever, cache: bool) -> DiscriTuneTrainer:
    settings = dict(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        max_steps=2,
        learning_rate=1e-2,
        pool_size=4,
        max_completion_length=6,
        logging_steps=1,
        use_cpu=True,
        report_to="none",
        disable_tqdm=True,
        save_strategy="no",
        seed=0,
        cache_embeddings=cache,
        cache_batch_size=4,  # the cache encodes the same 4 rows together as a training batch does
        cache_num_workers=0,
        eval_num_candidates=4,
        eval_num_beams=1,
    )
    return DiscriTuneTrainer(
        model=tiny_clipcap_policy(seed=0),
        reward_model=DiscriminativeRewardModel(retriever),
        args=DiscriTuneConfig(**settings),
        train_dataset=image_dataset(8),
    )


def test_trains_and_evaluates_with_the_cache_on_and_off(tmp_path, retriever):
    cached = make_trainer(tmp_path / "cached", retriever, cache=True)
    uncached = make_trainer(tmp_path / "uncached", retriever, cache=False)

    # The cache holds what the retriever makes of each image from its full SigLIP2 inputs.
    expected = encode_gallery(retriever, image_dataset(8)["image"], batch_size=4)
    torch.testing.assert_close(torch.from_numpy(np.stack(cached.train_dataset["retriever_image_embeds"])), expected)
    batch = uncached._prepare_inputs(uncached.data_collator([uncached.train_dataset[i] for i in range(4)]))
    assert set(batch["retriever_pixel_values"]) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}

    for trainer in (cached, uncached):
        trainer.train()
    rewards = [[entry["reward"] for entry in t.state.log_history if "reward" in entry] for t in (cached, uncached)]
    assert len(rewards[0]) == 2 and np.isfinite(rewards[0]).all()
    np.testing.assert_allclose(rewards[0], rewards[1], rtol=1e-5)  # same images, same judge: same rewards

    eval_dataset = image_dataset(4, seed=1)
    metrics = uncached.evaluate(eval_dataset)
    assert metrics["eval_num_candidates"] == 4 and metrics["eval_unreadable_images"] == 0
    texts, text_embeds, image_embeds = uncached.caption_dataset(eval_dataset)
    gallery = encode_gallery(retriever, eval_dataset["image"])  # the full SigLIP2 inputs, image by image
    torch.testing.assert_close(image_embeds, gallery)
    # With 4 candidates among 4 images, P@1 is the fraction of captions whose own image scores highest.
    found = (retriever.encode_texts(texts) @ gallery.T).argmax(dim=1) == torch.arange(4)
    assert metrics["eval_p_at_1"] == pytest.approx(100.0 * found.float().mean().item())


def test_beside_a_clip_retriever_each_reads_its_own_inputs(retriever):
    clip = tiny_transformers_clip_retriever(seed=0, model_type="clip")
    reward_model = DiscriminativeRewardModel([retriever, clip])
    collator = DiscriTuneCollator.from_models(tiny_clipcap_policy(seed=0), reward_model)
    dataset = image_dataset(4)
    batch = collator([{"image": dataset[i]["image"]} for i in range(4)]).to("cpu")
    siglip2_inputs, clip_pixels = batch.retriever_pixel_values
    assert set(siglip2_inputs) == {"pixel_values", "pixel_attention_mask", "spatial_shapes"}
    assert clip_pixels.shape == (4, 3, 32, 32)

    mean = reward_model(CAPTIONS, **batch.retriever_inputs)
    alone = [
        DiscriminativeRewardModel(r)(CAPTIONS, pixel_values=p)
        for r, p in ((retriever, siglip2_inputs), (clip, clip_pixels))
    ]
    torch.testing.assert_close(mean.rewards, (alone[0].rewards + alone[1].rewards) / 2)
    cached = reward_model(CAPTIONS, image_embeds=reward_model.encode_images(batch.retriever_pixel_values))
    torch.testing.assert_close(cached.rewards, mean.rewards)


class SigmoidReward(DiscriminativeRewardModel):
    """The reward on SigLIP's own scale that docs/vlm.md points to: log sigmoid(scale * cos + bias) of the target."""

    def compute_rewards(self, logits, target_indices):
        bias = self.active_retriever.model.logit_bias.to(logits.device)
        return torch.nn.functional.logsigmoid(logits.gather(1, target_indices[:, None]).squeeze(1) + bias)


def test_a_reward_on_siglips_own_sigmoid_scale_is_a_small_subclass(retriever):
    pixel_values = retriever.preprocess(image_dataset(4)["image"])
    rewards = SigmoidReward(retriever)(CAPTIONS, pixel_values=pixel_values).rewards
    with torch.no_grad():
        logits_per_text = retriever.model(**retriever.tokenize(CAPTIONS), **pixel_values).logits_per_text
    torch.testing.assert_close(rewards, torch.nn.functional.logsigmoid(logits_per_text.diagonal()))
