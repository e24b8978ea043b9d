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
from typing import Any, Iterable, Iterator

from medqlora.config import CANONICAL_FIELDS, DataConfig
from medqlora.data.sources import DataError, Row, open_rows, structured  # noqa: F401  (open_rows: the loader, re-exported)

LETTERS = "ABCDEFGHIJ"
DECISIONS = ("yes", "no", "maybe")


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
    instruction: str | None = None  # alpaca: the task wording, asked before the question (input)

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


# ---------------------------------------------------------------- normalization


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v != v:  # NaN from CSV
        return ""
    if isinstance(v, dict) and "contexts" in v:  # PubMedQA on the hub
        return _text(v["contexts"])
    if isinstance(v, dict) and "text" in v:  # SQuAD-style {'text': ['ACE2'], 'answer_start': [21]}
        texts = v["text"] if isinstance(v["text"], (list, tuple)) else [v["text"]]
        return _text(texts[0]) if texts else ""
    if isinstance(v, (list, tuple)):
        return "\n".join(_text(x) for x in v if _text(x))
    return str(v).strip()


_OPTION_LINE = re.compile(r"^\s*\(?([A-Ja-j])\s*[.):]\s*(.+?)\s*$")


def _options(v: Any) -> tuple[dict[str, str] | None, str | None]:
    """(letter -> text, None), (None, None) when there are no options, or (None, why they cannot be read).

    Accepts a dict of letters, a list, [{key, value}], JSON or a Python literal of those as text (pandas
    writes dicts into CSV that way), and a text block of lines 'A. text' / '(B) text'."""
    if v is None or (isinstance(v, float) and v != v) or v in ("", {}, []):
        return None, None
    if isinstance(v, str):
        text = v.strip()
        if not text:
            return None, None
        parsed = None
        if text[0] in "{[":
            parsed = structured(text)
        if parsed is None:
            lines = [_OPTION_LINE.match(x) for x in text.splitlines() if x.strip()]
            if lines and all(lines):
                parsed = {m.group(1).upper(): m.group(2) for m in lines}
        if parsed is None:
            return None, f"options unreadable: {text[:60]!r} is neither JSON, a Python literal, nor lines like 'A. text'"
        v = parsed
    if isinstance(v, dict):
        items = {str(k).strip().upper().rstrip(".)"): _text(t) for k, t in v.items() if _text(t)}
    elif isinstance(v, (list, tuple)):
        if v and isinstance(v[0], dict) and "key" in v[0]:  # [{"key": "A", "value": "..."}]
            items = {str(o.get("key")).upper(): _text(o.get("value")) for o in v if isinstance(o, dict)}
        else:
            items = {LETTERS[i]: _text(t) for i, t in enumerate(v) if i < len(LETTERS)}
        items = {k: t for k, t in items.items() if t}
    else:
        return None, f"options unreadable: a {type(v).__name__}, not a list or mapping of options"
    if not items:
        return None, "options unreadable: every option is empty"
    return items, None


