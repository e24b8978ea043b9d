"""GGUF files (llama.cpp, Ollama, LM Studio) written from a merged model with the `gguf` package's writer,
tensor-name maps and quantizers: no llama.cpp build needed.

Covered: Llama-architecture models (Llama 3.x, SmolLM2, DeepSeek-R1-Distill-Llama) and Qwen2 (DeepSeek-R1-
Distill-Qwen) with byte-level BPE tokenizers, at the quantizations the package can make in Python (f32, f16,
bf16, q8_0, q5_0, q5_1, q4_0, q4_1). K-quants (q4_k_m, ...)
are made by llama.cpp's own quantizer through llama-cpp-python where it is installed (pip install 'medqlora[gguf]');
elsewhere asking for one raises GGUFUnsupported, and the export notebook says so while the other formats are still
exported.
Q/K projections are permuted as llama.cpp's convert_hf_to_gguf.py does (transformers undoes it when reading).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from medqlora.config import GGUF_MAKEABLE, NEEDS_LLAMA_CPP
from medqlora.export.gguf_meta import GGUFUnsupported, tokenizer_pre  # noqa: F401  (the stage names them here)

# Quantization -> gguf file type, for the names the schema accepts (config.GGUF_MAKEABLE).
MAKEABLE = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0",
            "q5_0": "MOSTLY_Q5_0", "q5_1": "MOSTLY_Q5_1", "q4_0": "MOSTLY_Q4_0", "q4_1": "MOSTLY_Q4_1"}
assert tuple(MAKEABLE) == GGUF_MAKEABLE
ARCHITECTURES = {"llama": "LLAMA", "qwen2": "QWEN2"}
# Relative RMS error of the logits, GGUF read back against the merged model, that each quantization allows.
# f16 rounds each weight to 2^-11 (a correct export reads back within 1e-3 on the tiny model); 1e-2 let a GGUF
# without llama.cpp's Q/K row permutation through (0.0092, 92% top-1 agreement), so f16 allows 3e-3.
TOLERANCE = {"f32": 1e-4, "f16": 3e-3, "bf16": 2e-2, "q8_0": 5e-2, "q5_0": 0.15, "q5_1": 0.15, "q4_0": 0.3,
             "q4_1": 0.3,
             # K-quants, by their bits per weight as the legacy ones above (llama.cpp's quantizer, [gguf] extra)
             "q6_k": 0.1, "q5_k_s": 0.15, "q5_k_m": 0.15, "q4_k_s": 0.3, "q4_k_m": 0.3, "q3_k_s": 0.45,
             "q3_k_m": 0.45, "q3_k_l": 0.45, "q2_k": 0.6}
assert set(TOLERANCE) == set(GGUF_MAKEABLE) | set(NEEDS_LLAMA_CPP)


def k_quant_tool() -> bool:
    """Whether llama.cpp's own quantizer is importable here (llama-cpp-python: pip install 'medqlora[gguf]')."""
    from medqlora.config import export as export_section

    return export_section.llama_cpp_installed()


def check_supported(model_type: str, quant: str) -> None:
    if quant in NEEDS_LLAMA_CPP and not k_quant_tool():
        raise GGUFUnsupported(
            f"export.gguf_quant {quant!r} is a llama.cpp K-quant, which the gguf Python package cannot make and "
            f"llama-cpp-python (its quantizer) is not installed here: pip install 'medqlora[gguf]' (builds llama.cpp, "
            f"about 13 minutes on 2 CPU cores), or choose one of {sorted(MAKEABLE)} (q8_0 is near-lossless), or "
            f"quantize the exported f16 GGUF with llama.cpp: llama-quantize model-f16.gguf model-{quant}.gguf "
            f"{quant.upper()}")
    if quant not in MAKEABLE and quant not in NEEDS_LLAMA_CPP:
        raise GGUFUnsupported(f"export.gguf_quant {quant!r} is unknown; choose one of {sorted(MAKEABLE)}")
    if model_type not in ARCHITECTURES:
        raise GGUFUnsupported(
            f"GGUF export covers {sorted(ARCHITECTURES)} models, not {model_type!r}; convert the exported merged "
            "model with llama.cpp's convert_hf_to_gguf.py")


