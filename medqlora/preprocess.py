"""Stage 2: load, detect, validate, split, format, tokenize with the prompt masked, and save into the run folder."""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from . import data as D
from .config import RunConfig
from .prompts import build_completion, build_prompt, tokenize_example
from .rundir import RunDir


@dataclass
class Prepared:
    source_format: str
    columns: dict[str, str]
    checks: D.Checks
    train_lengths: list[int]
    eval_lengths: list[int]
    eval_items: list[dict]
    example: dict  # one tokenized training example, for the marked-span display
    fingerprint: str
    seconds: float
    notes: list[str] = field(default_factory=list)


def prepare(cfg: RunConfig, run: RunDir, tokenizer) -> Prepared:
    t0 = time.time()
    dc = cfg.data
    rows, columns = D.open_rows(dc.source, dc, dc.split)
    if not columns:
        raise D.DataError(f"{dc.source} is empty: no rows or columns were found")
    fmt, mapping = D.resolve_format(columns, dc)
    checks, seen, notes = D.Checks(), set(), []

    eval_examples: list[D.Example] = []
    if dc.eval_source:
        erows, ecols = D.open_rows(dc.eval_source, dc, dc.eval_split)
        efmt, emap = D.resolve_format(ecols, dc)
        eval_examples = list(D.iter_examples(erows, efmt, emap, checks, seen))
    eval_questions = {D.question_key(e) for e in eval_examples}

    max_len = cfg.model.max_seq_length
    train_lengths, eval_lengths, first = [], [], {}

    def tokenized(ex: D.Example) -> dict | None:
        prompt = build_prompt(ex, tokenizer, dc.template, dc.system_prompt)
        completion = build_completion(ex, prompt, tokenizer, dc.template)
        tok = tokenize_example(prompt, completion, tokenizer, dc.template)
        if tok["n_tokens"] > max_len:
            checks.drop(f"over-long: {tok['n_tokens']} tokens > model.max_seq_length {max_len}",
                        ex.question)
            return None
        tok["prompt"], tok["completion"] = prompt, completion
        return tok

    kept_eval = []

    def add_eval(ex: D.Example) -> None:
        tok = tokenized(ex)
        if tok:
            kept_eval.append({**ex.to_dict(), "prompt": tok["prompt"], "reference": reference_text(ex)})
            eval_lengths.append(tok["n_tokens"])
            checks.keep("eval", ex.kind)

    for ex in eval_examples:
        add_eval(ex)

    def train_rows():
        for ex in D.iter_examples(rows, fmt, mapping, checks, seen):
            if not dc.eval_source and D.in_eval_split(ex, dc.eval_fraction, dc.seed):
                add_eval(ex)
                continue
            if D.question_key(ex) in eval_questions:
                checks.drop("leak: question is also in the eval set", ex.question)
                continue
            tok = tokenized(ex)
            if tok is None:
                continue
            checks.keep("train", ex.kind)
            train_lengths.append(tok["n_tokens"])
            if not first:
                first.update(tok)
            yield {"id": ex.id, "kind": ex.kind, "input_ids": tok["input_ids"], "labels": tok["labels"],
                   "n_tokens": tok["n_tokens"]}

    import datasets

    datasets.disable_progress_bars()
    out = run.train_data

    def no_rows():
        return D.DataError(f"no training rows left after validation ({checks.read} read, dropped: "
                           f"{checks.dropped}); see the data checks table for why")

    with tempfile.TemporaryDirectory(prefix="medqlora-prep-") as cache:
        # Written to Arrow in chunks as rows stream by; the nonce keeps a stale cache from being reused.
        try:
            ds = datasets.Dataset.from_generator(train_rows, cache_dir=cache,
                                                 gen_kwargs={}, fingerprint=f"prep-{time.time_ns()}")
        except datasets.exceptions.DatasetGenerationError as e:
            # datasets wraps what the generator raised; show the real cause, or say that no row was left
            if not checks.kept.get("train"):
                raise no_rows() from None
            raise (e.__cause__ or e) from None
        if not kept_eval:
            raise D.DataError("no eval rows: give data.eval_source or raise data.eval_fraction")
        if out.exists():
            shutil.rmtree(out)
        tmp = out.with_name("train.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        ds.save_to_disk(str(tmp))
        tmp.rename(out)
    eval_text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept_eval)
    run.eval_items.write_text(eval_text)
    h = hashlib.sha256()
    for f in sorted(out.glob("*.arrow")):
        h.update(f.read_bytes())
    h.update(eval_text.encode())
    if any(k.startswith("eval/") for k in checks.kinds) and dc.eval_source is None:
        notes.append(f"eval split: {dc.eval_fraction:.0%} of questions by hash (seed {dc.seed})")
    return Prepared(fmt, mapping, checks, train_lengths, eval_lengths, kept_eval, first, h.hexdigest(),
                    time.time() - t0, notes)


