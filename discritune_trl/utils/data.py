"""Loading image datasets the way every example does: a saved Arrow folder, an image folder, or a Hub name."""

from __future__ import annotations

import os

import datasets


_SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json")


def load_image_dataset(
    path_or_name: str, split: str, config_name: str | None = None, streaming: bool = False
) -> datasets.Dataset | datasets.IterableDataset:
    """One split of an image dataset.

    Args:
        path_or_name: a folder written by `save_to_disk` (a `Dataset` or a `DatasetDict`), an image folder (with
            an optional `metadata.jsonl` holding e.g. a `captions` column), or a Hub dataset name (needs a
            connection or the `datasets` cache).
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
    if os.path.isdir(path_or_name):
        return datasets.load_dataset("imagefolder", data_dir=path_or_name, split=split, streaming=streaming)
    try:
        return datasets.load_dataset(path_or_name, config_name, split=split, streaming=streaming)
    except Exception as error:
        raise OSError(
            f"Could not load dataset {path_or_name!r} split {split!r} ({error}). Without a connection, pass a local "
            "folder: one saved with Dataset.save_to_disk, or an image folder with a metadata.jsonl."
        ) from error
