import pytest

from medqlora.evaluation.scoring import (
    closed_distribution,
    extract_choice,
    extract_decision,
    intervals,
    loops,
    paired_bootstrap,
    rouge_scores,
    score,
    split_reasoning,
)

OPTS = {"A": "Vitamin A", "B": "Vitamin C", "C": "Iron", "D": "Zinc"}
CDIFF = {"A": "Clindamycin", "B": "Oral vancomycin", "C": "Metronidazole IV", "D": "Fecal transplant",
         "E": "Observation"}
TEN = {k: f"Drug {k.lower()}" for k in "ABCDEFGHIJ"}


@pytest.mark.parametrize("text,options,want", [
    ("B. Vitamin C", OPTS, "B"), ("B", OPTS, "B"), ("(C) Iron", OPTS, "C"), ("The answer is D.", OPTS, "D"),
    ("Answer: a", OPTS, "A"), ("It is caused by a lack of vitamin c.", OPTS, "B"),
    ("<think>A or B?</think>\nC. Iron", OPTS, "C"), ("I am not sure.", OPTS, None), ("Vitamin A or vitamin C", OPTS, None),
    # the phrasings that were misread (issue: evaluation a researcher can trust)
    ("A recent course of clindamycin points to B.", OPTS, "B"),
    ("The answer is a course of oral vancomycin (B).", CDIFF, "B"),
    ("The correct answer is **B**.", OPTS, "B"),
    ("**Answer:** B", OPTS, "B"),
    ("C. difficile infection is likely after antibiotics; the answer is B.", CDIFF, "B"),
    ("I think the answer is C.", TEN, "C"),
    ("The answer is B or C.", OPTS, None),
    ("Answer: (D)", OPTS, "D"),
    ("C. difficile infection is likely.", CDIFF, None),
    # hedged or negated answers commit to no option (issue 20)
    ("Option B or C", OPTS, None), ("Not B.", OPTS, None), ("The answer is not A.", OPTS, None),
    ("It is either B or D.", OPTS, None), ("B/C", OPTS, None), ("It isn't option C.", OPTS, None),
    ("The answer is not (B).", OPTS, None), ("Not A, the answer is B.", OPTS, "B"),
    ("B. Vitamin C. Options A or D do not fit.", OPTS, "B"), ("The answer is B, not C.", OPTS, "B"),
])
def test_extract_choice(text, options, want):
    assert extract_choice(text, options) == want


def test_an_unfinished_thought_in_an_r1_prompt_is_no_answer():
    # the R1 template opens <think> in the prompt: the generation starts inside the thought
    assert split_reasoning("Let me weigh A against B, the answer is B", prompt_opened_think=True) == (
        "Let me weigh A against B, the answer is B", "", False)
    assert extract_choice("Let me weigh A against B, the answer is B", OPTS, prompt_opened_think=True) is None
    assert extract_choice("B seems right.\n</think>\nThe answer is C.", OPTS, prompt_opened_think=True) == "C"
    s = score([{"kind": "freetext", "reference": "vitamin c deficiency"}], ["vitamin c deficiency is the thought"],
              opened=True)
    assert s["rougeL"] == 0.0 and s["unfinished_thought"] == 1, "a bare thought is not scored as the answer"


@pytest.mark.parametrize("text,want", [("Yes. Citrus prevents it.", "yes"), ("no", "no"),
                                       ("Maybe, the evidence is mixed.", "maybe"), ("Unclear.", None),
                                       ("There is no clear evidence either way, so the answer is maybe.", "maybe"),
                                       ("**Answer:** no", "no"), ("Yes or no: hard to say.", "yes")])
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
    assert s["closed"]["unparsed"] == ["no idea"]


def test_score_without_closed_items_gives_null_accuracy():
    s = score([{"kind": "freetext", "reference": "x y"}], ["x y"])
    assert s["accuracy"] is None and s["parse_rate"] is None and s["n_choice"] == 0 and s["closed"] is None


