"""Batches, the comparison report and per-run HTML reports (runs prepared for Colab Enterprise: test_colab.py)."""
import json
from pathlib import Path

import nbformat
from conftest import ROOT, tiny_params

from medqlora.core.rundir import NOTEBOOKS, STAGES, RunDir
from medqlora.run import cli as runner
from medqlora.run import compare as comparison
from medqlora.run.colab import BOOTSTRAP


def named_params(tmp_path, model_dir, sample_data, *names) -> list[str]:
    """One tiny params file per name, each in its own folder, with run_name = name."""
    out = []
    for name in names:
        (tmp_path / name).mkdir()
        p = tiny_params(tmp_path / name, model_dir, *sample_data)
        p.write_text(p.read_text().replace("run_name: tiny", f"run_name: {name}"))
        out.append(str(p))
    return out


def fake_run(folder: Path, name: str, rouge_change: tuple, status: str = "ok", failed_stage: str | None = None):
    """A run folder as the runner leaves it: config, summary, train and evaluate results."""
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"run_name: {name}\nmodel: {{name_or_path: m-{name}}}\n"
                                        "data: {source: d.jsonl}\nlora: {r: 8}\n")
    stages = [{"name": s, "status": "ok", "seconds": 1.0, "notebook": str(folder / NOTEBOOKS[s]), "error": None}
              for s in STAGES]
    if failed_stage:
        i = STAGES.index(failed_stage)
        stages = stages[:i] + [{**stages[i], "status": "failed", "error": "RuntimeError: boom"}]
    (folder / "summary.json").write_text(json.dumps({"run_id": name, "status": status, "model": f"m-{name}",
                                                     "stages": stages, "memory_peaks_gb": {"train": 1.5}}))
    if failed_stage:
        return folder
    (folder / "results").mkdir()
    (folder / "results" / "train.json").write_text(json.dumps({
        "seconds": 10.0, "epochs": 1, "final_loss": 1.2, "effective_settings": {
            "micro_batch_size": 4, "gradient_accumulation": 2, "max_seq_length": 512}}))
    (folder / "results" / "preprocess.json").write_text(json.dumps({"kept": {"train": 40}, "train_tokens": 5000}))
    change, lo, hi = rouge_change
    metrics = {"base": {"rougeL": 0.2, "n_freetext": 30, "n_choice": 0, "looping": 0.1},
               "finetuned": {"rougeL": 0.2 + change, "n_freetext": 30, "n_choice": 0, "looping": 0.05}}
    changes = {"rougeL": {"change": {"change": change, "ci95": [lo, hi]}},
               "looping": {"change": {"change": -0.05, "ci95": [-0.1, 0.01]}}}
    (folder / "results" / "evaluate.json").write_text(json.dumps({"sets": {"held-out": {
        "n_items": 30, "metrics": metrics, "changes": changes}}}))
    return folder


def test_comparison_marks_only_real_improvements_and_keeps_failed_runs(tmp_path):
    runs = comparison.load_runs([fake_run(tmp_path / "a", "a", (0.05, 0.02, 0.08)),
                                 fake_run(tmp_path / "b", "b", (0.09, -0.01, 0.2)),  # bigger, but crosses zero
                                 fake_run(tmp_path / "c", "c", (0.03, 0.01, 0.05)),
                                 fake_run(tmp_path / "d", "d", (0, 0, 0), "failed", "train")])
    rows = {(r["run"], r["metric"]): r for r in comparison.metric_rows(runs)}
    assert rows[("a", "rougeL")]["verdict"] == "better" and rows[("a", "rougeL")]["best"]
    assert rows[("b", "rougeL")]["verdict"] == "no clear difference" and not rows[("b", "rougeL")]["best"]
    assert rows[("c", "rougeL")]["verdict"] == "better" and not rows[("c", "rougeL")]["best"]
    assert rows[("a", "looping")]["verdict"] == "no clear difference"
    assert not any(r == "d" for r, _ in rows), "a failed run has no metrics row"
    table = comparison.runs_table(runs)
    assert list(table["run"]) == ["a", "b", "c", "d"]
    assert table.loc[3, "status"] == "failed (train: RuntimeError: boom)"
    assert table.loc[0, "micro-batch x accumulation"] == "4 x 2" and table.loc[0, "tokens/s"] == 500
    html = comparison.metrics_table(runs).to_html()
    assert "★ best" in html and "0.200 → 0.250 (+0.050 [+0.020, +0.080]) better" in html
    assert "| d | failed: train: RuntimeError: boom |" in comparison.summary_md(runs)


