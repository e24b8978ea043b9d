"""Log-likelihood scoring of closed-form items (eval.choice_scoring): lm-eval's prompt and tokenization, batched
forward passes that give the same numbers as one sequence at a time, acc against acc_norm, and the stage's output."""
import json
import shutil
import subprocess
import sys

import pytest

from medqlora.evaluation import loglik as LL
from medqlora.evaluation.scoring import closed_warnings

MCQ = {"id": "m1", "kind": "choice", "question": "Which vitamin deficiency causes scurvy?", "answer": "B",
       "options": {"A": "Vitamin A", "B": "Vitamin C", "C": "Iron", "D": "Zinc"}, "prompt": "Q: scurvy?\nA: "}
YESNO = {"id": "y1", "kind": "yesno", "question": "Do statins lower LDL?", "answer": "yes",
         "context": "A randomized trial of statins.", "prompt": "Q: statins?\nA: "}


@pytest.fixture(scope="module")
def tiny_lm(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval(), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_lm_eval_prompt_is_the_medqa_and_pubmedqa_tasks():
    assert LL.lm_eval_context(MCQ) == ("Question: Which vitamin deficiency causes scurvy?\nA. Vitamin A\nB. Vitamin C\n"
                                       "C. Iron\nD. Zinc\nAnswer:")
    assert LL.lm_eval_context(YESNO) == "Abstract: A randomized trial of statins.\nQuestion: Do statins lower LDL?\nAnswer:"
    assert LL.requests_for(MCQ, "lm_eval")[1:] == (["A", "B", "C", "D"], [" A", " B", " C", " D"])
    # the chat prompt is the run's own, continued the way the model was taught to start its answer
    assert LL.requests_for(YESNO, "chat") == ("Q: statins?\nA: ", ["yes", "no", "maybe"], ["Yes", "No", "Maybe"])


def test_trailing_space_of_the_context_moves_to_the_continuation(tokenizer):
    ctx, cont = LL.encode_pair(tokenizer, "Answer: ", "A", False)
    assert (ctx, cont) == LL.encode_pair(tokenizer, "Answer:", " A", False)
    whole = tokenizer("Answer: A", add_special_tokens=False)["input_ids"]
    assert ctx + cont == whole and tokenizer.decode(cont) == " A"  # one ' A' token, not ' ' then 'A'


def test_batched_loglikelihoods_equal_one_sequence_at_a_time(tiny_lm):
    import torch

    model, tok = tiny_lm
    contexts = ("Question: scurvy?\nAnswer:", "Question: a much longer question about statins and LDL?\nAnswer:")
    pairs = [LL.encode_pair(tok, c, k, False) for c in contexts for k in (" yes", " no", " maybe", " A", " vitamin C")]
    lines = []
    batched = LL.loglikelihoods(model, tok, pairs, batch_size=3, print_fn=lines.append)
    for (ctx, cont), (ll, greedy) in zip(pairs, batched):
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ctx + cont])).logits[0].float(), -1)
        want = sum(float(logp[len(ctx) - 1 + j, t]) for j, t in enumerate(cont))
        assert ll == pytest.approx(want, abs=1e-4)
        assert greedy == all(int(logp[len(ctx) - 1 + j].argmax()) == t for j, t in enumerate(cont))
    # one-token options after one prompt share a forward pass: 10 options, fewer sequences
    assert "10 options scored by log-likelihood in" in lines[0] and " in 10 sequences" not in lines[0]


def test_acc_norm_divides_by_the_options_characters(monkeypatch, tokenizer):
    # yes -3.0 (-1.0 a character), no -2.5 (-1.25), maybe -4.5 (-0.9): acc picks 'no', acc_norm 'maybe'
    monkeypatch.setattr(LL, "loglikelihoods", lambda *a, **k: [(-3.0, False), (-2.5, False), (-4.5, False)])
    [c] = LL.score_choices(None, tokenizer, [YESNO], "lm_eval", "chat", 4)
    assert (c["pick"], c["pick_norm"], c["chars"]) == ("no", "maybe", [3, 2, 5])
    assert not c["correct"] and not c["correct_norm"]


def test_a_constant_answer_is_warned_for_every_set_and_scoring():
    items = [dict(YESNO, answer=a) for a in ["yes"] * 13 + ["no"] * 12 + ["maybe"] * 5]
    choices = [{"pick": "yes", "correct": it["answer"] == "yes", "correct_norm": False} for it in items]
    m = LL.loglik_metrics(items, choices)
    assert m["loglik_acc"] == pytest.approx(13 / 30) and m["loglik_acc_norm"] == 0.0
    assert m["loglik_closed"]["dominant"] == "yes" and m["loglik_closed"]["predicted"] == {"yes": 30}
    assert m["loglik_acc_stderr"] == pytest.approx(LL.stderr([1.0] * 13 + [0.0] * 17))
    warnings = closed_warnings("yesno", {"base": m, "finetuned": {**m, "loglik_acc": 0.2}})
    assert "yesno: base answers 'yes' to 100% of 30 items (log-likelihood)" in warnings
    assert any("fine-tuned accuracy 0.200 (log-likelihood) is not above the majority-class baseline 0.433" in w
               for w in warnings)
    assert LL.loglik_metrics(items, [None] * 30)["loglik_acc"] is None


