"""What the evaluate notebook shows per eval set: metric, set and closed-form tables, the warnings, the chart.
Item-level tables (answers side by side, categories) are in items.py."""
from __future__ import annotations

from pathlib import Path

from medqlora.evaluation.scoring import (
    ROUGE_KEYS,
)


def queries_table(result: dict):
    import pandas as pd

    g = result.get("generation", {})
    caption = "generation: " + ", ".join(f"{k}={v}" for k, v in g.items())
    if not result.get("queries"):
        return pd.DataFrame({"eval.queries": ["none given"]}).style.set_caption(caption)
    df = pd.DataFrame(result["queries"]).rename(columns={"finetuned": "fine-tuned"})
    return (df.style.set_caption(caption).hide(axis="index")
            .set_properties(**{"text-align": "left", "white-space": "pre-wrap", "vertical-align": "top"}))


ROTATION_KEYS = ("loglik_acc_rotated", "rotation_consistency")  # evaluation/rotation.py
METRIC_ROWS = (*ROUGE_KEYS, "accuracy", "parse_rate", "loglik_acc", "loglik_acc_norm", *ROTATION_KEYS, "looping",
               "hit_token_limit", "answer_words_mean")


def metrics_table(result: dict):
    """One row a metric: base and fine-tuned with 95% intervals, the change with its paired interval."""
    import pandas as pd

    m, ch = result["metrics"], result.get("changes", {})

    def cell(v, ci=None):
        if v is None:
            return "n/a"
        return f"{v:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")

    rows = []
    for k in METRIC_ROWS:
        b, f = m["base"].get(k), m["finetuned"].get(k)
        if b is None and f is None:
            continue
        c = ch.get(k) or {}
        change = c.get("change")
        rows.append({"metric": k, "base [95% CI]": cell(b, c.get("base_ci95")),
                     "fine-tuned [95% CI]": cell(f, c.get("finetuned_ci95")),
                     "change [95% CI, paired]": (f"{change['change']:+.3f} [{change['ci95'][0]:+.3f}, "
                                                 f"{change['ci95'][1]:+.3f}]") if change else
                     (f"{f - b:+.3f}" if b is not None and f is not None else "")})
    rows.append({"metric": "items (free text / closed)", "base [95% CI]": f"{m['base']['n_freetext']} / "
                 f"{m['base']['n_choice']}", "fine-tuned [95% CI]": "", "change [95% CI, paired]": ""})
    rows.append({"metric": "items scored", "base [95% CI]": scored_line(result), "fine-tuned [95% CI]": "",
                 "change [95% CI, paired]": ""})
    return pd.DataFrame(rows).set_index("metric")


def scored_line(st: dict) -> str:
    """'N of M items (...)' where eval.max_samples scored a sample of the set, else 'all M items'."""
    s = st.get("sampled")
    if s:
        return (f"{s['n']} of {s['of']} items (eval.max_samples: a sample spread over the file, free text and "
                f"closed-form in their shares, seed {s['seed']})")
    return f"all {st['n_items']} items" if st.get("n_items") is not None else "n/a"


def sets_table(result: dict):
    """One row per eval set: items, and each headline metric base -> fine-tuned with the paired change and its
    interval; a change whose interval crosses zero is marked as not shown to differ."""
    import pandas as pd

    rows = []
    for name, st in result.get("sets", {}).items():
        for k in ("rougeL", "accuracy", "loglik_acc", "loglik_acc_norm", *ROTATION_KEYS):
            b, f = st["metrics"]["base"].get(k), st["metrics"]["finetuned"].get(k)
            c = (st["changes"].get(k) or {}).get("change")
            if b is None or c is None:
                continue
            lo, hi = c["ci95"]
            n = st["metrics"]["base"]["n_freetext" if k == "rougeL" else "n_choice"]
            if k in ROTATION_KEYS:  # multiple-choice items only: yes/no ones have no letters to move
                n = (st["metrics"]["base"].get("rotation") or {}).get("items", n)
            d = st["metrics"]["base"].get("loglik_closed" if k.startswith("loglik") else "closed")
            rows.append({"eval set": name, "items": n, "items scored": scored_line(st), "metric": k,
                         "base": f"{b:.3f}", "fine-tuned": f"{f:.3f}",
                         "change [95% CI]": f"{c['change']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                         "verdict": "better" if lo > 0 else "worse" if hi < 0 else "no clear difference",
                         "chance / majority": f"{d['chance_baseline']:.3f} / {d['majority_baseline']:.3f}"
                         if d and k not in ("rougeL", *ROTATION_KEYS) else ""})  # rotated: 1/k whatever the answers
    return pd.DataFrame(rows).set_index(["eval set", "metric"]) if rows else pd.DataFrame()


