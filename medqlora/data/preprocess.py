"""Stage 2: load, detect, validate, split, format, tokenize with the prompt masked, and save into the run folder."""
from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from medqlora.config import RunConfig
from medqlora.core.rundir import RunDir
from medqlora.data import decontaminate as DC
from medqlora.data import formats as D
from medqlora.data.benchmarks import held_out_fingerprint, read_benchmark, reference_text  # noqa: F401  (re-export)
from medqlora.data.prompts import build_completion, build_prompt, tokenize_example


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
    benchmarks: dict = field(default_factory=dict)  # eval set name -> {source, read, kept, dropped, path}
    decontamination: dict = field(default_factory=dict)  # decontaminate.Report.result()
    eval_fingerprint: dict = field(default_factory=dict)  # where the held-out items came from (the manifest's)


def prepare(cfg: RunConfig, run: RunDir, tokenizer) -> Prepared:
    t0 = time.time()
    dc = cfg.data
    info, eval_info = {}, {}  # the hub revision read, where a source is a hub dataset
    rows, columns = D.open_rows(dc.source, dc, dc.split, info)
    if not columns:
        raise D.DataError(f"{dc.source} has no readable rows; see the runner's data check for why")
    fmt, mapping = D.resolve_format(columns, dc)
    checks, seen, notes = D.Checks(), set(), []

    eval_examples: list[D.Example] = []
    if dc.eval_source:
        erows, ecols = D.open_rows(dc.eval_source, dc, dc.eval_split, eval_info)
        efmt, emap = D.resolve_format(ecols, dc)
        eval_examples = list(D.iter_examples(erows, efmt, emap, checks, seen, dc.on_bad_rows, dc.eval_source))
    benchmarks = {es.name: read_benchmark(es, cfg, tokenizer) for es in cfg.eval.sets}
    # every eval item, to check the training rows against as they stream by (the hash split's: read ahead)
    held = eval_examples if dc.eval_source else DC.held_out_examples(dc)
    report = DC.Report(DC.Index({"held-out": held, **{name: [D.Example.from_dict(i) for i in b["items"]]
                                                      for name, b in benchmarks.items()}}), dc.decontaminate)

    max_len = cfg.model.max_seq_length
    train_lengths, eval_lengths, all_lengths, first = [], [], [], {}

    def tokenized(ex: D.Example, prompt_only: bool = False) -> dict | None:
        """Prompt + completion tokens; over-long examples are dropped and counted. Eval items are measured on
        their prompt alone: the reference is scored against, never fed to the model."""
        prompt = build_prompt(ex, tokenizer, dc.template, dc.system_prompt)
        completion = build_completion(ex, prompt, tokenizer, dc.template)
        tok = tokenize_example(prompt, completion, tokenizer, dc.template)
        if not prompt_only and tok["n_tokens"] == tok["n_prompt_tokens"]:
            checks.drop("no trained tokens: the answer tokenizes to nothing after the prompt (check the chat "
                        "template and data.template)", ex.question)
            return None
        n = tok["n_prompt_tokens"] if prompt_only else tok["n_tokens"]
        all_lengths.append(n)
        if n > max_len:
            what = "prompt" if prompt_only else "prompt + answer"
            checks.drop(f"over-long: {n} tokens ({what}) > model.max_seq_length {max_len}", ex.question)
            return None
        tok["prompt"], tok["completion"] = prompt, completion
        return tok

    kept_eval, val_rows, val_items = [], [], []

    def add_eval(ex: D.Example) -> None:
        tok = tokenized(ex, prompt_only=True)
        if tok:
            kept_eval.append({**ex.to_dict(), "prompt": tok["prompt"], "reference": reference_text(ex)})
            eval_lengths.append(tok["n_prompt_tokens"])
            checks.keep("eval", ex.kind)

    for ex in eval_examples:
        add_eval(ex)

    def train_rows():
        for ex, overlaps in report.index.annotate(D.iter_examples(rows, fmt, mapping, checks, seen, dc.on_bad_rows,
                                                                  dc.source)):
            if not dc.eval_source and D.in_eval_split(ex, dc.eval_fraction, dc.seed):
                add_eval(ex)
                continue
            why = report.verdict(ex, overlaps)  # a leak, or contaminated under data.decontaminate: drop
            if why:
                checks.drop(why, ex.question)
                continue
            tok = tokenized(ex)
            if tok is None:
                continue
            row = {"id": ex.id, "kind": ex.kind, "input_ids": tok["input_ids"], "labels": tok["labels"],
                   "n_tokens": tok["n_tokens"]}
            # the validation share: a second hash of the question (another salt than the eval split's), capped
            if len(val_rows) < dc.val_max_examples and D.in_eval_split(ex, dc.val_fraction, f"val-{dc.seed}"):
                checks.keep("val", ex.kind)
                val_rows.append(row)
                if ex.kind != "freetext":  # scored by log-likelihood at every evaluation (train.select_by)
                    val_items.append({**ex.to_dict(), "prompt": tok["prompt"]})
                continue
            checks.keep("train", ex.kind)
            train_lengths.append(tok["n_tokens"])
            if not first:
                first.update(tok)
            yield row

    import datasets

    datasets.disable_progress_bars()
    out = run.train_data

    with tempfile.TemporaryDirectory(prefix="medqlora-prep-") as cache:
        # Written to Arrow in chunks as rows stream by; the nonce keeps a stale cache from being reused.
        try:
            ds = datasets.Dataset.from_generator(train_rows, cache_dir=cache,
                                                 gen_kwargs={}, fingerprint=f"prep-{time.time_ns()}")
        except datasets.exceptions.DatasetGenerationError as e:
            # datasets wraps what the generator raised; show the real cause, or say that no row was left
            if checks.kept.get("train"):
                raise (e.__cause__ or e) from None
            if isinstance(e.__cause__, D.DataError):
                raise e.__cause__ from None
        # Nothing is written to the run folder until the data is known to be worth training on.
        assert checks.balanced(), f"row accounting is off: {checks}"
        refuse_meaningless(checks, dc, max_len, all_lengths, kept_eval)
        val = datasets.Dataset.from_list(val_rows, features=ds.features) if val_rows else None
        for data, path in ((ds, out), (val, run.val_data)):
            if path.exists():
                shutil.rmtree(path)
            if data is None:  # no validation set this time: a stale one must not be read
                continue
            tmp = path.with_name(path.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            data.save_to_disk(str(tmp))
            tmp.rename(path)
    eval_text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in kept_eval)
    run.eval_items.write_text(eval_text)
    run.val_items.write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in val_items))
    for name, b in benchmarks.items():
        text = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in b.pop("items"))
        run.eval_set_path(name).write_text(text)
        eval_text += text
    h = hashlib.sha256()
    for f in sorted(out.glob("*.arrow")) + sorted(run.val_data.glob("*.arrow")):
        h.update(f.read_bytes())
    h.update(eval_text.encode())
    if any(k.startswith("eval/") for k in checks.kinds) and dc.eval_source is None:
        notes.append(f"eval split: {dc.eval_fraction:.0%} of questions by hash (seed {dc.seed})")
    notes += D.notes_text(checks)
    if dc.val_fraction:
        notes.append(f"validation split: {len(val_rows)} training rows held out for the validation loss "
                     f"(data.val_fraction {dc.val_fraction:g}, at most data.val_max_examples {dc.val_max_examples})")
    return Prepared(fmt, mapping, checks, train_lengths, eval_lengths, kept_eval, first, h.hexdigest(),
                    time.time() - t0, notes, benchmarks,
                    report.result({"held-out": {e["id"] for e in kept_eval}}),
                    held_out_fingerprint(dc, info, eval_info))


