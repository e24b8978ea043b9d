"""What a GGUF says besides its tensors, written as llama.cpp's convert_hf_to_gguf.py writes it: the token list
(padded to the embedding's rows, added tokens typed so llama.cpp matches them whole), the pre-tokenizer name,
whether to add a bos token, the general.* metadata that llama.cpp, Ollama and LM Studio show, and an Ollama
Modelfile that asks the model as it was trained and evaluated."""
from __future__ import annotations

import json
from pathlib import Path

# Spellings that mark an added token as a control token even where tokenizer.json says "special": false (the
# converter's rule: <|...|>, DeepSeek's full-width <｜...｜>, and a few single names).
_LOOKS_SPECIAL = ("<pad>", "<mask>", "<2mass>", "[@BOS@]")
R1_BOS = "<｜begin▁of▁sentence｜>"


class GGUFUnsupported(ValueError):
    """This model or quantization cannot be written here; the message says what to use instead."""


def looks_special(text: str) -> bool:
    return (text in _LOOKS_SPECIAL or (text.startswith("<|") and text.endswith("|>"))
            or (text.startswith("<｜") and text.endswith("｜>")) or (text.startswith("<unused") and text.endswith(">")))


def tokenizer_pre(model_cfg) -> str | None:
    """The pre-tokenizer name llama.cpp keys its regex on: the source GGUF's when the base came from one, else
    recognised from the model's name (None otherwise: the tokenizer's own structure decides, see pre_from_tokenizer)."""
    if model_cfg.gguf_file:
        from medqlora.core.gguf_kv import read_kv
        from medqlora.training.model import converted_folder

        src, _ = converted_folder(model_cfg)
        pre = read_kv(src).get("tokenizer.ggml.pre")  # the header alone: a 7B file's token list read in a second
        if pre is not None:
            return pre
    name = model_cfg.name_or_path.lower()
    for key, pre in (("deepseek-r1-distill-qwen", "deepseek-r1-qwen"), ("llama-3", "llama-bpe"),
                     ("llama3", "llama-bpe"), ("deepseek-r1-distill-llama", "llama-bpe"), ("qwen2", "qwen2"),
                     ("smollm", "smollm")):
        if key in name:
            return pre
    return None


def pre_from_tokenizer(tj: dict, bos: str | None = None) -> str:
    """The llama.cpp pre-tokenizer whose split regex is the one this tokenizer.json applies ('default' if unknown):
    a bare byte-level split is GPT-2's regex; digits split singly before it is SmolLM's; Llama 3 and Qwen2 split with
    their own regexes (digits in threes, or singly) before a regex-free byte-level step. A Qwen2 split with R1's
    bos (`bos`: the tokenizer's bos token) is deepseek-r1-qwen, as llama.cpp's converter names it (it tells them
    apart by the ids of a text, which differ by that bos)."""
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True):
        return "gpt-2"
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits") and steps[1].get("use_regex", True):
        return "smollm"
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
        regex = json.dumps(steps[0].get("pattern", {}))
        if "\\\\p{N}{1,3}" in regex:
            return "llama-bpe"
        if "\\\\p{N}|" in regex:
            return "deepseek-r1-qwen" if bos == R1_BOS else "qwen2"
    return "default"


