"""The headline at the top of report.html and summary.md, from synthetic results JSON (milliseconds)."""
import json

from medqlora.core.rundir import RunDir, write_json
from medqlora.run import headline as H
from medqlora.run.summary import readable


def closed(predicted, reference, chance, dominant=None, share=0.0):
    n = sum(reference.values())
    return {"predicted": predicted, "reference": reference, "majority_baseline": max(reference.values()) / n,
            "chance_baseline": chance, "dominant": dominant, "dominant_share": share, "unparsed": []}


def change(d, lo, hi, n, b_ci=None, f_ci=None):
    return {"base_ci95": b_ci, "finetuned_ci95": f_ci, "change": {"change": d, "ci95": [lo, hi], "n": n}}


YESNO = {"n_items": 30, "metrics": {
    "base": {"n_freetext": 0, "n_choice": 30, "accuracy": 0.433, "parse_rate": 1.0, "looping": 0.0,
             "hit_token_limit": 0.1, "answer_words_mean": 1.0,
             "closed": closed({"yes": 30}, {"yes": 13, "no": 10, "maybe": 7}, 1 / 3, "yes", 1.0)},
    "finetuned": {"n_freetext": 0, "n_choice": 30, "accuracy": 0.433, "parse_rate": 1.0, "looping": 0.9,
                  "hit_token_limit": 0.97, "answer_words_mean": 12.0,
                  "closed": closed({"yes": 30}, {"yes": 13, "no": 10, "maybe": 7}, 1 / 3, "yes", 1.0)}},
    "changes": {"accuracy": change(0.0, -0.1, 0.1, 30, [0.27, 0.6], [0.27, 0.6]),
                "parse_rate": change(0.0, 0.0, 0.0, 30)}}

HELD_OUT = {"n_items": 60, "metrics": {
    "base": {"n_freetext": 40, "n_choice": 20, "rougeL": 0.12, "accuracy": 0.25, "parse_rate": 0.9, "looping": 0.28,
             "hit_token_limit": 0.3, "answer_words_mean": 48.0,
             "closed": closed({"A": 6, "B": 7, "C": 7}, {"A": 5, "B": 5, "C": 5, "D": 5}, 0.25)},
    "finetuned": {"n_freetext": 40, "n_choice": 20, "rougeL": 0.181, "accuracy": 0.25, "parse_rate": 0.95,
                  "looping": 0.07, "hit_token_limit": 0.25, "answer_words_mean": 22.0,
                  "closed": closed({"A": 5, "B": 6, "C": 9}, {"A": 5, "B": 5, "C": 5, "D": 5}, 0.25)}},
    "changes": {"rougeL": change(0.061, 0.038, 0.086, 40), "rouge1": change(0.05, 0.02, 0.08, 40),
                "accuracy": change(0.0, -0.2, 0.2, 20, [0.05, 0.45], [0.05, 0.45])}}


def write_run(tmp_path, sets, train=None, export=None):
    run = RunDir(tmp_path / "run")
    (run / "results").mkdir(exist_ok=True)
    write_json(run.result_path("evaluate"), {"metrics": sets["held-out"]["metrics"] if "held-out" in sets else {},
                                             "changes": {}, "sets": sets})
    if train:
        write_json(run.result_path("train"), train)
    if export:
        write_json(run.result_path("export"), export)
    return run


def test_a_constant_answer_set_is_named_with_its_share_and_the_reference_share(tmp_path):
    h = H.build(write_run(tmp_path, {"yesno": YESNO}))
    text = "\n".join(h.warnings)
    assert 'yesno: both models answer "yes" to nearly everything (100% and 100% of 30 closed-form items)' in text
    assert 'share of "yes" references (43%)' in text
    assert "yesno: answers cut off at the token limit: 10% -> 97%" in text
    assert "yesno: answers that repeat themselves: 0% -> 90%" in text
    assert "yesno: fine-tuned accuracy 0.433 (base 0.433) is not above the baselines" in text  # = majority 13/30
    row = next(r for r in h.rows if r["set"] == "yesno" and r["metric"] == "accuracy (closed-form, generated)")
    assert row["verdict"] == "no clear difference" and row["ci95"] == [-0.1, 0.1]
    assert not any(r["metric"] == "parse_rate" for r in h.rows)


