"""One raw record -> one Example, or the reason it is dropped ('kind: detail').

Nothing is guessed into text: a mapping without a `text` key, bytes that are not UTF-8, a bool, an infinite number
or a value nested deeper than text ever is drops the row as `wrong type` instead of training its Python repr.
Text extraction is depth-bounded (linear in the size of the value). Options are read from a dict of letters or
numbers, a list, [label, text] pairs, [{key, value}] / [{label, text}] / {text: [...], label: [...]}, or text (JSON,
a Python literal, lines 'A. text'); up to 26 (A-Z). Chat control tokens inside the data are refused, as they would
become real turn markers in the prompt.
"""
from __future__ import annotations

import datetime
import math
import re
from dataclasses import asdict, dataclass
from typing import Any

from medqlora.data.sources import structured

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
DECISIONS = ("yes", "no", "maybe")
MAX_DEPTH = 4  # {"contexts": [..]} or [{"text": ..}] is as deep as text gets
CONTROL_TOKENS = re.compile(r"<\|[A-Za-z_][\w.:-]{0,40}\|>|\[/?INST\]|<(?:start|end)_of_turn>|</?s>")


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


class NotText(ValueError):
    """A value that cannot be read as text; the message completes 'question (col) ...'."""


def _visible(s: str) -> str:
    """The text stripped, or '' when nothing in it is visible (only spaces and zero-width characters)."""
    s = s.strip()
    if not s or s[0].isprintable():  # strip() left no space at the start: a printable first character is visible
        return s
    return s if any(c.isprintable() and not c.isspace() for c in s) else ""


def _repr(v: Any, n: int = 50) -> str:
    s = repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def text(v: Any, depth: int = 0) -> str:
    """The text of a value: a string, a number, a date or time (ISO 8601), UTF-8 bytes, {'text': ...} /
    {'contexts': ...}, or a list of those (joined by lines). Raises NotText for anything else."""
    if v is None:
        return ""
    if isinstance(v, str):
        return _visible(v)
    if isinstance(v, bool):
        raise NotText(f"is a bool ({v}), not text")
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):  # an empty CSV/pandas cell
            return ""
        if math.isinf(v):
            raise NotText("is an infinite number, not text")
        return str(v)
    if isinstance(v, (datetime.date, datetime.time)):  # a Parquet/Arrow date or timestamp: its ISO text
        return v.isoformat()
    if isinstance(v, (bytes, bytearray)):
        try:
            return _visible(bytes(v).decode("utf-8"))
        except UnicodeDecodeError:
            raise NotText("is bytes that are not UTF-8 text") from None
    if depth >= MAX_DEPTH:
        raise NotText(f"is nested more than {MAX_DEPTH} levels deep, not text")
    if isinstance(v, dict):
        if "contexts" in v:  # PubMedQA on the hub
            return text(v["contexts"], depth + 1)
        if "text" in v:  # SQuAD-style {'text': ['ACE2'], 'answer_start': [21]}
            t = v["text"]
            return (text(t[0], depth + 1) if t else "") if isinstance(t, (list, tuple)) else text(t, depth + 1)
        raise NotText(f"is a mapping without a 'text' key ({_repr(v)})")
    if isinstance(v, (list, tuple)):
        if any(isinstance(x, (list, tuple)) for x in v):
            raise NotText(f"is a list of lists ({_repr(v)}), not text")
        parts = [text(x, depth + 1) for x in v]
        return "\n".join(p for p in parts if p)
    raise NotText(f"is a {type(v).__name__}, not text")


_OPTION_LINE = re.compile(r"^\s*\(?([A-Za-z])\s*[.):]\s*(.+?)\s*$")
_LETTER = re.compile(r"\(?([A-Za-z])[.):]?")


def _label(k: Any) -> str:
    return str(k).strip().strip("()[]").rstrip(".):").strip()


def _letters_for(keys: list) -> dict[str, str] | str:
    """Each option key (as text) -> its letter, or why the keys cannot name options. Numbers count from 0 or 1
    (keys '1'-'4' are A-D, and an answer 1 names the option keyed '1')."""
    labels = [_label(k) for k in keys]
    if labels and all(x.isdigit() for x in labels):
        nums = [int(x) for x in labels]
        first = min(nums)
        if first in (0, 1) and sorted(nums) == list(range(first, first + len(nums))) and len(nums) <= 26:
            return {str(k): LETTERS[n - first] for k, n in zip(keys, nums)}
        return f"option keys {labels[:8]} are numbers but not 0..n or 1..n"
    up = [x.upper() for x in labels]
    if all(len(x) == 1 and x in LETTERS for x in up):
        if len(set(up)) < len(up):
            dup = next(x for x in up if up.count(x) > 1)
            return f"two option keys name the letter {dup} ({[k for k in keys if _label(k).upper() == dup]})"
        return {str(k): x for k, x in zip(keys, up)}
    return f"option keys {labels[:8]} are neither letters nor numbers"


