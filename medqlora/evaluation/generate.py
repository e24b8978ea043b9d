"""Generation: the items to answer, sampling settings, batched greedy (or sampled) answers, and the batch that fits."""
from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path

from medqlora.data.prompts import adds_special_tokens
from medqlora.evaluation import fast_generate as FG
from medqlora.evaluation.scoring import (
    prompt_opens_think,
    split_reasoning,
)
from medqlora.training import memory, memory_plan


# The sample's seed: fixed, not train.seed, so that runs trained with other seeds are scored on the same items.
SAMPLE_SEED = 0


def select_items(path: Path, max_samples: int | None, seed: int = SAMPLE_SEED) -> tuple[list[dict], dict | None]:
    """The items to score, in file order, and {"n", "of", "seed"} where max_samples took a sample (None: all of
    them). Not the first N lines: a file sorted by topic or kind would give a biased subset (sample_indices)."""
    items = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not max_samples or max_samples >= len(items):
        return items, None
    keep = sample_indices([it["kind"] for it in items], max_samples, seed)
    return [items[i] for i in keep], {"n": len(keep), "of": len(items), "seed": seed}


def sample_indices(kinds: list[str], n: int, seed: int) -> list[int]:
    """n of the indices, sorted: free-text and closed-form items in their shares of the file (largest remainder; a
    kind present keeps at least one item), and within each, one item drawn from each of its equal stretches, so the
    sample covers the whole file however it is sorted. The same for the same file, n and seed."""
    groups: dict[bool, list[int]] = {}
    for i, kind in enumerate(kinds):
        groups.setdefault(kind == "freetext", []).append(i)
    quota = {g: n * len(ix) / len(kinds) for g, ix in groups.items()}
    take = {g: int(q) for g, q in quota.items()}
    for g in sorted(groups, key=lambda g: take[g] - quota[g])[:n - sum(take.values())]:
        take[g] += 1
    for g in groups:
        if take[g] == 0 and n >= len(groups):
            take[max(take, key=take.get)] -= 1
            take[g] = 1
    rng = random.Random(seed)
    out = []
    for g in sorted(groups):
        ix, k = groups[g], take[g]
        bounds = [j * len(ix) // k for j in range(k + 1)] if k else []
        out += [ix[rng.randrange(lo, hi)] for lo, hi in zip(bounds, bounds[1:])]
    return sorted(out)


def sampling(cfg) -> dict:
    """generate() keyword arguments from eval.temperature / top_p / repetition_penalty (greedy at 0)."""
    e = cfg.eval
    kw = {"do_sample": e.temperature > 0, "repetition_penalty": e.repetition_penalty}
    if e.temperature > 0:
        kw.update(temperature=e.temperature, top_p=e.top_p)
    return kw


def generate(model, tokenizer, items: list[dict], max_new_tokens: int, max_new_tokens_choice: int,
             batch_size: int, label: str, print_fn=print, oom_retries: int = 3, oom_log: list | None = None,
             template: str = "chat", sampling_kw: dict | None = None, timing: dict | None = None,
             engine: str = "eager", max_cache_len: int | None = None, fallback_log: list | None = None) -> list[dict]:
    """Greedy answers for every item ({text, new_tokens, hit_limit}), batched with left padding, the prompt
    tokenized exactly as in training; progress printed per batch. Out of GPU memory, the batch is halved and the
    same prompts are tried again (up to oom_retries times, logged in oom_log). `timing`, shared by the calls of one
    pass, gets the pass's first batch (its one-time costs: compilation, caches, dequantization) apart from the
    batches after it: first_batch_seconds/tokens, steady_seconds/tokens. engine (fast_generate.py): eager, static
    (a static KV cache of max_cache_len positions, every batch at the full batch size, the step compiled) or
    continuous (transformers' continuous batching: one call per group, finished answers leave the batch). A static
    or continuous call that fails (not out of memory) is answered again eagerly, logged in fallback_log, and the
    calls after it (sharing the log: the rest of the pass) decode eagerly."""
    import torch

    from medqlora.core.system import free_memory
    from medqlora.training.train import _is_oom

    tokenizer.padding_side = "left"
    device = next(model.parameters()).device
    answers: list[dict | None] = [None] * len(items)
    oom_log = oom_log if oom_log is not None else []
    fallback_log = fallback_log if fallback_log is not None else []
    engine = "eager" if fallback_log else engine
    # Short-answer items get a short budget; within a group, similar lengths share a batch.
    groups = {}
    for i, it in enumerate(items):
        groups.setdefault(it["kind"] == "freetext", []).append(i)
    t0, done, new_tokens = time.time(), 0, 0
    for is_free, idx in groups.items():
        idx.sort(key=lambda i: len(items[i]["prompt"]))
        # a reasoning model thinks before it answers: a closed-form item needs the thought's room too
        budget = max_new_tokens if is_free or template == "reasoning" else max_new_tokens_choice
        pos = 0
        while pos < len(idx):
            chunk = idx[pos:pos + batch_size] if engine != "continuous" else idx
            t_batch = time.time()
            try:
                prompts = [items[i]["prompt"] for i in chunk]
                if engine == "continuous":  # the whole group in one call: answers leave and join the batch
                    ids = [tokenizer(p, add_special_tokens=adds_special_tokens(template))["input_ids"] for p in prompts]
                    with torch.no_grad():
                        gen = FG.continuous(model, tokenizer, ids, budget, batch_size, sampling_kw)
                else:
                    enc = tokenizer(FG.fill(prompts, batch_size) if engine == "static" else prompts,
                                    return_tensors="pt", padding=True,
                                    add_special_tokens=adds_special_tokens(template)).to(device)
                    # static: one cache size for the pass (a longer prompt than planned gets a cache that holds it)
                    extra = FG.static_kwargs(model, max(max_cache_len or 0, enc["input_ids"].shape[1] + budget)) \
                        if engine == "static" else {}
                    with torch.no_grad(), FG.compile_allowed(model) if extra else contextlib.nullcontext():
                        out = model.generate(**enc, max_new_tokens=budget, **(sampling_kw or {"do_sample": False}),
                                             pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                                             **extra)
                    gen = out[:len(chunk), enc["input_ids"].shape[1]:]
            except Exception as e:
                if engine != "eager" and not _is_oom(e):  # a path that fails here must not fail the stage
                    fallback_log.append({"label": label, "engine": engine, "error": f"{type(e).__name__}: {e}"[:300]})
                    print_fn(f"{label}: {engine} decoding failed ({fallback_log[-1]['error']}); going on with eager "
                             "decoding")
                    engine = "eager"
                    continue
                if not _is_oom(e) or batch_size == 1 or len(oom_log) >= oom_retries:
                    raise
                free_memory(reset_peak=True)
                oom_log.append({"label": label, "batch_size": [batch_size, batch_size // 2]})
                print_fn(f"{label}: out of memory at batch {batch_size}; going on at batch {batch_size // 2}")
                batch_size //= 2
                continue
            batch_tokens = 0
            for i, g in zip(chunk, gen):
                answers[i] = FG.answer(tokenizer, g.tolist() if hasattr(g, "tolist") else g, budget)
                batch_tokens += answers[i]["new_tokens"]
            new_tokens += batch_tokens
            if timing is not None:
                part = "steady" if "first_batch_seconds" in timing else "first_batch"
                timing[f"{part}_seconds"] = timing.get(f"{part}_seconds", 0.0) + time.time() - t_batch
                timing[f"{part}_tokens"] = timing.get(f"{part}_tokens", 0) + batch_tokens
            pos += len(chunk)
            done += len(chunk)
            el = time.time() - t0
            print_fn(f"{label}: {done}/{len(items)} answered | {new_tokens / el:.1f} new tokens/s | "
                     f"elapsed {el:.0f} s | ETA {el / done * (len(items) - done):.0f} s")
    return answers


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
        budget, where = memory_plan.budget_gb(cfg)
        limit = cfg.memory.max_fraction * budget
        batch = 1
        while batch * 2 <= min(e.max_batch_size, len(items)) and \
                memory.total(memory.estimate_generation(shape, batch * 2, total, four_bit)) <= limit:
            batch *= 2
        why = f"auto: largest batch within {limit:.1f} GiB ({cfg.memory.max_fraction:.0%} of {where})"
    est = memory.estimate_generation(shape, batch, total, four_bit)
    print_fn(f"generation batch {batch} ({why}); estimated peak " + ", ".join(f"{k} {v:.2f}" for k, v in est.items())
             + f" GiB for {longest} prompt + {total - longest} new tokens")
    return batch, {"batch_size": batch, "why": why, "estimate_gb": {k: round(v, 3) for k, v in est.items()},
                   "cache_len": total}


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
