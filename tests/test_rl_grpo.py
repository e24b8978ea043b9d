"""GRPO on tiny models (real 4-bit QLoRA path through TRL's GRPOTrainer on the CPU): the mean reward rises on a task
a tiny model can learn, the chosen answers are reported, a kill resumes from the checkpoint, an out-of-memory error
lowers the completions per pass and keeps the group, and the train stage's LoRA is continued."""
import json

import pytest
import torch
from conftest import tiny_params, write_jsonl
from rl_helpers import letter_model, mcq
from transformers import TrainerCallback

from medqlora.config import load_config
from medqlora.core import memory_log
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.reinforce import data as RD
from medqlora.reinforce import grpo as G
from medqlora.reinforce import memory as RM
from medqlora.training import model as M


def quiet(*a):
    pass


@pytest.fixture(scope="module")
def letter_dir(tmp_path_factory, tiny_model_dir):
    return letter_model(tmp_path_factory.mktemp("letter") / "model", tiny_model_dir)


def rl_run(tmp_path, model_dir, rl: dict, items: list[dict], train_rows=None, **sections):
    """A run folder prepared up to the reinforce stage: preprocess done, the items in rl.source."""
    src = write_jsonl(tmp_path / "rl.jsonl", items)
    train = write_jsonl(tmp_path / "train.jsonl", train_rows or [
        {"question": f"What is the antidote for poison {i}?", "answer": f"Antidote {i}."} for i in range(6)])
    ev = write_jsonl(tmp_path / "eval.jsonl", [{"question": "What is the antidote for poison 99?", "answer": "None."}])
    cfg = load_config(tiny_params(tmp_path, model_dir, train, ev, rl={"source": str(src), **rl}, **sections))
    run = RunDir(tmp_path / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    return cfg, run, RD.prepare(cfg, run, tok)


@pytest.mark.slow  # the letter model and 40 GRPO steps of 16 completions: 2 to 7 minutes on 2 shared CPU cores
def test_mean_reward_rises_when_every_right_answer_is_the_same_letter(tmp_path, letter_dir):
    """The letter model answers A to D about equally often; every item's right answer is A. GRPO must move the answers
    to A: the mean reward of the last fifth of 40 steps above the first fifth's by at least 0.25 (measured here:
    0.641 -> 0.961, answers A 17% -> 53%), and the answers' distribution shows it. A broken gradient path (4-bit
    weights repacked for inference, advantages lost) leaves the reward flat within noise (about +-0.1); a learning
    rate of 3e-2 collapsed it (0.41 -> 0.04, 97% unreadable answers)."""
    items = [mcq(i, "A") for i in range(24)]
    rl = {"num_generations": 8, "prompts_per_step": 2, "max_completion_length": 4, "max_steps": 40,
          "learning_rate": 1e-2, "scheduler": "constant", "warmup_ratio": 0, "temperature": 1.0, "save_steps": 40,
          "rewards": {"correctness": 1.0, "format": 0.5, "length": 0.0}, "gradient_checkpointing": False}
    cfg, run, items = rl_run(tmp_path, letter_dir, rl, items)
    loaded = G.load(cfg, run)
    assert loaded.start["from"] == "base" and "fresh LoRA" in loaded.start["line"]
    lines = []
    result = G.train(cfg, run, loaded, items, print_fn=lines.append)
    print(f"reward first fifth {result['reward_start']:.3f} -> last fifth {result['reward_end']:.3f}; answers "
          f"{result['answers_first']} -> {result['answers']}")
    assert result["steps"] == 40 and len(result["rows"]) == 40
    assert result["reward_end"] >= result["reward_start"] + 0.25, (result["reward_start"], result["reward_end"])
    assert result["correctness_end"] > result["correctness_start"]
    assert result["answers"]["A"] > result["answers_first"]["A"] + 0.2
    assert set(result["answers"]) >= {"A", "B", "C", "D", "none"} and result["reference_answers"] == {"A": 24}
    # shown live: each step's reward, each reward's mean, all-equal groups, length, clipping, answers, ETA
    step = next(x for x in lines if x.startswith("step   40/40"))
    for part in ("reward", "correctness", "format", "all-equal groups", "clipped", "answers A", "thought closed",
                 "ETA"):
        assert part in step, step
    assert (run / "rl_adapter" / "adapter_model.safetensors").is_file()
    events = [r["event"] for r in memory_log.read_records(run) if r["stage"] == "reinforce"]
    assert "GRPO began" in events and "step 40" in events and "adapter saved" in events


class StopAt(TrainerCallback):
    """A kill during the stage, just after a checkpoint: SystemExit is no Exception, nothing catches it."""

    def __init__(self, at: int):
        self.at = at

    def on_save(self, args, state, control, **kw):
        if state.global_step == self.at:
            raise SystemExit(f"killed after checkpoint-{self.at}")


FAST = {"num_generations": 2, "prompts_per_step": 2, "max_completion_length": 3, "max_steps": 6, "save_steps": 2,
        "learning_rate": 1e-3, "gradient_checkpointing": False}


def test_a_kill_during_grpo_resumes_from_the_checkpoint(tmp_path, tiny_model_dir):
    cfg, run, items = rl_run(tmp_path, tiny_model_dir, FAST, [mcq(i, "B") for i in range(8)])
    with pytest.raises(SystemExit):
        G.train(cfg, run, G.load(cfg, run), items, print_fn=quiet, callbacks=[StopAt(4)])
    assert (run / "rl_checkpoints" / "checkpoint-4" / "trainer_state.json").is_file()
    lines = []
    result = G.train(cfg, run, G.load(cfg, run), items, print_fn=lines.append)
    assert result["resumed_from"].endswith("checkpoint-4") and result["sessions"]["this_session_steps"] == 2
    assert [r["step"] for r in result["rows"]] == list(range(1, 7)), "the history before the kill is kept"
    assert "resuming from" in "\n".join(lines) and "resumed at step 4" in "\n".join(lines)
    # a changed setting is a different run: the old checkpoints are not resumed
    changed = load_config(tmp_path / "tiny.yaml", ["rl.learning_rate=2e-3", "rl.max_steps=2"])
    lines = []
    again = G.train(changed, run, G.load(changed, run), items, print_fn=lines.append)
    assert again["resumed_from"] is None and "made with other settings (rl.learning_rate" in "\n".join(lines)


class InjectOOM(TrainerCallback):
    def __init__(self, at: int):
        self.at, self.fired = at, False

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at and not self.fired:
            self.fired = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_out_of_memory_lowers_the_completions_per_pass_and_keeps_the_group(tmp_path, tiny_model_dir):
    cfg, run, items = rl_run(tmp_path, tiny_model_dir, {**FAST, "num_generations": 4, "prompts_per_step": 1},
                             [mcq(i, "B") for i in range(8)])
    plan = RM.plan_grpo(cfg, items.longest_prompt, print_fn=quiet)
    assert plan.settings.micro_batch == 4 and plan.estimate["peak_phase"] in plan.estimate["phases"]
    lines = []
    result = G.train(cfg, run, G.load(plan.cfg, run), items, plan=plan, print_fn=lines.append,
                     callbacks=[InjectOOM(at=3)])
    assert result["steps"] == 6 and [r["step"] for r in result["rows"]] == list(range(1, 7))
    assert result["memory"]["oom_retries"] == [{"at_step": 3, "micro_batch": [4, 2], "accumulation": [1, 2],
                                                "error": "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"}]
    assert result["effective_settings"]["micro_batch_size"] == 2
    assert result["effective_settings"]["num_generations"] == 4 and result["effective_settings"][
        "completions_per_step"] == 4, "the group and the step's completions stay"
    assert result["resumed_from"].endswith("checkpoint-2")
    events = [r["event"] for r in memory_log.read_records(run) if r["stage"] == "reinforce"]
    assert "out of memory at step 3: completions per pass 4 -> 2" in events
    assert result["memory"]["plan"]["peak_phase"] and result["memory"]["estimate_vs_measured"][0] > 0


def test_grpo_continues_the_train_stages_lora(tmp_path, tiny_model_dir):
    from medqlora.training import train as T

    cfg, run, items = rl_run(tmp_path, tiny_model_dir, {**FAST, "max_steps": 2}, [mcq(i, "C") for i in range(4)],
                             train={"max_steps": 2, "micro_batch_size": 2, "group_by_length": False})
    trained = T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet)
    run.save_result("train", trained)
    from safetensors.torch import load_file

    sft = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    loaded = G.load(cfg, run)
    assert loaded.start["from"] == "train" and "the train stage's adapter (2 steps)" in loaded.start["line"]
    now = {k.replace(".default", ""): v for k, v in loaded.model.state_dict().items() if ".lora_" in k}
    assert sft and any(torch.count_nonzero(v) for k, v in sft.items() if "lora_B" in k), "the SFT adapter was trained"
    assert set(sft) <= set(now) and all(torch.equal(now[k].float(), sft[k].float()) for k in sft), \
        "GRPO starts from the SFT adapter's weights"
    assert all(p.requires_grad for n, p in loaded.model.named_parameters() if "lora_" in n), "trainable"
    result = G.train(cfg, run, loaded, items, print_fn=quiet)
    assert result["started_from"].startswith("the train stage's adapter")
    assert json.loads((run / "rl_adapter" / "adapter_config.json").read_text())["r"] == cfg.lora.r
