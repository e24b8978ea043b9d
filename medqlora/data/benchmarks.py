"""Benchmark eval sets (eval.sets): read, normalized and checked like the training data, with the prompts the run's
template builds, and where each came from (a file's SHA-256, or a hub dataset's name, config, split and revision).

A set with an lm-evaluation-harness task (eval.sets task:, config/tasks.py) is read as that task reads its hub dataset
(MedQA's sent1/ending0-3/label, MedMCQA's opa-opd/cop, PubMedQA's QUESTION/CONTEXTS/final_decision, MMLU's
question/choices/answer), every item kept (no duplicate or length cut: lm-eval scores them all), and each item says
which task prompt is its own (data/lm_eval_prompts.py).
"""
from __future__ import annotations

import hashlib

from medqlora.config.tasks import TASKS, Task
from medqlora.data import formats as D
from medqlora.data.files import kind_of
from medqlora.data.jsonrows import Row
from medqlora.data.normalize import text
from medqlora.data.prompts import build_prompt, tokenize_example

# Per task prompt style: the columns of the hub dataset lm-eval reads.
RAW_COLUMNS = {"medqa": ("sent1", "ending0", "ending1", "ending2", "ending3", "label"),
               "medmcqa": ("question", "opa", "opb", "opc", "opd", "cop"),
               "pubmedqa": ("QUESTION", "CONTEXTS", "final_decision"),
               "mmlu": ("question", "choices", "answer")}
CANONICAL = ["id", "question", "options", "answer", "context", "final_decision", "long_answer", "explanation",
             "category"]
LETTERS = "ABCD"


def read_benchmark(es, cfg, tokenizer) -> dict:
    """A benchmark eval set: read, normalized and checked like the training data (its own counts), prompts built
    with the run's template; items whose prompt is longer than max_seq_length are dropped and counted (not an lm-eval
    task's: those are scored in their own prompt, never generated)."""
    dc = set_config(cfg.data, es)
    task = TASKS[es.task] if es.task else None
    info: dict = {}
    try:
        rows, columns = D.open_rows(dc.source, dc, dc.split, info)
    except D.DataError as e:
        if task and task.hub_note and dc.source == task.hub:
            raise D.DataError(f"eval set {es.name}: {e}. {task.hub_note}") from e
        raise
    last: dict = {}
    if task:
        rows, columns = task_rows(task, rows, columns, dc.source, last, f"eval set {es.name}: "), CANONICAL
    fmt, mapping = D.resolve_format(columns, dc)
    checks, items = D.Checks(), []
    for ex in D.iter_examples(rows, fmt, mapping, checks, set(), dc.on_bad_rows, dc.source, dedup=task is None):
        prompt = build_prompt(ex, tokenizer, cfg.data.template, cfg.data.system_prompt)
        n = 0 if task else tokenize_example(prompt, "", tokenizer, cfg.data.template)["n_prompt_tokens"]
        if n > cfg.model.max_seq_length:
            checks.drop(f"over-long: {n} prompt tokens > model.max_seq_length {cfg.model.max_seq_length}", ex.question)
            continue
        checks.keep(es.name, ex.kind)
        item = {**ex.to_dict(), "prompt": prompt, "reference": reference_text(ex)}
        if task:  # the row that made this example is the last one the reader handed over
            item.update(lm_eval_prompt=task.prompt, lm_eval_description=task.description or None,
                        **({"verbatim": last["verbatim"]} if last.get("verbatim") else {}))
        items.append(item)
    if not items:
        raise D.DataError(f"eval set {es.name} ({es.source}): no usable items ({checks.read} read, dropped "
                          f"{checks.dropped})")
    warnings = []
    if task and len(items) != task.items:
        dropped = f"; dropped: {checks.dropped}" if checks.dropped else ""
        warnings.append(f"{es.name}: {len(items)} of lm-eval's {task.items} items of {task.name} ({task.hub} "
                        f"{task.config or ''} {task.split}{dropped}): not lm-eval's item set, so its number does not "
                        "stand beside lm-eval's")
    return {"source": es.source, "format": fmt, "read": checks.read, "kept": len(items), "dropped": checks.dropped,
            "task": es.task, "fingerprint": fingerprint(dc, info), "warnings": warnings, "items": items}


