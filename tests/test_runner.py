"""The runner CLI: bad input exits 2 before any notebook runs; the five notebooks chain on a tiny model;
a failed stage exits 1 and the run resumes; each data format goes through preprocessing; a stage runs alone."""
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import yaml
from conftest import ROOT, tiny_params, write_jsonl
from test_data import CASES


def runner(*args, timeout=900, cwd=ROOT):
    return subprocess.run([sys.executable, str(ROOT / "runner.py"), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout)


def kernel_alive(run: Path, stage: str) -> bool:
    """Whether the kernel that ran the stage (its pid, recorded at the stage's start) still runs."""
    import psutil

    starts = [json.loads(x) for x in (run / "memory.jsonl").read_text().splitlines() if f'"stage": "{stage}"' in x
              and '"event": "start"' in x]
    try:
        return psutil.Process(starts[-1]["kernel_pid"]).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def bad_params(tmp_path, mutate) -> Path:
    raw = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    for key in ("source", "eval_source"):  # the copy lives elsewhere: keep it pointing at the bundled data
        raw["data"][key] = str((ROOT / "params" / raw["data"][key]).resolve())
    mutate(raw)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r["lora"].update(rank=8), "lora.rank: unknown key"),
    (lambda r: r["train"].update(micro_batch_size="eight"), "train.micro_batch_size"),
    (lambda r: r["data"].update(source="data/no_such_file.jsonl"), "data.source: file not found"),
    (lambda r: r["train"].update(optimizer="adamw8bit"), "train.optimizer: unknown optimizer 'adamw8bit'; did you "
     "mean adamw_8bit"),
    # gcsfs is a test dependency now (the gs:// tests run against a GCS server): s3fs stands for a missing package
    (lambda r: r.update(export={"destination": "s3://my-bucket/runs"}), "export.destination: s3://my-bucket/runs needs a "
     "package that is not installed"),
], ids=["unknown-key", "wrong-type", "missing-data-file", "optimizer-typo", "url-without-its-package"])
def test_invalid_params_exit_2_fast_and_run_nothing(tmp_path, mutate, message):
    t0 = time.time()
    r = runner(bad_params(tmp_path, mutate), "--reports-dir", tmp_path / "reports")
    assert r.returncode == 2, r.stderr
    assert message in r.stderr
    assert time.time() - t0 < 30
    assert not (tmp_path / "reports").exists(), "nothing may be written for invalid params"


def test_missing_params_file_and_bad_stage_exit_2(tmp_path):
    r = runner(tmp_path / "nope.yaml")
    assert r.returncode == 2 and "params file not found" in r.stderr
    r = runner("--stages", "setup,trian")
    assert r.returncode == 2 and "unknown stage(s) ['trian']" in r.stderr


def test_check_prints_resolved_config():
    r = runner("--check", "--set", "train.epochs=3")
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout.split("\n", 1)[1])
    assert cfg["train"]["epochs"] == 3 and Path(cfg["data"]["source"]).is_absolute()


def notebook_errors(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    return [o.get("ename", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
            if o.get("output_type") == "error"]


def test_five_notebooks_chain_on_a_tiny_model(tmp_path, tiny_model_dir, sample_data):
    leaked = json.loads(sample_data[0].read_text().splitlines()[0])["question"]
    bench = write_jsonl(tmp_path / "bench.jsonl", [
        {"question": q, "context": "A cohort study of adults.", "long_answer": "It does.", "final_decision": d}
        for q, d in [("Does smoking raise the risk of lung cancer?", "yes"), ("Does vitamin C cure scurvy?", "yes"),
                     ("Do antibiotics treat viral colds?", "no"), ("Does coffee prevent dementia?", "maybe"),
                     (leaked, "yes")]])
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data,
                         eval={"sets": [{"name": "bench", "source": str(bench), "max_items": 10}],
                               "queries": ["What is the first-line treatment of anaphylaxis?"],
                               "repetition_penalty": 1.1},
                         export={"zip": True}, data={"val_fraction": 0.25})
    reports = tmp_path / "reports"
    r = runner(params, "--reports-dir", reports, "--run-id", "e2e")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    run = reports / "e2e"
    # the terminal shows the position and the stages' progress; the notebooks' full output is in run.log
    assert "[run 1/1 e2e | stage 3/5 train | elapsed" in r.stdout and "Executing Cell" not in r.stdout
    assert "ETA" in r.stdout and "Executing Cell" in (run / "run.log").read_text()
    assert re.search(r"=== train: ok in [\d.]+ s \(its imports, [\d.]+ s, done ahead\)", r.stdout), r.stdout[-3000:]
    assert (run / "report.html").is_file() and "Stage: evaluate" in (run / "report.html").read_text()
    for nb in ("01_setup", "02_preprocess", "03_train", "04_export", "05_evaluate"):
        assert (run / f"{nb}.ipynb").is_file()
        assert notebook_errors(run / f"{nb}.ipynb") == []
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "ok" and s["run_id"] == "e2e" and s["model"] == tiny_model_dir
    assert [x["name"] for x in s["stages"]] == ["setup", "preprocess", "train", "export", "evaluate"]
    assert all(x["status"] == "ok" and x["seconds"] > 0 and (run / x["notebook"]).is_file() for x in s["stages"])
    prep = json.loads((run / "results" / "preprocess.json").read_text())
    assert prep["val_examples"] >= 1 and (run / "data" / "val").is_dir()
    assert s["train"]["steps"] == -(-prep["train_examples"] // 4) and s["train"]["final_loss"] > 0
    assert s["train"]["peak_memory_gb"] > 0 and s["train"]["val_last"] > 0
    # the headline opens report.html and summary.md, before any stage
    html, md = (run / "report.html").read_text(), (run / "summary.md").read_text()
    assert html.index("change [95% CI, paired]") < html.index("Loss:") < html.index("Stage: setup")
    assert "validation loss" in html[:html.index("Stage: setup")]
    assert md.index("| eval set | metric |") < md.index("| stage | status |") and "**Loss:** training loss" in md
    for which in ("base", "finetuned"):
        m = s["metrics"][which]
        assert set(m) >= {"rouge1", "rouge2", "rougeL", "accuracy", "n_freetext", "n_choice"}
        assert m["n_freetext"] == 4 and m["n_choice"] == 2  # the first 6 held-out items: 4 free text, 2 MCQ
    assert (run / s["artifacts"]["adapter_dir"] / "adapter_model.safetensors").is_file()
    answers = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 6 and all("base" in a and "finetuned" in a for a in answers)
    # a benchmark set is scored apart, and a training question found in it is dropped as a leak
    assert prep["dropped"].get("leak") == 1 and prep["eval_sets"]["bench"]["kept"] == 5
    ev = json.loads((run / "results" / "evaluate.json").read_text())
    assert list(ev["sets"]) == ["held-out", "bench"] and ev["sets"]["bench"]["n_items"] == 5
    assert ev["sets"]["bench"]["metrics"]["base"]["n_choice"] == 5 and ev["metrics"] == ev["sets"]["held-out"]["metrics"]
    assert (run / "eval" / "answers_bench.jsonl").is_file()
    from medqlora.core.rundir import RunDir
    from medqlora.evaluation.items import category_table

    by_category = category_table(RunDir(run)).data  # the bundled data's specialty column
    assert by_category["items"].sum() == 6 and len(by_category) >= 2
    # the export carries the evaluation and the project's commit, and still verifies; the zip is beside it
    from medqlora.export.exporter import verify

    meta = json.loads((run / "export" / "training_metadata.json").read_text())
    evaluation = json.loads((run / "export" / "evaluation.json").read_text())
    assert set(evaluation) == {"held-out", "bench"} and evaluation["bench"]["n_items"] == 5
    assert str(run) not in (run / "export" / "adapter" / "adapter_config.json").read_text() + json.dumps(meta), \
        "the export records paths relative to the run folder"
    assert meta["git_commit"] and len(meta["git_commit"]) == 40
    assert meta["training"]["effective_settings"]["micro_batch_size"] == 4
    assert verify(run / "export") == [] and (run / "export.zip").is_file()
    # the researcher's own questions, answered side by side with the generation settings shown
    assert [q["question"] for q in ev["queries"]] == ["What is the first-line treatment of anaphylaxis?"]
    assert ev["generation"]["repetition_penalty"] == 1.1 and ev["generation"]["do_sample"] is False
    asked = subprocess.run([sys.executable, "-m", "medqlora.evaluation.ask", str(run), "What causes scurvy?", "--max-new-tokens",
                            "6"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert asked.returncode == 0, asked.stderr[-2000:]
    assert "Q: What causes scurvy?" in asked.stdout and "fine-tuned:" in asked.stdout
    assert "no clear difference" in (run / "05_evaluate.ipynb").read_text() or "better" in (
        run / "05_evaluate.ipynb").read_text()
    # the executed notebooks show their work: progress with ETA, the loss table, a chart
    train_nb = (run / "03_train.ipynb").read_text()
    assert "ETA" in train_nb and "image/png" in train_nb and "trainable (LoRA)" in train_nb
    assert "»»" in (run / "02_preprocess.ipynb").read_text()

    # a stage notebook runs alone on the filled run folder, as papermill users resume by hand
    import papermill as pm

    out = tmp_path / "export_alone.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / "04_export.ipynb"), str(out), cwd=str(ROOT), progress_bar=False,
                        parameters={"config_path": str(run / "config.yaml"), "run_dir": str(run)})
    assert notebook_errors(out) == [] and "manifest verified: True" in out.read_text()


def test_failed_stage_exits_1_keeps_notebook_and_resumes(tmp_path, tiny_model_dir, sample_data):
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, lora={"target_modules": ["no_such_proj"]})
    reports = tmp_path / "reports"
    r = runner(params, "--reports-dir", reports, "--run-id", "fail", "--stages", "preprocess,train,export")
    assert r.returncode == 1
    assert "--resume fail" in r.stderr
    run = reports / "fail"
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "failed" and "stage train failed" in s["error"] and "no_such_proj" in s["error"]
    assert [(x["name"], x["status"]) for x in s["stages"]] == [("preprocess", "ok"), ("train", "failed")]
    assert notebook_errors(run / "03_train.ipynb") == ["ValueError"]
    assert (run / "data" / "train").is_dir(), "the earlier stage's output stays usable"
    # the train kernel was started while preprocess ran, did its imports there, and is gone with the failed stage
    assert "kernel started ahead: its imports" in (run / "03_train.ipynb").read_text()
    train_entry = next(x for x in s["stages"] if x["name"] == "train")
    assert train_entry["imports_done_ahead_s"] > 0
    assert not kernel_alive(run, "train")

    r = runner("--resume", "fail", "--reports-dir", reports, "--set", "lora.target_modules=[q_proj,v_proj]",
               "--stages", "preprocess,train,export")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "resuming at stage train" in r.stdout
    s = json.loads((run / "summary.json").read_text())
    assert [(x["name"], x["status"]) for x in s["stages"]] == [("preprocess", "ok"), ("train", "ok"), ("export", "ok")]
    assert s["artifacts"]["adapter_dir"] and s["status"] == "partial"
    trained_with = json.loads((run / "results" / "train.json").read_text())

    # A changed training setting on --resume redoes train and what follows, never reuses the old checkpoints
    r = runner("--resume", "fail", "--reports-dir", reports, "--set", "train.learning_rate=5e-4",
               "--stages", "preprocess,train,export")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "settings changed since stage train ran (train.learning_rate 0.001 -> 0.0005)" in r.stdout
    assert "resuming at stage train" in r.stdout
    redone = json.loads((run / "results" / "train.json").read_text())
    assert redone["resumed_from"] is None and redone["losses"] != trained_with["losses"]
    assert list((run / "superseded").glob("*/03_train.ipynb")), "the superseded report is kept, not lost"
    meta = json.loads((run / "export" / "training_metadata.json").read_text())
    assert meta["config"]["train"]["learning_rate"] == 5e-4, "the export describes what was really trained"


def test_resume_with_a_changed_sequence_length_redoes_preprocessing(tmp_path, tiny_model_dir, sample_data):
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    reports = tmp_path / "reports"
    assert runner(params, "--reports-dir", reports, "--run-id", "seq", "--stages", "setup,preprocess").returncode == 0
    r = runner("--resume", "seq", "--reports-dir", reports, "--set", "model.max_seq_length=256",
               "--stages", "setup,preprocess")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    assert "settings changed since stage preprocess ran (model.max_seq_length 512 -> 256)" in r.stdout
    prep = json.loads((reports / "seq" / "results" / "preprocess.json").read_text())
    assert prep["max_seq_length"] == 256
    r = runner("--resume", "seq", "--reports-dir", reports, "--stages", "setup,preprocess")
    assert r.returncode == 0 and "nothing to resume" in r.stdout


def test_runner_works_from_another_folder(tmp_path, tiny_model_dir, sample_data):
    import shutil

    proj = tmp_path / "study"
    (proj / "params").mkdir(parents=True)
    (proj / "data").mkdir()
    for f in sample_data:
        shutil.copy(f, proj / "data" / f.name)
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    raw = yaml.safe_load(params.read_text())
    raw["data"].update(source="../data/train.jsonl", eval_source="../data/eval.jsonl")
    (proj / "params" / "tiny.yaml").write_text(yaml.safe_dump(raw))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = runner(proj / "params" / "tiny.yaml", "--reports-dir", "my-reports", "--run-id", "away",
               "--stages", "setup,preprocess", cwd=elsewhere)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-2000:]
    run = elsewhere / "my-reports" / "away"
    prep = json.loads((run / "results" / "preprocess.json").read_text())
    assert prep["kept"] == {"eval": 6, "train": 16}
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["source"] == str(proj / "data" / "train.jsonl")


@pytest.mark.parametrize("case", ["qa", "alpaca", "chat", "chat-sharegpt", "reasoning", "mcq", "pubmedqa"])
def test_set_data_source_accepts_each_format(tmp_path, tiny_model_dir, case):
    row = CASES[case][0]
    rows = []
    for i in range(20):  # distinct rows of the same shape
        r = json.loads(re.sub("scurvy", f"scurvy type {i}", json.dumps(row), flags=re.IGNORECASE))
        rows.append(r)
    src = write_jsonl(tmp_path / f"{case}.jsonl", rows)
    params = tiny_params(tmp_path, tiny_model_dir, src, None, data={"eval_fraction": 0.5})
    r = runner(params, "--reports-dir", tmp_path / "reports", "--run-id", case, "--stages", "preprocess",
               "--set", f"data.source={src}")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    prep = json.loads((tmp_path / "reports" / case / "results" / "preprocess.json").read_text())
    # 20 rows split by a hash of the question: P(no eval or no train row) = 2 * 0.5**20
    assert prep["rows_read"] == 20 and sum(prep["kept"].values()) == 20
    assert prep["kept"].get("train", 0) > 0 and prep["kept"].get("eval", 0) > 0


def test_resume_refuses_a_stale_stage_left_out_of_stages_and_moves_nothing(tmp_path, tiny_model_dir, sample_data,
                                                                           monkeypatch, capsys):
    """--resume --stages export --set lora.r=32 once said "redoing train and every stage after it", moved
    results/train.json aside and ran export alone on the old adapter. Now: exit 2, the stages to add, nothing moved."""
    from medqlora.run import cli

    ran = []

    def fake_stage(stage, run, verbose=False, warm=None):
        ran.append(stage)
        run.save_result(stage, {"n": len(ran), "adapter_dir": "a", "export_dir": "e",
                                "metrics": {"base": {}, "finetuned": {}}})
        return "ok", 0.1, None

    monkeypatch.setattr(cli, "run_stage", fake_stage)
    monkeypatch.setattr(cli, "start_warm", lambda *a, **k: None)  # the stages are faked
    reports = tmp_path / "reports"
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    assert cli.main([str(params), "--reports-dir", str(reports), "--run-id", "r"]) == 0
    run = reports / "r"
    before = {p.name: p.read_text() for p in (run / "results").iterdir()}
    config = (run / "config.yaml").read_text()
    ran.clear()
    capsys.readouterr()
    assert cli.main(["--resume", "r", "--stages", "export", "--set", "lora.r=32", "--reports-dir", str(reports)]) == 2
    err = capsys.readouterr().err
    assert "settings changed since stage train ran (lora.r 8 -> 32)" in err
    assert "add train, evaluate to --stages (--stages train,export,evaluate)" in err
    assert ran == [] and not (run / "superseded").exists(), "nothing run, nothing moved aside"
    assert {p.name: p.read_text() for p in (run / "results").iterdir()} == before
    assert (run / "config.yaml").read_text() == config, "the run's settings are not rewritten by a refused resume"

    assert cli.main(["--resume", "r", "--stages", "train,export,evaluate", "--set", "lora.r=32", "--reports-dir",
                     str(reports)]) == 0
    out = capsys.readouterr().out
    assert ran == ["train", "export", "evaluate"] and "redoing train, export, evaluate" in out
    assert sorted(p.name for p in next((run / "superseded").iterdir()).glob("*.result.json")) == [
        "evaluate.result.json", "export.result.json", "train.result.json"]
