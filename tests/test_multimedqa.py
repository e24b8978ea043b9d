"""eval.sets: [multimedqa] (issue 30, point 5): the Open Medical-LLM Leaderboard's and lm-evaluation-harness's task set,
each task read as lm-eval reads its hub dataset and prompted as its task does, scored by log-likelihood, with the
size-weighted average. The hub is not reachable here: the loading code reads local files shaped like each dataset."""
import json

import pytest
from conftest import write_jsonl
from pydantic import ValidationError

from medqlora.config import RunConfig
from medqlora.config.tasks import GROUPS, TASKS
from medqlora.data.benchmarks import read_benchmark
from medqlora.evaluation import leaderboard as LB
from medqlora.evaluation.rotation import rotate
from medqlora.training.choice_scoring import lm_eval_context, requests_for

NINE = ["pubmedqa", "medmcqa", "medqa_4options", "mmlu_anatomy", "mmlu_clinical_knowledge", "mmlu_college_medicine",
        "mmlu_medical_genetics", "mmlu_professional_medicine", "mmlu_college_biology"]


def run_config(sets, tokenizer_dir="m", **model) -> RunConfig:
    return RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": tokenizer_dir, **model},
                                     "data": {"source": "d.jsonl"}, "eval": {"sets": sets}})


def test_multimedqa_is_the_leaderboards_nine_tasks_with_lm_evals_hub_names_configs_and_splits():
    sets = run_config(["multimedqa"]).eval.sets
    assert [s.name for s in sets] == NINE == list(GROUPS["multimedqa"])
    by = {s.name: s for s in sets}
    assert (by["medqa_4options"].source, by["medqa_4options"].config_name, by["medqa_4options"].split) == \
        ("GBaker/MedQA-USMLE-4-options-hf", None, "test")
    assert (by["medmcqa"].source, by["medmcqa"].split) == ("openlifescienceai/medmcqa", "validation")
    assert (by["pubmedqa"].source, by["pubmedqa"].config_name, by["pubmedqa"].split) == \
        ("bigbio/pubmed_qa", "pubmed_qa_labeled_fold0_source", "test")
    for subject in ("anatomy", "clinical_knowledge", "college_biology", "college_medicine", "medical_genetics",
                    "professional_medicine"):
        s = by[f"mmlu_{subject}"]
        assert (s.source, s.config_name, s.split, s.task) == ("cais/mmlu", subject, "test", f"mmlu_{subject}")
    assert all(s.max_items is None for s in sets), "every item, as lm-eval scores them"
    assert TASKS["mmlu_anatomy"].reports == ("acc",) and TASKS["medmcqa"].reports == ("acc", "acc_norm")
    # one task by its name, beside a set of the run's own
    mixed = run_config(["medmcqa", {"name": "own", "source": "own.jsonl"}]).eval.sets
    assert [(s.name, s.task) for s in mixed] == [("medmcqa", "medmcqa"), ("own", None)]
    with pytest.raises(ValidationError, match=r"'multimedq' is neither a task group \(multimedqa\) nor an "
                                              r"lm-evaluation-harness task"):
        run_config(["multimedq"])
    with pytest.raises(ValidationError, match="task 'medqa' is not one this project knows"):
        run_config([{"name": "x", "source": "x.jsonl", "task": "medqa"}])