def set_config(cfg, es):
    """A benchmark set read with the data settings, its own source, format and columns."""
    return cfg.model_copy(update={"source": es.source, "config_name": es.config_name, "split": es.split,
                                  "revision": es.revision, "format": es.format, "columns": es.columns,
                                  "max_samples": es.max_items, "streaming": False, "eval_source": None})


def task_rows(task: Task, rows, columns: list[str], source: str, last: dict, where: str = ""):
    """The rows of an lm-eval task's dataset as this project's columns; `last` keeps the verbatim texts of the row
    handed over last. A file without the task's columns is refused up front."""
    need = RAW_COLUMNS[task.prompt]
    missing = [c for c in need if c not in columns]
    if missing:
        raise D.DataError(f"{where}{source} is not shaped like {task.hub} (lm-eval task {task.name}): no "
                          f"column {', '.join(missing)}; the task reads {', '.join(need)}. Give the hub dataset, a "
                          "file with those columns, or leave task out and give format and columns")

    def gen():
        for r in rows:
            if r.data is None:
                yield r
                continue
            try:
                data = canonical(task.prompt, r.data)
            except (KeyError, IndexError, TypeError, ValueError) as e:
                yield Row(r.line, None, f"not a {task.name} row ({type(e).__name__}: {e})", str(r.data)[:120])
                continue
            raws = [data["question"], data.get("context"), *(data.get("options") or [])]
            last["verbatim"] = {text(x): x for x in raws if isinstance(x, str) and text(x) != x}
            yield Row(r.line, data)
    return gen()


def canonical(style: str, r: dict) -> dict:
    """One hub row of an lm-eval task as this project's fields, the texts as the dataset holds them."""
    if style == "pubmedqa":
        return {"question": r["QUESTION"], "context": "\n".join(r["CONTEXTS"]), "final_decision": r["final_decision"],
                "long_answer": r.get("LONG_ANSWER")}
    if style == "medqa":
        out = {"question": r["sent1"], "options": [r[f"ending{i}"] for i in range(4)], "answer": LETTERS[r["label"]]}
    elif style == "medmcqa":
        out = {"question": r["question"], "options": [r[k] for k in ("opa", "opb", "opc", "opd")],
               "answer": LETTERS[r["cop"]], "explanation": r.get("exp"), "category": r.get("subject_name")}
    else:
        out = {"question": r["question"], "options": list(r["choices"]), "answer": LETTERS[r["answer"]],
               "category": r.get("subject")}
    return {"id": r.get("id"), **out}


def fingerprint(dc, info: dict | None = None) -> dict:
    """Where items came from: a file's path and SHA-256 (the bytes as stored), or a hub dataset's name, config, split
    and revision (the pinned one, else the commit read where datasets says it)."""
    if kind_of(dc.source) == "hub":
        return {"hub": dc.source, "config": dc.config_name, "split": dc.split,
                "revision": dc.revision or (info or {}).get("revision")}
    return {"file": dc.source, "sha256": file_sha256(dc.source)}


def file_sha256(source: str) -> str:
    import fsspec

    h = hashlib.sha256()
    with fsspec.open(source, "rb") as f:  # a local path or an fsspec URL, never decompressed
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def reference_text(ex: D.Example) -> str:
    """The text ROUGE compares against: the answer for free text, the long answer or explanation otherwise."""
    if ex.kind == "freetext":
        return ex.answer
    return ex.explanation or ex.answer


def held_out_fingerprint(dc, info: dict, eval_info: dict) -> dict:
    """Where the held-out items came from: data.eval_source's fingerprint, or data.source's with the hash split's
    share, seed and row cap."""
    if dc.eval_source:
        return fingerprint(dc.model_copy(update={"source": dc.eval_source, "split": dc.eval_split}), eval_info)
    return {"split_of": fingerprint(dc, info), "eval_fraction": dc.eval_fraction, "seed": dc.seed,
            "max_samples": dc.max_samples}
