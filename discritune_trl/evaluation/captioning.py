"""Captioning metrics against reference captions, computed as the COCO caption toolkit does.

`caption_metrics` PTB-tokenises predictions and references with the Stanford tokenizer shipped in
`pycocoevalcap` (lower-cased, punctuation dropped) and scores them with the toolkit's BLEU-1..4, METEOR 1.5,
ROUGE-L and CIDEr-D; SPICE runs when its Stanford CoreNLP 3.6.0 jars are present, and is otherwise skipped
with a message saying what is missing (nothing is ever downloaded).

Scores are on the toolkit's scale (BLEU, METEOR, ROUGE-L, SPICE in [0, 1]; CIDEr-D in [0, 10]); the paper's
tables show them multiplied by 100 (see `format_markdown_table`).

Java runs the PTB tokenizer, METEOR and SPICE. Without Java, pass `tokenizer="simple"`: a pure-Python
approximation of the PTB tokenizer for BLEU, ROUGE-L and CIDEr, with METEOR and SPICE reported as skipped.
Those numbers are close to, but not guaranteed identical with, the toolkit's, so the result says which
tokenizer produced it.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence


logger = logging.getLogger(__name__)

CAPTION_METRICS = ("bleu", "meteor", "rouge_l", "cider", "spice")
TOKENIZERS = ("ptb", "simple")

# Tokens the COCO toolkit drops after PTB tokenisation (pycocoevalcap.tokenizer.ptbtokenizer.PUNCTUATIONS).
# "-LRB-" etc. are upper-case there while the tokenizer runs with -lowerCase, so "-lrb-" survives: we keep
# that quirk to reproduce the toolkit's numbers.
_PTB_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
# The simple tokenizer writes brackets, double quotes and em/en dashes the way PTB does (quotes and dashes then get
# dropped).
_SIMPLE_REWRITES = {
    "\u2014": "--",
    "\u2013": "--",
    "(": "-lrb-",
    ")": "-rrb-",
    "{": "-lcb-",
    "}": "-rcb-",
    "[": "-lsb-",
    "]": "-rsb-",
    '"': "''",
}
# Words are runs of Unicode word characters (`\w`), so "café" and Greek words stay whole as in PTB.
_SIMPLE_TOKEN = re.compile(r"\.\.\.|--|\w+(?=n't\b)|n't|'\w+|(?:\w\.){2,}|\w+(?:[-.,]\w+)*|[^\w\s]")

_SPICE_CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


def _pycocoevalcap_dir() -> str:
    # pycocoevalcap is a namespace package (no __init__.py): locate it through its import spec.
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(
            "Captioning metrics need the COCO caption toolkit: `pip install pycocoevalcap` "
            "(or `pip install discritune-trl[eval]`)."
        )
    return list(spec.submodule_search_locations)[0]


def _require_java(what: str) -> str:
    java = shutil.which("java")
    if java is None:
        raise RuntimeError(
            f"{what} needs Java, but `java` is not on PATH. Install a Java runtime (e.g. `apt-get install "
            "default-jre-headless`), or pass tokenizer='simple' to compute BLEU, ROUGE-L and CIDEr without Java."
        )
    return java


def ptb_tokenize(texts: Sequence[str]) -> list[str]:
    """Tokenise like the COCO toolkit: Stanford PTBTokenizer (lower-cased), then punctuation removed.

    One Java call for all texts; an empty text stays empty. Needs Java and `pycocoevalcap`.
    """
    java = _require_java("PTB tokenisation")
    jar = os.path.join(_pycocoevalcap_dir(), "tokenizer", "stanford-corenlp-3.4.1.jar")
    lines = [" ".join(text.split()) for text in texts]  # one caption per line, as the toolkit does
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "captions.txt")
        with open(path, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        command = [java, "-cp", jar, "edu.stanford.nlp.process.PTBTokenizer", "-preserveLines", "-lowerCase", path]
        result = subprocess.run(command, capture_output=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"The PTB tokenizer failed ({' '.join(command)}): {result.stderr.decode()[-500:]}")
    tokenized = result.stdout.decode("utf-8").split("\n")[: len(lines)]
    if len(tokenized) != len(lines):
        raise RuntimeError(f"The PTB tokenizer returned {len(tokenized)} lines for {len(lines)} captions.")
    return [" ".join(token for token in line.split() if token not in _PTB_PUNCTUATION) for line in tokenized]


def simple_tokenize(texts: Sequence[str]) -> list[str]:
    """A pure-Python approximation of `ptb_tokenize` (no Java): lower-case, split off punctuation, drop it."""
    tokenized = []
    for text in texts:
        tokens = (_SIMPLE_REWRITES.get(token, token) for token in _SIMPLE_TOKEN.findall(text.lower()))
        tokenized.append(" ".join(token for token in tokens if token not in _PTB_PUNCTUATION))
    return tokenized


def spice_missing_reason() -> str | None:
    """`None` when SPICE can run here, else a sentence saying what is missing and how to add it."""
    if shutil.which("java") is None:
        return "SPICE skipped: `java` is not on PATH."
    try:
        lib = os.path.join(_pycocoevalcap_dir(), "spice", "lib")
    except ImportError as error:
        return f"SPICE skipped: {error}"
    missing = [jar for jar in _SPICE_CORENLP_JARS if not os.path.exists(os.path.join(lib, jar))]
    if missing:
        return (
            f"SPICE skipped: the Stanford CoreNLP 3.6.0 jars {missing} are not in {lib}. Copy them there from "
            "stanford-corenlp-full-2015-12-09.zip (https://nlp.stanford.edu/software/), or run "
            "`python -c 'from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()'` "
            "on a machine with internet access."
        )
    return None


def _spice(tokenized_predictions: list[str], tokenized_references: list[list[str]]) -> float:
    """Mean SPICE F-score, running the toolkit's jar on files in a private temporary directory."""
    spice_dir = os.path.join(_pycocoevalcap_dir(), "spice")
    items = [
        {"image_id": index, "test": prediction, "refs": refs}
        for index, (prediction, refs) in enumerate(zip(tokenized_predictions, tokenized_references))
    ]
    with tempfile.TemporaryDirectory() as tmp:
        in_path, out_path = os.path.join(tmp, "in.json"), os.path.join(tmp, "out.json")
        with open(in_path, "w") as handle:
            json.dump(items, handle)
        command = ["java", "-jar", "-Xmx8G", "spice-1.0.jar", in_path, "-out", out_path, "-subset", "-silent"]
        result = subprocess.run(command, cwd=spice_dir, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(result.stderr.decode()[-500:])
        with open(out_path) as handle:
            scores = [float(item["scores"]["All"]["f"]) for item in json.load(handle)]
    return sum(scores) / len(scores)


def _check_inputs(predictions: Sequence[str], references: Sequence[Sequence[str]] | None) -> None:
    if references is None:
        raise ValueError("caption_metrics needs reference captions (references=None); pass one list per prediction.")
    if isinstance(predictions, str):
        raise TypeError("predictions must be a list of strings, got a single string; wrap it in a list.")
    if len(predictions) != len(references):
        raise ValueError(
            f"{len(predictions)} predictions but {len(references)} reference lists; pass one list of reference "
            "captions per prediction."
        )
    if len(predictions) == 0:
        raise ValueError("caption_metrics got no predictions.")
    for index, (prediction, refs) in enumerate(zip(predictions, references)):
        if not isinstance(prediction, str):
            raise TypeError(f"predictions[{index}] is {prediction!r}, expected a string (use '' for no caption).")
        if isinstance(refs, str):
            raise TypeError(f"references[{index}] is a string; wrap it in a list: [{refs!r}].")
        if refs is None or not any(isinstance(ref, str) and ref.strip() for ref in refs):
            raise ValueError(
                f"references[{index}] is {refs!r}: every prediction needs at least one non-empty reference "
                "caption; drop rows without references before scoring."
            )


def caption_metrics(
    predictions: Sequence[str],
    references: Sequence[Sequence[str]],
    metrics: Sequence[str] = CAPTION_METRICS,
    tokenizer: str = "ptb",
) -> dict:
    """BLEU-1..4, METEOR, ROUGE-L, CIDEr-D and (when available) SPICE, as the COCO caption toolkit computes them.

    Args:
        predictions (`Sequence[str]`): one generated caption per image. Empty strings are scored (they get
            0 on every metric) and counted in `num_empty_predictions`.
        references (`Sequence[Sequence[str]]`): the reference captions of each image (at least one each).
        metrics (`Sequence[str]`, defaults to all of `CAPTION_METRICS`): which of `"bleu"`, `"meteor"`,
            `"rouge_l"`, `"cider"`, `"spice"` to compute.
        tokenizer (`str`, defaults to `"ptb"`): `"ptb"` (the toolkit's Stanford tokenizer, needs Java) or
            `"simple"` (pure Python; METEOR and SPICE are then skipped).

    Returns:
        `dict` with `bleu_1`..`bleu_4`, `meteor`, `rouge_l`, `cider`, `spice` (those computed), `num_predictions`,
        `num_empty_predictions`, `tokenizer`, and `skipped`: `{metric: reason}` for metrics that could not run.

    Note:
        CIDEr-D weighs n-grams by their document frequency over *this* set of references, so it is a corpus
        metric: a single image scores 0 even when its caption equals its reference.
    """
    _check_inputs(predictions, references)
    unknown = sorted(set(metrics) - set(CAPTION_METRICS))
    if unknown:
        raise ValueError(f"Unknown caption metrics {unknown}; choose from {CAPTION_METRICS}.")
    if tokenizer not in TOKENIZERS:
        raise ValueError(f"tokenizer={tokenizer!r} is not one of {TOKENIZERS}.")
    _pycocoevalcap_dir()  # fail early with the install hint

    # Tokenise everything in one call: predictions first, then every reference, flattened.
    flat_references = [ref for refs in references for ref in refs]
    tokenize = ptb_tokenize if tokenizer == "ptb" else simple_tokenize
    tokens = tokenize(list(predictions) + flat_references)
    tokenized_predictions, rest = tokens[: len(predictions)], tokens[len(predictions) :]
    tokenized_references = []
    for refs in references:
        tokenized_references.append(rest[: len(refs)])
        rest = rest[len(refs) :]
    res = {index: [prediction] for index, prediction in enumerate(tokenized_predictions)}
    gts = dict(enumerate(tokenized_references))

    results: dict = {}
    skipped: dict[str, str] = {}
    # pycocoevalcap is imported only when a metric is computed: `import discritune_trl` stays light (see
    # tests/test_evaluation_suite.py::test_importing_the_package_stays_light) and works where it is not installed.
    if "bleu" in metrics:
        from pycocoevalcap.bleu.bleu import Bleu

        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        results.update({f"bleu_{n + 1}": float(score) for n, score in enumerate(bleu)})
    if "meteor" in metrics:
        if tokenizer == "simple" or shutil.which("java") is None:
            skipped["meteor"] = (
                "METEOR skipped: it runs the toolkit's Java jar; use tokenizer='ptb' with Java installed."
            )
        else:
            from pycocoevalcap.meteor.meteor import Meteor

            scorer = Meteor()
            results["meteor"] = float(scorer.compute_score(gts, res)[0])
            del scorer  # stops its JVM
    if "rouge_l" in metrics:
        from pycocoevalcap.rouge.rouge import Rouge

        results["rouge_l"] = float(Rouge().compute_score(gts, res)[0])
    if "cider" in metrics:
        from pycocoevalcap.cider.cider import Cider

        results["cider"] = float(Cider().compute_score(gts, res)[0])
    if "spice" in metrics:
        reason = (
            "SPICE skipped: tokenizer='simple' was asked for." if tokenizer == "simple" else spice_missing_reason()
        )
        if reason is None:
            try:
                results["spice"] = _spice(tokenized_predictions, tokenized_references)
            except RuntimeError as error:
                reason = f"SPICE skipped: its jar failed ({error})."
        if reason is not None:
            skipped["spice"] = reason
    for reason in skipped.values():
        logger.warning(reason)

    results["num_predictions"] = len(predictions)
    results["num_empty_predictions"] = sum(not prediction.strip() for prediction in predictions)
    results["tokenizer"] = tokenizer
    results["skipped"] = skipped
    return results