def refuse_meaningless(checks: D.Checks, dc, max_len: int, lengths: list[int], kept_eval: list) -> None:
    """Stop, with the counts and the fix, when what is left is not the run that was asked for."""
    import numpy as np

    n_train, dropped = checks.kept.get("train", 0), sum(checks.dropped.values())
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(checks.dropped.items(), key=lambda kv: -kv[1]))
    fixes = []
    if checks.dropped.get("over-long"):
        up = lambda n: -(-n // 64) * 64  # noqa: E731  (a multiple of 64)
        keep95 = up(int(np.percentile(lengths, 95))) if lengths else max_len
        longer = f"{checks.dropped['over-long']} rows are longer than model.max_seq_length {max_len}; "
        # a length at or below the limit keeps nothing more: then say what keeps the long ones
        fixes.append(longer + (f"--set model.max_seq_length={keep95} would keep 95% of the examples" if keep95 > max_len
                               else f"95% of the examples already fit; --set model.max_seq_length="
                                    f"{up(max(lengths + [max_len + 1]))} would keep them all"))
    if checks.dropped.get("duplicate"):
        fixes.append(f"{checks.dropped['duplicate']} rows repeat an earlier question and answer")
    if checks.dropped.get("leak"):
        fixes.append(f"{checks.dropped['leak']} training questions are also in the eval set")
    if checks.dropped.get("contaminated"):
        fixes.append(f"{checks.dropped['contaminated']} training rows share 13 words in a row with an eval item "
                     "(data.decontaminate: drop; warn keeps them)")
    if checks.dropped.get("no trained tokens"):
        fixes.append("every dropped 'no trained tokens' example had its whole answer masked: the prompt template "
                     "does not leave the answer after the prompt")
    if set(checks.dropped) - {"over-long", "duplicate", "leak", "contaminated", "no trained tokens"}:
        fixes.append("see the data checks table (or run with data.on_bad_rows: fail) for the rows and lines")
    problems = []
    if checks.read and dropped / checks.read > dc.max_drop_fraction:
        problems.append(f"{dropped} of {checks.read} rows dropped ({dropped / checks.read:.0%}, more than "
                        f"data.max_drop_fraction {dc.max_drop_fraction:.0%})")
    if n_train < dc.min_train_examples:
        problems.append(f"{n_train} training examples left, fewer than data.min_train_examples {dc.min_train_examples}")
    if not kept_eval:
        problems.append("no eval items left")
        fixes.append("give data.eval_source or raise data.eval_fraction")
    if problems:
        raise D.DataError("; ".join(problems) + (f". Dropped: {reasons}" if reasons else "") + ". "
                          + "; ".join(fixes + ["if this is what you meant (a smoke test), raise data.max_drop_fraction "
                                               "or lower data.min_train_examples"]))


# ---------------------------------------------------------------- what the notebook shows


def checks_table(p: Prepared):
    import pandas as pd

    rows = [("rows read", p.checks.read)]
    rows += [(f"dropped: {k}", v) for k, v in sorted(p.checks.dropped.items())]
    rows += [(f"kept: {k}", v) for k, v in sorted(p.checks.kinds.items())]
    rows += [(f"kept: {k} (all)", v) for k, v in sorted(p.checks.kept.items())]
    rows += [("read = kept + dropped", "yes" if p.checks.balanced() else "NO")]
    return pd.DataFrame(rows, columns=["check", "rows"]).set_index("check")


def dropped_table(p: Prepared):
    import pandas as pd

    rows = [(s["reason"], s["row"]) for v in p.checks.samples.values() for s in v]
    return pd.DataFrame(rows, columns=["why dropped (first 3 of each reason)", "row"])


def length_stats(p: Prepared):
    import numpy as np
    import pandas as pd

    out = {}
    for name, lens in (("train (prompt + answer)", p.train_lengths), ("eval (prompt only)", p.eval_lengths)):
        a = np.array(lens or [0])
        out[name] = {"examples": len(lens), "mean": a.mean(), "p50": np.percentile(a, 50),
                     "p90": np.percentile(a, 90), "p99": np.percentile(a, 99), "max": a.max(),
                     "total tokens": a.sum()}
    df = pd.DataFrame(out).T.round(1)
    for col in ("examples", "max", "total tokens"):  # counts: no '240.0'
        df[col] = df[col].astype(int)
    return df


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
    import numpy as np

    result = {"format": p.source_format, "columns": p.columns, "rows_read": p.checks.read,
              "dropped": p.checks.dropped, "kept": p.checks.kept, "kinds": p.checks.kinds,
              "train_tokens": sum(p.train_lengths), "max_tokens": max(p.train_lengths + p.eval_lengths),
              "max_seq_length": cfg.model.max_seq_length,
              "eval_from": (f"data.eval_source {cfg.data.eval_source}" if cfg.data.eval_source else
                            f"a hash split of data.source {cfg.data.source}: {cfg.data.eval_fraction:.0%} of its "
                            f"questions (seed {cfg.data.seed})"),
              "p99_tokens": int(np.percentile(p.train_lengths, 99)) if p.train_lengths else None,
              "train_examples": p.checks.kept.get("train", 0), "val_examples": p.checks.kept.get("val", 0),
              "val_data": str(run.val_data) if p.checks.kept.get("val") else None,
              "fingerprint": p.fingerprint, "train_data": str(run.train_data), "eval_items": str(run.eval_items),
              "seconds": round(p.seconds, 2), "notes": p.notes,
              "eval_sets": {name: {**b, "path": str(run.eval_set_path(name))} for name, b in p.benchmarks.items()},
              "decontamination": p.decontamination,  # its warnings reach the headline
              "eval_fingerprint": p.eval_fingerprint}
    run.save_result("preprocess", result)
    return result