def vocab_fields(model_dir: Path, vocab_size: int, pre: str | None):
    """Tokens, their types and the pre-tokenizer name from tokenizer.json (byte-level BPE only), one token per
    embedding row: ids the tokenizer lacks become [PAD{i}] (UNUSED), added tokens are CONTROL when special (or
    spelled like it) and USER_DEFINED otherwise, as convert_hf_to_gguf.py does. llama.cpp sizes token_embd by the
    token count and matches CONTROL and USER_DEFINED tokens as whole pieces in raw text."""
    import gguf

    tj = json.loads((model_dir / "tokenizer.json").read_text())
    model = tj["model"]
    if model.get("type") != "BPE" or "ByteLevel" not in json.dumps(tj.get("pre_tokenizer")):
        raise GGUFUnsupported("GGUF export writes byte-level BPE tokenizers (Llama 3, Qwen2, SmolLM2); this one is "
                              f"{model.get('type')}; convert the merged model with llama.cpp's convert_hf_to_gguf.py")
    by_id = {i: (text, gguf.TokenType.NORMAL) for text, i in model["vocab"].items()}
    for t in tj.get("added_tokens", []):
        special = t.get("special") or looks_special(t["content"])
        by_id[t["id"]] = (t["content"], gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    size = max(vocab_size, max(by_id) + 1)
    tokens = [by_id.get(i, (f"[PAD{i}]", gguf.TokenType.UNUSED))[0] for i in range(size)]
    types = [by_id.get(i, (None, gguf.TokenType.UNUSED))[1] for i in range(size)]
    return tokens, types, pre or pre_from_tokenizer(tj, bos_token(model_dir))


def bos_token(model_dir: Path) -> str | None:
    """The bos token tokenizer_config.json names (a string or an AddedToken record)."""
    path = model_dir / "tokenizer_config.json"
    bos = json.loads(path.read_text()).get("bos_token") if path.is_file() else None
    return bos.get("content") if isinstance(bos, dict) else bos


def load_tokenizer(model_dir: Path):
    """The folder's tokenizer as training used it: transformers' class where it tokenizes as tokenizer.json does,
    else tokenizer.json as written (tokenizer_check)."""
    from transformers import AutoTokenizer

    from medqlora.training.tokenizer_check import checked

    return checked(AutoTokenizer.from_pretrained(str(model_dir)), str(model_dir))[0]


def adds_bos_eos(model_dir: Path) -> dict:
    """Whether the tokenizer puts bos / eos around a plain text, as transformers applies it (written explicitly as
    tokenizer.ggml.add_bos_token / add_eos_token: llama.cpp's default differs per pre-tokenizer)."""
    tok = load_tokenizer(Path(model_dir))
    ids = tok("a b")["input_ids"]
    return {"bos": tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id],
            "eos": tok.eos_token_id is not None and len(ids) > 1 and ids[-1:] == [tok.eos_token_id]}


def _source_gguf_general(path: Path) -> dict:
    from medqlora.core.gguf_kv import read_kv

    out = {}
    for key, value in read_kv(path).items():
        if key.startswith("general.") and key not in ("general.architecture", "general.file_type",
                                                      "general.quantization_version", "general.type"):
            out[key.removeprefix("general.")] = value.tolist() if hasattr(value, "tolist") else value
    return out


def _card_general(ref: str) -> dict:
    """general.* the converter would take from a base model folder or cached hub snapshot (card and config)."""
    import gguf

    p = Path(ref)
    if not p.exists():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(ref, "config.json")
            p = Path(cached).parent if isinstance(cached, str) else None
        except Exception:  # noqa: BLE001  (offline and not cached: only the id is known)
            p = None
    m = gguf.Metadata.load(None, p if p and p.is_dir() else None, None if Path(ref).exists() else ref, 0)
    out = {k: v for k, v in vars(m).items() if v is not None and k in
           ("name", "basename", "finetune", "version", "organization", "size_label", "license", "license_name",
            "license_link", "languages", "repo_url")}
    if "repo_url" not in out and not Path(ref).exists() and ref.count("/") == 1:
        out["repo_url"] = f"https://huggingface.co/{ref}"
    return out


def general_metadata(model_cfg, run_name: str) -> dict:
    """The base model's identity and license, from the source GGUF's general.* (a GGUF base) or from its card and
    config (a folder or hub id), as {'base': ..., 'run_name': ...} for write_gguf."""
    if model_cfg.gguf_file:
        from medqlora.training.model import converted_folder

        base = _source_gguf_general(converted_folder(model_cfg)[0])
        base.setdefault("repo_url", None)
    else:
        from medqlora.config import model_folder

        ref = str(model_folder(model_cfg.name_or_path)) if model_cfg.name_or_path.startswith("pkg://") \
            else model_cfg.name_or_path
        base = _card_general(ref)
    return {"run_name": run_name, "base": {k: v for k, v in base.items() if v is not None}}


