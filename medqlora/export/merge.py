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

from medqlora.config import RunConfig
from medqlora.core.system import free_memory
from medqlora.data.prompts import adds_special_tokens

# Relative RMS logit error that rounding the merged weights to 16 bits stays within, used when the reference has no
# adapter to switch off: bf16 keeps 8 mantissa bits, fp16 11 (the offline default measured 3.4e-2 to 5.9e-2 in bf16).
MERGED_TOLERANCE = {"bfloat16": 1e-1, "float16": 2e-2, "float32": 1e-4}
MERGED_SHARE_OF_LORA_EFFECT = 0.25  # merged-vs-adapter error allowed, as a share of the base-vs-adapter distance
ROUNDING_MARGIN = 1.5  # ... but never below this many times the error rounding the merge to 16 bits causes


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

    from medqlora.training import model as M

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

        from medqlora.training.model import compute_dtype

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
    free_memory()
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


def prompt_logits(model, tok, prompts: list[str], template: str = "plain") -> list:
    """Next-token logits at every prompt position, in float32 on the CPU."""
    import torch

    device = next(model.parameters()).device
    with torch.no_grad():
        return [model(**tok(p, return_tensors="pt", add_special_tokens=adds_special_tokens(template)).to(device))
                .logits[0].float().cpu() for p in prompts]


def agreement(ref_logits: list, cand_logits: list) -> dict:
    """Relative RMS error and top-1 agreement of two models' logits over the same positions."""
    import math

    err = sum(float(((a - b) ** 2).sum()) for a, b in zip(ref_logits, cand_logits))
    norm = sum(float((a ** 2).sum()) for a in ref_logits)
    agree = sum(int((a.argmax(-1) == b.argmax(-1)).sum()) for a, b in zip(ref_logits, cand_logits))
    total = sum(a.shape[0] for a in ref_logits)
    return {"positions": total, "logits_rel_rmse": math.sqrt(err / max(norm, 1e-30)),
            "top1_agreement": agree / max(total, 1)}


def logits_agreement(reference, candidate, tok, prompts: list[str], template: str = "plain") -> dict:
    return agreement(prompt_logits(reference, tok, prompts, template), prompt_logits(candidate, tok, prompts, template))


def exact_merge_logits(cfg: RunConfig, ref: str, adapter_dir: str, prompts: list[str]) -> list | None:
    """Logits of the same merge done in float32 (the dequantized base plus the LoRA update, unrounded), or None where
    a float32 copy does not fit. The saved 16-bit merge differs from it only by rounding; a wrong merge (scaling,
    modules, base) is wrong in both and far from the adapter model. Rounding can drop much of a small LoRA update:
    where |BA| is under half a bf16 step of W, W + BA rounds back to W (the offline default after 10 steps: the bf16
    merge 5.9e-2 from the adapter model, the LoRA effect 1.7e-1)."""
    import torch

    model = None
    try:
        model, tok = dequantized_with_adapter(ref, adapter_dir, cfg, torch.float32)
        model = model.merge_and_unload()
        return prompt_logits(model, tok, prompts, cfg.data.template)
    except torch.OutOfMemoryError:  # a float32 copy of a large model on a small card: the 1/4 rule alone
        return None
    finally:
        del model
        free_memory()


def compare_greedy(reference, ref_tok, candidate, cand_tok, prompts: list[str], max_new_tokens: int,
                   template: str, exact_logits: list | None = None) -> dict:
    """Greedy answers of two models on the same prompts: one row per prompt and whether they are identical."""
    a = greedy_answers(reference, ref_tok, prompts, max_new_tokens, template)
    b = greedy_answers(candidate, cand_tok, prompts, max_new_tokens, template)
    rows = [{"prompt": p[-160:], "adapter": x, "merged": y, "identical": x == y} for p, x, y in zip(prompts, a, b)]
    ref_logits = prompt_logits(reference, ref_tok, prompts, template)
    cand_logits = prompt_logits(candidate, cand_tok, prompts, template)
    logits = agreement(ref_logits, cand_logits)
    rounding = agreement(exact_logits, cand_logits)["logits_rel_rmse"] if exact_logits else None
    # 16-bit weights round W + BA, so greedy text can part at a near-tie token while the logits agree closely. The
    # yardstick is the LoRA update's own effect: the merged model must sit far closer to the adapter model than the
    # base does (on the default run bf16 rounding gave 3-6%, the LoRA effect 49%), but never tighter than what rounding
    # this merge to 16 bits costs (`rounding`: the saved merge against the same merge in float32): after a short run
    # the LoRA effect is smaller than rounding (a tiny model after 3 steps: base distance 0.0129, a merge 0.0056).
    if hasattr(reference, "disable_adapter"):
        with reference.disable_adapter():
            base = agreement(ref_logits, prompt_logits(reference, ref_tok, prompts, template))["logits_rel_rmse"]
        floor = ROUNDING_MARGIN * rounding if rounding is not None else 0.0
        tolerance = max(MERGED_SHARE_OF_LORA_EFFECT * base, floor)
        yardstick = {"base_vs_adapter_rel_rmse": base, "rounding_rel_rmse": rounding,
                     "exact_merge_vs_adapter_rel_rmse": agreement(ref_logits, exact_logits)["logits_rel_rmse"]
                     if exact_logits else None,
                     "tolerance_from": f"{ROUNDING_MARGIN} x this merge's own 16-bit rounding"
                     if floor > MERGED_SHARE_OF_LORA_EFFECT * base else "1/4 of the LoRA effect"}
    else:
        tolerance = MERGED_TOLERANCE[str(next(candidate.parameters()).dtype).replace("torch.", "")]
        yardstick = {}
    return {"prompts": len(rows), "identical": sum(r["identical"] for r in rows), **logits, **yardstick,
            "tolerance": tolerance, "passed": logits["logits_rel_rmse"] <= tolerance,
            "rows": rows, "max_new_tokens": max_new_tokens}


def check_merged(cfg: RunConfig, ref: str, adapter_dir: str, merged_dir: str, prompts: list[str],
                 backend: str, max_new_tokens: int = 24) -> dict:
    """The merged model's greedy answers against the adapter model's (4-bit base + LoRA) on a few eval prompts."""
    from medqlora.training import model as M

    adapter_model, tok = M.load_with_adapter(ref, adapter_dir, cfg.model, backend)
    exact = exact_merge_logits(cfg, ref, adapter_dir, prompts)  # loaded and freed before the merged model
    merged, mtok = load_merged(merged_dir, dtype=M.compute_dtype(cfg.model))  # the adapter model's compute dtype
    try:
        return compare_greedy(adapter_model, tok, merged, mtok, prompts, max_new_tokens, cfg.data.template, exact)
    finally:
        del adapter_model, merged
        free_memory()
