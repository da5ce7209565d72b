import json
import os
import random
import re

import pytest
import torch
from PIL import Image

from discritune_trl.evaluation.distractors import build_hard_distractor_sets
from discritune_trl.evaluation.human_study import build_control_sets, export_human_study, score_human_study


CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


def make_study(tmp_path, study_id=None, captions_suffix=""):
    rng = random.Random(0)
    images = [Image.new("RGB", (12, 12), tuple(rng.randrange(256) for _ in range(3))) for _ in range(40)]
    embeds = torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    sets = build_hard_distractor_sets(embeds, num_distractors=9, max_similarity=1.0, num_sets=2)
    controls = build_control_sets(sets, num_images=40, num_controls=2)
    captions = {
        "human": [f"human caption {i}{captions_suffix}" for i in range(2)],
        "DiscriTune": [f"discritune caption </script> {i}" for i in range(2)],
    }
    study = export_human_study(
        str(tmp_path), sets, images, captions, controls, ["control a", "control b"], block_size=2, study_id=study_id
    )
    with open(study.key_path) as handle:
        key = json.load(handle)
    return study, key


def page_data(path):
    html = open(path, encoding="utf-8").read()
    match = re.search(r'<script id="study-data" type="application/json">(.*?)</script>', html, re.S)
    return html, json.loads(match.group(1))


def test_export_blocks_mix_types_never_repeat_sets_and_hide_the_key(tmp_path):
    study, key = make_study(tmp_path)
    assert len(study.page_paths) == 2 and key["study_id"] == study.study_id
    shown = []
    for block_id, path in enumerate(study.page_paths):
        html, data = page_data(path)
        assert data["study_id"] == study.study_id and data["block_id"] == block_id
        assert "target_position" not in html and "http" not in html.split("<script")[0]
        assert len(data["trials"]) == 4  # 2 sets + 2 controls
        for trial in data["trials"]:
            assert len(trial["candidates"]) == 10
            assert all(data["images"][c].startswith("data:image/jpeg;base64,") for c in trial["candidates"])
        block = key["blocks"][block_id]
        assert [t["trial_id"] for t in data["trials"]] == block
        study_trials = [key["trials"][t] for t in block if key["trials"][t]["caption_type"] != "control"]
        assert len({t["set_id"] for t in study_trials}) == 2  # each set once per block
        assert {t["caption_type"] for t in study_trials} == {"human", "DiscriTune"}  # types mixed
        assert sum(key["trials"][t]["caption_type"] == "control" for t in block) == 2
        shown += [(t["set_id"], t["caption_type"]) for t in study_trials]
    assert sorted(shown) == sorted((s, c) for s in (0, 1) for c in ("human", "DiscriTune"))
    # Control images come from outside the study sets.
    study_images = {i for t in key["trials"].values() if t["caption_type"] != "control" for i in t["candidates"]}
    control_images = {i for t in key["trials"].values() if t["caption_type"] == "control" for i in t["candidates"]}
    assert not study_images & control_images


def test_study_ids_differ_between_studies(tmp_path):
    first, _ = make_study(tmp_path / "a")
    second, _ = make_study(tmp_path / "b", captions_suffix="!")
    assert first.study_id != second.study_id
    assert make_study(tmp_path / "c", study_id="pilot-1")[0].study_id == "pilot-1"


def answers_for(key, block_id, annotator, wrong_types=(), wrong_controls=0):
    answers = []
    for trial_id in key["blocks"][block_id]:
        trial = key["trials"][trial_id]
        wrong = trial["caption_type"] in wrong_types
        if trial["caption_type"] == "control" and wrong_controls > 0:
            wrong, wrong_controls = True, wrong_controls - 1
        choice = (trial["target_position"] + 1) % 10 if wrong else trial["target_position"]
        answers.append({"trial_id": trial_id, "choice": choice, "response_time_ms": 900})
    return {"study_id": key["study_id"], "block_id": block_id, "annotator_id": annotator, "answers": answers}


