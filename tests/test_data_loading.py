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
