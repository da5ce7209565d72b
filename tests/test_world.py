"""The embedded world: seeded scenes, caption styles, dataset layout, and a tiny build of both pretrained pieces."""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import datasets
import numpy as np
import pytest
import torch

from discritune_trl.models.policy import full_stop_token_ids
from discritune_trl.testing.world import tiny_world_config
from discritune_trl.world import (
    COLOR_WORDS,
    IN_DOMAIN,
    META_CAPTIONS,
    SHIFTED,
    WORLD_FEATURES,
    WORLD_REGIMES,
    HumanCaptionStyle,
    WorldConfig,
    WorldDataConfig,
    build_world,
    color_word_rate,
    describe,
    generate_example,
    generate_world,
    human_caption,
    load_or_build_world,
    mentions_color,
    render_scene,
    sample_scene,
    scene_from_row,
    train_world_tokenizer,
)
from discritune_trl.world import build as build_module
from discritune_trl.world.captions import SHAPES_CAPTION_PREFIXES
from discritune_trl.world.scenes import COLORS, scene_rng


def _pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


# ----------------------------------------------------------------------------- generator


@pytest.mark.parametrize("split", ["train", "in_domain", "shifted"])
def test_same_seed_gives_identical_pixels_and_texts(split):
    config = WorldDataConfig(seed=3)
    first, second = generate_example(config, split, 7), generate_example(config, split, 7)
    assert np.array_equal(_pixels(first["image"]), _pixels(second["image"]))
    assert {k: v for k, v in first.items() if k != "image"} == {k: v for k, v in second.items() if k != "image"}

    other_seed = generate_example(WorldDataConfig(seed=4), split, 7)
    other_index = generate_example(config, split, 8)
    assert not np.array_equal(_pixels(first["image"]), _pixels(other_seed["image"]))
    assert not np.array_equal(_pixels(first["image"]), _pixels(other_index["image"]))


def test_scenes_follow_their_domain():
    for index in range(50):
        for domain in (IN_DOMAIN, SHIFTED):
            scene = sample_scene(scene_rng(0, 0, index), domain)
            assert len(scene.objects) in domain.num_objects
            assert scene.background in domain.backgrounds
            positions = [obj.position for obj in scene.objects]
            assert len(set(positions)) == len(positions)  # never two objects in one place


def test_render_draws_the_object_color_at_its_position():
    scene = sample_scene(scene_rng(0, 0, 0), IN_DOMAIN)
    image = render_scene(scene, image_size=32)
    assert image.size == (32, 32) and image.mode == "RGB"
    for obj in scene.objects:
        x, y = (round(c * 32) for c in obj.center)
        assert np.abs(_pixels(image)[y, x].astype(int) - np.array(COLORS[obj.color])).max() <= 2


def test_noisy_domain_needs_a_generator():
    scene = sample_scene(scene_rng(0, 2, 0), SHIFTED)
    with pytest.raises(ValueError, match="pixel noise"):
        render_scene(scene)


# ----------------------------------------------------------------------------- captions


def test_vague_human_captions_dominate():
    config = WorldDataConfig()
    captions = [text for i in range(200) for text in generate_example(config, "train", i)["captions"]]
    meta = {f"{text}." for text in META_CAPTIONS}
    vague = [text for text in captions if text in meta or text.startswith(SHAPES_CAPTION_PREFIXES)]
    assert len(vague) / len(captions) > 0.7
    assert 0.1 < color_word_rate(captions) < 0.3  # some humans do describe
    # The single most common caption opening is vague, so maximum-likelihood decoding starts there.
    openings = Counter(" ".join(text.split()[:3]) for text in captions)
    assert openings.most_common(1)[0][0] == "geometric art with"


def test_descriptive_text_names_every_object():
    row = generate_example(WorldDataConfig(), "train", 1)
    text = row["descriptive"]
    for shape, color, size, position in zip(row["shapes"], row["colors"], row["sizes"], row["positions"]):
        assert f"{size} {color} {shape}" in text and position in text
    assert text == describe(scene_from_row(row)) and text.endswith(".")


def test_shifted_references_are_descriptive():
    config = WorldDataConfig()
    for index in range(30):
        row = generate_example(config, "shifted", index)
        assert row["num_objects"] == 3
        assert all(mentions_color(text) for text in row["captions"])
        for text in row["captions"]:  # each reference only names colours and shapes the image holds
            words = set(text.replace(",", " ").replace(".", " ").split())
            assert words & COLOR_WORDS <= set(row["colors"])


def test_human_caption_style_probabilities():
    scene = scene_from_row(generate_example(WorldDataConfig(), "train", 0))
    rng = np.random.default_rng(0)
    only_descriptive = HumanCaptionStyle(meta=0.0, shapes=0.0, descriptive=1.0)
    assert all(mentions_color(human_caption(scene, rng, only_descriptive)) for _ in range(20))
    with pytest.raises(ValueError, match="sum to 1"):
        HumanCaptionStyle(meta=0.5, shapes=0.5, descriptive=0.5)


def test_color_word_rate():
    assert color_word_rate(["a red circle.", "geometric art.", "a blue, small square.", "abstract art."]) == 0.5
    with pytest.raises(ValueError, match="at least one caption"):
        color_word_rate([])


# ----------------------------------------------------------------------------- dataset and tokenizer


def test_dataset_columns_and_features(tmp_path):
    config = WorldDataConfig(num_train=6, num_in_domain_test=4, num_shifted_test=4, image_size=24)
    world = generate_world(config, progress=False)
    assert set(world) == {"train", "in_domain", "shifted"}
    assert [len(world[split]) for split in ("train", "in_domain", "shifted")] == [6, 4, 4]
    world.save_to_disk(str(tmp_path))
    loaded = datasets.load_from_disk(str(tmp_path))
    for split in world:
        assert loaded[split].features == WORLD_FEATURES
        row = loaded[split][0]
        assert row["image"].size == (24, 24)
        assert len(row["captions"]) == config.captions_per_image
        assert row["domain"] == ("shifted" if split == "shifted" else "in_domain")
        assert len(row["shapes"]) == len(row["colors"]) == row["num_objects"]
        assert np.array_equal(_pixels(row["image"]), _pixels(generate_example(config, split, 0)["image"]))


def test_bad_data_config():
    with pytest.raises(ValueError, match="num_train=0"):
        WorldDataConfig(num_train=0)
    with pytest.raises(ValueError, match="Unknown split 'test'"):
        generate_example(WorldDataConfig(), "test", 0)


def test_tokenizer_round_trips_world_text_and_stops_at_full_stop():
    texts = [generate_example(WorldDataConfig(), "shifted", 0)["descriptive"], "geometric art with a circle."]
    tokenizer = train_world_tokenizer(texts)
    for text in texts:
        ids = tokenizer(text)["input_ids"]
        assert tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids) == text
    full_stop = tokenizer.convert_tokens_to_ids(".")
    assert full_stop_token_ids(tokenizer, [tokenizer.eos_token_id]) == sorted([full_stop, tokenizer.eos_token_id])
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


# ----------------------------------------------------------------------------- tiny build


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    """A tiny world built once for this module, in a fresh cache folder."""
    return load_or_build_world(str(tmp_path_factory.mktemp("cache")), tiny_world_config(), verbose=False)


def test_tiny_build_saves_and_loads_back(tiny_world):
    paths = tiny_world
    manifest = paths.read_manifest()
    assert manifest["fingerprint"] == tiny_world_config().fingerprint()
    assert set(manifest["retriever_p_at_1"]) == {"in_domain", "shifted"}
    assert 0.0 <= manifest["retriever_p_at_1"]["shifted"]["descriptive"] <= 100.0

    world = paths.load_dataset()
    assert len(world["train"]) == 48

    retriever = paths.load_retriever()
    images = world["in_domain"][:3]["image"]
    image_embeds = retriever.encode_images(retriever.preprocess(images))
    text_embeds = retriever.encode_texts(world["in_domain"][:3]["descriptive"])
    assert image_embeds.shape == text_embeds.shape == (3, 16)
    assert torch.allclose(image_embeds.norm(dim=-1), torch.ones(3), atol=1e-5)

    policy = paths.load_captioner()
    # The captioner's frozen encoder is the retriever's image tower, weight for weight.
    for name, value in policy.visual.state_dict().items():
        assert torch.equal(value, retriever.model.visual.state_dict()[name]), name
    captions = policy.generate_captions(policy.preprocess(images), max_new_tokens=8)
    assert len(captions.texts) == 3 and captions.sequences.shape[0] == 3


def test_build_is_reproducible_and_cached(tiny_world, tmp_path, monkeypatch):
    config = tiny_world_config()
    first = tiny_world
    second = build_world(str(tmp_path / "again"), config, verbose=False)
    for relative in ("retriever/open_clip_model.safetensors", "captioner/model.safetensors"):
        with open(f"{first.root}/{relative}", "rb") as a, open(f"{second.root}/{relative}", "rb") as b:
            assert a.read() == b.read(), relative

    def fail(*args, **kwargs):
        raise AssertionError("a cached world was rebuilt")

    cache_dir = os.path.dirname(first.root)
    monkeypatch.setattr(build_module, "build_world", fail)
    assert load_or_build_world(cache_dir, config, verbose=False).root == first.root
    with pytest.raises(AssertionError, match="rebuilt"):  # another config is another world
        load_or_build_world(cache_dir, tiny_world_config(seed=6), verbose=False)


def test_batch_larger_than_split_is_a_clear_error():
    from discritune_trl.world import train_retriever

    config = tiny_world_config()
    small = generate_world(WorldDataConfig(num_train=8, num_in_domain_test=1, num_shifted_test=1), progress=False)
    with pytest.raises(ValueError, match="fewer than batch_size=16"):
        train_retriever(small["train"], config.retriever, progress=False)


def test_regimes_change_only_the_human_captions():
    vague, good = WorldConfig.from_seed(0), WorldConfig.from_seed(0, "good")
    assert vague.fingerprint() == WorldConfig().fingerprint()  # the default world is the vague regime
    assert good.fingerprint() != vague.fingerprint()
    assert (
        good.retriever_fingerprint()
        == vague.retriever_fingerprint()
        != WorldConfig.from_seed(1).retriever_fingerprint()
    )
    shares = [WORLD_REGIMES[name].descriptive for name in ("vague", "mixed", "good")]
    assert shares == sorted(shares) and shares[0] == HumanCaptionStyle().descriptive
    with pytest.raises(ValueError, match="'great'.*'vague', 'mixed', 'good'"):
        WorldConfig.from_seed(0, "great")
    # Same scenes and pixels; the good regime's human captions describe more often.
    vague_row, good_row = (generate_example(config.data, "train", 3) for config in (vague, good))
    assert vague_row["image"].tobytes() == good_row["image"].tobytes()
    assert vague_row["descriptive"] == good_row["descriptive"]


def test_a_world_of_another_regime_copies_the_cached_retriever(tiny_world):
    config = tiny_world_config()
    config.data = dataclasses.replace(config.data, human_style=WORLD_REGIMES["good"])
    good = load_or_build_world(os.path.dirname(tiny_world.root), config, verbose=False)
    assert good.root != tiny_world.root
    assert good.read_manifest()["retriever_copied_from"] == tiny_world.root
    with open(tiny_world.retriever_checkpoint, "rb") as a, open(good.retriever_checkpoint, "rb") as b:
        assert a.read() == b.read()
    assert (
        good.read_manifest()["retriever_p_at_1"]["in_domain"]["descriptive"]
        == (tiny_world.read_manifest()["retriever_p_at_1"]["in_domain"]["descriptive"])
    )
    captions = [refs[0] for refs in good.load_dataset()["train"]["captions"]]
    assert captions != [refs[0] for refs in tiny_world.load_dataset()["train"]["captions"]]
