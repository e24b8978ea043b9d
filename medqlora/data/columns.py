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


def map_columns(columns: Iterable[str], explicit: dict[str, str]) -> dict[str, str]:
    """Canonical field -> actual column, from data.columns first, then the aliases."""
    cols = list(columns)
    lower = {c.lower(): c for c in cols}
    mapping = {}
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
    return mapping


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
