"""What GRPO shows while it runs and what its history says after: a text line per step with ETA (the mean reward and
each reward's, the share of groups whose rewards were all equal, completion length, clipping, KL where beta > 0, the
chosen answers and the share of closed thoughts), memory in memory.jsonl, and the per-step rows rebuilt from the
trainer's log history (restored from a checkpoint on resume, so a resumed run tells the whole story)."""
from __future__ import annotations

import time

from medqlora.core import memory_log
from medqlora.training import model as M

M.preload_unsloth()  # before transformers: Unsloth patches it on import
from transformers import TrainerCallback  # noqa: E402

from medqlora.core.system import clock, memory_line, memory_snapshot  # noqa: E402
from medqlora.reinforce.rewards import NONE  # noqa: E402

REWARDS = ("correctness", "format", "length")
DOMINANT_SHARE = 0.6  # one answer in more than this share of the last fifth's completions gets a warning


def step_rows(log_history: list[dict]) -> list[dict]:
    """One row per GRPO step from the trainer's log history: the figures TRL logs, named for reading."""
    rows = []
    for h in log_history:
        if "reward" not in h or "step" not in h:
            continue
        row = {"step": h["step"], "reward": h["reward"], "reward_std": h.get("reward_std"),
               **{name: h.get(f"rewards/{name}/mean") for name in REWARDS},
               "all_equal_groups": h.get("frac_reward_zero_std"), "length": h.get("completions/mean_length"),
               "clipped": h.get("completions/clipped_ratio"), "kl": h.get("kl"), "loss": h.get("loss"),
               "thought_closed": h.get("answers/thought_closed"), "elapsed_s": h.get("elapsed_s")}
        row["answers"] = {k.split("/", 1)[1]: v for k, v in h.items()
                          if k.startswith("answers/") and k != "answers/thought_closed"}
        rows.append(row)
    return rows


