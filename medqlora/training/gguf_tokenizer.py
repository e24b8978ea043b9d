"""A GGUF's own tokenizer, as llama.cpp reads it, and a check of the transformers tokenizer converted from it.

transformers' GGUF converter hard-codes a few special tokens per architecture (Qwen2: <|endoftext|>, <|im_start|>,
<|im_end|>) and loses the rest: for DeepSeek-R1-Distill-Qwen it splits <｜User｜> and <think> into byte pieces, has
no bos, and puts eos and pad at id 152064, past the last embedding row. Training on that tokenizer fails late (an
index error) or, worse, learns the wrong ids. The GGUF's token list, token types, merges and bos/eos/pad ids are the
truth: `problems` compares a tokenizer with them, `rebuild` makes the tokenizer from them by llama.cpp's rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

# gguf.TokenType values (kept here so the check needs no gguf import).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# llama.cpp's pre-tokenizers as a tokenizer.json writes them: the split regex of each (llama-vocab.cpp); qwen2 and
# deepseek-r1-qwen split alike (they differ in the tokens around the text, which the token list carries).
_QWEN2 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
          r"\s+(?!\S)|\s+")
_LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
           r"\s+(?!\S)|\s+")
SPLIT_REGEX = {"qwen2": _QWEN2, "deepseek-r1-qwen": _QWEN2, "llama-bpe": _LLAMA3}
REBUILDABLE = sorted([*SPLIT_REGEX, "smollm", "gpt-2"])


class TokenizerMismatch(ValueError):
    """The tokenizer disagrees with the model's own GGUF and could not be rebuilt from it."""


@dataclass
class GGUFVocab:
    """What a GGUF says about its tokenizer (tokenizer.ggml.* and tokenizer.chat_template)."""
    path: str
    model: str
    tokens: list[str]
    types: list[int]
    merges: list[str] = field(repr=False)
    pre: str | None = None
    bos: int | None = None
    eos: int | None = None
    pad: int | None = None
    unk: int | None = None
    add_bos: bool | None = None
    add_eos: bool | None = None
    chat_template: str | None = None

    def whole(self) -> dict[str, int]:
        """The tokens llama.cpp matches whole in text (CONTROL and USER_DEFINED): {text: id}."""
        return {self.tokens[i]: i for i, t in enumerate(self.types) if t in (CONTROL, USER_DEFINED)}

    def name(self, i: int | None) -> str:
        return "none" if i is None else f"{self.tokens[i]!r} ({i})" if 0 <= i < len(self.tokens) else f"id {i}"


def read_vocab(path: str | Path) -> GGUFVocab:
    """The tokenizer of a GGUF, from its header alone."""
    from medqlora.core.gguf_kv import read_kv

    kv = read_kv(path)
    if "tokenizer.ggml.tokens" not in kv:
        raise TokenizerMismatch(f"{path} has no tokenizer (no tokenizer.ggml.tokens): give a GGUF with its tokenizer")
    g = lambda k: kv.get(f"tokenizer.ggml.{k}")  # noqa: E731
    n = len(kv["tokenizer.ggml.tokens"])
    types = [int(t) for t in g("token_type")] if g("token_type") is not None else [NORMAL] * n
    return GGUFVocab(str(path), g("model") or "", list(kv["tokenizer.ggml.tokens"]), types, list(g("merges") or []),
                     g("pre"), g("bos_token_id"), g("eos_token_id"), g("padding_token_id"), g("unknown_token_id"),
                     g("add_bos_token"), g("add_eos_token"), kv.get("tokenizer.chat_template"))


def problems(tok, v: GGUFVocab, rows: int) -> list[str]:
    """How `tok` disagrees with the GGUF it came from (empty: it agrees): every CONTROL / USER_DEFINED token must be
    one id, its own; bos / eos / pad as the GGUF says; no id at or past the embedding's `rows`; a plain text gets a
    bos exactly where the GGUF adds one."""
    out = []
    split = []
    for text, i in v.whole().items():
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if ids != [i]:
            split.append(f"{text!r} -> {ids} (the GGUF: [{i}])")
    if split:
        out.append(f"{len(split)} of the GGUF's {len(v.whole())} control / user-defined tokens are not their one id: "
                   + "; ".join(split[:6]) + (f"; ... {len(split) - 6} more" if len(split) > 6 else ""))
    for role, want in (("bos", v.bos), ("eos", v.eos), ("pad", v.pad)):
        have = getattr(tok, f"{role}_token_id")
        if want is not None and have != want:
            out.append(f"{role} is {tok.convert_ids_to_tokens(have)!r} ({have}) where the GGUF says {v.name(want)}"
                       if have is not None else f"{role} is None where the GGUF says {v.name(want)}")
    past = sorted({i for i in tok.get_vocab().values() if i >= rows})
    if past:
        names = [f"{tok.convert_ids_to_tokens(i)!r} ({i})" for i in past[:6]]
        out.append(f"{len(past)} token ids at or past the embedding's {rows} rows: {', '.join(names)}")
    if v.add_bos is not None and v.bos is not None:
        ids = tok("Hello")["input_ids"]
        if (ids[:1] == [v.bos]) != bool(v.add_bos):
            out.append(f"a plain text gets {'no ' if v.add_bos else 'a '}bos where the GGUF's add_bos_token is "
                       f"{bool(v.add_bos)} ('Hello' -> {ids})")
    return out


def _pre_tokenizer(pre: str | None, path: str):
    from tokenizers import Regex, pre_tokenizers

    if pre in SPLIT_REGEX:
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(SPLIT_REGEX[pre]), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    if pre == "gpt-2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    raise TokenizerMismatch(f"{path}: its pre-tokenizer {pre!r} is not one this package can rebuild ({REBUILDABLE}); "
                            "give the model as a transformers folder (its tokenizer.json) instead of the GGUF")


def rebuild(v: GGUFVocab):
    """A transformers tokenizer made from the GGUF by llama.cpp's rules: the byte-level BPE vocabulary and merges,
    the split regex of its pre-tokenizer, CONTROL tokens as special added tokens and USER_DEFINED ones as added
    tokens that are not special (both matched whole, one id each), UNUSED padding rows left out (as in the hub's
    tokenizer.json), bos / eos / pad / add_bos as the GGUF says, and its chat template."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, processors
    from transformers import PreTrainedTokenizerFast

    if v.model != "gpt2":
        raise TokenizerMismatch(f"{v.path}: tokenizer.ggml.model {v.model!r} is not byte-level BPE ('gpt2'), which "
                                "is what this package rebuilds; give the model as a transformers folder instead")
    vocab = {t: i for i, (t, ty) in enumerate(zip(v.tokens, v.types)) if ty != UNUSED}
    merges = [tuple(m.split(" ", 1)) for m in v.merges]
    tk = Tokenizer(models.BPE(vocab, merges, fuse_unk=False, byte_fallback=False))
    if v.pre in SPLIT_REGEX:
        tk.normalizer = normalizers.NFC()  # as Qwen2's and Llama 3's tokenizer.json have it
    tk.pre_tokenizer = _pre_tokenizer(v.pre, v.path)
    tk.decoder = decoders.ByteLevel()
    whole = sorted(v.whole().items(), key=lambda x: x[1])  # in id order: each lands on its own id
    tk.add_tokens([AddedToken(t, special=False, normalized=False) for t, i in whole if v.types[i] == USER_DEFINED])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, i in whole if v.types[i] == CONTROL])
    bos = v.tokens[v.bos] if v.bos is not None else None
    eos = v.tokens[v.eos] if v.eos is not None else None
    head = [(bos, v.bos)] if v.add_bos and bos else []
    tail = [(eos, v.eos)] if v.add_eos and eos else []
    if head or tail:  # what transformers adds around a text: the GGUF's add_bos_token / add_eos_token
        one = lambda part: " ".join([f"{t}:0" for t, _ in head] + [part] + [f"{t}:0" for t, _ in tail])  # noqa: E731
        tk.post_processor = processors.TemplateProcessing(single=one("$A:0"), pair=one("$A:0") + " " + one("$B:1"),
                                                          special_tokens=list(dict(head + tail).items()))
    else:
        tk.post_processor = processors.ByteLevel(trim_offsets=False)
    name = lambda i: v.tokens[i] if i is not None else None  # noqa: E731
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token=bos, eos_token=eos, pad_token=name(v.pad),
                                   unk_token=name(v.unk), chat_template=v.chat_template,
                                   clean_up_tokenization_spaces=False, model_max_length=131072)


def generation_ids(path: str | Path):
    """A GenerationConfig with the GGUF's bos / eos / pad ids, as transformers gives a model loaded from it."""
    from transformers import GenerationConfig

    v = read_vocab(path)
    return GenerationConfig(bos_token_id=v.bos, eos_token_id=v.eos, pad_token_id=v.pad)


def embedding_rows(path: str | Path) -> int:
    """The rows of the GGUF's token embedding (its token count where the header has no token_embd)."""
    from medqlora.core.gguf_kv import tensor_shapes

    shape = tensor_shapes(path).get("token_embd.weight")
    return int(shape[1]) if shape else len(read_vocab(path).tokens)


def agreeing(tok, path: str | Path, rows: int | None = None, fix=None) -> tuple[object, list[str]]:
    """`tok` (converted by transformers from the GGUF at `path`) if it agrees with the file, else the tokenizer
    rebuilt from the file, with a note naming what was wrong. `rows`: the embedding's (default: the file's).
    `fix(tokenizer)` is applied to a rebuilt one as it was to `tok` (the end-of-turn fix). Never returns a tokenizer
    that disagrees: TokenizerMismatch names the tokens."""
    v = read_vocab(path)
    rows = rows or embedding_rows(path)
    bad = problems(tok, v, rows)
    if not bad:
        return tok, []
    head = f"the tokenizer transformers converted from {Path(path).name} disagrees with the file: {'; '.join(bad)}"
    try:
        new = rebuild(v)
    except TokenizerMismatch as e:
        raise TokenizerMismatch(f"{head}. It cannot be rebuilt here either: {e}") from None
    if fix:
        fix(new)
    still = problems(new, v, rows)
    if still:
        raise TokenizerMismatch(f"{head}. Rebuilt from the file's token list it still disagrees: {'; '.join(still)}. "
                                "Give the model as a transformers folder with its own tokenizer.json instead")
    return new, [f"tokenizer rebuilt from the GGUF's own token list, types and merges ({head})"]
