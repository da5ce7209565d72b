"""Human discrimination study (Section 4.2.4, Appendix A): static web pages to collect answers, and a scorer.

`export_human_study` writes one self-contained HTML page per block of trials (images embedded, no server,
no network) and a private `study_key.json` with the right answers, which never goes into a page. Each trial
shows a caption above the 10 images of a set, in two rows of five; the annotator clicks one, and at the end
downloads their answers as JSON tagged with the study id. `score_human_study` turns the answer files into
accuracy per caption type (Table 6), excluding annotators who fail more than one control item.

Blocks follow the paper's design: every block mixes caption types, never shows a set twice, and has the
same control items (easy sets with random distractors and a human caption) at random places.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

import datasets
from PIL import Image

from ..utils.images import to_rgb


CONTROL_TYPE = "control"
_PAGE_TEMPLATE = "study_page.html"


@dataclass
class HumanStudy:
    """What `export_human_study` wrote.

    Attributes:
        study_id (`str`): id stamped on every page and answers file.
        page_paths (`list[str]`): one HTML page per block; give each annotator one page.
        key_path (`str`): the answer key for `score_human_study`; keep it away from annotators.
    """

    study_id: str
    page_paths: list[str] = field(default_factory=list)
    key_path: str = ""


def build_control_sets(
    sets: datasets.Dataset, num_images: int, num_controls: int = 5, set_size: int = 10, seed: int = 0
) -> datasets.Dataset:
    """Easy control sets: random targets and distractors among images that appear in none of `sets`.

    Args:
        sets (`datasets.Dataset`): the study's sets (`target_index`, `distractor_indices` columns).
        num_images (`int`): size of the image collection the sets index.
        num_controls (`int`, defaults to `5`): control sets to build (5 per annotator in the paper).
        set_size (`int`, defaults to `10`): images per control set.
        seed (`int`, defaults to `0`): seed for the draw.

    Returns:
        `datasets.Dataset` with `set_id`, `target_index`, `distractor_indices`, `candidate_indices`, `target_position`.
    """
    used = set(sets["target_index"]) | {i for row in sets["distractor_indices"] for i in row}
    free = [i for i in range(num_images) if i not in used]
    needed = num_controls * set_size
    if len(free) < needed:
        raise ValueError(
            f"{num_controls} control sets of {set_size} images need {needed} images outside the study sets, "
            f"but only {len(free)} of {num_images} are free; lower num_controls or num_sets."
        )
    rng = random.Random(seed)
    chosen = rng.sample(free, needed)
    rows = {"set_id": [], "target_index": [], "distractor_indices": [], "candidate_indices": [], "target_position": []}
    for control in range(num_controls):
        members = chosen[control * set_size : (control + 1) * set_size]
        candidates = members[:]
        rng.shuffle(candidates)
        rows["set_id"].append(control)
        rows["target_index"].append(members[0])
        rows["distractor_indices"].append(members[1:])
        rows["candidate_indices"].append(candidates)
        rows["target_position"].append(candidates.index(members[0]))
    return datasets.Dataset.from_dict(rows)


def _image_data_uri(image: Image.Image, image_size: int) -> str:
    image = to_rgb([image])[0].copy()
    image.thumbnail((image_size, image_size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _blocks(num_sets: int, caption_types: list[str], block_size: int, rng: random.Random) -> list[list[tuple]]:
    """Latin-square blocks: each block shows each of its sets once, with caption types rotating across blocks.

    Sets are shuffled into groups of `block_size`; group g yields one block per caption type, block r giving
    set i the caption type `(i + r) mod T`. So every (set, caption type) pair is shown exactly once overall.
    """
    order = list(range(num_sets))
    rng.shuffle(order)
    blocks = []
    for start in range(0, num_sets, block_size):
        group = order[start : start + block_size]
        for rotation in range(len(caption_types)):
            block = [(s, caption_types[(k + rotation) % len(caption_types)]) for k, s in enumerate(group)]
            rng.shuffle(block)
            blocks.append(block)
    return blocks


def _trial(row: Mapping, caption_type: str, caption: str) -> dict:
    return {
        "set_id": int(row["set_id"]),
        "caption_type": caption_type,
        "caption": caption,
        "candidates": [int(i) for i in row["candidate_indices"]],
        "target_position": int(row["target_position"]),
    }


def export_human_study(
    output_dir: str,
    sets: datasets.Dataset,
    images: Sequence[Image.Image] | datasets.Dataset,
    captions: Mapping[str, Sequence[str]],
    control_sets: datasets.Dataset | None = None,
    control_captions: Sequence[str] | None = None,
    block_size: int = 100,
    image_size: int = 224,
    study_id: str | None = None,
    seed: int = 0,
    image_column: str = "image",
) -> HumanStudy:
    """Write the study pages (one per block) and the answer key.

    Args:
        output_dir (`str`): folder for `block_<k>.html` pages and `study_key.json` (created if needed).
        sets (`datasets.Dataset`): sets from `build_hard_distractor_sets` (`candidate_indices`, `target_position`).
        images (`Sequence[PIL.Image.Image]` or `datasets.Dataset`): the images the sets index; a dataset is
            read lazily from `image_column`.
        captions (`Mapping[str, Sequence[str]]`): caption type (e.g. `"human"`, `"ClipCap"`, `"DiscriTune"`)
            to one caption per row of `sets`, describing the set's target.
        control_sets (`datasets.Dataset`, *optional*): control sets (see `build_control_sets`), shown in every block.
        control_captions (`Sequence[str]`, *optional*): a human caption of each control target.
        block_size (`int`, defaults to `100`): sets per block (the paper's annotators saw 100 each).
        image_size (`int`, defaults to `224`): longest side of the embedded JPEG thumbnails.
        study_id (`str`, *optional*): defaults to a hash of the study's content, so two different studies
            never share an id.
        seed (`int`, defaults to `0`): seed for block composition and order.
        image_column (`str`, defaults to `"image"`): image column when `images` is a `datasets.Dataset`.

    Returns:
        `HumanStudy` with the study id and the paths written.
    """
    if not captions:
        raise ValueError("captions is empty: pass {caption_type: [one caption per set]}.")
    for caption_type, texts in captions.items():
        if caption_type == CONTROL_TYPE:
            raise ValueError(f"{CONTROL_TYPE!r} is reserved for control items; rename that caption type.")
        if len(texts) != len(sets):
            raise ValueError(f"captions[{caption_type!r}] has {len(texts)} captions for {len(sets)} sets.")
    if (control_sets is None) != (control_captions is None):
        raise ValueError("Pass both control_sets and control_captions, or neither.")
    if control_sets is not None and len(control_captions) != len(control_sets):
        raise ValueError(f"{len(control_captions)} control captions for {len(control_sets)} control sets.")
    if block_size < 1:
        raise ValueError(f"block_size={block_size} must be >= 1.")

    set_rows = list(sets)
    control_rows = [] if control_sets is None else list(control_sets)
    rng = random.Random(seed)
    caption_types = list(captions)
    blocks = _blocks(len(sets), caption_types, block_size, rng)
    trials: dict[str, dict] = {}
    block_trials: list[list[str]] = []
    for block in blocks:
        trial_ids = []
        for set_row, caption_type in block:
            row = set_rows[set_row]
            trial_id = f"s{row['set_id']}-{caption_type}"
            trials[trial_id] = _trial(row, caption_type, captions[caption_type][set_row])
            trial_ids.append(trial_id)
        for row, caption in zip(control_rows, control_captions or []):
            trial_id = f"c{row['set_id']}"
            trials[trial_id] = _trial(row, CONTROL_TYPE, caption)
            trial_ids.insert(rng.randrange(len(trial_ids) + 1), trial_id)
        block_trials.append(trial_ids)

    content = json.dumps({"trials": trials, "blocks": block_trials}, sort_keys=True)
    study_id = study_id or "study-" + hashlib.sha256(content.encode()).hexdigest()[:12]
    os.makedirs(output_dir, exist_ok=True)
    key_path = os.path.join(output_dir, "study_key.json")
    with open(key_path, "w") as handle:
        json.dump({"study_id": study_id, "trials": trials, "blocks": block_trials}, handle, indent=1)

    template = resources.files(__package__).joinpath(_PAGE_TEMPLATE).read_text(encoding="utf-8")
    image_cache: dict[int, str] = {}

    def data_uri(index: int) -> str:
        if index not in image_cache:
            image = images[index][image_column] if isinstance(images, datasets.Dataset) else images[index]
            image_cache[index] = _image_data_uri(image, image_size)
        return image_cache[index]

    study = HumanStudy(study_id=study_id, key_path=key_path)
    for block_id, trial_ids in enumerate(block_trials):
        page_trials = [
            {"trial_id": t, "caption": trials[t]["caption"], "candidates": [str(i) for i in trials[t]["candidates"]]}
            for t in trial_ids
        ]
        page_images = {str(i): data_uri(i) for t in trial_ids for i in trials[t]["candidates"]}
        data = {"study_id": study_id, "block_id": block_id, "trials": page_trials, "images": page_images}
        # "</" inside the JSON would end the <script> element early.
        page = template.replace("__STUDY_DATA__", json.dumps(data).replace("</", "<\\/"))
        path = os.path.join(output_dir, f"block_{block_id}.html")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(page)
        study.page_paths.append(path)
    return study


def _load_json(source: str | os.PathLike | Mapping) -> tuple[dict, str]:
    if isinstance(source, Mapping):
        return dict(source), "<answers dict>"
    with open(source) as handle:
        return json.load(handle), str(source)


def score_human_study(
    key: str | os.PathLike | Mapping,
    answers: Sequence[str | os.PathLike | Mapping],
    max_control_errors: int = 1,
) -> dict:
    """Accuracy per caption type from collected answer files (Table 6).

    Annotators who fail more than `max_control_errors` control items (an unanswered control counts as
    failed) are excluded, as in the paper.

    Args:
        key (`str`, `os.PathLike` or `Mapping`): `study_key.json` written by `export_human_study`, or its content.
        answers (`Sequence`): answer files downloaded from the study pages (paths or parsed JSON).
        max_control_errors (`int`, defaults to `1`): most control errors an annotator may make and be kept.

    Returns:
        `dict` with `accuracy` (`{caption_type: fraction}`), `num_answers` (`{caption_type: count}`),
        `control_accuracy` (over kept annotators), `annotators_kept` and `annotators_excluded` (annotator ids).
    """
    key, _ = _load_json(key)
    trials = key["trials"]
    caption_types = sorted({trial["caption_type"] for trial in trials.values()} - {CONTROL_TYPE})
    correct = dict.fromkeys(caption_types, 0)
    counts = dict.fromkeys(caption_types, 0)
    control_correct = control_count = 0
    kept, excluded = [], []
    for source in answers:
        payload, name = _load_json(source)
        if payload.get("study_id") != key["study_id"]:
            raise ValueError(
                f"{name} holds answers for study {payload.get('study_id')!r}, but the key is for study "
                f"{key['study_id']!r}; score each study with its own study_key.json."
            )
        annotator = payload.get("annotator_id", name)
        unknown = [a["trial_id"] for a in payload["answers"] if a["trial_id"] not in trials]
        if unknown:
            raise ValueError(f"{name} answers trials {unknown[:5]} that are not in study {key['study_id']!r}.")
        hits = {a["trial_id"]: a["choice"] == trials[a["trial_id"]]["target_position"] for a in payload["answers"]}
        block_id = payload.get("block_id")
        if not isinstance(block_id, int) or not 0 <= block_id < len(key["blocks"]):
            raise ValueError(
                f"{name} has block_id={block_id!r}; study {key['study_id']!r} has blocks 0..{len(key['blocks']) - 1}."
            )
        block = key["blocks"][block_id]
        controls = [t for t in block if trials[t]["caption_type"] == CONTROL_TYPE]
        control_errors = sum(not hits.get(t, False) for t in controls)
        if control_errors > max_control_errors:
            excluded.append(annotator)
            continue
        kept.append(annotator)
        control_correct += len(controls) - control_errors
        control_count += len(controls)
        for trial_id, hit in hits.items():
            caption_type = trials[trial_id]["caption_type"]
            if caption_type != CONTROL_TYPE:
                correct[caption_type] += hit
                counts[caption_type] += 1
    return {
        "accuracy": {t: correct[t] / counts[t] if counts[t] else None for t in caption_types},
        "num_answers": counts,
        "control_accuracy": control_correct / control_count if control_count else None,
        "annotators_kept": kept,
        "annotators_excluded": excluded,
    }