def reference_text(ex: D.Example) -> str:
    """The text ROUGE compares against: the answer for free text, the long answer or explanation otherwise."""
    if ex.kind == "freetext":
        return ex.answer
    return ex.explanation or ex.answer


# ---------------------------------------------------------------- what the notebook shows


def checks_table(p: Prepared):
    import pandas as pd

    rows = [("rows read", p.checks.read)]
    rows += [(f"dropped: {k}", v) for k, v in sorted(p.checks.dropped.items())]
    rows += [(f"kept: {k}", v) for k, v in sorted(p.checks.kinds.items())]
    rows += [(f"kept: {k} (all)", v) for k, v in sorted(p.checks.kept.items())]
    return pd.DataFrame(rows, columns=["check", "rows"]).set_index("check")


def dropped_table(p: Prepared):
    import pandas as pd

    rows = [(s["reason"], s["row"]) for v in p.checks.samples.values() for s in v]
    return pd.DataFrame(rows, columns=["why dropped", "row"])


def length_stats(p: Prepared):
    import numpy as np
    import pandas as pd

    out = {}
    for name, lens in (("train", p.train_lengths), ("eval", p.eval_lengths)):
        a = np.array(lens or [0])
        out[name] = {"examples": len(lens), "mean": a.mean(), "p50": np.percentile(a, 50),
                     "p90": np.percentile(a, 90), "p99": np.percentile(a, 99), "max": a.max(),
                     "total tokens": a.sum()}
    return pd.DataFrame(out).T.round(1)


def plot_lengths(p: Prepared, cfg: RunConfig, path: Path):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.hist([p.train_lengths, p.eval_lengths], bins=30, label=["train", "eval"], stacked=True)
    longest, limit = max(p.train_lengths + p.eval_lengths), cfg.model.max_seq_length
    if limit <= longest * 1.5:
        ax.axvline(limit, color="red", ls="--", label=f"max_seq_length {limit}")
        ax.set_xlim(0, limit * 1.05)
    else:  # far off to the right: say it rather than squash the histogram
        ax.set_title(f"longest example {longest} tokens; max_seq_length {limit}", fontsize=10)
    ax.set_xlabel("tokens per example (prompt + answer)")
    ax.set_ylabel("examples")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig


def marked_example(p: Prepared, tokenizer) -> str:
    """One training example decoded, the trained span (labels != -100) between »» and ««."""
    ids, labels = p.example["input_ids"], p.example["labels"]
    n = sum(1 for x in labels if x == -100)
    assert all(x == -100 for x in labels[:n]) and all(x != -100 for x in labels[n:])
    return (tokenizer.decode(ids[:n]) + "»»" + tokenizer.decode(ids[n:]) + "««\n\n"
            f"[{n} prompt tokens masked, {len(ids) - n} answer tokens trained]")


def save_result(p: Prepared, cfg: RunConfig, run: RunDir) -> dict:
    result = {"format": p.source_format, "columns": p.columns, "rows_read": p.checks.read,
              "dropped": p.checks.dropped, "kept": p.checks.kept, "kinds": p.checks.kinds,
              "train_tokens": sum(p.train_lengths), "max_tokens": max(p.train_lengths + p.eval_lengths),
              "fingerprint": p.fingerprint, "train_data": str(run.train_data), "eval_items": str(run.eval_items),
              "seconds": round(p.seconds, 2), "notes": p.notes}
    run.save_result("preprocess", result)
    return result
