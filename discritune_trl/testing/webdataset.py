"""Write WebDataset `.tar` shards in img2dataset's layout (`key.jpg`, `key.txt`, `key.json`), for tests and
benchmarks."""

from __future__ import annotations

import io
import json
import os
import tarfile
from collections.abc import Sequence

from PIL import Image


def write_webdataset_shards(
    folder: str,
    images: Sequence[Image.Image],
    captions: Sequence[str] | None = None,
    images_per_shard: int = 8,
    broken: Sequence[int] = (),
) -> list[str]:
    """Write `images` as shards `folder/00000.tar`, `00001.tar`, ... of `images_per_shard` keys each.

    Each key `000000042` gets `.jpg` (JPEG, quality 95), `.txt` (its caption) and `.json` (img2dataset's metadata
    fields: `key`, `caption`, `status`, `width`, `height`). The images at the indices in `broken` are written as
    bytes that do not decode, as a failed download or a truncated file would leave them.

    Returns:
        The shard paths, in order.
    """
    os.makedirs(folder, exist_ok=True)
    captions = list(captions) if captions is not None else [f"image number {index}." for index in range(len(images))]
    paths = []
    for shard, start in enumerate(range(0, len(images), images_per_shard)):
        path = os.path.join(folder, f"{shard:05d}.tar")
        with tarfile.open(path, "w") as archive:
            for index in range(start, min(start + images_per_shard, len(images))):
                key = f"{index:09d}"
                image = images[index]
                if index in broken:
                    jpeg = b"\xff\xd8\xff\xe0 not a JPEG after all"
                else:
                    buffer = io.BytesIO()
                    image.convert("RGB").save(buffer, format="JPEG", quality=95)
                    jpeg = buffer.getvalue()
                metadata = {
                    "key": key,
                    "caption": captions[index],
                    "status": "success",
                    "width": image.width,
                    "height": image.height,
                }
                for suffix, payload in (
                    ("jpg", jpeg),
                    ("txt", captions[index].encode()),
                    ("json", json.dumps(metadata).encode()),
                ):
                    member = tarfile.TarInfo(f"{key}.{suffix}")
                    member.size = len(payload)
                    archive.addfile(member, io.BytesIO(payload))
        paths.append(path)
    return paths
