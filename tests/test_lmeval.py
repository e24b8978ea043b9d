"""eval.choice_scoring: loglik in the lm_eval prompt against lm-evaluation-harness itself (requirements-lmeval.txt).

lm-eval's own medqa task (its medqa.yaml and preprocess_medqa.py, included unchanged) reads a local file in the
task's format offline; medqlora scores the same items. Every item must get the same choice, by acc and by acc_norm,
and the same acc and acc_norm. Run with `make test-lmeval` (its own venv: lm-eval would downgrade python-dateutil).
"""
import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is not installed here: run `make test-lmeval`, which "
                              "installs requirements-lmeval.txt into its own venv and runs this test")

ROOT = Path(__file__).resolve().parent.parent
LETTERS = "ABCD"


def medqa_file(path: Path) -> tuple[Path, list[dict]]:
    """The bundled multiple-choice held-out items in lm-eval's medqa format (sent1, ending0-3, label), and the same
    items as medqlora reads them."""
    rows = [json.loads(line) for line in (ROOT / "data" / "medqa_eval.jsonl").read_text().splitlines()]
    mcq = [r for r in rows if r.get("options")]
    path.write_text("".join(json.dumps({"id": r["id"], "sent1": r["question"], "label": LETTERS.index(r["answer"]),
                                        **{f"ending{i}": r["options"][k] for i, k in enumerate(LETTERS)}}) + "\n"
                            for r in mcq))
    items = [{"id": r["id"], "kind": "choice", "question": r["question"], "options": r["options"],
              "answer": r["answer"], "prompt": ""} for r in mcq]
    return path, items


