"""Stage 3: 4-bit base + LoRA, trained with TRL's SFTTrainer on the prepared (prompt-masked) dataset."""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from medqlora.core import memory_log
from medqlora.training import attention, memory, memory_plan, select
from medqlora.training import model as M
from medqlora.training import packing as P

M.preload_unsloth()  # before transformers: Unsloth patches it on import
from transformers.trainer_callback import PrinterCallback  # noqa: E402

from medqlora.config import RunConfig, changed_keys, stage_inputs
from medqlora.core.rundir import RunDir, portable
from medqlora.core.system import (
    free_memory,
    memory_line,
    memory_snapshot,
    peak_memory_gb,
)
from medqlora.training.callbacks import (
    EvaluateAtEpochEnd,
    MemoryRecorder,
    ProgressPrinter,
    StopOnNonFiniteLoss,
)
from medqlora.training.choice_scoring import is_oom as _is_oom  # generate.py reads it here too
from medqlora.training.history import summarize_history, throughput


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


def load_for_training(cfg: RunConfig, run: RunDir | None = None) -> Loaded:
    t0 = time.time()
    backend = M.resolve_backend(cfg.model)
    ref, notes = M.resolve_model(cfg.model)
    try:
        model, tok = M.load_base(ref, cfg.model, backend, for_training=True)
    except OSError as e:
        raise RuntimeError(M.load_hint(ref, e)) from e
    if run is not None:
        memory_log.record(run, "train", "base model loaded")
    model = M.add_lora(model, cfg, backend)
    if run is not None:
        memory_log.record(run, "train", "LoRA added")
    opts = [f"backend: {backend}" + (" (FastLanguageModel)" if backend == "unsloth" else " (transformers + PEFT)"),
            "4-bit NF4 base weights, double quantization" if cfg.model.load_in_4bit else "16/32-bit base weights",
            f"LoRA r={cfg.lora.r} alpha={cfg.lora.alpha} on {', '.join(cfg.lora.target_modules)}"
            + (" (rsLoRA)" if cfg.lora.rslora else ""),
            f"compute dtype {M.compute_dtype(cfg.model)}".replace("torch.", "")]
    if cfg.train.gradient_checkpointing:
        opts.append("gradient checkpointing" + (" (Unsloth's offloaded)" if backend == "unsloth" else ""))
    opts.append("prompt tokens masked: loss on answers only")
    if P.resolve(cfg.train.packing, backend):
        opts.append("packing: examples share rows of model.max_seq_length, kept apart by the attention mask")
        if backend == "unsloth":
            opts.append(attention.describe(attention.attention_path()))
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


