"""Base model resolution, tokenizer fixes, and 4-bit + LoRA loading through Unsloth or transformers+PEFT."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import time
from pathlib import Path

from medqlora.config import ModelConfig, RunConfig, model_folder
from medqlora.core import system


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def preload_unsloth() -> bool:
    """Import unsloth before transformers/trl/peft where it will be used: it patches them at import time."""
    if importlib.util.find_spec("unsloth") is None or not cuda_available():
        return False
    import unsloth  # noqa: F401

    return True


def resolve_backend(cfg: ModelConfig) -> str:
    """'unsloth' or 'hf'. auto takes Unsloth where a CUDA GPU and the package are both present."""
    has_unsloth = importlib.util.find_spec("unsloth") is not None
    if cfg.backend == "unsloth":
        if not cuda_available():
            raise RuntimeError("model.backend=unsloth needs a CUDA GPU; none is visible. Use backend: auto or hf.")
        if not has_unsloth:
            raise RuntimeError("model.backend=unsloth but unsloth is not installed; run notebooks/01_setup "
                               "(it installs it on Colab) or 'pip install unsloth'.")
        return "unsloth"
    if cfg.backend == "auto" and has_unsloth and cuda_available():
        return "unsloth"
    return "hf"


def compute_dtype(cfg: ModelConfig):
    import torch

    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if torch.cuda.is_available():
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


# ---------------------------------------------------------------- base model resolution


def _end_of_turn_fix(tokenizer, generation_config) -> list[str]:
    """Make eos the model's real end-of-turn token and give the tokenizer a pad token.

    GGUF tokenizers can come out with eos=<|im_start|> and no pad, while the generation config knows the
    true end of turn; training on the wrong eos teaches the model never to stop."""
    fixes = []
    gen_eos = getattr(generation_config, "eos_token_id", None) if generation_config is not None else None
    gen_eos = [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or [])
    if gen_eos and tokenizer.eos_token_id not in gen_eos:
        old = tokenizer.eos_token
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(gen_eos[0])
        fixes.append(f"eos_token {old!r} -> {tokenizer.eos_token!r} (the generation config's end of turn)")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        fixes.append(f"pad_token None -> {tokenizer.pad_token!r}")
    return fixes


def converted_folder(cfg: ModelConfig) -> tuple[Path, Path]:
    """The GGUF file and the safetensors folder it is (or will be) converted into, keyed on the file's identity."""
    src = model_folder(cfg.name_or_path) / cfg.gguf_file
    if not src.is_file():
        raise FileNotFoundError(f"GGUF file not found: {src}")
    st = src.stat()
    # ":tok2": conversions made before the tokenizer was checked against the file are not reused
    key = hashlib.sha1(f"{src.resolve()}:{st.st_size}:{int(st.st_mtime)}:tok2".encode()).hexdigest()[:12]
    return src, Path(cfg.cache_dir).expanduser() / f"{src.stem}-{key}"


def resolve_model(cfg: ModelConfig) -> tuple[str, dict]:
    """A loadable model reference (hub id or local folder) and notes on what was done to get it.

    A GGUF file is dequantized once into a safetensors folder in cfg.cache_dir, since a GGUF-loaded model
    can be neither trained nor saved as loaded; later calls reuse the folder."""
    if not cfg.gguf_file:
        ref = str(model_folder(cfg.name_or_path)) if cfg.name_or_path.startswith("pkg://") else cfg.name_or_path
        return ref, {"source": cfg.name_or_path, "converted": False}
    src, out = converted_folder(cfg)
    notes = {"source": str(src), "converted_to": str(out), "converted": True}
    if (out / "config.json").is_file():
        notes["conversion"] = "reused"
        return str(out), notes
    out.parent.mkdir(parents=True, exist_ok=True)
    with _conversion_lock(out):  # parallel runs on a fresh cache: one converts, the others wait for it and reuse it
        if (out / "config.json").is_file():
            notes["conversion"] = "reused (converted meanwhile by a parallel run)"
            return str(out), notes
        notes.update(_convert_gguf(src, out))
    return str(out), notes


class _conversion_lock:
    """An exclusive lock on <folder>.lock (POSIX flock; released when the process ends, even killed)."""

    def __init__(self, out: Path):
        self.path = out.with_name(out.name + ".lock")

    def __enter__(self):
        self.f = open(self.path, "w")
        try:
            import fcntl
        except ImportError:  # no flock (Windows): the rename below still never takes a half-written folder
            return self
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        self.f.close()  # closing releases the lock
        return False


