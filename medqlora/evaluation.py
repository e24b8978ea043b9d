"""Stage 5: answers from the base and the fine-tuned model on held-out items, ROUGE and accuracy for both.

Both answer sets come from one 4-bit model with the adapter switched off and on, with the same prompts
and the same greedy decoding, so the only difference is the adapter.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from . import memory
from .prompts import adds_special_tokens
from .scoring import (ROUGE_KEYS, headline_per_item, intervals, item_scores, prompt_opens_think, score,
                      split_reasoning)

# ---------------------------------------------------------------- generation


def select_items(path: Path, max_samples: int | None) -> list[dict]:
    items = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    return items[:max_samples] if max_samples else items


def sampling(cfg) -> dict:
    """generate() keyword arguments from eval.temperature / top_p / repetition_penalty (greedy at 0)."""
    e = cfg.eval
    kw = {"do_sample": e.temperature > 0, "repetition_penalty": e.repetition_penalty}
    if e.temperature > 0:
        kw.update(temperature=e.temperature, top_p=e.top_p)
    return kw


def generate(model, tokenizer, items: list[dict], max_new_tokens: int, max_new_tokens_choice: int,
             batch_size: int, label: str, print_fn=print, oom_retries: int = 3, oom_log: list | None = None,
             template: str = "chat", sampling_kw: dict | None = None) -> list[dict]:
    """Greedy answers for every item ({text, new_tokens, hit_limit}), batched with left padding, the prompt
    tokenized exactly as in training; progress printed per batch. Out of GPU memory, the batch is halved and the
    same prompts are tried again (up to oom_retries times, logged in oom_log)."""
    import torch

    from .train import _free_memory, _is_oom

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers: list[dict | None] = [None] * len(items)
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
                                add_special_tokens=adds_special_tokens(template)).to(device)
                with torch.no_grad():
                    out = model.generate(**enc, max_new_tokens=budget, **(sampling_kw or {"do_sample": False}),
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
                n = int((g != tokenizer.pad_token_id).sum())
                ended = tokenizer.eos_token_id in g.tolist()
                answers[i] = {"text": tokenizer.decode(g, skip_special_tokens=True).strip(), "new_tokens": n,
                              "hit_limit": not ended and n >= budget}
                new_tokens += n
            pos += len(chunk)
            done += len(chunk)
            el = time.time() - t0
            print_fn(f"{label}: {done}/{len(items)} answered | {new_tokens / el:.1f} new tokens/s | "
                     f"elapsed {el:.0f} s | ETA {el / done * (len(items) - done):.0f} s")
    return answers


def eval_sets(cfg, run) -> list[tuple[str, Path, int | None, str]]:
    """(name, items file, item cap, where the items came from): the held-out split, then each eval.sets entry."""
    prep = run.result("preprocess")
    sets = [("held-out", run.eval_items, cfg.eval.max_samples, prep.get("eval_from"))]
    for name, info in (prep.get("eval_sets") or {}).items():
        sets.append((name, Path(info["path"]), None, f"eval set {name}: {info['source']}"))
    return sets


def compare(cfg, run, print_fn=print) -> dict:
    """Load base + adapter once; for every eval set answer with the adapter off (base) and on (fine-tuned),
    and score both. The held-out set's figures are also the result's top-level metrics."""
    from . import model as M

    export = run.result("export")
    backend = M.resolve_backend(cfg.model)
    ref, _ = M.resolve_model(cfg.model)
    t0 = time.time()
    model, tok = M.load_with_adapter(ref, export["adapter_dir"], cfg.model, backend)
    load_s = time.time() - t0
    memory.record(run, "evaluate", "model loaded")
    e = cfg.eval
    oom_log: list[dict] = []
    kw = {"print_fn": print_fn, "oom_retries": cfg.memory.oom_retries, "oom_log": oom_log,
          "template": cfg.data.template, "sampling_kw": sampling(cfg)}
    if e.temperature > 0:
        import torch

        torch.manual_seed(cfg.train.seed)  # sampled answers: reproducible for this seed, not across seeds
    sets, seconds, gen_estimate = {}, {"base": 0.0, "finetuned": 0.0}, None
    for name, path, cap, source in eval_sets(cfg, run):
        items = select_items(path, cap)
        if gen_estimate is None:
            longest = max(len(tok(it["prompt"], add_special_tokens=adds_special_tokens(cfg.data.template))["input_ids"])
                          for it in items)
            gen_estimate = memory.estimate_generation(memory.model_shape(ref), e.batch_size,
                                                      longest + e.max_new_tokens, cfg.model.load_in_4bit)
            print_fn(f"generation memory estimate at batch {e.batch_size} x ({longest} prompt + {e.max_new_tokens} "
                     "new tokens): " + ", ".join(f"{k} {v:.2f} GiB" for k, v in gen_estimate.items()))
        print_fn(f"== {name}: {len(items)} items ({source})")
        batch = oom_log[-1]["batch_size"][1] if oom_log else e.batch_size  # keep what fitted
        t1 = time.time()
        with model.disable_adapter():
            base = generate(model, tok, items, e.max_new_tokens, e.max_new_tokens_choice, batch, "base", **kw)
        memory.record(run, "evaluate", f"base answers: {name}")
        t2 = time.time()
        batch = oom_log[-1]["batch_size"][1] if oom_log else batch
        tuned = generate(model, tok, items, e.max_new_tokens, e.max_new_tokens_choice, batch, "fine-tuned", **kw)
        memory.record(run, "evaluate", f"fine-tuned answers: {name}")
        seconds["base"] += t2 - t1
        seconds["finetuned"] += time.time() - t2
        sets[name] = score_set(run, name, items, base, tuned, source)
    queries = answer_queries(cfg, model, tok, e.queries, kw) if e.queries else []
    held = sets["held-out"]
    return {"generation": {"max_new_tokens": e.max_new_tokens, "max_new_tokens_choice": e.max_new_tokens_choice,
                           **sampling(cfg)}, "queries": queries,"backend": backend, "n_items": held["n_items"], "load_seconds": round(load_s, 1), "oom_halvings": oom_log,
            "memory_estimate_gb": {k: round(v, 3) for k, v in gen_estimate.items()},
            "eval_source": held["eval_source"], "reasoning_opened_in_prompt": held["reasoning_opened_in_prompt"],
            "generate_seconds": {k: round(v, 1) for k, v in seconds.items()},
            "metrics": held["metrics"], "changes": held["changes"], "answers": held["answers"], "sets": sets}


def answer_queries(cfg, model, tok, questions: list[str], kw: dict, print_fn=print) -> list[dict]:
    """The researcher's own questions (no reference), answered by both models with the run's prompt template."""
    from .data import Example
    from .prompts import build_prompt

    items = [{"kind": "freetext", "prompt": build_prompt(Example(f"q{i}", "freetext", q, ""), tok, cfg.data.template,
                                                          cfg.data.system_prompt)} for i, q in enumerate(questions)]
    e = cfg.eval
    kw = {**kw, "print_fn": lambda *a: None}
    with model.disable_adapter():
        base = generate(model, tok, items, e.max_new_tokens, e.max_new_tokens_choice, e.batch_size, "base", **kw)
    tuned = generate(model, tok, items, e.max_new_tokens, e.max_new_tokens_choice, e.batch_size, "fine-tuned", **kw)
    opened = prompt_opens_think(items)
    return [{"question": q, "base": split_reasoning(b["text"], opened)[1] or b["text"],
             "finetuned": split_reasoning(f["text"], opened)[1] or f["text"]} for q, b, f in zip(questions, base, tuned)]


def queries_table(result: dict):
    import pandas as pd

    g = result.get("generation", {})
    caption = "generation: " + ", ".join(f"{k}={v}" for k, v in g.items())
    if not result.get("queries"):
        return pd.DataFrame({"eval.queries": ["none given"]}).style.set_caption(caption)
    df = pd.DataFrame(result["queries"]).rename(columns={"finetuned": "fine-tuned"})
    return (df.style.set_caption(caption).hide(axis="index")
            .set_properties(**{"text-align": "left", "white-space": "pre-wrap", "vertical-align": "top"}))


def score_set(run, name: str, items: list[dict], base: list[dict], tuned: list[dict], source: str) -> dict:
    """Both models' answers to one eval set saved to eval/answers[_<name>].jsonl, scored with intervals."""
    opened = prompt_opens_think(items)
    per = item_scores(items, base, opened), item_scores(items, tuned, opened)  # scored once, used three ways
    headline = [headline_per_item(items, p) for p in per]
    rows = []
    for it, b, f, b_score, f_score in zip(items, base, tuned, *headline):
        row = {"id": it["id"], "kind": it["kind"], "category": it.get("category"), "question": it["question"],
               "reference": it["reference"] if it["kind"] == "freetext" else it["answer"]}
        for who, a, sc in (("base", b, b_score), ("finetuned", f, f_score)):
            thought, answer, finished = split_reasoning(a["text"], opened)
            row[who] = a["text"]
            row[f"{who}_answer"] = answer
            row[f"{who}_thought_finished"] = finished
            row[f"{who}_hit_limit"] = a["hit_limit"]
            row[f"{who} score"] = sc  # ROUGE-L for free text, 1/0 for closed-form
        rows.append(row)
    (run / "eval").mkdir(exist_ok=True)
    path = run / "eval" / ("answers.jsonl" if name == "held-out" else f"answers_{name}.jsonl")
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return {"n_items": len(items), "eval_source": source, "reasoning_opened_in_prompt": opened,
            "metrics": {"base": score(items, base, opened, per[0]), "finetuned": score(items, tuned, opened, per[1])},
            "changes": intervals(items, base, tuned, opened, per), "answers": str(path)}


# ---------------------------------------------------------------- what the notebook shows


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