def test_at_chance_accuracy_and_a_length_driven_rouge_gain_are_warned(tmp_path):
    run = write_run(tmp_path, {"held-out": HELD_OUT})
    (run / "eval").mkdir()
    answers = run / "eval" / "answers.jsonl"
    answers.write_text("".join(json.dumps({"kind": "freetext", "reference": " ".join(["w"] * 25)}) + "\n"
                               for _ in range(40)))
    HELD_OUT["answers"] = str(answers)
    try:
        h = H.build(write_run(tmp_path, {"held-out": HELD_OUT}))
    finally:
        del HELD_OUT["answers"]
    text = "\n".join(h.warnings)
    assert "held-out: fine-tuned accuracy 0.250 (base 0.250) is not above the baselines (chance 0.250" in text
    assert ("held-out: ROUGE-L +0.061 comes with answers 48 -> 22 words on average (references: 25): ROUGE rewards"
            in text)
    assert "held-out: answers that repeat themselves: 28% -> 7%" in text
    assert not any("dominant" in w or "nearly everything" in w for w in h.warnings)
    rouge = next(r for r in h.rows if r["metric"] == "ROUGE-L (free text)")
    assert rouge["verdict"] == "better" and rouge["items"] == 40
    md = H.markdown(h)
    assert "| held-out | ROUGE-L (free text) | 40 | 0.120 | 0.181 | +0.061 [+0.038, +0.086] | better |" in md
    assert "[train](#stage-train)" in md


def test_answers_naming_no_option_are_said_as_such_not_as_a_dominant_answer(tmp_path):
    none = json.loads(json.dumps(YESNO))
    for who in ("base", "finetuned"):
        none["metrics"][who]["closed"].update(predicted={"None": 30}, dominant="None", dominant_share=1.0)
        none["metrics"][who]["parse_rate"] = 0.0
    h = H.build(write_run(tmp_path, {"yesno": none}))
    assert not any('"None"' in w for w in h.warnings), h.warnings
    assert "yesno: only 0% of the fine-tuned closed-form answers name an option (base 0%)" in "\n".join(h.warnings)


def test_an_accuracy_above_chance_with_a_clear_interval_is_not_warned(tmp_path):
    good = json.loads(json.dumps(HELD_OUT))
    good["metrics"]["finetuned"]["accuracy"] = 0.8
    good["changes"]["accuracy"]["finetuned_ci95"] = [0.6, 0.95]
    good["metrics"]["finetuned"]["answer_words_mean"] = 40.0  # 48 -> 40: not a length story
    h = H.build(write_run(tmp_path, {"held-out": good}))
    assert not any("accuracy" in w or "ROUGE-L" in w for w in h.warnings), h.warnings


def test_losses_and_export_failures_reach_the_headline_and_summary_md(tmp_path):
    train = {"loss_start": 2.6, "loss_end": 2.7, "train_loss": 2.65, "val_losses": [[6, 2.5], [12, 2.6]],
             "val_best": 2.5, "val_best_step": 6, "first_loss": 2.6, "final_loss": 2.8}
    export = {"verified": True, "formats": {"gguf": {"check": {"passed": False, "error": "logits differ"}}}}
    run = write_run(tmp_path, {"held-out": HELD_OUT}, train, export)
    h = H.build(run, [{"name": "setup", "status": "ok"}, {"name": "export", "status": "failed", "error": "boom"}])
    text = "\n".join(h.warnings)
    assert "training loss did not fall (2.6000 -> 2.7000" in text
    assert "validation loss rose (2.5000 at step 6 -> 2.6000 at step 12)" in text
    assert "export gguf: check FAILED (logits differ)" in text
    merged = {"check": {"passed": False, "logits_rel_rmse": 0.0593, "tolerance": 0.0428, "identical": 2, "prompts": 3}}
    assert H.export_warnings({"formats": {"merged_16bit": merged}}) == [
        "export merged_16bit: check FAILED (logits rel. RMSE 0.0593 against the adapter's, tolerance 0.0428; greedy "
        "answers identical on 2/3 prompts); the exported file may not answer as the evaluated adapter does"]
    assert h.warnings[0] == "stage export failed: boom"
    assert h.losses.startswith("training loss 2.6000 -> 2.7000 (mean of the first and last fifth")
    md = readable({"run_id": "r1", "status": "failed", "model": "m", "run_dir": str(run.path), "stages": [
        {"name": "export", "status": "failed", "seconds": 1.0, "notebook": "04_export.ipynb", "error": "boom"}]})
    head = md[:md.index("| stage | status")]
    assert "+0.061 [+0.038, +0.086] | better |" in head and "⚠ stage export failed: boom" in head
    assert "[export](04_export.ipynb) (failed)" in head


def test_a_noisy_training_loss_beside_a_falling_validation_loss_is_said_as_such(tmp_path):
    train = {"loss_start": 3.29, "loss_end": 3.51, "train_loss": 3.3, "losses": [[1, 3.0], [2, 3.5], [10, 3.51]],
             "val_losses": [[2, 3.36], [10, 3.20]], "val_best": 3.20, "val_best_step": 10}
    warning = H.train_warnings(train)
    assert len(warning) == 1 and "training loss did not fall (3.2900 -> 3.5100" in warning[0]
    assert "the validation loss fell (3.3600 -> 3.2000)" in warning[0]


def test_a_run_without_results_yet_has_a_headline_that_says_so(tmp_path):
    h = H.build(RunDir(tmp_path / "empty"))
    assert h.rows == [] and h.warnings == [] and "No evaluation results yet" in H.markdown(h)
