"""The loss history of a training run: its summary figures, throughput, the epoch table and the loss plot."""
from __future__ import annotations

import math
from pathlib import Path

from medqlora.training import model as M

M.preload_unsloth()  # before transformers: Unsloth patches it on import



def loss_entries(log_history: list[dict]) -> list[dict]:
    """The trainer's per-logging-step entries that carry a training loss, in step order."""
    return [h for h in log_history if "loss" in h and "step" in h]


def seconds_at(log_history: list[dict], step: int) -> float:
    """Training seconds spent up to `step`, from the stamped history (extrapolated past the last stamp)."""
    stamped = [h for h in loss_entries(log_history) if "elapsed_s" in h and h["step"] <= step]
    if not stamped:
        return 0.0
    last = stamped[-1]
    per_step = last["elapsed_s"] / max(last["step"], 1)
    return last["elapsed_s"] + per_step * (step - last["step"])


def summarize_history(log_history: list[dict], total_steps: int) -> dict:
    """Training figures rebuilt from the trainer's whole log history, the same for a resumed run as for one
    that ran uninterrupted: losses, first and final loss, mean training loss, epoch table."""
    entries = loss_entries(log_history)
    losses = [(h["step"], float(h["loss"])) for h in entries]
    # Each logged loss is the mean over the steps since the previous log: weight it by that span.
    weighted, prev = 0.0, 0
    for step, loss in losses:
        weighted += loss * (step - prev)
        prev = step
    epochs: dict[int, list[dict]] = {}
    for h in entries:
        epochs.setdefault(max(1, math.ceil(round(h.get("epoch", 0), 6))), []).append(h)
    table = []
    for ep, hs in sorted(epochs.items()):
        last = hs[-1]
        table.append({"epoch": round(last.get("epoch", ep), 2), "step": last["step"],
                      "train_loss": sum(float(h["loss"]) for h in hs) / len(hs),
                      "learning_rate": last.get("learning_rate"), "elapsed_s": last.get("elapsed_s"),
                      "rss_gb": last.get("rss_gb"), "gpu_peak_gb": last.get("gpu_peak_gb")})
    return {"losses": losses, "first_loss": losses[0][1] if losses else None,
            "final_loss": losses[-1][1] if losses else None,
            "train_loss": weighted / prev if prev else None, "logged_steps": prev,
            "seconds": round(seconds_at(log_history, total_steps), 1), "epochs_table": table}


def throughput(tokens_per_epoch: int | None, epochs: float | None, seconds: float) -> dict:
    """Useful (non-padding) tokens trained and their rate: the figure that compares packed with unpacked runs."""
    if not tokens_per_epoch or not epochs or not seconds:
        return {"useful_tokens": None, "useful_tokens_per_s": None}
    tokens = round(tokens_per_epoch * epochs)
    return {"useful_tokens": tokens, "useful_tokens_per_s": round(tokens / seconds, 1)}


def fmt_rate(result: dict) -> str:
    rate = result.get("useful_tokens_per_s")
    packed = "packed" if result.get("packing") else "unpacked"
    per_step = f", {result['examples_per_step']:g} examples per optimizer step" if result.get("examples_per_step") else ""
    return (f"{rate:,.0f} useful tokens/s, {packed}" if rate else packed) + per_step


def fmt_loss(v) -> str:
    return "n/a" if v is None else f"{v:.4f}"


def epoch_table(result: dict):
    import pandas as pd

    table = pd.DataFrame(result["epochs_table"])
    return table.set_index("epoch") if len(table) else table


def plot_loss(result: dict, path: Path):
    import matplotlib.pyplot as plt

    steps, losses = zip(*result["losses"]) if result["losses"] else ((), ())
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot(steps, losses, marker=".", lw=1)
    for row in result["epochs_table"]:
        ax.axvline(row["step"], color="grey", ls=":", lw=0.8)
    ax.set_xlabel("optimizer step (dotted: epoch ends)")
    ax.set_ylabel("training loss (answer tokens)")
    ax.set_title(f"{result['steps']} steps, loss {fmt_loss(result['first_loss'])} -> {fmt_loss(result['final_loss'])}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig
