"""The memory estimate: what a QLoRA step holds at its peak, from the config and the model's config.json alone
(memory_plan.py fits the run into its budget with it; core/memory_log.py records what was really used).

The estimate adds up what a QLoRA step holds at its peak (in the spirit of `accelerate estimate-memory`, plus
the parts it leaves out): 4-bit NF4 weights with their double-quantized scales, the parts kept in 16 bits
(embeddings, lm_head, norms), LoRA weights + gradients + optimizer states, the activations (with Unsloth's
offloaded checkpointing: one layer's working set, or one chunk of its fused loss if larger; without checkpointing:
every layer's), the dense packed-row mask where Unsloth would build one, and the CUDA context. Its coefficients were
measured on an H200 (below; benchmarks/memory_estimate.py re-measures; docs/training.md, "Memory").
"""
from __future__ import annotations

from dataclasses import dataclass

from medqlora.training.attention import dense_packed_mask

GIB = 1024**3

# bitsandbytes NF4: 4 bits a weight, an 8-bit absmax per block of 64 and (double quantization) an fp32 scale
# per 256 blocks: 0.5 + 1/64 + 4/(64*256) bytes a parameter.
NF4_BYTES = 0.5 + 1 / 64 + 4 / (64 * 256)
CUDA_CONTEXT_GIB = 0.5  # driver + cuBLAS workspaces: outside torch's reserved memory, inside the card's
# Unsloth's path, gradient checkpointing on (its offloaded checkpointing keeps the layer inputs in CPU memory), fitted
# on an H200 (Unsloth 2026.10.9, torch 2.11, 4-bit, adamw_8bit, all 7 projections) on 78 configs: Llama-3.2-1B and
# 3.1-8B shapes, vocabularies 49,152 and 128,256, LoRA r 16/32/64, 2,048 to 49,152 tokens a micro-batch, rows of 512 to
# 8,192 tokens, packed and unpacked; estimate/measured peak reserved 0.96 to 1.09 (docs/training.md, "Memory").
LAYER_BYTES = 9.64  # per token x (hidden + intermediate): one layer's forward + backward working set when recomputed
MIN_LAYER_TOKENS = 4096  # below this many tokens a micro-batch the working set does not shrink further (measured)
LORA_STEP_BYTES = 1.84  # per LoRA parameter, besides its weight, gradient and optimizer states (the optimizer step)
WORKSPACE_GIB = 0.186  # fixed allocator and kernel workspace
DEQUANT_BYTES = 11.91  # per hidden x intermediate: one layer's weights dequantized to 16 bits, with their buffers
# Unsloth's fused cross-entropy computes the logits in chunks of at most ~4 GiB at its 16 bytes a logit (half the free
# memory, capped at 4 GiB: unsloth_zoo's get_chunk_size), freed before the layers' backward: the peak is the larger of
# one chunk and one layer's working set. In every config above the layers set it; 2 bytes (a 16-bit logit) per chunk
# entry is the least a chunk holds.
CE_CHUNK_BYTES = 2.0
CE_TARGET_GIB = 4.0
# The dense L x L block-diagonal mask (L = micro-batch x max_seq_length tokens) that Unsloth builds for packed rows only
# on its fallback path: neither flash-attn nor xformers usable and UNSLOTH_SDPA_PACKED_SEGMENTS off (since 2026.x
# Unsloth attends packed rows per segment through SDPA). 2.7 to 4.0 bytes per element measured (BENCHMARKS.md), 2.5
# on 2026-12-01.
PACKED_MASK_BYTES = 4.0
# Without gradient checkpointing (measured on the earlier fit, 512 to 8,192 tokens):
ACTIVATION_FULL = 3.11  # per token x layer, in units of (hidden + intermediate) 16-bit values
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


# Every field ModelShape.from_config reads: a config.json that leaves one out gets its config class's default, which
# only AutoConfig knows (Gemma: tied embeddings, head_dim 256 rather than hidden / heads).
SHAPE_FIELDS = ("hidden_size", "num_hidden_layers", "intermediate_size", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "tie_word_embeddings", "head_dim")


