"""What the headline, the terminal, compare and batch.md say must be what the stages wrote (issue 28): every warning in
any results/*.json reaches the headline, the evaluate notebook's WARNING lines reach the terminal, and the comparison
has a row for every paired metric, log-likelihood accuracy included. Synthetic run folders (milliseconds)."""
import json
import logging

from medqlora.core.rundir import STAGES, RunDir, write_json
from medqlora.evaluation.evaluate import score_set
from medqlora.run import compare as comparison
from medqlora.run import headline as H
from medqlora.run.summary import readable
from medqlora.run.terminal import QuietNotebookOutput


def all_warnings(obj) -> list[str]:
    """Every string under a key named 'warnings', anywhere in a results JSON."""
    if isinstance(obj, dict):
        return [w for k, v in obj.items() for w in (v if k == "warnings" and isinstance(v, list) else all_warnings(v))
                if k != "warnings" or isinstance(w, str)]
    if isinstance(obj, list):
        return [w for v in obj for w in all_warnings(v)]
    return []


def scored_set(run: RunDir, name: str) -> dict:
    """One eval set scored by the evaluate stage's own code, as with eval.choice_scoring: both: four closed-form
    items, both models answering 'A' to all of them by generation and by log-likelihood (half the references are
    'A'), and one free-text item."""
    items = [{"id": i, "kind": "choice", "question": f"q{i}", "options": dict(zip("ABCD", "wxyz")),
              "answer": "AB"[i % 2], "prompt": "p"} for i in range(4)]
    items.append({"id": 9, "kind": "freetext", "question": "qf", "reference": "give adrenaline", "prompt": "p"})
    answers = {w: [{"text": "A", "hit_limit": False}] * 4 + [{"text": "adrenaline", "hit_limit": False}]
               for w in ("base", "finetuned")}
    choices = {w: [{"pick": "A", "pick_norm": "A", "correct": it["answer"] == "A", "correct_norm": it["answer"] == "A"}
                   for it in items[:4]] + [None] for w in ("base", "finetuned")}
    return score_set(run, name, items, answers, "x", choices, items)


def evaluated_run(tmp_path) -> RunDir:
    """A run folder whose evaluate.json is laid out as the evaluate stage writes it (top-level warnings too)."""
    run = RunDir(tmp_path / "run")
    sets = {name: scored_set(run, name) for name in ("held-out", "medqa")}
    write_json(run.result_path("evaluate"), {"warnings": [w for st in sets.values() for w in st["warnings"]],
                                             "metrics": sets["held-out"]["metrics"],
                                             "changes": sets["held-out"]["changes"], "sets": sets})
    return run


def test_the_log_likelihood_warnings_of_evaluate_json_reach_the_headline(tmp_path):
    """With choice_scoring both, evaluate.json held 'answers 'A' ... (log-likelihood)' and 'accuracy ... (log-
    likelihood) is not above the majority-class baseline' while the headline said 'Warnings: none' or less."""
    run = evaluated_run(tmp_path)
    stored = all_warnings(json.loads(run.result_path("evaluate").read_text()))
    assert "held-out: fine-tuned answers 'A' to 100% of 4 items (log-likelihood)" in stored
    assert "medqa: fine-tuned accuracy 0.500 (log-likelihood) is not above the majority-class baseline 0.500" in stored
    h = H.build(run)
    md = H.markdown(h)
    missing = [w for w in stored if w not in md]
    assert not missing, f"warnings in evaluate.json but not in the headline: {missing}"
    assert len(h.warnings) == len(set(h.warnings)), "a warning listed twice (the top-level list repeats the sets')"
    assert f"**Warnings ({len(h.warnings)})**" in md
    summary_md = readable({"run_id": "r", "status": "ok", "model": "m", "run_dir": str(run.path), "stages": []})
    assert all(w in summary_md for w in stored)


