"""Training behaviour on a tiny random-weight Llama (real tokenizer, real 4-bit QLoRA path, seconds on a CPU)."""
import json

import pytest
import torch

from conftest import tiny_params, write_jsonl
from medqlora import export as E
from medqlora import model as M
from medqlora import preprocess as P
from medqlora import train as T
from medqlora.config import load_config
from medqlora.rundir import RunDir


@pytest.fixture
def trained(tmp_path, tiny_model_dir):
    """A few repeated examples trained for enough steps that the loss must fall if gradients flow."""
    rows = [{"question": f"What is the antidote for poison {i}?", "answer": f"Antidote {i} given early."}
            for i in range(4)]
    train = write_jsonl(tmp_path / "t.jsonl", rows * 4)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is the antidote for poison 9?", "answer": "Antidote 9."}])
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, train, ev,
                                  train={"max_steps": 24, "learning_rate": 1e-2, "micro_batch_size": 4,
                                         "group_by_length": False}, data={"eval_fraction": 0.2}))
    run = RunDir(tmp_path / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    loaded = T.load_for_training(cfg)
    before = {n: p.detach().clone() for n, p in loaded.model.named_parameters() if p.requires_grad}
    result = T.train(cfg, run, loaded, print_fn=lambda *a: None)
    run.save_result("train", result)
    return cfg, run, loaded, before, result


def test_duplicates_dropped_and_prompt_masked_in_saved_data(trained):
    cfg, run, *_ = trained
    prep = json.loads(run.result_path("preprocess").read_text())
    assert prep["dropped"] == {"duplicate": 12} and prep["kept"] == {"eval": 1, "train": 4}
    import datasets

    ds = datasets.load_from_disk(str(run.train_data))
    for row in ds:
        masked = [label == -100 for label in row["labels"]]
        n = masked.index(False)
        assert all(masked[:n]) and not any(masked[n:]) and row["labels"][n:] == row["input_ids"][n:]


def test_loss_goes_down_and_every_lora_weight_changes(trained):
    cfg, run, loaded, before, result = trained
    losses = [loss for _, loss in result["losses"]]
    assert result["steps"] == 24 and len(losses) == 24
    # From ln(49152) = 10.8 a frozen random 2-layer model can only move so far through LoRA; measured here:
    # 10.7 -> 9.8. Were gradients cut off from the 4-bit base (see DESIGN.md), it would stay near 10.7.
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    changed = {n: not torch.equal(before[n], p.detach()) for n, p in loaded.model.named_parameters() if p.requires_grad}
    assert changed and all(changed.values()), [n for n, c in changed.items() if not c]
    assert all(".lora_" in n for n in changed), "only LoRA weights may train"
    assert result["params"]["trainable"] < result["params"]["total"]
    assert result["epochs_table"] and (run / "checkpoints").is_dir()


def test_saved_adapter_reloads_to_the_same_outputs(trained):
    cfg, run, loaded, _, _ = trained
    ids = torch.tensor([loaded.tokenizer("What is the antidote for poison 2?")["input_ids"]])
    loaded.model.eval()
    with torch.no_grad():
        want = loaded.model(input_ids=ids).logits
    exported = E.export(cfg, run)
    meta = json.loads((run.export_dir / "training_metadata.json").read_text())
    assert meta["base_model"]["config"]["num_hidden_layers"] == 2 and meta["training"]["steps"] == 24
    assert meta["data"]["fingerprint"] and meta["versions"]["peft"]
    assert E.verify(exported["export_dir"]) == []
    info = E.inspect_adapter(exported["adapter_dir"], cfg)
    assert info["rank"] == 8 and info["lora_B_trained"].split("/")[0] == info["lora_B_trained"].split("/")[1]
    model, _ = M.load_with_adapter(M.resolve_model(cfg.model)[0], exported["adapter_dir"], cfg.model, "hf")
    with torch.no_grad():
        got = model(input_ids=ids).logits
        base = None
        with model.disable_adapter():
            base = model(input_ids=ids).logits
    effect = (want - base).abs().max()
    assert effect > 0.3, "the adapter must change the outputs"
    # The in-memory model went through bitsandbytes' training path on the CPU, the reloaded one only its
    # inference path: logits agree to within 2% of the adapter's own effect (measured: under 1%).
    assert (got - want).abs().max() < 0.02 * effect, ((got - want).abs().max(), effect)
    assert torch.equal(got.argmax(-1), want.argmax(-1)), "greedy predictions must be the same after reload"
    again, _ = M.load_with_adapter(M.resolve_model(cfg.model)[0], exported["adapter_dir"], cfg.model, "hf")
    with torch.no_grad():
        assert torch.equal(again(input_ids=ids).logits, got), "reloading is deterministic"


def test_resume_continues_from_the_last_checkpoint(trained, tiny_model_dir):
    cfg, run, _, _, first = trained
    assert list((run / "checkpoints").glob("checkpoint-24"))
    cfg2 = cfg.model_copy(deep=True)
    cfg2.train.max_steps = 26
    cfg2.train.save_steps = 1
    again = T.train(cfg2, run, T.load_for_training(cfg2), print_fn=lambda *a: None)
    assert again["resumed_from"].endswith("checkpoint-24") and again["steps"] == 26
    assert [s for s, _ in again["losses"]] == [25, 26]


def test_checkpoints_from_another_lora_setup_are_not_resumed(trained):
    cfg, run, _, _, _ = trained
    cfg2 = cfg.model_copy(deep=True)
    cfg2.lora.target_modules = ["q_proj", "v_proj"]
    cfg2.train.max_steps = 2
    lines = []
    again = T.train(cfg2, run, T.load_for_training(cfg2), print_fn=lines.append)
    assert any("starting over" in line for line in lines)
    assert again["resumed_from"] is None and again["steps"] == 2
