"""The reinforce stage's items: the closed-form items (multiple choice, yes/no) of the training source, or of rl.source,
with the prompts the train and evaluate stages build for them (data.prompts, the run's template and system prompt).

The items the evaluate stage reports are never among them: the preprocess stage's decontamination applies as it does
to the training rows (data/decontaminate.py, against the run's held-out items and every eval set): an item with the
same question is left out as a leak, one sharing 13 words in a row is dropped or kept with a warning as
data.decontaminate says; reading data.source without a data.eval_source, the hash split preprocess held out is left
out too. Every row read is kept or dropped with a reason.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from medqlora.config import RunConfig
from medqlora.core.rundir import RunDir
from medqlora.data import formats as D
from medqlora.data.prompts import THINK_OPEN, build_prompt, messages_for, tokenize_example
from medqlora.reinforce.rewards import options_json

CLOSED = ("choice", "yesno")


@dataclass
class Items:
    rows: list[dict]  # Example fields + prompt (text), opened, n_prompt_tokens
    source: str
    read: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    decontamination: dict = field(default_factory=dict)  # decontaminate.Report.result() for these items

    @property
    def reference(self) -> dict[str, int]:
        """The right answers' distribution: a model that learns the majority answer would match it."""
        return dict(sorted(Counter(r["answer"] for r in self.rows).items()))

    @property
    def longest_prompt(self) -> int:
        return max((r["n_prompt_tokens"] for r in self.rows), default=0)


def items_path(run: RunDir) -> Path:
    return run / "data" / "rl_items.jsonl"


def _examples(path: Path) -> list:
    if not path.is_file():
        return []
    return [D.Example.from_dict(json.loads(line)) for line in path.read_text().splitlines() if line]


def reported(run: RunDir):
    """Every item the evaluate stage reports (the held-out items and each eval set's, as preprocess prepared them),
    indexed for the decontamination check."""
    from medqlora.data.decontaminate import Index

    sets = {"held-out": _examples(run.eval_items)}
    for name in (run.result("preprocess").get("eval_sets") or {}):
        sets[name] = _examples(run.eval_set_path(name))
    return Index(sets)


def source_config(cfg: RunConfig):
    """How the items' source is read: data: as it is for data.source; for a named rl.source, its own split and
    configuration, the format detected."""
    if cfg.rl.source is None:
        return cfg.data, cfg.data.source
    dc = cfg.data.model_copy(update={"source": cfg.rl.source, "split": cfg.rl.split, "config_name": cfg.rl.config_name,
                                     "format": "auto", "columns": {}, "eval_source": None, "max_samples": None})
    return dc, cfg.rl.source


def prepare(cfg: RunConfig, run: RunDir, tokenizer=None) -> Items:
    """Read the items, keep the closed-form ones the evaluate stage never reports and whose prompt leaves room for
    rl.max_completion_length, write them to data/rl_items.jsonl, and return them with the counts. The tokenizer is
    the model's (loaded here when not given)."""
    if tokenizer is None:
        from medqlora.training import model as M

        tokenizer = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    dc, source = source_config(cfg)
    rows, columns = D.open_rows(source, dc, dc.split)
    if not columns:
        raise D.DataError(f"{source} has no readable rows")
    fmt, mapping = D.resolve_format(columns, dc)
    checks = D.Checks()
    from medqlora.data.decontaminate import Report

    held_out_split = cfg.rl.source is None and not cfg.data.eval_source
    report = Report(reported(run), cfg.data.decontaminate)
    room = cfg.model.max_seq_length - cfg.rl.max_completion_length
    dropped: Counter = Counter()
    kept: list[dict] = []
    for ex, overlaps in report.index.annotate(D.iter_examples(rows, fmt, mapping, checks, set(), "drop", source)):
        if ex.kind not in CLOSED:
            dropped["free text"] += 1
        elif held_out_split and D.in_eval_split(ex, cfg.data.eval_fraction, cfg.data.seed):
            dropped["eval split"] += 1
        elif why := report.verdict(ex, overlaps):  # a leak, or contaminated under data.decontaminate: drop
            dropped[why.split(":")[0]] += 1
        elif cfg.rl.max_items and len(kept) >= cfg.rl.max_items:
            dropped["over rl.max_items"] += 1
        else:
            prompt = build_prompt(ex, tokenizer, cfg.data.template, cfg.data.system_prompt)
            n = tokenize_example(prompt, "", tokenizer, cfg.data.template)["n_prompt_tokens"]
            if n > room:
                dropped["over-long"] += 1
                continue
            kept.append({**ex.to_dict(), "prompt": prompt, "opened": prompt.rstrip().endswith(THINK_OPEN),
                         "n_prompt_tokens": n})
    for reason, n in checks.dropped.items():  # unreadable rows, duplicates: as preprocess counts them
        dropped[reason] += n
    if not kept:
        raise ValueError(f"no closed-form items to reinforce on in {source} ({checks.read} rows read, dropped: "
                         f"{dict(dropped) or 'none'}): give rl.source a file or dataset of multiple-choice or yes/no "
                         "items, or remove the rl: section")
    path = items_path(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    found = report.result()
    found["warnings"] = [f"reinforce items: {w}" for w in found["warnings"]]
    return Items(kept, source, checks.read, dict(dropped), found)


def load(run: RunDir, source: str = "") -> Items:
    """The items a run's reinforce stage prepared (data/rl_items.jsonl)."""
    rows = [json.loads(line) for line in items_path(run).read_text().splitlines() if line]
    return Items(rows, source, len(rows))


def to_dataset(items: Items, template: str, system_prompt: str | None = None):
    """The GRPO training set: prompt (the chat messages, which TRL renders with the tokenizer's template exactly as
    build_prompt did; plain text for the plain template), answer, kind, options (JSON) and opened, which reach the
    reward functions."""
    import datasets

    def prompt(r: dict):
        return r["prompt"] if template == "plain" else messages_for(D.Example.from_dict(r), system_prompt)

    return datasets.Dataset.from_list([
        {"prompt": prompt(r), "answer": r["answer"], "kind": r["kind"], "options": options_json(r["options"]),
         "opened": r["opened"]} for r in items.rows])


def items_table(items: Items):
    """Read, kept and dropped (by reason), and the right answers' distribution."""
    import pandas as pd

    rows = [("source", items.source), ("rows read", items.read), ("kept: closed-form items", len(items.rows))]
    rows += [(f"dropped: {k}", v) for k, v in sorted(items.dropped.items())]
    rows += [("right answers", ", ".join(f"{k} {v}" for k, v in items.reference.items())),
             ("longest prompt (tokens)", items.longest_prompt)]
    rows += [("decontamination", ln) for ln in (items.decontamination or {}).get("lines", [])]
    return pd.DataFrame(rows, columns=["", "value"]).set_index("")