def local_shape(ref: str) -> ModelShape | None:
    """The shape from a local folder's config.json read as JSON (importing transformers for AutoConfig costs 5 to 10 s
    in the runner, before any stage); None where it is not a local folder or does not name every field itself (left
    to class defaults, or nested as in a multimodal config): AutoConfig then reads it."""
    import json
    from pathlib import Path
    from types import SimpleNamespace

    try:
        raw = json.loads((Path(ref) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(raw, dict) or any(raw.get(k) is None for k in SHAPE_FIELDS):
        return None
    return ModelShape.from_config(SimpleNamespace(**raw))


def model_shape(ref: str, local_files_only: bool = False) -> ModelShape:
    """The shape from config.json alone (a local folder or the hub's small config file); no weights loaded."""
    shape = local_shape(ref)
    if shape is not None:
        return shape
    from transformers import AutoConfig

    from medqlora.training.model_files import local_config_problem

    try:
        return ModelShape.from_config(AutoConfig.from_pretrained(ref, local_files_only=local_files_only))
    except Exception as e:
        problem = local_config_problem(ref)  # a broken local file is not the hub's doing
        if problem:
            raise RuntimeError(f"could not read the config of the model folder {ref}: {problem}") from e
        if not isinstance(e, OSError):
            raise
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
    dense_packed_mask: bool | None = None  # None: as this environment would run (dense_packed_mask())

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


def loss_chunk_tokens(tokens: int, vocab: int, hidden: int, target_gib: float = CE_TARGET_GIB) -> int:
    """Tokens in one chunk of Unsloth's fused cross-entropy (unsloth_zoo get_chunk_size: 16 bytes a logit against the
    target less the hidden-state gradient, chunks in multiples of 4)."""
    fixed = tokens * hidden * 2 / GIB
    target = target_gib - fixed if 0 < fixed < target_gib else target_gib
    exact = tokens * vocab * 16 / GIB / target
    chunks = 1 if exact <= 1 + 1e-9 else min(-(-exact // 4) * 4, tokens)
    return -(-tokens // int(chunks))


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
    width = shape.hidden + shape.intermediate
    if s.gradient_checkpointing and unsloth:  # layer inputs offloaded: one layer's working set, or one loss chunk
        layer = LAYER_BYTES * max(tokens, MIN_LAYER_TOKENS) * width * s.dtype_bytes / 2
        chunk = CE_CHUNK_BYTES * loss_chunk_tokens(tokens, shape.vocab, shape.hidden) * shape.vocab
        act, logits = layer, max(chunk - layer, 0.0)
    elif s.gradient_checkpointing:
        act = tokens * shape.hidden * shape.layers * HF_CHECKPOINTED_BYTES * s.dtype_bytes / 2
        logits = tokens * shape.vocab * HF_LOGITS_BYTES
    else:
        act = tokens * ACTIVATION_FULL * width * s.dtype_bytes * shape.layers
        logits = (CE_CHUNK_BYTES * loss_chunk_tokens(tokens, shape.vocab, shape.hidden) if unsloth
                  else tokens * HF_LOGITS_BYTES) * shape.vocab
    workspace = WORKSPACE_GIB * GIB + DEQUANT_BYTES * shape.hidden * shape.intermediate
    dense = dense_packed_mask() if s.dense_packed_mask is None else s.dense_packed_mask
    packed_mask = {"packed-row attention mask (dense)": PACKED_MASK_BYTES * tokens ** 2} \
        if s.packing and unsloth and dense else {}
    parts = {"base weights (" + ("4-bit NF4, double quantization" if s.load_in_4bit else "16-bit") + ")": base,
             f"embeddings, lm_head, norms ({8 * s.dtype_bytes}-bit)": sixteen,
             "LoRA weights + gradients (fp32)": n_lora * (8 + (LORA_STEP_BYTES if unsloth else 0)),
             f"optimizer states ({'8-bit' if optim_bytes == 2 else 'fp32'} AdamW)": n_lora * optim_bytes,
             "activations" + (" (checkpointed)" if s.gradient_checkpointing else ""): act,
             "logits and loss" + (" (a loss chunk beyond the layer's)" if unsloth and s.gradient_checkpointing
                                  else ""): logits,
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


# ---------------------------------------------------------------- the record, shown