def write_general(w, meta: dict | None, name: str, total_params: int) -> dict:
    """general.* of the fine-tune: its name, the base's basename, license and organization (a fine-tune carries its
    base's license; the organization is the base's, as the converter takes it from the merged config's base id),
    the size label from the parameter count, and the base model's provenance as general.base_model.0.*"""
    import gguf

    base = dict((meta or {}).get("base") or {})
    m = gguf.Metadata(name=name, finetune=name, basename=base.get("basename") or base.get("name"),
                      organization=base.get("organization"), version=base.get("version"),
                      size_label=gguf.size_label(total_params, 0, 0, 0), license=base.get("license"),
                      license_name=base.get("license.name") or base.get("license_name"),
                      license_link=base.get("license.link") or base.get("license_link"),
                      tags=["medical", "qlora", "medqlora"], languages=base.get("languages"))
    entry = {k: v for k, v in (("name", base.get("name")), ("organization", base.get("organization")),
                               ("version", base.get("version")), ("repo_url", base.get("repo_url"))) if v}
    m.base_models = [entry] if entry else None
    w.add_type(gguf.GGUFType.MODEL)
    m.set_gguf_meta_model(w)  # writes the tags and languages too
    return {k: v for k, v in vars(m).items() if v is not None}


def modelfile(gguf_name: str, model_dir: Path, template: str, system_prompt: str | None, sampling: dict) -> str:
    """An Ollama Modelfile beside the GGUF: the prompt exactly as training and evaluation built it (one turn; a chat
    template is rendered with placeholders and turned into Ollama's Go template), the end-of-turn tokens as stops,
    and the evaluation's sampling settings."""
    tok = load_tokenizer(Path(model_dir))
    sys_mark, user_mark = "\x00SYSTEM\x00", "\x00PROMPT\x00"
    if template == "plain":
        body = "{{ if .System }}{{ .System }}\n\n{{ end }}### Question:\n{{ .Prompt }}\n\n### Answer:\n"
    else:
        def render(msgs):
            return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

        with_sys = render([{"role": "system", "content": sys_mark}, {"role": "user", "content": user_mark}])
        without = render([{"role": "user", "content": user_mark}])
        bos = tok.bos_token or ""
        if bos and adds_bos_eos(model_dir)["bos"]:  # llama.cpp adds it itself: never twice
            with_sys, without = with_sys.removeprefix(bos), without.removeprefix(bos)
        go = lambda s: s.replace(sys_mark, "{{ .System }}").replace(user_mark, "{{ .Prompt }}")  # noqa: E731
        body = f"{{{{ if .System }}}}{go(with_sys)}{{{{ else }}}}{go(without)}{{{{ end }}}}"
    gen = json.loads((model_dir / "generation_config.json").read_text()) if (model_dir / "generation_config.json"
                                                                             ).is_file() else {}
    eos_ids = gen.get("eos_token_id")
    eos_ids = [eos_ids] if isinstance(eos_ids, int) else list(eos_ids or [])
    stops = [t for t in dict.fromkeys([tok.eos_token, *tok.convert_ids_to_tokens(eos_ids)]) if t]
    lines = ["# Ollama: ollama create <name> -f Modelfile (in this folder), then ollama run <name>",
             f"FROM ./{gguf_name}", f'TEMPLATE """{body}"""']
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    lines += [f'PARAMETER stop "{s}"' for s in stops]
    lines += [f"PARAMETER {k} {v}" for k, v in sampling.items()]
    return "\n".join(lines) + "\n"