def run_lm_eval(model_dir: str, data: Path, tmp: Path) -> tuple[dict, list[dict]]:
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    medqa = Path(lm_eval.__file__).parent / "tasks" / "medqa" / "medqa.yaml"
    (tmp / "tasks").mkdir(exist_ok=True)
    (tmp / "tasks" / "medqa_local.yaml").write_text(
        f"include: {medqa}\ntask: medqa_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "training_split: null\nvalidation_split: null\ntest_split: test\n")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    out = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=["medqa_local"],
                          task_manager=TaskManager(include_path=str(tmp / "tasks")), batch_size=4, device="cpu",
                          log_samples=True)
    samples = sorted(out["samples"]["medqa_local"], key=lambda s: s["doc_id"])
    return out["results"]["medqa_local"], samples


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
def test_loglik_in_the_lm_eval_prompt_gives_lm_evals_choices(which, tmp_path, tiny_model_dir, tokenizer_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medqlora.evaluation.loglik import loglik_metrics, score_choices

    model_dir = tiny_model_dir if which == "tiny" else tokenizer_dir  # the offline default, converted: 135M
    data, items = medqa_file(tmp_path / "medqa.jsonl")
    results, samples = run_lm_eval(model_dir, data, tmp_path)
    assert len(samples) == len(items) == 20

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    ours = score_choices(model, tok, items, "lm_eval", "chat", batch_size=4, print_fn=lambda *a: None)
    for s, it, c in zip(samples, items, ours):
        assert s["doc"]["sent1"] == it["question"]
        theirs = [float(r[0]) for r in s["filtered_resps"]]
        assert c["loglik"] == pytest.approx(theirs, abs=1e-3), it["id"]
        best = max(range(4), key=theirs.__getitem__)
        assert c["pick"] == LETTERS[best], it["id"]
        assert c["pick_norm"] == LETTERS[max(range(4), key=lambda j: theirs[j] / len(LETTERS[j]))], it["id"]
        assert float(c["correct"]) == s["acc"] and float(c["correct_norm"]) == s["acc_norm"], it["id"]
    m = loglik_metrics(items, ours)
    assert m["loglik_acc"] == pytest.approx(results["acc,none"])
    assert m["loglik_acc_norm"] == pytest.approx(results["acc_norm,none"])
    assert m["loglik_acc_stderr"] == pytest.approx(results["acc_stderr,none"])
    print(f"{which}: acc {m['loglik_acc']:.3f} acc_norm {m['loglik_acc_norm']:.3f} (lm-eval: {results['acc,none']:.3f}"
          f" / {results['acc_norm,none']:.3f}) on {len(items)} items")


# ---------------------------------------------------------------- each lm-eval task's own prompt (eval.sets task:)

BUNDLED_MCQ = [r for r in map(json.loads, (ROOT / "data" / "medqa_eval.jsonl").read_text().splitlines())
               if r.get("options")]
BUNDLED_YESNO = [json.loads(line) for line in (ROOT / "data" / "yesno_bench.jsonl").read_text().splitlines()]


def hub_shaped(task: str) -> tuple[list[dict], str, dict]:
    """The bundled items as rows of the task's hub dataset (some texts with the stray spaces real rows have, which
    lm-eval keeps), lm-eval's task YAML (relative to lm_eval/tasks) and what the local copy overrides in it."""
    def sp(text: str, i: int) -> str:  # a trailing space on every third text
        return text + (" " if i % 3 == 0 else "")

    if task == "pubmedqa":
        rows = [{"QUESTION": sp(r["question"], i), "CONTEXTS": r["context"].split(". ", 1), "LABELS": ["A", "B"],
                 "MESHES": [], "YEAR": "2020", "reasoning_required_pred": r["final_decision"],
                 "reasoning_free_pred": r["final_decision"], "final_decision": r["final_decision"],
                 "LONG_ANSWER": r["long_answer"]} for i, r in enumerate(BUNDLED_YESNO)]
        return rows, "pubmedqa/pubmedqa.yaml", {"dataset_name": None}
    rows = []
    for i, r in enumerate(BUNDLED_MCQ):
        opts, label = [sp(r["options"][k], i + j) for j, k in enumerate(LETTERS)], LETTERS.index(r["answer"])
        if task == "medmcqa":
            rows.append({"id": r["id"], "question": sp(r["question"], i), "opa": opts[0], "opb": opts[1],
                         "opc": opts[2], "opd": opts[3], "cop": label, "choice_type": "single",
                         "exp": r.get("explanation"), "subject_name": r.get("specialty"), "topic_name": None})
        elif task == "medqa_4options":
            rows.append({"id": r["id"], "sent1": sp(r["question"], i), "sent2": "",
                         **{f"ending{j}": o for j, o in enumerate(opts)}, "label": label})
        else:  # mmlu: the question's own spaces are stripped by the task, the choices' are not
            rows.append({"question": "  " + sp(r["question"], i) + "\n", "subject": "anatomy", "choices": opts,
                         "answer": label})
    yaml = {"medmcqa": "medmcqa/medmcqa.yaml", "medqa_4options": "medqa/medqa.yaml",
            "mmlu_anatomy": "mmlu/default/mmlu_anatomy.yaml"}[task]
    return rows, yaml, {"dataset_name": None, "fewshot_split": "test"} if task.startswith("mmlu") else {}


def run_lm_eval_task(model_dir: str, yaml: str, overrides: dict, data: Path, tmp: Path, name: str):
    """lm-eval's own task (its YAML included unchanged) on a local copy of its dataset: results and samples."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    (tmp / "tasks").mkdir(exist_ok=True)
    extra = "".join(f"{k}: {'null' if v is None else v}\n" for k, v in overrides.items())
    (tmp / "tasks" / f"{name}.yaml").write_text(
        f"include: {Path(lm_eval.__file__).parent / 'tasks' / yaml}\ntask: {name}\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"training_split: null\nvalidation_split: null\ntest_split: test\n{extra}")
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    out = simple_evaluate(model="hf", model_args=f"pretrained={model_dir},dtype=float32", tasks=[name],
                          task_manager=TaskManager(include_path=str(tmp / "tasks")), batch_size=4, device="cpu",
                          log_samples=True)
    return out["results"][name], sorted(out["samples"][name], key=lambda s: s["doc_id"])


@pytest.mark.parametrize("which", ["tiny", "smollm2"])
@pytest.mark.parametrize("task", ["medmcqa", "pubmedqa", "mmlu_anatomy", "medqa_4options"])
def test_each_tasks_own_prompt_gives_lm_evals_choices_item_by_item(task, which, tmp_path, tiny_model_dir,
                                                                   tokenizer_dir):
    """An eval set with task: reads the task's hub-shaped rows (here a local copy) and scores each item in that
    task's prompt: every item's log-likelihoods, picks, acc and acc_norm are lm-eval's own task's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medqlora.config import RunConfig
    from medqlora.config.tasks import TASKS
    from medqlora.data.benchmarks import read_benchmark
    from medqlora.evaluation.loglik import loglik_metrics, score_choices

    model_dir = tiny_model_dir if which == "tiny" else tokenizer_dir
    rows, yaml, overrides = hub_shaped(task)
    data = tmp_path / f"{task}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    results, samples = run_lm_eval_task(model_dir, yaml, overrides, data, tmp_path, f"{task}_local")

    cfg = RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": model_dir, "max_seq_length": 2048},
                                    "data": {"source": str(data)},
                                    "eval": {"sets": [{"name": task, "task": task, "source": str(data)}]}})
    tok = AutoTokenizer.from_pretrained(model_dir)
    items = read_benchmark(cfg.eval.sets[0], cfg, tok)["items"]
    assert len(samples) == len(items) == len(rows)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32").eval()
    ours = score_choices(model, tok, items, "lm_eval", "chat", batch_size=4, print_fn=lambda *a: None)
    labels = ["yes", "no", "maybe"] if task == "pubmedqa" else list(LETTERS)
    for s, c in zip(samples, ours):
        theirs = [float(r[0]) for r in s["filtered_resps"]]
        assert c["loglik"] == pytest.approx(theirs, abs=1e-3), (task, s["doc_id"])
        assert c["pick"] == labels[max(range(len(labels)), key=theirs.__getitem__)], (task, s["doc_id"])
        assert float(c["correct"]) == s["acc"], (task, s["doc_id"])
        if "acc_norm" in s:
            assert float(c["correct_norm"]) == s["acc_norm"], (task, s["doc_id"])
    m = loglik_metrics(items, ours)
    assert m["loglik_acc"] == pytest.approx(results["acc,none"])
    if "acc_norm" in TASKS[task].reports:
        assert m["loglik_acc_norm"] == pytest.approx(results["acc_norm,none"])
    print(f"{which} {task}: acc {m['loglik_acc']:.3f} (lm-eval {results['acc,none']:.3f}) on {len(items)} items")
