import json
import logging
import os
import subprocess
import sys

import datasets
import pytest

from discritune_trl.evaluation import build_hard_distractor_sets, caption_images, encode_gallery, evaluate_captions
from discritune_trl.testing.evaluation import PALETTE, ColorCaptionPolicy, ColorRetriever, solid_image


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def palette_dataset() -> datasets.Dataset:
    colors = list(PALETTE)
    return datasets.Dataset.from_dict(
        {
            "image": [solid_image(color, size=6) for color in colors],
            "captions": [[f"a {color} square.", f"something {color}"] for color in colors],
        },
        features=datasets.Features(
            {"image": datasets.Image(), "captions": datasets.Sequence(datasets.Value("string"))}
        ),
    )


def test_caption_images_uses_beam_five_by_default_and_reads_datasets():
    policy = ColorCaptionPolicy()
    captions = caption_images(policy, palette_dataset(), batch_size=3)
    assert captions == [f"a {color} square." for color in PALETTE]
    assert policy.last_generate_kwargs == {"num_beams": 5, "max_new_tokens": 40}


def test_evaluate_captions_combines_every_metric():
    dataset = palette_dataset()
    retriever = ColorRetriever()
    image_embeds = encode_gallery(retriever, dataset, batch_size=4)
    sets = build_hard_distractor_sets(image_embeds, num_distractors=4)
    captions = caption_images(ColorCaptionPolicy(), dataset)
    metrics = evaluate_captions(
        captions,
        retriever,
        image_embeds,
        references=dataset["captions"],
        num_candidates=10,
        tokenizer="simple",
        hard_sets=sets,
    )
    assert metrics["precision_at_1"] == 1.0 and metrics["recall_at_1"] == 1.0
    assert metrics["bleu_3"] == pytest.approx(1.0, abs=1e-6)  # 3-token captions have no 4-grams
    assert metrics["imagecode_accuracy"] == 1.0 and metrics["num_hard_sets"] == 2
    vague = evaluate_captions(
        caption_images(ColorCaptionPolicy(vague=True), dataset), retriever, image_embeds, num_candidates=10
    )
    assert vague["precision_at_1"] == 0.0 and "bleu_4" not in vague


def test_example_script_end_to_end(tmp_path, load_example):
    module = load_example("evaluate_captioner.py")
    for name, vague in (("descriptive", False), ("vague", True)):
        ColorCaptionPolicy(vague=vague).save_pretrained(str(tmp_path / name))
    palette_dataset().save_to_disk(str(tmp_path / "data_a"))
    datasets.DatasetDict({"test": palette_dataset()}).save_to_disk(str(tmp_path / "data_b"))
    argv = [
        "--model_name_or_path", str(tmp_path / "descriptive"), str(tmp_path / "vague"),
        "--model_names", "Descriptive", "Vague",
        "--dataset_paths", str(tmp_path / "data_a"), str(tmp_path / "data_b"),
        "--dataset_names", "SetA", "SetB",
        "--policy_class", "discritune_trl.testing.evaluation.ColorCaptionPolicy",
        "--retriever_class", "discritune_trl.testing.evaluation.ColorRetriever",
        "--retriever_kwargs", "{}",
        "--num_candidates", "10",
        "--tokenizer", "simple",
        "--hard_distractors", "true",
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    args, retriever_args = module.parse_arguments(argv)
    assert args.num_beams == 5 and args.dataset_name == [str(tmp_path / "data_a"), str(tmp_path / "data_b")]
    results = module.main(args, retriever_args)
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved == json.loads(json.dumps(results))
    assert set(saved) == {"SetA", "SetB"} and set(saved["SetA"]) == {"Descriptive", "Vague", "Human captions"}
    assert saved["SetB"]["Descriptive"]["precision_at_1"] == 1.0
    assert saved["SetB"]["Vague"]["precision_at_1"] == 0.0
    assert "bleu_4" not in saved["SetA"]["Human captions"]
    report = (tmp_path / "out" / "results.md").read_text()
    assert "| Model | SetA | SetB |\n|---|---:|---:|\n| Descriptive | 100.0 | 100.0 |\n| Vague | 0.0 | 0.0 |" in report
    assert "### SetA\n\n| Model | B@4 | M | C | S |" in report
    assert "METEOR skipped" in report
    captions = json.loads((tmp_path / "out" / "captions.json").read_text())
    assert captions["SetA"]["Vague"][0] == "a square."


def test_the_example_script_with_more_candidates_than_images_uses_every_image_and_can_be_silent(
    tmp_path, load_example, caplog, capfd
):
    """The trainer and the helpers handle too few images the same way (tests/test_bad_inputs.py,
    tests/test_trainer.py); so does the script: one warning per scored caption set, the count used in metrics.json."""
    module = load_example("evaluate_captioner.py")
    ColorCaptionPolicy().save_pretrained(str(tmp_path / "model"))
    palette_dataset().save_to_disk(str(tmp_path / "data"))
    argv = [
        "--model_name_or_path", str(tmp_path / "model"), "--dataset_name", str(tmp_path / "data"),
        "--policy_class", "discritune_trl.testing.evaluation.ColorCaptionPolicy",
        "--retriever_class", "discritune_trl.testing.evaluation.ColorRetriever", "--retriever_kwargs", "{}",
        "--num_candidates", "100", "--tokenizer", "simple", "--human_captions", "false", "--disable_tqdm", "true",
        "--output_dir", str(tmp_path / "out"),
    ]  # fmt: skip
    capfd.readouterr()  # the setup's save_to_disk bars
    with caplog.at_level(logging.WARNING):
        results = module.main(*module.parse_arguments(argv))
    metrics = results[str(tmp_path / "data")][str(tmp_path / "model")]
    assert metrics["num_candidates"] == len(PALETTE) and metrics["precision_at_1"] == 1.0
    assert f"{len(PALETTE)} images, fewer than num_candidates=100" in caplog.text
    assert "%|" not in capfd.readouterr().err  # --disable_tqdm: no bar


def test_importing_the_package_stays_light():
    code = "import sys, discritune_trl.evaluation; print([m for m in ('spacy', 'playwright', 'pycocoevalcap') if m in sys.modules])"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT}
    )
    assert out.stdout.strip() == "[]", out.stderr[-2000:]
