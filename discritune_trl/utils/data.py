"""Loading image datasets the way every example does: a saved Arrow folder, an image folder, WebDataset `.tar`
shards, or a Hub name."""

from __future__ import annotations

import glob
import os

import datasets


_SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")
# The split of shards that sit directly in the folder (or match a glob): img2dataset writes one folder per run.
WEBDATASET_DEFAULT_SPLIT = "train"
# Member extensions `datasets`' WebDataset builder reads as images; the first present becomes the `image` column.
_WEBDATASET_IMAGE_FIELDS = ("jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff")


def load_image_dataset(
    path_or_name: str, split: str, config_name: str | None = None, streaming: bool = False
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of an image dataset.

    Args:
        path_or_name: a folder written by `save_to_disk` (a `Dataset` or a `DatasetDict`); WebDataset `.tar`
            shards in img2dataset's layout (`key.jpg`, `key.txt`, `key.json` per image): a folder holding them (its
            shards are the `"train"` split), a folder with one subfolder of shards per split (`train/`,
            `validation/`), a glob (`"/data/cc3m/0000*.tar"`) or one `.tar` file (both
            the `"train"` split); an image folder (with an optional `metadata.jsonl` holding e.g. a `captions`
            column); or a Hub dataset name (needs a connection or the `datasets` cache).
        split: the split to return.
        config_name: the Hub dataset's configuration, if it has several.
        streaming: return a `datasets.IterableDataset` read as it goes (Hub datasets and image folders are
            streamed from their files; a saved Arrow folder is memory-mapped and iterated).
    """
    if os.path.isdir(path_or_name) and any(
        os.path.exists(os.path.join(path_or_name, name)) for name in _SAVED_DATASET_FILES
    ):
        dataset = datasets.load_from_disk(path_or_name)
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(f"{path_or_name} has splits {list(dataset)}, not {split!r}; pick one of those.")
            dataset = dataset[split]
        return dataset.to_iterable_dataset() if streaming else dataset
    shards = webdataset_shards(path_or_name)
    if shards is not None:
        return _load_webdataset(path_or_name, shards, split, streaming)
    if os.path.isdir(path_or_name):
        return datasets.load_dataset("imagefolder", data_dir=path_or_name, split=split, streaming=streaming)
    try:
        return datasets.load_dataset(path_or_name, config_name, split=split, streaming=streaming)
    except Exception as error:
        raise OSError(
            f"Could not load dataset {path_or_name!r} split {split!r} ({error}). Without a connection, pass a local "
            "folder: one saved with Dataset.save_to_disk, or an image folder with a metadata.jsonl."
        ) from error


def webdataset_shards(path: str) -> dict[str, list[str]] | None:
    """`{split: [shard paths]}` when `path` names WebDataset `.tar` shards (see `load_image_dataset`), else `None`."""
    if path.endswith(".tar") and os.path.isfile(path):
        return {WEBDATASET_DEFAULT_SPLIT: [path]}
    if glob.has_magic(path):
        shards = sorted(name for name in glob.glob(path) if name.endswith(".tar"))
        return {WEBDATASET_DEFAULT_SPLIT: shards} if shards else None
    if not os.path.isdir(path):
        return None
    shards = sorted(glob.glob(os.path.join(glob.escape(path), "*.tar")))
    if shards:
        return {WEBDATASET_DEFAULT_SPLIT: shards}
    splits = {}
    for entry in sorted(os.listdir(path)):
        found = sorted(glob.glob(os.path.join(glob.escape(os.path.join(path, entry)), "*.tar")))
        if found:
            splits[entry] = found
    return splits or None


def _load_webdataset(
    path: str, shards: dict[str, list[str]], split: str, streaming: bool
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of WebDataset shards through `datasets`' own "webdataset" builder, its image member (`jpg`, ...)
    renamed `image`. Members are read lazily: an image that does not decode is skipped and counted by the trainer
    (collator or cache pass), as in every other format."""
    if split not in shards:
        raise ValueError(
            f"{path} holds WebDataset shards for the split(s) {sorted(shards)}, not {split!r}: shards directly in a "
            f"folder (or matched by a glob) are the {WEBDATASET_DEFAULT_SPLIT!r} split. Put each split's shards in "
            "its own subfolder (train/, validation/), or point at the other split's folder."
        )
    dataset = datasets.load_dataset("webdataset", data_files={split: shards[split]}, split=split, streaming=streaming)
    columns = dataset.column_names or list((dataset.features or {}).keys())
    if "image" not in columns:
        field = next((name for name in _WEBDATASET_IMAGE_FIELDS if name in columns), None)
        if field is None:
            raise ValueError(
                f"The WebDataset shards of {path} hold no image member (members: {columns}); expected one of "
                f"{list(_WEBDATASET_IMAGE_FIELDS)} per key, as img2dataset writes them (key.jpg, key.txt, key.json)."
            )
        # Renamed while not decoding: a stream's rename is a map that would otherwise decode every image as it
        # passes, so one broken member would stop the stream instead of being skipped by the trainer.
        dataset = dataset.cast_column(field, datasets.Image(decode=False)).rename_column(field, "image")
        dataset = dataset.cast_column("image", datasets.Image())
    return dataset