Q = "A 23-year-old woman presents with fever and a new murmur. Which organism is most likely?"
SHAPES = {  # one row as each hub dataset holds it (column names, types, nesting), and lm-eval's context for it
    "medqa_4options": ({"id": "m1", "sent1": Q + " ", "sent2": "", "ending0": "Staphylococcus aureus",
                        "ending1": "Streptococcus viridans ", "ending2": "Enterococcus", "ending3": "HACEK", "label": 1},
                       f"Question: {Q} \nA. Staphylococcus aureus\nB. Streptococcus viridans \nC. Enterococcus\n"
                       "D. HACEK\nAnswer:", "B"),
    "medmcqa": ({"id": "x9", "question": "Most common site of carcinoid tumour?", "opa": "Appendix", "opb": "Ileum",
                 "opc": "Rectum", "opd": "Stomach", "cop": 1, "choice_type": "single", "exp": "Ileum.",
                 "subject_name": "Pathology", "topic_name": "GIT"},
                "Question: Most common site of carcinoid tumour?\nChoices:\nA. Appendix\nB. Ileum\nC. Rectum\n"
                "D. Stomach\nAnswer:", "B"),
    "pubmedqa": ({"QUESTION": "Do statins lower LDL?", "CONTEXTS": ["A randomized trial.", "LDL fell by 38%."],
                  "LABELS": ["BACKGROUND", "RESULTS"], "MESHES": ["Statins"], "YEAR": "2010",
                  "reasoning_required_pred": "yes", "reasoning_free_pred": "yes", "final_decision": "yes",
                  "LONG_ANSWER": "Statins lowered LDL."},
                 "Abstract: A randomized trial.\nLDL fell by 38%.\nQuestion: Do statins lower LDL?\nAnswer:", "yes"),
    "mmlu_clinical_knowledge": ({"question": "  Which is a sign of shock?\n", "subject": "clinical_knowledge",
                                 "choices": ["Bradycardia", "Tachycardia", "Hypertension", "Warm skin"], "answer": 1},
                                "The following are multiple choice questions (with answers) about clinical knowledge."
                                "\n\nWhich is a sign of shock?\nA. Bradycardia\nB. Tachycardia\nC. Hypertension\n"
                                "D. Warm skin\nAnswer:", "B"),
}


@pytest.mark.parametrize("task", list(SHAPES))
def test_each_task_reads_a_file_shaped_like_its_hub_dataset_and_prompts_as_lm_eval(task, tmp_path, tokenizer,
                                                                                    tokenizer_dir):
    row, context, answer = SHAPES[task]
    path = write_jsonl(tmp_path / f"{task}.jsonl", [row, row])  # lm-eval scores a repeated item twice
    cfg = run_config([{"name": task, "task": task, "source": str(path)}], tokenizer_dir, max_seq_length=64)
    b = read_benchmark(cfg.eval.sets[0], cfg, tokenizer)
    assert b["kept"] == 2 and b["task"] == task, "no dedup and no length cut for an lm-eval task: every item"
    it = b["items"][0]
    assert it["answer"] == answer and it["lm_eval_prompt"] == TASKS[task].prompt
    assert lm_eval_context(it) == context
    labels = ["yes", "no", "maybe"] if task == "pubmedqa" else list("ABCD")
    assert requests_for(it, "lm_eval") == (context, labels, [f" {x}" for x in labels])
    assert b["fingerprint"]["file"] == str(path) and len(b["fingerprint"]["sha256"]) == 64
    if task != "pubmedqa":  # rotated options keep the task's prompt and their own text
        moved = rotate(it, 1)
        assert lm_eval_context(moved).count("\nA. " + moved["options"]["A"].strip()) == 1
        assert lm_eval_context(moved).split("\n")[0] == context.split("\n")[0]


def test_a_file_without_the_tasks_columns_is_refused_with_the_columns_it_needs(tmp_path, tokenizer, tokenizer_dir):
    from medqlora.data.formats import DataError

    path = write_jsonl(tmp_path / "wrong.jsonl", [{"question": "Q?", "options": ["a", "b"], "answer": "A"}])
    cfg = run_config([{"name": "medmcqa", "task": "medmcqa", "source": str(path)}], tokenizer_dir)
    with pytest.raises(DataError, match=r"medmcqa.*not shaped like openlifescienceai/medmcqa.*opa, opb, opc, opd, cop"):
        read_benchmark(cfg.eval.sets[0], cfg, tokenizer)


def test_hub_loading_passes_the_tasks_name_config_split_and_pinned_revision(monkeypatch, tokenizer, tokenizer_dir):
    import datasets

    calls = []

    def fake_load(path, name=None, split=None, streaming=False, revision=None, **kw):
        calls.append((path, name, split, revision))
        return datasets.Dataset.from_list([SHAPES["mmlu_clinical_knowledge"][0]] * 3)

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    cfg = run_config(["mmlu_clinical_knowledge"], tokenizer_dir)
    b = read_benchmark(cfg.eval.sets[0], cfg, tokenizer)
    assert calls == [("cais/mmlu", "clinical_knowledge", "test", None)] and b["kept"] == 3
    assert b["fingerprint"] == {"hub": "cais/mmlu", "config": "clinical_knowledge", "split": "test", "revision": None}
    assert any("3 of lm-eval's 265 items" in w for w in b["warnings"]), b["warnings"]
    pinned = run_config([{"name": "ck", "task": "mmlu_clinical_knowledge", "revision": "c0ffee"}], tokenizer_dir)
    b = read_benchmark(pinned.eval.sets[0], pinned, tokenizer)
    assert calls[-1] == ("cais/mmlu", "clinical_knowledge", "test", "c0ffee") and b["fingerprint"]["revision"] == "c0ffee"


