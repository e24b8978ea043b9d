"""Stage 5: answers from the base and the fine-tuned model on held-out items, ROUGE and accuracy for both.

Both answer sets come from one model with the adapter switched off and on (or, with eval.merge, merged into the
dequantized base for the fine-tuned pass), with the same prompts and the same greedy decoding, so the only
difference is the adapter.
"""
from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

from medqlora.core import memory_log
from medqlora.training import memory
from medqlora.data.prompts import adds_special_tokens
from medqlora.evaluation.scoring import (ROUGE_KEYS, headline_per_item, intervals, item_scores, prompt_opens_think, score,
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

    from medqlora.core.system import free_memory
    from medqlora.training.train import _is_oom

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
                free_memory(reset_peak=True)
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


def use_merge(cfg, ref: str) -> tuple[bool, str]:
    """eval.merge: whether the fine-tuned answers come from merged weights, and why. auto merges where the
    dequantized weights take at most a quarter of the memory budget (merged weights skip the adapter's extra
    matmuls and, on a CPU, bitsandbytes' 4-bit dequantization at every step)."""
    e = cfg.eval
    if e.merge is not True and e.merge is not False:
        from medqlora.training.model import compute_dtype

        shape = memory.model_shape(ref)
        need = shape.params() * compute_dtype(cfg.model).itemsize / memory.GIB
        budget, where = memory.budget_gb(cfg)
        if need > budget / 4:
            return False, f"auto: dequantized weights {need:.1f} GiB > a quarter of {budget:.1f} GiB ({where})"
        return True, f"auto: dequantized weights {need:.2f} GiB fit easily in {budget:.1f} GiB ({where})"
    return bool(e.merge), f"eval.merge: {e.merge}"


def batch_for(cfg, ref: str, items: list[dict], tok, print_fn=print, merged: bool = False) -> tuple[int, dict]:
    """eval.batch_size, or (auto) the largest batch whose estimated generation peak stays within
    memory.max_fraction of the budget, at most eval.max_batch_size and the number of items."""
    e = cfg.eval
    longest = max(len(tok(it["prompt"], add_special_tokens=adds_special_tokens(cfg.data.template))["input_ids"])
                  for it in items)
    total = longest + max(e.max_new_tokens, e.max_new_tokens_choice)
    shape = memory.model_shape(ref)
    four_bit = cfg.model.load_in_4bit and not merged
    if e.batch_size != "auto":
        batch = e.batch_size
        why = "eval.batch_size"
    else:
        budget, where = memory.budget_gb(cfg)
        limit = cfg.memory.max_fraction * budget
        batch = 1
        while batch * 2 <= min(e.max_batch_size, len(items)) and \
                memory.total(memory.estimate_generation(shape, batch * 2, total, four_bit)) <= limit:
            batch *= 2
        why = f"auto: largest batch within {limit:.1f} GiB ({cfg.memory.max_fraction:.0%} of {where})"
    est = memory.estimate_generation(shape, batch, total, four_bit)
    print_fn(f"generation batch {batch} ({why}); estimated peak " + ", ".join(f"{k} {v:.2f}" for k, v in est.items())
             + f" GiB for {longest} prompt + {total - longest} new tokens")
    return batch, {"batch_size": batch, "why": why, "estimate_gb": {k: round(v, 3) for k, v in est.items()}}


def compare(cfg, run, print_fn=print) -> dict:
    """Answer every eval set with the base (adapter off), then with the fine-tuned model (adapter on, or merged
    into the weights: eval.merge), and score both. The held-out set's figures are also the top-level metrics."""
    from medqlora.export import merge as MG
    from medqlora.training import model as M

    export = run.result("export")
    backend = M.resolve_backend(cfg.model)
    ref, _ = M.resolve_model(cfg.model)
    merge, merge_why = use_merge(cfg, ref)
    t0 = time.time()
    if merge:  # the 4-bit base dequantized: the base answers come from the same weights the merge starts from
        model, tok = MG.dequantized_with_adapter(ref, export["adapter_dir"], cfg)
        if M.cuda_available():
            model = model.to("cuda")
    else:
        model, tok = M.load_with_adapter(ref, export["adapter_dir"], cfg.model, backend)
    load_s = time.time() - t0
    print_fn(f"loaded in {load_s:.1f} s; fine-tuned answers from {'merged weights' if merge else 'the adapter'} "
             f"({merge_why})")
    memory_log.record(run, "evaluate", "model loaded")
    e = cfg.eval
    oom_log: list[dict] = []
    kw = {"print_fn": print_fn, "oom_retries": cfg.memory.oom_retries, "oom_log": oom_log,
          "template": cfg.data.template, "sampling_kw": sampling(cfg)}
    if e.temperature > 0:
        import torch

        torch.manual_seed(cfg.train.seed)  # sampled answers: reproducible for this seed, not across seeds
    chosen = [(name, select_items(path, cap), source) for name, path, cap, source in eval_sets(cfg, run)]
    batch, batching = batch_for(cfg, ref, [it for _, items, _ in chosen for it in items], tok, print_fn, merge)
    answers = {"base": {}, "finetuned": {}}
    seconds, tokens = {"base": 0.0, "finetuned": 0.0}, {"base": 0, "finetuned": 0}
    queries = {}
    for who in ("base", "finetuned"):
        if who == "finetuned" and merge:
            t1 = time.time()
            model = model.merge_and_unload()
            print_fn(f"adapter merged into the weights in {time.time() - t1:.1f} s")
        label = "base" if who == "base" else "fine-tuned"
        with model.disable_adapter() if who == "base" else contextlib.nullcontext():
            for name, items, source in chosen:
                print_fn(f"== {name}: {len(items)} items ({source})")
                batch = oom_log[-1]["batch_size"][1] if oom_log else batch  # keep what fitted
                t1 = time.time()
                answers[who][name] = generate(model, tok, items, e.max_new_tokens, e.max_new_tokens_choice, batch,
                                              label, **kw)
                seconds[who] += time.time() - t1
                tokens[who] += sum(a["new_tokens"] for a in answers[who][name])
                memory_log.record(run, "evaluate", f"{who} answers: {name}")
            if e.queries:
                queries[who] = answer_queries(cfg, model, tok, e.queries, kw)
    sets = {name: score_set(run, name, items, answers["base"][name], answers["finetuned"][name], source)
            for name, items, source in chosen}
    held = sets["held-out"]
    return {"generation": {"max_new_tokens": e.max_new_tokens, "max_new_tokens_choice": e.max_new_tokens_choice,
                           **sampling(cfg)},
            "queries": [{"question": q, "base": b, "finetuned": f}
                        for q, b, f in zip(e.queries, queries.get("base", []), queries.get("finetuned", []))],
            "backend": backend, "merged": merge, "merge_reason": merge_why, "batching": batching,
            "n_items": held["n_items"], "load_seconds": round(load_s, 1), "oom_halvings": oom_log,
            "memory_estimate_gb": batching["estimate_gb"],
            "eval_source": held["eval_source"], "reasoning_opened_in_prompt": held["reasoning_opened_in_prompt"],
            "generate_seconds": {k: round(v, 1) for k, v in seconds.items()},
            "new_tokens_per_s": {k: round(tokens[k] / max(seconds[k], 1e-9), 1) for k in seconds},
            "metrics": held["metrics"], "changes": held["changes"], "answers": held["answers"], "sets": sets}


def answer_queries(cfg, model, tok, questions: list[str], kw: dict) -> list[str]:
    """The researcher's own questions (no reference), answered with the run's prompt template by the model as it
    stands (the caller switches the adapter off for the base); the final answer, without a reasoning block."""
    from medqlora.data.formats import Example
    from medqlora.data.prompts import build_prompt

    items = [{"kind": "freetext", "prompt": build_prompt(Example(f"q{i}", "freetext", q, ""), tok, cfg.data.template,
                                                          cfg.data.system_prompt)} for i, q in enumerate(questions)]
    e = cfg.eval
    out = generate(model, tok, items, e.max_new_tokens, e.max_new_tokens_choice, min(len(items), 16), "queries",
                   **{**kw, "print_fn": lambda *a: None})
    opened = prompt_opens_think(items)
    return [split_reasoning(a["text"], opened)[1] or a["text"] for a in out]


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
