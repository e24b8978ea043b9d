"""Merged 16-bit models: the LoRA update folded into the base weights, for serving (vLLM, TGI, transformers)
and as the source of a GGUF file.

The adapter was trained against the 4-bit base, so by default the merge starts from those same 4-bit weights
dequantized (transformers' dequantize + PEFT's merge_and_unload), not from the original full-precision checkpoint:
the merged model computes what the adapter model computed. export.merge_method: unsloth uses Unsloth's
save_pretrained_merged instead, which merges onto the original 16-bit checkpoint (measured on an H200 with a
random-weight Llama-3.2-1B body: 0 of 3 greedy answers equal to the adapter's, since random weights make the
base's quantization error large; the export notebook shows the check either way).
"""
from __future__ import annotations

import time
from pathlib import Path

from .config import RunConfig
from .prompts import adds_special_tokens


# Relative RMS logit error that rounding the merged weights to 16 bits stays within: bf16 keeps 8 mantissa bits,
# fp16 11. Measured on the offline default (SmolLM2-135M, 30 layers): bf16 3.4e-2 with 98.9% top-1 agreement.
MERGED_TOLERANCE = {"bfloat16": 5e-2, "float16": 1e-2, "float32": 1e-4}


def merged_dtype():
    """16-bit dtype for the merged weights: bf16 where the card (or the CPU) has it, else fp16."""
    import torch

    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def dequantized_with_adapter(ref: str, adapter_dir: str, cfg: RunConfig, dtype=None):
    """transformers + PEFT: the 4-bit base dequantized to `dtype` (default: the compute dtype) with the adapter
    loaded on top, not merged yet (the adapter can still be switched off for the base's answers)."""
    from peft import PeftModel

    from . import model as M

    model, tok = M.load_base(ref, cfg.model, "hf", for_training=False)
    if cfg.model.load_in_4bit:
        model = model.dequantize()
    model = model.to(dtype or M.compute_dtype(cfg.model))
    model = PeftModel.from_pretrained(model, adapter_dir)
    model.eval()
    return model, tok


def merge_to(cfg: RunConfig, ref: str, adapter_dir: str, out: Path, backend: str) -> dict:
    """Write the merged 16-bit model (weights, config, tokenizer) into `out`."""
    t0 = time.time()
    out = Path(out)
    if backend == "unsloth" and cfg.export.merge_method == "unsloth":  # it merges only a model it loaded itself
        from unsloth import FastLanguageModel

        from .model import compute_dtype

        model, tok = FastLanguageModel.from_pretrained(
            model_name=str(adapter_dir), max_seq_length=cfg.model.max_seq_length,
            dtype=None if cfg.model.dtype == "auto" else compute_dtype(cfg.model), load_in_4bit=cfg.model.load_in_4bit)
        model.save_pretrained_merged(str(out), tok, save_method="merged_16bit")
        how = "Unsloth save_pretrained_merged (merged_16bit)"
    else:
        model, tok = dequantized_with_adapter(ref, adapter_dir, cfg, merged_dtype())
        model = model.merge_and_unload()
        model.save_pretrained(out)
        tok.save_pretrained(out)
        how = "4-bit base dequantized + PEFT merge_and_unload"
    del model
    _free()
    files = sorted(p for p in out.rglob("*") if p.is_file())
    return {"dir": str(out), "method": how, "dtype": str(merged_dtype()).replace("torch.", ""),
            "bytes": sum(p.stat().st_size for p in files), "seconds": round(time.time() - t0, 1)}


def load_merged(path: str | Path, dtype=None):
    """A merged (or any full-weight) model folder, ready to generate, on the GPU when there is one."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"dtype": dtype or merged_dtype()}
    if torch.cuda.is_available():
        kw["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(str(path), **kw)
    model.eval()
    return model, AutoTokenizer.from_pretrained(str(path))


def greedy_answers(model, tok, prompts: list[str], max_new_tokens: int, template: str) -> list[str]:
    import torch

    tok.padding_side = "left"
    device = next(model.parameters()).device
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=adds_special_tokens(template)).to(device)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id,
                             eos_token_id=tok.eos_token_id)
    return [tok.decode(g, skip_special_tokens=True).strip() for g in out[:, enc["input_ids"].shape[1]:]]


def logits_agreement(reference, candidate, tok, prompts: list[str], template: str = "plain") -> dict:
    """Next-token logits of two models over every prompt position: relative RMS error and top-1 agreement."""
    import math

    import torch

    err_sq = ref_sq = 0.0
    agree = total = 0
    with torch.no_grad():
        for p in prompts:
            ids = tok(p, return_tensors="pt", add_special_tokens=adds_special_tokens(template))
            a = reference(**ids.to(next(reference.parameters()).device)).logits[0].float()
            b = candidate(**ids.to(next(candidate.parameters()).device)).logits[0].float().to(a.device)
            err_sq += float(((a - b) ** 2).sum())
            ref_sq += float((a ** 2).sum())
            agree += int((a.argmax(-1) == b.argmax(-1)).sum())
            total += a.shape[0]
    return {"positions": total, "logits_rel_rmse": math.sqrt(err_sq / max(ref_sq, 1e-30)),
            "top1_agreement": agree / max(total, 1)}


def compare_greedy(reference, ref_tok, candidate, cand_tok, prompts: list[str], max_new_tokens: int,
                   template: str) -> dict:
    """Greedy answers of two models on the same prompts: one row per prompt and whether they are identical."""
    a = greedy_answers(reference, ref_tok, prompts, max_new_tokens, template)
    b = greedy_answers(candidate, cand_tok, prompts, max_new_tokens, template)
    rows = [{"prompt": p[-160:], "adapter": x, "merged": y, "identical": x == y} for p, x, y in zip(prompts, a, b)]
    logits = logits_agreement(reference, candidate, ref_tok, prompts, template)
    # 16-bit weights round W + BA: greedy text can part at a near-tie token while the logits agree closely
    tolerance = MERGED_TOLERANCE[str(next(candidate.parameters()).dtype).replace("torch.", "")]
    return {"prompts": len(rows), "identical": sum(r["identical"] for r in rows), **logits,
            "tolerance": tolerance, "passed": logits["logits_rel_rmse"] <= tolerance,
            "rows": rows, "max_new_tokens": max_new_tokens}


def check_merged(cfg: RunConfig, ref: str, adapter_dir: str, merged_dir: str, prompts: list[str],
                 backend: str, max_new_tokens: int = 24) -> dict:
    """The merged model's greedy answers against the adapter model's (4-bit base + LoRA) on a few eval prompts."""
    from . import model as M

    adapter_model, tok = M.load_with_adapter(ref, adapter_dir, cfg.model, backend)
    merged, mtok = load_merged(merged_dir)
    try:
        return compare_greedy(adapter_model, tok, merged, mtok, prompts, max_new_tokens, cfg.data.template)
    finally:
        del adapter_model, merged
        _free()


def _free() -> None:
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
