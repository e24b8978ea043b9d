"""Which attention kernel packed rows take in this process, as Unsloth's own dispatch decides it: flash-attn's varlen
kernel, xformers' block-diagonal kernel, torch's varlen kernel, SDPA run once per segment, or SDPA with a dense L x L
block-diagonal mask (the one path whose memory grows with the square of the micro-batch's tokens). The train stage
names it among its optimizations, the memory estimate counts the dense mask only where it is built, and the
benchmarks label each setup with it. Read from Unsloth once it is imported (the train stage imports it first);
before that, or without Unsloth, from what is installed."""
from __future__ import annotations

import importlib.util
import os
import sys

DISPATCH = "unsloth.utils.attention_dispatch"


def _segments_env() -> bool:
    return os.environ.get("UNSLOTH_SDPA_PACKED_SEGMENTS", "1").lower() not in ("0", "false", "no", "off")


def attention_path(import_unsloth: bool = False) -> dict:
    """{'source': 'unsloth' | 'installed', 'packed': kernel for packed rows, 'dense_mask': bool, ...}.
    Unsloth's dispatch module is read only when already imported, unless import_unsloth."""
    ad = sys.modules.get(DISPATCH)
    if ad is None and import_unsloth and importlib.util.find_spec("unsloth") is not None:
        try:
            import unsloth.utils.attention_dispatch as ad  # noqa: F811
        except Exception:  # noqa: BLE001 (no GPU, or an Unsloth that does not import: the installed view)
            ad = None
    installed = {name: importlib.util.find_spec(name) is not None for name in ("flash_attn", "xformers")}
    if ad is None:
        # as Unsloth would choose: flash-attn, else xformers, else SDPA per segment (or densely with segments off)
        packed = ("flash_varlen" if installed["flash_attn"] else "xformers" if installed["xformers"]
                  else "sdpa_segments" if _segments_env() else "sdpa_dense")
        return {"source": "installed", "packed": packed, "dense_mask": packed == "sdpa_dense",
                "flash_attn": installed["flash_attn"], "xformers": installed["xformers"],
                "xformers_installed": installed["xformers"]}
    flash, xf = bool(getattr(ad, "HAS_FLASH_ATTENTION", False)), bool(getattr(ad, "HAS_XFORMERS", False))
    segments = bool(getattr(ad, "_SDPA_PACKED_SEGMENTS", True))
    varlen = getattr(ad, "_TORCH_VARLEN_ATTN", None) is not None
    try:
        backend = ad.select_attention_backend(use_varlen=True)
    except Exception:  # noqa: BLE001 (an Unsloth without this function: the same order by hand)
        backend = "flash_varlen" if flash else "xformers" if xf else "sdpa"
    packed = backend if backend != "sdpa" else ("torch_varlen" if varlen and segments else
                                                "sdpa_segments" if segments else "sdpa_dense")
    return {"source": "unsloth", "packed": packed, "dense_mask": packed == "sdpa_dense", "flash_attn": flash,
            "xformers": xf, "xformers_installed": installed["xformers"], "torch_varlen": varlen,
            "sdpa_segments": segments}


# Steady packed training on the Llama-3.2-1B shape, H200, torch 2.11, Unsloth 2026.10.9 (BENCHMARKS.md, 2026-12-02):
# the train stage with xformers 0.0.35 against per-segment SDPA, same call and data.
XFORMERS_GAIN = "3.4x the tokens/s"
KERNELS = {"flash_varlen": "flash-attn's varlen kernel",
           "xformers": "xformers' block-diagonal causal kernel", "torch_varlen": "torch's varlen kernel",
           "sdpa_segments": "SDPA once per example (no dense mask)",
           "sdpa_dense": "SDPA with a dense L x L mask (memory grows with the square of the tokens a micro-batch)"}


def describe(path: dict) -> str:
    """'attention for packed rows: xformers' block-diagonal causal kernel', plus why xformers is not used where it
    is installed but does not load (built for another torch: Unsloth falls back to SDPA)."""
    line = f"attention for packed rows: {KERNELS.get(path['packed'], path['packed'])}"
    if path["packed"] in ("sdpa_segments", "sdpa_dense"):
        why = ("xformers is installed but does not load with this torch" if path.get("xformers_installed")
               else "no xformers or flash-attn")
        line += (f" ({why}; an xformers built for this torch attends a packed row in one kernel: {XFORMERS_GAIN} "
                 "on a 1B model, BENCHMARKS.md)")
    return line


def dense_packed_mask() -> bool:
    """Whether packed rows are attended through a dense L x L mask here (the memory estimate's quadratic term)."""
    return attention_path()["dense_mask"]
