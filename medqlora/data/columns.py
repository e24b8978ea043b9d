"""Which format a file is in and which column holds which field: learnt from the columns of every row read.

Column names are matched case-insensitively (`Question` and `question` are one column); data.columns maps yours.
"""
from __future__ import annotations

from typing import Iterable

from medqlora.config import CANONICAL_FIELDS, DataConfig
from medqlora.data.files import DataError

# Candidate column names per canonical field, in order of preference (matched case-insensitively).
ALIASES: dict[str, tuple[str, ...]] = {
    "id": ("id", "qid", "pubid", "question_id"),
    "question": ("question", "query", "prompt", "questions"),
    "answer": ("answer", "response", "answers", "final_answer"),
    "context": ("context", "contexts", "passage"),
    "options": ("options", "choices"),
    "answer_idx": ("answer_idx", "answer_letter", "label"),
    "reasoning": ("complex_cot", "cot", "chain_of_thought", "reasoning", "rationale", "thinking"),
    "messages": ("messages", "conversations", "conversation"),
    "instruction": ("instruction",),
    "input": ("input",),
    "output": ("output",),
    "long_answer": ("long_answer",),
    "final_decision": ("final_decision", "decision"),
    "category": ("specialty", "category", "subject_name", "qtype", "topic", "source"),
    "explanation": ("explanation", "exp"),
}

assert set(ALIASES) == set(CANONICAL_FIELDS), "data.columns accepts exactly the fields mapped here"

REQUIRED = {
    "qa": ("question", "answer"),
    "alpaca": ("instruction", "output"),
    "chat": ("messages",),
    "reasoning": ("question", "reasoning", "answer"),
    "mcq": ("question", "options", "answer"),
    "pubmedqa": ("question", "final_decision"),
}


class ColumnMap(dict):
    """Canonical field -> column, and for a field found by its aliases, the file's other columns named by them
    (`alternates`): a row without the mapped column reads the field from one of those (a file whose rows say
    `options` and others `choices`)."""
    alternates: dict[str, tuple[str, ...]] = {}


def map_columns(columns: Iterable[str], explicit: dict[str, str]) -> ColumnMap:
    """Canonical field -> actual column, from data.columns first, then the aliases."""
    cols = list(columns)
    lower = {c.lower(): c for c in cols}
    mapping = ColumnMap()
    for canon, col in explicit.items():
        if col not in cols:
            raise DataError(f"data.columns.{canon}: column {col!r} is not in the data; columns found: {cols}")
        mapping[canon] = col
    for canon, names in ALIASES.items():
        if canon in mapping:
            continue
        for n in names:
            if n in lower and lower[n] not in mapping.values():
                mapping[canon] = lower[n]
                break
    used = {c.lower() for c in mapping.values()}
    mapping.alternates = {canon: alt for canon, names in ALIASES.items() if canon in mapping and canon not in explicit
                          for alt in [tuple(lower[n] for n in names if n in lower and n not in used)] if alt}
    return mapping


def lookup(row: dict, m: dict[str, str]):
    """(get(field), has(field)) over a row whose column names may differ in case from the mapping's, or the problem
    when one name is there in two cases (which one is meant?). A field whose column the row lacks (or holds null
    in) is read from another column named by the field's aliases, if the row has one (ColumnMap.alternates)."""
    lower: dict[str, list[str]] = {}
    if len({str(k).lower() for k in row}) < len(row):  # rare: only then can a mapped name be there twice
        for k in row:
            lower.setdefault(str(k).lower(), []).append(k)
        for col in m.values():
            if len(lower.get(col.lower(), ())) > 1:
                return None, f"ambiguous columns: {' and '.join(map(repr, lower[col.lower()]))} are both in the " \
                             "row (column names are read case-insensitively); keep one"

    def column(col):
        if col in row:
            return col
        if not lower:
            for k in row:
                lower.setdefault(str(k).lower(), []).append(k)
        same = lower.get(col.lower())
        return same[0] if same else None

    def key(f):
        col = m.get(f)
        found = column(col) if col is not None else None
        if found is not None and row[found] is not None and row[found] == row[found]:  # not null, not NaN
            return found
        alt = (column(a) for a in getattr(m, "alternates", {}).get(f, ()))
        return next((a for a in alt if a is not None and row[a] is not None and row[a] == row[a]), found)

    def get(f):
        k = key(f)
        return None if k is None else row[k]

    def has(f):
        return key(f) is not None
    return (get, has), None


def detect_format(columns: Iterable[str], explicit: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    cols = list(columns)
    m = map_columns(cols, explicit or {})
    if "messages" in m:
        fmt = "chat"
    elif "final_decision" in m and "question" in m:
        fmt = "pubmedqa"
    elif "options" in m and "question" in m and ("answer" in m or "answer_idx" in m):
        fmt = "mcq"
    elif "reasoning" in m and "question" in m and "answer" in m:
        fmt = "reasoning"
    elif "instruction" in m and "output" in m:
        fmt = "alpaca"
    elif "question" in m and "answer" in m:
        fmt = "qa"
    else:
        raise DataError(
            f"cannot tell the data format from the columns {cols}. Supported: question/answer; "
            "instruction/input/output; messages or conversations; question/Complex_CoT/Response; "
            "question/options/answer; question/context/long_answer/final_decision. Map yours with "
            "data.columns (e.g. --set data.columns.question=Q --set data.columns.answer=A) or set data.format.")
    return fmt, m


def check_format(fmt: str, columns: Iterable[str], explicit: dict[str, str]) -> dict[str, str]:
    cols = list(columns)
    m = map_columns(cols, explicit)
    if fmt == "mcq" and "answer" not in m and "answer_idx" in m:
        m["answer"] = m["answer_idx"]
    missing = [f for f in REQUIRED[fmt] if f not in m]
    if missing:
        raise DataError(f"data.format={fmt} needs the field(s) {missing}, but the columns found are {cols}; "
                        f"map them with data.columns (e.g. --set data.columns.{missing[0]}=<column>)")
    return m


def resolve_format(columns: Iterable[str], cfg: DataConfig) -> tuple[str, dict[str, str]]:
    """data.format (or the detected one) and the column mapping it uses."""
    if cfg.format == "auto":
        return detect_format(columns, cfg.columns)
    return cfg.format, check_format(cfg.format, columns, cfg.columns)


FAMILY = {"qa": "qa", "mcq": "qa", "reasoning": "qa", "alpaca": "alpaca", "chat": "chat", "pubmedqa": "pubmedqa"}


def row_format(keys: Iterable[str]) -> str | None:
    """The format one record's own columns say, or None (a record of a qa/mcq/reasoning file may lack fields)."""
    try:
        return detect_format(keys)[0]
    except DataError:
        return None