def test_a_task_set_is_scored_by_loglik_in_its_own_prompt_whatever_the_runs_choice_settings():
    plan = {"mode": "generate", "prompt": "chat", "generate": True, "loglik": False, "why": "eval.choice_scoring: generate"}
    assert LB.set_plan(plan, {"task": None}) is plan
    own = LB.set_plan(plan, {"task": "medmcqa"})
    assert (own["generate"], own["loglik"], own["prompt"]) == (False, True, "lm_eval")
    assert "lm-eval task medmcqa" in own["why"]


def answers_file(run, name, correct_base, correct_tuned):
    (run / "eval").mkdir(exist_ok=True)
    rows = [{"id": f"{name}-{i}", "kind": "choice", "base_loglik": {"correct": b, "correct_norm": b},
             "finetuned_loglik": {"correct": f, "correct_norm": not f}}
            for i, (b, f) in enumerate(zip(correct_base, correct_tuned))]
    (run / "eval" / f"answers_{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_the_group_average_weighs_each_task_by_its_items(tmp_path):
    from medqlora.core.rundir import RunDir

    run = RunDir(tmp_path / "run")
    sizes = {name: 2 + i for i, name in enumerate(NINE)}  # 2..10 items
    sets = {}
    for name, n in sizes.items():
        base, tuned = [i % 2 == 0 for i in range(n)], [True] * n
        answers_file(run, name, base, tuned)
        sets[name] = {"n_items": n, "task": name,
                      "metrics": {"base": {"loglik_acc": sum(base) / n}, "finetuned": {"loglik_acc": 1.0}}}
    sets["held-out"] = {"n_items": 60, "metrics": {"base": {"loglik_acc": 0.9}, "finetuned": {"loglik_acc": 0.9}}}
    g = LB.group_scores(run, sets)["multimedqa"]
    n = sum(sizes.values())
    expected = sum(sets[k]["metrics"]["base"]["loglik_acc"] * sizes[k] for k in NINE) / n
    assert g["n_items"] == n and g["tasks"] == NINE
    assert g["metrics"]["base"]["loglik_acc"] == pytest.approx(expected)
    assert g["metrics"]["finetuned"]["loglik_acc"] == 1.0 and g["metrics"]["finetuned"]["loglik_acc_norm"] == 0.0
    c = g["changes"]["loglik_acc"]["change"]
    assert c["n"] == n and c["change"] == pytest.approx(1.0 - expected) and c["ci95"][0] > 0
    # not every task scored: no average under the group's name
    assert LB.group_scores(run, {k: v for k, v in sets.items() if k != "medmcqa"}) == {}


def test_a_run_with_the_nine_tasks_scores_each_in_its_prompt_and_reports_the_group_average(tmp_path, tiny_model_dir,
                                                                                          sample_data):
    """The whole evaluate stage on the tiny model, eval.sets the nine multimedqa tasks read from local files shaped
    like their hub datasets: each scored by log-likelihood only in its own prompt, the group's size-weighted average
    in evaluate.json and the headline, and the manifest naming each file and prompt."""
    from conftest import tiny_params

    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir
    from medqlora.data import preprocess as P
    from medqlora.evaluation import evaluate as EV
    from medqlora.evaluation import manifest as MF
    from medqlora.export import exporter as E
    from medqlora.run import headline as H
    from medqlora.training import model as M
    from medqlora.training import train as T

    sets = []
    for i, name in enumerate(NINE):
        shape = "mmlu_clinical_knowledge" if name.startswith("mmlu_") else name
        row = dict(SHAPES[shape][0])
        rows = [row] + [{**row, **({"QUESTION": f"Variant {k}?"} if name == "pubmedqa" else
                                   {"sent1": f"Variant {k}?"} if name == "medqa_4options" else
                                   {"question": f"Variant {k}?"})} for k in range(i % 3)]
        sets.append({"name": name, "task": name, "source": str(write_jsonl(tmp_path / f"{name}.jsonl", rows))})
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, *sample_data, train={"max_steps": 2},
                                  eval={"sets": sets, "choice_scoring": "both", "batch_size": 4}))
    run = RunDir(tmp_path / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    run.save_result("train", T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None))
    run.save_result("export", E.export(cfg, run))
    result = EV.compare(cfg, run, print_fn=lambda *a: None)
    run.save_result("evaluate", result)
    n = sum(result["sets"][name]["n_items"] for name in NINE)
    for name in NINE:
        st = result["sets"][name]
        assert st["task"] == name and st["metrics"]["base"]["loglik_acc"] is not None
        rows = [json.loads(x) for x in (run / "eval" / f"answers_{name}.jsonl").read_text().splitlines()]
        assert all(r["base"] is None and r["base_loglik"] for r in rows), "log-likelihood only, nothing generated"
        m = result["manifest"]["sets"][name]
        assert m["source"]["file"] == sets[NINE.index(name)]["source"] and len(m["source"]["sha256"]) == 64
        assert m["prompt"]["loglik"] == f"lm_eval: {TASKS[name].prompt}" and m["generation"] is None
    held = result["manifest"]["sets"]["held-out"]
    assert held["scoring"] == {"generate": True, "loglik": True} and held["prompt"]["loglik"] == "chat"
    assert held["items"]["scored"] == 6 and held["source"]["file"] == str(sample_data[1])
    g = result["groups"]["multimedqa"]
    assert g["n_items"] == n and g["tasks"] == NINE
    pooled = sum(result["sets"][k]["metrics"]["base"]["loglik_acc"] * result["sets"][k]["n_items"] for k in NINE) / n
    assert g["metrics"]["base"]["loglik_acc"] == pytest.approx(pooled)
    md = H.markdown(H.build(run))
    assert "| multimedqa (size-weighted) | accuracy (closed-form, log-likelihood: lm-eval acc) |" in md
    assert "lm_eval: mmlu" in MF.table(result).to_html()
    assert "multimedqa (size-weighted)" in LB.table(result).to_html()


