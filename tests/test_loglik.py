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


def full_logit_scores(model, tok, pairs):
    """The scores as computed before issue 28: logits at every position of the right-padded batch, then the slice."""
    import torch

    inputs = sorted({tuple((c + k)[:-1]) for c, k in pairs}, key=len, reverse=True)
    ids = torch.tensor([list(x) + [tok.pad_token_id] * (len(inputs[0]) - len(x)) for x in inputs])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    out = []
    for c, k in pairs:
        row = inputs.index(tuple((c + k)[:-1]))
        lp = logp[row, len(c) - 1:len(c) - 1 + len(k)]
        target = torch.tensor(k)
        out.append((float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all())))
    return out


def test_logits_are_computed_only_at_the_scored_positions_with_the_same_scores(tiny_lm):
    model, tok = tiny_lm
    contexts = ("Q: scurvy?\nAnswer:", "Question: a much longer question about statins, LDL and the heart?\nAnswer:",
                "Question: which drug reverses an opioid overdose in the emergency department, and how fast?\nAnswer:")
    pairs = [LL.encode_pair(tok, c, k, False) for c in contexts for k in (" yes", " no", " vitamin C", " naloxone")]
    rows = []
    hook = model.get_output_embeddings().register_forward_hook(lambda m, a, out: rows.append(out.shape[:-1].numel()))
    try:
        got = LL.loglikelihoods(model, tok, pairs, batch_size=16, print_fn=lambda *a: None)
    finally:
        hook.remove()
    positions = {tuple((c + k)[:-1]): len(k) for c, k in pairs}
    assert len(rows) == 1 and rows[0] == sum(positions.values()), "one logit row a scored position, not batch x width"
    want = full_logit_scores(model, tok, pairs)
    assert [g for _, g in got] == [g for _, g in want]
    assert [v for v, _ in got] == pytest.approx([v for v, _ in want], abs=1e-5)


def test_models_without_a_hookable_output_layer_or_logits_to_keep_score_the_same(tiny_lm, monkeypatch):
    import torch

    model, tok = tiny_lm
    pairs = [LL.encode_pair(tok, c, k, False) for c in ("Q: scurvy?\nAnswer:", "Question: which vitamin is it?\nAnswer:")
             for k in (" yes", " vitamin C")]
    want = LL.loglikelihoods(model, tok, pairs, batch_size=4, print_fn=lambda *a: None)

    class NoLogitsToKeep(torch.nn.Module):  # a forward that takes no logits_to_keep: every position's logits
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, use_cache=False):
            return self.inner(input_ids=input_ids, use_cache=use_cache)

        def get_output_embeddings(self):
            return self.inner.get_output_embeddings()

    def same(m):
        got = LL.loglikelihoods(m, tok, pairs, batch_size=4, print_fn=lambda *a: None)
        return [g for _, g in got] == [g for _, g in want] and \
            [v for v, _ in got] == pytest.approx([v for v, _ in want], abs=1e-5)

    class Reshapes(NoLogitsToKeep):  # a forward that reshapes the output layer's result to batch x positions
        def forward(self, input_ids, logits_to_keep=0, use_cache=False):
            out = self.inner(input_ids=input_ids, logits_to_keep=logits_to_keep, use_cache=use_cache)
            out.logits = out.logits.reshape(input_ids.shape[0], logits_to_keep or input_ids.shape[1], -1)
            return out

    assert same(Reshapes(model))
    wrapped = NoLogitsToKeep(model)
    for m in (wrapped, model):
        assert same(m)
        monkeypatch.setattr(m, "get_output_embeddings", lambda: None)  # then: no output layer to hook
        assert same(m)


def test_the_loglik_batch_is_sized_by_its_own_memory(tiny_model_dir):
    from medqlora.config import RunConfig
    from medqlora.training import memory as MEM
    from medqlora.training import memory_plan as PLAN
    from medqlora.training.model import compute_dtype

    # SmolLM2-135M at the 703 positions x 128 rows: full logits held 16.5 GiB; only the scored ones now
    smollm = MEM.ModelShape(hidden=576, layers=30, intermediate=1536, heads=9, kv_heads=3, vocab=49152, tied=True,
                            head_dim=64)
    est = PLAN.estimate_loglik(smollm, batch=128, width=703, positions=128, four_bit=False, dtype_bytes=4)
    assert est["logits (scored positions only)"] == pytest.approx(128 * 49152 * 4 * 3 / MEM.GIB)
    assert sum(est.values()) < 3.0
    pairs = [([i + 1] * 700, [5]) for i in range(200)]  # 200 distinct inputs of 701 tokens, one scored token each
    shape = MEM.model_shape(tiny_model_dir)

    def cfg(**e):
        return RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": tiny_model_dir},
                                         "data": {"source": "x.jsonl"}, "eval": e,
                                         "memory": {"budget_gb": budget, "max_fraction": 1.0}})

    budget = 1.0
    dtype_bytes = compute_dtype(cfg().model).itemsize

    def at(batch):
        return sum(PLAN.estimate_loglik(shape, batch, 700, batch, four_bit=True, dtype_bytes=dtype_bytes).values())

    budget = (at(8) + at(16)) / 2
    batch, info = LL.batch_for(cfg(), tiny_model_dir, pairs, print_fn=lambda *a: None)
    assert batch == 8 and info["estimate_gb"] and "auto" in info["why"]
    budget = 1000.0
    assert LL.batch_for(cfg(max_batch_size=64), tiny_model_dir, pairs, print_fn=lambda *a: None)[0] == 64
    assert LL.batch_for(cfg(batch_size=3), tiny_model_dir, pairs, print_fn=lambda *a: None)[0] == 3


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
    # the log-likelihood pass has its own batch and its own peak in memory.jsonl
    from medqlora.core import memory_log

    assert r["loglik_batching"]["batch_size"] >= 1 and r["loglik_batching"]["estimate_gb"]
    peaks = [x["peak_gb"] for x in memory_log.read_records(run) if x["event"] == "finetuned log-likelihood: yn"]
    assert peaks and peaks[-1] > 0
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