def _choice_letter(answer: Any, options: dict[str, str]) -> str | None:
    """The option an answer names: an index, the option's full text, or its letter (in that order, so that
    an answer 'D' among options ['A', 'C', 'D', 'K'] is the option reading 'D', not the fourth)."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        letters = list(options)
        return letters[answer] if 0 <= answer < len(letters) else None
    a = _text(answer)
    matches = [k for k, t in options.items() if t.lower() == a.lower()]
    if len(matches) == 1:
        return matches[0]
    m = re.fullmatch(r"\(?([A-Ja-j])[.):]?", a)
    if m and m.group(1).upper() in options:
        return m.group(1).upper()
    return None


def _not_an_option(answer: Any, options: dict[str, str]) -> str:
    letters = list(options)
    span = f"{letters[0]}-{letters[-1]}" if letters == list(LETTERS[:len(letters)]) else ",".join(letters)
    return f"answer not an option: answer {_text(answer)[:40]!r} is neither a letter among options {span} nor " \
           "one option's text"


ROLE = {"user": "user", "human": "user", "system": "system", "assistant": "assistant", "gpt": "assistant",
        "model": "assistant", "bot": "assistant"}


def normalize(row: dict, fmt: str, m: dict[str, str], index: int) -> tuple[Example | None, str | None]:
    """One raw row -> (Example, None) or (None, reason it is dropped). A reason reads 'kind: detail'."""
    get = lambda f: row.get(m[f]) if f in m else None  # noqa: E731
    rid = _text(get("id")) or f"row-{index}"
    category = _text(get("category")) or None
    if fmt == "chat":
        turns = get("messages")
        if isinstance(turns, str):  # a CSV cell or a double-encoded JSON field
            turns = structured(turns)
        if not isinstance(turns, list) or not turns:
            return None, "malformed chat: messages is not a non-empty list"
        msgs = []
        for t in turns:
            if not isinstance(t, dict):
                return None, "malformed chat: a message is not a mapping"
            role = ROLE.get(_text(t.get("role", t.get("from"))).lower())
            content = _text(t.get("content", t.get("value")))
            if role is None:
                return None, f"malformed chat: unknown role {t.get('role', t.get('from'))!r}"
            msgs.append({"role": role, "content": content})
        last = max((i for i, t in enumerate(msgs) if t["role"] == "assistant"), default=None)
        if last is None or not any(t["role"] == "user" for t in msgs[:last]):
            return None, "malformed chat: no user turn followed by an assistant answer"
        question = next(t["content"] for t in reversed(msgs[:last]) if t["role"] == "user")
        answer = msgs[last]["content"]
        if not question:
            return None, "empty question"
        if not answer:
            return None, "empty answer"
        return Example(rid, "freetext", question, answer, category=category, messages=msgs[:last]), None

    for f in ("question", "instruction", "input"):
        if f in m and _wrong_type(get(f), text_only=True):
            return None, f"wrong type: {f} ({m[f]}) is a {type(get(f)).__name__}, not text"
    for f in ("answer", "output"):
        if f in m and _wrong_type(get(f), text_only=False):
            return None, f"wrong type: {f} ({m[f]}) is a {type(get(f)).__name__}, not text"
    instruction = None
    if fmt == "alpaca":
        instr, inp = _text(get("instruction")), _text(get("input"))
        question, instruction = (inp, instr) if instr and inp else (instr or inp, None)
        answer = _text(get("output"))
    else:
        question = _text(get("question"))
        answer = get("answer")
    if not question:
        return None, "empty question"
    reasoning = _text(get("reasoning")) or None  # kept for every format: the reasoning template trains it

    if fmt == "pubmedqa":
        decision = _text(get("final_decision")).lower()
        if decision not in DECISIONS:
            return None, f"malformed decision: final_decision {decision[:20]!r} is not yes/no/maybe"
        return Example(rid, "yesno", question, decision, context=_text(get("context")) or None,
                       explanation=_text(get("long_answer")) or _text(get("explanation")) or None,
                       reasoning=reasoning, category=category), None

    options, problem = _options(get("options")) if fmt in ("mcq", "qa", "reasoning") else (None, None)
    if problem:
        return None, problem
    if options:
        if len(options) < 2:
            return None, "too few options: fewer than two non-empty options"
        letter = _choice_letter(get("answer_idx"), options) if "answer_idx" in m and _text(get("answer_idx")) else None
        given = get("answer") if _text(get("answer")) else get("answer_idx")
        letter = letter or _choice_letter(given, options)
        if letter is None:
            return None, ("empty answer" if not _text(given) else _not_an_option(given, options))
        return Example(rid, "choice", question, letter, options=options, reasoning=reasoning,
                       explanation=_text(get("explanation")) or None, category=category), None
    # A row without options in a multiple-choice file is a free-text item (a qa/mcq file may mix them), unless
    # its answer is a bare letter: then it names an option the row does not have.
    if "options" in m and re.fullmatch(r"\(?[A-Ja-j][.):]?", _text(answer)):
        return None, f"missing options: answer {_text(answer)!r} names an option, but the row has no options"
    answer = _text(answer)
    if not answer:
        return None, "empty answer"
    return Example(rid, "freetext", question, answer, reasoning=reasoning, instruction=instruction,
                   context=_text(get("context")) or None if fmt != "alpaca" else None, category=category), None


def _wrong_type(v: Any, text_only: bool) -> bool:
    """A field that cannot be read as text: a bool or a mapping anywhere; a number where a question belongs."""
    if isinstance(v, bool) or (isinstance(v, dict) and not ({"text", "contexts"} & set(v))):
        return True
    if isinstance(v, (list, tuple)):
        return any(isinstance(x, (dict, list, tuple, bool)) for x in v)
    return text_only and isinstance(v, (int, float)) and v == v  # NaN is an empty CSV cell


def _fold(text: str) -> str:
    return " ".join(text.lower().split())


def question_key(ex: Example) -> str:
    """What the user asks, case- and whitespace-folded: the unit of dedup, of the train/eval split and of the
    leak check. Built from user turns only (never a system prompt or an alpaca instruction), so the same
    question matches across formats and system prompts."""
    if ex.messages:
        users = [t["content"] for t in ex.messages if t["role"] == "user"]
        return _fold(" ".join(users))
    return _fold(ex.question)


def row_key(ex: Example) -> str:
    """Same question and same answer. For multiple choice: the same stem, the same set of options and the same
    correct option's text, whatever the order of the options."""
    answer = ex.options[ex.answer] if ex.kind == "choice" else ex.answer
    options = "\x01".join(sorted(_fold(t) for t in ex.options.values())) if ex.options else ""
    return hashlib.sha1(f"{question_key(ex)}\x00{options}\x00{_fold(answer)}".encode()).hexdigest()