def _permute(w, n_head: int, n_head_kv: int | None):
    """llama.cpp's Q/K row order (interleaved rotary halves); transformers' GGUF reader reverses it."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _llama3_rope_factors(cfg: dict, head_dim: int):
    """The rope_freqs tensor llama.cpp expects for Llama 3.1+ rope scaling (as convert_hf_to_gguf.py computes it)."""
    import numpy as np

    rs = cfg.get("rope_scaling") or cfg.get("rope_parameters") or {}
    if rs.get("rope_type") != "llama3":
        return None
    base = rs.get("rope_theta", cfg.get("rope_theta", 10000.0))
    factor, low, high = rs.get("factor", 8.0), rs.get("low_freq_factor", 1.0), rs.get("high_freq_factor", 4.0)
    old_ctx = rs.get("original_max_position_embeddings", 8192)
    out = []
    for freq in 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim)):
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(out, dtype=np.float32)


def write_gguf(model_dir: str | Path, out_file: str | Path, quant: str = "q8_0", name: str = "model",
               tokenizer_pre: str | None = None, general: dict | None = None) -> dict:
    """Write `out_file` from a merged model folder (safetensors + config + tokenizer). `general`: the base model's
    identity and license (gguf_meta.general_metadata). A K-quant is written as f16, then quantized by llama.cpp."""
    from medqlora.export import quantize

    model_dir, out_file = Path(model_dir), Path(out_file)
    cfg = json.loads((model_dir / "config.json").read_text())
    check_supported(cfg.get("model_type"), quant)
    if quant in NEEDS_LLAMA_CPP:
        t0 = time.time()
        f16 = out_file.with_name(out_file.stem + ".f16-for-quantize.gguf")
        try:
            made = write_gguf(model_dir, f16, "f16", name, tokenizer_pre, general)
            counts = quantize.k_quantize(f16, out_file, quant)
        finally:
            f16.unlink(missing_ok=True)
        return {**made, "file": str(out_file), "quant": quant, "bytes": out_file.stat().st_size, "tensors": counts,
                "made_by": "llama.cpp llama_model_quantize (llama-cpp-python) from an f16 GGUF",
                "seconds": round(time.time() - t0, 1)}
    return _write(model_dir, out_file, quant, name, tokenizer_pre, general, cfg)


def _write(model_dir: Path, out_file: Path, quant: str, name: str, pre: str | None, general: dict | None,
           cfg: dict) -> dict:
    import gguf
    import numpy as np
    import torch
    from safetensors import safe_open

    from medqlora.export import gguf_meta

    t0 = time.time()
    arch = getattr(gguf.MODEL_ARCH, ARCHITECTURES[cfg["model_type"]])
    n_layers, n_head = cfg["num_hidden_layers"], cfg["num_attention_heads"]
    n_kv = cfg.get("num_key_value_heads", n_head)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    names = gguf.get_tensor_name_map(arch, n_layers)
    qtype = getattr(gguf.GGMLQuantizationType, quant.upper())
    files = sorted(model_dir.glob("*.safetensors"))
    n_params = 0
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            n_params += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys()
                            if not (k == "lm_head.weight" and cfg.get("tie_word_embeddings")))
    tmp = out_file.with_name(out_file.name + ".tmp")  # a half-written GGUF never sits under its final name
    w = gguf.GGUFWriter(str(tmp), gguf.MODEL_ARCH_NAMES[arch])
    meta = gguf_meta.write_general(w, general, name, n_params)
    w.add_context_length(cfg.get("max_position_embeddings", 2048))
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(head_dim)
    rope = cfg.get("rope_parameters") or {}
    w.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    w.add_layer_norm_rms_eps(cfg.get("rms_norm_eps", 1e-5))
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(getattr(gguf.LlamaFileType, MAKEABLE[quant]))
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tokens, types, pre = gguf_meta.vocab_fields(model_dir, cfg["vocab_size"], pre)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(model_dir, load_merges=True, n_vocab=len(tokens))
    adds = gguf_meta.adds_bos_eos(model_dir)
    special.add_special_token.update(adds)  # what transformers does to a plain text, said explicitly
    special.add_to_gguf(w, quiet=True)

    counts = {}
    for f in files:
        with safe_open(str(f), framework="pt") as st:
            for key in st.keys():
                t = st.get_tensor(key).to(torch.float32)
                if key == "lm_head.weight" and cfg.get("tie_word_embeddings"):
                    continue  # tied: llama.cpp reads the output layer from token_embd
                if key.endswith("q_proj.weight") and arch == gguf.MODEL_ARCH.LLAMA:
                    t = _permute(t, n_head, n_head)
                elif key.endswith("k_proj.weight") and arch == gguf.MODEL_ARCH.LLAMA:
                    t = _permute(t, n_head, n_kv)
                gname = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if gname is None:
                    raise GGUFUnsupported(f"tensor {key} has no GGUF name for {cfg['model_type']}")
                data = t.numpy()
                block = gguf.GGML_QUANT_SIZES[qtype][0]
                # 1-D tensors (norms, biases) stay f32, as in llama.cpp; quantized rows must hold whole blocks
                if data.ndim == 1 or data.shape[-1] % block:
                    tq, q = gguf.GGMLQuantizationType.F32, data
                else:
                    tq, q = qtype, gguf.quants.quantize(data, qtype)
                w.add_tensor(gname, q, raw_dtype=tq if q.dtype == np.uint8 or tq == gguf.GGMLQuantizationType.BF16
                             else None)
                counts[tq.name] = counts.get(tq.name, 0) + 1
    factors = _llama3_rope_factors(cfg, head_dim)
    if factors is not None and arch == gguf.MODEL_ARCH.LLAMA:
        w.add_tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", factors)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    tmp.rename(out_file)
    return {"file": str(out_file), "quant": quant, "bytes": out_file.stat().st_size, "tensors": counts,
            "tokenizer_pre": pre, "tokens": len(tokens), "add_bos_token": adds["bos"],
            "general": {k: v for k, v in meta.items() if k in ("name", "basename", "size_label", "license",
                                                                 "organization", "base_models")},
            "made_by": "gguf package writer", "seconds": round(time.time() - t0, 1)}


def vocab_rows(gguf_file: str | Path) -> dict:
    """Token count, the embedding's and output layer's rows and the vocab_size key of a GGUF: llama.cpp refuses
    a file whose token_embd rows differ from its token count."""
    from medqlora.core.gguf_kv import read_kv, tensor_shapes

    kv, shapes = read_kv(gguf_file), tensor_shapes(gguf_file)  # the header alone (GGUFReader: seconds per 100k tokens)
    rows = {name: int(shapes[name][1]) for name in ("token_embd.weight", "output.weight") if name in shapes}
    return {"tokens": len(kv["tokenizer.ggml.tokens"]), "embedding_rows": rows.get("token_embd.weight"),
            "output_rows": rows.get("output.weight"), "vocab_size": kv.get(f"{kv['general.architecture']}.vocab_size")}


def header_shape(gguf_file: str | Path) -> dict:
    """The architecture a GGUF's header says, by transformers' config names (vocab_size: the token count where the
    header has no {arch}.vocab_size, as llama.cpp and transformers take it)."""
    from medqlora.core.gguf_kv import read_kv

    kv = read_kv(gguf_file)
    a = kv["general.architecture"]
    return {"hidden_size": kv.get(f"{a}.embedding_length"), "num_hidden_layers": kv.get(f"{a}.block_count"),
            "num_attention_heads": kv.get(f"{a}.attention.head_count"),
            "num_key_value_heads": kv.get(f"{a}.attention.head_count_kv"),
            "intermediate_size": kv.get(f"{a}.feed_forward_length"),
            "vocab_size": kv.get(f"{a}.vocab_size", len(kv.get("tokenizer.ggml.tokens") or []))}


def check_gguf(gguf_file: str | Path, merged_dir: str | Path, prompts: list[str], quant: str,
               source_pre: str | None = None) -> dict:
    """Read the GGUF back and compare it with the merged model on the same prompts: the token list against the
    embedding rows (what llama.cpp checks on load), logits with transformers (relative RMS error against the
    quantization's tolerance, top-1 agreement), the tokenizer (same ids, read from the GGUF's own token list and by
    llama.cpp where installed, and its fields: gguf_tokenizer_check) and the architecture metadata. Weights are
    read with the merged model's config, so rope scaling that transformers' GGUF reader ignores (Llama 3.1+) does not
    blur the weight check; the metadata is compared separately."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    gguf_file, merged_dir = Path(gguf_file), Path(merged_dir)
    vocab = vocab_rows(gguf_file)
    vocab_ok = vocab["tokens"] == vocab["embedding_rows"] and vocab["output_rows"] in (None, vocab["tokens"])
    ref_cfg = AutoConfig.from_pretrained(str(merged_dir))
    ref = AutoModelForCausalLM.from_pretrained(str(merged_dir), dtype=torch.float32)
    back = AutoModelForCausalLM.from_pretrained(str(gguf_file.parent), gguf_file=gguf_file.name, config=ref_cfg,
                                                dtype=torch.float32)
    n_bytes = 2 * 4 * sum(p.numel() for p in ref.parameters())
    device = "cuda" if torch.cuda.is_available() and n_bytes < 0.8 * torch.cuda.mem_get_info()[0] else "cpu"
    ref, back = ref.to(device).eval(), back.to(device).eval()
    from medqlora.export.gguf_meta import load_tokenizer
    from medqlora.export.gguf_tokenizer_check import check_tokenizer

    tok = load_tokenizer(merged_dir)
    tcheck = check_tokenizer(gguf_file, merged_dir, prompts, source_pre)
    same_ids = tcheck["same_ids"]
    from medqlora.export.merge import logits_agreement

    logits = logits_agreement(ref, back, tok, prompts)
    meta = header_shape(gguf_file)  # as llama.cpp reads it: the header's keys (transformers would parse it again)
    meta_diff = {k: (v, getattr(ref_cfg, k, None)) for k, v in meta.items() if v != getattr(ref_cfg, k, None)}
    meta_diff.update(tcheck["differs"])  # tokenizer fields (token list, types, bos/eos/pad, add_bos, pre, template)
    del ref, back
    return {"prompts": len(prompts), **logits, "tolerance": TOLERANCE[quant], "vocab": vocab, "vocab_ok": vocab_ok,
            "tokenizer_same_ids": f"{same_ids}/{len(prompts)}", "tokenizer_read_by": tcheck["read_by"],
            "llama_cpp_same_ids": tcheck["llama_cpp_same_ids"], "metadata_differs": meta_diff,
            "passed": (logits["logits_rel_rmse"] <= TOLERANCE[quant] and same_ids == len(prompts) and not meta_diff
                       and vocab_ok)}
