"""Caption-language analysis (Section 5, Tables 7 and 14): which lemmas characterise each caption type.

Captions of every type (e.g. human, ClipCap, DiscriTune) are lemmatised and POS-tagged with a spaCy
pipeline the user names. Following the paper, local mutual information (Evert 2005) is computed over the
contingency table of all (lemma, POS) pairs by caption type, punctuation and spaces left out:

    LMI(w, c) = O(w, c) * log2(O(w, c) / E(w, c)),    E(w, c) = O(w, .) * O(., c) / O(., .)

and the adjective and noun lemmas of each caption type are ranked by it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence


def _load_pipeline(nlp):
    if not isinstance(nlp, str):
        return nlp
    try:
        import spacy  # optional (the `eval` extra), and slow to import: only when a pipeline is asked for
    except ImportError as error:
        raise ImportError("Caption-language analysis needs spaCy: `pip install spacy`.") from error
    try:
        return spacy.load(nlp)
    except OSError as error:
        raise OSError(
            f"spaCy pipeline {nlp!r} is not installed. Install it (e.g. `python -m spacy download {nlp}` on a "
            "connected machine, or `pip install` its wheel), or pass a loaded `spacy.Language`."
        ) from error


def count_lemmas(
    corpora: Mapping[str, Sequence[str]], nlp="en_core_web_sm", batch_size: int = 256
) -> dict[str, Counter]:
    """Count `(lemma, POS)` pairs per caption type.

    Args:
        corpora (`Mapping[str, Sequence[str]]`): caption type to its captions.
        nlp (`str` or `spacy.Language`, defaults to `"en_core_web_sm"`): pipeline name for `spacy.load`, or
            a loaded pipeline. It must set `token.lemma_` and `token.pos_` (universal POS tags).
        batch_size (`int`, defaults to `256`): texts per `nlp.pipe` batch.

    Returns:
        `{caption_type: Counter({(lemma, pos): count})}`; lemmas are lower-cased (the token text where a
        pipeline sets no lemma), punctuation and spaces skipped.
    """
    nlp = _load_pipeline(nlp)
    unused = [name for name in ("parser", "ner") if name in nlp.pipe_names]  # not needed for lemma + POS
    counts = {}
    with nlp.select_pipes(disable=unused):
        for caption_type, captions in corpora.items():
            counter = Counter()
            for doc in nlp.pipe(captions, batch_size=batch_size):
                counter.update(((t.lemma_ or t.text).lower(), t.pos_) for t in doc if not (t.is_punct or t.is_space))
            counts[caption_type] = counter
    return counts


def local_mutual_information(counts: Mapping[str, Mapping]) -> dict[str, dict]:
    """LMI of every item observed with every caption type, from `{caption_type: {item: count}}`.

    Returns:
        `{caption_type: {item: lmi}}`, only for items with a non-zero count in that type.
    """
    type_totals = {caption_type: sum(counter.values()) for caption_type, counter in counts.items()}  # O(., c)
    total = sum(type_totals.values())  # O(., .)
    if total == 0:
        raise ValueError("No tokens to analyse: every corpus is empty.")
    item_totals = Counter()  # O(w, .)
    for counter in counts.values():
        item_totals.update(counter)
    lmi = {}
    for caption_type, counter in counts.items():
        lmi[caption_type] = {}
        for item, observed in counter.items():
            if observed > 0:
                expected = item_totals[item] * type_totals[caption_type] / total
                lmi[caption_type][item] = observed * math.log2(observed / expected)
    return lmi


def top_lemmas_by_lmi(
    corpora: Mapping[str, Sequence[str]],
    nlp="en_core_web_sm",
    pos: Sequence[str] = ("ADJ", "NOUN"),
    top_k: int = 10,
    batch_size: int = 256,
) -> dict[str, dict[str, list[tuple[str, float]]]]:
    """The `top_k` lemmas most associated with each caption type, per part of speech (Tables 7 and 14).

    Args:
        corpora (`Mapping[str, Sequence[str]]`): caption type to its captions, e.g.
            `{"human": [...], "ClipCap": [...], "DiscriTune": [...]}`.
        nlp (`str` or `spacy.Language`, defaults to `"en_core_web_sm"`): spaCy pipeline (name or object).
        pos (`Sequence[str]`, defaults to `("ADJ", "NOUN")`): universal POS tags to rank.
        top_k (`int`, defaults to `10`): lemmas per caption type and POS.
        batch_size (`int`, defaults to `256`): texts per `nlp.pipe` batch.

    Returns:
        `{pos: {caption_type: [(lemma, lmi), ...]}}`, highest LMI first (ties by lemma).
    """
    if len(corpora) < 2:
        raise ValueError(f"LMI contrasts caption types: pass at least two corpora, got {list(corpora)}.")
    lmi = local_mutual_information(count_lemmas(corpora, nlp, batch_size=batch_size))
    ranking = {}
    for tag in pos:
        ranking[tag] = {}
        for caption_type, scores in lmi.items():
            items = [(lemma, score) for (lemma, item_pos), score in scores.items() if item_pos == tag]
            ranking[tag][caption_type] = sorted(items, key=lambda item: (-item[1], item[0]))[:top_k]
    return ranking


def lmi_markdown_table(ranking: Mapping[str, Mapping[str, list[tuple[str, float]]]], pos: str) -> str:
    """Tables 7/14 layout: one column per caption type, its top lemmas down the rows."""
    columns = ranking[pos]
    depth = max((len(lemmas) for lemmas in columns.values()), default=0)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in range(depth):
        cells = [lemmas[row][0] if row < len(lemmas) else "" for lemmas in columns.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