def test_reasoning_runs_keep_generation_for_their_thought():
    from medqlora.config import RunConfig
    from medqlora.evaluation.evaluate import choice_plan

    def plan(template, scoring, prompt="chat"):
        cfg = RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": "m"},
                                        "data": {"source": "x.jsonl", "template": template},
                                        "eval": {"choice_scoring": scoring, "choice_prompt": prompt}})
        return choice_plan(cfg)["generate"], choice_plan(cfg)["loglik"]

    assert plan("chat", "both") == (True, True) and plan("chat", "loglik") == (False, True)
    assert plan("chat", "generate") == (True, False)
    assert plan("reasoning", "loglik") == (True, False), "a thought cannot be skipped by a log-likelihood"
    assert plan("reasoning", "loglik", "lm_eval") == (True, True)
    with pytest.raises(ValueError, match="choice_scoring"):
        RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": "m"}, "data": {"source": "x.jsonl"},
                                  "eval": {"choice_scoring": "logprob"}})


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, tiny_model_dir):
    """A tiny model trained 2 steps, with a held-out split of free text, multiple choice and yes/no."""
    from conftest import tiny_params, write_jsonl

    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir
    from medqlora.data import preprocess as P
    from medqlora.export import exporter as E
    from medqlora.training import model as M
    from medqlora.training import train as T

    tmp = tmp_path_factory.mktemp("loglik")
    rows = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}."} for i in range(4)]
    ev = [{"question": "What causes scurvy?", "answer": "Lack of vitamin C."},
          {"question": "Which vitamin prevents scurvy?", "options": MCQ["options"], "answer": "B"},
          {"question": "Which mineral is low in anemia?", "options": MCQ["options"], "answer": "C"}]
    yn = [{"question": q, "context": "A trial.", "long_answer": "It does.", "final_decision": d}
          for q, d in (("Do statins lower LDL?", "yes"), ("Do antibiotics treat colds?", "no"))]
    params = tiny_params(tmp, tiny_model_dir, write_jsonl(tmp / "t.jsonl", rows), write_jsonl(tmp / "e.jsonl", ev),
                         train={"max_steps": 2}, export={"formats": ["lora"]},
                         eval={"sets": [{"name": "yn", "source": str(write_jsonl(tmp / "yn.jsonl", yn))}]})
    cfg = load_config(params)
    run = RunDir(tmp / "run")
    shutil.copy(params, run.config_path)  # as the runner leaves it: `ask` reads the run's own config
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    run.save_result("train", T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None))
    run.save_result("export", E.export(cfg, run))
    return cfg, run


@pytest.mark.parametrize("scoring", ["loglik", "both"])
def test_the_stage_reports_loglik_beside_generation(mixed_run, scoring):
    from medqlora.evaluation import evaluate as EV

    cfg, run = mixed_run
    c = cfg.model_copy(deep=True)
    c.eval.choice_scoring, c.eval.choice_prompt, c.eval.merge = scoring, "lm_eval", False
    r = EV.compare(c, run, print_fn=lambda *a: None)
    m = r["metrics"]["base"]
    assert r["choice_scoring"]["loglik"] and r["choice_scoring"]["generate"] is (scoring == "both")
    assert m["n_freetext"] == 1 and m["n_choice"] == 2 and m["rougeL"] is not None
    assert 0 <= m["loglik_acc"] <= 1 and sum(m["loglik_closed"]["predicted"].values()) == 2
    yn = r["sets"]["yn"]["metrics"]["finetuned"]
    assert yn["n_choice"] == 2 and sum(yn["loglik_closed"]["predicted"].values()) == 2
    assert set(r["changes"]) >= {"loglik_acc", "loglik_acc_norm"}
    assert (m["accuracy"] is not None) is (scoring == "both"), "generation accuracy only where items were generated"
    rows = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines()]
    closed = [row for row in rows if row["kind"] != "freetext"]
    assert all(row["base_loglik"]["pick"] in row["base_loglik"]["choices"] and len(row["finetuned_loglik"]["loglik"])
               == len(row["finetuned_loglik"]["choices"]) for row in closed)
    assert closed[0]["options"] == MCQ["options"]
    if scoring == "loglik":  # nothing generated for closed items: the pick is the answer and the score
        assert all(row["base"] is None and row["base score"] == float(row["base_loglik"]["correct"]) for row in closed)


def test_ask_shows_progress_and_no_library_noise(mixed_run):
    _, run = mixed_run
    r = subprocess.run([sys.executable, "-m", "medqlora.evaluation.ask", str(run.path), "What causes scurvy?",
                        "--max-new-tokens", "4"], capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "s] loading" in r.stdout and "the fine-tuned model answers 1 question" in r.stdout
    assert "Q: What causes scurvy?" in r.stdout and "fine-tuned:" in r.stdout
    assert r.stderr == "", f"library output reached the terminal: {r.stderr[:500]}"


def test_max_samples_scores_the_same_seeded_sample_with_both_models(mixed_run):
    from medqlora.evaluation import evaluate as EV

    cfg, run = mixed_run
    c = cfg.model_copy(deep=True)
    c.eval.choice_scoring, c.eval.merge, c.eval.max_samples = "loglik", False, 2
    lines = []
    r = EV.compare(c, run, print_fn=lines.append)
    held = r["sets"]["held-out"]
    assert held["sampled"] == r["sampled"] == {"n": 2, "of": 3, "seed": 0} and held["n_items"] == 2
    assert r["sets"]["yn"]["sampled"] is None, "a set scored whole says so"
    assert any(line.startswith("== held-out: 2 of 3 (a seeded sample") for line in lines)
    rows = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines()]
    assert [row["kind"] for row in rows] == ["freetext", "choice"], "a free-text and a closed item, in file order"
    assert rows[1]["base_loglik"] and rows[1]["finetuned_loglik"], "both models scored the same items"