def test_every_warning_in_every_results_file_reaches_the_headline(tmp_path):
    """The property that keeps a new warning from being forgotten: whatever stage writes a `warnings` list, at
    whatever depth of its results JSON, the headline shows each line of it verbatim."""
    run = evaluated_run(tmp_path)
    ev = json.loads(run.result_path("evaluate").read_text())
    ev["sets"]["medqa"]["metrics"]["finetuned"]["warnings"] = ["medqa: a metric-level warning"]
    write_json(run.result_path("evaluate"), ev)
    for stage in STAGES:
        if stage != "evaluate":
            write_json(run.result_path(stage), {"warnings": [f"{stage}: a top-level warning"],
                                                "formats": {"gguf": {"warnings": [f"{stage}: a nested warning"]}},
                                                "checks": [{"warnings": [f"{stage}: one in a list"]}]})
    write_json(run / "results" / "extra.json", {"warnings": ["a results file of a stage added later"]})
    stored = [w for p in sorted((run / "results").glob("*.json")) for w in all_warnings(json.loads(p.read_text()))]
    assert len(stored) >= 8 + 4 * 3 + 2
    md = H.markdown(H.build(run))
    assert [w for w in stored if w not in md] == []


def test_the_evaluate_notebooks_warning_lines_reach_the_terminal():
    """tables.warnings_text prints 'WARNING <line>'; the terminal filter kept only 'warning:'."""
    keep = QuietNotebookOutput()
    record = logging.LogRecord("papermill", logging.INFO, "", 0, "Executing Cell 7\nWARNING held-out: fine-tuned "
                               "answers 'A' to 100% of 4 items (log-likelihood)\nsome table row", (), None)
    assert keep.filter(record)
    assert record.getMessage() == "    WARNING held-out: fine-tuned answers 'A' to 100% of 4 items (log-likelihood)"


def test_a_sampled_eval_set_says_how_many_of_how_many_items(tmp_path):
    run = evaluated_run(tmp_path)
    ev = json.loads(run.result_path("evaluate").read_text())
    ev["sets"]["medqa"]["sampled"] = {"n": 5, "of": 1273, "seed": 7}
    write_json(run.result_path("evaluate"), ev)
    md = H.markdown(H.build(run))
    assert "medqa: 5 of 1273 items" in md and "seed 7" in md
    assert "held-out: " not in md.split("**Warnings")[0].split("|---|")[-1], "an unsampled set gets no such note"


def test_compare_and_batch_md_have_the_log_likelihood_accuracy(tmp_path):
    """compare and batch.md showed no loglik_acc / loglik_acc_norm rows, the numbers runs per base model are
    compared on; every paired metric of a set's `changes` gets its row."""
    run = evaluated_run(tmp_path)
    (run / "config.yaml").write_text("run_name: a\nmodel: {name_or_path: m}\n")
    write_json(run / "summary.json", {"run_id": "a", "status": "ok", "model": "m", "stages": []})
    runs = comparison.load_runs([run.path])
    rows = {(r["eval set"], r["metric"]): r for r in comparison.metric_rows(runs)}
    for name in ("held-out", "medqa"):
        changes = runs[0]["sets"][name]["changes"]
        assert {"loglik_acc", "loglik_acc_norm"} <= set(changes)
        for k in changes:
            assert (name, k) in rows, f"{name} {k} is in evaluate.json's changes but not in the comparison"
    assert rows[("medqa", "loglik_acc")]["base"] == 0.5 and rows[("medqa", "loglik_acc")]["items"] == 4
    assert "loglik_acc_norm" in comparison.metrics_table(runs).to_html()
    md = comparison.summary_md(runs)
    assert "loglik_acc +0.000" in md and "loglik_acc_norm +0.000" in md and "medqa" in md


def test_compare_links_each_runs_report_and_notebooks_relative_to_the_comparison(tmp_path):
    """README: links to each run's report.html and notebooks that work in the HTML export and when the folders
    move together."""
    run = evaluated_run(tmp_path)
    (run / "config.yaml").write_text("run_name: a\n")
    (run / "report.html").write_text("<html></html>")
    (run / "01_setup.ipynb").write_text("{}")
    out = tmp_path / "batch-1"
    html = comparison.links_table(comparison.load_runs([run.path]), out).to_html()
    assert 'href="../run/report.html"' in html and 'href="../run/01_setup.ipynb"' in html
    missing = tmp_path / "never"  # a run with no folder yet (never started) still has its row
    assert "(none yet)" in comparison.links_table(comparison.load_runs([missing]), out).to_html()
