"""RunConfig: the sections joined, and which settings each stage's output depends on."""
from __future__ import annotations

import re

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from medqlora.config.base import Section, url_credentials
from medqlora.config.data import DataConfig
from medqlora.config.evaluation import EvalConfig
from medqlora.config.export import ExportConfig
from medqlora.config.model import LoraConfig, ModelConfig
from medqlora.config.rl import RLConfig
from medqlora.config.training import MemoryConfig, TrainConfig


class RunConfig(Section):
    run_name: str = Field(description="Short name; the run id is <run_name>-<timestamp>.")
    model: ModelConfig
    data: DataConfig
    lora: LoraConfig = Field(default_factory=LoraConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    memory: MemoryConfig = Field(default_factory=MemoryConfig)
    rl: RLConfig | None = Field(
        None, description="GRPO after the train stage (the reinforce stage) on the closed-form items; absent: no such "
        "stage.")

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
        urls = {"model.name_or_path": self.model.name_or_path, "data.source": self.data.source,
                "data.eval_source": self.data.eval_source, "export.destination": self.export.destination,
                **{f"eval.sets[{i}].source": s.source for i, s in enumerate(self.eval.sets)},
                **({"rl.source": self.rl.source} if self.rl is not None else {})}
        for key, url in urls.items():
            what = url_credentials(url)
            if what:  # refused, never used and recorded: the URL is not repeated here either
                raise ValueError(f"{key}: the URL carries credentials ({what}), which would be written into config.yaml, "
                                 "the executed notebooks, the report, run.log and summary.json. Give the URL without "
                                 "them and pass credentials through the environment (HF_TOKEN for the hub; "
                                 "GOOGLE_APPLICATION_CREDENTIALS or gcloud auth for gs://; AWS_* for s3://)")
        if self.rl is not None and self.rl.max_completion_length >= self.model.max_seq_length:
            raise ValueError(f"rl.max_completion_length {self.rl.max_completion_length} leaves no room for a prompt in "
                             f"model.max_seq_length {self.model.max_seq_length}; lower it (e.g. "
                             f"{self.model.max_seq_length // 2}) or raise model.max_seq_length")
        if self.train.early_stopping_patience and not self.data.val_fraction:
            raise ValueError("train.early_stopping_patience needs a validation set: set data.val_fraction above 0 "
                             "(e.g. 0.1), or remove early_stopping_patience")
        if self.train.select_by and not self.data.val_fraction:
            raise ValueError(f"train.select_by {self.train.select_by} picks the checkpoint on a validation set held out "
                             "of the training data: set data.val_fraction above 0 (e.g. 0.1). The evaluate stage's "
                             "items are never used for it: picking on the items it reports would inflate its result")
        return self


# ---------------------------------------------------------------- what each stage's output depends on

# Settings that change no stage's output: display, logging, checkpoint bookkeeping and where caches live
# (a run's saved config.yaml holds cache_dir spelled out, so comparing it would call every resume stale).
_NO_EFFECT = {"model": {"cache_dir"}, "train": {"logging_steps", "save_steps", "save_total_limit",
                                                "gradient_checkpointing", "report_to"}, "eval": {"show_examples"},
              "rl": {"logging_steps", "save_steps", "save_total_limit", "gradient_checkpointing"}}
_SETUP_KEYS = {"name_or_path", "gguf_file", "backend", "load_in_4bit"}
# Sections each stage reads, cumulatively: a stage's output also depends on everything before it.
# rl (the optional reinforce stage) counts only where the run has it: a run without it records what it always did.
_STAGE_SECTIONS = {"setup": ["model"], "preprocess": ["model", "data"], "train": ["model", "data", "lora", "train"],
                   "reinforce": ["model", "data", "lora", "train", "rl"],
                   "export": ["model", "data", "lora", "train", "rl", "export"],
                   "evaluate": ["model", "data", "lora", "train", "rl", "export", "eval"]}


def stage_inputs(cfg: "RunConfig", stage: str) -> dict:
    """The settings a stage's output depends on (its own and its predecessors'): when any of them changes,
    the stage's output is stale and must be made again."""
    dumped = cfg.model_dump(mode="json")
    out = {sec: {k: v for k, v in dumped[sec].items() if k not in _NO_EFFECT.get(sec, ())}
           for sec in _STAGE_SECTIONS[stage] if dumped[sec] is not None}
    if "rl" in out:  # completions per pass change memory, not what is learnt
        out["rl"].pop("micro_batch_size")
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
