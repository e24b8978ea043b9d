"""What the trainer reports while it runs: live progress with ETA, memory at each logged step, a stop on a non-finite loss."""
from __future__ import annotations

import math
import time

from medqlora.core import memory_log
from medqlora.training import model as M

M.preload_unsloth()  # before transformers: Unsloth patches it on import
from transformers import TrainerCallback  # noqa: E402

from medqlora.core.rundir import RunDir
from medqlora.core.system import clock, memory_line, memory_snapshot
from medqlora.training.history import seconds_at


class ProgressPrinter(TrainerCallback):
    """Plain-text progress with ETA (survives in a saved notebook, unlike a widget).

    It also stamps every loss entry of the trainer's log_history with the run's cumulative training
    seconds and memory, so that the history restored from a checkpoint tells the whole story after a resume."""

    def __init__(self, print_fn=print):
        self.print = print_fn
        self.t0 = None
        self.start_step = 0
        self.seconds_before = 0.0  # training seconds spent before the checkpoint this session resumed from

    def on_train_begin(self, args, state, control, **kw):
        self.t0 = time.time()
        self.start_step = state.global_step  # > 0 when resumed from a checkpoint
        self.seconds_before = seconds_at(state.log_history, state.global_step)
        resumed = f", resumed at step {state.global_step}" if state.global_step else ""
        self.print(f"training {state.max_steps} steps ({args.num_train_epochs:g} epochs{resumed}) | {memory_line()}")

    def on_step_end(self, args, state, control, **kw):
        if state.global_step >= state.max_steps:
            control.should_log = True  # the last step's loss is always logged, whatever logging_steps says
        return control

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "loss" not in logs:
            return
        elapsed = time.time() - self.t0
        snap = memory_snapshot()
        entry = state.log_history[-1]  # the dict the trainer keeps (and saves with each checkpoint)
        entry["elapsed_s"] = round(self.seconds_before + elapsed, 2)
        entry["rss_gb"] = round(snap["rss_gb"], 3)
        if "gpu_peak_gb" in snap:
            entry["gpu_peak_gb"] = round(snap["gpu_peak_gb"], 3)
        per_step = elapsed / max(state.global_step - self.start_step, 1)
        eta = per_step * (state.max_steps - state.global_step)
        self.print(f"step {state.global_step:>4}/{state.max_steps} | epoch {state.epoch:.2f} | "
                   f"loss {float(logs['loss']):.4f} | lr {float(logs.get('learning_rate', 0)):.2e} | "
                   f"{per_step:.2f} s/step | elapsed {clock(entry['elapsed_s'])} | ETA {clock(eta)} | "
                   f"{memory_line(snap)}")


    def on_evaluate(self, args, state, control, metrics=None, **kw):
        if metrics and "eval_loss" in metrics:
            secs = f" ({metrics['eval_runtime']:.1f} s)" if "eval_runtime" in metrics else ""
            acc = metrics.get("eval_val_accuracy")
            acc = f" | validation accuracy {acc:.3f} (closed-form, log-likelihood)" if acc is not None else ""
            self.print(f"step {state.global_step:>4}/{state.max_steps} | validation loss {metrics['eval_loss']:.4f}"
                       f"{acc}{secs}")


class StopOnNonFiniteLoss(TrainerCallback):
    """A NaN or infinite loss ends training at once, with the step and what to change."""

    def __init__(self, learning_rate: float):
        self.lr = learning_rate

    def on_log(self, args, state, control, logs=None, **kw):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss became {loss} at step {state.global_step}: the run diverged. Lower "
                f"train.learning_rate (now {self.lr:g}; try {self.lr / 4:g}), keep warmup on (train.warmup_ratio), "
                "and on a card without bf16 check for fp16 overflow (model.dtype)")


class MemoryRecorder(TrainerCallback):
    """Memory at each logged step and each epoch end, into the run's memory.jsonl."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_train_begin(self, args, state, control, **kw):  # after the trainer's own start (optimizer, loaders)
        memory_log.record(self.run, "train", "training began")

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "loss" in logs:
            memory_log.record(self.run, "train", f"step {state.global_step}")

    def on_epoch_end(self, args, state, control, **kw):
        memory_log.record(self.run, "train", f"epoch {round(state.epoch or 0, 2)} end")


class EvaluateAtEpochEnd(TrainerCallback):
    """The validation loss at each epoch end too (eval_strategy 'steps' alone would skip it), unless the last step
    was just evaluated."""

    def __init__(self):
        self.last_step = -1

    def on_evaluate(self, args, state, control, **kw):
        self.last_step = state.global_step

    def on_epoch_end(self, args, state, control, **kw):
        if state.global_step != self.last_step:
            control.should_evaluate = True
        return control
