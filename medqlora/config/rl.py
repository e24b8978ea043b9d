"""rl: section (the reinforce stage: GRPO on the closed-form items, after the train stage). Absent: no such stage."""
from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from medqlora.config.base import Section

# GRPO loss aggregations of TRL's GRPOTrainer that need no other setting (cispo, sapo and luspo bring their own).
LOSS_TYPES = ("grpo", "dr_grpo", "dapo", "bnpo")


class RewardWeights(Section):
    correctness: float = Field(
        1.0, ge=0, description="Weight of the correctness reward: 1 when the answer after the thought, read by the "
        "parser the evaluate stage scores with, is the right option (yes/no/maybe) and names no second one; else 0.")
    format: float = Field(
        0.5, ge=0, description="Weight of the format reward: with data.template reasoning, half for one closed "
        "thought before the answer and half for an answer that parses as one option; otherwise 1 for an answer that "
        "parses as one option with no thought left open.")
    length: float = Field(
        1.0, ge=0, description="Weight of the length shaping: TRL's soft overlong punishment (DAPO), 0 up to "
        "max_completion_length - overlong_cache tokens, then falling linearly to -1 at max_completion_length.")

    @model_validator(mode="after")
    def _some_weight(self) -> "RewardWeights":
        if not (self.correctness or self.format or self.length):
            raise ValueError("every reward weight is 0: nothing would be learnt; give rl.rewards.correctness a "
                             "weight above 0 (1.0 is usual)")
        return self


class RLConfig(Section):
    source: str | None = Field(
        None, description="Where the closed-form items come from: a local file, fsspec URL or hub dataset with "
        "multiple-choice or yes/no items (read like data.source, format detected). Default: data.source, its "
        "closed-form items only. Items the evaluate stage reports (held-out split, data.eval_source, eval.sets) are "
        "always left out.")
    config_name: str | None = Field(None, description="Hub dataset configuration of rl.source.")
    split: str = Field("train", description="Split of rl.source to read.")
    max_items: int | None = Field(None, ge=1, description="Use at most this many closed-form items (None: all).")
    num_generations: int = Field(
        4, ge=2, description="Completions sampled per prompt (the group GRPO compares). More: a better baseline and "
        "fewer all-equal groups, at proportionally more generation time and memory.")
    max_completion_length: int = Field(
        256, ge=1, description="Most tokens generated per completion (thought + answer). A completion cut here is "
        "'clipped'; prompts longer than model.max_seq_length minus this are left out, and counted.")
    prompts_per_step: int = Field(
        1, ge=1, description="Prompts (groups of num_generations completions) per optimizer step.")
    micro_batch_size: int | None = Field(
        None, ge=1, description="Completions per forward/backward pass (None: num_generations). Must divide "
        "prompts_per_step x num_generations; the memory plan and the out-of-memory recovery lower it, never the "
        "group size.")
    max_steps: int = Field(100, ge=1, description="Optimizer steps of GRPO.")
    learning_rate: float = Field(5e-6, gt=0, lt=1, description="Peak learning rate (Unsloth's GRPO notebooks: 5e-6).")
    beta: float = Field(
        0.0, ge=0, description="KL penalty against the starting policy (the train stage's adapter, or the base). 0: "
        "reference-free (no reference pass, less memory), TRL's default.")
    loss_type: Literal[LOSS_TYPES] = Field(
        "dapo", description="How token losses are aggregated (TRL GRPOConfig.loss_type): dapo (TRL's default, no "
        "length bias), dr_grpo, grpo, bnpo.")
    epsilon: float = Field(0.2, gt=0, lt=1, description="Clipping range of the policy ratio.")
    temperature: float = Field(1.0, gt=0, le=2, description="Sampling temperature of the completions.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling of the completions.")
    overlong_cache: int | None = Field(
        None, ge=0, description="Tokens before max_completion_length where the length penalty starts (DAPO's "
        "L_cache). None: a quarter of max_completion_length.")
    rewards: RewardWeights = Field(default_factory=RewardWeights, description="The weight of each reward.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="Share of the steps spent warming up.")
    weight_decay: float = Field(0.1, ge=0, description="AdamW weight decay (Unsloth's GRPO notebooks: 0.1).")
    max_grad_norm: float = Field(0.1, gt=0, description="Gradient clipping (Unsloth's GRPO notebooks: 0.1).")
    optimizer: str = Field("adamw_torch", description="transformers optimizer name (adamw_8bit on a GPU saves memory).")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in the backward pass: less memory.")
    seed: int | None = Field(None, description="Seed of sampling and data order (None: train.seed).")
    logging_steps: int = Field(1, ge=1, description="Print progress every N steps (every step is recorded).")
    save_steps: int = Field(10, ge=1, description="Checkpoint every N steps: a rerun or --resume continues from the "
                            "newest one.")
    save_total_limit: int = Field(2, ge=1, description="Checkpoints kept.")
    use_vllm: bool | Literal["auto"] = Field(
        "auto", description="Generate with vLLM (Unsloth's fast_inference, colocated): auto uses it where a CUDA GPU, "
        "Unsloth and vllm are all there; true requires them; false always generates with transformers.")
    vllm_gpu_memory_utilization: float = Field(
        0.5, gt=0, lt=1, description="Share of the card vLLM takes for its weights and KV cache (Unsloth's "
        "gpu_memory_utilization).")

    @model_validator(mode="after")
    def _batch_divides(self) -> "RLConfig":
        completions = self.prompts_per_step * self.num_generations
        mb = self.micro_batch_size or self.num_generations
        if completions % mb:
            raise ValueError(f"rl.micro_batch_size {mb} does not divide the {completions} completions of a step "
                             f"(prompts_per_step {self.prompts_per_step} x num_generations {self.num_generations}); "
                             f"use a divisor of {completions}, e.g. {self.num_generations}")
        if self.overlong_cache is not None and self.overlong_cache > self.max_completion_length:
            raise ValueError(f"rl.overlong_cache {self.overlong_cache} is longer than rl.max_completion_length "
                             f"{self.max_completion_length}; give at most {self.max_completion_length}")
        return self

    @property
    def micro_batch(self) -> int:
        return self.micro_batch_size or self.num_generations

    @property
    def completions_per_step(self) -> int:
        return self.prompts_per_step * self.num_generations

    @property
    def cache(self) -> int:
        """DAPO's L_cache: where the length penalty begins, counted back from max_completion_length."""
        return self.max_completion_length // 4 if self.overlong_cache is None else self.overlong_cache
