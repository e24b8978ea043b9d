"""The rl: section is validated up front like every section: unknown keys and bad values refused with what to do,
before any notebook runs; absent, the run has no reinforce stage and its stage inputs are what they were."""
import pytest
import yaml
from conftest import ROOT, tiny_params, write_jsonl

from medqlora.config import ConfigError, check_inputs, load_config, stage_inputs


def params_with(tmp_path, tiny_model_dir, sample_data, **rl):
    return tiny_params(tmp_path, tiny_model_dir, *sample_data, rl=rl)


def test_absent_rl_means_no_reinforce_stage_and_unchanged_stage_inputs(tmp_path, tiny_model_dir, sample_data):
    from medqlora.core.rundir import STAGES, run_stages

    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, *sample_data))
    assert cfg.rl is None and "reinforce" in STAGES
    assert run_stages(cfg) == ["setup", "preprocess", "train", "export", "evaluate"]
    for stage in ("export", "evaluate"):
        assert "rl" not in stage_inputs(cfg, stage), "a run without rl: records exactly what it recorded before"


def test_an_rl_section_adds_the_stage_and_its_settings_to_what_follows(tmp_path, tiny_model_dir, sample_data):
    from medqlora.core.rundir import run_stages

    cfg = load_config(params_with(tmp_path, tiny_model_dir, sample_data, max_steps=3, num_generations=2))
    assert run_stages(cfg) == ["setup", "preprocess", "train", "reinforce", "export", "evaluate"]
    assert cfg.rl.max_steps == 3 and cfg.rl.micro_batch == 2 and cfg.rl.cache == 64
    r = stage_inputs(cfg, "reinforce")
    assert r["rl"]["max_steps"] == 3 and "train" in r and "save_steps" not in r["rl"]  # bookkeeping changes nothing
    assert "micro_batch_size" not in r["rl"], "how a step is split into passes changes memory, not what is learnt"
    assert stage_inputs(cfg, "export")["rl"] == r["rl"] and "rl" not in stage_inputs(cfg, "train")


@pytest.mark.parametrize("rl,message", [
    ({"num_generation": 4}, "rl.num_generation: unknown key"),
    ({"num_generations": 1}, "rl.num_generations: Input should be greater than or equal to 2"),
    ({"loss_type": "ppo"}, "rl.loss_type: Input should be 'grpo', 'dr_grpo', 'dapo' or 'bnpo'"),
    ({"num_generations": 4, "micro_batch_size": 3}, "rl.micro_batch_size 3 does not divide the 4 completions"),
    ({"rewards": {"correctness": 0, "format": 0, "length": 0}}, "every reward weight is 0"),
    ({"rewards": {"accuracy": 1}}, "rl.rewards.accuracy: unknown key"),
    ({"max_completion_length": 512}, "rl.max_completion_length 512 leaves no room for a prompt in "
                                     "model.max_seq_length 512"),
    ({"beta": -0.1}, "rl.beta: Input should be greater than or equal to 0"),
    ({"overlong_cache": 300, "max_completion_length": 256}, "rl.overlong_cache 300 is longer than"),
], ids=["unknown-key", "one-generation", "loss-type", "micro-batch", "no-weight", "reward-name", "no-room", "beta",
        "cache"])
def test_a_bad_rl_section_is_refused_with_what_to_do(tmp_path, tiny_model_dir, sample_data, rl, message):
    with pytest.raises(ConfigError) as e:
        load_config(params_with(tmp_path, tiny_model_dir, sample_data, **rl))
    assert message in str(e.value)


def test_input_problems_of_rl_are_found_before_any_notebook(tmp_path, tiny_model_dir, sample_data):
    from medqlora.reinforce.checks import problems

    cfg = load_config(params_with(tmp_path, tiny_model_dir, sample_data, source="no_such_items.jsonl",
                                  optimizer="adamw8bit", use_vllm=True))
    found = "\n".join(problems(cfg))
    assert "rl.source: file not found" in found
    assert "rl.optimizer: unknown optimizer 'adamw8bit'; did you mean adamw_8bit" in found
    assert "rl.use_vllm: true needs a CUDA GPU" in found
    assert check_inputs(cfg) == [], "the other sections' checks are unchanged"


def test_rl_source_in_a_params_file_is_read_from_its_folder(tmp_path, tiny_model_dir, sample_data):
    items = write_jsonl(tmp_path / "items.jsonl", [{"question": "q?", "options": {"A": "x", "B": "y"}, "answer": "A"}])
    raw = yaml.safe_load(tiny_params(tmp_path, tiny_model_dir, *sample_data).read_text())
    raw["rl"] = {"source": "items.jsonl"}
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    assert load_config(tmp_path / "p.yaml").rl.source == str(items)
    assert load_config(tmp_path / "p.yaml", ["rl.source=org/hub-items"]).rl.source == "org/hub-items"


def test_the_runner_refuses_a_bad_rl_section_with_exit_2_and_writes_nothing(tmp_path, tiny_model_dir, sample_data,
                                                                           capsys):
    from medqlora.run import cli

    params = params_with(tmp_path, tiny_model_dir, sample_data, num_generations=4, micro_batch_size=3)
    assert cli.main([str(params), "--reports-dir", str(tmp_path / "reports")]) == 2
    assert "rl.micro_batch_size 3 does not divide" in capsys.readouterr().err
    assert not (tmp_path / "reports").exists()


def test_the_r1_grpo_params_file_validates_and_names_real_hub_models():
    cfg = load_config(ROOT / "params" / "deepseek-r1-distill-llama-8b-grpo.yaml")
    assert cfg.rl is not None and cfg.data.template == "reasoning"
    assert cfg.model.name_or_path.startswith("unsloth/DeepSeek-R1-Distill") and "/" in cfg.rl.source
    assert cfg.memory.budget_gb < 14.74 and cfg.rl.optimizer == "adamw_8bit"
