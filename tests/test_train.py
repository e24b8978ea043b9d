"""Training behaviour on a tiny random-weight Llama (real tokenizer, real 4-bit QLoRA path, seconds on a CPU)."""
import json

import pytest
import torch
from conftest import tiny_params, write_jsonl
from transformers import TrainerCallback

from medqlora.config import load_config
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.export import exporter as E
from medqlora.training import history as H
from medqlora.training import model as M
from medqlora.training import train as T


@pytest.fixture
def trained(tmp_path, tiny_model_dir):
    """A few repeated examples trained for enough steps that the loss must fall if gradients flow."""
    rows = [{"question": f"What is the antidote for poison {i}?", "answer": f"Antidote {i} given early."}
            for i in range(4)]
    train = write_jsonl(tmp_path / "t.jsonl", rows * 4)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is the antidote for poison 9?", "answer": "Antidote 9."}])
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, train, ev,
                                  train={"max_steps": 24, "learning_rate": 1e-2, "micro_batch_size": 4,
                                         "group_by_length": False},
                                  data={"eval_fraction": 0.2, "max_drop_fraction": 0.8}))  # 12 of 16 are repeats
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


class Crash(TrainerCallback):
    """Stands in for a killed kernel: training stops with an error after step `at`."""

    def __init__(self, at: int):
        self.at = at

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise RuntimeError(f"simulated crash after step {self.at}")


def prepared_run(tmp_path, tiny_model_dir, name, **train):
    rows = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}, given slowly."}
            for i in range(8)]
    src = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    ev = write_jsonl(tmp_path / f"{name}-eval.jsonl", [{"question": "Which drug reverses overdose 99?",
                                                         "answer": "Reversal agent 99."}])
    settings = {"max_steps": 8, "save_steps": 4, "learning_rate": 1e-2, "micro_batch_size": 2,
                "group_by_length": False, **train}
    (tmp_path / name).mkdir()
    cfg = load_config(tiny_params(tmp_path / name, tiny_model_dir, src, ev, train=settings))
    run = RunDir(tmp_path / name / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    return cfg, run


def quiet(*a):
    pass


def test_interrupted_and_resumed_run_reports_the_same_totals(tmp_path, tiny_model_dir):
    cfg, whole_run = prepared_run(tmp_path, tiny_model_dir, "whole")
    whole = T.train(cfg, whole_run, T.load_for_training(cfg), print_fn=quiet)

    cfg, cut_run = prepared_run(tmp_path, tiny_model_dir, "cut")
    with pytest.raises(RuntimeError, match="simulated crash"):
        T.train(cfg, cut_run, T.load_for_training(cfg), print_fn=quiet, callbacks=[Crash(at=6)])
    resumed = T.train(cfg, cut_run, T.load_for_training(cfg), print_fn=quiet)

    assert resumed["resumed_from"].endswith("checkpoint-4") and resumed["sessions"]["this_session_steps"] == 4
    assert resumed["steps"] == whole["steps"] == 8
    assert [s for s, _ in resumed["losses"]] == [s for s, _ in whole["losses"]] == list(range(1, 9))
    # The resumed trainer restores data order and RNG from the checkpoint; CPU kernels differ only in noise.
    for key in ("first_loss", "final_loss", "train_loss"):
        assert resumed[key] == pytest.approx(whole[key], rel=0.02), key
    # Before the fix: first_loss was step 5's and train_loss this session's sum over all 8 steps (about half).
    assert resumed["train_loss"] == pytest.approx(sum(v for _, v in whole["losses"]) / 8, rel=0.02)
    assert [r["step"] for r in resumed["epochs_table"]] == [r["step"] for r in whole["epochs_table"]] == [4, 8]
    # seconds cover both sessions (the crashed one up to its checkpoint), not only the last one
    # (the first epoch's time comes from the crashed session's history, restored with the checkpoint)
    first_epoch_s = resumed["epochs_table"][0]["elapsed_s"]
    assert first_epoch_s > 0 and resumed["seconds"] > 1.5 * first_epoch_s
    assert 0.4 < resumed["seconds"] / whole["seconds"] < 2.5, (resumed["seconds"], whole["seconds"])


def test_resume_at_the_final_step_finishes_with_the_whole_history(tmp_path, tiny_model_dir):
    cfg, run = prepared_run(tmp_path, tiny_model_dir, "done")
    first = T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet)
    assert (run / "checkpoints" / "checkpoint-8").is_dir()
    # a later cell failed; the rerun finds the checkpoint at the last step and trains nothing
    again = T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet)
    assert again["resumed_from"].endswith("checkpoint-8") and again["sessions"]["this_session_steps"] == 0
    assert again["losses"] == first["losses"] and again["first_loss"] == first["first_loss"]
    assert again["train_loss"] == pytest.approx(first["train_loss"])
    H.plot_loss(again, tmp_path / "loss.png")
    assert (tmp_path / "loss.png").stat().st_size > 1000


def test_smoke_run_shorter_than_logging_steps_logs_first_and_last_loss_and_warms_up_on_max_steps(
        tmp_path, tiny_model_dir):
    # The real-model params log every 10 steps; a smoke test runs 5. Epochs say 50: warmup must follow max_steps.
    cfg, run = prepared_run(tmp_path, tiny_model_dir, "smoke", max_steps=5, logging_steps=10, epochs=50,
                            warmup_ratio=0.2, save_steps=None, scheduler="linear")
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet)
    assert result["steps"] == 5 and [s for s, _ in result["losses"]] == [1, 5]
    assert result["first_loss"] > 0 and result["final_loss"] > 0
    assert result["warmup_steps"] == 1, "0.2 x 5 real steps, not 0.2 x 50 epochs' worth"
    run.save_result("train", result)
    H.plot_loss(result, tmp_path / "loss.png")
    card = E.model_card(cfg, result, json.loads(run.result_path("preprocess").read_text()))
    # the card gives the smoothed ends (first and last fifth of the steps), not two single noisy steps
    assert f"{result['loss_start']:.4f} -> {result['loss_end']:.4f}" in card


def test_changed_training_settings_start_over_and_a_changed_sequence_length_is_refused(tmp_path, tiny_model_dir):
    cfg, run = prepared_run(tmp_path, tiny_model_dir, "changed")
    with pytest.raises(RuntimeError, match="simulated crash"):
        T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet, callbacks=[Crash(at=5)])
    cfg2 = cfg.model_copy(deep=True)
    cfg2.train.micro_batch_size, cfg2.train.gradient_accumulation, cfg2.train.learning_rate = 1, 8, 5e-5
    lines = []
    again = T.train(cfg2, run, T.load_for_training(cfg2), print_fn=lines.append)
    said = " ".join(lines)
    assert again["resumed_from"] is None and again["sessions"]["this_session_steps"] == 8
    assert "starting over" in said and "train.learning_rate 0.01 -> 5e-05" in said
    assert "train.effective_batch 2 -> 8" in said
    cfg3 = cfg2.model_copy(deep=True)
    cfg3.model.max_seq_length = 48
    with pytest.raises(ValueError, match="prepared for model.max_seq_length 512.*rerun the preprocess stage"):
        T.train(cfg3, run, T.load_for_training(cfg3), print_fn=quiet)


def test_checkpoints_from_another_lora_setup_are_not_resumed(trained):
    cfg, run, _, _, _ = trained
    cfg2 = cfg.model_copy(deep=True)
    cfg2.lora.target_modules = ["q_proj", "v_proj"]
    cfg2.train.max_steps = 2
    lines = []
    again = T.train(cfg2, run, T.load_for_training(cfg2), print_fn=lines.append)
    assert any("starting over" in line for line in lines)
    assert again["resumed_from"] is None and again["steps"] == 2


def test_a_nan_adapter_is_never_published(tmp_path, tiny_model_dir):
    from safetensors.torch import load_file, save_file

    cfg, run = prepared_run(tmp_path, tiny_model_dir, "nan", max_steps=2, save_steps=None)
    run.save_result("train", T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet))
    weights = run.adapter_dir / "adapter_model.safetensors"
    w = load_file(str(weights))
    next(t for k, t in w.items() if "lora_B" in k)[0, 0] = float("nan")
    save_file(w, str(weights))
    cfg.export.destination = str(tmp_path / "published")
    with pytest.raises(RuntimeError, match="non-finite weights"):
        E.export(cfg, run)
    assert not run.export_dir.exists() and not (tmp_path / "published").exists()
    assert not list(run.path.glob("export*")), "no half-made export folder is left behind"


