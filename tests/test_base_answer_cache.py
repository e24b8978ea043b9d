"""The base model's answers are computed once per base model, eval items and generation settings, and reused by every
run of a batch and by a resumed run; any change of the model, the items or the settings computes them again
(issue 31)."""
import json
import shutil
import types
from pathlib import Path

import pytest


def fake_model_folder(path: Path, big_bytes: bytes = b"\x01" * (6 << 20)) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    (path / "model.safetensors").write_bytes(big_bytes)  # past the size hashed whole: sampled
    return path


def test_the_fingerprint_follows_the_weights_not_where_they_sit(tmp_path):
    from medqlora.evaluation.answer_cache import model_fingerprint

    a = fake_model_folder(tmp_path / "a")
    first = model_fingerprint(str(a))
    assert first and model_fingerprint(str(a)) == first
    shutil.copytree(a, tmp_path / "copy")
    assert model_fingerprint(str(tmp_path / "copy")) == first, "the same files elsewhere are the same model"
    (a / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 65}))
    assert model_fingerprint(str(a)) != first
    b = fake_model_folder(tmp_path / "b", b"\x02" + b"\x01" * ((6 << 20) - 1))  # other weights, same size
    assert model_fingerprint(str(b)) != model_fingerprint(str(tmp_path / "copy"))
    assert model_fingerprint("no-such-org/no-such-model-31") is None, "not on this machine: unidentified"


@pytest.fixture
def key_setup(tmp_path, tokenizer_dir):
    from conftest import tiny_params, write_jsonl

    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir

    model = fake_model_folder(tmp_path / "model")
    params = tiny_params(tmp_path, str(model), write_jsonl(tmp_path / "t.jsonl", [{"question": "q", "answer": "a"}]),
                         None)
    return load_config(params), RunDir(tmp_path / "reports" / "run"), str(model)


def cache_for(cfg, run, ref, **over):
    from medqlora.evaluation.answer_cache import BaseAnswers

    kw = {"ref": ref, "tok": types.SimpleNamespace(pad_token_id=2, eos_token_id=2), "model": object(),
          "backend": "hf", "merged": False, "engine": "eager", "batch": 4, "loglik_batch": 8,
          "plan": {"generate": True, "loglik": True, "prompt": "chat"}}
    return BaseAnswers.for_run(cfg, run, **{**kw, **over})


ITEMS = [{"id": "a", "kind": "freetext", "prompt": "What causes scurvy?", "reference": "Lack of vitamin C."},
         {"id": "b", "kind": "choice", "prompt": "Which vitamin? A or B", "options": {"A": "D", "B": "C"},
          "answer": "B"}]


def test_any_change_of_model_items_or_settings_is_another_key(key_setup, tmp_path):
    cfg, run, ref = key_setup
    base = cache_for(cfg, run, ref).key(ITEMS)
    assert cache_for(cfg, run, ref).key(ITEMS) == base, "the same model, items and settings: the same key"
    changed_items = [ITEMS[0], {**ITEMS[1], "prompt": "Which vitamin? A or B or C"}]
    assert cache_for(cfg, run, ref).key(changed_items) != base
    assert cache_for(cfg, run, ref).key(ITEMS[:1]) != base
    other = fake_model_folder(tmp_path / "other", b"\x03" * (6 << 20))
    assert cache_for(cfg, run, str(other)).key(ITEMS) != base, "another base model"
    for over in ({"merged": True}, {"backend": "unsloth"}, {"engine": "static"}, {"batch": 8}, {"loglik_batch": 4},
                 {"plan": {"generate": True, "loglik": False, "prompt": "chat"}},
                 {"plan": {"generate": True, "loglik": True, "prompt": "lm_eval"}},
                 {"tok": types.SimpleNamespace(pad_token_id=0, eos_token_id=2)}):
        assert cache_for(cfg, run, ref, **over).key(ITEMS) != base, over
    for section, key, value in (("eval", "max_new_tokens", 9), ("eval", "max_new_tokens_choice", 5),
                                ("eval", "repetition_penalty", 1.2), ("data", "template", "plain"),
                                ("model", "load_in_4bit", False), ("model", "dtype", "bfloat16"),
                                ("data", "system_prompt", "Be brief."), ("eval", "choice_scoring", "generate")):
        c = cfg.model_copy(deep=True)
        setattr(getattr(c, section), key, value)
        assert cache_for(c, run, ref).key(ITEMS) != base, f"{section}.{key}"
    c = cfg.model_copy(deep=True)
    c.eval.show_examples, c.eval.max_samples = 3, 2  # what is shown; which items (the items are keyed themselves)
    assert cache_for(c, run, ref).key(ITEMS) == base, "settings that change no answer keep the key"