def _convert_gguf(src: Path, out: Path) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        from medqlora.training import gguf_tokenizer

        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        gen = gguf_tokenizer.generation_ids(src)  # the header's bos/eos/pad, as the model's generation config has them
        fixes = _end_of_turn_fix(tok, gen)
        # never a tokenizer that disagrees with the file (transformers' converter loses R1-Distill-Qwen's specials);
        # checked before the weights load, so a refusal costs no conversion
        tok, rebuilt = gguf_tokenizer.agreeing(tok, src, fix=lambda t: _end_of_turn_fix(t, gen))
        fixes += rebuilt
        for note in rebuilt:  # said where the conversion runs (the first stage that loads the tokenizer)
            print(f"WARNING {note}")
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name)
        model.hf_quantizer = None  # dequantized weights: save as a plain checkpoint
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        try:
            tmp.rename(out)  # atomic: a half-written folder is never taken for a converted model
        except OSError:
            if not (out / "config.json").is_file():  # not another run's finished conversion: a real failure
                raise
            return {"tokenizer_fixes": fixes, "conversion": "reused (converted meanwhile by a parallel run)"}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"tokenizer_fixes": fixes, "conversion": f"converted in {time.time() - t0:.1f} s"}


def load_tokenizer(ref: str, cfg: ModelConfig):
    from transformers import AutoTokenizer, GenerationConfig

    from medqlora.training.tokenizer_check import checked

    tok, _ = checked(AutoTokenizer.from_pretrained(ref), ref)  # the class tokenizer_config names may not fit the file
    try:
        gen = GenerationConfig.from_pretrained(ref)
    except (OSError, ValueError):
        gen = None
    _end_of_turn_fix(tok, gen)
    if cfg.chat_template:
        tok.chat_template = cfg.chat_template
    return tok


# ---------------------------------------------------------------- loading for training and inference


def _bnb_config(cfg: ModelConfig):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=compute_dtype(cfg))


def load_base(ref: str, cfg: ModelConfig, backend: str, for_training: bool):
    """The base model (4-bit when configured) and its tokenizer."""
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(
            model_name=ref, max_seq_length=cfg.max_seq_length, dtype=None if cfg.dtype == "auto" else compute_dtype(cfg),
            load_in_4bit=cfg.load_in_4bit)
        from medqlora.training.tokenizer_check import checked

        tok, _ = checked(tok, ref)
        _end_of_turn_fix(tok, getattr(model, "generation_config", None))
        if cfg.chat_template:
            tok.chat_template = cfg.chat_template
        return model, tok
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(ref, cfg)
    kwargs = {"dtype": compute_dtype(cfg)}
    if cfg.load_in_4bit:
        kwargs["quantization_config"] = _bnb_config(cfg)
    if cuda_available():
        kwargs["device_map"] = {"": 0}
    model = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    return model, tok


def keep_training_layout(model) -> list:
    """Stop bitsandbytes from repacking this model's 4-bit weights for CPU inference. On a CPU with AVX512-BF16 the
    first eval-mode forward without gradients (a validation pass, generate) repacks them into a layout with no
    backward pass, and from then on gradients no longer reach the LoRA weights below (DESIGN.md). A model that is
    trained must keep its training layout, evaluated or not. Returns the 4-bit layers guarded, for
    release_training_layout once training is over."""
    guarded = [m for m in model.modules() if getattr(m, "support_avx512bf16_for_cpu", False)]
    for module in guarded:
        module.support_avx512bf16_for_cpu = False
    return guarded


def release_training_layout(guarded: list) -> None:
    """Training is over: the layers may take bitsandbytes' faster CPU inference layout again."""
    for module in guarded:
        module.support_avx512bf16_for_cpu = True


