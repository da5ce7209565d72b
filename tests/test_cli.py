"""`discritune-trl train|evaluate|caption|world|env` end to end on tiny models, through the entry function (and, in
one slow test, through the console script of a non-editable `pip install .` in a fresh virtual environment)."""

import csv
import json
import os
import shutil
import subprocess
import sys

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from discritune_trl.models import load_policy
from discritune_trl.models.blip import BlipPolicy
from discritune_trl.models.vlm import VLMPolicy
from discritune_trl.scripts import caption as caption_script
from discritune_trl.scripts import evaluate as evaluate_script
from discritune_trl.scripts.cli import main
from discritune_trl.testing.blip import tiny_blip
from discritune_trl.testing.clipcap import tiny_clipcap_policy
from discritune_trl.testing.evaluation import PALETTE, ColorCaptionPolicy, solid_image
from discritune_trl.testing.retrievers import tiny_open_clip_config, tiny_open_clip_retriever
from discritune_trl.testing.vlm import tiny_vlm


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def images(count: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(count)]


def retriever_flags(folder) -> list[str]:
    """A tiny open_clip retriever on disk (checkpoint + architecture JSON) and the flags that name it."""
    torch.save(tiny_open_clip_retriever(seed=0).model.state_dict(), folder / "retriever.pt")
    (folder / "retriever.json").write_text(json.dumps(tiny_open_clip_config()))
    return [
        "--retriever_model_cfg",
        str(folder / "retriever.json"),
        "--retriever_checkpoint",
        str(folder / "retriever.pt"),
    ]


@pytest.fixture
def image_data(tmp_path):
    data = datasets.Dataset.from_dict({"image": images(8)}).cast_column("image", datasets.Image())
    data.save_to_disk(str(tmp_path / "data"))
    return str(tmp_path / "data")


@pytest.mark.parametrize("captioner", ["clipcap", "blip"])
def test_train_picks_the_captioner_from_the_checkpoint(captioner, tmp_path, image_data):
    policy = tiny_clipcap_policy(seed=0) if captioner == "clipcap" else BlipPolicy.from_blip(*tiny_blip())
    policy.save_pretrained(str(tmp_path / "policy"))
    output_dir = tmp_path / "out"
    lora = ["--use_peft", "--lora_r", "2", "--lora_dropout", "0.1"] if captioner == "clipcap" else []
    main(
        [
            "train",
            "--model_name_or_path", str(tmp_path / "policy"),
            "--dataset_name", image_data, "--dataset_test_split", "",
            *retriever_flags(tmp_path), *lora,
            "--output_dir", str(output_dir),
            "--max-steps", "1", "--per_device_train_batch_size", "4", "--max_completion_length", "4",
            "--report_to", "none", "--save_strategy", "no", "--use_cpu",
        ]
    )  # fmt: skip
    if captioner == "clipcap":
        adapter = json.loads((output_dir / "adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_dropout"], adapter["target_modules"]) == (2, 0.1, ["c_attn"])
    else:
        assert json.loads((output_dir / "config.json").read_text())["model_type"] == policy.config.model_type
    assert "DiscriTune" in (output_dir / "README.md").read_text()


def test_train_refuses_a_model_config_flag_the_policies_cannot_take(tmp_path, image_data):
    tiny_clipcap_policy(seed=0).save_pretrained(str(tmp_path / "policy"))
    argv = ["train", "--model_name_or_path", str(tmp_path / "policy"), "--dataset_name", image_data]
    with pytest.raises(ValueError, match="--load_in_4bit=True"):
        main([*argv, *retriever_flags(tmp_path), "--load_in_4bit", "--use_peft", "--use_cpu"])


def test_evaluate_with_the_shared_retriever_flags(tmp_path):
    ColorCaptionPolicy(vague=False).save_pretrained(str(tmp_path / "descriptive"))
    colors = list(PALETTE)
    data = datasets.Dataset.from_dict({"image": [solid_image(color, size=6) for color in colors]})
    data.cast_column("image", datasets.Image()).save_to_disk(str(tmp_path / "data"))
    main(
        [
            "evaluate",
            "--model_name_or_path", str(tmp_path / "descriptive"),
            "--policy_class", "discritune_trl.testing.evaluation.ColorCaptionPolicy",
            "--dataset_name", str(tmp_path / "data"),
            "--retriever_class", "discritune_trl.testing.evaluation.ColorRetriever",
            "--num_candidates", "10", "--tokenizer", "simple", "--human_captions", "false",
            "--output_dir", str(tmp_path / "eval"),
        ]
    )  # fmt: skip
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics[str(tmp_path / "data")][str(tmp_path / "descriptive")]["precision_at_1"] == 1.0


