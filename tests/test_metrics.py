import pytest

from medqlora.evaluation import extract_choice, extract_decision, rouge_scores, score

OPTS = {"A": "Vitamin A", "B": "Vitamin C", "C": "Iron", "D": "Zinc"}


@pytest.mark.parametrize("text,want", [
    ("B. Vitamin C", "B"), ("B", "B"), ("(C) Iron", "C"), ("The answer is D.", "D"), ("Answer: a", "A"),
    ("It is caused by a lack of vitamin c.", "B"), ("<think>A or B?</think>\nC. Iron", "C"),
    ("I am not sure.", None), ("Vitamin A or vitamin C", None),
])
def test_extract_choice(text, want):
    assert extract_choice(text, OPTS) == want


@pytest.mark.parametrize("text,want", [("Yes. Citrus prevents it.", "yes"), ("no", "no"),
                                       ("Maybe, the evidence is mixed.", "maybe"), ("Unclear.", None)])
def test_extract_decision(text, want):
    assert extract_decision(text) == want


def test_rouge_identical_disjoint_and_partial():
    assert rouge_scores(["vitamin c deficiency"], ["vitamin c deficiency"]) == pytest.approx(
        {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    assert rouge_scores(["iron overload"], ["vitamin c deficiency"])["rouge1"] == 0.0
    # 2 of 3 unigrams shared each way: P = R = 2/3
    assert rouge_scores(["vitamin c lack"], ["vitamin c deficiency"])["rouge1"] == pytest.approx(2 / 3)


def test_score_splits_free_text_and_closed_items():
    items = [{"kind": "freetext", "reference": "vitamin c deficiency"},
             {"kind": "choice", "answer": "B", "options": OPTS},
             {"kind": "choice", "answer": "C", "options": OPTS},
             {"kind": "yesno", "answer": "yes"}]
    s = score(items, ["vitamin c deficiency", "B. Vitamin C", "no idea", "No, it does not."])
    assert s["n_freetext"] == 1 and s["n_choice"] == 3
    assert s["rougeL"] == pytest.approx(1.0)
    assert s["accuracy"] == pytest.approx(1 / 3)  # unparsed counts as wrong
    assert s["parse_rate"] == pytest.approx(2 / 3)


def test_score_without_closed_items_gives_null_accuracy():
    s = score([{"kind": "freetext", "reference": "x y"}], ["x y"])
    assert s["accuracy"] is None and s["parse_rate"] is None and s["n_choice"] == 0


def test_paired_bootstrap_interval_brackets_the_change():
    from medqlora.evaluation import paired_bootstrap

    base = [0.0] * 10 + [1.0] * 10
    tuned = [1.0] * 15 + [0.0] * 5
    c = paired_bootstrap(base, tuned)
    assert c["change"] == 0.25 and c["n"] == 20
    assert c["ci95"][0] < 0.25 < c["ci95"][1]
    same = paired_bootstrap(base, base)
    assert same["change"] == 0 and same["ci95"] == [0.0, 0.0]
    assert paired_bootstrap([], []) is None


def test_item_scores_are_per_item():
    from medqlora.evaluation import item_scores

    items = [{"kind": "freetext", "reference": "a b c"}, {"kind": "choice", "answer": "B", "options": OPTS}]
    s = item_scores(items, ["a b c", "A. Vitamin A"])
    assert s == {"rougeL": [1.0], "accuracy": [0.0]}
