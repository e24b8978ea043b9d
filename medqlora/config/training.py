"""train: and memory: sections (the optimizer run, and the memory it must fit)."""
from __future__ import annotations

from typing import Literal

from pydantic import (
    Field,
    model_validator,
)

from medqlora.config.base import Section


class TrainConfig(Section):
    report_to: Literal["none", "tensorboard", "wandb"] = Field(
        "none", description="Experiment tracking: tensorboard (event files in the run folder's tensorboard/; "
        "%tensorboard --logdir works in Colab) or wandb (key from WANDB_API_KEY in the environment, never params).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training split.")
    max_steps: int = Field(-1, ge=-1, description="Stop after this many optimizer steps (-1: use epochs).")
    learning_rate: float = Field(2e-4, gt=0, lt=1, description="Peak learning rate.")
    micro_batch_size: int = Field(2, ge=1, description="Examples per forward pass.")
    gradient_accumulation: int = Field(4, ge=1, description="Micro-batches per optimizer step.")
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = Field(
        "linear", description="Learning-rate schedule after warmup.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay on the LoRA weights.")
    optimizer: str = Field("adamw_torch", description="transformers optimizer name (adamw_8bit on GPU saves memory).")
    seed: int = Field(3407, description="Seed for the LoRA initialization, data order and dropout.")
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
    eval_steps: float = Field(
        0.2, gt=0, description="Measure the validation loss (data.val_fraction) every N optimizer steps, and at each "
        "epoch end; below 1: a share of the steps the run really has (0.2: five times a run).")
    early_stopping_patience: int | None = Field(
        None, ge=1, description="Stop when the validation loss has not improved for this many evaluations, and keep "
        "the best checkpoint as the adapter (checkpoints are then written when the validation loss improves). "
        "null: train to the end. Needs data.val_fraction > 0.")
    select_by: Literal["val_loss", "val_accuracy"] | None = Field(
        None, description="The validation signal that picks the checkpoint kept as the adapter (checkpoints are then "
        "written when it improves) and that early stopping watches. val_loss: the lowest validation loss. "
        "val_accuracy: the highest accuracy on the validation split's closed-form items (multiple choice, yes/no), "
        "scored by log-likelihood at every evaluation (no generation: seconds); for multiple-choice fine-tuning the "
        "loss is a poor proxy for it. null: the last step's weights (val_loss with early_stopping_patience). Needs "
        "data.val_fraction > 0; the evaluate stage's items are never used for it. The accuracy is measured and "
        "logged beside the validation loss whenever the validation split has closed-form items.")

    @model_validator(mode="after")
    def _eval_steps_whole(self) -> "TrainConfig":
        if self.eval_steps >= 1 and self.eval_steps != int(self.eval_steps):
            raise ValueError(f"train.eval_steps {self.eval_steps:g}: give a whole number of steps, or a share below 1")
        return self



class MemoryConfig(Section):
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
