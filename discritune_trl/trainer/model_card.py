"""The model card written next to a DiscriTune-finetuned policy (and pushed to the Hub with it)."""

from __future__ import annotations

import importlib.metadata
import json
import os

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..rewards import describe_reward_model


CITATION = """@inproceedings{dessi2023discritune,
  title     = {Cross-Domain Image Captioning with Discriminative Finetuning},
  author    = {Dess{\\`i}, Roberto and Bevilacqua, Michele and Gualdoni, Eleonora and Carraz Rakotonirina, Nathana{\\"e}l
               and Franzon, Francesca and Baroni, Marco},
  booktitle = {Proceedings of the IEEE/CVF Conference on Computer Vision and Pattern Recognition (CVPR)},
  year      = {2023}
}"""

HYPERPARAMETERS = (
    "learning_rate",
    "lr_scheduler_type",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_steps",
    "num_train_epochs",
    "max_completion_length",
    "train_decoding",
    "num_generations",
    "baseline",
    "pool_size",
    "log_prob_reduction",
    "beta",
    "scale_rewards",
    "eval_num_beams",
    "eval_num_candidates",
    "seed",
)


# The metrics whose course the card tabulates ("Training curves"), by their logged names.
CURVE_METRICS = ("loss", "reward", "reward_std", "retrieval/accuracy", "kl", "completions/mean_length")
CURVE_ROWS = 10

# `datasets`' packaged builders: a dataset they loaded is local files, not a Hub dataset of that name.
PACKAGED_BUILDERS = frozenset(
    {"imagefolder", "audiofolder", "videofolder", "arrow", "csv", "json", "parquet", "text", "webdataset", "generator"}
)

FRAMEWORKS = (
    ("discritune-trl", "discritune-trl"),
    ("TRL", "trl"),
    ("Transformers", "transformers"),
    ("PyTorch", "torch"),
    ("Datasets", "datasets"),
    ("Tokenizers", "tokenizers"),
    ("PEFT", "peft"),
    ("open_clip", "open_clip_torch"),
)


def framework_versions() -> dict[str, str]:
    """The installed versions of the libraries a run depends on (as TRL's cards list them)."""
    versions = {}
    for name, distribution in FRAMEWORKS:
        try:
            versions[name] = importlib.metadata.version(distribution)
        except importlib.metadata.PackageNotFoundError:
            if distribution == "discritune-trl":  # run from a source checkout that is not installed
                versions[name] = "not installed (source checkout)"
    return versions


