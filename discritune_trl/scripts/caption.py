"""`discritune-trl caption`: caption a folder of images, or a dataset's split, into a JSONL or CSV file.

    discritune-trl caption --model_name_or_path ./discritune-clipcap --dataset_name ./photos --output_file caps.jsonl

`--dataset_name` is a folder of image files (searched recursively; each row names its `file`, relative to the
folder), or, as everywhere else, a folder saved with `save_to_disk`, an image folder with a `metadata.jsonl`, or a
Hub dataset (then `--dataset_test_split` picks the split and each row names its `index`). The policy's class is read
from the checkpoint (`load_policy`). Decoding: beam search with `--num_beams` (5, the paper's test setting).
"""

from __future__ import annotations

import csv
import json
import os
import sys
from dataclasses import dataclass, field

import datasets
from trl import TrlParser

from ..evaluation import caption_images
from ..models.auto import load_policy
from ..utils.data import load_image_dataset
from .arguments import CAPTION_LENGTH_HELP, map_deprecated_max_new_tokens


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
SAVED_DATASET_FILES = ("dataset_info.json", "dataset_dict.json", "state.json", "metadata.jsonl", "metadata.csv")


@dataclass
class CaptionArguments:
    """What to caption with which policy, and where the captions go."""

    model_name_or_path: str = field(metadata={"help": "A policy folder (save_pretrained / save_model) or Hub id."})
    dataset_name: str = field(metadata={"help": "A folder of images, or a dataset (saved folder, Hub id)."})
    output_file: str = field(metadata={"help": "Where the captions go: .jsonl or .csv (by its extension)."})
    dataset_config: str | None = field(default=None, metadata={"help": "The Hub dataset's configuration."})
    dataset_test_split: str = field(default="test", metadata={"help": "The split to caption (not for a folder)."})
    image_column: str = field(default="image", metadata={"help": "The image column of a dataset."})
    num_beams: int = field(default=5, metadata={"help": "Beams for decoding (1: greedy)."})
    max_completion_length: int = field(default=40, metadata={"help": CAPTION_LENGTH_HELP})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Deprecated: use --max_completion_length."})
    batch_size: int = field(default=16, metadata={"help": "Images per generate call."})
    device: str = field(default="cpu", metadata={"help": "torch device to caption on."})
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bar."})

    def __post_init__(self):
        map_deprecated_max_new_tokens(self)


def image_files(folder: str) -> list[str]:
    """The image files under `folder`, relative to it, sorted."""
    found = [
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    ]
    return sorted(found)


def load_images(args: CaptionArguments) -> tuple[datasets.Dataset, str, list]:
    """`(dataset, key name, keys)`: a plain folder of images becomes a dataset of its files (decoded lazily)."""
    path = args.dataset_name
    plain_folder = os.path.isdir(path) and not any(os.path.exists(os.path.join(path, n)) for n in SAVED_DATASET_FILES)
    if plain_folder:
        files = image_files(path)
        if not files:
            raise ValueError(f"--dataset_name {path}: no image files ({', '.join(IMAGE_EXTENSIONS)}) in this folder.")
        dataset = datasets.Dataset.from_dict({args.image_column: [os.path.join(path, f) for f in files]})
        return dataset.cast_column(args.image_column, datasets.Image()), "file", files
    dataset = load_image_dataset(path, args.dataset_test_split, args.dataset_config)
    return dataset, "index", list(range(len(dataset)))


def write_captions(path: str, key: str, keys: list, captions: list[str]) -> None:
    """One row per image, `{key: ..., "caption": ...}`, as JSON lines or CSV by the file's extension."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        if path.endswith(".csv"):
            writer = csv.writer(handle)
            writer.writerow([key, "caption"])
            writer.writerows(zip(keys, captions))
        else:
            for item, caption in zip(keys, captions):
                handle.write(json.dumps({key: item, "caption": caption}) + "\n")


def parse_arguments(argv: list[str] | None = None, prog: str | None = None) -> tuple[CaptionArguments]:
    """The arguments from the command line and `--config captions.yaml` (TRL's `TrlParser`)."""
    return TrlParser(CaptionArguments, prog=prog).parse_args_and_config(argv)


def main(args: CaptionArguments) -> list[str]:
    """Caption the images, write `output_file`, return the captions."""
    if not args.output_file.endswith((".jsonl", ".csv")):
        raise ValueError(f"--output_file {args.output_file}: name a .jsonl or a .csv file.")
    dataset, key, keys = load_images(args)
    policy = load_policy(args.model_name_or_path).to(args.device).eval()
    captions = caption_images(
        policy,
        dataset,
        batch_size=args.batch_size,
        num_beams=args.num_beams,
        max_new_tokens=args.max_completion_length,
        image_column=args.image_column,
        disable_tqdm=args.disable_tqdm,
    )
    write_captions(args.output_file, key, keys, captions)
    print(f"{len(captions)} captions written to {args.output_file}", file=sys.stderr)
    return captions


if __name__ == "__main__":
    main(*parse_arguments())
