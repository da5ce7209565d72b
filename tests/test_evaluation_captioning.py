import math
import shutil

import pytest

from discritune_trl.evaluation import captioning
from discritune_trl.evaluation.captioning import caption_metrics, ptb_tokenize, simple_tokenize, spice_missing_reason


pytest.importorskip("pycocoevalcap")
needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="the COCO toolkit's PTB tokenizer needs Java")

CAPTIONS = ["A man riding a horse.", "Two dogs playing in the snow!", "A red bus on a city street."]


@needs_java
def test_identical_captions_score_perfectly():
    references = [[caption, "something else entirely"] for caption in CAPTIONS]
    metrics = caption_metrics(CAPTIONS, references)
    assert metrics["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["meteor"] == pytest.approx(1.0)
    assert metrics["rouge_l"] == pytest.approx(1.0)
    # CIDEr-D is scaled by 10 in the toolkit; a caption equal to one of two references gets half the
    # cosine of a caption equal to its only reference.
    assert metrics["cider"] > 4.0
    assert metrics["num_predictions"] == 3 and metrics["num_empty_predictions"] == 0
    assert metrics["tokenizer"] == "ptb"
    if spice_missing_reason() is None:
        assert metrics["spice"] > 0.5
    else:
        assert "spice" not in metrics
        assert "stanford-corenlp-3.6.0" in metrics["skipped"]["spice"]


@needs_java
def test_cider_identical_single_references_is_ten():
    metrics = caption_metrics(CAPTIONS, [[caption] for caption in CAPTIONS], metrics=("cider",))
    assert metrics["cider"] == pytest.approx(10.0)
    assert set(metrics) >= {"cider", "skipped"} and "bleu_4" not in metrics


@needs_java
def test_bleu_and_rouge_by_hand():
    # n-gram precisions 5/5, 3/4, 2/3, 1/2; brevity penalty exp(1 - 6/5); ROUGE-L with LCS 5, P=1, R=5/6, beta=1.2.
    metrics = caption_metrics(["a man riding a horse"], [["a man riding a brown horse"]], metrics=("bleu", "rouge_l"))
    bleu_4 = math.exp(1 - 6 / 5) * (1 * 3 / 4 * 2 / 3 * 1 / 2) ** 0.25
    assert metrics["bleu_4"] == pytest.approx(bleu_4, abs=1e-6)
    precision, recall, beta = 1.0, 5 / 6, 1.2
    rouge = (1 + beta**2) * precision * recall / (recall + beta**2 * precision)
    assert metrics["rouge_l"] == pytest.approx(rouge)


@needs_java
def test_empty_predictions_are_scored_and_counted():
    references = [[CAPTIONS[0]], [CAPTIONS[1]]]
    metrics = caption_metrics([CAPTIONS[0], ""], references, metrics=("bleu", "rouge_l", "cider"))
    assert metrics["num_empty_predictions"] == 1
    assert metrics["rouge_l"] == pytest.approx(0.5)  # 1 for the identical caption, 0 for the empty one
    assert metrics["cider"] == pytest.approx(5.0)
    assert 0.0 < metrics["bleu_4"] < 1.0


@needs_java
def test_ptb_tokenizer_matches_toolkit_and_simple_tokenizer_approximates_it():
    texts = ["A man's dog, riding (a) horse...", 'Two "dogs" playing!', "", "It isn't 3.5 m-long; e.g. U.S. flag"]
    assert ptb_tokenize(texts) == [
        "a man 's dog riding -lrb- a -rrb- horse",  # the toolkit keeps lower-cased bracket tokens
        "two dogs playing",
        "",
        "it is n't 3.5 m-long e.g. u.s. flag",
    ]
    assert simple_tokenize(texts) == ptb_tokenize(texts)


NON_ASCII = ["Un café à Paris, près du Musée.", "Ένα κόκκινο λεωφορείο στον δρόμο!", "Straße_name naïve façade—über"]


def test_simple_tokenizer_keeps_non_ascii_words_whole():
    assert simple_tokenize(NON_ASCII) == [
        "un café à paris près du musée",
        "ένα κόκκινο λεωφορείο στον δρόμο",
        "straße_name naïve façade über",
    ]


@needs_java
def test_simple_tokenizer_matches_ptb_on_non_ascii_words():
    assert simple_tokenize(NON_ASCII) == ptb_tokenize(NON_ASCII)


def test_simple_tokenizer_runs_without_java(monkeypatch):
    monkeypatch.setattr(captioning.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="tokenizer='simple'"):
        caption_metrics(CAPTIONS, [[c] for c in CAPTIONS])
    metrics = caption_metrics(CAPTIONS, [[c] for c in CAPTIONS], tokenizer="simple")
    assert metrics["bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert metrics["cider"] == pytest.approx(10.0)
    assert "meteor" not in metrics and "spice" not in metrics
    assert "Java" in metrics["skipped"]["meteor"]
    assert metrics["tokenizer"] == "simple"


def test_spice_reason_names_missing_jars(tmp_path, monkeypatch):
    monkeypatch.setattr(captioning, "_pycocoevalcap_dir", lambda: str(tmp_path))
    monkeypatch.setattr(captioning.shutil, "which", lambda name: "/usr/bin/java")
    reason = spice_missing_reason()
    assert "stanford-corenlp-3.6.0.jar" in reason and str(tmp_path / "spice" / "lib") in reason
    (tmp_path / "spice" / "lib").mkdir(parents=True)
    for jar in ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar"):
        (tmp_path / "spice" / "lib" / jar).touch()
    assert spice_missing_reason() is None


def test_bad_references_are_rejected():
    with pytest.raises(ValueError, match=r"references\[1\] is \[\]"):
        caption_metrics(["a", "b"], [["a"], []], tokenizer="simple")
    with pytest.raises(ValueError, match=r"references\[0\] is \[''\]"):
        caption_metrics(["a"], [[""]], tokenizer="simple")
    with pytest.raises(ValueError, match="references=None"):
        caption_metrics(["a"], None)
    with pytest.raises(ValueError, match="2 predictions but 1 reference lists"):
        caption_metrics(["a", "b"], [["a"]], tokenizer="simple")
    with pytest.raises(TypeError, match=r"predictions\[0\] is None"):
        caption_metrics([None], [["a"]], tokenizer="simple")
    with pytest.raises(ValueError, match="Unknown caption metrics"):
        caption_metrics(["a"], [["a"]], metrics=("bleu", "bertscore"))
