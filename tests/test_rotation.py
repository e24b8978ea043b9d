"""Option-order robustness (issue 30, point 3): multiple-choice items scored by log-likelihood are scored again with
the options rotated (each answer text at every letter once); the accuracy averaged over rotations and the share of
items whose chosen answer text is the same under every rotation are reported, and the headline warns when that share
is low or the accuracy falls under rotation."""
import json

import pytest
from conftest import tiny_params, write_jsonl

from medqlora.config import load_config
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.data.formats import Example
from medqlora.data.prompts import build_prompt
from medqlora.evaluation import evaluate as EV
from medqlora.evaluation import rotation as R
from medqlora.evaluation import tables
from medqlora.export import exporter as E
from medqlora.run import headline as H
from medqlora.training import model as M
from medqlora.training import train as T

ITEM = {"id": "q1", "kind": "choice", "question": "Which vitamin deficiency causes scurvy?",
        "options": {"A": "Vitamin A", "B": "Vitamin C", "C": "Vitamin D", "D": "Vitamin K"}, "answer": "B"}


def test_each_answer_text_goes_to_every_letter_once_and_the_answer_follows_its_text(tokenizer):
    rotations = [R.rotate(ITEM, r) for r in range(4)]
    assert rotations[0]["options"] == ITEM["options"] and rotations[0]["answer"] == "B"
    assert rotations[1]["options"] == {"A": "Vitamin K", "B": "Vitamin A", "C": "Vitamin C", "D": "Vitamin D"}
    for rot in rotations:
        assert list(rot["options"]) == list("ABCD") and rot["options"][rot["answer"]] == "Vitamin C"
    for text in ITEM["options"].values():
        assert sorted(next(k for k, v in rot["options"].items() if v == text) for rot in rotations) == list("ABCD")
    # the chat prompt is built again as preprocess built it, with the options in their new places
    item = {**ITEM, "prompt": build_prompt(Example.from_dict(ITEM), tokenizer, "chat")}
    again = R.rotate(item, 2, tokenizer, "chat", None)
    assert again["prompt"] == build_prompt(Example.from_dict(again), tokenizer, "chat")
    assert "A. Vitamin D" in again["prompt"] and R.rotate(item, 0, tokenizer, "chat", None)["prompt"] == item["prompt"]


def test_rotation_figures_from_picks(monkeypatch):
    """A model that always says 'A': accuracy 1/4 averaged over rotations, no item answered the same way; one that
    picks the right text wherever it sits: accuracy 1 and every item consistent."""
    items = [dict(ITEM, id=f"q{i}") for i in range(3)]

    def scorer(letter_of):
        def score(model, tok, rotated, *a, **kw):
            return [{"pick": letter_of(it), "correct": letter_of(it) == it["answer"]} for it in rotated]
        return score

    for letter_of, acc, consistent in ((lambda it: "A", 0.25, 0.0), (lambda it: it["answer"], 1.0, 1.0)):
        monkeypatch.setattr(R, "score_choices", scorer(letter_of))
        choices = [{"pick": letter_of(it), "correct": letter_of(it) == it["answer"]} for it in items]
        R.add_rotations(None, None, items, choices, "lm_eval", "chat", None, 4, "test", print_fn=lambda *a: None)
        m = R.rotation_metrics(choices)
        assert m["loglik_acc_rotated"] == pytest.approx(acc) and m["rotation_consistency"] == consistent
        assert m["rotation"] == {"items": 3, "rotations": 12, "as_written": 1.0 if acc == 1.0 else 0.0}
        assert choices[0]["rotation"]["chosen"] == (["A", "D", "C", "B"] if acc < 1 else ["B"] * 4)


def test_a_model_trained_to_answer_a_has_low_rotation_consistency_and_the_headline_warns(tmp_path, tiny_model_dir):
    """A tiny model fine-tuned on items whose answer is always 'A' picks 'A' whatever sits there: under rotation its
    chosen text changes, so few items keep their answer. The run uses the default eval settings (choice_scoring
    both): its report shows the rotation figures."""
    rows = [{"question": f"Which antidote reverses poison {i}?",
             "options": {"A": f"Antidote {i}", "B": f"Toxin {i}", "C": "Saline", "D": "Charcoal"}, "answer": "A"}
            for i in range(24)]
    ev = []
    for i in range(6):  # the right text, 'Antidote i', sits at letter A, B, C, D, A, B: 'A' is right for 2 of 6
        texts = [f"Antidote {i}", f"Toxin {i}", "Saline", "Charcoal"]
        options = dict(zip("ABCD", texts[-(i % 4):] + texts[:-(i % 4)] if i % 4 else texts))
        ev.append({"question": f"Which antidote reverses venom {i}?", "options": options,
                   "answer": next(k for k, v in options.items() if v == texts[0])})
    src, evf = write_jsonl(tmp_path / "t.jsonl", rows), write_jsonl(tmp_path / "e.jsonl", ev)
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, src, evf, train={"max_steps": 16, "learning_rate": 1e-2},
                                  data={"val_fraction": 0.2}))
    run = RunDir(tmp_path / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None)
    # the real validation scorer: every validation item's answer is 'A', and the trained model says 'A'
    assert result["val_accuracies"][-1][1] == 1.0, result["val_accuracies"]
    run.save_result("train", result)
    run.save_result("export", E.export(cfg, run))
    ev_result = EV.compare(cfg, run, print_fn=lambda *a: None)
    run.save_result("evaluate", ev_result)
    tuned = ev_result["metrics"]["finetuned"]
    assert tuned["loglik_closed"]["predicted"] == {"A": 6}, "premise: the fine-tuned model answers 'A'"
    assert tuned["rotation"]["items"] == 6 and tuned["rotation_consistency"] == 0.0
    assert tuned["loglik_acc_rotated"] == pytest.approx(0.25)
    answers = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines()]
    assert all(a["finetuned_loglik"]["rotation"]["picks"] == ["A"] * 4 for a in answers)
    h = H.build(run)
    assert ("held-out: fine-tuned picks the same answer under every order of the options for only 0% of 6 "
            "multiple-choice items (log-likelihood)") in "\n".join(h.warnings), h.warnings
    md = H.markdown(h)
    assert "accuracy (log-likelihood, averaged over option rotations)" in md
    assert "same answer under every option rotation (share of items)" in md
    shown = tables.metrics_table(ev_result)
    assert {"loglik_acc_rotated", "rotation_consistency"} <= set(shown.index)
    assert "rotation_consistency" in set(tables.sets_table(ev_result).index.get_level_values("metric"))
