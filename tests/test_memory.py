"""Memory that manages itself: the estimate's arithmetic against real models, the optimization order, runs that
cannot fit refused up front, out-of-memory recovery in real training and in generation, memory.jsonl."""
import itertools
import math

import pytest
import torch
from conftest import tiny_params, write_jsonl
from transformers import TrainerCallback

from medqlora.config import load_config
from medqlora.core import memory_log
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.training import callbacks as CB
from medqlora.training import memory as MEM
from medqlora.training import memory_plan as PLAN
from medqlora.training import model as M
from medqlora.training import train as T

# Llama 3.1 8B's real shape (config.json values), for planning arithmetic without any weights
LLAMA_8B = MEM.ModelShape(hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, vocab=128256, tied=False,
                          head_dim=128)


def test_shape_counts_what_the_real_model_and_peft_count(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    shape = MEM.model_shape(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    linear = sum(m.weight.numel() for n, m in model.named_modules()
                 if isinstance(m, torch.nn.Linear) and ".layers." in n)
    assert shape.linear_params() == linear
    targets = ["q_proj", "v_proj", "down_proj"]
    peft = get_peft_model(model, LoraConfig(r=8, target_modules=targets))
    assert shape.lora_params(8, targets) == peft.get_nb_trainable_parameters()[0]
    # 8B: 6.98 B parameters in the decoder's linear layers (the published 8.03 B minus 1.05 B of embeddings)
    assert LLAMA_8B.linear_params() == pytest.approx(6.98e9, rel=0.01)


def test_random_models_take_a_larger_vocabulary_and_an_untied_head(tmp_path):
    """What the GPU memory runs build (python -m medqlora.testing --vocab 128256 --untied): Llama 3's vocabulary with
    the offline tokenizer, and the 8B's own output layer, counted by the estimate's shape."""
    from medqlora.testing import make_tiny_llama

    shape = MEM.model_shape(make_tiny_llama(tmp_path / "m", vocab=50000, tied=False, max_positions=4096))
    assert (shape.vocab, shape.tied) == (50000, False)
    assert shape.params() == shape.linear_params() + 2 * 50000 * shape.hidden
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        make_tiny_llama(tmp_path / "small", vocab=100)


def test_estimate_parts_move_the_way_the_settings_say():
    s = MEM.Settings(micro_batch_size=4, gradient_accumulation=1, max_seq_length=2048, gradient_checkpointing=False,
                     optimizer="adamw_torch")
    full = MEM.estimate_training(LLAMA_8B, s, 16, ["q_proj", "v_proj"])
    assert full["base weights (4-bit NF4, double quantization)"] == pytest.approx(6.98e9 * MEM.NF4_BYTES / 2**30,
                                                                                 rel=0.01)
    ckpt = MEM.estimate_training(LLAMA_8B, MEM.Settings(**{**s.__dict__, "gradient_checkpointing": True}), 16,
                                 ["q_proj", "v_proj"])
    assert ckpt["activations (checkpointed)"] < full["activations"] / 10
    half = MEM.estimate_training(LLAMA_8B, MEM.Settings(**{**s.__dict__, "micro_batch_size": 2}), 16,
                                 ["q_proj", "v_proj"])
    assert half["activations"] == pytest.approx(full["activations"] / 2)
    assert half["logits and loss"] == pytest.approx(full["logits and loss"] / 2)
    gen = MEM.estimate_generation(LLAMA_8B, batch=8, total_tokens=1024)
    assert gen["KV cache"] == pytest.approx(2 * 32 * 8 * 128 * 2 * 8 * 1024 / 2**30)  # 1 GiB: K and V, bf16


def test_optimizations_apply_in_order_and_keep_the_effective_batch():
    start = MEM.Settings(micro_batch_size=16, gradient_accumulation=2, max_seq_length=4096,
                         gradient_checkpointing=False, optimizer="adamw_torch")
    p = PLAN.plan(LLAMA_8B, start, 16, ["q_proj", "k_proj", "v_proj", "o_proj"], budget=15.0, source="test",
                 max_fraction=0.8)
    names = [s["step"] for s in p.steps]
    assert names[0].startswith("gradient checkpointing on") and names[1] == "optimizer adamw_torch -> adamw_8bit"
    assert all(n.startswith("micro-batch") for n in names[2:]) and len(names) > 2
    assert all(s["saving_gb"] > 0 for s in p.steps)
    assert p.settings.effective_batch == 32 and p.settings.micro_batch_size < 16
    assert p.estimate_gb <= p.limit_gb == 12.0
    assert p.settings.max_seq_length == 4096, "the sequence is never shortened unless allowed"


def test_a_run_that_fits_gets_fewer_larger_micro_batches_within_the_token_cap_and_the_budget():
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    start = MEM.Settings(micro_batch_size=2, gradient_accumulation=4, max_seq_length=2048,
                         gradient_checkpointing=True, optimizer="adamw_8bit")
    roomy = PLAN.plan(LLAMA_8B, start, 16, targets, budget=80.0, source="test", max_fraction=0.8,
                     max_micro_batch_tokens=16384)
    assert (roomy.settings.micro_batch_size, roomy.settings.gradient_accumulation) == (8, 1)
    assert roomy.settings.effective_batch == 8 and all(s["grows"] and s["saving_gb"] < 0 for s in roomy.steps)
    capped = PLAN.plan(LLAMA_8B, start, 16, targets, budget=80.0, source="test", max_fraction=0.8,
                      max_micro_batch_tokens=8192)
    assert capped.settings.micro_batch_size == 4, "4 x 2048 tokens is the cap"
    as_written = PLAN.plan(LLAMA_8B, start, 16, targets, budget=80.0, source="test", max_fraction=0.8)
    assert as_written.settings.micro_batch_size == 2 and not as_written.steps
    # a T4's budget: grows only as far as the estimate still fits
    t4 = PLAN.plan(LLAMA_8B, start, 16, targets, budget=14.7, source="test", max_fraction=0.8,
                  max_micro_batch_tokens=16384)
    assert t4.estimate_gb <= t4.limit_gb
    bigger = MEM.Settings(**{**start.__dict__, "micro_batch_size": 2 * t4.settings.micro_batch_size,
                             "gradient_accumulation": max(t4.settings.gradient_accumulation // 2, 1)})
    assert t4.settings.micro_batch_size == 8 or \
        MEM.total(MEM.estimate_training(LLAMA_8B, bigger, 16, targets)) + t4.context_gb > t4.limit_gb


def test_the_dense_packed_mask_is_counted_only_where_unsloth_would_build_it(monkeypatch):
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    key = "packed-row attention mask (dense)"

    def est(mb, packing, backend="unsloth", dense=None):
        return MEM.estimate_training(LLAMA_8B, MEM.Settings(mb, 1, 2048, True, "adamw_8bit", backend=backend,
                                                            packing=packing, dense_packed_mask=dense), 16, targets)

    assert est(8, True, dense=True)[key] == pytest.approx(4.0 * 16384**2 / 2**30)  # 1 GiB at 16,384 tokens
    assert est(8, True, dense=True)[key] == pytest.approx(16 * est(2, True, dense=True)[key])
    assert key not in est(8, False, dense=True) and key not in est(8, True, backend="hf", dense=True)
    assert key not in est(8, True, dense=False)  # per-segment SDPA, xformers or flash-attn: no L x L mask
    # the default follows this environment: Unsloth's per-segment SDPA unless UNSLOTH_SDPA_PACKED_SEGMENTS is off
    import importlib.util

    real = importlib.util.find_spec
    have = set()
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name in have else (None if name in ("flash_attn", "xformers")
                                                                        else real(name, *a)))
    monkeypatch.delenv("UNSLOTH_SDPA_PACKED_SEGMENTS", raising=False)
    assert not MEM.dense_packed_mask() and key not in est(8, True)
    monkeypatch.setenv("UNSLOTH_SDPA_PACKED_SEGMENTS", "0")
    assert MEM.dense_packed_mask() and key in est(8, True)
    have.add("xformers")
    assert not MEM.dense_packed_mask() and key not in est(8, True)


def test_loss_chunks_follow_unsloths_rule_as_measured_on_the_gpu():
    # (tokens, vocabulary) -> the chunk count unsloth_zoo's get_chunk_size returned on the H200 (4 GiB target)
    for tokens, vocab, chunks in [(2048, 128256, 1), (4096, 128256, 4), (8192, 128256, 4), (16384, 128256, 8),
                                  (4096, 49152, 1), (8192, 49152, 4), (16384, 49152, 4)]:
        assert MEM.loss_chunk_tokens(tokens, vocab, 2048) == tokens // chunks


def test_the_estimate_follows_tokens_a_micro_batch_not_how_rows_split_them():
    """Rows of 1,024 x 8, 4,096 x 2 and 8,192 x 1 hold as many tokens and measured the same peak on the H200 once the
    model trained at the length asked for (docs/training.md, "Memory")."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    totals = {MEM.total(MEM.estimate_training(LLAMA_8B, MEM.Settings(mb, 1, seq, True, "adamw_8bit", packing=True,
                                                                     dense_packed_mask=False), 16, targets))
              for seq, mb in [(1024, 8), (4096, 2), (8192, 1)]}
    assert len(totals) == 1


# Measured on an NVIDIA H200 (torch 2.11.0+cu130, Unsloth 2026.10.9), peak reserved GiB through the train stage,
# packed, adamw_8bit, r on all 7 projections: (hidden, layers, intermediate, vocab, tied, r, tokens, measured)
H200_PEAKS = [(2048, 16, 8192, 128256, True, 64, 24576, 4.05), (2048, 16, 8192, 128256, True, 64, 8192, 2.61),
              (2048, 16, 8192, 49152, True, 16, 2048, 1.53), (2048, 16, 8192, 49152, True, 32, 6144, 1.70),
              (2048, 16, 8192, 49152, True, 16, 49152, 5.92), (4096, 32, 14336, 128256, False, 16, 24576, 10.58),
              (4096, 32, 14336, 128256, False, 16, 4096, 7.26), (4096, 32, 14336, 128256, False, 64, 3072, 8.62)]


@pytest.mark.parametrize("hidden,layers,inter,vocab,tied,r,tokens,measured", H200_PEAKS)
def test_estimate_against_h200_measurements(hidden, layers, inter, vocab, tied, r, tokens, measured):
    shape = MEM.ModelShape(hidden=hidden, layers=layers, intermediate=inter, heads=32, kv_heads=8, vocab=vocab,
                           tied=tied, head_dim=hidden // 32)
    s = MEM.Settings(tokens // 1024, 1, 1024, True, "adamw_8bit", packing=True, dense_packed_mask=False)
    est = MEM.total(MEM.estimate_training(shape, s, r, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                        "down_proj"], tokens_per_micro_batch=tokens))
    assert 0.95 <= est / measured <= 1.15, f"estimate {est:.2f} GiB against {measured} measured"


def test_a_run_that_cannot_fit_says_what_would():
    start = MEM.Settings(micro_batch_size=1, gradient_accumulation=8, max_seq_length=16384,
                         gradient_checkpointing=True, optimizer="adamw_8bit")
    with pytest.raises(PLAN.MemoryFitError, match=r"model.max_seq_length \d+ would fit .*allow_shorter_seq.*"
                                                 r"a card with at least \d+ GiB"):
        PLAN.plan(LLAMA_8B, start, 16, ["q_proj"], budget=10.5, source="test", max_fraction=0.8)
    p = PLAN.plan(LLAMA_8B, start, 16, ["q_proj"], budget=10.5, source="test", max_fraction=0.8,
                 allow_shorter_seq=True, min_seq=300)
    seq = p.settings.max_seq_length  # the longest length that fits, in steps of 64 (not only halvings)
    longer = MEM.Settings(**{**p.settings.__dict__, "max_seq_length": seq + 64})
    assert seq % 64 == 0 and 300 < seq < 16384 and p.steps[-1]["step"] == f"max_seq_length 16384 -> {seq}"
    assert MEM.total(MEM.estimate_training(LLAMA_8B, longer, 16, ["q_proj"])) + p.context_gb > p.limit_gb
    with pytest.raises(PLAN.MemoryFitError):  # never below the data's p99 length
        PLAN.plan(LLAMA_8B, start, 16, ["q_proj"], budget=10.5, source="test", max_fraction=0.8,
                 allow_shorter_seq=True, min_seq=12000)


def test_runner_refuses_a_config_that_cannot_fit_its_budget_with_exit_2(tmp_path, tiny_model_dir, sample_data, capsys):
    from medqlora.run import cli as R

    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, memory={"budget_gb": 1.0})
    assert R.main([str(params), "--check"]) == 2
    err = capsys.readouterr().err
    assert "memory: the run needs about" in err and "1.0 GiB budget (memory.budget_gb)" in err
    assert not (tmp_path / "reports").exists()
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, memory={"budget_gb": 20.0})
    assert R.main([str(params), "--check"]) == 0


def test_old_budget_key_still_works_with_a_message(tmp_path, tiny_model_dir, sample_data):
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, memory={"gpu_budget_gb": 14.7})
    with pytest.warns(UserWarning, match="renamed memory.budget_gb"):
        assert load_config(params).memory.budget_gb == 14.7


class InjectOOM(TrainerCallback):
    """Raises the error CUDA raises, once, at step `at`: the recovery path runs as it would on a full GPU."""

    def __init__(self, at: int):
        self.at, self.fired = at, False

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.at and not self.fired:
            self.fired = True
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")


def test_out_of_memory_in_real_training_halves_the_micro_batch_and_finishes(tmp_path, tiny_model_dir):
    rows = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}, given slowly."}
            for i in range(16)]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "Which drug reverses overdose 99?", "answer": "Agent 99."}])
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, src, ev,
                                  train={"max_steps": 8, "save_steps": 2, "micro_batch_size": 4,
                                         "gradient_accumulation": 1, "learning_rate": 1e-2, "group_by_length": False}))
    run = RunDir(tmp_path / "run")
    P.save_result(P.prepare(cfg, run, M.load_tokenizer(tiny_model_dir, cfg.model)), cfg, run)
    plan = PLAN.plan_training(cfg, run, print_fn=lambda *a: None)
    lines = []
    result = T.train(cfg, run, T.load_for_training(plan.cfg), print_fn=lines.append, callbacks=[InjectOOM(at=5)],
                     plan=plan)
    assert result["steps"] == 8 and [s for s, _ in result["losses"]] == list(range(1, 9))
    assert result["memory"]["oom_retries"] == [{"at_step": 5, "micro_batch": [4, 2], "accumulation": [1, 2],
                                                "error": "CUDA out of memory. Tried to allocate 2.00 GiB (injected)"}]
    assert result["effective_settings"]["micro_batch_size"] == 2
    assert result["effective_settings"]["gradient_accumulation"] == 2, "the effective batch stays 4"
    assert result["resumed_from"].endswith("checkpoint-4")
    assert any("out of memory at step 5; retrying with micro-batch 2" in x for x in lines)
    events = [r["event"] for r in memory_log.read_records(run) if r["stage"] == "train"]
    assert "step 1" in events and "out of memory at step 5: micro-batch 4 -> 2" in events and "adapter saved" in events
    assert memory_log.peaks_by_stage(run)["train"] > 0


def test_out_of_memory_at_micro_batch_1_stops_with_advice(tmp_path, tiny_model_dir):
    rows = [{"question": f"What treats condition {i}?", "answer": f"Drug {i}."} for i in range(6)]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What treats condition 99?", "answer": "Drug 99."}])
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, src, ev,
                                  train={"max_steps": 3, "micro_batch_size": 1}))
    run = RunDir(tmp_path / "run")
    P.save_result(P.prepare(cfg, run, M.load_tokenizer(tiny_model_dir, cfg.model)), cfg, run)
    with pytest.raises(PLAN.MemoryFitError, match=r"out of GPU memory at step 2 with micro-batch 1.*max_seq_length"):
        T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None, callbacks=[InjectOOM(at=2)])


def test_generation_halves_its_batch_when_out_of_memory(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    from medqlora.evaluation.generate import generate

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    real = model.generate
    seen = []

    def generate_that_fits_two(**kw):
        seen.append(kw["input_ids"].shape[0])
        if kw["input_ids"].shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(**kw)

    model.generate = generate_that_fits_two
    items = [{"kind": "freetext", "prompt": f"Question {i}?"} for i in range(7)]
    log = []
    answers = generate(model, tokenizer, items, 4, 4, batch_size=8, label="base", print_fn=lambda *a: None,
                       oom_log=log)
    assert len(answers) == 7 and all(a is not None for a in answers)
    assert [x["batch_size"] for x in log] == [[8, 4], [4, 2]] and seen[:2] == [7, 4] and max(seen[2:]) == 2


def test_a_diverging_loss_stops_with_the_step_and_what_to_change():
    cb = CB.StopOnNonFiniteLoss(learning_rate=2e-4)

    class S:
        global_step = 7

    cb.on_log(None, S, None, logs={"loss": 1.5})
    with pytest.raises(FloatingPointError, match=r"loss became nan at step 7.*train.learning_rate \(now 0.0002; "
                                                 r"try 5e-05\)"):
        cb.on_log(None, S, None, logs={"loss": math.nan})


def test_a_model_that_cannot_be_found_says_so(tmp_path):
    with pytest.raises(RuntimeError, match="could not read the config of .*HF_TOKEN"):
        MEM.model_shape(str(tmp_path / "no-model-here"))
    hint = M.load_hint("meta-llama/Llama-3.1-8B", OSError("401 Client Error. You are trying to access a gated repo."))
    assert "gated hub model" in hint and "HF_TOKEN" in hint


def test_out_of_memory_with_an_odd_micro_batch_keeps_the_effective_batch_and_the_checkpoints(tmp_path,
                                                                                             tiny_model_dir):
    """Micro-batch 3 x accumulation 2 once went to 1 x 4 (printing "effective batch 6"), which changed the effective
    batch to 4 and threw the checkpoints away. A divisor of 6 keeps it: 1 x 6, and training goes on from step 4."""
    rows = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}, given slowly."}
            for i in range(12)]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "Which drug reverses overdose 99?", "answer": "Agent 99."}])
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, src, ev,
                                  train={"max_steps": 6, "save_steps": 2, "micro_batch_size": 3,
                                         "gradient_accumulation": 2, "learning_rate": 1e-2, "group_by_length": False}))
    run = RunDir(tmp_path / "run")
    P.save_result(P.prepare(cfg, run, M.load_tokenizer(tiny_model_dir, cfg.model)), cfg, run)
    lines = []
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=lines.append, callbacks=[InjectOOM(at=5)])
    said = "\n".join(lines)
    assert result["memory"]["oom_retries"][0]["micro_batch"] == [3, 1]
    assert result["memory"]["oom_retries"][0]["accumulation"] == [2, 6]
    assert (result["effective_settings"]["micro_batch_size"], result["effective_settings"]["gradient_accumulation"]) \
        == (1, 6)
    assert "retrying with micro-batch 1 and accumulation 6 (effective batch 6, unchanged)" in said
    assert "starting over" not in said and result["resumed_from"].endswith("checkpoint-4")
    assert result["steps"] == 6 and [s for s, _ in result["losses"]] == list(range(1, 7))


def test_a_smaller_micro_batch_always_keeps_the_effective_batch():
    assert [PLAN.smaller_micro_batch(mb, acc) for mb, acc in [(4, 1), (3, 2), (5, 1), (6, 1), (7, 2), (2, 3)]] == \
        [(2, 2), (1, 6), (1, 5), (3, 2), (2, 7), (1, 6)]
    start = MEM.Settings(micro_batch_size=5, gradient_accumulation=1, max_seq_length=4096,
                         gradient_checkpointing=True, optimizer="adamw_8bit")
    p = PLAN.plan(LLAMA_8B, start, 16, ["q_proj"], budget=12.0, source="test", max_fraction=0.8)
    assert p.settings.micro_batch_size < 5 and p.settings.effective_batch == 5, p.steps


def test_the_shorter_sequence_search_takes_the_longest_length_that_fits_and_never_advises_below_the_floor():
    """Only halvings were tried (the issue: 2,048 -> 1,024 with a p99 floor of 1,100), so a run that fits at 1,536 was
    refused with "model.max_seq_length 1024 would fit", below the floor, and the card was sized from the shortened
    estimate. The same at a scale where the refit estimate grows with every token at micro-batch 1 (past its
    one-layer floor): configured 16,384, p99 9,000. Limits come from the estimate itself, whatever the coefficients."""
    targets = ["q_proj", "k_proj", "v_proj", "o_proj"]
    start = MEM.Settings(micro_batch_size=1, gradient_accumulation=8, max_seq_length=16384,
                         gradient_checkpointing=True, optimizer="adamw_8bit")

    def est(seq, s=start):
        return MEM.total(MEM.estimate_training(LLAMA_8B, MEM.Settings(**{**s.__dict__, "max_seq_length": seq}), 16,
                                               targets)) + MEM.CUDA_CONTEXT_GIB

    def plan(limit, s=start, **kw):
        return PLAN.plan(LLAMA_8B, s, 16, targets, budget=limit / 0.8, source="test", max_fraction=0.8, **kw)

    lengths = [8960, 9000, *range(9024, 16385, 64)]
    assert all(est(a) < est(b) for a, b in itertools.pairwise(lengths)), "the estimate must grow with the length here"
    between = (est(12288) + est(12352)) / 2  # 12,288 is no power-of-two halving of 16,384
    p = plan(between, allow_shorter_seq=True, min_seq=9000)
    assert p.settings.max_seq_length == 12288 and p.steps[-1]["step"] == "max_seq_length 16384 -> 12288"
    p = plan((est(9000) + est(9024)) / 2, allow_shorter_seq=True, min_seq=9000)
    assert p.settings.max_seq_length == 9000, "the floor itself is a candidate"
    below_floor = (est(8960) + est(9000)) / 2  # 8,960 would fit, the p99 length 9,000 would not
    with pytest.raises(PLAN.MemoryFitError) as e:
        plan(below_floor, allow_shorter_seq=True, min_seq=9000)
    msg = str(e.value)
    assert "8960 would fit" not in msg and "p99 length (9000 tokens)" in msg, msg
    # without allow_shorter_seq the message names the longest length that fits, in steps of 64
    with pytest.raises(PLAN.MemoryFitError, match=r"model.max_seq_length 12288 would fit"):
        plan(between)
    # the card for the config as written, not for what the plan made of it
    written = MEM.Settings(micro_batch_size=4, gradient_accumulation=2, max_seq_length=16384,
                           gradient_checkpointing=False, optimizer="adamw_torch")
    with pytest.raises(PLAN.MemoryFitError) as e:
        plan(below_floor, s=written, allow_shorter_seq=True, min_seq=9000)
    card = math.ceil(est(16384, written) / 0.8)
    assert f"a card with at least {card} GiB would fit this config as written" in str(e.value), str(e.value)

def test_the_attention_path_follows_unsloths_dispatch_once_imported(monkeypatch):
    """xformers installed but built for another torch: Unsloth does not use it. With its per-segment SDPA off, packed
    rows then get the dense mask, which the estimate must count (from what is installed alone it would not)."""
    import sys
    import types

    from medqlora.training import attention as A

    real = __import__("importlib").util.find_spec
    monkeypatch.setattr(A.importlib.util, "find_spec",
                        lambda name, *a: object() if name == "xformers" else (None if name == "flash_attn"
                                                                            else real(name, *a)))
    ad = types.SimpleNamespace(HAS_FLASH_ATTENTION=False, HAS_XFORMERS=False, _SDPA_PACKED_SEGMENTS=False,
                               _TORCH_VARLEN_ATTN=None, select_attention_backend=lambda use_varlen=False: "sdpa")
    monkeypatch.setitem(sys.modules, A.DISPATCH, ad)
    path = A.attention_path()
    assert path["source"] == "unsloth" and path["packed"] == "sdpa_dense" and MEM.dense_packed_mask()
    assert "does not load with this torch" in A.describe(path) and "dense L x L mask" in A.describe(path)
    ad._SDPA_PACKED_SEGMENTS = True
    assert A.attention_path()["packed"] == "sdpa_segments" and not MEM.dense_packed_mask()
    ad.HAS_XFORMERS, ad.select_attention_backend = True, lambda use_varlen=False: "xformers"
    path = A.attention_path()
    assert path["packed"] == "xformers" and "block-diagonal" in A.describe(path) and "does not load" not in \
        A.describe(path)
    monkeypatch.delitem(sys.modules, A.DISPATCH)
    assert A.attention_path()["source"] == "installed" and A.attention_path()["packed"] == "xformers"
