"""Stage 5: answers from the base and the fine-tuned model on held-out items, ROUGE and accuracy for both.

Both answer sets come from one 4-bit model with the adapter switched off and on, with the same prompts
and the same greedy decoding, so the only difference is the adapter.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from . import memory
from .prompts import strip_reasoning

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")


# ---------------------------------------------------------------- answer extraction and metrics


def extract_choice(text: str, options: dict[str, str]) -> str | None:
    """The option letter a generated answer commits to, or None when it cannot be read."""
    t = strip_reasoning(text)
    letters = "".join(options)
    pats = [rf"^\s*\(?([{letters}])\s*[.):\]]", rf"^\s*\(?([{letters}])\s*$", rf"^\s*\(?([{letters}])\b",
            rf"answer\s*(?:is|:)?\s*(?:option\s*)?\(?([{letters}])\b", rf"\boption\s*\(?([{letters}])\b"]
    for p in pats:
        m = re.search(p, t, flags=re.IGNORECASE if "answer" in p or "option" in p else 0)
        if m:
            return m.group(1).upper()
    low = t.lower()
    hits = [k for k, v in options.items() if v and v.lower() in low]
    return hits[0] if len(hits) == 1 else None


def extract_decision(text: str) -> str | None:
    t = strip_reasoning(text).lower()
    m = re.search(r"\b(yes|no|maybe)\b", t)
    return m.group(1) if m else None


def closed_answer(item: dict, text: str) -> str | None:
    """The letter (choice) or yes/no/maybe (yesno) that a generated answer commits to, or None."""
    return extract_choice(text, item["options"]) if item["kind"] == "choice" else extract_decision(text)


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    totals = dict.fromkeys(ROUGE_KEYS, 0.0)
    for p, r in zip(predictions, references):
        s = scorer.score(r, p)
        for k in ROUGE_KEYS:
            totals[k] += s[k].fmeasure
    n = max(len(predictions), 1)
    return {k: v / n for k, v in totals.items()}


def score(items: list[dict], answers: list[str]) -> dict:
    """ROUGE-1/2/L (F1) over free-text items; accuracy and parse rate over choice and yes/no items."""
    free = [(a, it["reference"]) for it, a in zip(items, answers) if it["kind"] == "freetext"]
    closed = [(it, a) for it, a in zip(items, answers) if it["kind"] in ("choice", "yesno")]
    out = {"n_freetext": len(free), "n_choice": len(closed)}
    if free:
        out.update(rouge_scores([strip_reasoning(a) for a, _ in free], [r for _, r in free]))
    else:
        out.update(dict.fromkeys(ROUGE_KEYS))
    if closed:
        parsed = [closed_answer(it, a) for it, a in closed]
        out["accuracy"] = sum(p == it["answer"] for p, (it, _) in zip(parsed, closed)) / len(closed)
        out["parse_rate"] = sum(p is not None for p in parsed) / len(closed)
    else:
        out["accuracy"] = out["parse_rate"] = None
    return out


def item_scores(items: list[dict], answers: list[str]) -> dict[str, list[float]]:
    """Per-item ROUGE-L (free text) and correctness (closed-form), for paired comparisons."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    out = {"rougeL": [], "accuracy": []}
    for it, a in zip(items, answers):
        if it["kind"] == "freetext":
            out["rougeL"].append(scorer.score(it["reference"], strip_reasoning(a))["rougeL"].fmeasure)
        else:
            out["accuracy"].append(float(closed_answer(it, a) == it["answer"]))
    return out


def paired_bootstrap(base: list[float], tuned: list[float], n: int = 2000, seed: int = 0) -> dict | None:
    """Change in the mean (fine-tuned - base) with a 95% interval from resampling items in pairs."""
    import numpy as np

    if not base:
        return None
    b, t = np.asarray(base), np.asarray(tuned)
    idx = np.random.default_rng(seed).integers(0, len(b), size=(n, len(b)))
    deltas = (t[idx] - b[idx]).mean(axis=1)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"change": float(t.mean() - b.mean()), "ci95": [float(lo), float(hi)], "n": len(b)}


# ---------------------------------------------------------------- generation


def select_items(path: Path, max_samples: int | None) -> list[dict]:
    items = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return items[:max_samples] if max_samples else items


def generate(model, tokenizer, items: list[dict], max_new_tokens: int, max_new_tokens_choice: int,
             batch_size: int, label: str, print_fn=print, oom_retries: int = 3, oom_log: list | None = None) -> list[str]:
    """Greedy answers for every item, batched with left padding; progress printed per batch. Out of GPU memory,
    the batch is halved and the same prompts are tried again (up to oom_retries times, logged in oom_log)."""
    import torch

    from .train import _free_memory, _is_oom

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers: list[str | None] = [None] * len(items)
    oom_log = oom_log if oom_log is not None else []
    # Short-answer items get a short budget; within a group, similar lengths share a batch.
    groups = {}
    for i, it in enumerate(items):
        groups.setdefault(it["kind"] == "freetext", []).append(i)
    t0, done, new_tokens = time.time(), 0, 0
    for is_free, idx in groups.items():
        idx.sort(key=lambda i: len(items[i]["prompt"]))
        budget = max_new_tokens if is_free else max_new_tokens_choice
        pos = 0
        while pos < len(idx):
            chunk = idx[pos:pos + batch_size]
            try:
                enc = tokenizer([items[i]["prompt"] for i in chunk], return_tensors="pt", padding=True,
                                add_special_tokens=False).to(device)
                with torch.no_grad():
                    out = model.generate(**enc, max_new_tokens=budget, do_sample=False,
                                         pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            except Exception as e:
                if not _is_oom(e) or batch_size == 1 or len(oom_log) >= oom_retries:
                    raise
                _free_memory()
                oom_log.append({"label": label, "batch_size": [batch_size, batch_size // 2]})
                print_fn(f"{label}: out of memory at batch {batch_size}; going on at batch {batch_size // 2}")
                batch_size //= 2
                continue
            gen = out[:, enc["input_ids"].shape[1]:]
            for i, g in zip(chunk, gen):
                answers[i] = tokenizer.decode(g, skip_special_tokens=True).strip()
                new_tokens += int((g != tokenizer.pad_token_id).sum())
            pos += len(chunk)
            done += len(chunk)
            el = time.time() - t0
            print_fn(f"{label}: {done}/{len(items)} answered | {new_tokens / el:.1f} new tokens/s | "
                     f"elapsed {el:.0f} s | ETA {el / done * (len(items) - done):.0f} s")
    return answers


def compare(cfg, run, print_fn=print) -> dict:
    """Load base + adapter once; answer with the adapter off (base) and on (fine-tuned); score both."""
    from . import model as M

    items = select_items(run.eval_items, cfg.eval.max_samples)
    export = run.result("export")
    backend = M.resolve_backend(cfg.model)
    ref, _ = M.resolve_model(cfg.model)
    t0 = time.time()
    model, tok = M.load_with_adapter(ref, export["adapter_dir"], cfg.model, backend)
    load_s = time.time() - t0
    memory.record(run, "evaluate", "model loaded")
    e = cfg.eval
    oom_log: list[dict] = []
    kw = {"print_fn": print_fn, "oom_retries": cfg.memory.oom_retries, "oom_log": oom_log}
    t1 = time.time()
    with model.disable_adapter():
        base = generate(model, tok, items, e.max_new_tokens, e.max_new_tokens_choice, e.batch_size, "base", **kw)
    memory.record(run, "evaluate", "base answers")
    t2 = time.time()
    batch = oom_log[-1]["batch_size"][1] if oom_log else e.batch_size  # keep what fitted
    tuned = generate(model, tok, items, e.max_new_tokens, e.max_new_tokens_choice, batch, "fine-tuned", **kw)
    memory.record(run, "evaluate", "fine-tuned answers")
    t3 = time.time()
    rows = [{"id": it["id"], "kind": it["kind"], "category": it.get("category"), "question": it["question"],
             "reference": it["reference"] if it["kind"] == "freetext" else it["answer"],
             "base": b, "finetuned": f} for it, b, f in zip(items, base, tuned)]
    (run / "eval").mkdir(exist_ok=True)
    (run / "eval" / "answers.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"backend": backend, "n_items": len(items), "load_seconds": round(load_s, 1), "oom_halvings": oom_log,
            "generate_seconds": {"base": round(t2 - t1, 1), "finetuned": round(t3 - t2, 1)},
            "metrics": {"base": score(items, base), "finetuned": score(items, tuned)},
            "changes": {k: paired_bootstrap(b, f) for (k, b), f in
                        zip(item_scores(items, base).items(), item_scores(items, tuned).values())},
            "answers": str(run / "eval" / "answers.jsonl")}


# ---------------------------------------------------------------- what the notebook shows


def metrics_table(result: dict):
    import pandas as pd

    m = result["metrics"]
    df = pd.DataFrame({"base": m["base"], "fine-tuned": m["finetuned"]})
    keys = [*ROUGE_KEYS, "accuracy", "parse_rate"]
    df.loc[keys, "change"] = [None if b is None or f is None else f - b
                              for b, f in zip(df.loc[keys, "base"], df.loc[keys, "fine-tuned"])]
    df["95% CI of change (paired bootstrap)"] = ""
    for k, c in result.get("changes", {}).items():
        if c:
            df.loc[k, "95% CI of change (paired bootstrap)"] = f"{c['ci95'][0]:+.3f} .. {c['ci95'][1]:+.3f}"
    return df


def side_by_side(run, n: int):
    import pandas as pd

    rows = [json.loads(line) for line in (run / "eval" / "answers.jsonl").read_text().splitlines()]
    pd.set_option("display.max_colwidth", 400)
    picked = [r for r in rows if r["kind"] == "freetext"][: max(n - n // 3, 1)]
    picked += [r for r in rows if r["kind"] != "freetext"][: n // 3]
    return pd.DataFrame(picked)[["kind", "question", "reference", "base", "finetuned"]]


def plot_metrics(result: dict, path: Path):
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [k for k in (*ROUGE_KEYS, "accuracy") if result["metrics"]["base"].get(k) is not None]
    x = np.arange(len(keys))
    fig, ax = plt.subplots(figsize=(7, 3.2))
    for off, name, label in ((-0.2, "base", "base"), (0.2, "finetuned", "fine-tuned")):
        vals = [result["metrics"][name][k] for k in keys]
        bars = ax.bar(x + off, vals, 0.4, label=label)
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(x, keys)
    ax.set_ylim(0, 1)
    ax.set_title(f"held-out: {result['metrics']['base']['n_freetext']} free-text, "
                 f"{result['metrics']['base']['n_choice']} closed-form items")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig
