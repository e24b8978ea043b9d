"""The loss history of a training run: its summary figures, throughput, the epoch table and the loss plot."""
from __future__ import annotations

import math
from pathlib import Path


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


def weighted_mean(losses: list[tuple[int, float]], start: int = 0) -> float | None:
    """The mean loss per optimizer step over logged (step, loss) entries. Each logged loss is the mean over the
    steps since the previous log (since `start` for the first entry), so it is weighted by that span: the one
    computation behind train_loss, the epoch table and the smoothed ends."""
    total, prev = 0.0, start
    for step, loss in losses:
        total += loss * (step - prev)
        prev = step
    return total / (prev - start) if prev > start else None


def loss_ends(losses: list[tuple[int, float]]) -> tuple[float | None, float | None]:
    """The training loss at the start and at the end of the run, each the step-weighted mean over a fifth of the
    steps (at least two logging intervals): single logged steps are too noisy to say whether the loss fell."""
    if not losses:
        return None, None
    gaps = sorted(b - a for (a, _), (b, _) in zip(losses, losses[1:])) or [1]
    span = max(1.0, losses[-1][0] / 5, 2 * gaps[len(gaps) // 2])
    head = [x for x in losses if x[0] <= span] or losses[:1]
    i = next(i for i, (step, _) in enumerate(losses) if step > losses[-1][0] - span)
    return weighted_mean(head), weighted_mean(losses[i:], losses[i - 1][0] if i else 0)


def val_entries(log_history: list[dict], key: str = "eval_loss") -> list[tuple[int, float]]:
    """(step, validation loss, or another evaluation metric) of each evaluation, one per step (an epoch end can
    repeat a step's)."""
    by_step = {h["step"]: float(h[key]) for h in log_history if key in h and "step" in h}
    return sorted(by_step.items())


def summarize_history(log_history: list[dict], total_steps: int) -> dict:
    """Training figures rebuilt from the trainer's whole log history, the same for a resumed run as for one
    that ran uninterrupted: losses, first and final loss, smoothed ends, mean training loss, validation losses,
    epoch table."""
    entries = loss_entries(log_history)
    losses = [(h["step"], float(h["loss"])) for h in entries]
    val = val_entries(log_history)
    acc = val_entries(log_history, "eval_val_accuracy")  # closed-form validation items (train.select_by)
    epochs: dict[int, list[dict]] = {}
    for h in entries:
        epochs.setdefault(max(1, math.ceil(round(h.get("epoch", 0), 6))), []).append(h)
    table, prev = [], 0
    for ep, hs in sorted(epochs.items()):
        last = hs[-1]
        in_epoch = [v for s, v in val if prev < s <= last["step"]]
        acc_in_epoch = [v for s, v in acc if prev < s <= last["step"]]
        table.append({"epoch": round(last.get("epoch", ep), 2), "step": last["step"],
                      "train_loss": weighted_mean([(h["step"], float(h["loss"])) for h in hs], prev),
                      "val_loss": in_epoch[-1] if in_epoch else None,
                      **({"val_accuracy": acc_in_epoch[-1] if acc_in_epoch else None} if acc else {}),
                      "learning_rate": last.get("learning_rate"), "elapsed_s": last.get("elapsed_s"),
                      "rss_gb": last.get("rss_gb"), "gpu_peak_gb": last.get("gpu_peak_gb")})
        prev = last["step"]
    start, end = loss_ends(losses)
    best = min(val, key=lambda x: x[1]) if val else None
    best_acc = max(acc, key=lambda x: x[1]) if acc else None  # the first of equals, as the trainer keeps it
    return {"losses": losses, "first_loss": losses[0][1] if losses else None,
            "final_loss": losses[-1][1] if losses else None, "loss_start": start, "loss_end": end,
            "train_loss": weighted_mean(losses), "logged_steps": losses[-1][0] if losses else 0,
            "val_losses": val, "val_first": val[0][1] if val else None, "val_last": val[-1][1] if val else None,
            "val_best": best[1] if best else None, "val_best_step": best[0] if best else None,
            "val_accuracies": acc, "val_acc_best": best_acc[1] if best_acc else None,
            "val_acc_best_step": best_acc[0] if best_acc else None,
            "seconds": round(seconds_at(log_history, total_steps), 1), "epochs_table": table}


def loss_line(result: dict) -> str:
    """The training and validation loss in one line: the smoothed ends (a fifth of the steps each) and the
    step-weighted mean, then the validation loss's first and last measurement and its best."""
    start, end = result.get("loss_start"), result.get("loss_end")
    if start is None:  # a train.json from before the smoothed ends: the single logged steps, said so
        start, end, how = result.get("first_loss"), result.get("final_loss"), "first and last logged step"
    else:
        how = "mean of the first and last fifth of the steps"
    line = f"training loss {fmt_loss(start)} -> {fmt_loss(end)} ({how}; mean {fmt_loss(result.get('train_loss'))})"
    val = result.get("val_losses") or []
    if val:
        line += (f", validation loss {fmt_loss(val[0][1])} (step {val[0][0]}) -> {fmt_loss(val[-1][1])} "
                 f"(step {val[-1][0]}), best {fmt_loss(result['val_best'])} at step {result['val_best_step']}")
    elif result.get("val_examples") == 0 or "val_losses" in result:
        line += ", no validation loss (data.val_fraction 0 or no validation rows)"
    acc = result.get("val_accuracies") or []
    if acc:
        line += (f"; validation accuracy {acc[0][1]:.3f} (step {acc[0][0]}) -> {acc[-1][1]:.3f} (step {acc[-1][0]}), "
                 f"best {result['val_acc_best']:.3f} at step {result['val_acc_best_step']} "
                 f"({result.get('val_accuracy_items', '?')} closed-form items, by log-likelihood)")
    return line


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


def smoothed(losses: list[tuple[int, float]], window: int) -> list[float]:
    """A trailing step-weighted mean over about `window` steps, to draw under the raw curve."""
    out = []
    for i, (step, _) in enumerate(losses):
        j = i
        while j > 0 and losses[j - 1][0] > step - window:
            j -= 1
        out.append(weighted_mean(losses[j:i + 1], losses[j - 1][0] if j else 0))
    return out


def plot_loss(result: dict, path: Path):
    import matplotlib.pyplot as plt

    losses, val = result["losses"], result.get("val_losses") or []
    fig, ax = plt.subplots(figsize=(8, 3.2))
    if losses:
        steps, raw = zip(*losses)
        ax.plot(steps, raw, lw=0.8, alpha=0.35, color="C0", label="training loss (each logged step)")
        gaps = sorted(b - a for a, b in zip(steps, steps[1:])) or [1]
        window = max(round(steps[-1] / 10), 3 * gaps[len(gaps) // 2])  # at least three logged losses
        ax.plot(steps, smoothed(losses, window), lw=2, color="C0", label=f"training loss, mean of {window} steps")
    if val:
        ax.plot(*zip(*val), marker="o", lw=1.5, color="C1", label="validation loss (held-out training rows)")
    acc = result.get("val_accuracies") or []
    if acc:  # its own axis: a share, not a loss
        ax2 = ax.twinx()
        ax2.plot(*zip(*acc), marker="s", lw=1.5, color="C2", label="validation accuracy (closed-form, right axis)")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation accuracy")
        ax2.legend(fontsize=8, loc="lower left")
    for row in result["epochs_table"]:
        ax.axvline(row["step"], color="grey", ls=":", lw=0.8)
    from medqlora.training.select import kept

    k = kept(result)
    if k:
        ax.axvline(k["step"], color="C3", ls="--", lw=1, label=f"kept checkpoint: step {k['step']} ({k['by']})")
    ax.set_xlabel("optimizer step (dotted: epoch ends)")
    ax.set_ylabel("loss (answer tokens)")
    ax.legend(fontsize=8)
    title = loss_line(result).replace("; mean", ";\nmean", 1).replace("; validation accuracy", ";\nvalidation accuracy")
    ax.set_title(title if losses else "no loss logged", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig
