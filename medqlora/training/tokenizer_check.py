"""The tokenizer transformers loads, checked against the folder's own tokenizer.json.

transformers 5 builds a tokenizer class named in tokenizer_config.json from the vocabulary and merges alone, with
that class's own pre-tokenizer. A byte-level BPE tokenizer.json (Llama 3, DeepSeek-R1-Distill-Llama and -Qwen, whose
tokenizer_config.json says LlamaTokenizerFast) then loads as a SentencePiece-style LlamaTokenizer: "Hello world" ->
[39, 95292] instead of [9707, 1879], Chinese -> []. A few strings encoded both ways at load catch any such class;
the fix is the tokenizer.json as written (PreTrainedTokenizerFast), checked again.
"""
from __future__ import annotations

PROBES = ["Hello world", "The patient's BP was 120/80 mmHg; HR 72.", "  two spaces\n\nand lines\tand a tab",
          "Dosis: 5 mg/kg, zweimal täglich", "高血压患者应该怎么办？", "1234567 + 89 = 1234656"]


class WrongTokenizer(ValueError):
    """The loaded tokenizer does not tokenize as the model's tokenizer.json says, and could not be fixed."""


def tokenizer_file(ref: str):
    """The tokenizer.json of a local folder or a cached hub model (None where there is none)."""
    from pathlib import Path

    p = Path(ref).expanduser() / "tokenizer.json"
    if p.is_file():
        return p
    if Path(ref).expanduser().is_dir():
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(ref, "tokenizer.json")
    except Exception:  # noqa: BLE001  (not a hub id: nothing to compare with)
        return None
    return Path(hit) if isinstance(hit, str) else None


def round_trip_problems(tok, path) -> list[str]:
    """Where `tok` encodes differently from the tokenizer.json at `path` (its added tokens included), or holds
    entries the file does not have."""
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(path))
    added = [t.content for t in raw.get_added_tokens_decoder().values()][:40]
    probes = PROBES + ([" ".join(added[:20]) + " end"] if added else [])
    out = []
    for text in probes:
        want = raw.encode(text, add_special_tokens=False).ids
        have = tok(text, add_special_tokens=False)["input_ids"]
        if have != want:
            out.append(f"{text[:40]!r} -> {have[:12]} where tokenizer.json gives {want[:12]}")
    extra = len(tok) - raw.get_vocab_size(with_added_tokens=True)
    if extra > 0:
        ids = sorted(tok.get_vocab().values())[-extra:]
        out.append(f"{extra} entries that tokenizer.json does not have: "
                   + ", ".join(f"{tok.convert_ids_to_tokens(i)!r} ({i})" for i in ids[:5]))
    return out


def checked(tok, ref: str) -> tuple[object, list[str]]:
    """`tok` if it encodes as the model's tokenizer.json does, else the tokenizer.json loaded as it is written (a
    note says so); WrongTokenizer if even that disagrees."""
    path = tokenizer_file(ref)
    if path is None:
        return tok, []
    bad = round_trip_problems(tok, path)
    if not bad:
        return tok, []
    from transformers import PreTrainedTokenizerFast

    fixed = PreTrainedTokenizerFast.from_pretrained(ref)
    still = round_trip_problems(fixed, path)
    if still:
        raise WrongTokenizer(f"the tokenizer of {ref} does not tokenize as its tokenizer.json: {'; '.join(still[:3])}. "
                             "Check that tokenizer.json and tokenizer_config.json come from the same model")
    return fixed, [f"tokenizer: transformers loaded {type(tok).__name__}, which does not tokenize as {path.name} "
                   f"({bad[0]}); loaded {path.name} as written instead ({type(fixed).__name__})"]
