"""The check at the door: data.source, data.eval_source and every eval set read before any notebook runs, so that a
file that cannot be used is refused with the file, the line and the fix instead of failing the preprocess stage."""
from __future__ import annotations

from itertools import islice

from medqlora.config import DataConfig
from medqlora.data import formats as D
from medqlora.data.sources import PEEK_ROWS, DataError, _open, kind_of, open_rows


def preflight(cfg: DataConfig, eval_sets=()) -> list[str]:
    """Problems with data.source and data.eval_source found by reading their first rows: an empty or
    unreadable file, a file that is not what its suffix says, columns that match no format, or first
    rows none of which can be used. Hub names are not fetched here: the preprocess stage loads them."""
    problems = []
    for key, source, c in [("data.source", cfg.source, cfg), ("data.eval_source", cfg.eval_source, cfg),
                           *((f"eval.sets ({es.name})", es.source, set_config(cfg, es)) for es in eval_sets)]:
        if not source or kind_of_safe(source) == "hub":
            continue
        try:
            problems += _preflight_one(key, source, c)
        except DataError as e:
            problems.append(f"{key}: {e}")
    return problems


def set_config(cfg: DataConfig, es) -> DataConfig:
    """A benchmark set read with the data settings, its own source, format and columns."""
    return cfg.model_copy(update={"source": es.source, "config_name": es.config_name, "split": es.split,
                                  "format": es.format, "columns": es.columns, "max_samples": es.max_items,
                                  "streaming": False, "eval_source": None})


def kind_of_safe(source: str) -> str | None:
    try:
        return kind_of(source)
    except DataError:
        return None


def _binary(start: bytes) -> bool:
    """NUL bytes, or mostly bytes that no text encoding would use, in the first KiBs of a file."""
    if b"\x00" in start:
        return True
    try:
        start.decode("utf-8")
        return False
    except UnicodeDecodeError as e:
        if e.start > len(start) - 4:  # a character cut at the end of the sample
            return False
    odd = sum(1 for b in start if b < 9 or 13 < b < 32 or b == 127)
    return odd / len(start) > 0.05


def _preflight_one(key: str, source: str, cfg: DataConfig) -> list[str]:
    kind = kind_of(source)
    with _open(source) as f:
        start = f.read(4096)
    if not start.strip():
        return [f"{key}: {source} is empty (no rows); give a file with data in it"]
    if kind in ("jsonl", "json", "csv") and _binary(start):
        return [f"{key}: {source} looks like a binary file (its first bytes are not text), not {kind.upper()}; "
                "check that this is the file you meant"]
    head_rows, columns = open_rows(source, cfg.model_copy(update={"max_samples": None}), "train")
    head = list(islice(head_rows, PEEK_ROWS))
    good = [r for r in head if r.data is not None]
    if not head:
        return [f"{key}: {source} has no rows"]
    if not good:
        json_problem = "JSON" in (head[0].problem or "")
        hint = {"jsonl": "Each line must be one JSON object ({\"question\": ..., \"answer\": ...})."
                + (" This looks like CSV: name it .csv." if b"," in start and not start.lstrip().startswith(b"{")
                   else "")
                + (" This is one JSON array: name it .json." if start.lstrip().startswith(b"[") else ""),
                "csv": "Check the delimiter and the header line."}.get(kind, "") if json_problem or kind == "csv" else ""
        return [f"{key}: no readable row in the first {len(head)} of {source}: {head[0].problem}. {hint}".strip()]
    if cfg.on_bad_rows == "fail":
        bad = next((r for r in head if r.data is None), None)
        if bad:
            return [f"{key}: {source}, {bad.problem} (data.on_bad_rows is fail; set it to drop to skip such rows)"]
    try:
        fmt, mapping = D.resolve_format(columns, cfg)
    except DataError as e:
        return [f"{key}: {source}: {e}"]
    counts: dict[str, int] = {}
    first = None
    for r in head:
        why = r.problem if r.data is None else D.normalize(r.data, fmt, mapping, 0)[1]
        if why:
            counts[why.split(":")[0]] = counts.get(why.split(":")[0], 0) + 1
            first = first or (why if r.data is None or r.line is None else f"line {r.line}: {why}")
    bad = sum(counts.values())
    if bad == 0 or bad / len(head) <= cfg.max_drop_fraction:
        return []
    listed = ", ".join(f"{k} {v}" for k, v in counts.items())
    return [f"{key}: {bad} of the first {len(head)} rows of {source} cannot be used as {fmt} data ({listed}; more "
            f"than data.max_drop_fraction {cfg.max_drop_fraction:.0%}); the first: {first}. "
            + ("Map the right columns with data.columns or set data.format" if bad == len(head) else
               "Fix those rows, or raise data.max_drop_fraction to train on the rest")]
