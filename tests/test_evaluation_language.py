import math
from collections import Counter

import pytest

from discritune_trl.evaluation.language import (
    count_lemmas,
    lmi_markdown_table,
    local_mutual_information,
    top_lemmas_by_lmi,
)


pytest.importorskip("spacy")

LEXICON = {
    "red": ("red", "ADJ"),
    "big": ("big", "ADJ"),
    "dog": ("dog", "NOUN"),
    "dogs": ("dog", "NOUN"),
    "cat": ("cat", "NOUN"),
}
CORPORA = {"A": ["A red dog.", "Red cat!"], "B": ["big dogs", "Dog."]}


@pytest.fixture(scope="module")
def nlp():
    from discritune_trl.testing.evaluation import toy_spacy_pipeline

    return toy_spacy_pipeline(LEXICON)


def test_count_lemmas_lemmatises_tags_and_skips_punctuation(nlp):
    counts = count_lemmas(CORPORA, nlp)
    assert counts["A"] == Counter({("a", "X"): 1, ("red", "ADJ"): 2, ("dog", "NOUN"): 1, ("cat", "NOUN"): 1})
    assert counts["B"] == Counter({("big", "ADJ"): 1, ("dog", "NOUN"): 2})


def test_lmi_by_hand():
    # Table: A = {red: 2, dog: 1, cat: 1} (4 tokens), B = {big: 1, dog: 2} (3 tokens), N = 7.
    lmi = local_mutual_information({"A": Counter(red=2, dog=1, cat=1), "B": Counter(big=1, dog=2)})
    assert lmi["A"]["red"] == pytest.approx(2 * math.log2(2 / (2 * 4 / 7)))  # 1.615
    assert lmi["A"]["dog"] == pytest.approx(1 * math.log2(1 / (3 * 4 / 7)))  # -0.778
    assert lmi["A"]["cat"] == pytest.approx(math.log2(7 / 4))
    assert lmi["B"]["dog"] == pytest.approx(2 * math.log2(2 / (3 * 3 / 7)))  # 1.275
    assert lmi["B"]["big"] == pytest.approx(math.log2(7 / 3))
    assert "big" not in lmi["A"]


def test_top_lemmas_by_lmi_per_pos(nlp):
    corpora = {"A": ["red dog", "red cat"], "B": ["big dog", "dog"]}
    ranking = top_lemmas_by_lmi(corpora, nlp, top_k=2)
    assert [lemma for lemma, _ in ranking["ADJ"]["A"]] == ["red"]
    assert [lemma for lemma, _ in ranking["NOUN"]["A"]] == ["cat", "dog"]  # cat 0.81 > dog -0.78
    assert [lemma for lemma, _ in ranking["NOUN"]["B"]] == ["dog"]
    assert ranking["NOUN"]["B"][0][1] == pytest.approx(2 * math.log2(14 / 9))
    assert lmi_markdown_table(ranking, "NOUN") == "| A | B |\n|---|---|\n| cat | dog |\n| dog |  |\n"


def test_bad_input_messages(nlp):
    with pytest.raises(ValueError, match="at least two corpora"):
        top_lemmas_by_lmi({"A": ["red dog"]}, nlp)
    with pytest.raises(OSError, match="spaCy pipeline 'no_such_pipeline' is not installed"):
        count_lemmas(CORPORA, "no_such_pipeline")
