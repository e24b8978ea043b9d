import json

import pytest

from conftest import SHARED_DATA, write_jsonl
from medqlora import data as D
from medqlora.config import DataConfig

CASES = {
    "qa": ({"question": "What causes scurvy?", "answer": "Vitamin C deficiency."},
           "freetext", "What causes scurvy?", "Vitamin C deficiency."),
    "alpaca": ({"instruction": "Answer the question.", "input": "What causes scurvy?", "output": "Vitamin C deficiency."},
               "freetext", "Answer the question.\n\nWhat causes scurvy?", "Vitamin C deficiency."),
    "chat": ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What causes scurvy?"},
                           {"role": "assistant", "content": "Vitamin C deficiency."}]},
             "freetext", "What causes scurvy?", "Vitamin C deficiency."),
    "chat-sharegpt": ({"conversations": [{"from": "human", "value": "What causes scurvy?"},
                                         {"from": "gpt", "value": "Vitamin C deficiency."}]},
                      "freetext", "What causes scurvy?", "Vitamin C deficiency."),
    "reasoning": ({"Question": "What causes scurvy?", "Complex_CoT": "Scurvy is collagen failure...",
                   "Response": "Vitamin C deficiency."}, "freetext", "What causes scurvy?", "Vitamin C deficiency."),
    "mcq": ({"question": "Scurvy is caused by lack of?", "options": {"A": "Vitamin A", "B": "Vitamin C"}, "answer": "B"},
            "choice", "Scurvy is caused by lack of?", "B"),
    "mcq-list-text": ({"question": "Scurvy is caused by lack of?", "options": ["Vitamin A", "Vitamin C"],
                       "answer": "Vitamin C"}, "choice", "Scurvy is caused by lack of?", "B"),
    "mcq-answer_idx": ({"question": "Scurvy is caused by lack of?", "options": {"A": "Vitamin A", "B": "Vitamin C"},
                        "answer": "Vitamin C", "answer_idx": "B"}, "choice", "Scurvy is caused by lack of?", "B"),
    "pubmedqa": ({"question": "Does vitamin C prevent scurvy?", "context": "Sailors given citrus...",
                  "long_answer": "Yes, citrus prevented it.", "final_decision": "yes"},
                 "yesno", "Does vitamin C prevent scurvy?", "yes"),
}
EXPECTED_FORMAT = {"qa": "qa", "alpaca": "alpaca", "chat": "chat", "chat-sharegpt": "chat", "reasoning": "reasoning",
                   "mcq": "mcq", "mcq-list-text": "mcq", "mcq-answer_idx": "mcq", "pubmedqa": "pubmedqa"}


@pytest.mark.parametrize("case", CASES)
def test_each_format_detected_and_normalized_from_a_file(tmp_path, case):
    row, kind, question, answer = CASES[case]
    path = write_jsonl(tmp_path / "d.jsonl", [row])
    rows, columns = D.open_rows(str(path), DataConfig(source=str(path)), "train")
    fmt, mapping = D.detect_format(columns)
    assert fmt == EXPECTED_FORMAT[case]
    checks = D.Checks()
    (ex,) = list(D.iter_examples(rows, fmt, mapping, checks, set()))
    assert (ex.kind, ex.question, ex.answer) == (kind, question, answer)
    if case == "reasoning":
        assert ex.reasoning.startswith("Scurvy is collagen")
    if case == "pubmedqa":
        assert ex.context and ex.explanation == "Yes, citrus prevented it."
    if case == "chat":
        assert [t["role"] for t in ex.messages] == ["system", "user"]


def test_column_mapping_selects_columns():
    fmt, m = D.detect_format(["Q", "A"], {"question": "Q", "answer": "A"})
    assert fmt == "qa" and m == {"question": "Q", "answer": "A"}


def test_unknown_columns_error_lists_what_was_found():
    with pytest.raises(D.DataError, match=r"columns \['prompt_text', 'reply'\].*data.columns"):
        D.detect_format(["prompt_text", "reply"])


def test_forced_format_missing_field_lists_columns():
    with pytest.raises(D.DataError, match=r"data.format=mcq needs the field\(s\) \['options'\].*\['question', 'answer'\]"):
        D.check_format("mcq", ["question", "answer"], {})


def test_mapping_to_absent_column_is_named():
    with pytest.raises(D.DataError, match="column 'Quest' is not in the data"):
        D.map_columns(["question"], {"question": "Quest"})


