"""`discritune-trl evaluate`: evaluate one or more captioners the way the DiscriTune paper does, side by side.

For every dataset and every model: caption the test images (beam search, 5 beams), then compute
text-to-image retrieval P@1 among 100 candidates and recall@k with a frozen retriever, captioning metrics
against the reference captions (BLEU-4, METEOR, ROUGE-L, CIDEr, SPICE when installed), and optionally the
accuracy among hard distractors. Writes `metrics.json`, `results.md` (the paper's Tables 1-3 layout) and
the generated captions to `--output_dir`.

    discritune-trl evaluate \
        --model_name_or_path ./clipcap-coco ./discritune-coco --model_names ClipCap-COCO DiscriTune-COCO \
        --dataset_name ./coco_test ./flickr_test --dataset_names COCO Flickr --dataset_test_split test \
        --output_dir ./eval

(`python examples/evaluate_captioner.py` is a thin wrapper around this module.) The retriever is chosen with the
same flags as in `discritune-trl train` (`--retriever_model_name`, `--retriever_pretrained`,
`--retriever_checkpoint`, `--retriever_model_cfg`, `--retriever_transformers_model`); the old `--dataset_paths`
and `--split` still work as aliases of `--dataset_name` and `--dataset_test_split`.

Any of these can come from a YAML file instead, `--config eval.yaml` (TRL's `TrlParser`; flags override it).

Datasets are `datasets` folders saved with `save_to_disk`, image folders with a `metadata.jsonl`, or Hub
names (when connected), with an `image` column and, for captioning metrics, a `captions` column.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

from trl import TrlParser

from ..evaluation import (
    build_hard_distractor_sets,
    caption_images,
    encode_gallery,
    evaluate_captions,
    evaluation_report_markdown,
)
from ..models.auto import load_policy
from ..models.policy import CaptioningPolicy
from ..utils.data import load_image_dataset
from ..utils.progress import datasets_progress_bars
from .arguments import (
    CAPTION_LENGTH_HELP,
    RetrieverArguments,
    build_retriever,
    map_deprecated_max_new_tokens,
    resolve_class,
)


@dataclass
class EvaluationArguments:
    """Command-line arguments of `evaluate_captioner.py`."""

    model_name_or_path: list[str] = field(
        metadata={"help": "One or more policy checkpoints (local folders or Hub ids)."}
    )
    dataset_name: list[str] = field(
        metadata={
            "help": "One or more datasets (save_to_disk folder, image folder, Hub id).",
            "aliases": ["--dataset_paths"],
        }
    )
    output_dir: str = field(metadata={"help": "Where metrics.json, results.md and captions go."})
    model_names: list[str] | None = field(default=None, metadata={"help": "Display names (default: the paths)."})
    dataset_names: list[str] | None = field(default=None, metadata={"help": "Display names (default: the paths)."})
    policy_class: str = field(
        default="auto",
        metadata={"help": "Dotted path of the policy class, or 'auto' to pick by the checkpoint's config model_type."},
    )
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split to evaluate when a path holds several.", "aliases": ["--split"]}
    )
    image_column: str = field(default="image")
    captions_column: str = field(default="captions", metadata={"help": "Reference captions (list of strings)."})
    num_beams: int = field(default=5, metadata={"help": "Beams for test-time decoding (the paper uses 5)."})
    max_completion_length: int = field(default=40, metadata={"help": CAPTION_LENGTH_HELP})
    max_new_tokens: int | None = field(default=None, metadata={"help": "Deprecated: use --max_completion_length."})
    batch_size: int = field(default=32)
    num_candidates: int = field(
        default=100,
        metadata={
            "help": "Candidates per caption for P@1 (target + random). A dataset with fewer images uses all of them, "
            "with a warning; metrics.json reports the count used."
        },
    )
    seed: int = field(default=0)
    tokenizer: str = field(default="ptb", metadata={"help": "'ptb' (COCO toolkit, Java) or 'simple' (no Java)."})
    human_captions: bool = field(
        default=True, metadata={"help": "Add a 'Human captions' retrieval row using each image's first reference."}
    )
    hard_distractors: bool = field(
        default=False, metadata={"help": "Also report accuracy among 10 hard candidates (Appendix A/D sets)."}
    )
    device: str = field(default="cpu")
    disable_tqdm: bool = field(default=False, metadata={"help": "No progress bars (captioning, encoding)."})

    def __post_init__(self):
        map_deprecated_max_new_tokens(self)


def load_evaluation_policy(path: str, policy_class: str) -> CaptioningPolicy:
    if policy_class != "auto":
        return resolve_class(policy_class).from_pretrained(path)
    return load_policy(path)


def parse_arguments(
    argv: list[str] | None = None, prog: str | None = None
) -> tuple[EvaluationArguments, RetrieverArguments]:
    """The arguments from the command line and `--config eval.yaml` (TRL's `TrlParser`; flags override the YAML)."""
    return TrlParser((EvaluationArguments, RetrieverArguments), prog=prog).parse_args_and_config(argv)


def main(args: EvaluationArguments, retriever_args: RetrieverArguments | None = None) -> dict:
    """Caption every dataset with every model, score the captions, write the reports; returns the metrics."""
    with datasets_progress_bars(enabled=not args.disable_tqdm):  # loading the datasets draws bars too
        return _evaluate(args, retriever_args)


def _evaluate(args: EvaluationArguments, retriever_args: RetrieverArguments | None) -> dict:
    model_names = args.model_names or args.model_name_or_path
    dataset_names = args.dataset_names or args.dataset_name
    if len(model_names) != len(args.model_name_or_path) or len(dataset_names) != len(args.dataset_name):
        raise ValueError("Pass one --model_names entry per model and one --dataset_names entry per dataset.")
    os.makedirs(args.output_dir, exist_ok=True)
    retriever = build_retriever(retriever_args or RetrieverArguments()).to(args.device)
    policies = {
        name: load_evaluation_policy(path, args.policy_class)
        for name, path in zip(model_names, args.model_name_or_path)
    }

    results: dict = {}
    generated: dict = {}
    for dataset_name, path in zip(dataset_names, args.dataset_name):
        dataset = load_image_dataset(path, args.dataset_test_split)
        image_embeds = encode_gallery(
            retriever,
            dataset,
            batch_size=args.batch_size,
            image_column=args.image_column,
            disable_tqdm=args.disable_tqdm,
        )
        references = dataset[args.captions_column] if args.captions_column in dataset.column_names else None
        hard_sets = build_hard_distractor_sets(image_embeds, seed=args.seed) if args.hard_distractors else None
        common = dict(
            num_candidates=args.num_candidates,
            seed=args.seed,
            tokenizer=args.tokenizer,
            hard_sets=hard_sets,
            disable_tqdm=args.disable_tqdm,
        )
        results[dataset_name] = {}
        generated[dataset_name] = {}
        for model_name, policy in policies.items():
            policy.to(args.device)
            captions = caption_images(
                policy,
                dataset,
                batch_size=args.batch_size,
                num_beams=args.num_beams,
                max_new_tokens=args.max_completion_length,
                image_column=args.image_column,
                disable_tqdm=args.disable_tqdm,
            )
            generated[dataset_name][model_name] = captions
            results[dataset_name][model_name] = evaluate_captions(
                captions, retriever, image_embeds, references=references, **common
            )
        if references is not None and args.human_captions:
            human = [refs[0] if refs else "" for refs in references]
            results[dataset_name]["Human captions"] = evaluate_captions(human, retriever, image_embeds, **common)

    with open(os.path.join(args.output_dir, "metrics.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    with open(os.path.join(args.output_dir, "captions.json"), "w") as handle:
        json.dump(generated, handle, indent=1)
    with open(os.path.join(args.output_dir, "results.md"), "w") as handle:
        handle.write(evaluation_report_markdown(results))
    return results


if __name__ == "__main__":
    main(*parse_arguments())
