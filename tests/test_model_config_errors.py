"""A broken local model folder is named as such, never blamed on the hub (issue 28): 'A gated hub model needs
HF_TOKEN' for a config.json with a typo sent people after tokens they did not need."""
import pytest

from medqlora.training import memory
from medqlora.training.model import load_hint


def folder(tmp_path, name: str, config: str | None):
    d = tmp_path / name
    d.mkdir()
    if config is not None:
        (d / "config.json").write_text(config)
    return d


@pytest.mark.parametrize("name, config, said", [
    ("invalid", '{"hidden_size": 8,', r"config\.json is not valid JSON \(.*line 1"),
    ("no_type", '{"hidden_size": 8}', r"config\.json has no \"model_type\""),
    ("a_list", "[1, 2]", r"config\.json holds a JSON list, not an object"),
    ("missing", None, r"has no config\.json"),
])
def test_a_broken_local_config_json_is_named_with_what_is_wrong(tmp_path, name, config, said):
    d = folder(tmp_path, name, config)
    with pytest.raises(RuntimeError, match=said) as e:
        memory.model_shape(str(d))
    assert str(d) in str(e.value) and "HF_TOKEN" not in str(e.value) and "hub" not in str(e.value)
    # the train stage's load error, which transformers raises as OSError for invalid JSON
    hint = load_hint(str(d), OSError(f"It looks like the config file at '{d}/config.json' is not a valid JSON file."))
    assert str(d) in hint and "HF_TOKEN" not in hint and "could not be reached" not in hint
    assert __import__("re").search(said, hint), hint


def test_a_hub_id_that_cannot_be_read_still_gets_the_hub_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="HF_TOKEN"):
        memory.model_shape("no-such-org/no-such-model-28", local_files_only=True)
