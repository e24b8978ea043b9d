"""When both the train and the reinforce stage ran, the evaluate stage scores three models on the same items: the base,
after SFT (the train stage's adapter) and after RL (the exported adapter), with a paired interval for each change,
and the headline says what the RL step changed."""
import json

import pytest
from conftest import tiny_params, write_jsonl
from rl_helpers import letter_model, mcq

from medqlora.config import load_config
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.evaluation import evaluate as EV
from medqlora.export import exporter as E
from medqlora.reinforce import data as RD
from medqlora.reinforce import grpo as G
from medqlora.run import headline as H
from medqlora.training import model as M
from medqlora.training import train as T


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, tiny_model_dir):
    return letter_model(tmp_path_factory.mktemp("letter") / "model", tiny_model_dir, steps=15)


def test_base_after_sft_and_after_rl_side_by_side_with_paired_changes(tmp_path, model_dir):
    rl_items = write_jsonl(tmp_path / "rl.jsonl", [mcq(i, "B") for i in range(6)])
    train = write_jsonl(tmp_path / "t.jsonl", [mcq(100 + i, "ABCD"[i % 4], stem="Which agent treats case")
                                               for i in range(8)])
    ev = write_jsonl(tmp_path / "e.jsonl", [mcq(200 + i, "B", stem="Which antidote fits case") for i in range(6)])
    cfg = load_config(tiny_params(
        tmp_path, model_dir, train, ev, train={"max_steps": 2, "micro_batch_size": 2, "group_by_length": False},
        rl={"source": str(rl_items), "num_generations": 4, "prompts_per_step": 2, "max_completion_length": 3,
            "max_steps": 2, "learning_rate": 1e-2, "gradient_checkpointing": False},
        eval={"merge": False, "choice_scoring": "generate", "max_samples": 6, "max_new_tokens_choice": 4}))
    run = RunDir(tmp_path / "run")
    P.save_result(P.prepare(cfg, run, M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)), cfg, run)
    run.save_result("train", T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet))
    run.save_result("reinforce", G.train(cfg, run, G.load(cfg, run), RD.prepare(cfg, run), print_fn=quiet))
    run.save_result("export", E.export(cfg, run))
    lines = []
    result = EV.compare(cfg, run, print_fn=lines.append)
    held = result["sets"]["held-out"]
    three = held["after_sft"]
    assert three["adapter"].endswith("adapter") and set(three["metrics"]) == {"sft"}
    assert three["metrics"]["sft"]["n_choice"] == 6 and three["metrics"]["sft"]["accuracy"] is not None
    for change in ("sft", "rl"):  # base -> after SFT, after SFT -> after RL: each paired over the same items
        acc = three["changes"][change]["accuracy"]["change"]
        assert acc["n"] == 6 and len(acc["ci95"]) == 2
    base, sft, rl = (held["metrics"]["base"]["accuracy"], three["metrics"]["sft"]["accuracy"],
                     held["metrics"]["finetuned"]["accuracy"])
    assert three["changes"]["rl"]["accuracy"]["change"]["change"] == pytest.approx(rl - sft)
    assert three["changes"]["sft"]["accuracy"]["change"]["change"] == pytest.approx(sft - base)
    rows = [json.loads(x) for x in (run / "eval" / "answers_after_sft.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all("after_sft" in r for r in rows)
    assert any("after SFT" in x for x in lines)
    run.save_result("evaluate", result)
    md = H.markdown(H.build(run))
    assert "| held-out (RL step: after SFT -> after RL) | accuracy (closed-form, generated) | 6 |" in md
    assert "| held-out | accuracy (closed-form, generated) | 6 |" in md, "base -> after RL, as before"