def test_batch_continues_past_a_failed_run_and_builds_summary_and_comparison(tmp_path, monkeypatch, tiny_model_dir,
                                                                            sample_data):
    params = named_params(tmp_path, tiny_model_dir, sample_data, "one", "two", "three")
    ran = []

    def fake_stage(stage, run, verbose=False, warm=None):  # the stage notebooks themselves are tested elsewhere; here: the batch logic
        ran.append((run.path.name.split("-")[0], stage))
        failed = run.path.name.startswith("two") and stage == "train"
        (run / NOTEBOOKS[stage]).write_text(nbformat.writes(nbformat.v4.new_notebook()))
        return ("failed", 0.1, "RuntimeError: boom") if failed else ("ok", 0.1, None)

    monkeypatch.setattr(runner, "run_stage", fake_stage)
    monkeypatch.setattr(runner, "start_warm", lambda *a, **k: None)  # the stages are faked
    reports = tmp_path / "reports"
    code = runner.main(params + ["--reports-dir", str(reports)])
    assert code == 1, "one failed run makes the batch fail"
    assert [r for r, s in ran if s == "evaluate"] == ["one", "three"], "the run after the failed one still ran"
    batch = next(reports.glob("batch-*"))
    info = json.loads((batch / "batch.json").read_text())
    assert [r["status"] for r in info["runs"]] == ["ok", "failed", "ok"] and info["exit_codes"] == [0, 1, 0]
    assert "failed: train: RuntimeError: boom" in (batch / "batch.md").read_text()
    assert (batch / "compare.html").is_file() and "compare.html" in (batch / "batch.md").read_text()
    for run in reports.glob("one-*"):
        assert (run / "report.html").is_file() and "report.html" in (run / "summary.md").read_text()
    ran.clear()
    assert runner.main(params + ["--reports-dir", str(reports / "ff"), "--fail-fast"]) == 1
    assert {r for r, _ in ran} == {"one", "two"}, "--fail-fast stops after the failed run"
    folder = tmp_path / "batch_dir"
    folder.mkdir()
    for p in params:
        (folder / Path(p).parent.name).with_suffix(".yaml").write_text(Path(p).read_text())
    assert runner.expand_params([str(folder)]) == sorted(str(p) for p in folder.glob("*.yaml"))
    assert runner.expand_params([str(folder / "t*.yaml")]) == [str(folder / "three.yaml"), str(folder / "two.yaml")]


def test_comparison_labels_rows_by_run_id_warns_on_a_run_given_twice_and_stars_no_tie(tmp_path, monkeypatch,
                                                                                      capsys):
    """compare A A used to label both rows 'run' (the folder's name), say nothing, and star one of the two."""
    a = fake_run(tmp_path / "x" / "run", "alpha", (0.05, 0.02, 0.08))
    b = fake_run(tmp_path / "y" / "run", "beta", (0.05, 0.02, 0.08))  # identical results, another run
    lines = []
    once = comparison.load_runs([a, tmp_path / "x" / ".." / "x" / "run"], print_fn=lines.append)
    assert [r["run"] for r in once] == ["alpha"] and "given more than once" in lines[0]
    assert not any(r["best"] for r in comparison.metric_rows(once)), "one run has no best run"
    twins = comparison.load_runs([a, b])
    assert [r["run"] for r in twins] == ["alpha", "beta"]
    rows = comparison.metric_rows(twins)
    assert rows and all(r["verdict"] == "better" or r["metric"] != "rougeL" for r in rows)
    assert not any(r["best"] for r in rows), "identical results: no star"
    assert "★" not in comparison.metrics_table(twins).to_html()
    copy = fake_run(tmp_path / "z" / "alpha", "alpha", (0.01, 0.0, 0.02))  # a copy of alpha's folder elsewhere
    assert [r["run"] for r in comparison.load_runs([a, copy])] == ["alpha (x)", "alpha (z)"]
    seen = []
    monkeypatch.setattr(comparison, "compare_report", lambda dirs, out: seen.append(dirs) or out / "compare.html")
    assert runner.main(["compare", str(a), str(a), "--out", str(tmp_path / "cmp")]) == 0
    assert seen == [[str(a.resolve())]] and "given more than once" in capsys.readouterr().err


