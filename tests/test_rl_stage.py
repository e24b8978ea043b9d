"""The reinforce stage in the chain: between train and export, in --stages, resume and the summary; a run without an
rl: section has the five stages it always had and is ok after them."""
import pytest
from conftest import tiny_params

from medqlora.config import ConfigError, load_config, save_config, stage_inputs
from medqlora.core.rundir import NOTEBOOKS, RunDir
from medqlora.run import cli
from medqlora.run import headline as H
from medqlora.run.stages import plan_resume
from medqlora.run.summary import Summary

FIVE = ["setup", "preprocess", "train", "export", "evaluate"]
SIX = ["setup", "preprocess", "train", "reinforce", "export", "evaluate"]


def a_run(tmp_path, tiny_model_dir, sample_data, rl: dict | None, name="r"):
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, **({"rl": rl} if rl is not None else {}))
    cfg = load_config(params)
    run = RunDir(tmp_path / name)
    save_config(cfg, run.config_path)
    return cfg, run, Summary(run, name, cfg, str(params))


def record(summary, cfg, run, stages, status="ok"):
    for s in stages:
        (run / NOTEBOOKS[s]).write_text("{}")
        summary.record(s, status, 1.0, run / NOTEBOOKS[s], None if status == "ok" else "boom",
                       stage_inputs(cfg, s) if status == "ok" else None)


def test_stages_accepts_reinforce_in_pipeline_order():
    assert cli._stages("export,reinforce,train") == ["train", "reinforce", "export"]
    assert NOTEBOOKS["reinforce"] == "03b_reinforce.ipynb" and NOTEBOOKS["export"] == "04_export.ipynb"
    with pytest.raises(ConfigError, match="choose from setup,preprocess,train,reinforce,export,evaluate"):
        cli._stages("reinforc")


def test_a_run_without_rl_is_ok_after_its_five_stages(tmp_path, tiny_model_dir, sample_data):
    cfg, run, summary = a_run(tmp_path, tiny_model_dir, sample_data, None)
    record(summary, cfg, run, FIVE)
    assert summary.finish() == "ok" and "reinforce" not in summary.data
    assert "All five notebooks in one file" in (run / "summary.md").read_text()
    assert [s for s, _ in H.build(run, summary.data["stages"]).stages] == FIVE, "not listed as missing"
    assert run.stages() == FIVE and cli.for_run(cfg, SIX) == FIVE


def test_a_run_with_rl_is_partial_until_its_reinforce_stage_ran(tmp_path, tiny_model_dir, sample_data):
    cfg, run, summary = a_run(tmp_path, tiny_model_dir, sample_data, {"max_steps": 2})
    record(summary, cfg, run, FIVE)
    assert summary.finish() == "partial"
    assert dict(H.build(run, summary.data["stages"]).stages)["reinforce"] == "not run"
    assert "The 5 executed notebooks of six" in (run / "summary.md").read_text()
    record(summary, cfg, run, ["reinforce"])
    assert summary.finish() == "ok" and [s["name"] for s in summary.data["stages"]] == SIX
    assert "All six notebooks in one file" in (run / "summary.md").read_text()


def test_resume_after_a_failed_reinforce_starts_there_and_redoes_what_follows(tmp_path, tiny_model_dir, sample_data):
    cfg, run, summary = a_run(tmp_path, tiny_model_dir, sample_data, {"max_steps": 2})
    record(summary, cfg, run, FIVE[:3])
    record(summary, cfg, run, ["reinforce"], status="failed")
    plan = plan_resume(run, summary, cfg, cli.for_run(cfg, SIX))
    assert plan.first == "reinforce" and plan.run == ["reinforce", "export", "evaluate"]


def test_a_changed_rl_setting_redoes_reinforce_and_what_follows_never_train(tmp_path, tiny_model_dir, sample_data):
    cfg, run, summary = a_run(tmp_path, tiny_model_dir, sample_data, {"max_steps": 2})
    record(summary, cfg, run, SIX)
    changed = load_config(run.config_path, ["rl.learning_rate=1e-5"])
    plan = plan_resume(run, summary, changed, SIX)
    assert plan.first == "reinforce" and plan.run == ["reinforce", "export", "evaluate"]
    assert plan.stale[1] == ["rl.learning_rate 5e-06 -> 1e-05"]
    # how a step is split into passes is no change: nothing to redo
    same = load_config(run.config_path, ["rl.micro_batch_size=2"])
    assert plan_resume(run, summary, same, SIX).first is None


def test_stages_reinforce_for_params_without_rl(tmp_path, tiny_model_dir, sample_data, capsys):
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data)
    assert cli.main([str(params), "--stages", "reinforce", "--check"]) == 2
    assert "has no rl: section, so its run has no reinforce stage" in capsys.readouterr().err
    assert cli.main([str(params), "--stages", "train,reinforce", "--check"]) == 0
    assert "its run skips the reinforce stage" in capsys.readouterr().err


def test_the_reinforce_notebook_is_thin_and_committed_without_outputs():
    import ast

    import nbformat
    from conftest import ROOT

    nb = nbformat.read(str(ROOT / "notebooks" / NOTEBOOKS["reinforce"]), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and code[0] is params[0]
    for node in ast.parse(params[0].source).body:  # literals only, each with a comment
        assert isinstance(node, ast.AnnAssign) and isinstance(node.value, ast.Constant)
    assert all("#" in line for line in params[0].source.splitlines())
    for c in code:
        assert not c.outputs and c.execution_count is None
        tree = ast.parse(c.source)
        assert not any(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Lambda)) for n in ast.walk(tree))
        assert len([ln for ln in c.source.splitlines() if ln.strip() and not ln.startswith("#")]) <= 6