def test_scorer_accuracy_per_type_and_control_exclusion(tmp_path):
    _, key = make_study(tmp_path)
    answers = [
        answers_for(key, 0, "ann-1", wrong_types=("DiscriTune",)),
        answers_for(key, 1, "ann-2", wrong_controls=1),  # one control error: kept
        answers_for(key, 1, "ann-3", wrong_controls=2),  # two control errors: excluded
    ]
    path = tmp_path / "ann1.json"
    path.write_text(json.dumps(answers[0]))
    result = score_human_study(key, [str(path), *answers[1:]])
    assert result["annotators_kept"] == ["ann-1", "ann-2"]
    assert result["annotators_excluded"] == ["ann-3"]
    assert result["accuracy"] == {"DiscriTune": 0.5, "human": 1.0}
    assert result["num_answers"] == {"DiscriTune": 2, "human": 2}
    assert result["control_accuracy"] == pytest.approx(3 / 4)


def test_scorer_rejects_answers_from_another_study(tmp_path):
    _, key = make_study(tmp_path / "a")
    _, other_key = make_study(tmp_path / "b", captions_suffix="!")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps(answers_for(other_key, 0, "x")))
    with pytest.raises(ValueError, match=f"foreign.json holds answers for study '{other_key['study_id']}'"):
        score_human_study(key, [str(foreign)])
    tampered = answers_for(key, 0, "x")
    tampered["answers"][0]["trial_id"] = "s99-human"
    with pytest.raises(ValueError, match="s99-human"):
        score_human_study(key, [tampered])


def _playwright():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"Debian chromium not found at {CHROMIUM} (apt-get install -y chromium chromium-driver)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("the playwright Python package is not installed (pip install playwright)")
    return sync_playwright


@pytest.mark.browser
def test_study_page_in_headless_chromium(tmp_path):
    sync_playwright = _playwright()
    study, key = make_study(tmp_path / "study")
    block_id = 1
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path / "profile"),
            executable_path=CHROMIUM,
            headless=True,
            args=CHROMIUM_ARGS,
            accept_downloads=True,
        )
        try:
            page = context.new_page()
            page.goto("file://" + os.path.abspath(study.page_paths[block_id]))
            page.fill("#annotator", "worker-7")
            page.click("#start")
            for step, trial_id in enumerate(key["blocks"][block_id]):
                trial = key["trials"][trial_id]
                assert page.inner_text("#caption") == trial["caption"]
                assert page.inner_text("#progress") == f"{step + 1} / 4"
                buttons = page.locator("#grid button.candidate")
                assert buttons.count() == 10
                boxes = [buttons.nth(i).bounding_box() for i in range(10)]
                page.wait_for_function("Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)")
                # Two rows of five under the caption.
                assert len({round(b["y"]) for b in boxes[:5]}) == 1 and len({round(b["y"]) for b in boxes[5:]}) == 1
                assert boxes[5]["y"] > boxes[0]["y"] + boxes[0]["height"] / 2
                assert page.locator("#caption").bounding_box()["y"] < boxes[0]["y"]
                wrong = trial["caption_type"] == "DiscriTune"
                position = (trial["target_position"] + 3) % 10 if wrong else trial["target_position"]
                buttons.nth(position).click()
            with page.expect_download() as download_info:
                page.click("#download")
            download = download_info.value
            assert download.suggested_filename == f"answers_{study.study_id}_block1_worker-7.json"
            answers_path = tmp_path / "answers.json"
            download.save_as(str(answers_path))
        finally:
            context.close()
    payload = json.loads(answers_path.read_text())
    assert payload["completed"] is True and payload["annotator_id"] == "worker-7"
    result = score_human_study(study.key_path, [str(answers_path)])
    assert result["accuracy"] == {"DiscriTune": 0.0, "human": 1.0}
    assert result["annotators_kept"] == ["worker-7"] and result["control_accuracy"] == 1.0


def test_browser_test_skips_with_reason_without_chromium(monkeypatch):
    monkeypatch.setattr(f"{__name__}.CHROMIUM", "/nonexistent/chromium")
    with pytest.raises(pytest.skip.Exception, match="apt-get install -y chromium chromium-driver"):
        _playwright()
