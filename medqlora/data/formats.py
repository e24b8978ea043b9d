"""Loading medical QA data in its common shapes and normalizing every row to one Example.

Formats (detected from the columns of every row read, or set with data.format and data.columns):
  qa        question, answer                         (MedQuAD-style free text)
  alpaca    instruction, input, output               (medalpaca, ChatDoctor)
  chat      messages | conversations, role/content or from/value
  reasoning question, chain of thought, response     (medical-o1-reasoning-SFT: Question, Complex_CoT, Response)
  mcq       question, options (dict or list), answer (letter, option key or option text; answer_idx preferred)
  pubmedqa  question, context, long_answer, final_decision (yes/no/maybe)
A qa/mcq file may mix rows: a row with options is multiple choice, one without is free text. A row in another
format (an alpaca row in a qa file) is dropped as 'other format'. An answer given as a list of alternatives trains
its first item (counted in the checks' notes); in a multiple-choice row it is dropped as 'several answers'. Column
detection lives in columns.py, reading values as text and options in normalize.py; this module turns a row into an
Example and keeps the accounting.
"""
from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

from medqlora.data.columns import (  # noqa: F401
    ALIASES,
    FAMILY,
    REQUIRED,
    check_format,
    detect_format,
    lookup,
    map_columns,
    resolve_format,
    row_format,
)
from medqlora.data.normalize import (  # noqa: F401
    CONTROL_TOKENS,
    DECISIONS,
    LETTERS,
    ROLE,
    Example,
    NotText,
    _not_an_option,
    choice_letter,
    options,
    text,
)
from medqlora.data.jsonrows import DOUBLE_ENCODED
from medqlora.data.sources import DataError, Row, open_rows, structured  # noqa: F401  (the loader, re-exported)


def _markup(ex: Example) -> str | None:
    fields = [("question", ex.question), ("answer", ex.answer), ("context", ex.context),
              ("explanation", ex.explanation), ("reasoning", ex.reasoning), ("instruction", ex.instruction),
              *((f"option {k}", v) for k, v in (ex.options or {}).items()),
              *((f"{t['role']} turn", t["content"]) for t in ex.messages or [])]
    blob = "\x00".join(v for _, v in fields if v)
    try:
        blob.encode("utf-8")
        if not (("<" in blob or "[" in blob) and CONTROL_TOKENS.search(blob)):
            return None
    except UnicodeEncodeError:
        pass
    for name, value in fields:  # one of them is the problem: which
        try:
            (value or "").encode("utf-8")
        except UnicodeEncodeError:  # readers refuse these; a hub or Parquet value could still carry one
            return f"unreadable: the {name} holds a lone surrogate (half of a character); fix the text"
        m = CONTROL_TOKENS.search(value) if value else None
        if m:
            return (f"chat markup: the {name} contains {m.group(0)!r}, a chat template's control token, which would "
                    "end or start a turn in the prompt; remove it from the data")
    return None


def normalize(row: dict, fmt: str, m: dict[str, str], index: int,
              notes: dict[str, int] | None = None) -> tuple[Example | None, str | None]:
    """One raw row -> (Example, None) or (None, reason it is dropped). A reason reads 'kind: detail'. How a kept row
    was read otherwise than as written (an answer list's first item) is counted in `notes`."""
    access, problem = lookup(row, m)
    if problem:
        return None, problem
    get, has = access
    if any(not has(f) for f in REQUIRED[fmt]):
        own = row_format(row.keys())
        if own and FAMILY[own] != FAMILY[fmt]:
            return None, (f"other format: the row's columns ({', '.join(map(str, list(row)[:6]))}) are those of a "
                          f"{own} row, not of this file's {fmt} rows; split the file by format, or set data.format "
                          "and data.columns")
    try:
        ex = _normalize(get, fmt, m, index, {} if notes is None else notes)
    except NotText as e:  # raised by _field with the field's name
        return None, f"wrong type: {e.args[1]} ({m.get(e.args[1], '?')}) {e.args[0]}"
    if isinstance(ex, str):
        return None, ex
    return (None, _markup(ex)) if _markup(ex) else (ex, None)


def _field(get, f: str, text_only: bool = False) -> str:
    v = get(f)
    if text_only and isinstance(v, (int, float)) and not isinstance(v, bool) and v == v:
        raise NotText(f"is a {type(v).__name__}, not text", f)
    if isinstance(v, (list, tuple)) and any(isinstance(x, (dict, list, tuple, bool)) for x in v) and f != "context":
        raise NotText(f"is a list of {type(next(x for x in v if isinstance(x, (dict, list, tuple, bool)))).__name__}"
                      ", not text", f)
    try:
        return text(v)
    except NotText as e:
        raise NotText(str(e), f) from None


def _chat(get, rid, category) -> Example | str:
    turns = get("messages")
    if isinstance(turns, str):  # a CSV cell or a double-encoded JSON field
        turns = structured(turns)
    if not isinstance(turns, list) or not turns:
        return "malformed chat: messages is not a non-empty list"
    msgs = []
    for t in turns:
        if not isinstance(t, dict):
            return "malformed chat: a message is not a mapping"
        try:
            role = ROLE.get(text(t.get("role", t.get("from"))).lower())
            content = text(t.get("content", t.get("value")))
        except NotText as e:
            return f"malformed chat: a message's role or content {e}"
        if role is None:
            return f"malformed chat: unknown role {t.get('role', t.get('from'))!r}"
        msgs.append({"role": role, "content": content})
    last = max((i for i, t in enumerate(msgs) if t["role"] == "assistant"), default=None)
    if last is None or not any(t["role"] == "user" for t in msgs[:last]):
        return "malformed chat: no user turn followed by an assistant answer"
    question = next(t["content"] for t in reversed(msgs[:last]) if t["role"] == "user")
    answer = msgs[last]["content"]
    if not question:
        return "empty question"
    if not answer:
        return "empty answer"
    return Example(rid, "freetext", question, answer, category=category, messages=msgs[:last])