def test_a_kill_while_a_checkpoint_is_written_resumes_from_the_newest_complete_one(tmp_path, tiny_model_dir,
                                                                                    monkeypatch):
    """A Colab disconnect (kill -9) just as checkpoint-8 was being written left a folder with the adapter but no
    optimizer or trainer state; every resume picked it as the newest and failed ("Can't find a valid checkpoint")."""
    from transformers import Trainer

    cfg, whole_run = prepared_run(tmp_path, tiny_model_dir, "whole", max_steps=12)
    whole = T.train(cfg, whole_run, T.load_for_training(cfg), print_fn=quiet)

    cfg, cut_run = prepared_run(tmp_path, tiny_model_dir, "cut", max_steps=12)
    real = Trainer._save_optimizer_and_scheduler

    def killed_between_model_and_optimizer(self, output_dir):
        if output_dir.endswith("checkpoint-8"):
            raise SystemExit("killed while checkpoint-8 was being written")  # not an Exception: nothing catches it
        return real(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_optimizer_and_scheduler", killed_between_model_and_optimizer)
    with pytest.raises(SystemExit):
        T.train(cfg, cut_run, T.load_for_training(cfg), print_fn=quiet)
    monkeypatch.undo()
    partial = cut_run / "checkpoints" / "checkpoint-8"
    assert (partial / "adapter_model.safetensors").is_file() and not (partial / "optimizer.pt").exists()

    lines = []
    resumed = T.train(cfg, cut_run, T.load_for_training(cfg), print_fn=lines.append)
    said = "\n".join(lines)
    assert "checkpoint-8 is incomplete" in said and "resuming from" in said and said.index("incomplete") < said.index(
        "resuming from"), said
    assert resumed["resumed_from"].endswith("checkpoint-4") and resumed["sessions"]["this_session_steps"] == 8
    assert resumed["steps"] == whole["steps"] == 12
    assert [s for s, _ in resumed["losses"]] == [s for s, _ in whole["losses"]] == list(range(1, 13))
    assert resumed["final_loss"] == pytest.approx(whole["final_loss"], rel=0.02)
    assert (cut_run / "checkpoints" / "checkpoint-12" / "trainer_state.json").is_file()


@pytest.mark.slow
def test_kill_9_of_the_training_process_during_a_checkpoint_save_then_resume(tmp_path, tiny_model_dir):
    """The same as a real kill: a child process trains and SIGKILLs itself after checkpoint-8's model files, before
    its optimizer file; a resume in this process finishes the run (the issue's reproduction, made deterministic)."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    cfg, run = prepared_run(tmp_path, tiny_model_dir, "k9", max_steps=12)
    script = "\n".join([
        "import os, signal",
        "from transformers import Trainer",
        "from medqlora.config import load_config",
        "from medqlora.core.rundir import RunDir",
        "from medqlora.training import train as T",
        "real = Trainer._save_optimizer_and_scheduler",
        "def save(self, out):",
        "    if out.endswith('checkpoint-8'):",
        "        os.kill(os.getpid(), signal.SIGKILL)",
        "    return real(self, out)",
        "Trainer._save_optimizer_and_scheduler = save",
        f"cfg = load_config({str(tmp_path / 'k9' / 'tiny.yaml')!r})",
        f"T.train(cfg, RunDir({str(run.path)!r}), T.load_for_training(cfg), print_fn=lambda *a: None)"])
    child = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=900,
                           check=False, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.returncode == -9, child.stderr[-2000:]
    assert not (run / "checkpoints" / "checkpoint-8" / "trainer_state.json").exists()
    lines = []
    resumed = T.train(cfg, run, T.load_for_training(cfg), print_fn=lines.append)
    assert "checkpoint-8 is incomplete" in "\n".join(lines) and resumed["resumed_from"].endswith("checkpoint-4")
    assert resumed["steps"] == 12 and [s for s, _ in resumed["losses"]] == list(range(1, 13))


def _antidote_run(tmp_path, tiny_model_dir, **train):
    rows = [{"question": f"What is the antidote for poison {i}?", "answer": f"Antidote {i} given early."}
            for i in range(12)]
    src = write_jsonl(tmp_path / "t.jsonl", rows * 2)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is the antidote for poison 99?", "answer": "None."}])
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, src, ev,
                                  train={"max_steps": 12, "learning_rate": 1e-2, "micro_batch_size": 4,
                                         "group_by_length": False, "eval_steps": 3, **train},
                                  data={"val_fraction": 0.3, "max_drop_fraction": 0.8}))  # 12 of 24 are repeats
    run = RunDir(tmp_path / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    return cfg, run


def test_validation_during_training_leaves_the_training_untouched(tmp_path, tiny_model_dir):
    """The validation loss is measured every train.eval_steps on rows preprocess held out of the training data.
    An eval-mode pass on the CPU would make bitsandbytes repack the 4-bit weights and cut the gradients off
    (DESIGN.md): the training losses with validation passes must equal those of the same run without them."""
    cfg, run = _antidote_run(tmp_path, tiny_model_dir)
    prep = run.result("preprocess")
    assert prep["val_examples"] >= 1 and prep["train_examples"] + prep["val_examples"] == 12
    assert prep["kept"]["val"] == prep["val_examples"]
    with_val = T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None)
    assert [s for s, _ in with_val["val_losses"]] == [3, 6, 9, 12]
    assert with_val["val_examples"] == prep["val_examples"] and with_val["epochs_table"][-1]["val_loss"] is not None
    import shutil

    shutil.rmtree(run / "checkpoints")
    shutil.rmtree(run.val_data)
    without = T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None)
    assert without["val_losses"] == [] and without["val_examples"] == 0
    a, b = [v for _, v in with_val["losses"]], [v for _, v in without["losses"]]
    # Measured: equal for 2 steps, then apart by up to 0.04 (2 threads) or 0.11 (OMP_NUM_THREADS=1): with an eval
    # schedule the trainer's steps differ slightly (not found why). Both fall 10.72 -> ~9.95; gradients cut off from
    # the 4-bit base would leave the loss near 10.7 after the first validation pass.
    assert a[:2] == pytest.approx(b[:2], abs=1e-4) and a == pytest.approx(b, abs=0.3), (a, b)
    assert with_val["loss_end"] < with_val["loss_start"] - 0.5, a


def test_a_model_being_trained_is_never_repacked_for_cpu_inference(tmp_path, tiny_model_dir):
    """The mechanism behind the test above: an explicit eval-mode, no-grad forward (as a validation pass or
    generate does) repacks bitsandbytes' 4-bit weights on a CPU with AVX512-BF16 (measured: every 4-bit layer of
    the tiny model); load_for_training guards the model so that it keeps the layout gradients flow through."""
    cfg, _ = _antidote_run(tmp_path, tiny_model_dir)
    loaded = T.load_for_training(cfg)
    M.keep_training_layout(loaded.model)
    loaded.model.eval()
    with torch.no_grad():
        loaded.model(input_ids=torch.tensor([[1, 2, 3, 4]]))
    layers = [m for m in loaded.model.modules() if hasattr(getattr(m, "weight", None), "quant_state")]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)


def test_early_stopping_keeps_the_best_checkpoint(tmp_path, tiny_model_dir):
    """A learning rate high enough to overshoot makes the validation loss rise; with patience 1 training stops
    and the adapter saved is the best evaluation's."""
    cfg, run = _antidote_run(tmp_path, tiny_model_dir, early_stopping_patience=1, eval_steps=1, learning_rate=0.3)
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None)
    es = result["early_stopping"]
    assert es["stopped_early"] and result["steps"] < 12, result["val_losses"]
    assert es["kept_checkpoint"].endswith(f"checkpoint-{result['val_best_step']}")
    assert result["val_best"] == min(v for _, v in result["val_losses"]) < result["val_last"]
