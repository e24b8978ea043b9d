"""Stage 3: 4-bit base + LoRA, trained with TRL's SFTTrainer on the prepared (prompt-masked) dataset."""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import model as M

M.preload_unsloth()  # before transformers: Unsloth patches it on import
from transformers import TrainerCallback  # noqa: E402
from transformers.trainer_callback import PrinterCallback  # noqa: E402

from .config import RunConfig
from .rundir import RunDir
from .system import memory_line, memory_snapshot, peak_memory_gb


def _clock(s: float) -> str:
    s = int(max(s, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


class ProgressPrinter(TrainerCallback):
    """Plain-text progress with ETA (survives in a saved notebook, unlike a widget) and an epoch table."""

    def __init__(self, print_fn=print):
        self.print = print_fn
        self.t0 = self.t_step = None
        self.rows: list[dict] = []  # one per epoch end
        self.losses: list[tuple[int, float]] = []
        self._epoch_losses: list[float] = []

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.time()
        self.start_step = state.global_step  # > 0 when resumed from a checkpoint
        self.print(f"training {state.max_steps} steps ({args.num_train_epochs:g} epochs) | {memory_line()}")

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs:
            return
        loss = float(logs["loss"])
        self.losses.append((state.global_step, loss))
        self._epoch_losses.append(loss)
        done = state.global_step - self.start_step
        elapsed = time.time() - self.t0
        per_step = elapsed / max(done, 1)
        eta = per_step * (state.max_steps - state.global_step)
        self.print(f"step {state.global_step:>4}/{state.max_steps} | epoch {state.epoch:.2f} | loss {loss:.4f} | "
                   f"lr {float(logs.get('learning_rate', 0)):.2e} | {per_step:.2f} s/step | "
                   f"elapsed {_clock(elapsed)} | ETA {_clock(eta)} | {memory_line()}")

    def on_epoch_end(self, args, state, control, **kw):
        snap = memory_snapshot()
        lr = next((h["learning_rate"] for h in reversed(state.log_history) if "learning_rate" in h), None)
        self.rows.append({"epoch": round(state.epoch or 0, 2), "step": state.global_step,
                          "train_loss": sum(self._epoch_losses) / max(len(self._epoch_losses), 1),
                          "learning_rate": lr, "elapsed_s": round(time.time() - self.t0, 1),
                          "rss_gb": round(snap["rss_gb"], 2),
                          "gpu_peak_gb": round(snap.get("gpu_peak_gb", float("nan")), 2)})
        self._epoch_losses = []


@dataclass
class Loaded:
    model: object
    tokenizer: object
    backend: str
    ref: str
    resolve_notes: dict
    params: dict
    load_seconds: float
    memory: dict
    optimizations: list[str] = field(default_factory=list)


def load_for_training(cfg: RunConfig) -> Loaded:
    t0 = time.time()
    backend = M.resolve_backend(cfg.model)
    ref, notes = M.resolve_model(cfg.model)
    model, tok = M.load_base(ref, cfg.model, backend, for_training=True)
    model = M.add_lora(model, cfg, backend)
    opts = [f"backend: {backend}" + (" (FastLanguageModel)" if backend == "unsloth" else " (transformers + PEFT)"),
            "4-bit NF4 base weights, double quantization" if cfg.model.load_in_4bit else "16/32-bit base weights",
            f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha} on {', '.join(cfg.lora.target_modules)}"
            + (" (rsLoRA)" if cfg.lora.rslora else ""),
            f"compute dtype {M.compute_dtype(cfg.model)}".replace("torch.", "")]
    if cfg.train.gradient_checkpointing:
        opts.append("gradient checkpointing" + (" (Unsloth's offloaded)" if backend == "unsloth" else ""))
    opts.append("prompt tokens masked: loss on answers only")
    if cfg.train.packing:
        opts.append("packing")
    elif cfg.train.group_by_length:
        opts.append("length-grouped batches (less padding)")
    return Loaded(model, tok, backend, ref, notes, M.parameter_counts(model), time.time() - t0, memory_snapshot(), opts)


def architecture_table(loaded: Loaded):
    import pandas as pd

    c = loaded.model.config
    rows = {"architecture": (getattr(c, "architectures", None) or ["?"])[0], "layers": getattr(c, "num_hidden_layers", None),
            "hidden size": getattr(c, "hidden_size", None), "attention heads": getattr(c, "num_attention_heads", None),
            "kv heads": getattr(c, "num_key_value_heads", None), "vocabulary": getattr(c, "vocab_size", None),
            "total parameters": f"{loaded.params['total']:,}", "trainable (LoRA)": f"{loaded.params['trainable']:,}",
            "trainable share": f"{loaded.params['trainable_pct']:.2f}%", "model loaded from": loaded.ref,
            "load time": f"{loaded.load_seconds:.1f} s", "memory after load": memory_line(loaded.memory)}
    return pd.DataFrame({"value": {k: str(v) for k, v in rows.items()}})


def _last_checkpoint(folder: Path) -> str | None:
    ckpts = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def _resumable_checkpoint(cfg: RunConfig, run: RunDir, print_fn) -> str | None:
    """The newest checkpoint, if it was made from this model, LoRA setup and prepared data; else start over."""
    folder = run / "checkpoints"
    made_from = {"model": cfg.model.model_dump(mode="json"), "lora": cfg.lora.model_dump(mode="json"),
                 "data_fingerprint": run.result("preprocess")["fingerprint"]}
    stamp = folder / "made_from.json"
    last = _last_checkpoint(folder)
    if last and stamp.is_file() and json.loads(stamp.read_text()) == made_from:
        print_fn(f"resuming from {last}")
        return last
    if last:
        print_fn(f"checkpoints in {folder} were made from another model, LoRA setup or data: starting over")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    stamp.write_text(json.dumps(made_from))
    return None


def sft_config(cfg: RunConfig, run: RunDir, n_train: int):
    import torch
    from trl import SFTConfig

    t = cfg.train
    dtype = M.compute_dtype(cfg.model)
    steps_per_epoch = math.ceil(n_train / (t.micro_batch_size * t.gradient_accumulation))
    return SFTConfig(
        output_dir=str(run / "checkpoints"), num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.micro_batch_size, gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate, lr_scheduler_type=t.scheduler, weight_decay=t.weight_decay,
        warmup_steps=max(0, round(t.warmup_ratio * steps_per_epoch * t.epochs)), optim=t.optimizer, seed=t.seed,
        logging_steps=t.logging_steps, save_strategy="steps" if t.save_steps else "epoch",
        save_steps=t.save_steps or 500, save_total_limit=t.save_total_limit,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=t.gradient_checkpointing and not cfg.model.load_in_4bit,
        max_length=cfg.model.max_seq_length, packing=t.packing,
        train_sampling_strategy="group_by_length" if t.group_by_length and not t.packing else "random",
        report_to=[], disable_tqdm=True, dataset_num_proc=None, remove_unused_columns=True)


def train(cfg: RunConfig, run: RunDir, loaded: Loaded, print_fn=print) -> dict:
    """Train; resume from the newest checkpoint in the run folder if a previous attempt left one."""
    import datasets
    from trl import SFTTrainer

    ds = datasets.load_from_disk(str(run.train_data)).select_columns(["input_ids", "labels"])
    args = sft_config(cfg, run, len(ds))
    progress = ProgressPrinter(print_fn)
    trainer = SFTTrainer(model=loaded.model, args=args, train_dataset=ds, processing_class=loaded.tokenizer,
                         callbacks=[progress])
    trainer.remove_callback(PrinterCallback)  # its raw log dicts repeat what ProgressPrinter shows
    resume = _resumable_checkpoint(cfg, run, print_fn)
    t0 = time.time()
    out = trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    trainer.save_model(str(run.adapter_dir))
    loaded.tokenizer.save_pretrained(str(run.adapter_dir))
    losses = progress.losses
    result = {"backend": loaded.backend, "base_model": loaded.ref, "steps": trainer.state.global_step,
              "epochs": round(trainer.state.epoch or 0, 3), "examples": len(ds),
              "first_loss": losses[0][1] if losses else None, "final_loss": losses[-1][1] if losses else None,
              "train_loss": out.training_loss, "seconds": round(seconds, 1),
              "seconds_per_step": round(seconds / max(trainer.state.global_step - progress.start_step, 1), 3),
              "peak_memory_gb": round(peak_memory_gb(), 2), "params": loaded.params,
              "optimizations": loaded.optimizations, "resumed_from": resume, "losses": losses,
              "epochs_table": progress.rows, "adapter_dir": str(run.adapter_dir)}
    budget = cfg.memory.gpu_budget_gb
    if budget is not None:
        result["memory_budget_gb"] = budget
        result["within_memory_budget"] = result["peak_memory_gb"] <= budget
        if not result["within_memory_budget"]:
            print_fn(f"WARNING: peak memory {result['peak_memory_gb']} GiB exceeded memory.gpu_budget_gb {budget}: "
                     "this config will not fit a card of that size; lower train.micro_batch_size or "
                     "model.max_seq_length")
    return result


def epoch_table(result: dict):
    import pandas as pd

    return pd.DataFrame(result["epochs_table"]).set_index("epoch")


def plot_loss(result: dict, path: Path):
    import matplotlib.pyplot as plt

    steps, losses = zip(*result["losses"]) if result["losses"] else ((), ())
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(steps, losses, marker=".", lw=1)
    for row in result["epochs_table"]:
        ax.axvline(row["step"], color="grey", ls=":", lw=0.8)
    ax.set_xlabel("optimizer step (dotted: epoch ends)")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title(f"{result['steps']} steps, loss {result['first_loss']:.3f} -> {result['final_loss']:.3f}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig
