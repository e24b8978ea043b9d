"""Which attention path Unsloth takes in this process (for the benchmarks' rows): flash-attn, xformers or SDPA,
for packed / padding-free rows (varlen) and for dense rows, as its own dispatch (unsloth.utils.attention_dispatch)
decides. Without Unsloth: the transformers path."""
from __future__ import annotations


def attention_path() -> dict:
    try:
        import unsloth.utils.attention_dispatch as AD
    except Exception as e:  # noqa: BLE001 (no Unsloth here: transformers' own attention)
        return {"unsloth": False, "error": str(e)[:100]}
    out = {"flash_attn": bool(getattr(AD, "HAS_FLASH_ATTENTION", False)),
           "xformers": bool(getattr(AD, "HAS_XFORMERS", False)),
           "native_beats_xformers": bool(getattr(AD, "_NATIVE_BEATS_XFORMERS", False)),
           "packed_segments": bool(getattr(AD, "_SDPA_PACKED_SEGMENTS", False)),
           "torch_varlen": getattr(AD, "_TORCH_VARLEN_ATTN", None) is not None}
    try:
        out["packed_backend"] = AD.select_attention_backend(use_varlen=True)
        out["dense_backend"] = AD.select_attention_backend(use_varlen=False)
    except Exception as e:  # noqa: BLE001
        out["select_error"] = str(e)[:100]
    return out


def label(path: dict) -> str:
    """One line for a table: 'packed SDPA, dense xformers (xformers importable)'."""
    if not path.get("unsloth", True):
        return "transformers SDPA"
    have = [k for k in ("flash_attn", "xformers") if path.get(k)]
    return (f"packed {path.get('packed_backend', '?')}, dense {path.get('dense_backend', '?')} "
            f"({'+'.join(have) or 'neither flash-attn nor xformers'} importable)")
