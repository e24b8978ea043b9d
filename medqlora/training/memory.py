"""Memory as a managed resource: an estimate from the config and the model's config.json alone, a plan that
fits the run into its budget before anything loads, and a record of memory at every major step.

The estimate adds up what a QLoRA step holds at its peak (in the spirit of `accelerate estimate-memory`, plus
the parts it leaves out): 4-bit NF4 weights with their double-quantized scales, the parts kept in 16 bits
(embeddings, lm_head, norms), LoRA weights + gradients + optimizer states, activations per token per layer
(with and without gradient checkpointing), the logits/loss buffer, and the CUDA context. Its activation,
logits and workspace coefficients were measured on an H200 (below; benchmarks/memory_estimate.py re-measures).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from medqlora.core.memory_log import read_records

GIB = 1024**3

# bitsandbytes NF4: 4 bits a weight, an 8-bit absmax per block of 64 and (double quantization) an fp32 scale
# per 256 blocks: 0.5 + 1/64 + 4/(64*256) bytes a parameter.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT_GIB = 0.5  # driver + cuBLAS workspaces: outside torch's reserved memory, inside the card's
# Coefficients measured on an H200 through this project's train stage (Unsloth 2026.10.9, 4-bit, r=16 on all
# 7 projections, Llama 3.2 1B and 3.1 8B shapes, 512 to 8192 tokens a micro-batch; benchmarks/memory_estimate.py):
CHECKPOINTED_BYTES = 1.216  # per token x hidden x layer: layer inputs kept with (offloaded) gradient checkpointing
LOGITS_BYTES = 0.356  # per token x vocabulary entry at the loss (Unsloth's chunked cross-entropy)
ACTIVATION_FULL = 3.11  # per token x layer, in units of (hidden + intermediate) 16-bit values, no checkpointing
WORKSPACE_GIB = 0.24  # fixed allocator and kernel workspace
DEQUANT_BYTES = 4.12  # per hidden x intermediate: one layer's MLP weights dequantized to 16 bits for the matmul
# Packed with Unsloth where neither flash-attn nor xformers is installed, the flattened micro-batch (L = micro-batch x
# max_seq_length tokens) attends through SDPA with a dense L x L block-diagonal mask (bf16, plus its construction):
# measured on an H200 as 2.7 (1B shape) and 4.0 (8B shape) bytes per element at L = 16,384 (BENCHMARKS.md).
PACKED_MASK_BYTES = 4.0
# The transformers + PEFT path (no Unsloth kernels) keeps more: full fp32 logits with their gradient, and the
# layer inputs on the GPU. Not measured on a GPU here: these are the textbook figures.
HF_LOGITS_BYTES = 12.0
HF_CHECKPOINTED_BYTES = 2.0
MIN_SEQ_STEP = 64


@dataclass
class ModelShape:
    hidden: int
    layers: int
    intermediate: int
    heads: int
    kv_heads: int
    vocab: int
    tied: bool
    head_dim: int

    @classmethod
    def from_config(cls, c) -> "ModelShape":
        heads = c.num_attention_heads
        return cls(hidden=c.hidden_size, layers=c.num_hidden_layers, intermediate=c.intermediate_size, heads=heads,
                   kv_heads=getattr(c, "num_key_value_heads", None) or heads, vocab=c.vocab_size,
                   tied=bool(getattr(c, "tie_word_embeddings", False)),
                   head_dim=getattr(c, "head_dim", None) or c.hidden_size // heads)

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) of each projection of one decoder layer."""
        h, kv = self.hidden, self.kv_heads * self.head_dim
        return {"q_proj": (h, self.heads * self.head_dim), "k_proj": (h, kv), "v_proj": (h, kv),
                "o_proj": (self.heads * self.head_dim, h), "gate_proj": (h, self.intermediate),
                "up_proj": (h, self.intermediate), "down_proj": (self.intermediate, h)}

    def linear_params(self) -> int:
        return self.layers * sum(i * o for i, o in self.linear_shapes().values())

    def params(self) -> int:
        """All weights: the projections, the embedding and (untied) the output layer; norms are negligible."""
        return self.linear_params() + self.vocab * self.hidden * (1 if self.tied else 2)

    def lora_params(self, r: int, targets: list[str]) -> int:
        return self.layers * sum(r * (i + o) for name, (i, o) in self.linear_shapes().items() if name in targets)


