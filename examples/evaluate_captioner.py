"""Evaluate captioners side by side as the DiscriTune paper does (P@1, recall@k, BLEU/METEOR/ROUGE-L/CIDEr).

    python examples/evaluate_captioner.py --model_name_or_path ./a ./b --dataset_name ./coco_test --output_dir ./eval

A thin wrapper around `discritune_trl.scripts.evaluate` (also `discritune-trl evaluate`); see `--help`.
"""

from discritune_trl.scripts.evaluate import main, parse_arguments


if __name__ == "__main__":
    main(*parse_arguments())
