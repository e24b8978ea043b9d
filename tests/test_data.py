import json

import pytest
from conftest import SHARED_DATA, write_jsonl

from medqlora.config import DataConfig
from medqlora.data import formats as D

CASES = {
    "qa": ({"question": "What causes scurvy?", "answer": "Vitamin C deficiency."},
           "freetext", "What causes scurvy?", "Vitamin C deficiency."),
    "alpaca": ({"instruction": "Answer the question.", "input": "What causes scurvy?", "output": "Vitamin C deficiency."},
               "freetext", "What causes scurvy?", "Vitamin C deficiency."),
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
    if case == "alpaca":  # the instruction is asked before the input, but is not the question's identity
        assert ex.instruction == "Answer the question."


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
    assert checks.dropped == {"empty question": 1, "empty answer": 1, "duplicate": 1, "answer not an option": 1}
    assert "answer 'E' is neither a letter among options A-B" in checks.samples["answer not an option"][0]["reason"]
    assert checks.read == len(kept) + sum(checks.dropped.values())


def test_bad_yes_no_decision_is_malformed():
    ex, why = D.normalize({"question": "Q?", "final_decision": "perhaps"}, "pubmedqa",
                          {"question": "question", "final_decision": "final_decision"}, 0)
    assert ex is None and "not yes/no/maybe" in why


def test_chat_without_assistant_answer_is_malformed():
    ex, why = D.normalize({"messages": [{"role": "user", "content": "hi"}]}, "chat", {"messages": "messages"}, 0)
    assert ex is None and why.startswith("malformed chat")


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


# ---------------------------------------------------------------- rows read as what they are (issue: bad data)

MCQ_MAP = {"question": "question", "options": "options", "answer": "answer"}


def one(row, fmt="mcq", m=MCQ_MAP):
    ex, why = D.normalize(row, fmt, m, 0)
    return ex, why


@pytest.mark.parametrize("options", [
    "{'A': 'Vitamin A', 'B': 'Vitamin C', 'C': 'Vitamin D'}",        # a dict as pandas writes it into CSV
    '{"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D"}',        # JSON text
    "A. Vitamin A\nB. Vitamin C\nC. Vitamin D",                      # a text block
    "(A) Vitamin A\n(B) Vitamin C\n(C) Vitamin D",
    "['Vitamin A', 'Vitamin C', 'Vitamin D']",
], ids=["python-dict", "json-text", "text-block", "parenthesised", "python-list"])
def test_options_written_as_text_are_parsed_not_turned_into_free_text(options):
    ex, why = one({"question": "Scurvy is caused by lack of?", "options": options, "answer": "B"})
    assert why is None and ex.kind == "choice" and ex.answer == "B"
    assert ex.options == {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D"}


def test_unreadable_options_are_dropped_with_the_reason_never_read_as_free_text():
    ex, why = one({"question": "Scurvy?", "options": "Vitamin A or Vitamin C", "answer": "B"})
    assert ex is None and why.startswith("options unreadable: 'Vitamin A or Vitamin C' is neither JSON")


def test_squad_style_answers_are_their_text():
    ex, why = one({"question": "Which receptor does the virus bind?",
                   "answers": {"text": ["ACE2"], "answer_start": [21]}}, "qa", {"question": "question", "answer": "answers"})
    assert why is None and ex.answer == "ACE2"


def test_multiple_choice_keeps_its_chain_of_thought():
    row = {"question": "Scurvy is caused by lack of?", "options": {"A": "Vitamin A", "B": "Vitamin C"}, "answer": "B",
           "cot": "Collagen synthesis needs ascorbate."}
    fmt, m = D.detect_format(row)
    assert fmt == "mcq"
    ex, _ = D.normalize(row, fmt, m, 0)
    assert ex.kind == "choice" and ex.reasoning == "Collagen synthesis needs ascorbate."
    ex, _ = D.normalize(row, "reasoning", D.check_format("reasoning", row, {}), 0)  # forcing reasoning keeps options
    assert ex.kind == "choice" and ex.options and ex.reasoning


def test_an_answer_that_is_an_options_text_wins_over_the_same_letter():
    ex, _ = one({"question": "Which vitamin is fat-soluble and needed for clotting?",
                 "options": ["A", "C", "D", "K"], "answer": "D"})
    assert ex.answer == "C" and ex.options["C"] == "D"
    ex, _ = one({"question": "Scurvy?", "options": {"A": "Vitamin A", "B": "Vitamin C"}, "answer": "b"})
    assert ex.answer == "B"


def test_duplicates_of_multiple_choice_are_the_same_item_not_the_same_stem():
    stem = "Which drug is first line?"
    a = {"question": stem, "options": {"A": "Metformin", "B": "Insulin"}, "answer": "A"}
    shuffled = {"question": stem, "options": {"A": "Insulin", "B": "Metformin"}, "answer": "B"}
    other = {"question": stem, "options": {"A": "Amlodipine", "B": "Lisinopril"}, "answer": "A"}
    checks = D.Checks()
    kept = list(D.iter_examples([a, shuffled, other], "mcq", MCQ_MAP, checks, set()))
    assert len(kept) == 2 and checks.dropped == {"duplicate": 1}
    assert kept[1].options["A"] == "Amlodipine"


def test_split_and_leak_keys_ignore_system_prompts_and_match_across_formats():
    def chat(system):
        return D.normalize({"messages": [{"role": "system", "content": system},
                                         {"role": "user", "content": "What causes scurvy?"},
                                         {"role": "assistant", "content": "Vitamin C deficiency."}]},
                           "chat", {"messages": "messages"}, 0)[0]
    keys = {D.question_key(chat(f"You are assistant number {i}.")) for i in range(200)}
    assert len(keys) == 1
    sides = {D.in_eval_split(chat(f"You are assistant number {i}."), 0.1, 42) for i in range(200)}
    assert len(sides) == 1, "the same question under many system prompts lands on one side only"
    qa, _ = D.normalize({"question": "What causes  SCURVY?", "answer": "x"}, "qa", {"question": "question",
                                                                                    "answer": "answer"}, 0)
    alpaca, _ = D.normalize({"instruction": "Answer briefly.", "input": "What causes scurvy?", "output": "x"},
                            "alpaca", {"instruction": "instruction", "input": "input", "output": "output"}, 0)
    assert D.question_key(qa) == D.question_key(alpaca) == keys.pop()


def test_pubmedqa_decision_and_other_fields_can_be_mapped():
    cfg = DataConfig(source="x.jsonl", columns={"final_decision": "verdict", "long_answer": "why",
                                                "answer_idx": "key", "explanation": "exp"})
    fmt, m = D.resolve_format(["question", "context", "why", "verdict"], cfg.model_copy(update={"columns": {
        "final_decision": "verdict", "long_answer": "why"}}))
    assert fmt == "pubmedqa"
    ex, _ = D.normalize({"question": "Q?", "context": "C", "why": "Because.", "verdict": "Maybe"}, fmt, m, 0)
    assert ex.answer == "maybe" and ex.explanation == "Because."
    assert cfg.columns["answer_idx"] == "key"


def test_a_bad_line_is_one_counted_drop_with_its_line_and_reason(tmp_path):
    path = tmp_path / "d.jsonl"
    good = [json.dumps({"question": f"What causes disease {i}?", "answer": f"Cause {i}."}) for i in range(4)]
    path.write_bytes("\n".join([good[0], '{"question": "Trunc', good[1], "[1, 2]", good[2]]).encode()
                     + b'\n{"question": "bad \xff byte", "answer": "x"}\n' + good[3].encode() + b"\n")
    rows, cols = D.open_rows(str(path), DataConfig(source=str(path)), "train")
    checks = D.Checks()
    kept = list(D.iter_examples(rows, "qa", {"question": "question", "answer": "answer"}, checks, set()))
    assert len(kept) == 4 and checks.read == 7 and checks.dropped == {"unreadable": 3}
    reasons = [s["reason"] for s in checks.samples["unreadable"]]
    assert reasons[0].startswith("unreadable: line 2: invalid JSON (Unterminated string")
    assert reasons[1] == "unreadable: line 4: a JSON list where one JSON object per line was expected"
    assert reasons[2].startswith("unreadable: line 6: not valid UTF-8 (byte 0xff at column 19)")
    rows, _ = D.open_rows(str(path), DataConfig(source=str(path)), "train")
    with pytest.raises(D.DataError, match="line 2: invalid JSON.*data.on_bad_rows is fail"):
        list(D.iter_examples(rows, "qa", {"question": "question", "answer": "answer"}, D.Checks(), set(), "fail"))


def test_csv_rows_with_the_wrong_number_of_fields_are_counted(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('question,answer\n"What causes scurvy?","Vitamin C deficiency."\nonly one field\n'
                    '"What causes rickets?","Vitamin D deficiency.",extra\n"What causes pellagra?","Niacin."\n')
    rows, cols = D.open_rows(str(path), DataConfig(source=str(path)), "train")
    checks = D.Checks()
    kept = list(D.iter_examples(rows, "qa", {"question": "question", "answer": "answer"}, checks, set()))
    assert [e.answer for e in kept] == ["Vitamin C deficiency.", "Niacin."]
    assert [s["reason"] for s in checks.samples["unreadable"]] == [
        "unreadable: line 3: 1 fields where the header has 2", "unreadable: line 4: 3 fields where the header has 2"]


def test_answer_lists_and_double_encoded_lines_are_read_and_said_in_the_notes(tmp_path):
    """Issue 28: an answer given as a list of alternatives trains the first, a line that is a JSON string holding a
    JSON object is read as that object, and the checks say how many of each (the preprocess notes show them)."""
    rows = [{"question": f"Q{i}?", "answer": [f"A{i}.", "Other."]} for i in range(3)]
    text = "".join(json.dumps(json.dumps(r)) + "\n" for r in rows[:2]) + json.dumps(rows[2]) + "\n"
    path = tmp_path / "d.jsonl"
    path.write_text(text)
    cfg = DataConfig(source=str(path))
    rows_, cols = D.open_rows(str(path), cfg, "train")
    fmt, m = D.resolve_format(cols, cfg)
    checks = D.Checks()
    kept = list(D.iter_examples(rows_, fmt, m, checks, set()))
    assert [e.answer for e in kept] == ["A0.", "A1.", "A2."] and checks.dropped == {}
    assert checks.notes == {"answer lists": 3, "double-encoded": 2}
    assert any("first of each" in n for n in D.notes_text(checks))
