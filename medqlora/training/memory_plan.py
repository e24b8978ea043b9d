"""The memory plan: the budget, the optimizations applied in order until the estimate fits, and what cannot fit."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from medqlora.training.memory import (
    CUDA_CONTEXT_GIB,
    GIB,
    MIN_SEQ_STEP,
    ModelShape,
    Settings,
    estimate_generation,
    estimate_training,
    model_shape,
    settings_from,
    total,
)


def estimate_loglik(shape: ModelShape, batch: int, width: int, positions: int, four_bit: bool = True,
                    dtype_bytes: int = 2) -> dict[str, float]:
    """Peak memory of one log-likelihood forward pass by part, in GiB: the weights; one layer's working set for
    batch x width tokens (residual stream, normed input, the MLP's three intermediate tensors; no KV cache, the pass
    runs without one; SDPA does not keep the attention scores); and the logits of the scored positions only, with
    their float32 copy and log-softmax (3 x 4 bytes a logit)."""
    weights = estimate_generation(shape, 1, 0, four_bit)["weights"]
    layer = batch * width * (4 * shape.hidden + 3 * shape.intermediate) * dtype_bytes
    logits = positions * shape.vocab * 4 * 3
    return {"weights": weights, "activations (one layer, no KV cache)": layer / GIB,
            "logits (scored positions only)": logits / GIB}


def budget_gb(cfg, hardware: dict | None = None) -> tuple[float, str]:
    """memory.budget_gb, else the card's free memory (GPU) or the available RAM (CPU), and where it came from."""
    if cfg.memory.budget_gb is not None:
        return cfg.memory.budget_gb, "memory.budget_gb"
    import psutil
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return free / GIB, f"free memory of {torch.cuda.get_device_name(0)}"
    return psutil.virtual_memory().available / GIB, "available RAM (no GPU)"


class MemoryFitError(RuntimeError):
    """The run cannot fit its memory budget with any optimization allowed; the message has the numbers."""


@dataclass
class Plan:
    settings: Settings
    estimate_gb: float
    limit_gb: float
    budget_gb: float
    budget_source: str
    steps: list[dict] = field(default_factory=list)  # each optimization applied, with its estimated saving
    parts: dict[str, float] = field(default_factory=dict)
    context_gb: float = CUDA_CONTEXT_GIB
    over_without_changes: bool = False  # auto_optimize is off and the estimate passes the limit
    cfg: object = None  # the config training uses: the user's, with the plan's settings
    shape: ModelShape | None = None

    @property
    def changed(self) -> bool:
        return bool(self.steps)

    def to_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k not in ("cfg", "shape")}
        d["settings"] = asdict(self.settings)
        return d