def load_hint(ref: str, e: BaseException) -> str:
    """What to do when a model cannot be loaded: a broken local folder, gated, missing, or offline."""
    from medqlora.training.model_files import local_config_problem

    msg = str(e)
    problem = local_config_problem(ref)  # transformers says OSError for a bad local config.json too: not the hub
    if problem:
        return f"could not load model {ref!r}: {problem}. ({type(e).__name__}: {msg.splitlines()[0][:200]})"
    if Path(ref).expanduser().is_dir():
        why = ("the local model folder could not be loaded: check that its weight and tokenizer files are complete "
               "(copy the folder again)")
    elif "gated" in msg.lower() or "401" in msg or "403" in msg:
        why = "it is a gated hub model: accept its license on the hub and put a token in HF_TOKEN (environment only)"
    elif "404" in msg or "is not a local folder and is not a valid model identifier" in msg:
        why = "no such model on the hub or on disk: check model.name_or_path"
    else:
        why = "the hub could not be reached (offline?) and it is not cached: give a local folder as model.name_or_path"
    return f"could not load model {ref!r}: {why}. ({type(e).__name__}: {msg.splitlines()[0][:200]})"


def add_lora(model, cfg: RunConfig, backend: str):
    lc = cfg.lora
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        return FastLanguageModel.get_peft_model(
            model, r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
            bias="none", use_rslora=lc.rslora, random_state=cfg.train.seed, max_seq_length=cfg.model.max_seq_length,
            use_gradient_checkpointing="unsloth" if cfg.train.gradient_checkpointing else False)
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.model.load_in_4bit:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    elif cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    missing = [t for t in lc.target_modules if not any(n.endswith("." + t) for n, _ in model.named_modules())]
    if missing:
        raise ValueError(f"lora.target_modules {missing} match no module of this model; its linear layers are "
                         f"named like {sorted({n.rsplit('.', 1)[-1] for n, _ in model.named_modules() if n.count('.') > 2})[:12]}")
    peft_cfg = LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=lc.target_modules,
                          use_rslora=lc.rslora, bias="none", task_type="CAUSAL_LM")
    from transformers import set_seed

    set_seed(cfg.train.seed)  # LoRA A is drawn at random here: seeded, a rerun starts from the same adapter
    return get_peft_model(model, peft_cfg)


def load_with_adapter(ref: str, adapter_dir: str, cfg: ModelConfig, backend: str):
    """Base in 4-bit with the trained adapter on top, ready to generate (adapter switchable off)."""
    model, tok = load_base(ref, cfg, backend, for_training=False)  # first: Unsloth must load before peft
    from peft import PeftModel

    model = PeftModel.from_pretrained(model, adapter_dir)
    if backend == "unsloth":
        from unsloth import FastLanguageModel

        FastLanguageModel.for_inference(model)
    model.eval()
    return model, tok


def parameter_counts(model) -> dict:
    """Total and trainable parameters; PEFT counts 4-bit packed weights at their real number."""
    trainable, total = model.get_nb_trainable_parameters()
    return {"total": total, "trainable": trainable, "trainable_pct": 100.0 * trainable / max(total, 1)}


def setup_check(cfg, installed: dict) -> dict:
    """Fail the setup stage early, with the fix, when the chosen backend cannot work here."""
    missing = [n for n in installed["missing"] if n != "unsloth"]
    if missing:
        raise RuntimeError(f"missing packages {missing}: run 'make setup' (or pip install -r requirements.txt)")
    hw = system.hardware()
    if hw["four_bit"].startswith("FAILED") and cfg.model.load_in_4bit:
        raise RuntimeError(f"bitsandbytes 4-bit does not work here ({hw['four_bit']}); set model.load_in_4bit: false "
                           "or reinstall bitsandbytes")
    backend = resolve_backend(cfg.model)
    notes = []
    if hw["gpu"] and backend != "unsloth":
        notes.append("a GPU is present but unsloth is not importable: training uses transformers + PEFT, "
                     "several times slower; install unsloth (01_setup does it on Colab)")
    if not hw["gpu"]:
        notes.append("no CUDA GPU: training runs on the CPU with transformers + PEFT + bitsandbytes (real "
                     "4-bit QLoRA, slower); fine for small models such as the offline default")
    budget = cfg.memory.budget_gb
    if hw["gpu"] and budget and hw["gpu"]["total_gb"] < budget:
        notes.append(f"this GPU has {hw['gpu']['total_gb']} GiB, less than memory.budget_gb {budget}: the memory plan "
                     "is made for a bigger card than this one; lower memory.budget_gb to what this card has")
    return {"hardware": hw, "backend": backend, "versions": system.versions(), "notes": notes,
            "installed_now": installed["installed"]}