def test_pubmedqa_from_the_hub_that_datasets_cannot_read_says_what_to_give(monkeypatch, tokenizer, tokenizer_dir):
    import datasets

    from medqlora.data.formats import DataError

    def script_dataset(*a, **kw):
        raise RuntimeError("Dataset scripts are no longer supported, but found pubmed_qa.py")

    monkeypatch.setattr(datasets, "load_dataset", script_dataset)
    cfg = run_config(["pubmedqa"], tokenizer_dir)
    with pytest.raises(DataError, match=r"(?s)Dataset scripts are no longer supported.*datasets 4 no longer runs.*"
                                        r"a local copy of its pubmed_qa_labeled_fold0_source test split"):
        read_benchmark(cfg.eval.sets[0], cfg, tokenizer)


def test_the_check_at_the_door_reads_a_task_set_as_its_task_does(tmp_path):
    """runner.py's data check (before any notebook) takes a file shaped like the task's hub dataset, and refuses one
    without the task's columns with the columns it needs."""
    from medqlora.data.check import preflight

    good = write_jsonl(tmp_path / "medmcqa.jsonl", [SHAPES["medmcqa"][0]] * 3)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"question": "Q?", "options": ["a", "b"], "answer": "A"}])
    cfg = run_config([{"name": "medmcqa", "task": "medmcqa", "source": str(good)},
                      {"name": "mmlu", "task": "mmlu_anatomy", "source": str(bad)}])
    from conftest import ROOT

    problems = preflight(cfg.data.model_copy(update={"source": str(ROOT / "data" / "medqa_train.jsonl")}),
                         cfg.eval.sets)
    assert len(problems) == 1 and problems[0].startswith("eval.sets (mmlu): "), problems
    assert "no column choices" in problems[0] and "the task reads question, choices, answer" in problems[0]