def test_run_report_joins_the_notebooks_and_says_which_failed(tmp_path):
    from medqlora.run.report import run_report

    run = RunDir(tmp_path / "r")
    for stage in STAGES[:3]:
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell(f"print('{stage} output')")
        cell.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{stage} did its work\n")]
        if stage == "train":
            cell.outputs.append(nbformat.v4.new_output("error", ename="RuntimeError", evalue="boom", traceback=[]))
        nb.cells = [nbformat.v4.new_code_cell("run_dir = 'x'", metadata={"tags": ["parameters"]}),
                    nbformat.v4.new_code_cell(BOOTSTRAP), cell]
        nbformat.write(nb, str(run / NOTEBOOKS[stage]))
    html = run_report(run).read_text()
    assert "preprocess did its work" in html and "stage-train\">train</a> (failed: see its error below)" in html
    assert "export: not run" in html and "missing = importlib.util" not in html


def test_rerun_starts_a_new_run_from_the_old_runs_config(tmp_path, monkeypatch, tiny_model_dir, sample_data):
    monkeypatch.setattr(runner, "run_stage", lambda stage, run, verbose=False, warm=None: ("ok", 0.1, None))
    monkeypatch.setattr(runner, "start_warm", lambda *a, **k: None)  # the stages are faked
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    reports = tmp_path / "reports"
    assert runner.main([str(params), "--reports-dir", str(reports), "--run-id", "first"]) == 0
    env = json.loads((reports / "first" / "environment.json").read_text())
    assert env["versions"]["transformers"] and env["git_commit"] and env["rerun_of"] is None
    assert runner.main(["--rerun", str(reports / "first"), "--reports-dir", str(reports), "--run-id", "again"]) == 0
    assert (reports / "again" / "config.yaml").read_text() == (reports / "first" / "config.yaml").read_text()
    s = json.loads((reports / "again" / "summary.json").read_text())
    assert s["rerun_of"] == str((reports / "first").resolve()) and s["status"] == "ok"
    assert comparison.runs_table(comparison.load_runs([reports / "first", reports / "again"]))["rerun of"].tolist() \
        == ["", "first"]


def test_gpus_runs_the_batch_in_parallel_one_run_per_device(tmp_path, tiny_model_dir, sample_data):
    """On this CPU machine the devices are only CUDA_VISIBLE_DEVICES values: what is checked is the queue, the
    assignment and the combined progress; running on two real GPUs is a check for the GPU machine."""
    import subprocess
    import sys

    params = named_params(tmp_path, tiny_model_dir, sample_data, "p1", "p2", "p3")
    reports = tmp_path / "reports"
    r = subprocess.run([sys.executable, "runner.py", *params, "--gpus", "0,1", "--stages", "setup", "--reports-dir",
                        str(reports)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in sorted(reports.glob("p*/summary.json"))]
    assert [s["status"] for s in summaries] == ["partial"] * 3  # only setup was asked for
    # the first two start at once, one per GPU; the third waits for whichever GPU frees first
    assert [s["gpu"] for s in summaries[:2]] == ["0", "1"] and summaries[2]["gpu"] in ("0", "1")
    assert "gpu 0: p1-" in r.stdout and "gpu 1: p2-" in r.stdout and "3/3 runs done" not in r.stderr
    assert next(reports.glob("batch-*/batch.md")).is_file()
    bad = subprocess.run([sys.executable, "runner.py", params[0], "--gpus", "x"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "give GPU indices" in bad.stderr


def test_report_to_reaches_the_trainer_and_a_missing_package_is_said_up_front(tmp_path, tiny_model_dir, sample_data,
                                                                              monkeypatch):
    import importlib.util

    from medqlora.config import check_inputs, load_config
    from medqlora.training import train as T

    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, *sample_data, train={"report_to": "tensorboard"}))
    run = RunDir(tmp_path / "run")
    args = T.sft_config(cfg, run, False)
    assert args.report_to == ["tensorboard"] and args.run_name == "run"
    assert __import__("os").environ["TENSORBOARD_LOGGING_DIR"] == str(run / "tensorboard")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n.startswith("tensorboard") else real(n, *a))
    assert "pip install tensorboard" in " ".join(check_inputs(cfg))
    monkeypatch.setattr(importlib.util, "find_spec", real)
    cfg.train.report_to = "wandb"
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    problems = " ".join(check_inputs(cfg))
    assert "wandb" in problems and ("WANDB_API_KEY" in problems or "pip install wandb" in problems)