def test_caption_a_folder_to_jsonl_and_a_dataset_to_csv(tmp_path, image_data):
    tiny_clipcap_policy(seed=0).save_pretrained(str(tmp_path / "policy"))
    folder = tmp_path / "photos" / "nested"
    folder.mkdir(parents=True)
    for index, image in enumerate(images(3, seed=1)):
        image.save(folder / f"{index}.png")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    common = ["--model_name_or_path", str(tmp_path / "policy"), "--max_completion_length", "4", "--num_beams", "2"]
    main(["caption", *common, "--dataset_name", str(tmp_path / "photos"), "--output_file", str(tmp_path / "c.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "c.jsonl").read_text().splitlines()]
    assert [row["file"] for row in rows] == [os.path.join("nested", f"{i}.png") for i in range(3)]
    assert all(isinstance(row["caption"], str) for row in rows)

    argv = ["--dataset_name", image_data, "--dataset_test_split", "train", "--output_file", str(tmp_path / "c.csv")]
    main(["caption", *common, *argv])
    with open(tmp_path / "c.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["index"] for row in table] == [str(i) for i in range(8)]


@pytest.mark.parametrize("command", ["caption", "evaluate"])
def test_caption_and_evaluate_take_trls_caption_length_and_the_old_name_with_a_warning(command):
    module = caption_script if command == "caption" else evaluate_script
    required = ["--model_name_or_path", "m", "--dataset_name", "d"] + (
        ["--output_file", "c.jsonl"] if command == "caption" else ["--output_dir", "o"]
    )
    (args, *_) = module.parse_arguments([*required, "--max_completion_length", "7"])
    assert args.max_completion_length == 7
    with pytest.warns(FutureWarning, match="--max_completion_length=9"):
        (args, *_) = module.parse_arguments([*required, "--max_new_tokens", "9"])
    assert (args.max_completion_length, args.max_new_tokens) == (9, None)
    with pytest.raises(ValueError, match="--max_new_tokens=9 \\(deprecated\\) and --max_completion_length=7 disagree"):
        module.parse_arguments([*required, "--max_new_tokens", "9", "--max_completion_length", "7"])


def test_world_info_and_env(tmp_path, capsys):
    main(["world", "info", "--cache-dir", str(tmp_path / "empty")])
    assert "No such world in" in capsys.readouterr().out
    main(["env"])
    out = capsys.readouterr().out
    assert "- discritune-trl version:" in out and "- trl version:" in out and "- torch version:" in out


def test_unknown_command_and_help(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    assert all(f"  {command} " in out for command in ("train", "evaluate", "caption", "world", "env"))
    with pytest.raises(SystemExit, match="unknown command 'trian'"):
        main(["trian"])


def test_console_script_from_a_non_editable_install(tmp_path, image_data):
    """`pip install .` (not editable) into a fresh venv that reuses this venv's packages: the installed
    `discritune-trl` runs, from the installed package, not from the checkout."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python, script = venv / "bin" / "python", venv / "bin" / "discritune-trl"
    # This venv's packages (pip, setuptools, torch, ...) through a .pth file: `--system-site-packages` would see the
    # base interpreter's, not this venv's. The editable install of the checkout is not seen (its own .pth is not read).
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    parent = subprocess.run(
        [sys.executable, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    with open(os.path.join(purelib, "parent_venv.pth"), "w") as handle:
        handle.write(parent + "\n")
    build = tmp_path / "build"
    # pip builds in place: build from a copy of the sources, without the checkout's venv, git and build leftovers
    shutil.copytree(ROOT, build, ignore=shutil.ignore_patterns(".*", "*.egg-info", "build", "__pycache__"))
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", str(build)],
        check=True,
    )
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    run = {"env": env, "cwd": str(tmp_path), "capture_output": True, "text": True, "check": True}
    where = subprocess.run([str(python), "-c", "import discritune_trl; print(discritune_trl.__file__)"], **run)
    assert str(venv) in where.stdout
    assert "- discritune-trl version:" in subprocess.run([str(script), "env"], **run).stdout
    tiny_clipcap_policy(seed=0).save_pretrained(str(tmp_path / "policy"))
    subprocess.run(
        [
            str(script), "train", "--model_name_or_path", str(tmp_path / "policy"),
            "--dataset_name", image_data, "--dataset_test_split", "", *retriever_flags(tmp_path),
            "--output_dir", str(tmp_path / "out"), "--max_steps", "1", "--per_device_train_batch_size", "4",
            "--max_completion_length", "4", "--report_to", "none", "--save_strategy", "no", "--use_cpu",
        ],
        **run,
    )  # fmt: skip
    subprocess.run(
        [
            str(script), "caption", "--model_name_or_path", str(tmp_path / "out"), "--dataset_name", image_data,
            "--dataset_test_split", "train", "--output_file", str(tmp_path / "c.jsonl"), "--max_completion_length", "4",
        ],
        **run,
    )  # fmt: skip
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 8
    assert (
        "No such world in"
        in subprocess.run([str(script), "world", "info", "--cache-dir", str(tmp_path / "w")], **run).stdout
    )


def test_train_wraps_a_plain_vision_language_model_checkpoint(tmp_path, image_data):
    model, processor = tiny_vlm("qwen2_vl")
    model.save_pretrained(tmp_path / "qwen2_vl")  # a transformers folder, as on the Hub: model_type qwen2_vl
    processor.save_pretrained(tmp_path / "qwen2_vl")
    output_dir = tmp_path / "out"
    main(
        [
            "train",
            "--model_name_or_path", str(tmp_path / "qwen2_vl"),
            "--dataset_name", image_data, "--dataset_test_split", "",
            *retriever_flags(tmp_path),
            "--output_dir", str(output_dir),
            "--max-steps", "1", "--per_device_train_batch_size", "4", "--max_completion_length", "4",
            "--report_to", "none", "--save_strategy", "no", "--use_cpu",
        ]
    )  # fmt: skip
    trained = load_policy(str(output_dir))
    assert type(trained) is VLMPolicy and trained.config.vlm_config["model_type"] == "qwen2_vl"
    before = VLMPolicy.from_vlm(model, processor).state_dict()
    assert any(not torch.equal(p, before[name]) for name, p in trained.state_dict().items())
