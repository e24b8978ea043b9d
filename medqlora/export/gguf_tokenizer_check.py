"""An exported GGUF's tokenizer against the merged model's, read as GGUFs are read for real.

transformers' GGUF converter cannot be the judge: it hard-codes a few special tokens per architecture and splits
the others (R1-Distill-Qwen's <｜User｜> into five byte pieces), so a correct file failed on 0/3 prompts. Here the
GGUF's own token list, types and merges are read (gguf_tokenizer.rebuild, llama.cpp's rules), and llama.cpp itself
tokenizes where llama-cpp-python is installed; the tokenizer fields are compared one by one with the merged model's.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path


def _llama_cpp_ids(gguf_file: Path, prompts: list[str]) -> list[list[int]] | None:
    """llama.cpp's ids for each prompt (special tokens parsed, no bos added), or None without llama-cpp-python."""
    if importlib.util.find_spec("llama_cpp") is None:
        return None
    import llama_cpp

    llm = llama_cpp.Llama(str(gguf_file), vocab_only=True, verbose=False)
    try:
        return [llm.tokenize(p.encode("utf-8"), add_bos=False, special=True) for p in prompts]
    finally:
        llm.close()


def field_differences(v, tok, model_dir: Path, source_pre: str | None = None) -> dict:
    """{field: (GGUF, merged model)} for every tokenizer field of the GGUF `v` (gguf_tokenizer.GGUFVocab) that is not
    what the merged model's tokenizer `tok` has: the token at each id (ids past the tokenizer: UNUSED padding only),
    each added token's type, bos / eos / pad, add_bos, the pre-tokenizer and the chat template."""
    import json

    from medqlora.export.gguf_meta import bos_token, looks_special, pre_from_tokenizer
    from medqlora.training.gguf_tokenizer import CONTROL, UNUSED, USER_DEFINED

    out: dict = {}
    vocab = tok.get_vocab()
    wrong = [(i, t) for t, i in vocab.items() if i >= len(v.tokens) or v.tokens[i] != t]
    if wrong:
        i, t = min(wrong)
        out["tokenizer.ggml.tokens"] = (f"{len(wrong)} ids differ, first {i}: "
                                        f"{v.tokens[i] if i < len(v.tokens) else None!r}", repr(t))
    have = set(vocab.values())
    extra = [i for i in range(len(v.tokens)) if i not in have and v.types[i] != UNUSED]
    if extra:
        out["tokenizer.ggml.token_type (ids the model has no token for)"] = (
            [f"{v.tokens[i]!r} ({i})" for i in extra[:5]], "UNUSED padding")
    types = []
    for i, added in tok.added_tokens_decoder.items():
        want = CONTROL if added.special or looks_special(added.content) else USER_DEFINED
        if i < len(v.types) and v.types[i] != want:
            types.append((f"{added.content!r} ({i}): {v.types[i]}", want))
    if types:
        out["tokenizer.ggml.token_type"] = (types[0][0], types[0][1])
    for key, want, have_ in (("bos_token_id", tok.bos_token_id, v.bos), ("eos_token_id", tok.eos_token_id, v.eos),
                             ("padding_token_id", tok.pad_token_id, v.pad)):
        if want is not None and have_ != want:
            out[f"tokenizer.ggml.{key}"] = (have_, want)
    adds = tok("Hello")["input_ids"][:1] == [tok.bos_token_id] if tok.bos_token_id is not None else False
    if v.add_bos is not None and bool(v.add_bos) != adds:
        out["tokenizer.ggml.add_bos_token"] = (bool(v.add_bos), adds)
    # The pre-tokenizer a GGUF base's own file names (source_pre) is what llama.cpp applied to it: the export must
    # say the same. transformers' GGUF converter writes no digit split for SmolLM's ('smollm' read back as 'gpt-2'),
    # so the converted tokenizer.json's structure decides only where the source names none.
    tj = model_dir / "tokenizer.json"
    pre = source_pre or (pre_from_tokenizer(json.loads(tj.read_text()), bos_token(model_dir)) if tj.is_file()
                         else "default")
    if pre != "default" and v.pre != pre:
        out["tokenizer.ggml.pre"] = (v.pre, pre)
    if tok.chat_template and v.chat_template != tok.chat_template:
        out["tokenizer.chat_template"] = ((v.chat_template or "")[:60], tok.chat_template[:60])
    return out


def check_tokenizer(gguf_file: str | Path, model_dir: str | Path, prompts: list[str],
                    source_pre: str | None = None) -> dict:
    """The GGUF's tokenizer against the merged model's: the same ids on each prompt by the GGUF's own token list
    (and by llama.cpp where it is installed), and the fields that differ (field_differences)."""
    from medqlora.export.gguf_meta import load_tokenizer
    from medqlora.training.gguf_tokenizer import TokenizerMismatch, read_vocab, rebuild

    gguf_file, model_dir = Path(gguf_file), Path(model_dir)
    tok = load_tokenizer(model_dir)
    v = read_vocab(gguf_file)
    plain = lambda t, p: t(p, add_special_tokens=False)["input_ids"]  # noqa: E731  (bos: the add_bos_token field)
    want = [plain(tok, p) for p in prompts]
    try:
        by_file = [plain(rebuild(v), p) for p in prompts]
        how = "the GGUF's own token list, types and merges (llama.cpp's rules)"
    except TokenizerMismatch as e:  # a pre-tokenizer this package cannot rebuild: llama.cpp alone can say
        by_file, how = None, f"not by its token list ({e})"
    cpp = _llama_cpp_ids(gguf_file, prompts)
    same = [(by_file is None or by_file[i] == w) and (cpp is None or cpp[i] == w) for i, w in enumerate(want)]
    if by_file is None and cpp is None:
        same = [False] * len(prompts)
    return {"same_ids": sum(same), "llama_cpp_same_ids": None if cpp is None else
            f"{sum(c == w for c, w in zip(cpp, want))}/{len(prompts)}", "read_by": how + (
            "; llama.cpp (llama-cpp-python)" if cpp is not None else "; llama.cpp not installed here"),
            "differs": field_differences(v, tok, model_dir, source_pre)}
