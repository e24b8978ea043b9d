"""Loading medical QA data in its common shapes and normalizing every row to one Example.

Formats (detected from the columns, or set with data.format and data.columns):
  qa        question, answer                         (MedQuAD-style free text)
  alpaca    instruction, input, output               (medalpaca, ChatDoctor)
  chat      messages | conversations, role/content or from/value
  reasoning question, chain of thought, response     (medical-o1-reasoning-SFT: Question, Complex_CoT, Response)
  mcq       question, options (dict or list), answer (letter or option text; answer_idx preferred)
  pubmedqa  question, context, long_answer, final_decision (yes/no/maybe)
A qa/mcq file may mix rows: a row with options is multiple choice, one without is free text.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from .config import DataConfig, is_local_path

LETTERS = "ABCDEFGHIJ"
DECISIONS = ("yes", "no", "maybe")


class DataError(ValueError):
    """The data cannot be used as configured; the message says what to change."""


@dataclass
class Example:
    id: str
    kind: str  # freetext | choice | yesno
    question: str
    answer: str  # reference text; the letter for choice; yes/no/maybe for yesno
    context: str | None = None
    options: dict[str, str] | None = None
    explanation: str | None = None  # long answer (PubMedQA) or rationale (MCQ), trained after the answer
    reasoning: str | None = None  # chain of thought, used by the reasoning template
    category: str | None = None
    messages: list[dict] | None = None  # chat rows: the turns before the final assistant answer

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Example":
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


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


# ---------------------------------------------------------------- loading


def _builder_for(path: str) -> str:
    p = path.lower().removesuffix(".gz")
    if p.endswith((".jsonl", ".json")):
        return "json"
    if p.endswith(".csv"):
        return "csv"
    if p.endswith(".parquet"):
        return "parquet"
    raise DataError(f"unsupported file type: {path}; use .jsonl, .json, .csv or .parquet")


def open_rows(source: str, cfg: DataConfig, split: str) -> tuple[Iterable[dict], list[str]]:
    """Rows of a local file, fsspec URL or hub dataset, and its column names; streamed when cfg.streaming."""
    import datasets

    datasets.disable_progress_bars()
    try:
        if is_local_path(source) or "://" in source:
            if is_local_path(source) and not Path(source).exists():
                raise DataError(f"data file not found: {source}")
            ds = datasets.load_dataset(_builder_for(source), data_files=source, split="train",
                                       streaming=cfg.streaming)
        else:
            ds = datasets.load_dataset(source, cfg.config_name, split=split, streaming=cfg.streaming)
    except DataError:
        raise
    except FileNotFoundError as e:
        raise DataError(f"could not open {source}: {e}") from e
    except Exception as e:  # hub unreachable, bad split/config, unparseable file
        raise DataError(f"could not load {source!r} (config {cfg.config_name!r}, split {split!r}): "
                        f"{type(e).__name__}: {e}. Offline? Give a local file as data.source.") from e
    columns = list(ds.column_names or [])
    if not columns and cfg.streaming:  # some streamed sources only know their columns after the first row
        first = next(iter(ds), None)
        columns = list(first or {})
    if cfg.max_samples:
        ds = ds.take(cfg.max_samples) if cfg.streaming else ds.select(range(min(cfg.max_samples, len(ds))))
    return ds, columns


# ---------------------------------------------------------------- normalization


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v != v:  # NaN from CSV
        return ""
    if isinstance(v, (list, tuple)):
        return "\n".join(_text(x) for x in v if _text(x))
    if isinstance(v, dict) and "contexts" in v:  # PubMedQA on the hub
        return _text(v["contexts"])
    return str(v).strip()


def _options(v: Any) -> dict[str, str] | None:
    if v is None or v == "" or v == {} or v == []:
        return None
    if isinstance(v, str):
        try:
            v = json.loads(v)
        except json.JSONDecodeError:
            return None
    if isinstance(v, dict):
        items = {str(k).strip().upper().rstrip(".)"): _text(t) for k, t in v.items() if _text(t)}
        return items or None
    if isinstance(v, (list, tuple)):
        if v and isinstance(v[0], dict) and "key" in v[0]:  # [{"key": "A", "value": "..."}]
            return {str(o["key"]).upper(): _text(o.get("value")) for o in v}
        return {LETTERS[i]: _text(t) for i, t in enumerate(v) if i < len(LETTERS)}
    return None


def _choice_letter(answer: Any, options: dict[str, str]) -> str | None:
    if isinstance(answer, int) and not isinstance(answer, bool):
        letters = list(options)
        return letters[answer] if 0 <= answer < len(letters) else None
    a = _text(answer)
    m = re.fullmatch(r"\(?([A-Ja-j])[.):]?", a)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    matches = [k for k, t in options.items() if t.lower() == a.lower()]
    return matches[0] if len(matches) == 1 else None


ROLE = {"user": "user", "human": "user", "system": "system", "assistant": "assistant", "gpt": "assistant",
        "model": "assistant", "bot": "assistant"}


def normalize(row: dict, fmt: str, m: dict[str, str], index: int) -> tuple[Example | None, str | None]:
    """One raw row -> (Example, None) or (None, reason it is dropped)."""
    get = lambda f: row.get(m[f]) if f in m else None  # noqa: E731
    rid = _text(get("id")) or f"row-{index}"
    category = _text(get("category")) or None
    if fmt == "chat":
        turns = get("messages")
        if not isinstance(turns, list) or not turns:
            return None, "malformed: messages is not a non-empty list"
        msgs = []
        for t in turns:
            if not isinstance(t, dict):
                return None, "malformed: a message is not a mapping"
            role = ROLE.get(_text(t.get("role", t.get("from"))).lower())
            content = _text(t.get("content", t.get("value")))
            if role is None:
                return None, f"malformed: unknown role {t.get('role', t.get('from'))!r}"
            msgs.append({"role": role, "content": content})
        last = max((i for i, t in enumerate(msgs) if t["role"] == "assistant"), default=None)
        if last is None or not any(t["role"] == "user" for t in msgs[:last]):
            return None, "malformed: no user turn followed by an assistant answer"
        question = next(t["content"] for t in reversed(msgs[:last]) if t["role"] == "user")
        answer = msgs[last]["content"]
        if not question:
            return None, "empty question"
        if not answer:
            return None, "empty answer"
        return Example(rid, "freetext", question, answer, category=category, messages=msgs[:last]), None

    if fmt == "alpaca":
        instr, inp = _text(get("instruction")), _text(get("input"))
        question = f"{instr}\n\n{inp}" if instr and inp else (instr or inp)
        answer = _text(get("output"))
    else:
        question = _text(get("question"))
        answer = get("answer")
    if not question:
        return None, "empty question"

    if fmt == "pubmedqa":
        decision = _text(get("final_decision")).lower()
        if decision not in DECISIONS:
            return None, f"malformed: final_decision {decision!r} is not yes/no/maybe"
        return Example(rid, "yesno", question, decision, context=_text(get("context")) or None,
                       explanation=_text(get("long_answer")) or None, category=category), None

    options = _options(get("options")) if fmt in ("mcq", "qa") else None
    if options:
        if len(options) < 2:
            return None, "malformed: fewer than two options"
        letter = _choice_letter(get("answer_idx"), options) if "answer_idx" in m else None
        letter = letter or _choice_letter(answer, options)
        if letter is None:
            return None, f"malformed: answer {_text(answer)!r} is not one of the options {list(options)}"
        return Example(rid, "choice", question, letter, options=options,
                       explanation=_text(get("explanation")) or None, category=category), None
    if fmt == "mcq" and "options" in m and not _text(answer):
        return None, "empty answer"

    answer = _text(answer)
    if not answer:
        return None, "empty answer"
    reasoning = _text(get("reasoning")) or None if fmt == "reasoning" else None
    return Example(rid, "freetext", question, answer, reasoning=reasoning,
                   context=_text(get("context")) or None if fmt != "alpaca" else None, category=category), None


def question_key(ex: Example) -> str:
    """Whitespace- and case-folded question: the unit of dedup and of the train/eval split."""
    q = " ".join(ex.question.lower().split())
    if ex.messages and len(ex.messages) > 1:
        q = " ".join(" ".join(t["content"].lower().split()) for t in ex.messages)
    return q


def row_key(ex: Example) -> str:
    return hashlib.sha1(f"{question_key(ex)}\x00{' '.join(ex.answer.lower().split())}".encode()).hexdigest()


def in_eval_split(ex: Example, fraction: float, seed: int) -> bool:
    """Deterministic split by a hash of the question: stable across reruns and row order, streaming-safe,
    and a question asked twice lands on one side only."""
    h = hashlib.sha256(f"{seed}:{question_key(ex)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


@dataclass
class Checks:
    """What validation saw: counts per reason and a few dropped rows to show."""
    read: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # split -> count
    kinds: dict[str, int] = field(default_factory=dict)  # "train/choice" -> count
    dropped: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list] = field(default_factory=dict)

    def drop(self, reason: str, row: Any) -> None:
        key = reason.split(":")[0]
        self.dropped[key] = self.dropped.get(key, 0) + 1
        keep = self.samples.setdefault(key, [])
        if len(keep) < 3:
            keep.append({"reason": reason, "row": _short(row)})

    def keep(self, split: str, kind: str) -> None:
        self.kept[split] = self.kept.get(split, 0) + 1
        self.kinds[f"{split}/{kind}"] = self.kinds.get(f"{split}/{kind}", 0) + 1


def _short(row: Any, n: int = 160) -> str:
    s = json.dumps(row, default=str, ensure_ascii=False) if not isinstance(row, str) else row
    return s if len(s) <= n else s[: n - 3] + "..."


def iter_examples(rows: Iterable[dict], fmt: str, m: dict[str, str], checks: Checks,
                  seen: set[str]) -> Iterator[Example]:
    """Normalized, de-duplicated examples; every dropped row is counted in checks."""
    for i, row in enumerate(rows):
        checks.read += 1
        ex, problem = normalize(row, fmt, m, i)
        if problem:
            checks.drop(problem, row)
            continue
        k = row_key(ex)
        if k in seen:
            checks.drop("duplicate: same question and answer as an earlier row", row)
            continue
        seen.add(k)
        yield ex
