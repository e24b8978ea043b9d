"""Faster decoding for the evaluate stage (issue 31), with what transformers and torch provide (eval.decoding):

static      transformers' static KV cache (cache_implementation="static"), sized once for the whole pass (the longest
            prompt plus the longest answer: max_cache_len), with generate's own compiled decoding step (torch.compile,
            mode reduce-overhead: CUDA graphs). Every batch has the pass's batch size (the last one of a group is
            filled up with copies of its last prompt, whose answers are dropped), so the step compiles once and each
            token of a batch costs one graph replay instead of hundreds of kernel launches from Python.
continuous  transformers' continuous batching (generate_batch): a paged KV cache sized from the memory plan, a
            finished answer leaves the batch and the next prompt takes its place, CUDA graphs for the steps.
eager       generate with a growing (dynamic) KV cache, batch by batch: the CPU path and the reference.

Greedy answers are the same tokens on every path in float32 (tests); in 16 bits a near-tie between two tokens can
fall the other way, as it can between two batch sizes.
"""
from __future__ import annotations

import contextlib
import math

ENGINES = ("eager", "static", "continuous")
# torch.compile settings for the static path's decoding step: transformers' default for generate (inductor, CUDA graphs)
COMPILE = {"fullgraph": False, "dynamic": False, "backend": "inductor", "mode": "reduce-overhead"}


def choose(cfg, cuda: bool) -> tuple[str, str]:
    """The decoding engine and why: eval.decoding, or (auto) eager. On a CPU the compiled step does not pay; on a GPU
    the static and continuous paths have not been timed yet (issue 31's device calls found no machine:
    benchmarks/gpu/eval_speed.sh measures them), so auto keeps today's path there too until they have."""
    d = cfg.eval.decoding
    if d != "auto":
        return d, f"eval.decoding: {d}"
    if not cuda:
        return "eager", "auto: no CUDA GPU (compiled decoding and CUDA graphs pay only on a GPU)"
    return "eager", ("auto: eager until the static path is measured on a GPU; eval.decoding: static (or continuous) "
                     "to use it")


def load_backend(engine: str, backend: str, merged: bool) -> str:
    """The backend the model is loaded with for answering. Unsloth's inference mode decodes through its own Llama
    forward and KV cache, which take neither transformers' static cache nor its paged one: for the static and
    continuous engines a 4-bit model with the adapter on top is loaded with transformers + PEFT + bitsandbytes (the
    same NF4 weights). A merged (dequantized) model is loaded with transformers already."""
    return "hf" if engine != "eager" and backend == "unsloth" and not merged else backend


def _causal_lm(model):
    """The transformers model under a PEFT wrapper (the one whose generate runs)."""
    get = getattr(model, "get_base_model", None)
    return get() if callable(get) else model


def _device(model):
    return next(model.parameters()).device


@contextlib.contextmanager
def compile_allowed(model):
    """transformers compiles a quantized model's decoding step only where its quantizer says it can, and
    bitsandbytes' 4-bit one says no by default (is_compileable). bitsandbytes >= 0.46 registers its 4-bit matmul as
    torch custom ops that torch.compile traces (0.50: torch.ops.bitsandbytes.gemm_4bit), so for the static engine
    the quantizer is set aside while generate runs, and put back after."""
    inner = _causal_lm(model)
    quantizer = getattr(inner, "hf_quantizer", None)
    if quantizer is None or getattr(quantizer, "is_compileable", False):
        yield
        return
    inner.hf_quantizer = None
    try:
        yield
    finally:
        inner.hf_quantizer = quantizer


def static_kwargs(model, max_cache_len: int) -> dict:
    """generate() keyword arguments of the static engine: the static cache of max_cache_len positions and, on a CUDA
    GPU, the compile settings (COMPILE); on a CPU the static cache alone, uncompiled (what the tests run)."""
    kw = {"cache_implementation": "static", "max_cache_len": max_cache_len}
    if _device(model).type == "cuda":
        from transformers import CompileConfig

        kw["compile_config"] = CompileConfig(**COMPILE)
    else:
        kw["disable_compile"] = True
    return kw


def fill(prompts: list[str], batch: int) -> list[str]:
    """The batch filled up to its full size with copies of its last prompt (one compiled shape for the pass)."""
    return prompts + [prompts[-1]] * (batch - len(prompts))


def answer(tokenizer, ids, budget: int) -> dict:
    """{text, new_tokens, hit_limit} from an answer's token ids (padding after an end-of-sequence token, or none)."""
    ids = [int(t) for t in ids]
    n = sum(t != tokenizer.pad_token_id for t in ids)
    ended = tokenizer.eos_token_id in ids
    return {"text": tokenizer.decode(ids, skip_special_tokens=True).strip(), "new_tokens": n,
            "hit_limit": not ended and n >= budget}


def continuous(model, tokenizer, prompt_ids: list[list[int]], budget: int, batch: int, sampling_kw: dict | None,
               block_size: int | None = None) -> list[list[int]]:
    """Every prompt's answer tokens through transformers' continuous batching: at most `batch` answers decode at once
    (the memory plan's batch), in a paged KV cache of as many blocks as `batch` answers of the longest prompt plus
    `budget` need, so its memory is the plan's; CUDA graphs on a GPU."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    cuda = _device(model).type == "cuda"
    block = block_size or (256 if cuda else 32)
    longest = max(map(len, prompt_ids))
    per_answer = math.ceil((longest + budget) / block) + 1
    cb = ContinuousBatchingConfig(block_size=block, num_blocks=batch * per_answer, max_requests_per_batch=batch,
                                  max_batch_tokens=max(2048, longest + 1), allow_block_sharing=False,
                                  use_cuda_graph=True if cuda else None)
    skw = dict(sampling_kw or {"do_sample": False})
    gc = GenerationConfig(max_new_tokens=budget, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id, **skw)
    out = model.generate_batch(prompt_ids, generation_config=gc, continuous_batching_config=cb, progress_bar=False)
    by_order = sorted(out.values(), key=lambda o: int(o.request_id.rsplit("_", 1)[-1]))
    bad = [o.error for o in by_order if o.error]
    if len(by_order) != len(prompt_ids) or bad:
        raise RuntimeError(f"continuous batching answered {len(by_order)} of {len(prompt_ids)} prompts"
                           + (f": {bad[0]}" if bad else ""))
    return [o.generated_tokens for o in by_order]
