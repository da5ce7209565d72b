"""`load_image_dataset`: saved Arrow folders, image folders with metadata.jsonl, and a clear error otherwise."""

import json

import datasets
import numpy as np
import pytest
from PIL import Image

from discritune_trl.utils.data import load_image_dataset
from discritune_trl.utils.images import image_batches


def write_images(folder, count: int) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for index in range(count):
        name = f"img{index}.png"
        Image.fromarray(np.full((8, 8, 3), index * 20, dtype=np.uint8)).save(folder / name)
        names.append(name)
    return names


def test_image_folder_with_metadata_jsonl_keeps_captions(tmp_path):
    names = write_images(tmp_path / "train", 3)
    with open(tmp_path / "train" / "metadata.jsonl", "w") as handle:
        for index, name in enumerate(names):
            handle.write(json.dumps({"file_name": name, "captions": [f"caption {index}"]}) + "\n")
    dataset = load_image_dataset(str(tmp_path), "train")
    assert len(dataset) == 3 and set(dataset.column_names) == {"image", "captions"}
    assert sorted(row["captions"][0] for row in dataset) == ["caption 0", "caption 1", "caption 2"]
    assert isinstance(dataset[0]["image"], Image.Image)


def test_saved_dataset_dict_and_a_missing_split(tmp_path):
    images = [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(4)]
    data = datasets.DatasetDict({"test": datasets.Dataset.from_dict({"image": images})})
    data.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "saved"))
    assert len(load_image_dataset(str(tmp_path / "saved"), "test")) == 4
    with pytest.raises(ValueError, match=r"has splits \['test'\], not 'train'"):
        load_image_dataset(str(tmp_path / "saved"), "train")


def test_streaming_reads_image_folders_and_saved_datasets_as_they_go(tmp_path):
    write_images(tmp_path / "folder" / "train", 3)
    datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8), (i, 0, 0)) for i in range(4)]}).cast_column(
        "image", datasets.Image()
    ).save_to_disk(str(tmp_path / "saved"))
    for path, count in ((tmp_path / "folder", 3), (tmp_path / "saved", 4)):
        stream = load_image_dataset(str(path), "train", streaming=True)
        assert isinstance(stream, datasets.IterableDataset)
        rows = list(stream)
        assert len(rows) == count and all(isinstance(row["image"], Image.Image) for row in rows)


def test_unknown_name_offline_says_what_to_pass_instead(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(OSError, match="pass a local folder"):
        load_image_dataset("some-user/no-such-dataset-here", "train")


def test_image_batches_from_lists_and_datasets():
    images = [Image.new("RGB", (4, 4)) for _ in range(5)]
    assert [len(batch) for batch in image_batches(images, 2)] == [2, 2, 1]
    dataset = datasets.Dataset.from_dict({"picture": images}).cast_column("picture", datasets.Image())
    assert [len(batch) for batch in image_batches(dataset, 3, image_column="picture")] == [3, 2]


# ---- WebDataset shards (img2dataset's layout) ---------------------------------------------------------------


def _shard_images(count: int) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(count)]


def test_webdataset_shards_load_as_folder_glob_file_and_split_folders(tmp_path):
    from discritune_trl.testing.webdataset import write_webdataset_shards
    from discritune_trl.utils.images import decode_image

    images = _shard_images(10)
    shards = write_webdataset_shards(str(tmp_path / "flat"), images, images_per_shard=4, broken=[6])
    assert len(shards) == 3
    for streaming in (False, True):
        for path in (str(tmp_path / "flat"), str(tmp_path / "flat" / "*.tar")):
            dataset = load_image_dataset(path, "train", streaming=streaming)
            assert isinstance(dataset, datasets.IterableDataset if streaming else datasets.Dataset)
            assert isinstance(dataset.features["image"], datasets.Image)
            # Images are read lazily, so the broken member is only found when decoded (where the trainer counts it).
            rows = list(dataset.cast_column("image", datasets.Image(decode=False)))
            assert len(rows) == 10 and {"image", "txt", "json", "__key__"} <= set(rows[0])
            assert [row["txt"] for row in rows] == [f"image number {index}." for index in range(10)]
            assert rows[0]["json"]["status"] == "success"
        decoded, failed = 0, []
        for index, row in enumerate(rows):
            try:
                decode_image(row["image"])
                decoded += 1
            except Exception:
                failed.append(index)
        assert decoded == 9 and failed == [6]
    assert len(load_image_dataset(shards[1], "train")) == 4  # one .tar file
    # One subfolder per split, as two img2dataset runs write them.
    write_webdataset_shards(str(tmp_path / "split" / "train"), images[:6], images_per_shard=4)
    write_webdataset_shards(str(tmp_path / "split" / "validation"), images[6:], images_per_shard=4)
    assert len(load_image_dataset(str(tmp_path / "split"), "validation")) == 4
    with pytest.raises(ValueError, match=r"shards for the split\(s\) \['train'\], not 'test'.*own subfolder"):
        load_image_dataset(str(tmp_path / "flat"), "test")


def test_webdataset_shards_train_and_evaluate_with_a_broken_member(tmp_path):
    """Map-style (cached and not) and streaming: the broken member is skipped and counted, training runs, and
    evaluation captions every readable image."""
    from discritune_trl import DiscriminativeRewardModel, DiscriTuneConfig, DiscriTuneTrainer
    from discritune_trl.testing.clipcap import tiny_clipcap_policy
    from discritune_trl.testing.retrievers import tiny_open_clip_retriever
    from discritune_trl.testing.webdataset import write_webdataset_shards

    write_webdataset_shards(str(tmp_path / "shards"), _shard_images(12), images_per_shard=5, broken=[3])
    for streaming, cache in ((False, True), (False, False), (True, False)):
        args = DiscriTuneConfig(
            output_dir=str(tmp_path / f"out-{streaming}-{cache}"),
            per_device_train_batch_size=4,
            per_device_eval_batch_size=5,
            max_steps=3,
            max_completion_length=4,
            eval_num_beams=1,
            eval_num_candidates=5,
            logging_steps=1,
            save_strategy="no",
            use_cpu=True,
            report_to="none",
            disable_tqdm=True,
            cache_embeddings=cache,
            pool_size=4,
        )
        trainer = DiscriTuneTrainer(
            model=tiny_clipcap_policy(seed=0),
            reward_model=DiscriminativeRewardModel(tiny_open_clip_retriever(seed=0)),
            args=args,
            train_dataset=load_image_dataset(str(tmp_path / "shards"), "train", streaming=streaming),
            eval_dataset=load_image_dataset(str(tmp_path / "shards"), "train", streaming=streaming),
        )
        trainer.train()
        assert trainer.state.global_step == 3
        logged = [entry["data/unreadable_images"] for entry in trainer.state.log_history if "loss" in entry]
        assert logged[-1] == 1.0, (streaming, cache, logged)
        captions, text_embeds, image_embeds = trainer.caption_dataset(trainer.eval_dataset)
        assert len(captions) == text_embeds.shape[0] == image_embeds.shape[0] == 11
        assert "eval_p_at_1" in trainer.evaluate()
