"""The reinforce stage's items: the closed-form items of the training source (or rl.source), in the run's prompt
format, never an item the evaluate stage reports, every row read accounted for."""
import json

import pytest
from conftest import tiny_params, write_jsonl

from medqlora.config import load_config
from medqlora.core.rundir import RunDir
from medqlora.data import formats as D
from medqlora.data import preprocess as P
from medqlora.data.prompts import build_prompt
from medqlora.reinforce import data as RD
from medqlora.training import model as M

MCQ = [{"question": f"Which drug treats poisoning number {i}?", "options": {"A": f"Drug {i}", "B": "Water", "C": "Salt"},
        "answer": "A"} for i in range(10)]
FREE = [{"question": f"What is condition {i}?", "answer": f"Condition {i} is a disease."} for i in range(6)]
YESNO = [{"question": f"Does treatment {i} work?", "context": "A trial.", "long_answer": "It does.",
          "final_decision": "yes"} for i in range(3)]


def prepared(tmp_path, tiny_model_dir, train_rows, eval_rows, rl=None, **sections):
    src = write_jsonl(tmp_path / "train.jsonl", train_rows)
    ev = write_jsonl(tmp_path / "eval.jsonl", eval_rows) if eval_rows else None
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, src, ev, rl=rl or {}, **sections))
    run = RunDir(tmp_path / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    return cfg, run, tok


def test_only_closed_form_items_and_none_the_evaluate_stage_reports(tmp_path, tiny_model_dir):
    leaked = dict(MCQ[3])  # the same question in the eval file: never trained on by RL either
    cfg, run, tok = prepared(tmp_path, tiny_model_dir, MCQ + FREE, [leaked, FREE[0]],
                             data={"max_drop_fraction": 0.9})
    items = RD.prepare(cfg, run, tok)
    questions = [r["question"] for r in items.rows]
    assert len(items.rows) == 9 and MCQ[3]["question"] not in questions
    assert items.dropped == {"free text": 6, "leak": 1} and items.read == 16 == len(items.rows) + 7
    eval_keys = {D.question_key(D.Example.from_dict(json.loads(x))) for x in run.eval_items.read_text().splitlines()}
    assert not eval_keys & {D.question_key(D.Example.from_dict(r)) for r in items.rows}
    # the run's prompt format: the prompt the train and evaluate stages build for the same item
    first = items.rows[0]
    assert first["prompt"] == build_prompt(D.Example.from_dict(first), tok, "chat") and first["opened"] is False
    assert [json.loads(x)["id"] for x in RD.items_path(run).read_text().splitlines()] == [r["id"] for r in items.rows]
    ds = RD.to_dataset(items, "chat")
    assert set(ds.column_names) == {"prompt", "answer", "kind", "options", "opened"}
    assert ds[0]["prompt"][-1] == {"role": "user", "content": ds[0]["prompt"][-1]["content"]}
    assert tok.apply_chat_template(ds[0]["prompt"], tokenize=False, add_generation_prompt=True) == first["prompt"]
    assert json.loads(ds[0]["options"]) == first["options"]


def test_the_held_out_hash_split_of_the_training_source_is_left_out(tmp_path, tiny_model_dir):
    rows = [{"question": f"Which enzyme is deficient in disorder {i}?", "options": {"A": "One", "B": "Two"},
             "answer": "AB"[i % 2]} for i in range(40)]
    cfg, run, tok = prepared(tmp_path, tiny_model_dir, rows, None, data={"eval_fraction": 0.25})
    items = RD.prepare(cfg, run, tok)
    in_split = [r for r in rows if D.in_eval_split(D.Example.from_dict({**r, "kind": "choice", "id": ""}), 0.25, 42)]
    assert items.dropped == {"eval split": len(in_split)} and len(items.rows) == 40 - len(in_split) > 0
    assert items.reference == {"A": sum(r["answer"] == "A" for r in items.rows),
                               "B": sum(r["answer"] == "B" for r in items.rows)}


def test_a_named_rl_source_with_yes_no_items_in_the_reasoning_format(tmp_path, tiny_model_dir):
    src = write_jsonl(tmp_path / "rl.jsonl", YESNO + [{**YESNO[0], "question": "Does treatment 9 work?"}])
    cfg, run, tok = prepared(tmp_path, tiny_model_dir, FREE, [YESNO[0]], rl={"source": str(src), "max_items": 2},
                             data={"template": "reasoning"})
    items = RD.prepare(cfg, run, tok)
    assert [r["question"] for r in items.rows] == ["Does treatment 1 work?", "Does treatment 2 work?"]
    assert {r["kind"] for r in items.rows} == {"yesno"} and items.source == str(src)
    assert items.dropped == {"leak": 1, "over rl.max_items": 1}
    assert items.rows[0]["prompt"] == build_prompt(D.Example.from_dict(items.rows[0]), tok, "reasoning")


def test_prompts_without_room_for_the_completion_are_left_out_and_counted(tmp_path, tiny_model_dir):
    long = [{"question": "Which drug? " + "very long history " * 100, "options": {"A": "x", "B": "y"}, "answer": "B"}]
    cfg, run, tok = prepared(tmp_path, tiny_model_dir, MCQ + long, [FREE[0]], rl={"max_completion_length": 256})
    items = RD.prepare(cfg, run, tok)
    assert items.dropped == {"over-long": 1} and len(items.rows) == 10
    assert max(r["n_prompt_tokens"] for r in items.rows) + 256 <= cfg.model.max_seq_length


def test_no_closed_form_item_stops_the_stage_with_the_fix(tmp_path, tiny_model_dir):
    cfg, run, tok = prepared(tmp_path, tiny_model_dir, FREE, [FREE[0]], data={"max_drop_fraction": 0.9})
    with pytest.raises(ValueError, match="no closed-form items .* give rl.source"):
        RD.prepare(cfg, run, tok)


@pytest.mark.parametrize("mode", ["drop", "warn"])
def test_items_sharing_13_words_with_an_eval_item_follow_data_decontaminate(tmp_path, tiny_model_dir, mode):
    stem = "A 45-year-old man presents with crushing chest pain radiating to the left arm and diaphoresis for an hour"
    ev = {"question": stem + ". What is the next step?", "options": {"A": "ECG", "B": "CT", "C": "MRI"}, "answer": "A"}
    near = {"question": stem + " after a long run. Which drug first?", "options": {"A": "Aspirin", "B": "Tea"},
            "answer": "A"}
    cfg, run, tok = prepared(tmp_path, tiny_model_dir, MCQ + [near], [ev], data={"decontaminate": mode})
    items = RD.prepare(cfg, run, tok)
    kept = [r["question"] for r in items.rows]
    if mode == "drop":
        assert items.dropped == {"contaminated": 1} and near["question"] not in kept
    else:
        assert items.dropped == {} and near["question"] in kept
        assert items.decontamination["warnings"] and items.decontamination["warnings"][0].startswith(
            "reinforce items: held-out")