def fifths(rows: list[dict], key: str) -> tuple[float | None, float | None]:
    """The mean of `key` over the first and over the last fifth of the steps (at least one step each)."""
    vals = [r[key] for r in rows if r.get(key) is not None]
    if not vals:
        return None, None
    k = max(1, len(vals) // 5)
    return sum(vals[:k]) / k, sum(vals[-k:]) / k


def answer_shares(rows: list[dict]) -> dict[str, float]:
    """The chosen answers' shares, averaged over the given steps (labels in order, 'none' last)."""
    labels = sorted({k for r in rows for k in r["answers"]} - {NONE}) + [NONE]
    n = max(len(rows), 1)
    return {k: round(sum(r["answers"].get(k, 0.0) for r in rows) / n, 3) for k in labels}


def summarize(log_history: list[dict], reference: dict[str, int] | None = None) -> dict:
    """The run's figures from its whole history: per-step rows, reward at the first and last fifth, the answers chosen
    in the first and the last fifth, closed thoughts, and the warnings a reader must not miss."""
    rows = step_rows(log_history)
    k = max(1, len(rows) // 5)
    start, end = fifths(rows, "reward")
    out = {"rows": rows, "reward_start": start, "reward_end": end,
           **{f"{name}_start": fifths(rows, name)[0] for name in REWARDS},
           **{f"{name}_end": fifths(rows, name)[1] for name in REWARDS},
           "answers_first": answer_shares(rows[:k]), "answers": answer_shares(rows[-k:]),
           "thought_closed": fifths(rows, "thought_closed")[1], "all_equal_groups": fifths(rows, "all_equal_groups")[1],
           "clipped": fifths(rows, "clipped")[1], "warnings": []}
    top = max((x for x in out["answers"].items() if x[0] != NONE), key=lambda x: x[1], default=None)
    ref_top = max(reference.values()) / sum(reference.values()) if reference else 0.0
    if top and top[1] > DOMINANT_SHARE and top[1] > ref_top + 0.1:
        out["warnings"].append(f"reinforce: the model answers {top[0]!r} in {top[1]:.0%} of its completions over the "
                               f"last fifth of the steps (the right answers have {ref_top:.0%} at most for one option)")
    if out["all_equal_groups"] is not None and out["all_equal_groups"] > 0.8:
        out["warnings"].append(f"reinforce: {out['all_equal_groups']:.0%} of the groups had all-equal rewards over the "
                               "last fifth (they teach nothing): raise rl.num_generations or rl.temperature")
    if out["clipped"] is not None and out["clipped"] > 0.5:
        out["warnings"].append(f"reinforce: {out['clipped']:.0%} of the completions hit rl.max_completion_length over "
                               "the last fifth: raise it, or the thought never reaches its answer")
    return out


class GrpoProgress(TrainerCallback):
    """A text line per logged step with ETA (it survives in the saved notebook); stamps each history entry with the
    run's cumulative GRPO seconds and memory, so that the history restored from a checkpoint has them after a resume."""

    def __init__(self, print_fn=print, every: int = 1, beta: float = 0.0, recorder=None):
        self.print, self.every, self.beta, self.recorder = print_fn, every, beta, recorder
        self.t0, self.start_step, self.seconds_before = None, 0, 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.t0, self.start_step = time.time(), state.global_step
        stamped = [h for h in state.log_history if "elapsed_s" in h and h.get("step", 0) <= state.global_step]
        self.seconds_before = stamped[-1]["elapsed_s"] if stamped else 0.0
        resumed = f", resumed at step {state.global_step}" if state.global_step else ""
        self.print(f"GRPO {state.max_steps} steps{resumed} | {memory_line()}")

    def on_log(self, args, state, control, logs=None, **kw):
        if not logs or "reward" not in logs:
            return
        elapsed = time.time() - self.t0
        entry = state.log_history[-1]
        if self.recorder is not None:  # answers recorded where the trainer gave the rewards no log_metric
            shares = self.recorder.take_pending()
            entry.update(shares)
            logs.update(shares)
        entry["elapsed_s"] = round(self.seconds_before + elapsed, 2)
        snap = memory_snapshot()
        entry["rss_gb"] = round(snap["rss_gb"], 3)
        if "gpu_peak_gb" in snap:
            entry["gpu_peak_gb"] = round(snap["gpu_peak_gb"], 3)
        step = state.global_step
        if step % self.every and step < state.max_steps:
            return
        per_step = elapsed / max(step - self.start_step, 1)
        parts = ", ".join(f"{n} {logs[f'rewards/{n}/mean']:.2f}" for n in REWARDS if f"rewards/{n}/mean" in logs)
        answers = " ".join(f"{k.split('/', 1)[1]} {v:.0%}" for k, v in logs.items()
                           if k.startswith("answers/") and k != "answers/thought_closed" and v)
        kl = f" | KL {logs['kl']:.4f}" if self.beta > 0 and "kl" in logs else ""
        self.print(f"step {step:>4}/{state.max_steps} | reward {logs['reward']:.3f} ({parts}) | all-equal groups "
                   f"{logs.get('frac_reward_zero_std', 0):.0%} | length {logs.get('completions/mean_length', 0):.0f} "
                   f"tok, clipped {logs.get('completions/clipped_ratio', 0):.0%}{kl} | answers {answers} | thought "
                   f"closed {logs.get('answers/thought_closed', 0):.0%} | {per_step:.2f} s/step | ETA "
                   f"{clock(per_step * (state.max_steps - step))} | {memory_line(snap)}")


class GrpoMemory(TrainerCallback):
    """Memory at the start and at each logged step, into memory.jsonl (stage reinforce)."""

    def __init__(self, run):
        self.run = run

    def on_train_begin(self, args, state, control, **kw):
        memory_log.record(self.run, "reinforce", "GRPO began")

    def on_log(self, args, state, control, logs=None, **kw):
        if logs and "reward" in logs:
            memory_log.record(self.run, "reinforce", f"step {state.global_step}")
