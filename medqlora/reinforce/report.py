"""What the reinforce notebook shows after GRPO: the policy, the per-step table, the chosen answers against the right
ones, the reward and answer plots, and the line that says what the stage did."""
from __future__ import annotations

from pathlib import Path

from medqlora.reinforce.progress import REWARDS
from medqlora.reinforce.rewards import NONE


def _pct(v) -> str:
    return "n/a" if v is None else f"{v:.0%}"


def _num(v, digits: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{digits}f}"


def policy_table(loaded):
    """Where GRPO starts, how it generates, and the trainable share."""
    import pandas as pd

    rows = {"starts from": loaded.start["line"], "backend": loaded.backend, "generation": loaded.generation,
            "base model": loaded.ref, "trainable (LoRA)": f"{loaded.params['trainable']:,} of "
            f"{loaded.params['total']:,} ({loaded.params['trainable_pct']:.2f}%)",
            "load time": f"{loaded.load_seconds:.1f} s"}
    return pd.DataFrame({"value": rows})


def steps_table(result: dict, every: int | None = None):
    """Each logged step: the mean reward and each reward's, groups with all-equal rewards (they teach nothing),
    completion length and clipping, KL, closed thoughts and the most chosen answer."""
    import pandas as pd

    rows = result["rows"]
    every = every or max(1, len(rows) // 25)
    out = []
    for r in rows[::every] + ([rows[-1]] if rows and (len(rows) - 1) % every else []):
        top = max(r["answers"].items(), key=lambda x: x[1], default=(None, None))
        out.append({"step": r["step"], "reward": r["reward"], **{n: r[n] for n in REWARDS},
                    "all-equal groups": r["all_equal_groups"], "length (tokens)": r["length"],
                    "clipped": r["clipped"], "KL": r["kl"], "thought closed": r["thought_closed"],
                    "most chosen": f"{top[0]} ({top[1]:.0%})" if top[0] is not None else "n/a"})
    return pd.DataFrame(out).set_index("step").round(3)


def answers_table(result: dict):
    """The chosen answers in the first and the last fifth of the steps against the right answers' shares: a model
    that learns to always say one letter shows here at once."""
    import pandas as pd

    ref = result.get("reference_answers") or {}
    n = sum(ref.values()) or 1
    labels = list(dict.fromkeys([*sorted(ref), *result["answers_first"], *result["answers"]]))
    labels = [x for x in labels if x != NONE] + [NONE]
    df = pd.DataFrame({"right answers": [ref.get(k, 0) / n for k in labels],
                       "chosen, first fifth": [result["answers_first"].get(k, 0.0) for k in labels],
                       "chosen, last fifth": [result["answers"].get(k, 0.0) for k in labels]},
                      index=[k if k != NONE else "no answer (unreadable, two answers)" for k in labels])
    return df.map("{:.0%}".format)


def plot_rewards(result: dict, path: Path):
    """The mean reward and each reward's per step (left), the all-equal groups and clipped completions (right)."""
    import matplotlib.pyplot as plt

    rows = result["rows"]
    steps = [r["step"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.4))
    a.plot(steps, [r["reward"] for r in rows], lw=2, label="mean reward (weighted sum)")
    for name in REWARDS:
        if any(r[name] for r in rows):
            a.plot(steps, [r[name] for r in rows], lw=1, alpha=0.8, label=name)
    a.set_xlabel("GRPO step")
    a.legend(fontsize=8)
    a.set_title("rewards")
    for key, label in (("all_equal_groups", "groups with all-equal rewards"), ("clipped", "completions clipped"),
                       ("thought_closed", "thoughts closed")):
        if any(r[key] is not None for r in rows):
            b.plot(steps, [r[key] for r in rows], lw=1, label=label)
    b.set_ylim(-0.02, 1.02)
    b.set_xlabel("GRPO step")
    b.legend(fontsize=8)
    b.set_title("shares per step")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def plot_answers(result: dict, path: Path):
    """The share of each chosen answer per step, stacked."""
    import matplotlib.pyplot as plt

    rows = result["rows"]
    labels = [k for k in result["answers"] if k != NONE] + [NONE]
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.stackplot([r["step"] for r in rows], *[[r["answers"].get(k, 0.0) for r in rows] for k in labels],
                 labels=[k if k != NONE else "no answer" for k in labels])
    ax.set_ylim(0, 1)
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("share of completions")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    ax.set_title("chosen answers")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def summary_line(result: dict) -> str:
    answers = ", ".join(f"{k} {v:.0%}" for k, v in result["answers"].items() if v)
    return (f"GRPO from {result['started_from']}: {result['steps']} steps in {result['seconds']} s "
            f"({result['seconds_per_step']} s/step), mean reward {_num(result['reward_start'])} -> "
            f"{_num(result['reward_end'])} (first -> last fifth; correctness {_num(result['correctness_start'])} -> "
            f"{_num(result['correctness_end'])}); answers in the last fifth: {answers}; thoughts closed "
            f"{_pct(result['thought_closed'])}; peak memory {result['peak_memory_gb']} GiB; adapter in "
            f"{result['adapter_dir']}" + "".join(f"\nWARNING {w}" for w in result.get("warnings", [])))
