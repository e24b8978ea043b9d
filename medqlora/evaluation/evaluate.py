"""Stage 5: answers from the base and the fine-tuned model on held-out items, ROUGE and accuracy for both, and
closed-form items scored by each option's log-likelihood too (eval.choice_scoring, loglik.py).

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
from medqlora.evaluation.answer_cache import BaseAnswers
from medqlora.evaluation.fast_generate import choose as choose_decoding
from medqlora.evaluation.fast_generate import load_backend
from medqlora.evaluation import after_sft, manifest
from medqlora.evaluation.generate import answer_queries, batch_for, generate, sampling, select_items
from medqlora.evaluation.leaderboard import group_scores, set_plan
from medqlora.evaluation.loglik import batch_for as loglik_batch_for
from medqlora.evaluation.loglik import choice_requests, loglik_items, loglik_metrics, score_choices
from medqlora.evaluation.rotation import add_rotations, rotation_items, rotation_metrics, rotation_warnings
from medqlora.evaluation.scoring import (
    bootstrap,
    closed_warnings,
    headline_per_item,
    intervals,
    item_scores,
    paired_bootstrap,
    prompt_opens_think,
    score,
    split_reasoning,
)
from medqlora.training import memory, memory_plan

# ---------------------------------------------------------------- generation


def eval_sets(cfg, run) -> list[tuple[str, Path, int | None, str]]:
    """(name, items file, item cap, where the items came from): the held-out split, then each eval.sets entry."""
    prep = run.result("preprocess")
    sets = [("held-out", run.eval_items, cfg.eval.max_samples, prep.get("eval_from"))]
    for name, info in (prep.get("eval_sets") or {}).items():
        sets.append((name, run.eval_set_path(name), None, f"eval set {name}: {info['source']}"))
    return sets


def choice_plan(cfg) -> dict:
    """How closed-form items are scored (eval.choice_scoring, eval.choice_prompt), and why. A reasoning template's
    answer comes after its thought: such runs always generate, and a log-likelihood right after the chat prompt
    (where the trained model starts its thought, whether or not the template already wrote <think>) would measure
    nothing, so only the lm_eval prompt gets one."""
    e = cfg.eval
    gen, ll = e.choice_scoring in ("generate", "both"), e.choice_scoring in ("loglik", "both")
    why = f"eval.choice_scoring: {e.choice_scoring}"
    if cfg.data.template == "reasoning":
        if not gen:
            gen, why = True, why + "; generated as well: data.template reasoning answers after its thought"
        if ll and e.choice_prompt == "chat":
            ll, why = False, why + ("; no log-likelihood: data.template reasoning trains the answer after a thought "
                                    "(<think> ... </think>), so an option scored right after the chat prompt is scored"
                                    " where the model starts thinking (eval.choice_prompt: lm_eval scores one without "
                                    "the chat template)")
    return {"mode": e.choice_scoring, "prompt": e.choice_prompt, "generate": gen, "loglik": ll, "why": why}


def use_merge(cfg, ref: str) -> tuple[bool, str]:
    """eval.merge: whether the fine-tuned answers come from merged weights, and why. auto merges where the
    dequantized weights take at most a quarter of the memory budget (merged weights skip the adapter's extra
    matmuls and, on a CPU, bitsandbytes' 4-bit dequantization at every step)."""
    e = cfg.eval
    if e.merge is not True and e.merge is not False:
        from medqlora.training.model import compute_dtype

        shape = memory.model_shape(ref)
        need = shape.params() * compute_dtype(cfg.model).itemsize / memory.GIB
        budget, where = memory_plan.budget_gb(cfg)
        if need > budget / 4:
            return False, f"auto: dequantized weights {need:.1f} GiB > a quarter of {budget:.1f} GiB ({where})"
        return True, f"auto: dequantized weights {need:.2f} GiB fit easily in {budget:.1f} GiB ({where})"
    return bool(e.merge), f"eval.merge: {e.merge}"


def compare(cfg, run, print_fn=print) -> dict:
    """Answer every eval set with the base (adapter off), then with the fine-tuned model (adapter on, or merged
    into the weights: eval.merge), and score both. The held-out set's figures are also the top-level metrics."""
    from medqlora.export import merge as MG
    from medqlora.training import model as M

    run.result("export")  # fails clearly when the export stage has not run
    adapter = str(run.export_dir / "adapter")  # the run folder's own, wherever the folder was restored to
    backend = M.resolve_backend(cfg.model)
    ref, _ = M.resolve_model(cfg.model)
    merge, merge_why = use_merge(cfg, ref)
    engine, engine_why = choose_decoding(cfg, M.cuda_available())  # eval.decoding (issue 31)
    load_as = load_backend(engine, backend, merge)
    t0 = time.time()
    if merge:  # the 4-bit base dequantized: the base answers come from the same weights the merge starts from
        model, tok = MG.dequantized_with_adapter(ref, adapter, cfg)
        if M.cuda_available():
            model = model.to("cuda")
    else:
        model, tok = M.load_with_adapter(ref, adapter, cfg.model, load_as)
    load_s = time.time() - t0
    print_fn(f"loaded in {load_s:.1f} s; fine-tuned answers from {'merged weights' if merge else 'the adapter'} "
             f"({merge_why}); decoding: {engine} ({engine_why})"
             + ("; loaded with transformers + PEFT for it" if load_as != backend else ""))
    memory_log.record(run, "evaluate", "model loaded")
    e = cfg.eval
    oom_log: list[dict] = []
    kw = {"print_fn": print_fn, "oom_retries": cfg.memory.oom_retries, "oom_log": oom_log,
          "template": cfg.data.template, "sampling_kw": sampling(cfg)}
    if e.temperature > 0:
        import torch

        torch.manual_seed(cfg.train.seed)  # sampled answers: reproducible for this seed, not across seeds
    chosen, sampled = [], {}  # sampled: {"n", "of", "seed"} where eval.max_samples took a sample, else None
    for name, path, cap, source in eval_sets(cfg, run):
        items, sampled[name] = select_items(path, cap)
        chosen.append((name, items, source))
    plan = choice_plan(cfg)
    print_fn(f"closed-form items: {'generated' if plan['generate'] else ''}"
             f"{' and ' if plan['generate'] and plan['loglik'] else ''}"
             f"{'scored by log-likelihood (' + plan['prompt'] + ' prompt)' if plan['loglik'] else ''} ({plan['why']})")

    # each set's plan: an lm-eval task's set (eval.sets task:) is scored by log-likelihood in its own prompt only
    prep = run.result("preprocess")
    plans = {name: set_plan(plan, (prep.get("eval_sets") or {}).get(name)) for name, _, _ in chosen}

    def generated(items: list[dict]) -> list[dict]:  # the items that get generated answers (an lm-eval task's: none)
        return [it for it in items if (plan["generate"] and not it.get("lm_eval_prompt")) or it["kind"] == "freetext"]

    batch, batching = batch_for(cfg, ref, [it for _, items, _ in chosen for it in items], tok, print_fn, merge)
    fell_back: list[dict] = []  # a static / continuous call that failed and was answered eagerly (generate)
    kw.update(engine=engine, max_cache_len=batching["cache_len"], fallback_log=fell_back)  # static: one cache size
    ll_pairs = [p for name, items, _ in chosen if plans[name]["loglik"]
                for p in choice_requests(items, tok, plans[name]["prompt"], cfg.data.template)[1]]
    ll_batch, ll_batching = loglik_batch_for(cfg, ref, ll_pairs, print_fn, merge) if ll_pairs else (batch, None)
    # the base model's answers: computed once per base model, items and settings, reused by later runs (issue 31)
    cache = BaseAnswers.for_run(cfg, run, ref=ref, tok=tok, model=model, backend=load_as, merged=merge, engine=engine,
                                batch=batch, loglik_batch=ll_batch, plan=plan)
    answers, choices = {"base": {}, "finetuned": {}}, {"base": {}, "finetuned": {}}
    seconds, tokens = {"base": 0.0, "finetuned": 0.0}, {"base": 0, "finetuned": 0}
    ll_seconds = {"base": 0.0, "finetuned": 0.0}
    timing = {"base": {}, "finetuned": {}}  # each pass's first batch (one-time costs) apart from the rest
    queries = {}
    for who in ("base", "finetuned"):
        if who == "finetuned" and merge:
            t1 = time.time()
            model = model.merge_and_unload()
            print_fn(f"adapter merged into the weights in {time.time() - t1:.1f} s")
        label = "base" if who == "base" else "fine-tuned"
        with model.disable_adapter() if who == "base" else contextlib.nullcontext():
            for name, items, source in chosen:
                of = f" of {sampled[name]['of']} (a seeded sample: eval.max_samples)" if sampled[name] else ""
                print_fn(f"== {name}: {len(items)}{of} items ({source})")
                batch, ll_batch = fitted_batch(oom_log, batch, False), fitted_batch(oom_log, ll_batch, True)
                stored = cache.load(name, items, len(generated(items))) if who == "base" else None
                if stored:
                    answers[who][name], choices[who][name] = stored["answers"], stored["choices"]
                    continue
                t1, set_seconds = time.time(), seconds[who]
                answers[who][name] = generate(model, tok, generated(items), e.max_new_tokens, e.max_new_tokens_choice,
                                              batch, label, timing=timing[who], **kw) if generated(items) else []
                seconds[who] += time.time() - t1
                tokens[who] += sum(a["new_tokens"] for a in answers[who][name])
                t1, ll_stats, sp = time.time(), {}, plans[name]
                choices[who][name] = score_choices(
                    model, tok, items, sp["prompt"], cfg.data.template, ll_batch, label, print_fn=print_fn,
                    oom_retries=cfg.memory.oom_retries, oom_log=oom_log, stats=ll_stats) if sp["loglik"] \
                    else [None] * len(items)
                add_rotations(model, tok, items, choices[who][name], sp["prompt"], cfg.data.template,
                              cfg.data.system_prompt, ll_batch, label, print_fn=print_fn,
                              oom_retries=cfg.memory.oom_retries, oom_log=oom_log)  # option-order robustness
                ll_seconds[who] += time.time() - t1
                if who == "base" and not fell_back:  # answers keyed by the engine that made them
                    cache.save(name, items, answers[who][name], choices[who][name], seconds[who] - set_seconds,
                               sum(a["new_tokens"] for a in answers[who][name]), made_by=run.path.name)
                if ll_stats:  # its own peak: on a CPU the RSS is back down by the record below
                    memory_log.record(run, "evaluate", f"{who} log-likelihood: {name}", peak_gb=ll_stats["peak_gb"],
                                      batch_size=ll_stats["batch_size"])
                memory_log.record(run, "evaluate", f"{who} answers: {name}")
            if e.queries:
                queries[who] = answer_queries(cfg, model, tok, e.queries, kw)
        if who == "base":
            print_fn(cache.summary()["note"])
        if timing[who].get("steady_seconds"):
            t = timing[who]
            # said, not judged: later batches may be short closed-form answers, slower per token than free text
            print_fn(f"{label}: first batch {t['first_batch_tokens'] / t['first_batch_seconds']:.1f} new tokens/s "
                     f"({t['first_batch_tokens']} tokens in {t['first_batch_seconds']:.1f} s, with any one-time costs "
                     f"such as compilation and caches), the batches after it "
                     f"{t['steady_tokens'] / t['steady_seconds']:.1f} new tokens/s")
    sft, sft_answers = after_sft.sft_adapter(cfg, run), {}  # both train and reinforce ran: a third column
    if sft and merge:
        print_fn("after SFT: not measured: eval.merge merged the exported (RL) adapter into the weights; set "
                 "eval.merge: false to score base, after SFT and after RL side by side")
    elif sft:
        sft_answers = after_sft.answer_after_sft(model, sft, chosen, generated, lambda its, label: generate(
            model, tok, its, e.max_new_tokens, e.max_new_tokens_choice, fitted_batch(oom_log, batch, False), label,
            **kw), print_fn)
    sets = {name: {**score_set(run, name, items, {who: answers[who][name] for who in answers}, source,
                               {who: choices[who][name] for who in choices}, generated(items)),
                   "sampled": sampled[name], "task": (prep.get("eval_sets") or {}).get(name, {}).get("task")}
            for name, items, source in chosen}
    for name, items, _ in chosen:
        if name in sft_answers:
            sets[name]["after_sft"] = after_sft.three_way(run, name, generated(items), items,
                                                          {who: answers[who][name] for who in answers},
                                                          sft_answers[name])
    held = sets["held-out"]
    return {"generation": {"max_new_tokens": e.max_new_tokens, "max_new_tokens_choice": e.max_new_tokens_choice,
                           **sampling(cfg)},
            "queries": [{"question": q, "base": b, "finetuned": f}
                        for q, b, f in zip(e.queries, queries.get("base", []), queries.get("finetuned", []))],
            "backend": backend, "merged": merge, "merge_reason": merge_why, "batching": batching,
            "loglik_batching": ll_batching, "base_answers": cache.summary(),
            "decoding": {"engine": engine, "why": engine_why, "loaded_with": load_as, "fell_back": fell_back},
            "n_items": held["n_items"], "sampled": held["sampled"], "load_seconds": round(load_s, 1),
            "oom_halvings": oom_log,
            "memory_estimate_gb": batching["estimate_gb"],
            "eval_source": held["eval_source"], "reasoning_opened_in_prompt": held["reasoning_opened_in_prompt"],
            "generate_seconds": {k: round(v, 1) for k, v in seconds.items()},
            "new_tokens_per_s": {k: round(tokens[k] / max(seconds[k], 1e-9), 1) for k in seconds},
            "new_tokens_per_s_after_first_batch": {k: round(t["steady_tokens"] / t["steady_seconds"], 1)
                                                   if t.get("steady_seconds") else None for k, t in timing.items()},
            "first_batch_seconds": {k: round(t.get("first_batch_seconds", 0.0), 2) for k, t in timing.items()},
            "choice_scoring": plan, "loglik_seconds": {k: round(v, 1) for k, v in ll_seconds.items()},
            "manifest": manifest.build(cfg, prep, chosen, sampled, plans), "groups": group_scores(run, sets),
            "warnings": [w for st in sets.values() for w in st["warnings"]],
            "metrics": held["metrics"], "changes": held["changes"], "answers": held["answers"], "sets": sets}


def fitted_batch(oom_log: list[dict], batch: int, loglik: bool) -> int:
    """The batch that last fitted for this kind of pass: an out-of-memory halving of a log-likelihood pass (its own
    batch, its own memory) leaves the generation batch alone, and the other way round."""
    own = [o for o in oom_log if o["label"].endswith("log-likelihood") == loglik]
    return own[-1]["batch_size"][1] if own else batch


def score_set(run, name: str, items: list[dict], answers: dict[str, list[dict]], source: str,
              choices: dict[str, list[dict | None]], gen_items: list[dict]) -> dict:
    """Both models' answers to one eval set saved to eval/answers[_<name>].jsonl, scored with intervals.
    answers: each model's generated answers to gen_items (every item, or the free-text ones when closed-form items
    are scored by log-likelihood only); choices: each model's log-likelihood scoring per item (None where none)."""
    opened = prompt_opens_think(items)
    gen_ids = {id(it) for it in gen_items}
    per = {who: item_scores(gen_items, a, opened) for who, a in answers.items()}  # scored once, used three ways
    heads = {who: iter(headline_per_item(gen_items, p)) for who, p in per.items()}
    texts = {who: iter(a) for who, a in answers.items()}
    rows = []
    for i, it in enumerate(items):
        row = {"id": it["id"], "kind": it["kind"], "category": it.get("category"), "question": it["question"],
               "options": it.get("options"),
               "reference": it["reference"] if it["kind"] == "freetext" else it["answer"]}
        for who in ("base", "finetuned"):
            ch = choices[who][i]
            if id(it) in gen_ids:
                a = next(texts[who])
                _, answer, finished = split_reasoning(a["text"], opened)
                row.update({who: a["text"], f"{who}_answer": answer, f"{who}_thought_finished": finished,
                            f"{who}_hit_limit": a["hit_limit"], f"{who} score": next(heads[who])})  # ROUGE-L or 1/0
            else:  # scored by log-likelihood only: the pick is the answer
                row.update({who: None, f"{who}_answer": ch["pick"], f"{who}_thought_finished": None,
                            f"{who}_hit_limit": None, f"{who} score": float(ch["correct"])})
            if ch:
                row[f"{who}_loglik"] = ch
        rows.append(row)
    (run / "eval").mkdir(exist_ok=True)
    path = run / "eval" / ("answers.jsonl" if name == "held-out" else f"answers_{name}.jsonl")
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    metrics = {who: {**score(gen_items, answers[who], opened, per[who]), **loglik_metrics(items, choices[who]),
                     **rotation_metrics(choices[who])} for who in ("base", "finetuned")}
    for m in metrics.values():  # items of the set, however they were scored
        m["n_freetext"] = sum(it["kind"] == "freetext" for it in items)
        m["n_choice"] = len(items) - m["n_freetext"]
        if not gen_items:
            m["answer_words_mean"] = m["looping"] = None
    changes = intervals(gen_items, answers["base"], answers["finetuned"], opened, (per["base"], per["finetuned"]))
    ll = {who: {**loglik_items(choices[who]), **rot} for who, rot in rotation_items(choices).items()}
    for k in ll["base"]:
        changes[k] = {"base_ci95": bootstrap(ll["base"][k]), "finetuned_ci95": bootstrap(ll["finetuned"][k]),
                      "change": paired_bootstrap(ll["base"][k], ll["finetuned"][k])}
    return {"n_items": len(items), "eval_source": source, "reasoning_opened_in_prompt": opened,
            "metrics": metrics, "changes": changes, "answers": str(path),
            "warnings": closed_warnings(name, metrics) + rotation_warnings(name, metrics)}
