"""eval: section (held-out answers, benchmark sets, generation settings)."""
from __future__ import annotations

import re
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from medqlora.config.base import Section
from medqlora.config.tasks import expand, task_defaults


class EvalSetConfig(Section):
    name: str = Field(description="Short name, shown in the report (e.g. pubmedqa, medmcqa).")
    source: str = Field(description="Local file, fsspec URL or hub dataset, in any supported format.")
    config_name: str | None = Field(None, description="Hub dataset configuration.")
    split: str = Field("test", description="Split of the source to read.")
    format: Literal["auto", "qa", "alpaca", "chat", "reasoning", "mcq", "pubmedqa"] = Field(
        "auto", description="Record format, as data.format; auto detects it from the columns.")
    columns: dict[str, str] = Field(default_factory=dict, description="As data.columns.")
    max_items: int | None = Field(200, ge=1, description="Items scored from this set (None: all).")
    task: str | None = Field(
        None, description="An lm-evaluation-harness task (config/tasks.py: medqa_4options, medmcqa, pubmedqa, "
        "mmlu_<subject>): the rows are read as that task reads its hub dataset (a local file in that shape works too), "
        "every item is kept, and they are scored by log-likelihood in the task's own prompt. The source, config, split "
        "and format default to the task's.")
    revision: str | None = Field(None, description="Hub dataset revision (a commit, tag or branch) to read; recorded "
                                 "in the evaluation manifest either way.")

    @model_validator(mode="before")
    @classmethod
    def _task(cls, v):
        return task_defaults(v) if isinstance(v, dict) and v.get("task") is not None else v

    @field_validator("name")
    @classmethod
    def _safe(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,40}", v) or v == "held-out":
            raise ValueError("use letters, digits, '_' and '-' (it names a file); 'held-out' is taken")
        return v


class EvalConfig(Section):
    max_samples: int | None = Field(60, ge=1, description="Held-out items to generate for (None: all).")
    max_new_tokens: int = Field(128, ge=1, description="Answer length for free-text items.")
    max_new_tokens_choice: int = Field(16, ge=1, description="Answer length for multiple-choice and yes/no items (with "
                                       "data.template reasoning they get max_new_tokens: the thought comes first).")
    batch_size: int | Literal["auto"] = Field(
        "auto", description="Prompts generated together. auto: the largest power of two whose estimated memory stays "
        "within memory.max_fraction of the budget, up to max_batch_size.")
    max_batch_size: int = Field(128, ge=1, description="Upper bound for batch_size: auto.")
    merge: bool | Literal["auto"] = Field(
        "auto", description="Fine-tuned answers from weights with the adapter merged in (the 4-bit base dequantized "
        "once; faster) instead of the adapter on top. auto: merge when the dequantized weights take at most a "
        "quarter of the memory budget.")
    decoding: Literal["auto", "eager", "static", "continuous"] = Field(
        "auto", description="How answers are decoded. eager: transformers' generate with a growing KV cache, batch "
        "by batch. static: a static KV cache sized once for the pass and the decoding step compiled (torch.compile "
        "with CUDA graphs: one compiled shape, Python and kernel launches out of the loop). continuous: "
        "transformers' continuous batching (generate_batch, CUDA graphs): a finished answer leaves the batch and the "
        "next prompt takes its place. auto: eager (on a GPU until the static path is measured there: "
        "benchmarks/gpu/eval_speed.sh). A static or continuous call that fails is answered eagerly and said so. Greedy "
        "answers are the same tokens in float32; in 16 bits a near-tie between two tokens can fall the other way.")
    base_answers_cache: str | None = Field(
        "auto", description="Where the base model's answers are kept and reused: the runs of a batch on one base "
        "model, eval items and generation settings, and a resumed run, generate them once. auto: base-answers/ "
        "beside the run folders (the reports folder) and the run folder's own eval/base-answers/; a folder: that "
        "one instead of the reports folder's (e.g. on Drive, shared by several batches); null: computed every time. "
        "Sampled answers (temperature > 0) are never reused.")
    choice_scoring: Literal["generate", "loglik", "both"] = Field(
        "both", description="How multiple-choice and yes/no items are scored. generate: the model answers and the "
        "letter / yes-no is read from its text (accuracy, parse_rate). loglik: each option's log-likelihood after the "
        "prompt, no generation (loglik_acc, loglik_acc_norm, as lm-evaluation-harness scores them). both: the two "
        "side by side. data.template reasoning always generates too (the answer comes after the thought).")
    choice_prompt: Literal["chat", "lm_eval"] = Field(
        "chat", description="Prompt for loglik scoring. chat: the run's own prompt (as trained), then the letter or "
        "Yes/No/Maybe. lm_eval: lm-evaluation-harness's medqa / pubmedqa format ('Question: ...\\nA. ...\\nAnswer:' "
        "then ' A'), no chat template: numbers that stand beside published lm-eval scores.")
    show_examples: int = Field(8, ge=0, description="Side-by-side answers shown in the report.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0: greedy decoding (reproducible); above 0: sampling.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling share (with temperature > 0).")
    repetition_penalty: float = Field(1.0, ge=1.0, le=3.0, description="Above 1 discourages repeating tokens.")
    queries: list[str] = Field(
        default_factory=list, description="Your own questions, with no reference: answered by the base and the "
        "fine-tuned model side by side in the report.")
    sets: list[EvalSetConfig] = Field(
        default_factory=list, description="Benchmark sets scored besides the held-out split, each reported apart; "
        "training questions found in any of them are dropped as leaks. A word stands for lm-evaluation-harness tasks: "
        "multimedqa (the Open Medical-LLM Leaderboard's nine: MedQA, MedMCQA, PubMedQA, six MMLU subjects) or one "
        "task's name (medmcqa, mmlu_anatomy, ...).")

    @field_validator("sets", mode="before")
    @classmethod
    def _words(cls, v):
        if not isinstance(v, list):
            return v
        return [e for x in v for e in (expand(x) if isinstance(x, str) else [x])]
