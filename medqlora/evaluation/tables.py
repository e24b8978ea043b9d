"""What the evaluate notebook shows: metric, set, category and closed-form tables, answers side by side, the chart."""
from __future__ import annotations

import json
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


METRIC_ROWS = (*ROUGE_KEYS, "accuracy", "parse_rate", "looping", "hit_token_limit", "answer_words_mean")


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
    return pd.DataFrame(rows).set_index("metric")


def sets_table(result: dict):
    """One row per eval set: items, and each headline metric base -> fine-tuned with the paired change and its
    interval; a change whose interval crosses zero is marked as not shown to differ."""
    import pandas as pd

    rows = []
    for name, st in result.get("sets", {}).items():
        for k in ("rougeL", "accuracy"):
            b, f = st["metrics"]["base"].get(k), st["metrics"]["finetuned"].get(k)
            c = (st["changes"].get(k) or {}).get("change")
            if b is None or c is None:
                continue
            lo, hi = c["ci95"]
            n = st["metrics"]["base"]["n_freetext" if k == "rougeL" else "n_choice"]
            rows.append({"eval set": name, "items": n, "metric": k, "base": round(b, 3),
                         "fine-tuned": round(f, 3), "change [95% CI]": f"{c['change']:+.3f} [{lo:+.3f}, {hi:+.3f}]",
                         "verdict": "better" if lo > 0 else "worse" if hi < 0 else "no clear difference"})
    return pd.DataFrame(rows).set_index(["eval set", "metric"]) if rows else pd.DataFrame()


def category_table(run, name: str = "held-out"):
    """Each category of the eval set (specialty, question type, topic: the data's category column), with its
    items and both models' mean score (ROUGE-L for free text, correctness for closed-form items)."""
    import pandas as pd

    rows = item_table(run, name)
    if not rows or not any(r.get("category") for r in rows):
        return pd.DataFrame({"categories": ["the eval set has no category column"]})
    df = pd.DataFrame([{"category": r.get("category") or "(none)", "items": 1, "base": r["base score"],
                        "fine-tuned": r["finetuned score"], "improved": r["change"] == "improved",
                        "regressed": r["change"] == "regressed"} for r in rows])
    out = df.groupby("category").agg(items=("items", "sum"), base=("base", "mean"), finetuned=("fine-tuned", "mean"),
                                     improved=("improved", "sum"), regressed=("regressed", "sum"))
    out["change"] = out["finetuned"] - out["base"]  # scores: ROUGE-L for free text, 1/0 for closed-form
    return out.rename(columns={"base": "base score", "finetuned": "fine-tuned score"}).sort_values("change").round(3)


def closed_table(result: dict):
    """Closed-form answers: what each model predicted against the references, with the baselines an accuracy
    must beat, and a warning when one answer dominates."""
    import pandas as pd

    m = result["metrics"]
    if not m["base"].get("closed"):
        return pd.DataFrame({"closed-form items": ["none in this eval set"]})
    rows = {}
    for name in ("base", "finetuned"):
        d = m[name]["closed"]
        for ans, n in sorted(d["predicted"].items()):
            rows.setdefault(f"predicted {ans}", {})[name] = str(n)
        rows.setdefault("accuracy", {})[name] = round(m[name]["accuracy"], 3)
        rows.setdefault("majority-class baseline", {})[name] = round(d["majority_baseline"], 3)
        rows.setdefault("chance baseline", {})[name] = round(d["chance_baseline"], 3)
        rows.setdefault("warning", {})[name] = (f"answers {d['dominant']} to {d['dominant_share']:.0%} of items"
                                                if d["dominant"] else "")
    for ans, n in sorted(m["base"]["closed"]["reference"].items()):
        rows.setdefault(f"predicted {ans}", {})["reference"] = str(n)
    df = pd.DataFrame(rows).T.reindex(columns=["reference", "base", "finetuned"])
    return df.astype(object).where(df.notna(), "").rename(columns={"reference": "references",
                                                                  "finetuned": "fine-tuned"})


def item_table(run, name: str = "held-out") -> list[dict]:
    """Every answered item of an eval set with both models' scores (saved when it was scored: ROUGE-L, or correct)
    and improved / regressed / unchanged (a ROUGE-L change over 0.05, or a change in correctness)."""
    path = run / "eval" / ("answers.jsonl" if name == "held-out" else f"answers_{name}.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        d = r["finetuned score"] - r["base score"]
        r["change"] = "improved" if d > 0.05 else "regressed" if d < -0.05 else "unchanged"
        r["delta"] = d
    return rows


def side_by_side(run, n: int, name: str = "held-out"):
    """The same held-out question, the reference and both answers, with per-item scores and whether the
    fine-tuned answer improved, regressed or stayed; worst regressions first. Wrapped, left-aligned text."""
    import pandas as pd

    rows = item_table(run, name)
    picked = sorted(rows, key=lambda r: r["delta"])[:n]
    df = pd.DataFrame(picked)[["change", "kind", "question", "reference", "base_answer", "base score",
                               "finetuned_answer", "finetuned score"]]
    df = df.rename(columns={"base_answer": "base", "finetuned_answer": "fine-tuned", "base score": "base score "
                            "(ROUGE-L or correct)", "finetuned score": "fine-tuned score"})
    counts = pd.Series([r["change"] for r in rows]).value_counts().to_dict()
    caption = (f"{len(rows)} items: {counts.get('improved', 0)} improved, {counts.get('regressed', 0)} regressed, "
               f"{counts.get('unchanged', 0)} unchanged (ROUGE-L change over 0.05, or correctness); "
               f"the {len(picked)} shown are the worst changes first")
    return (df.style.format(precision=3).set_caption(caption).hide(axis="index")
            .set_properties(**{"text-align": "left", "white-space": "pre-wrap", "vertical-align": "top"}))


def plot_metrics(result: dict, path: Path):
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [k for k in (*ROUGE_KEYS, "accuracy") if result["metrics"]["base"].get(k) is not None]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for off, name, label in ((-0.2, "base", "base"), (0.2, "finetuned", "fine-tuned")):
        vals = [result["metrics"][name][k] for k in keys]
        cis = [(result.get("changes", {}).get(k) or {}).get(f"{name}_ci95") or [v, v] for k, v in zip(keys, vals)]
        err = [[v - lo for v, (lo, _) in zip(vals, cis)], [hi - v for v, (_, hi) in zip(vals, cis)]]
        bars = ax.bar(x + off, vals, 0.4, label=label, yerr=err, capsize=3)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, keys)
    ax.set_ylim(0, 1)
    ax.set_title(f"held-out: {result['metrics']['base']['n_freetext']} free-text, "
                 f"{result['metrics']['base']['n_choice']} closed-form items (bars: 95% bootstrap intervals)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig
