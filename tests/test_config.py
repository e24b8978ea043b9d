from pathlib import Path

import pytest
import yaml

from medqlora.config import ConfigError, check_inputs, load_config, parse_override

ROOT = Path(__file__).resolve().parent.parent
PARAMS = sorted((ROOT / "params").glob("*.yaml"))


@pytest.mark.parametrize("path", PARAMS, ids=[p.name for p in PARAMS])
def test_every_params_file_validates(path):
    cfg = load_config(path)
    assert cfg.run_name and cfg.model.name_or_path and cfg.data.source


def test_there_are_params_for_each_real_base_model():
    names = {p.stem for p in PARAMS}
    assert {"default", "llama-3.1-8b-instruct", "llama-3.2-3b-instruct", "deepseek-r1-distill-llama-8b"} <= names
    r1 = load_config(ROOT / "params" / "deepseek-r1-distill-llama-8b.yaml")
    assert r1.data.template == "reasoning"


def write(tmp_path, raw) -> Path:
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(raw))
    return p


def base_raw():
    """default.yaml with its data paths made absolute, so that a copy written elsewhere finds the data."""
    raw = yaml.safe_load((ROOT / "params" / "default.yaml").read_text())
    for key in ("source", "eval_source"):
        raw["data"][key] = str((ROOT / "params" / raw["data"][key]).resolve())
    for es in raw.get("eval", {}).get("sets", []):
        es["source"] = str((ROOT / "params" / es["source"]).resolve())
    return raw


def test_unknown_key_is_named(tmp_path):
    raw = base_raw()
    raw["train"]["learning_rat"] = 1e-4
    with pytest.raises(ConfigError, match=r"train\.learning_rat: unknown key"):
        load_config(write(tmp_path, raw))


def test_unknown_section_is_named(tmp_path):
    raw = base_raw()
    raw["optimizer"] = {"name": "adam"}
    with pytest.raises(ConfigError, match=r"optimizer: unknown key"):
        load_config(write(tmp_path, raw))


def test_wrong_type_is_named_with_value(tmp_path):
    raw = base_raw()
    raw["train"]["epochs"] = "two"
    with pytest.raises(ConfigError, match=r"train\.epochs: .*'two'"):
        load_config(write(tmp_path, raw))


@pytest.mark.parametrize("key,value,match", [
    ("lora.r", 0, r"lora\.r: Input should be greater than or equal to 1"),
    ("data.eval_fraction", 1.5, r"data\.eval_fraction"),
    ("model.backend", "vllm", r"model\.backend: Input should be 'auto', 'unsloth' or 'hf'"),
    ("run_name", "bad name/x", r"run_name: .*letters, digits"),
    ("data.val_fraction", 1.0, r"data\.val_fraction"),
    ("train.eval_steps", 2.5, r"train\.eval_steps 2\.5: give a whole number"),
])
def test_impossible_values_rejected(tmp_path, key, value, match):
    with pytest.raises(ConfigError, match=match):
        load_config(write(tmp_path, base_raw()), [f"{key}={value}"])


def test_early_stopping_needs_a_validation_set(tmp_path):
    with pytest.raises(ConfigError, match=r"early_stopping_patience needs a validation set: set data\.val_fraction"):
        load_config(write(tmp_path, base_raw()), ["train.early_stopping_patience=2", "data.val_fraction=0"])
    cfg = load_config(write(tmp_path, base_raw()), ["train.early_stopping_patience=2"])
    assert cfg.train.early_stopping_patience == 2 and cfg.data.val_fraction > 0


def test_missing_required_section(tmp_path):
    raw = base_raw()
    del raw["data"]
    with pytest.raises(ConfigError, match=r"data: required"):
        load_config(write(tmp_path, raw))


def test_overrides_are_yaml_typed(tmp_path):
    cfg = load_config(write(tmp_path, base_raw()),
                      ["train.epochs=3", "train.learning_rate=1e-4", "model.load_in_4bit=false",
                       "lora.target_modules=[q_proj, v_proj]", "data.columns.question=Q"])
    assert cfg.train.epochs == 3 and cfg.train.learning_rate == 1e-4 and cfg.model.load_in_4bit is False
    assert cfg.lora.target_modules == ["q_proj", "v_proj"] and cfg.data.columns == {"question": "Q"}
    assert parse_override("a.b=x=y") == (["a", "b"], "x=y")
    with pytest.raises(ConfigError, match="expected key.sub=value"):
        parse_override("train.epochs")


def test_missing_data_file_is_an_input_problem(tmp_path):
    cfg = load_config(write(tmp_path, base_raw()), ["data.source=nowhere/missing.jsonl"])
    problems = check_inputs(cfg)
    assert any("data.source: file not found" in p and "missing.jsonl" in p and "--set" in p for p in problems)


def test_hub_names_are_not_checked_as_files(tmp_path):
    cfg = load_config(write(tmp_path, base_raw()), ["data.source=FreedomIntelligence/medical-o1-reasoning-SFT"])
    assert cfg.data.source == "FreedomIntelligence/medical-o1-reasoning-SFT"
    assert not [p for p in check_inputs(cfg) if "data.source" in p]


def test_paths_in_a_params_file_are_read_from_its_folder_and_set_paths_from_the_current_one(tmp_path, monkeypatch):
    (tmp_path / "proj" / "params").mkdir(parents=True)
    (tmp_path / "proj" / "data").mkdir()
    (tmp_path / "proj" / "data" / "mine.jsonl").write_text('{"question": "q?", "answer": "a."}\n')
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "other.jsonl").write_text('{"question": "q?", "answer": "a."}\n')
    raw = base_raw()
    raw["data"] = {"source": "../data/mine.jsonl"}
    raw["export"] = {"destination": "out/copy"}
    params = tmp_path / "proj" / "params" / "mine.yaml"
    params.write_text(yaml.safe_dump(raw))
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(params)
    assert cfg.data.source == str(tmp_path / "proj" / "data" / "mine.jsonl")
    assert cfg.export.destination == str(tmp_path / "proj" / "params" / "out" / "copy")
    assert not check_inputs(cfg)
    cfg = load_config(params, ["data.source=other.jsonl"])
    assert cfg.data.source == str(tmp_path / "elsewhere" / "other.jsonl")
    # the shipped default works from any folder
    cfg = load_config(ROOT / "params" / "default.yaml")
    assert Path(cfg.data.source).is_file() and Path(cfg.data.eval_source).is_file()


@pytest.mark.parametrize("override,match", [
    ("train.optimizer=adamw8bit", r"train\.optimizer: unknown optimizer 'adamw8bit'; did you mean adamw_8bit"),
    # gcsfs is a test dependency (the gs:// tests run against a GCS server): s3fs stands for a missing package
    ("export.destination=s3://bucket/run", r"export\.destination: s3://bucket/run needs a package .*pip install s3fs"),
    ("data.source=nope://x/y.jsonl", r"data\.source: unknown protocol 'nope'"),
])
def test_settings_that_would_fail_late_are_input_problems(tmp_path, override, match):
    import re

    problems = check_inputs(load_config(write(tmp_path, base_raw()), [override]))
    assert any(re.search(match, p) for p in problems), problems


def test_t4_params_fit_what_a_t4_reports():
    # PyTorch reports a T4 as 14.74 GiB: a budget above that warns on every T4 run and can never flag a config.
    for name in ("llama-3.1-8b-instruct", "llama-3.2-3b-instruct", "deepseek-r1-distill-llama-8b"):
        assert load_config(ROOT / "params" / f"{name}.yaml").memory.budget_gb < 14.74


def test_a_new_training_source_brings_its_own_eval_split(tmp_path):
    other = tmp_path / "mine.jsonl"
    other.write_text('{"question": "q?", "answer": "a."}\n')
    default = ROOT / "params" / "default.yaml"
    assert load_config(default).data.eval_source.endswith("medqa_eval.jsonl")
    with pytest.warns(UserWarning, match="held-out items now come from a hash split of it"):
        cfg = load_config(default, [f"data.source={other}"])
    assert cfg.data.eval_source is None, "the bundled eval set must not be picked up for another source"
    cfg = load_config(default, [f"data.source={other}", f"data.eval_source={other}"])
    assert cfg.data.eval_source == str(other)


def test_a_runs_saved_config_has_the_same_stage_inputs_as_the_params_it_came_from(tmp_path):
    """--resume compares stage inputs from the run's config.yaml with those recorded at the first run: defaults
    written out (model.cache_dir '~/...' saved, then read back as an absolute path) must not look like changes."""
    from medqlora.config import load_config, save_config, stage_inputs

    first = load_config(ROOT / "params" / "default.yaml")
    save_config(first, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    for stage in ("setup", "preprocess", "train", "export", "evaluate"):
        assert stage_inputs(again, stage) == stage_inputs(first, stage), stage
