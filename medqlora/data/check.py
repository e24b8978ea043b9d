"""The check at the door: data.source, data.eval_source and every eval set read before any notebook runs, so that a
file that cannot be used is refused with the file, the line and the fix instead of failing the preprocess stage."""
from __future__ import annotations

import json
from itertools import islice

from medqlora.config import DataConfig
from medqlora.config.tasks import TASKS
from medqlora.data import formats as D
from medqlora.data.benchmarks import CANONICAL, set_config, task_rows
from medqlora.data.sources import DataError, head_bytes, kind_of, open_rows


def preflight(cfg: DataConfig, eval_sets=()) -> list[str]:
    """Problems with data.source, data.eval_source and the eval sets found by reading every row the stage will: an
    empty or unreadable file, a file that is not what its suffix says, a reader error (a cut stream, an unbalanced
    quote), columns that match no format, or more unusable rows than data.max_drop_fraction. Hub names are not
    fetched here: the preprocess stage loads them."""
    problems = []
    sources = [("data.source", cfg.source, cfg, None), ("data.eval_source", cfg.eval_source, cfg, None),
               *((f"eval.sets ({es.name})", es.source, set_config(cfg, es), TASKS.get(es.task)) for es in eval_sets)]
    for key, source, c, task in sources:
        if not source or kind_of_safe(source) == "hub":
            continue
        try:
            problems += _preflight_one(key, source, c, task)
        except DataError as e:
            problems.append(f"{key}: {e}")
    return problems


def kind_of_safe(source: str) -> str | None:
    try:
        return kind_of(source)
    except DataError:
        return None


def _one_json_string(start: bytes) -> bool:
    """Whether the first line is one JSON string (a line of text in quotes), not CSV fields."""
    try:
        return isinstance(json.loads(start.lstrip().split(b"\n")[0]), str)
    except ValueError:
        return False


def _preflight_one(key: str, source: str, cfg: DataConfig, task=None) -> list[str]:
    """Every row the stage will read (data.max_samples of them), read and normalized as the stage will (an lm-eval
    task's set: its hub rows as the task reads them)."""
    kind = kind_of(source)
    rows, columns = open_rows(source, cfg, "train")
    if task and columns:
        rows, columns = task_rows(task, rows, columns, source, {}), CANONICAL
    if not columns:
        seen = list(islice(rows, 200))
        if not seen:
            empty = kind != "parquet" and not head_bytes(source).strip()
            return [f"{key}: {source} is empty (no rows); give a file with data in it" if empty else
                    f"{key}: {source} has no rows" + (" (only a header)" if kind in ("csv", "tsv") else "")
                    + "; give a file with data in it"]
        problem = next((r.problem for r in seen if r.data is None), None)
        if problem is None:  # every row was read, and none has a column: {} records
            return [f"{key}: every record in {source} is empty ({{}}): no record has a column; each "
                    "record needs the fields of one example, e.g. {\"question\": ..., \"answer\": ...}"]
        start = head_bytes(source) if kind != "parquet" else b""
        hint = {"jsonl": "Each line must be one JSON object ({\"question\": ..., \"answer\": ...})."
                + (" This looks like CSV: name it .csv." if b"," in start and not start.lstrip().startswith(b"{")
                   and not _one_json_string(start) else "")
                + (" This is one JSON array: name it .json." if start.lstrip().startswith(b"[") else ""),
                "csv": "Check the delimiter and the header line."}.get(kind, "")
        return [f"{key}: no readable row in {source} ({len(seen)} read): {problem}. {hint}".strip()]
    try:
        fmt, mapping = D.resolve_format(columns, cfg)
    except DataError as e:
        return [f"{key}: {source}: {e}"]
    counts: dict[str, int] = {}
    first, n = None, 0
    for r in rows:
        n += 1
        if r.data is None and cfg.on_bad_rows == "fail":
            return [f"{key}: {source}, {r.problem} (data.on_bad_rows is fail; set it to drop to skip such rows)"]
        why = r.problem if r.data is None else D.normalize(r.data, fmt, mapping, 0)[1]
        if why:
            counts[why.split(":")[0]] = counts.get(why.split(":")[0], 0) + 1
            first = first or (why if r.data is None or r.line is None else f"line {r.line}: {why}")
    bad = sum(counts.values())
    if bad == 0 or bad / n <= cfg.max_drop_fraction:
        return []
    listed = ", ".join(f"{k} {v}" for k, v in counts.items())
    read_as = ", ".join(f"{f}={c}" for f, c in mapping.items())
    if bad < n:
        fix = "Fix those rows, or raise data.max_drop_fraction to train on the rest"
    elif set(counts) & COLUMN_REASONS:  # what a wrong column (or format) gives
        fix = f"Map the right columns with data.columns or set data.format (the columns are read as {read_as})"
    else:  # the columns hold what they should; the values are wrong
        fix = f"The columns are read as {read_as}; if those are right, fix the rows' values"
    return [f"{key}: {bad} of the {n} rows of {source} cannot be used as {fmt} data ({listed}; more than "
            f"data.max_drop_fraction {cfg.max_drop_fraction:.0%}); the first: {first}. {fix}"]


# Reasons a row is dropped for when a column is missing, mis-mapped or of another format.
COLUMN_REASONS = {"empty question", "empty answer", "other format", "wrong type", "missing options", "malformed chat",
                  "unreadable"}
