"""GRPO's peak in the memory estimate and plan: the group's completions, the reference (beta > 0), vLLM's share; the
plan lowers the completions per pass and never the group; the preflight refuses what cannot fit, before any run."""
from dataclasses import replace

import pytest
from conftest import ROOT, tiny_params

from medqlora.config import load_config
from medqlora.reinforce import memory as RM
from medqlora.training.memory import ModelShape
from medqlora.training.memory_plan import MemoryFitError

LLAMA_8B = ModelShape(hidden=4096, layers=32, intermediate=14336, heads=32, kv_heads=8, vocab=128256, tied=False,
                      head_dim=128)
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def settings(**kw):
    base = dict(micro_batch=4, completions_per_step=4, prompt_tokens=512, completion_tokens=1024,
                gradient_checkpointing=True, optimizer="adamw_8bit", backend="unsloth", dtype_bytes=2)
    return RM.GrpoSettings(**{**base, **kw})


def est(**kw):
    return RM.estimate_grpo(LLAMA_8B, settings(**kw), 16, TARGETS)


def test_the_groups_completions_the_reference_and_vllm_in_the_estimate():
    small, big = est(completions_per_step=4, micro_batch=4), est(completions_per_step=16, micro_batch=4)
    assert big["phases"]["generation"] == pytest.approx(4 * small["phases"]["generation"], rel=0.01)
    assert big["phases"]["training pass"] == small["phases"]["training pass"], "a pass holds micro_batch completions"
    longer = est(completion_tokens=2048)
    assert longer["phases"]["training pass"] > small["phases"]["training pass"]
    free, kl = est(beta=0.0), est(beta=0.04)
    assert "reference pass" not in free["phases"] and kl["phases"]["reference pass"] > 0
    assert kl["total"] > free["total"] and any(k.startswith("reference") for k in kl["parts"])
    vllm = est(vllm_gb=7.35)  # Unsloth fast_inference at 0.5 of a T4: weights shared, the rest stays
    assert "generation" not in vllm["phases"] and any(k.startswith("vLLM engine") for k in vllm["parts"])
    assert est(completions_per_step=64, micro_batch=4)["peak_phase"] == "generation"


def test_the_plan_lowers_completions_per_pass_and_keeps_the_group():
    start = settings(micro_batch=8, completions_per_step=8, prompt_tokens=1024, completion_tokens=3072,
                     gradient_checkpointing=False, optimizer="adamw_torch")
    p = RM.fit(LLAMA_8B, start, 16, TARGETS, budget=14.7, source="memory.budget_gb", max_fraction=0.8, context=0.5)
    assert p.estimate_gb <= p.limit_gb and p.settings.completions_per_step == 8
    assert p.settings.micro_batch < 8 and p.settings.gradient_checkpointing and "8bit" in p.settings.optimizer
    assert [s["step"].split(" ")[0] for s in p.steps][:2] == ["gradient", "optimizer"]
    with pytest.raises(MemoryFitError, match="lower rl.num_generations or rl.prompts_per_step"):
        RM.fit(LLAMA_8B, settings(completions_per_step=256, micro_batch=4, completion_tokens=4096), 16, TARGETS,
               budget=14.7, source="memory.budget_gb", max_fraction=0.8, context=0.5)


def test_the_t4_grpo_params_fit_a_t4_by_the_estimate():
    cfg = load_config(ROOT / "params" / "deepseek-r1-distill-llama-8b-grpo.yaml")
    budget = cfg.memory.budget_gb
    for vllm in (None, cfg.rl.vllm_gpu_memory_utilization * budget):  # with vLLM (fast_inference) and without
        s = replace(RM.settings_for(cfg, "unsloth", cfg.model.max_seq_length - cfg.rl.max_completion_length, vllm),
                    dtype_bytes=2)  # bf16/fp16 on the card (this CPU would say float32)
        p = RM.fit(LLAMA_8B, s, cfg.lora.r, cfg.lora.target_modules, budget, "memory.budget_gb",
                   cfg.memory.max_fraction, 0.5)
        assert p.steps == [] and p.estimate_gb < p.limit_gb, (vllm, p.estimate_gb, p.limit_gb)


def test_the_preflight_refuses_a_grpo_step_that_cannot_fit_before_any_notebook(tmp_path, tiny_model_dir, sample_data,
                                                                                 capsys):
    from medqlora.run import cli

    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, memory={"budget_gb": 0.05},
                         rl={"num_generations": 64, "max_completion_length": 256})
    cfg = load_config(params)
    assert any("a GRPO step needs about" in p for p in RM.preflight(cfg))
    assert cli.main([str(params), "--reports-dir", str(tmp_path / "reports")]) == 2
    err = capsys.readouterr().err
    assert "memory" in err and not (tmp_path / "reports").exists()