def in_eval_split(ex: Example, fraction: float, seed: int) -> bool:
    """Deterministic split by a hash of the question: stable across reruns and row order, streaming-safe,
    and a question asked twice lands on one side only."""
    h = hashlib.sha256(f"{seed}:{question_key(ex)}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < fraction


@dataclass
class Checks:
    """What validation saw: counts per reason and a few dropped rows to show. Every row read is either
    kept or dropped with a reason: read == sum(kept) + sum(dropped)."""
    read: int = 0
    kept: dict[str, int] = field(default_factory=dict)  # split -> count
    kinds: dict[str, int] = field(default_factory=dict)  # "train/choice" -> count
    dropped: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list] = field(default_factory=dict)

    def drop(self, reason: str, row: Any, line: int | None = None) -> None:
        key = reason.split(":")[0]
        self.dropped[key] = self.dropped.get(key, 0) + 1
        keep = self.samples.setdefault(key, [])
        if len(keep) < 3:
            keep.append({"reason": reason, "line": line, "row": _short(row)})

    def keep(self, split: str, kind: str) -> None:
        self.kept[split] = self.kept.get(split, 0) + 1
        self.kinds[f"{split}/{kind}"] = self.kinds.get(f"{split}/{kind}", 0) + 1

    def balanced(self) -> bool:
        return self.read == sum(self.kept.values()) + sum(self.dropped.values())


def _short(row: Any, n: int = 160) -> str:
    s = json.dumps(row, default=str, ensure_ascii=False) if not isinstance(row, str) else row
    return s if len(s) <= n else s[: n - 3] + "..."


def iter_examples(rows: Iterable[Row | dict], fmt: str, m: dict[str, str], checks: Checks, seen: set[str],
                  on_bad_rows: str = "drop", source: str = "") -> Iterator[Example]:
    """Normalized, de-duplicated examples; every row read is counted, every dropped row with its reason."""
    for i, item in enumerate(rows):
        row = item if isinstance(item, Row) else Row(None, item)
        checks.read += 1
        if row.data is None:
            problem = f"unreadable: {row.problem}"
        else:
            ex, problem = normalize(row.data, fmt, m, i)
            if problem and row.line is not None:
                key, _, detail = problem.partition(": ")
                problem = f"{key}: line {row.line}" + (f": {detail}" if detail else "")
        if problem:
            if on_bad_rows == "fail":
                raise DataError(f"{source or 'data'}: {problem} (data.on_bad_rows is fail; fix the row, or set "
                                "data.on_bad_rows: drop to count and skip such rows)")
            checks.drop(problem, row.data if row.data is not None else row.raw, row.line)
            continue
        k = row_key(ex)
        if k in seen:
            checks.drop("duplicate: same question and answer as an earlier row", row.data, row.line)
            continue
        seen.add(k)
        yield ex