def model_shape(ref: str) -> ModelShape:
    """The shape from config.json alone (a local folder or the hub's small config file); no weights loaded."""
    from transformers import AutoConfig

    try:
        return ModelShape.from_config(AutoConfig.from_pretrained(ref))
    except OSError as e:
        raise RuntimeError(f"could not read the config of {ref!r} ({e}). A gated hub model needs HF_TOKEN in the "
                           "environment (and its license accepted on the hub); offline, give a local folder") from e


@dataclass
class Settings:
    """What memory depends on, and what the plan may change."""
    micro_batch_size: int
    gradient_accumulation: int
    max_seq_length: int
    gradient_checkpointing: bool
    optimizer: str
    load_in_4bit: bool = True
    backend: str = "unsloth"
    dtype_bytes: int = 2  # compute dtype: 2 for bf16/fp16 on a GPU, 4 for fp32 on a CPU
    packing: bool = False

    @property
    def effective_batch(self) -> int:
        return self.micro_batch_size * self.gradient_accumulation


def settings_from(cfg, backend: str) -> Settings:
    from medqlora.training.model import compute_dtype
    from medqlora.training.packing import resolve

    t = cfg.train
    return Settings(t.micro_batch_size, t.gradient_accumulation, cfg.model.max_seq_length, t.gradient_checkpointing,
                    t.optimizer, cfg.model.load_in_4bit, backend, compute_dtype(cfg.model).itemsize,
                    resolve(t.packing, backend))


def estimate_training(shape: ModelShape, s: Settings, lora_r: int, targets: list[str],
                      tokens_per_micro_batch: int | None = None) -> dict[str, float]:
    """Peak training memory by part, in GiB. tokens_per_micro_batch defaults to micro-batch x max_seq_length
    (the worst case: a full micro-batch of longest examples, or a packed batch)."""
    tokens = tokens_per_micro_batch or s.micro_batch_size * s.max_seq_length
    lin = shape.linear_params()
    base = lin * (NF4_BYTES if s.load_in_4bit else 2)
    sixteen = (shape.vocab * shape.hidden * (1 if shape.tied else 2) + (2 * shape.layers + 1) * shape.hidden) \
        * s.dtype_bytes
    n_lora = shape.lora_params(lora_r, targets)
    optim_bytes = 2 if "8bit" in s.optimizer else 8
    unsloth = s.backend == "unsloth"
    if s.gradient_checkpointing:
        act = tokens * shape.hidden * shape.layers * (CHECKPOINTED_BYTES if unsloth else HF_CHECKPOINTED_BYTES) \
            * s.dtype_bytes / 2
    else:
        act = tokens * ACTIVATION_FULL * (shape.hidden + shape.intermediate) * s.dtype_bytes * shape.layers
    logits = tokens * shape.vocab * (LOGITS_BYTES if unsloth else HF_LOGITS_BYTES)
    workspace = WORKSPACE_GIB * GIB + DEQUANT_BYTES * shape.hidden * shape.intermediate
    packed_mask = {"packed-row attention mask": PACKED_MASK_BYTES * tokens ** 2} if s.packing and unsloth else {}
    parts = {"base weights (" + ("4-bit NF4, double quantization" if s.load_in_4bit else "16-bit") + ")": base,
             f"embeddings, lm_head, norms ({8 * s.dtype_bytes}-bit)": sixteen,
             "LoRA weights + gradients (fp32)": n_lora * 8,
             f"optimizer states ({'8-bit' if optim_bytes == 2 else 'fp32'} AdamW)": n_lora * optim_bytes,
             "activations" + (" (checkpointed)" if s.gradient_checkpointing else ""): act,
             "logits and loss": logits,
             "workspace (dequantized layer, kernels)": workspace, **packed_mask}
    return {k: v / GIB for k, v in parts.items()}


def estimate_generation(shape: ModelShape, batch: int, total_tokens: int, load_in_4bit: bool = True) -> dict[str, float]:
    """Peak generation memory by part, in GiB: weights, KV cache for batch x (prompt + new tokens), logits."""
    base = shape.linear_params() * (NF4_BYTES if load_in_4bit else 2)
    sixteen = (shape.vocab * shape.hidden * (1 if shape.tied else 2)) * 2
    kv = 2 * shape.layers * shape.kv_heads * shape.head_dim * 2 * batch * total_tokens
    logits = batch * shape.vocab * 4 * 2
    return {"weights": (base + sixteen) / GIB, "KV cache": kv / GIB, "logits": logits / GIB}


def total(parts: dict[str, float]) -> float:
    return sum(parts.values())