ANSWER_LISTS = "answer lists"


def _alternatives(v) -> list | None:
    """The non-empty items of an answer given as a list of two or more alternative texts, or None."""
    if not isinstance(v, (list, tuple)) or not all(isinstance(x, (str, int, float)) and not isinstance(x, bool)
                                                   for x in v):
        return None
    items = [x for x in v if text(x)]
    return items if len(items) > 1 else None


def _normalize(get, fmt: str, m: dict[str, str], index: int, notes: dict[str, int]) -> Example | str:
    rid = _field(get, "id") or f"row-{index}"
    category = _field(get, "category") or None
    if fmt == "chat":
        return _chat(get, rid, category)
    instruction = None
    if fmt == "alpaca":
        instr, inp = _field(get, "instruction", True), _field(get, "input", True)
        question, instruction = (inp, instr) if instr and inp else (instr or inp, None)
    else:
        question = _field(get, "question", True)
    alternatives = _alternatives(get("output" if fmt == "alpaca" else "answer"))
    answer = text(alternatives[0]) if alternatives else _field(get, "output" if fmt == "alpaca" else "answer")
    if not question:
        return "empty question"
    reasoning = _field(get, "reasoning") or None  # kept for every format: the reasoning template trains it
    context = _field(get, "context") or None
    explanation = _field(get, "explanation") or None
    if fmt == "pubmedqa":
        decision = _field(get, "final_decision").lower()
        if decision not in DECISIONS:
            return f"malformed decision: final_decision {decision[:20]!r} is not yes/no/maybe"
        return Example(rid, "yesno", question, decision, context=context,
                       explanation=_field(get, "long_answer") or explanation, reasoning=reasoning, category=category)

    opts, problem, keys = options(get("options")) if fmt in ("mcq", "qa", "reasoning") else (None, None, {})
    if problem:
        return problem
    if opts:
        if len(opts) < 2:
            return "too few options: fewer than two non-empty options"
        if alternatives and not (get("answer_idx") if "answer_idx" in m else None):
            return (f"several answers: answer is a list of {len(alternatives)} ({_short(alternatives, 40)}), and a "
                    "multiple-choice row has one correct option; keep one, or split the row")
        idx = _field(get, "answer_idx") if "answer_idx" in m else ""
        letter = choice_letter(get("answer_idx"), opts, keys) if idx else None
        given = get("answer") if answer else get("answer_idx")
        letter = letter or choice_letter(given, opts, keys)
        if letter is None:
            return "empty answer" if not (answer or idx) else _not_an_option(given, opts)
        return Example(rid, "choice", question, letter, options=opts, reasoning=reasoning, explanation=explanation,
                       category=category)
    # A row without options in a multiple-choice file is a free-text item (a qa/mcq file may mix them), unless
    # its answer is a bare letter: then it names an option the row does not have.
    if "options" in m and re.fullmatch(r"\(?[A-Za-z][.):]?", answer):
        return f"missing options: answer {answer!r} names an option, but the row has no options"
    if not answer:
        return "empty answer"
    if alternatives:
        notes[ANSWER_LISTS] = notes.get(ANSWER_LISTS, 0) + 1
    return Example(rid, "freetext", question, answer, reasoning=reasoning, instruction=instruction,
                   context=context if fmt != "alpaca" else None, category=category)


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


def in_eval_split(ex: Example, fraction: float, seed: int | str) -> bool:
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
    notes: dict[str, int] = field(default_factory=dict)  # rows read otherwise than as written: how, and how many

    def note(self, key: str) -> None:
        self.notes[key] = self.notes.get(key, 0) + 1

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
                  on_bad_rows: str = "drop", source: str = "", dedup: bool = True) -> Iterator[Example]:
    """Normalized, de-duplicated examples (dedup=False: an lm-eval task scores a repeated item twice); every row
    read is counted, every dropped row with its reason."""
    for i, item in enumerate(rows):
        row = item if isinstance(item, Row) else Row(None, item)
        checks.read += 1
        notes: dict[str, int] = {}
        if row.data is None:
            problem = f"unreadable: {row.problem}"
        else:
            ex, problem = normalize(row.data, fmt, m, i, notes)
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
        if dedup and k in seen:
            checks.drop("duplicate: same question and answer as an earlier row", row.data, row.line)
            continue
        seen.add(k)
        for key in ([row.note] if row.note else []) + list(notes):
            checks.note(key)
        yield ex


NOTES = {DOUBLE_ENCODED: "{n} rows were JSON strings holding a JSON object (double-encoded): the object inside "
                         "was read",
         ANSWER_LISTS: "{n} answers were lists of alternatives: the first of each is trained and scored against"}


def notes_text(checks: Checks) -> list[str]:
    """The checks' notes as sentences for the report."""
    return [NOTES.get(k, "{n} rows: " + k).format(n=n) for k, n in checks.notes.items()]