CLOSED_SCORINGS = (("closed", "accuracy", "generated"), ("loglik_closed", "loglik_acc", "log-likelihood"))


def closed_table(result: dict):
    """Closed-form answers of every eval set (the held-out split and each eval.sets entry): what each model
    predicted against the references, by generation and by log-likelihood where scored, with the majority-class and
    chance baselines an accuracy must beat and the warning when one answer dominates."""
    import pandas as pd

    rows = {}
    for name, st in result.get("sets", {"held-out": result}).items():
        m = st["metrics"]
        for dist_key, acc_key, how in CLOSED_SCORINGS:
            for who, label in (("base", "base"), ("finetuned", "fine-tuned")):
                d = m[who].get(dist_key)
                if not d:
                    continue
                col = f"{label} ({how})"
                for ref, k in sorted(d["reference"].items()):
                    rows.setdefault((name, f"answer {ref}"), {})["references"] = str(k)
                for ans, n in sorted(d["predicted"].items()):
                    rows.setdefault((name, "no answer read" if ans == "None" else f"answer {ans}"), {})[col] = str(n)
                rows.setdefault((name, "accuracy"), {})[col] = f"{m[who][acc_key]:.3f}"
                rows.setdefault((name, "majority-class baseline"), {})[col] = f"{d['majority_baseline']:.3f}"
                rows.setdefault((name, "chance baseline"), {})[col] = f"{d['chance_baseline']:.3f}"
                share = f"{d['dominant_share']:.0%} of items"
                rows.setdefault((name, "warning"), {})[col] = (
                    "" if not d["dominant"] else f"no answer read in {share}" if d["dominant"] == "None"
                    else f"answers {d['dominant']} to {share}")
    if not rows:
        return pd.DataFrame({"closed-form items": ["none in any eval set"]})
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index = pd.MultiIndex.from_tuples(df.index, names=["eval set", ""])
    cols = ["references"] + [c for c in df.columns if c != "references"]
    return df.reindex(columns=cols).fillna("")


def warnings_text(result: dict) -> str:
    """Every closed-form warning of every eval set (a dominant answer, an accuracy not above a baseline), one a line."""
    ws = result.get("warnings")
    if ws is None:  # an evaluate.json from before the warnings were kept
        from medqlora.evaluation.scoring import closed_warnings

        ws = [w for name, st in result.get("sets", {}).items() for w in closed_warnings(name, st["metrics"])]
    return "\n".join(f"WARNING {w}" for w in ws) or "no warnings: no answer dominates and every accuracy is above " \
        "its chance and majority-class baselines"


def plot_metrics(result: dict, path: Path):
    """Held-out metrics of both models with 95% bootstrap intervals, the y axis labelled, and the chance and
    majority-class baselines drawn over the accuracy bars."""
    import matplotlib.pyplot as plt
    import numpy as np

    m = result["metrics"]
    keys = [k for k in (*ROUGE_KEYS, "accuracy", "loglik_acc", "loglik_acc_norm") if m["base"].get(k) is not None]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(8, 3.4))
    for off, name, label in ((-0.2, "base", "base"), (0.2, "finetuned", "fine-tuned")):
        vals = [m[name][k] for k in keys]
        cis = [(result.get("changes", {}).get(k) or {}).get(f"{name}_ci95") or [v, v] for k, v in zip(keys, vals)]
        err = [[v - lo for v, (lo, _) in zip(vals, cis)], [hi - v for v, (_, hi) in zip(vals, cis)]]
        bars = ax.bar(x + off, vals, 0.4, label=label, yerr=err, capsize=3)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    drawn = set()
    for i, k in enumerate(keys):
        d = m["base"].get("loglik_closed" if k.startswith("loglik") else "closed") if "acc" in k else None
        for base_key, style, label in (("chance_baseline", "--", "chance"), ("majority_baseline", ":", "majority class")):
            if d:
                ax.hlines(d[base_key], i - 0.45, i + 0.45, colors="black", linestyles=style,
                          label=None if label in drawn else f"{label} baseline")
                drawn.add(label)
    ax.set_xticks(x, keys)
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (ROUGE F1, share correct)")
    ax.set_title(f"held-out: {m['base']['n_freetext']} free-text, {m['base']['n_choice']} closed-form items "
                 "(bars: 95% bootstrap intervals)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig
