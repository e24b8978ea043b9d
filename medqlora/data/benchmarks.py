"""Benchmark eval sets (eval.sets): read, normalized and checked like the training data, with the prompts the run's
template builds, and where each came from (a file's SHA-256, or a hub dataset's name, config, split and revision)."""
from __future__ import annotations

from medqlora.data import formats as D
from medqlora.data.prompts import build_prompt, tokenize_example


def read_benchmark(es, cfg, tokenizer) -> dict:
    """A benchmark eval set: read, normalized and checked like the training data (its own counts), prompts built
    with the run's template; items whose prompt is longer than max_seq_length are dropped and counted."""
    from medqlora.data.check import set_config

    dc = set_config(cfg.data, es)
    rows, columns = D.open_rows(dc.source, dc, dc.split)
    fmt, mapping = D.resolve_format(columns, dc)
    checks, items = D.Checks(), []
    for ex in D.iter_examples(rows, fmt, mapping, checks, set(), dc.on_bad_rows, dc.source):
        prompt = build_prompt(ex, tokenizer, cfg.data.template, cfg.data.system_prompt)
        n = tokenize_example(prompt, "", tokenizer, cfg.data.template)["n_prompt_tokens"]
        if n > cfg.model.max_seq_length:
            checks.drop(f"over-long: {n} prompt tokens > model.max_seq_length {cfg.model.max_seq_length}", ex.question)
            continue
        checks.keep(es.name, ex.kind)
        items.append({**ex.to_dict(), "prompt": prompt, "reference": reference_text(ex)})
    if not items:
        raise D.DataError(f"eval set {es.name} ({es.source}): no usable items ({checks.read} read, dropped "
                          f"{checks.dropped})")
    return {"source": es.source, "format": fmt, "read": checks.read, "kept": len(items), "dropped": checks.dropped,
            "items": items}


def reference_text(ex: D.Example) -> str:
    """The text ROUGE compares against: the answer for free text, the long answer or explanation otherwise."""
    if ex.kind == "freetext":
        return ex.answer
    return ex.explanation or ex.answer