def test_a_model_that_always_answers_a_is_flagged_against_the_majority_baseline():
    items = [{"kind": "choice", "answer": a, "options": OPTS} for a in "AAAABBBCCCDDDDDD"]
    d = closed_distribution(items, ["A"] * 16)
    assert d["dominant"] == "A" and d["dominant_share"] == 1.0
    assert d["majority_baseline"] == 6 / 16 and d["chance_baseline"] == 0.25
    assert d["predicted"] == {"A": 16} and d["reference"] == {"A": 4, "B": 3, "C": 3, "D": 6}


def test_degeneration_is_measured():
    assert loops("of the murmur of the murmur of the murmur of the murmur")
    assert not loops("Aortic stenosis causes a crescendo-decrescendo systolic murmur at the right sternal border.")
    items = [{"kind": "freetext", "reference": "x"}] * 2
    s = score(items, [{"text": "a b c a b c a b c", "hit_limit": True}, {"text": "fine answer", "hit_limit": False}])
    assert s["looping"] == 0.5 and s["hit_token_limit"] == 0.5


def test_paired_bootstrap_interval_brackets_the_change():
    base = [0.0] * 10 + [1.0] * 10
    tuned = [1.0] * 15 + [0.0] * 5
    c = paired_bootstrap(base, tuned)
    assert c["change"] == 0.25 and c["n"] == 20
    assert c["ci95"][0] < 0.25 < c["ci95"][1]
    same = paired_bootstrap(base, base)
    assert same["change"] == 0 and same["ci95"] == [0.0, 0.0]
    assert paired_bootstrap([], []) is None


def test_every_metric_gets_intervals_for_both_models_and_the_change():
    items = [{"kind": "freetext", "reference": "a b c"}] * 10 + [{"kind": "choice", "answer": "B", "options": OPTS}] * 10
    base = ["a x y"] * 10 + ["A"] * 5 + ["B"] * 5
    tuned = ["a b c"] * 10 + ["B"] * 10
    iv = intervals(items, base, tuned)
    assert set(iv) == {"rouge1", "rouge2", "rougeL", "accuracy", "parse_rate"}
    assert iv["accuracy"]["base_ci95"][0] < 0.5 < iv["accuracy"]["base_ci95"][1]
    assert iv["accuracy"]["finetuned_ci95"] == [1.0, 1.0] and iv["accuracy"]["change"]["change"] == 0.5
    assert iv["rougeL"]["change"]["ci95"][0] > 0


def test_sampling_settings_reach_generate():
    from medqlora.config import RunConfig
    from medqlora.evaluation.generate import sampling

    cfg = RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": "m"}, "data": {"source": "x.jsonl"}})
    assert sampling(cfg) == {"do_sample": False, "repetition_penalty": 1.0}
    cfg.eval.temperature, cfg.eval.top_p = 0.7, 0.9
    assert sampling(cfg) == {"do_sample": True, "repetition_penalty": 1.0, "temperature": 0.7, "top_p": 0.9}


def test_the_shipped_evaluate_metrics_give_the_pipelines_numbers():
    from pathlib import Path

    import evaluate

    import medqlora

    root = Path(medqlora.__file__).parent / "evaluation" / "metrics"
    preds, refs = ["<think>hmm</think>vitamin c deficiency", "iron overload"], ["vitamin c deficiency", "iron lack"]
    rouge = evaluate.load(str(root / "medqa_rouge")).compute(predictions=preds, references=refs)
    pipeline = score([{"kind": "freetext", "reference": r} for r in refs], preds)
    assert rouge == pytest.approx({k: pipeline[k] for k in ("rouge1", "rouge2", "rougeL")})
    assert rouge["rouge1"] == pytest.approx((1.0 + 0.5) / 2)
    items = [{"kind": "choice", "answer": "B", "options": OPTS}, {"kind": "choice", "answer": "C", "options": OPTS},
             {"kind": "yesno", "answer": "maybe"}]
    answers = ["The correct answer is **B**.", "A recent finding, no idea", "so the answer is maybe."]
    acc = evaluate.load(str(root / "medqa_closed_accuracy")).compute(
        predictions=answers, references=[it["answer"] for it in items], options=[OPTS, OPTS, None])
    s = score(items, answers)
    assert acc == pytest.approx({"accuracy": s["accuracy"], "parse_rate": s["parse_rate"]})
    assert acc["accuracy"] == pytest.approx(2 / 3)