def _pairs(v: Any) -> list | str:
    """The options as [(key, value)], or why they cannot be read."""
    if isinstance(v, dict):
        if isinstance(v.get("text"), list):  # {"text": [...], "label": [...]} (ARC and hub datasets)
            labels = v.get("label", v.get("labels"))
            if labels is None:
                return list(zip(LETTERS, v["text"])) if len(v["text"]) <= 26 else f"{len(v['text'])} options"
            if not isinstance(labels, list) or len(labels) != len(v["text"]):
                return "'label' and 'text' are not lists of one length"
            return list(zip(labels, v["text"]))
        return list(v.items())
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(o, dict) for o in v):
            for keys in (("key", "value"), ("label", "text"), ("letter", "text")):
                if all(keys[0] in o and (keys[1] in o or "text" in o) for o in v):
                    return [(o[keys[0]], o.get(keys[1], o.get("text"))) for o in v]
            if all("text" in o for o in v):
                return list(zip(LETTERS, (o["text"] for o in v)))
            bad = next(i for i, o in enumerate(v) if "text" not in o)
            return f"option {bad + 1} is a mapping without a 'text' key ({_repr(v[bad])})"
        if v and all(isinstance(o, (list, tuple)) and len(o) == 2 and isinstance(o[0], (str, int))
                     and not isinstance(o[0], bool) and len(_label(o[0])) <= 3 for o in v):
            return [tuple(o) for o in v]  # [["A", "text"], ...] or a Parquet map column
        return list(zip(LETTERS, v)) if len(v) <= 26 else f"{len(v)} options, more than 26 (A-Z)"
    return f"a {type(v).__name__}, not a list or mapping of options"


def options(v: Any) -> tuple[dict[str, str] | None, str | None, dict[str, str]]:
    """(letter -> text, None, key -> letter), (None, None, {}) when there are no options, or (None, why, {})."""
    if v is None or (isinstance(v, float) and v != v) or v in ("", {}, []):
        return None, None, {}
    if isinstance(v, str):
        raw = v.strip()
        if not raw:
            return None, None, {}
        parsed = structured(raw) if raw[0] in "{[" else None
        if parsed is None:
            lines = [_OPTION_LINE.match(x) for x in raw.splitlines() if x.strip()]
            if lines and all(lines) and len(lines) >= 2:
                parsed = [(m.group(1), m.group(2)) for m in lines]
        if parsed is None:
            return None, f"options unreadable: {raw[:60]!r} is neither JSON, a Python literal, nor lines like " \
                         "'A. text'", {}
        v = parsed
    pairs = _pairs(v)
    if isinstance(pairs, str):
        return None, f"options unreadable: {pairs}", {}
    if len(pairs) > 26:
        return None, f"options unreadable: {len(pairs)} options, more than 26 (A-Z)", {}
    letters = _letters_for([k for k, _ in pairs])
    if isinstance(letters, str):
        return None, f"options unreadable: {letters}", {}
    items = {}
    for k, t in pairs:
        try:
            t = text(t, 1)
        except NotText as e:
            return None, f"options unreadable: option {_label(k)} {e}", {}
        if t:
            items[letters[str(k)]] = t
    if not items:
        return None, "options unreadable: every option is empty", {}
    return items, None, {_label(k).lower(): x for k, x in letters.items()}


def choice_letter(answer: Any, opts: dict[str, str], keys: dict[str, str]) -> str | None:
    """The option an answer names: the key it was given under (options keyed '1'-'4' are named by 1-4), a 0-based
    index into letter-keyed or listed options, the option's full text, or its letter (in that order after the key, so
    that an answer 'D' among options ['A', 'C', 'D', 'K'] is the option reading 'D', not the fourth)."""
    if isinstance(answer, bool):
        return None
    numbered = any(k.isdigit() for k in keys)
    if isinstance(answer, int):
        if numbered:
            return keys.get(str(answer)) if keys.get(str(answer)) in opts else None
        letters = list(opts)
        return letters[answer] if 0 <= answer < len(letters) else None
    try:
        a = text(answer)
    except NotText:
        return None
    matches = [k for k, t in opts.items() if t.lower() == a.lower()]
    if len(matches) == 1:
        return matches[0]
    if numbered and _label(a) in keys:
        return keys[_label(a)]
    m = _LETTER.fullmatch(a)
    if m and m.group(1).upper() in opts:
        return m.group(1).upper()
    return None


def _not_an_option(answer: Any, opts: dict[str, str]) -> str:
    letters = list(opts)
    span = f"{letters[0]}-{letters[-1]}" if letters == list(LETTERS[:len(letters)]) else ",".join(letters)
    try:
        shown = text(answer)[:40]
    except NotText:
        shown = _repr(answer, 40)
    return f"answer not an option: answer {shown!r} is neither a letter among options {span} nor one option's text"


ROLE = {"user": "user", "human": "user", "system": "system", "assistant": "assistant", "gpt": "assistant",
        "model": "assistant", "bot": "assistant"}