# ---------------------------------------------------------------- budget and plan


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
        mb = s.micro_batch_size // 2
        acc = s.effective_batch // mb if s.effective_batch % mb == 0 else s.gradient_accumulation * 2
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
        seq = s.max_seq_length
        while est(Settings(**{**asdict(s), "max_seq_length": seq})) > limit and seq // 2 >= floor:
            seq //= 2
        seq = max(seq, floor)
        if seq < s.max_seq_length:
            apply(f"max_seq_length {s.max_seq_length} -> {seq}", Settings(**{**asdict(s), "max_seq_length": seq}))
    final = est(s)
    p = Plan(s, round(final, 2), round(limit, 2), round(budget, 2), source, steps,
             {k: round(v, 3) for k, v in estimate_training(shape, s, lora_r, targets).items()}, context_gb)
    if final > limit:
        raise MemoryFitError(unfit_message(shape, s, lora_r, targets, final, limit, budget, source, max_fraction,
                                           allow_shorter_seq, context_gb))
    return p


def unfit_message(shape, s: Settings, lora_r, targets, final, limit, budget, source, max_fraction, allow_shorter,
                  context_gb) -> str:
    """What would fit: the longest max_seq_length at micro-batch 1, and the smallest card for this config."""
    seq = s.max_seq_length
    while seq > MIN_SEQ_STEP and total(estimate_training(
            shape, Settings(**{**asdict(s), "max_seq_length": seq}), lora_r, targets)) + context_gb > limit:
        seq //= 2
    fits_seq = total(estimate_training(shape, Settings(**{**asdict(s), "max_seq_length": seq}),
                                       lora_r, targets)) + context_gb <= limit
    card = final / max_fraction
    return (f"the run needs about {final:.1f} GiB at its peak even at micro-batch {s.micro_batch_size} with gradient "
            f"checkpointing and an 8-bit optimizer, more than {max_fraction:.0%} of the {budget:.1f} GiB budget "
            f"({source}), i.e. {limit:.1f} GiB. "
            + (f"model.max_seq_length {seq} would fit" + ("" if allow_shorter else
               " (set memory.allow_shorter_seq: true to let the run shorten it, or set it yourself)") + "; "
               if fits_seq else "no max_seq_length fits; ")
            + f"a card with at least {math.ceil(card)} GiB would fit this config as it is")


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
    from transformers import AutoConfig

    from medqlora.training.model import converted_folder, cuda_available, resolve_backend, resolve_model

    if cfg.memory.budget_gb is None or not cfg.memory.auto_optimize:
        return []
    try:
        backend = resolve_backend(cfg.model)
        # never convert a GGUF here: use its converted folder if setup made it already
        ref = str(converted_folder(cfg.model)[1]) if cfg.model.gguf_file else resolve_model(cfg.model)[0]
        shape = ModelShape.from_config(AutoConfig.from_pretrained(ref, local_files_only=True))
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


# ---------------------------------------------------------------- the record, shown


def stage_table(run, stage: str):
    import pandas as pd

    rows = [r for r in read_records(run) if r["stage"] == stage and not r["event"].startswith("step ")]
    cols = [c for c in ("event", "gpu_allocated_gb", "gpu_reserved_gb", "gpu_peak_gb", "gpu_free_gb", "rss_gb",
                        "ram_used_gb") if any(c in r for r in rows)]
    return pd.DataFrame(rows)[cols].set_index("event") if rows else pd.DataFrame()


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


def plot_run(run, path: Path):
    import matplotlib.pyplot as plt

    recs = read_records(run)
    if not recs:
        return None
    t0 = recs[0]["time"]
    key = "gpu_reserved_gb" if "gpu_reserved_gb" in recs[0] else "rss_gb"
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot([r["time"] - t0 for r in recs], [r.get(key, 0) for r in recs], marker=".", lw=1)
    stages = []
    for r in recs:
        if not stages or stages[-1][0] != r["stage"]:
            stages.append((r["stage"], r["time"] - t0))
    for name, t in stages:
        ax.axvline(t, color="grey", ls=":", lw=0.8)
        ax.text(t, ax.get_ylim()[1] * 0.95, name, fontsize=8, rotation=90, va="top")
    ax.set_xlabel("seconds since the run's first record (dotted: stage starts)")
    ax.set_ylabel("GPU reserved (GiB)" if key.startswith("gpu") else "process RSS (GiB)")
    ax.set_title("memory over the whole run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig
