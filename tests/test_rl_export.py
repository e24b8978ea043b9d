"""The export stage ships the adapter GRPO made when the reinforce stage ran (the train stage's otherwise), and says so
in the card and the metadata."""
import json

import pytest
import torch
from conftest import tiny_params, write_jsonl
from rl_helpers import letter_model, mcq
from safetensors.torch import load_file

from medqlora.config import load_config
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.export import exporter as E
from medqlora.reinforce import data as RD
from medqlora.reinforce import grpo as G
from medqlora.training import model as M
from medqlora.training import train as T

RL = {"num_generations": 4, "prompts_per_step": 2, "max_completion_length": 3, "max_steps": 2, "save_steps": 2,
      "learning_rate": 1e-2, "gradient_checkpointing": False}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_dir):
    """A model that says a letter often enough that a group's rewards differ, so GRPO changes the adapter (a random
    one scores 0 everywhere: every advantage is 0 and nothing moves)."""
    return letter_model(tmp_path_factory.mktemp("letter") / "model", tiny_model_dir, steps=15)


def quiet(*a):
    pass


def prepared(tmp_path, tiny_model_dir, train_too: bool):
    src = write_jsonl(tmp_path / "rl.jsonl", [mcq(i, "B") for i in range(6)])
    train = write_jsonl(tmp_path / "t.jsonl", [{"question": f"What treats {i}?", "answer": f"Drug {i}."}
                                               for i in range(6)])
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What treats 99?", "answer": "Drug 99."}])
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, train, ev, rl={"source": str(src), **RL},
                                  train={"max_steps": 2, "micro_batch_size": 2, "group_by_length": False}))
    run = RunDir(tmp_path / "run")
    P.save_result(P.prepare(cfg, run, M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)), cfg, run)
    if train_too:
        run.save_result("train", T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet))
    items = RD.prepare(cfg, run)
    run.save_result("reinforce", G.train(cfg, run, G.load(cfg, run), items, print_fn=quiet))
    return cfg, run


def weights(folder):
    return load_file(str(folder / "adapter_model.safetensors"))


def same(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_export_ships_the_rl_adapter_when_the_reinforce_stage_ran(tmp_path, model_dir):
    cfg, run = prepared(tmp_path, model_dir, train_too=True)
    rl, sft = weights(run.rl_adapter_dir), weights(run.adapter_dir)
    assert not same(rl, sft), "GRPO changed the SFT adapter"
    result = E.export(cfg, run)
    assert same(weights(run.export_dir / "adapter"), rl) and result["adapter_source"] == "reinforce"
    assert not (run.export_dir / "adapter" / "ref").exists(), "TRL's frozen reference copy is not shipped"
    meta = json.loads((run.export_dir / "training_metadata.json").read_text())
    assert meta["reinforce"]["steps"] == 2 and meta["reinforce"]["started_from"].startswith("the train stage's")
    assert "rows" not in meta["reinforce"] and meta["training"]["steps"] == 2
    card = (run.export_dir / "adapter" / "README.md").read_text()
    assert "| reinforcement (GRPO) | 2 steps from the train stage's adapter" in card
    assert E.verify(run.export_dir) == []
    # the same run folder without rl: in its params exports the train stage's adapter, as it always did
    plain = load_config(tmp_path / "tiny.yaml", ["rl=null"])
    assert E.export(plain, run)["adapter_source"] == "train" and same(weights(run.export_dir / "adapter"), sft)
    assert "reinforcement" not in (run.export_dir / "adapter" / "README.md").read_text()


def test_grpo_from_the_base_model_exports_without_a_train_stage(tmp_path, model_dir):
    cfg, run = prepared(tmp_path, model_dir, train_too=False)
    result = E.export(cfg, run)
    assert result["adapter_source"] == "reinforce" and same(weights(run.export_dir / "adapter"),
                                                            weights(run.rl_adapter_dir))
    card = (run.export_dir / "adapter" / "README.md").read_text()
    assert "the base model with a fresh LoRA (no train stage ran)" in card and "| SFT | not run |" in card