def plan(shape: ModelShape, start: Settings, lora_r: int, targets: list[str], budget: float, source: str,
         max_fraction: float, allow_shorter_seq: bool = False, min_seq: int | None = None,
         context_gb: float = CUDA_CONTEXT_GIB, max_micro_batch_tokens: int | None = None) -> Plan:
    """Apply, in this order, until the estimate fits max_fraction x budget: gradient checkpointing, an 8-bit
    optimizer, a smaller micro-batch with proportionally more accumulation (the effective batch stays), and
    (only when allowed) a shorter max_seq_length, never below min_seq (the prepared data's p99 length).
    When it fits as written, the micro-batch grows instead (accumulation halving, effective batch kept) while it
    still fits and holds at most max_micro_batch_tokens: each forward pass has a fixed cost, so fewer, larger
    ones train faster."""
    limit = max_fraction * budget
    s = Settings(**asdict(start))
    steps: list[dict] = []

    def est(x: Settings) -> float:
        return total(estimate_training(shape, x, lora_r, targets)) + context_gb

    def apply(what: str, new: Settings) -> None:
        nonlocal s
        before, after = est(s), est(new)
        steps.append({"step": what, "estimate_before_gb": round(before, 2), "estimate_after_gb": round(after, 2),
                      "saving_gb": round(before - after, 2)})
        s = new

    if est(s) > limit and not s.gradient_checkpointing:
        apply("gradient checkpointing on" + (" (Unsloth's offloaded)" if s.backend == "unsloth" else ""),
              Settings(**{**asdict(s), "gradient_checkpointing": True}))
    if est(s) > limit and "8bit" not in s.optimizer:
        apply(f"optimizer {s.optimizer} -> adamw_8bit", Settings(**{**asdict(s), "optimizer": "adamw_8bit"}))
    while est(s) > limit and s.micro_batch_size > 1:
        mb, acc = smaller_micro_batch(s.micro_batch_size, s.gradient_accumulation)
        apply(f"micro-batch {s.micro_batch_size} -> {mb}, accumulation {s.gradient_accumulation} -> {acc} "
              f"(effective batch {mb * acc})", Settings(**{**asdict(s), "micro_batch_size": mb,
                                                           "gradient_accumulation": acc}))
    fits_as_written = not steps
    while (fits_as_written and max_micro_batch_tokens and s.gradient_accumulation % 2 == 0
           and 2 * s.micro_batch_size * s.max_seq_length <= max_micro_batch_tokens):
        grown = Settings(**{**asdict(s), "micro_batch_size": 2 * s.micro_batch_size,
                            "gradient_accumulation": s.gradient_accumulation // 2})
        if est(grown) > limit:
            break
        apply(f"micro-batch {s.micro_batch_size} -> {grown.micro_batch_size}, accumulation "
              f"{s.gradient_accumulation} -> {grown.gradient_accumulation} (effective batch {s.effective_batch}): "
              "fewer, larger passes", grown)
        steps[-1]["grows"] = True
    if est(s) > limit and allow_shorter_seq:
        floor = max(MIN_SEQ_STEP, min_seq or MIN_SEQ_STEP)
        seq = next((n for n in seq_candidates(s.max_seq_length, floor)
                    if est(Settings(**{**asdict(s), "max_seq_length": n})) <= limit), None)
        if seq is not None:
            apply(f"max_seq_length {s.max_seq_length} -> {seq}", Settings(**{**asdict(s), "max_seq_length": seq}))
    final = est(s)
    p = Plan(s, round(final, 2), round(limit, 2), round(budget, 2), source, steps,
             {k: round(v, 3) for k, v in estimate_training(shape, s, lora_r, targets).items()}, context_gb)
    if final > limit:
        raise MemoryFitError(unfit_message(shape, start, s, lora_r, targets, limit, budget, source, max_fraction,
                                           allow_shorter_seq, context_gb, min_seq))
    return p


def smaller_micro_batch(micro_batch: int, accumulation: int) -> tuple[int, int]:
    """At most half the micro-batch, with the accumulation that keeps the effective batch (and so the optimizer's
    trajectory and the checkpoints): the largest divisor of the effective batch up to micro_batch // 2."""
    effective = micro_batch * accumulation
    mb = next(d for d in range(max(micro_batch // 2, 1), 0, -1) if effective % d == 0)  # 1 always divides
    return mb, effective // mb


def seq_candidates(longest: int, floor: int) -> list[int]:
    """Shorter max_seq_lengths to try, longest first: the multiples of MIN_SEQ_STEP between floor and longest, then
    the floor itself (the data's p99 length, below which more than 1% of the examples would be left out)."""
    top = (longest - 1) // MIN_SEQ_STEP * MIN_SEQ_STEP
    return list(range(top, floor, -MIN_SEQ_STEP)) + ([floor] if floor < longest else [])


def unfit_message(shape, start: Settings, s: Settings, lora_r, targets, limit, budget, source, max_fraction,
                  allow_shorter, context_gb, min_seq: int | None = None) -> str:
    """What would fit: the longest max_seq_length at these settings (saying so when it is below the data's p99
    length), and the smallest card for the config as written (start) and with the plan's optimizations (s)."""
    def est(x: Settings, seq: int | None = None) -> float:
        return total(estimate_training(shape, Settings(**{**asdict(x), "max_seq_length": seq or x.max_seq_length}),
                                       lora_r, targets)) + context_gb

    final = est(s)
    fits = next((n for n in seq_candidates(s.max_seq_length, MIN_SEQ_STEP) if est(s, n) <= limit), None)
    if fits is None:
        advice = "no max_seq_length fits; "
    elif min_seq and fits < min_seq:
        advice = (f"no model.max_seq_length from the data's p99 length ({min_seq} tokens) up fits ({fits} would, "
                  "leaving out more than 1% of the training examples); ")
    else:
        advice = f"model.max_seq_length {fits} would fit" + ("" if allow_shorter else
                  " (set memory.allow_shorter_seq: true to let the run shorten it, or set it yourself)") + "; "
    written, optimized = math.ceil(est(start) / max_fraction), math.ceil(final / max_fraction)
    return (f"the run needs about {final:.1f} GiB at its peak even at micro-batch {s.micro_batch_size} with gradient "
            f"checkpointing and an 8-bit optimizer, more than {max_fraction:.0%} of the {budget:.1f} GiB budget "
            f"({source}), i.e. {limit:.1f} GiB. " + advice
            + f"a card with at least {written} GiB would fit this config as written"
            + (f" ({optimized} GiB with the changes above)" if optimized != written else ""))


RUNTIME_GIB_CPU = 2.0  # Python, torch and the libraries: the floor of a CPU run's RSS, measured here


def plan_training(cfg, run=None, print_fn=print) -> Plan:
    """Estimate this run's peak from the config and config.json, and fit it into the budget before loading."""
    from medqlora.training.model import cuda_available, resolve_backend, resolve_model

    backend = resolve_backend(cfg.model)
    shape = model_shape(resolve_model(cfg.model)[0])
    budget, source = budget_gb(cfg)
    context = CUDA_CONTEXT_GIB if cuda_available() else RUNTIME_GIB_CPU
    min_seq = None
    if run is not None and run.result_path("preprocess").is_file():
        min_seq = run.result("preprocess").get("p99_tokens")
    start = settings_from(cfg, backend)
    m = cfg.memory
    if not m.auto_optimize:
        parts = estimate_training(shape, start, cfg.lora.r, cfg.lora.target_modules)
        est = total(parts) + context
        p = Plan(start, round(est, 2), round(m.max_fraction * budget, 2), round(budget, 2), source, [],
                 {k: round(v, 3) for k, v in parts.items()}, context, est > m.max_fraction * budget)
    else:
        p = plan(shape, start, cfg.lora.r, cfg.lora.target_modules, budget, source, m.max_fraction,
                 m.allow_shorter_seq, min_seq, context, m.max_micro_batch_tokens)
    p.cfg, p.shape = apply_plan(cfg, p), shape
    for st in p.steps:
        cost = f"uses {-st['saving_gb']} GiB more" if st.get("grows") else f"saves {st['saving_gb']} GiB"
        print_fn(f"memory: {st['step']}: estimated peak {st['estimate_before_gb']} -> {st['estimate_after_gb']} GiB "
                 f"({cost})")
    verdict = "over the limit: expect out-of-memory errors" if p.over_without_changes else "fits"
    print_fn(f"memory: estimated peak {p.estimate_gb} GiB, limit {p.limit_gb} GiB ({m.max_fraction:.0%} of "
             f"{p.budget_gb} GiB, {source}): {verdict}")
    return p


def preflight(cfg) -> list[str]:
    """From the params alone, before any notebook: a run that cannot fit an explicit memory.budget_gb with every
    allowed optimization. Skipped without an explicit budget, or where the model's config.json is not on disk."""
    from medqlora.training.model import (
        converted_folder,
        cuda_available,
        resolve_backend,
        resolve_model,
    )

    if cfg.memory.budget_gb is None or not cfg.memory.auto_optimize:
        return []
    try:
        backend = resolve_backend(cfg.model)
        # never convert a GGUF here: use its converted folder if setup made it already
        ref = str(converted_folder(cfg.model)[1]) if cfg.model.gguf_file else resolve_model(cfg.model)[0]
        shape = model_shape(ref, local_files_only=True)
    except Exception:  # not downloaded yet, gated, or a GGUF not converted yet: the train stage checks it
        return []
    context = CUDA_CONTEXT_GIB if cuda_available() else RUNTIME_GIB_CPU
    try:
        plan(shape, settings_from(cfg, backend), cfg.lora.r, cfg.lora.target_modules, cfg.memory.budget_gb,
             "memory.budget_gb", cfg.memory.max_fraction, cfg.memory.allow_shorter_seq, None, context)
    except MemoryFitError as e:
        return [f"memory: {e}"]
    return []


def apply_plan(cfg, p: Plan):
    """A copy of the config with the plan's settings, for training; the original stays as the user wrote it."""
    c = cfg.model_copy(deep=True)
    c.train.micro_batch_size = p.settings.micro_batch_size
    c.train.gradient_accumulation = p.settings.gradient_accumulation
    c.train.gradient_checkpointing = p.settings.gradient_checkpointing
    c.train.optimizer = p.settings.optimizer
    c.model.max_seq_length = p.settings.max_seq_length
    return c


def capacity_gb() -> tuple[float, str]:
    """The card's total memory, or the machine's RAM without a GPU."""
    import psutil
    import torch

    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[1] / GIB, torch.cuda.get_device_name(0)
    return psutil.virtual_memory().total / GIB, "RAM (no GPU)"


def plan_table(p: Plan):
    """The estimated peak by part for the settings training will use, against the budget and the card."""
    import pandas as pd

    from medqlora.training.model import cuda_available

    cap, name = capacity_gb()
    rows = dict(p.parts)
    rows["CUDA context (outside PyTorch's count)" if cuda_available() else "Python, torch, libraries"] = p.context_gb
    rows["total (estimated peak)"] = sum(rows.values())
    df = pd.DataFrame({"GiB": rows}).round(3)
    df[f"share of {name} ({cap:.1f} GiB)"] = (df["GiB"] / cap).map("{:.1%}".format)
    df.loc["limit: memory.max_fraction x budget", "GiB"] = p.limit_gb
    df.loc["budget: " + p.budget_source, "GiB"] = p.budget_gb
    return df.fillna("")


def plan_steps_table(p: Plan):
    import pandas as pd

    if not p.steps:
        return pd.DataFrame({"memory plan": ["no change needed: the configured settings fit"]})
    return pd.DataFrame(p.steps).set_index("step")