def test_sampled_answers_and_a_cache_switched_off_are_never_reused(key_setup):
    cfg, run, ref = key_setup
    c = cfg.model_copy(deep=True)
    c.eval.temperature = 0.7
    assert "eval.temperature" in cache_for(c, run, ref).off
    c = cfg.model_copy(deep=True)
    c.eval.base_answers_cache = None
    assert "null" in cache_for(c, run, ref).off
    assert "not on this machine" in cache_for(cfg, run, "no-such-org/no-such-model-31").off
    c = cfg.model_copy(deep=True)
    c.eval.base_answers_cache = str(run.path.parent / "shared-elsewhere")
    assert cache_for(c, run, ref).folders[-1] == run.path.parent / "shared-elsewhere"
    assert cache_for(cfg, run, ref).folders == [run.path / "eval" / "base-answers",
                                                run.path.resolve().parent / "base-answers"]


# ---------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    """A tiny model trained 2 steps and exported, with a held-out split (free text and multiple choice) and a yes/no
    set scored by generation and log-likelihood."""
    from conftest import tiny_params, write_jsonl

    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir
    from medqlora.data import preprocess as P
    from medqlora.export import exporter as E
    from medqlora.training import model as M
    from medqlora.training import train as T

    tmp = tmp_path_factory.mktemp("basecache")
    rows = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}."} for i in range(4)]
    opts = {"A": "Vitamin A", "B": "Vitamin C", "C": "Iron", "D": "Zinc"}
    ev = [{"question": "What causes scurvy?", "answer": "Lack of vitamin C."},
          {"question": "Which vitamin prevents scurvy?", "options": opts, "answer": "B"}]
    yn = [{"question": "Do statins lower LDL?", "context": "A trial.", "long_answer": "They do.",
           "final_decision": "yes"}]
    params = tiny_params(tmp, tiny_model_dir, write_jsonl(tmp / "t.jsonl", rows), write_jsonl(tmp / "e.jsonl", ev),
                         train={"max_steps": 2}, export={"formats": ["lora"]},
                         eval={"merge": False,
                               "sets": [{"name": "yn", "source": str(write_jsonl(tmp / "yn.jsonl", yn))}]})
    cfg = load_config(params)
    run = RunDir(tmp / "reports" / "run")
    shutil.copy(params, run.config_path)
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    run.save_result("train", T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None))
    run.save_result("export", E.export(cfg, run))
    return cfg, run


@pytest.fixture
def batch_of_runs(trained_run, tmp_path, monkeypatch):
    """Two runs of one batch on the same base model (copies of the trained run in one reports folder), and a count of
    the generation and log-likelihood passes each model makes."""
    from medqlora.core.rundir import RunDir
    from medqlora.evaluation import evaluate as EV

    cfg, run = trained_run
    runs = []
    for name in ("run1", "run2"):
        shutil.copytree(run.path, tmp_path / "reports" / name, ignore=shutil.ignore_patterns("base-answers"))
        runs.append(RunDir(tmp_path / "reports" / name))
    calls = []
    gen, ll = EV.generate, EV.score_choices
    monkeypatch.setattr(EV, "generate", lambda *a, **k: calls.append(("generate", a[6])) or gen(*a, **k))
    monkeypatch.setattr(EV, "score_choices", lambda *a, **k: calls.append(("loglik", a[6])) or ll(*a, **k))
    return cfg, runs, calls


def base_rows(run, name="answers.jsonl"):
    return [(r["base"], r.get("base_loglik")) for r in map(json.loads, (run / "eval" / name).read_text().splitlines())]


def test_a_batch_of_two_runs_on_one_base_model_generates_the_base_answers_once(batch_of_runs, tmp_path):
    from medqlora.evaluation import evaluate as EV

    cfg, (run1, run2), calls = batch_of_runs
    r1 = EV.compare(cfg, run1, print_fn=lambda *a: None)
    first = list(calls)
    assert ("generate", "base") in first and ("loglik", "base") in first
    assert r1["base_answers"]["reused"] == [] and r1["base_answers"]["computed"] == ["held-out", "yn"]
    calls.clear()
    lines = []
    r2 = EV.compare(cfg, run2, print_fn=lines.append)
    assert [c for c in calls if c[1] == "base"] == [], "the second run of the batch generated no base answer"
    assert ("generate", "fine-tuned") in calls and ("loglik", "fine-tuned") in calls
    shared = tmp_path / "reports" / "base-answers"
    assert r2["base_answers"]["reused"] == ["held-out", "yn"]
    assert r2["base_answers"]["note"].startswith(f"base answers reused from {shared}")
    assert any(line.startswith("base answers reused from") for line in lines), "the stage's log says so"
    # the same answers and scores as computed, the same metrics
    assert base_rows(run2) == base_rows(run1)
    assert base_rows(run2, "answers_yn.jsonl") == base_rows(run1, "answers_yn.jsonl")
    assert r2["metrics"]["base"] == r1["metrics"]["base"]
    assert r2["generate_seconds"]["base"] == 0.0


def test_a_resumed_run_reuses_its_own_base_answers_and_a_change_computes_them_again(batch_of_runs, tmp_path):
    from medqlora.evaluation import evaluate as EV

    cfg, (run1, _), calls = batch_of_runs
    EV.compare(cfg, run1, print_fn=lambda *a: None)
    shutil.rmtree(tmp_path / "reports" / "base-answers")  # restored elsewhere: only the run folder's own copy is left
    calls.clear()
    r = EV.compare(cfg, run1, print_fn=lambda *a: None)
    assert [c for c in calls if c[1] == "base"] == [] and r["base_answers"]["reused"] == ["held-out", "yn"]
    assert str(run1.path / "eval" / "base-answers") in r["base_answers"]["note"]
    # another answer length: every set again
    c = cfg.model_copy(deep=True)
    c.eval.max_new_tokens = cfg.eval.max_new_tokens + 2
    calls.clear()
    r = EV.compare(c, run1, print_fn=lambda *a: None)
    assert ("generate", "base") in calls and r["base_answers"]["computed"] == ["held-out", "yn"]
    # an item of one set changed: that set again, the other reused
    items = [json.loads(line) for line in run1.eval_items.read_text().splitlines()]
    items[0]["prompt"] = items[0]["prompt"].replace("scurvy", "rickets")
    run1.eval_items.write_text("".join(json.dumps(it) + "\n" for it in items))
    calls.clear()
    r = EV.compare(cfg, run1, print_fn=lambda *a: None)
    assert r["base_answers"]["computed"] == ["held-out"] and r["base_answers"]["reused"] == ["yn"]
    # switched off: computed, nothing read
    c = cfg.model_copy(deep=True)
    c.eval.base_answers_cache = None
    calls.clear()
    r = EV.compare(c, run1, print_fn=lambda *a: None)
    assert ("generate", "base") in calls and r["base_answers"]["reused"] == []
    assert "eval.base_answers_cache: null" in r["base_answers"]["note"]


def test_the_stage_decodes_with_eval_decoding_and_the_answers_stay_the_same(batch_of_runs):
    from medqlora.evaluation import evaluate as EV

    cfg, (run1, run2), calls = batch_of_runs
    r = EV.compare(cfg, run1, print_fn=lambda *a: None)
    assert r["decoding"] == {"engine": "eager", "why": "auto: no CUDA GPU (compiled decoding and CUDA graphs pay only "
                             "on a GPU)", "loaded_with": "hf", "fell_back": []}
    c = cfg.model_copy(deep=True)
    c.eval.decoding = "static"
    calls.clear()
    s = EV.compare(c, run2, print_fn=lambda *a: None)
    assert s["decoding"]["engine"] == "static" and ("generate", "base") in calls, "another engine: another key"
    assert s["decoding"]["fell_back"] == [], "the static path itself answered"
    assert base_rows(run2) == base_rows(run1) and s["metrics"] == r["metrics"]