def _complete(ckpt: Path) -> bool:
    """A checkpoint the trainer finished writing: the trainer writes trainer_state.json last, after the weights,
    optimizer, scheduler and RNG state; a kill (Colab disconnect, OOM killer) before that leaves a folder without it."""
    try:
        json.loads((ckpt / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    weights = any((ckpt / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin", "model.safetensors"))
    return weights and (ckpt / "optimizer.pt").is_file() and (ckpt / "scheduler.pt").is_file()


def _last_checkpoint(folder: Path, print_fn=print) -> str | None:
    """The newest complete checkpoint. Newer incomplete ones (interrupted while being written) are said and removed:
    nothing can resume from them, and the trainer writes that step's checkpoint again when it gets there."""
    ckpts = sorted((p for p in folder.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                   key=lambda p: int(p.name.split("-")[-1]))
    while ckpts and not _complete(ckpts[-1]):
        bad = ckpts.pop()
        print_fn(f"{bad.name} is incomplete (no trainer state: interrupted while it was being written): skipped "
                 "and removed")
        shutil.rmtree(bad, ignore_errors=True)
    return str(ckpts[-1]) if ckpts else None


def _resumable_checkpoint(cfg: RunConfig, run: RunDir, print_fn) -> str | None:
    """The newest checkpoint, if it was made from exactly what this run trains (model, data, LoRA and every
    training setting that changes the result); else the checkpoints are removed and training starts over."""
    made_from = {**stage_inputs(cfg, "train"), "data_fingerprint": run.result("preprocess")["fingerprint"]}
    return resumable_in(run / "checkpoints", made_from, run, print_fn)


def resumable_in(folder: Path, made_from: dict, run: RunDir, print_fn) -> str | None:
    """The newest complete checkpoint in folder if its made_from.json records exactly made_from (compared as the run
    folder records paths: the same run wherever it was restored); else the folder is emptied and made_from recorded
    for the checkpoints to come. The train and reinforce stages both resume through it."""
    made_from = portable(made_from, run.path)
    stamp = folder / "made_from.json"
    last = _last_checkpoint(folder, print_fn)
    if last and stamp.is_file():
        old = portable(json.loads(stamp.read_text()), run.path)
        if old == made_from:
            print_fn(f"resuming from {last}")
            return last
        print_fn(f"checkpoints in {folder} were made with other settings ({', '.join(changed_keys(old, made_from))}): "
                 "starting over")
    elif last:
        print_fn(f"checkpoints in {folder} have no record of what made them: starting over")
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    stamp.write_text(json.dumps(made_from))
    return None


def sft_config(cfg: RunConfig, run: RunDir, packing: bool, validate: bool = False):
    import torch

    from medqlora.training.sft_args import SFTArgs

    t = cfg.train
    dtype = M.compute_dtype(cfg.model)
    if t.report_to == "tensorboard":  # transformers 5 reads the event-file folder from the environment only
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(run / "tensorboard")
    best = select.best_args(t) if validate else {}  # keep the best checkpoint by train.select_by: saved as it improves
    steps = int(t.eval_steps) if t.eval_steps >= 1 else t.eval_steps  # below 1: a share of the steps
    evaluation = dict(eval_strategy="steps", eval_steps=steps, per_device_eval_batch_size=t.micro_batch_size,
                      **best) if validate else dict(eval_strategy="no")
    return SFTArgs(
        output_dir=str(run / "checkpoints"), num_train_epochs=t.epochs, max_steps=t.max_steps,
        per_device_train_batch_size=t.micro_batch_size, gradient_accumulation_steps=t.gradient_accumulation,
        learning_rate=t.learning_rate, lr_scheduler_type=t.scheduler, weight_decay=t.weight_decay,
        # a float below 1 is a share of the optimizer steps the trainer really runs (max_steps, packing included);
        # SFTArgs keeps at least one step past it
        warmup_steps=t.warmup_ratio, optim=t.optimizer, seed=t.seed,
        logging_steps=t.logging_steps, logging_first_step=True,
        save_strategy="best" if best else "steps" if t.save_steps else "epoch", **evaluation,
        save_steps=t.save_steps or 500, save_total_limit=t.save_total_limit,
        bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=t.gradient_checkpointing and not cfg.model.load_in_4bit,
        max_length=cfg.model.max_seq_length, packing=packing,
        train_sampling_strategy="group_by_length" if t.group_by_length and not packing else "random",
        report_to=[] if t.report_to == "none" else [t.report_to], run_name=run.path.name, disable_tqdm=True, dataset_num_proc=None, remove_unused_columns=True)


def validation_data(run: RunDir, max_seq_length: int):
    """The validation rows preprocess held out (data.val_fraction), or None when there are none."""
    import datasets

    if not (run.val_data / "dataset_info.json").is_file():
        return None
    val = datasets.load_from_disk(str(run.val_data))
    val = val.filter(lambda r: r["n_tokens"] <= max_seq_length) if "n_tokens" in val.column_names else val
    return val.select_columns(["input_ids", "labels"]) if len(val) else None


def train(cfg: RunConfig, run: RunDir, loaded: Loaded, print_fn=print, callbacks=(), plan=None) -> dict:
    """Train; resume from the newest checkpoint in the run folder if a previous attempt left one.

    `plan` (memory_plan.plan_training) gives the settings fitted to the memory budget; a CUDA out-of-memory error
    at least halves the micro-batch, to a divisor of the effective batch with the accumulation that keeps it (so the
    optimizer steps and the checkpoints stay the same), and goes on from the newest checkpoint, up to
    memory.oom_retries times. Every figure in the result comes from the trainer's log history, which a resumed
    trainer restores from the checkpoint: a resumed run reports the same totals as one that ran through."""
    import datasets
    import torch
    from medqlora.training.sft_trainer import ValScoringTrainer

    user_cfg = cfg
    cfg = plan.cfg if plan is not None else cfg
    ds = datasets.load_from_disk(str(run.train_data))
    prepared_at = run.result("preprocess").get("max_seq_length")
    if prepared_at is not None and prepared_at != user_cfg.model.max_seq_length:
        raise ValueError(f"the data in {run.train_data} was prepared for model.max_seq_length {prepared_at}, this "
                         f"config trains at {user_cfg.model.max_seq_length}; rerun the preprocess stage "
                         "(runner.py --resume reruns it when the setting changed)")
    dropped_for_length = 0
    if cfg.model.max_seq_length < user_cfg.model.max_seq_length:  # shortened by the memory plan
        n = len(ds)
        ds = ds.filter(lambda r: r["n_tokens"] <= cfg.model.max_seq_length)
        dropped_for_length = n - len(ds)
        print_fn(f"memory: max_seq_length {cfg.model.max_seq_length}: {dropped_for_length} of {n} training examples "
                 "are longer and are left out")
    useful_tokens_per_epoch = int(sum(ds["n_tokens"])) if "n_tokens" in ds.column_names else None
    ds = ds.select_columns(["input_ids", "labels"])
    val = validation_data(run, cfg.model.max_seq_length)
    if val is None and cfg.train.early_stopping_patience:
        raise ValueError("train.early_stopping_patience is set but the prepared data has no validation rows "
                         f"({run.val_data} is missing): rerun the preprocess stage with data.val_fraction above 0")
    scorer = select.val_scorer(cfg, run, loaded.tokenizer, val is not None)  # closed-form validation items, if any
    guarded = M.keep_training_layout(loaded.model)  # validation passes mid-training must not repack the weights
    initial_lora = {k: v.detach().clone() for k, v in loaded.model.named_parameters() if v.requires_grad}
    memory_log.record(run, "train", "before training")
    # Training reads no KV cache, and with one transformers' attention would not keep packed examples apart (TRL's
    # default chunked loss already calls the model without one; the plain loss does not).
    use_cache = getattr(loaded.model.config, "use_cache", None)
    loaded.model.config.use_cache = False
    packing = P.resolve(cfg.train.packing, loaded.backend)
    packing_check = None
    oom_log: list[dict] = []
    t0 = time.time()
    while True:
        args = sft_config(cfg, run, packing, validate=val is not None)
        progress = ProgressPrinter(print_fn)
        extra = [] if val is None else [EvaluateAtEpochEnd()]
        if val is not None and cfg.train.early_stopping_patience:
            from transformers import EarlyStoppingCallback

            extra.append(EarlyStoppingCallback(cfg.train.early_stopping_patience))
        trainer = ValScoringTrainer(model=loaded.model, args=args, train_dataset=ds, eval_dataset=val,
                                    processing_class=loaded.tokenizer, val_scorer=scorer,
                                    callbacks=[progress, StopOnNonFiniteLoss(cfg.train.learning_rate),
                                               MemoryRecorder(run), *extra, *callbacks])
        trainer.remove_callback(PrinterCallback)  # its raw log dicts repeat what ProgressPrinter shows
        if packing and packing_check is None:
            # the unpacked rows, to compare prompt masks with (packing reorders them by length)
            packing_check = P.check_trainer(trainer, ds.select(range(min(len(ds), 20000))).to_list())
            memory_log.record(run, "train", "packing checked")
            print_fn(packing_check.line())
            if packing_check.failed:
                if cfg.train.packing is True:
                    raise RuntimeError(
                        f"{packing_check.line()}. Packed examples would train on each other's tokens with this model "
                        f"and backend ({loaded.backend}); set train.packing: false (or auto)")
                print_fn("packing: off for this run (train.packing auto), examples are batched unpacked")
                loaded.optimizations = [o for o in loaded.optimizations if not o.startswith("packing")] + [
                    "packing off: the packing check found examples attending to each other"]
                packing = False
                continue
        resume = _resumable_checkpoint(cfg, run, print_fn)
        if resume is None:  # from the start: undo whatever a failed attempt did to the LoRA weights
            with torch.no_grad():
                for k, v in loaded.model.named_parameters():
                    if k in initial_lora:
                        v.copy_(initial_lora[k])
        try:
            trainer.train(resume_from_checkpoint=resume)
            break
        except Exception as e:
            if not _is_oom(e):
                raise
            step, error = trainer.state.global_step, str(e).splitlines()[0][:200]
        # Out of memory. Freed here, outside the except block: the exception's frames hold the failed step's tensors.
        mb, acc = cfg.train.micro_batch_size, cfg.train.gradient_accumulation
        del trainer
        free_memory(reset_peak=True)
        if mb == 1 or len(oom_log) >= cfg.memory.oom_retries:
            raise memory_plan.MemoryFitError(
                f"out of GPU memory at step {step} with micro-batch {mb} after {len(oom_log)} retries: lower "
                f"model.max_seq_length (now {cfg.model.max_seq_length}) or set memory.allow_shorter_seq: true, "
                "keep train.gradient_checkpointing on, use train.optimizer: adamw_8bit, lower lora.r, or use a "
                f"card with more memory ({error})")
        # the effective batch is kept (a divisor of it), so the checkpoints stay valid and training goes on
        new_mb, new_acc = memory_plan.smaller_micro_batch(mb, acc)
        cfg = cfg.model_copy(deep=True)
        cfg.train.micro_batch_size, cfg.train.gradient_accumulation = new_mb, new_acc
        oom_log.append({"at_step": step, "micro_batch": [mb, new_mb], "accumulation": [acc, new_acc],
                        "error": error})
        memory_log.record(run, "train", f"out of memory at step {step}: micro-batch {mb} -> {new_mb}")
        print_fn(f"memory: out of memory at step {step}; retrying with micro-batch {new_mb} and accumulation "
                 f"{new_acc} (effective batch {new_mb * new_acc}, unchanged) from the newest checkpoint")
    session_seconds = time.time() - t0
    M.release_training_layout(guarded)
    loaded.model.config.use_cache = use_cache
    trainer.save_model(str(run.adapter_dir))
    loaded.tokenizer.save_pretrained(str(run.adapter_dir))
    memory_log.record(run, "train", "adapter saved")
    state = trainer.state
    history = summarize_history(state.log_history, state.global_step)
    session_steps = state.global_step - progress.start_step
    peak = round(peak_memory_gb(), 2)
    result = {"backend": loaded.backend, "base_model": loaded.ref, "steps": state.global_step,
              "epochs": round(state.epoch or 0, 3), "examples": len(ds), **history,
              "val_examples": len(val) if val is not None else 0,
              "val_accuracy_items": len(scorer.items) if scorer else 0,  # closed-form ones, scored by log-likelihood
              "selection": select.selection(cfg.train, state, len(scorer.items) if scorer else 0),
              "early_stopping": ({"patience": cfg.train.early_stopping_patience, "stopped_early":
                                  state.global_step < state.max_steps, "kept_checkpoint": state.best_model_checkpoint}
                                 if val is not None and cfg.train.early_stopping_patience else None),
              "seconds_per_step": round(history["seconds"] / max(state.global_step, 1), 3),
              "packing": packing, "packing_check": packing_check.to_dict() if packing_check else None,
              "examples_per_step": round(len(ds) * (state.epoch or 0) / max(state.global_step, 1), 1),
              **throughput(useful_tokens_per_epoch, state.epoch, history["seconds"]),
              "warmup_steps": args.get_warmup_steps(state.max_steps), "logging_steps": cfg.train.logging_steps,
              "peak_memory_gb": peak, "params": loaded.params,
              "optimizations": loaded.optimizations, "resumed_from": resume,
              "attention": attention.attention_path() if loaded.backend == "unsloth" else None,
              "sessions": {"this_session_steps": session_steps, "this_session_seconds": round(session_seconds, 1)},
              "effective_settings": {"micro_batch_size": cfg.train.micro_batch_size,
                                     "gradient_accumulation": cfg.train.gradient_accumulation,
                                     "gradient_checkpointing": cfg.train.gradient_checkpointing,
                                     "optimizer": cfg.train.optimizer, "max_seq_length": cfg.model.max_seq_length},
              "memory": {"plan": plan.to_dict() if plan is not None else None, "oom_retries": oom_log,
                         "measured_peak_gb": peak, "dropped_for_length": dropped_for_length},
              "adapter_dir": str(run.adapter_dir)}
    if plan is not None and plan.shape is not None:  # the estimate for the settings that really trained
        est = memory.total(memory.estimate_training(plan.shape, memory.settings_from(cfg, loaded.backend),
                                                    cfg.lora.r, cfg.lora.target_modules))
        result["memory"]["estimate_vs_measured"] = round(est, 2), peak
        print_fn(f"memory: estimated peak {est:.2f} GiB (without the {plan.context_gb} GiB context) at micro-batch "
                 f"{cfg.train.micro_batch_size} x {cfg.model.max_seq_length} tokens (the worst case), measured {peak} "
                 "GiB")
    if not history["losses"]:
        print_fn("no loss was logged: the run was already complete at the checkpoint it resumed from, "
                 "and that checkpoint holds no history")
    return result