def training_curves_table(log_history: list[dict], rows: int = CURVE_ROWS) -> str | None:
    """A markdown table of the training metrics at (at most) `rows` logging steps spread over the run, the last
    one included; `None` when nothing was logged."""
    logs = [entry for entry in log_history if "loss" in entry and "step" in entry]
    if not logs:
        return None
    picked = sorted({round(i * (len(logs) - 1) / max(1, rows - 1)) for i in range(min(rows, len(logs)))})
    columns = [name for name in CURVE_METRICS if any(name in logs[i] for i in picked)]
    lines = ["| step | " + " | ".join(f"`{name}`" for name in columns) + " |"]
    lines.append("| ---: | " + " | ".join("---:" for _ in columns) + " |")
    for i in picked:
        cells = [f"{logs[i][name]:.4g}" if isinstance(logs[i].get(name), (int, float)) else "" for name in columns]
        lines.append(f"| {logs[i]['step']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def describe_dataset(dataset, dataset_name: str | None) -> tuple[str, str | None]:
    """`(what the card says of the training data, the Hub id for its `datasets` metadata or None)`.

    The name the user gave is reported as given, and listed as a Hub dataset only when it reads as a Hub id and is
    not a local path. Without one, a dataset loaded by one of `datasets`' packaged builders (an `imagefolder`, JSON,
    Parquet files...) is described as local files: never as the Hub dataset `imagefolder`.
    """
    if dataset_name:
        return f"`{dataset_name}`", _hub_id(dataset_name)
    info = getattr(dataset, "info", None)
    builder = getattr(info, "builder_name", None) or getattr(info, "dataset_name", None)
    if builder in PACKAGED_BUILDERS:
        return f"local files read with `datasets`' `{builder}` loader", None
    if builder:
        return f"`{builder}`", _hub_id(builder)
    return "images of the trainer's `train_dataset`", None


def run_tags(trainer, base_policy, adapters: bool, tags: list[str] | None) -> list[str]:
    """Tags true of the run: DiscriTune's, the policy's `model_type`, and `peft` / `lora` for adapters."""
    found = set(tags or []) | {"discritune", "image-captioning", "reinforce"}
    model_type = getattr(getattr(base_policy, "config", None), "model_type", None)
    if model_type:
        found.add(model_type)
    if adapters:
        found |= {"peft", "lora"}
    return sorted(found)


def _name_or_path(module) -> str:
    config = getattr(module, "config", None)
    return getattr(config, "_name_or_path", "") or getattr(config, "name_or_path", "") or ""


def _describe(module) -> str:
    name = _name_or_path(module)
    return f"`{name}` ({type(module).__name__})" if name else f"`{type(module).__name__}`"


def _candidates_line(reward: dict) -> str:
    if not reward["num_hard_negatives"]:
        return "candidates: the images of the batch (no mined hard negatives)"
    return (
        f"candidates: the images of the batch + {reward['num_hard_negatives']} mined hard negatives per caption from a "
        f"bank of {reward['hard_negative_bank_size']} images (similarity ceiling "
        f"{reward['hard_negative_similarity_ceiling']})"
    )


def _hub_id(name: str | None) -> str | None:
    """`name` when it reads as a Hub repo id (for the card's `base_model` / `datasets` fields), not a local path."""
    if not name or os.path.exists(name):
        return None
    try:
        validate_repo_id(name)
    except HFValidationError:
        return None
    return name


PIPELINE_USAGE = """
Or with transformers' pipeline (`import discritune_trl` registers ClipCap with it; `text=""` is plain captioning, a
prompt is continued):

```python
import discritune_trl
from transformers import pipeline

captioner = pipeline("image-text-to-text", model="{repo_id}")
caption = captioner(image, text="")[0]["generated_text"]
```
"""


def write_model_card(
    trainer,
    output_dir: str | None = None,
    model_name: str | None = None,
    dataset_name: str | None = None,
    tags: list[str] | None = None,
    metrics: dict | None = None,
) -> str:
    """Write `README.md` for the trained policy into `output_dir` (default: the trainer's) and return its path.

    `metrics` (e.g. the main job's results) are reported beside the trainer's own `eval_*` metrics.
    """
    args = trainer.args
    output_dir = output_dir or args.output_dir
    policy = trainer.accelerator.unwrap_model(trainer.model)
    adapters = hasattr(policy, "get_base_model")  # a peft.PeftModel: the folder holds LoRA adapters
    base_policy = policy.get_base_model() if adapters else policy
    reward = describe_reward_model(trainer.reward_model)  # the reward model actually used, not the config's fields
    hyperparameters = {name: getattr(args, name) for name in HYPERPARAMETERS if hasattr(args, name)}
    final_metrics = {
        key: value for entry in trainer.state.log_history for key, value in entry.items() if key.startswith("eval_")
    }
    final_metrics.update(metrics or {})
    dataset_name = dataset_name or getattr(trainer, "dataset_name", None)
    dataset_line, dataset_hub_id = describe_dataset(trainer.train_dataset, dataset_name)
    # A full ClipCap folder runs in transformers' image-text-to-text pipeline (ClipCapProcessor, ClipCapPolicy.generate);
    # other policies' folders and LoRA adapter folders do not, so they carry no pipeline_tag (see docs/trainer.md).
    pipeline_ready = getattr(getattr(base_policy, "config", None), "model_type", None) == "clipcap" and not adapters
    card_data = ModelCardData(
        library_name="discritune-trl",
        pipeline_tag="image-text-to-text" if pipeline_ready else None,
        tags=run_tags(trainer, base_policy, adapters, tags),
        base_model=_hub_id(_name_or_path(base_policy)),
        datasets=[dataset_hub_id] if dataset_hub_id else None,
    )
    repo_id = getattr(trainer, "hub_model_id", None) or model_name or output_dir
    curves = training_curves_table(trainer.state.log_history)
    versions = "\n".join(f"- {name}: {version}" for name, version in framework_versions().items())
    metrics_block = (
        f"```json\n{json.dumps(final_metrics, indent=2, default=str)}\n```"
        if final_metrics
        else "No evaluation was run."
    )
    card = f"""---
{card_data.to_yaml()}
---

# {model_name or os.path.basename(os.path.abspath(output_dir))}

An image captioner fine-tuned with **DiscriTune** (discriminative fine-tuning with REINFORCE): a frozen
text-to-image retriever reads each generated caption and must pick its image out of the other images of the
batch; the captioner is rewarded for captions that let it. No human captions were used for training.

- **Base captioner:** {_describe(base_policy)}{" with LoRA adapters (this repository holds the adapters)" if adapters else ""}; `model_type`: `{getattr(getattr(base_policy, "config", None), "model_type", "")}`
- **Retriever (frozen judge):** {", ".join(f"`{name}`" for name in reward["retrievers"])}
- **Reward model:** `{reward["class"]}`, reward_type `{reward["reward_type"]}`, {_candidates_line(reward)}
- **Training data:** {dataset_line or "images of the trainer's `train_dataset`"}
- **Trained with:** [discritune-trl](https://pypi.org/project/discritune-trl/) `DiscriTuneTrainer`

## Hyper-parameters

```json
{json.dumps(hyperparameters, indent=2, default=str)}
```

Reward model:

```json
{json.dumps(reward, indent=2, default=str)}
```

## Final metrics

{metrics_block}

## Training curves

{curves or "No training step was logged."}

`eval_p_at_1` is the paper's retrieval precision at 1: the frozen retriever reads the beam-search caption and
ranks the target among `eval_num_candidates` images.

## Usage

```python
from discritune_trl.models.auto import load_policy

policy = load_policy("{repo_id}")  # {"the base policy with the adapters applied (a peft.PeftModel)" if adapters else type(policy).__name__}
captions = policy.generate_captions(pixel_values=policy.preprocess(images), num_beams=5).texts
```
{PIPELINE_USAGE.format(repo_id=repo_id) if pipeline_ready else ""}
## Framework versions

{versions}

## Citation

```bibtex
{CITATION}
```
"""
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, "README.md")
    ModelCard(card).save(path)
    return path
