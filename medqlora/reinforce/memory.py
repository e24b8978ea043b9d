"""GRPO's memory: the estimated peak of a step, the plan that fits it into the budget, and the preflight.

A GRPO step has three phases, one after the other, on top of what stays (the 4-bit base, the 16-bit parts, the LoRA
weights with their gradients and optimizer states, the kernels' workspace, and with beta > 0 a frozen copy of the
starting adapter as the reference):
  generation      the group's completions: prompts_per_step x num_generations sequences at once, their KV cache and
                  last logits (transformers generate). With vLLM (Unsloth's fast_inference) the engine's share of the
                  card (rl.vllm_gpu_memory_utilization, the weights it shares with training included) stays instead
  training pass   micro_batch_size completions forward and backward: the layers' activations (training/memory.py's
                  estimate for prompt + completion tokens) and the logits of the completion tokens only
  reference pass  (beta > 0) the same completions through the reference without gradients: their logits
The peak is what stays plus the largest phase. The plan (as for the train stage) turns on gradient checkpointing,
takes an 8-bit optimizer, then lowers the completions per pass; the group size and the generation batch never change
(the out-of-memory recovery in grpo.py keeps them too), so the generation phase is the floor.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from medqlora.training.memory import (
    CUDA_CONTEXT_GIB,
    GIB,
    HF_LOGITS_BYTES,
    ModelShape,
    Settings,
    estimate_generation,
    estimate_training,
    model_shape,
    total,
)
from medqlora.training.memory_plan import RUNTIME_GIB_CPU, MemoryFitError, budget_gb, smaller_micro_batch


@dataclass
class GrpoSettings:
    micro_batch: int  # completions per forward/backward pass
    completions_per_step: int  # prompts_per_step x num_generations: the generation batch (never changed)
    prompt_tokens: int  # the longest prompt
    completion_tokens: int  # rl.max_completion_length
    gradient_checkpointing: bool
    optimizer: str
    beta: float = 0.0
    vllm_gb: float | None = None  # what the vLLM engine takes (None: transformers generation)
    load_in_4bit: bool = True
    backend: str = "unsloth"
    dtype_bytes: int = 2

    @property
    def accumulation(self) -> int:
        return self.completions_per_step // self.micro_batch


def _training_settings(s: GrpoSettings) -> Settings:
    return Settings(s.micro_batch, s.accumulation, s.prompt_tokens + s.completion_tokens, s.gradient_checkpointing,
                    s.optimizer, s.load_in_4bit, s.backend, s.dtype_bytes, packing=False, dense_packed_mask=False)


def estimate_grpo(shape: ModelShape, s: GrpoSettings, lora_r: int, targets: list[str]) -> dict:
    """{"parts": what stays, by part; "phases": each phase's own memory; "peak_phase"; "total"}, in GiB."""
    train = estimate_training(shape, _training_settings(s), lora_r, targets)
    act_key = next(k for k in train if k.startswith("activations"))
    logit_key = next(k for k in train if k.startswith("logits"))
    parts = {k: v for k, v in train.items() if k not in (act_key, logit_key)}
    completion_tokens = s.micro_batch * s.completion_tokens
    if s.backend == "unsloth":  # its GRPO loss computes the log-probabilities in chunks, like its fused CE
        short = estimate_training(shape, Settings(**{**asdict(_training_settings(s)), "max_seq_length":
                                                    s.completion_tokens}), lora_r, targets)
        logits = short[next(k for k in short if k.startswith("logits"))]
    else:
        logits = completion_tokens * shape.vocab * HF_LOGITS_BYTES / GIB
    if s.beta > 0:
        parts["reference: a frozen copy of the starting adapter (beta > 0)"] = \
            shape.lora_params(lora_r, targets) * 4 / GIB
    seq = s.prompt_tokens + s.completion_tokens
    gen = estimate_generation(shape, s.completions_per_step, seq, s.load_in_4bit)
    phases = {"training pass": train[act_key] + logits}
    if s.vllm_gb is not None:  # the engine's share of the card holds the weights it shares with training, and stays
        parts["vLLM engine: its share of the card less the shared weights"] = max(s.vllm_gb - gen["weights"], 0.0)
        generation = {}
    else:
        generation = {f"KV cache of the {s.completions_per_step} completions of a step": gen["KV cache"],
                      "their last logits": gen["logits"]}
        phases = {"generation": sum(generation.values()), **phases}
    if s.beta > 0:
        phases["reference pass"] = completion_tokens * shape.vocab * 4 / GIB
    peak = max(phases, key=phases.get)
    return {"parts": parts, "generation": generation, "phases": phases, "peak_phase": peak,
            "total": total(parts) + phases[peak]}


@dataclass
class GrpoPlan:
    settings: GrpoSettings
    estimate_gb: float
    limit_gb: float
    budget_gb: float
    budget_source: str
    context_gb: float
    estimate: dict = field(default_factory=dict)
    steps: list[dict] = field(default_factory=list)
    over_without_changes: bool = False
    cfg: object = None  # the config GRPO runs with: the user's, with the plan's settings

    def to_dict(self) -> dict:
        return {"settings": asdict(self.settings), "estimate_gb": self.estimate_gb, "limit_gb": self.limit_gb,
                "budget_gb": self.budget_gb, "budget_source": self.budget_source, "context_gb": self.context_gb,
                "phases": {k: round(v, 3) for k, v in self.estimate["phases"].items()},
                "peak_phase": self.estimate["peak_phase"], "steps": self.steps,
                "over_without_changes": self.over_without_changes}


def settings_for(cfg, backend: str, prompt_tokens: int, vllm_gb: float | None = None) -> GrpoSettings:
    from medqlora.training.model import compute_dtype

    rl = cfg.rl
    return GrpoSettings(rl.micro_batch, rl.completions_per_step, prompt_tokens, rl.max_completion_length,
                        rl.gradient_checkpointing, rl.optimizer, rl.beta, vllm_gb, cfg.model.load_in_4bit, backend,
                        compute_dtype(cfg.model).itemsize)


def fit(shape, start: GrpoSettings, lora_r: int, targets: list[str], budget: float, source: str, max_fraction: float,
        context: float, auto: bool = True) -> GrpoPlan:
    limit = max_fraction * budget
    s = GrpoSettings(**asdict(start))
    steps: list[dict] = []

    def est(x: GrpoSettings) -> float:
        return estimate_grpo(shape, x, lora_r, targets)["total"] + context

    def apply(what: str, new: GrpoSettings) -> None:
        nonlocal s
        before, after = est(s), est(new)
        steps.append({"step": what, "estimate_before_gb": round(before, 2), "estimate_after_gb": round(after, 2),
                      "saving_gb": round(before - after, 2)})
        s = new

    if auto:
        if est(s) > limit and not s.gradient_checkpointing:
            apply("gradient checkpointing on", GrpoSettings(**{**asdict(s), "gradient_checkpointing": True}))
        if est(s) > limit and "8bit" not in s.optimizer:
            apply(f"optimizer {s.optimizer} -> adamw_8bit", GrpoSettings(**{**asdict(s), "optimizer": "adamw_8bit"}))
        while est(s) > limit and s.micro_batch > 1:
            mb, acc = smaller_micro_batch(s.micro_batch, s.accumulation)
            apply(f"completions per pass {s.micro_batch} -> {mb}, passes per step {s.accumulation} -> {acc} (group "
                  "size and generation batch unchanged)", GrpoSettings(**{**asdict(s), "micro_batch": mb}))
    e = estimate_grpo(shape, s, lora_r, targets)
    final = e["total"] + context
    if auto and final > limit:
        raise MemoryFitError(
            f"a GRPO step needs about {final:.1f} GiB at its peak ({e['peak_phase']}) even with one completion per "
            f"pass, gradient checkpointing and an 8-bit optimizer: more than {max_fraction:.0%} of the {budget:.1f} "
            f"GiB budget ({source}). The {s.completions_per_step} completions of a step are generated together: "
            "lower rl.num_generations or rl.prompts_per_step, or rl.max_completion_length"
            + (", or rl.vllm_gpu_memory_utilization" if s.vllm_gb is not None else "") + ", or use a larger card")
    return GrpoPlan(s, round(final, 2), round(limit, 2), round(budget, 2), source, context, e, steps,
                    not auto and final > limit)


def apply_plan(cfg, p: GrpoPlan):
    c = cfg.model_copy(deep=True)
    c.rl.micro_batch_size = p.settings.micro_batch
    c.rl.gradient_checkpointing = p.settings.gradient_checkpointing
    c.rl.optimizer = p.settings.optimizer
    return c


def vllm_share_gb(cfg, use_vllm: bool) -> float | None:
    if not use_vllm:
        return None
    from medqlora.training.memory_plan import capacity_gb

    return cfg.rl.vllm_gpu_memory_utilization * capacity_gb()[0]


def plan_grpo(cfg, prompt_tokens: int, use_vllm: bool = False, print_fn=print) -> GrpoPlan:
    """The plan for this run's GRPO steps, before loading: the estimate by part and phase, fitted to the budget."""
    from medqlora.training.model import cuda_available, resolve_backend, resolve_model

    backend = resolve_backend(cfg.model)
    shape = model_shape(resolve_model(cfg.model)[0])
    budget, source = budget_gb(cfg)
    context = CUDA_CONTEXT_GIB if cuda_available() else RUNTIME_GIB_CPU
    start = settings_for(cfg, backend, prompt_tokens, vllm_share_gb(cfg, use_vllm))
    m = cfg.memory
    p = fit(shape, start, cfg.lora.r, cfg.lora.target_modules, budget, source, m.max_fraction, context,
            m.auto_optimize)
    p.cfg = apply_plan(cfg, p)
    for st in p.steps:
        print_fn(f"memory: {st['step']}: estimated peak {st['estimate_before_gb']} -> {st['estimate_after_gb']} GiB")
    verdict = "over the limit: expect out-of-memory errors" if p.over_without_changes else "fits"
    print_fn(f"memory: estimated GRPO peak {p.estimate_gb} GiB ({p.estimate['peak_phase']}), limit {p.limit_gb} GiB "
             f"({m.max_fraction:.0%} of {p.budget_gb} GiB, {source}): {verdict}")
    return p


def preflight(cfg) -> list[str]:
    """From the params alone: a GRPO step that cannot fit an explicit memory.budget_gb with every optimization, at
    the longest prompt the run allows (model.max_seq_length - rl.max_completion_length). Skipped without an explicit
    budget or where the model's config.json is not on disk yet."""
    from medqlora.training.model import converted_folder, cuda_available, resolve_backend, resolve_model

    if cfg.rl is None or cfg.memory.budget_gb is None or not cfg.memory.auto_optimize:
        return []
    try:
        backend = resolve_backend(cfg.model)
        ref = str(converted_folder(cfg.model)[1]) if cfg.model.gguf_file else resolve_model(cfg.model)[0]
        shape = model_shape(ref, local_files_only=True)
    except Exception:  # not downloaded yet, gated, a GGUF not converted yet: the stage plans again
        return []
    vllm = cfg.rl.vllm_gpu_memory_utilization * cfg.memory.budget_gb if cfg.rl.use_vllm is True else None
    start = settings_for(cfg, backend, cfg.model.max_seq_length - cfg.rl.max_completion_length, vllm)
    context = CUDA_CONTEXT_GIB if cuda_available() else RUNTIME_GIB_CPU
    try:
        fit(shape, start, cfg.lora.r, cfg.lora.target_modules, cfg.memory.budget_gb, "memory.budget_gb",
            cfg.memory.max_fraction, context)
    except MemoryFitError as e:
        return [f"memory (rl): {e}"]
    return []


def plan_table(p: GrpoPlan):
    """What stays, each phase (the largest marked: it sets the peak), the total against the limit and the budget."""
    import pandas as pd

    e = p.estimate
    rows = {k: v for k, v in e["parts"].items()}
    for phase, gib in e["phases"].items():
        rows[f"phase: {phase}" + (" (the peak)" if phase == e["peak_phase"] else "")] = gib
    rows["context (CUDA, or Python + libraries on a CPU)"] = p.context_gb
    rows["total (estimated peak)"] = p.estimate_gb
    rows["limit: memory.max_fraction x budget"] = p.limit_gb
    rows["budget: " + p.budget_source] = p.budget_gb
    s = p.settings
    df = pd.DataFrame({"GiB": rows}).round(3)
    df.attrs["settings"] = (f"{s.completions_per_step} completions a step, {s.micro_batch} a pass, "
                            f"{s.prompt_tokens} + {s.completion_tokens} tokens")
    return df


def plan_steps_table(p: GrpoPlan):
    import pandas as pd

    if not p.steps:
        return pd.DataFrame({"memory plan": ["no change needed: the configured settings fit"]})
    return pd.DataFrame(p.steps).set_index("step")