def test_a_killed_run_fails_the_batch_and_batch_md_counts_it_failed(tmp_path, monkeypatch, tiny_model_dir,
                                                                     sample_data):
    """A child killed by a signal returns a negative code (-9: SIGKILL, e.g. the kernel's OOM killer): max([0, -9])
    is 0, so the batch once said ok. Any non-zero code is a failed run."""
    import sys

    from medqlora.run import batch

    logs = tmp_path / "logs"
    suicide = "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"
    codes = batch.run_on_gpus([("fine", [sys.executable, "-c", "pass"], logs / "a.log"),
                               ("killed", [sys.executable, "-c", suicide], logs / "b.log")], ["0", "1"])
    assert codes == {"fine": 0, "killed": -9}

    def fake_queue(commands, gpus, tick=None, **kw):  # the second child dies mid-run, its summary still "running"
        out = {}
        for (name, command, _), status in zip(commands, ["ok", "running"]):
            (reports / name).mkdir(parents=True)
            (reports / name / "summary.json").write_text(json.dumps({"run_id": name, "status": status, "stages": []}))
            out[name] = 0 if status == "ok" else -9
        return out

    monkeypatch.setattr(batch, "run_on_gpus", fake_queue)
    monkeypatch.setattr(batch, "compare_report", lambda folders, out: out)  # built and tested elsewhere; slow
    reports = tmp_path / "reports"
    params = named_params(tmp_path, tiny_model_dir, sample_data, "one", "two")
    assert runner.main(params + ["--gpus", "0,1", "--reports-dir", str(reports)]) == 1, "a killed run fails the batch"
    out = next(reports.glob("batch-*"))
    info = json.loads((out / "batch.json").read_text())
    assert [r["status"] for r in info["runs"]] == ["ok", "failed"] and info["exit_codes"] == [0, -9]
    md = (out / "batch.md").read_text()
    assert md.startswith("# Batch of 2 runs: 1 succeeded, 1 failed") and "killed by signal 9 (SIGKILL" in md
    killed = json.loads((reports / params_ids(reports)[1] / "summary.json").read_text())
    assert killed["status"] == "failed" and "killed by signal 9" in killed["error"], "its own summary says so too"


def params_ids(reports: Path) -> list[str]:
    return sorted(p.name for p in reports.iterdir() if not p.name.startswith("batch-"))


def test_gpus_forwards_resume_rerun_verbose_and_fail_fast(tmp_path, monkeypatch, tiny_model_dir, sample_data):
    """--gpus runs each run in a child runner: a --resume continues the same run folder, a --rerun keeps rerun_of,
    --verbose reaches the child, --fail-fast starts no run after a failed one."""
    import sys

    from medqlora.run import batch

    ran, argvs, fail_train = [], [], [True]

    def fake_stage(stage, run, verbose=False, warm=None):
        ran.append((run.path.name, stage, verbose))
        if stage == "train" and fail_train[0]:
            return "failed", 0.1, "RuntimeError: boom"
        return "ok", 0.1, None

    def in_process_queue(commands, gpus, tick=None, **kw):  # each child runner, run here instead of in a process
        codes = {}
        for name, command, _ in commands:
            assert command[:2] == [sys.executable, str(ROOT / "runner.py")]
            argvs.append(command[2:])
            codes[name] = runner.main(command[2:])
        return codes

    monkeypatch.setattr(runner, "run_stage", fake_stage)
    monkeypatch.setattr(runner, "start_warm", lambda *a, **k: None)  # the stages are faked
    monkeypatch.setattr(batch, "run_on_gpus", in_process_queue)
    reports = tmp_path / "reports"
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    assert runner.main([str(params), "--reports-dir", str(reports), "--run-id", "old"]) == 1
    fail_train[0] = False
    ran.clear()
    assert runner.main(["--resume", "old", "--gpus", "0", "--verbose", "--reports-dir", str(reports)]) == 0
    assert sorted(p.name for p in reports.iterdir()) == ["old"], "resumed in place, no new run folder"
    assert [(r, s) for r, s, _ in ran] == [("old", "train"), ("old", "export"), ("old", "evaluate")]
    assert all(v for _, _, v in ran), "--verbose reached the child"
    assert json.loads((reports / "old" / "summary.json").read_text())["status"] == "ok"

    assert runner.main(["--rerun", str(reports / "old"), "--gpus", "0", "--run-id", "again", "--reports-dir",
                        str(reports)]) == 0
    s = json.loads((reports / "again" / "summary.json").read_text())
    assert s["rerun_of"] == str((reports / "old").resolve()) and s["status"] == "ok"

    logs = tmp_path / "logs"
    monkeypatch.undo()
    codes = batch.run_on_gpus([(f"r{i}", [sys.executable, "-c", f"raise SystemExit({c})"], logs / f"{i}.log")
                               for i, c in enumerate([0, 3, 0, 0])], ["0"], fail_fast=True)
    assert codes == {"r0": 0, "r1": 3}, "--fail-fast: no run starts after one failed"
