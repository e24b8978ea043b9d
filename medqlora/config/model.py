"""model: and lora: sections (the base model and its adapters)."""
from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
)

from medqlora.config.base import Section

ALL_LINEAR = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class ModelConfig(Section):
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



class LoraConfig(Section):
    r: int = Field(16, ge=1, le=1024, description="LoRA rank.")
    alpha: int = Field(16, ge=1, description="LoRA alpha (scale = alpha / r, or alpha / sqrt(r) with rslora).")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="LoRA dropout (0 lets Unsloth use its fast path).")
    target_modules: list[str] = Field(default_factory=lambda: list(ALL_LINEAR), min_length=1,
                                      description="Module names that get adapters.")
    rslora: bool = Field(False, description="Rank-stabilized LoRA scaling.")