def test_bad_rows_counted_and_dropped():
    rows = [
        {"question": "Q1?", "answer": "A1."},
        {"question": "", "answer": "A."},                                       # empty question
        {"question": "Q2?", "answer": "  "},                                     # empty answer
        {"question": "Q1?", "answer": "A1."},                                    # duplicate
        {"question": "Q3?", "options": {"A": "x", "B": "y"}, "answer": "E"},     # answer not an option
        {"question": "Q4?", "options": {"A": "x", "B": "y"}, "answer": "b"},     # fine: letter, any case
    ]
    checks = D.Checks()
    fmt, m = D.detect_format(["question", "answer", "options"])
    kept = list(D.iter_examples(rows, fmt, m, checks, set()))
    assert [e.question for e in kept] == ["Q1?", "Q4?"] and kept[1].answer == "B"
    assert checks.read == 6
    assert checks.dropped == {"empty question": 1, "empty answer": 1, "duplicate": 1, "malformed": 1}
    assert "answer 'E' is not one of the options" in checks.samples["malformed"][0]["reason"]


def test_bad_yes_no_decision_is_malformed():
    ex, why = D.normalize({"question": "Q?", "final_decision": "perhaps"}, "pubmedqa",
                          {"question": "question", "final_decision": "final_decision"}, 0)
    assert ex is None and "not yes/no/maybe" in why


def test_chat_without_assistant_answer_is_malformed():
    ex, why = D.normalize({"messages": [{"role": "user", "content": "hi"}]}, "chat", {"messages": "messages"}, 0)
    assert ex is None and why.startswith("malformed")


def test_split_is_deterministic_by_question_and_near_fraction():
    exs = [D.Example(str(i), "freetext", f"question number {i}?", "a") for i in range(2000)]
    first = [D.in_eval_split(e, 0.1, 42) for e in exs]
    assert first == [D.in_eval_split(e, 0.1, 42) for e in exs]
    assert 150 < sum(first) < 250
    assert first != [D.in_eval_split(e, 0.1, 7) for e in exs]
    same_q = D.Example("x", "freetext", "  Question NUMBER 5? ", "other answer")
    assert D.in_eval_split(same_q, 0.1, 42) == first[5]  # a repeated question never straddles the split


@pytest.mark.parametrize("suffix", ["csv", "parquet", "json"])
def test_other_file_types_load(tmp_path, suffix):
    import pandas as pd

    df = pd.DataFrame({"question": ["What causes scurvy?", "What causes rickets?"],
                       "answer": ["Vitamin C deficiency.", "Vitamin D deficiency."]})
    path = tmp_path / f"d.{suffix}"
    {"csv": lambda: df.to_csv(path, index=False), "parquet": lambda: df.to_parquet(path),
     "json": lambda: path.write_text(json.dumps(df.to_dict("records")))}[suffix]()
    rows, cols = D.open_rows(str(path), DataConfig(source=str(path)), "train")
    assert D.detect_format(cols)[0] == "qa" and len(list(rows)) == 2


def test_streaming_reads_rows_one_by_one(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [{"question": f"Q{i}?", "answer": f"A{i}."} for i in range(50)])
    rows, cols = D.open_rows(str(path), DataConfig(source=str(path), streaming=True, max_samples=20), "train")
    assert not isinstance(rows, list) and not hasattr(rows, "__len__")
    assert cols == ["question", "answer"] and len(list(rows)) == 20


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(D.DataError, match="data file not found"):
        D.open_rows(str(tmp_path / "none.jsonl"), DataConfig(source="x.jsonl"), "train")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present (development data only)")
@pytest.mark.parametrize("name,fmt,kind", [("medquad_sample.jsonl", "qa", "freetext"),
                                           ("pubmedqa_pqal.jsonl", "pubmedqa", "yesno")])
def test_real_public_datasets(name, fmt, kind):
    path = str(SHARED_DATA / name)
    rows, cols = D.open_rows(path, DataConfig(source=path, max_samples=200), "train")
    got, m = D.detect_format(cols)
    assert got == fmt
    checks = D.Checks()
    kept = list(D.iter_examples(rows, got, m, checks, set()))
    assert len(kept) > 150 and {e.kind for e in kept} == {kind}
    if kind == "yesno":
        assert {e.answer for e in kept} <= {"yes", "no", "maybe"} and all(e.context for e in kept)
