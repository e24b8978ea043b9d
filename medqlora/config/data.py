"""data: section (where the training data comes from and how it is read)."""
from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    field_validator,
)

from medqlora.config.base import Section

# The fields data.columns can map (medqlora.data.ALIASES lists the column names recognised for each).
CANONICAL_FIELDS = ("id", "question", "answer", "context", "options", "answer_idx", "reasoning", "messages",
                    "instruction", "input", "output", "long_answer", "final_decision", "category", "explanation")

class DataConfig(Section):
    source: str = Field(description="Local JSONL/JSON/CSV/TSV/Parquet file (optionally .gz/.bz2/.xz/.zst), fsspec URL "
                        "(gs://...), or hub dataset name.")
    config_name: str | None = Field(None, description="Hub dataset configuration (e.g. 'en', 'pqa_labeled').")
    split: str = Field("train", description="Split of the source to read.")
    revision: str | None = Field(None, description="Hub dataset revision (a commit, tag or branch) to read.")
    eval_source: str | None = Field(None, description="A separate held-out file; otherwise eval_fraction is split off.")
    eval_split: str = Field("train", description="Split of eval_source to read.")
    eval_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="Share held out for evaluation when no eval_source.")
    val_fraction: float = Field(
        0.1, ge=0.0, lt=1.0, description="Share of the training questions (by hash, after the eval split) held out as "
        "a validation set: its loss is measured during training (train.eval_steps) and drawn with the training loss. "
        "0 turns it off. 0.1 of the bundled 240-row sample is about 24 rows (~1,200 answer tokens), enough to see a "
        "change of a few hundredths; data.val_max_examples caps it on large sets.")
    val_max_examples: int = Field(
        200, ge=1, description="At most this many validation rows (the first ones the hash selects; later ones train), "
        "so that each validation pass stays a few optimizer steps' worth of compute on a large dataset.")
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
    decontaminate: Literal["warn", "drop"] = Field(
        "warn", description="Training rows that share 13 words in a row with an item of any eval set (the held-out "
        "split and eval.sets; lm-evaluation-harness's and GPT-3's measure, case and punctuation ignored) are counted "
        "per set in the preprocess notebook and the headline. warn: train on them and say so; drop: drop them "
        "(drop reason 'contaminated'). A training question equal to an eval question is dropped as a leak either way.")

    @field_validator("columns")
    @classmethod
    def _known_columns(cls, v: dict[str, str]) -> dict[str, str]:
        bad = sorted(set(v) - set(CANONICAL_FIELDS))
        if bad:
            raise ValueError(f"unknown canonical field(s) {bad} in data.columns; use some of {sorted(CANONICAL_FIELDS)}")
        return v
