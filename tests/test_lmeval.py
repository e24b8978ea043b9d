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
