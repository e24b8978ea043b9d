"""Reading JSON records without mis-reading them: a duplicate key, a NaN or Infinity, a lone surrogate escape
(half a character) or two records on one line are each said, never silently resolved by the parser."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterator

from medqlora.data.files import DataError

_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")
_WS = re.compile(r"[ \t\n\r]*")


@dataclass
class Row:
    line: int | None  # line in a text file (row number for Parquet and hub data); None if unknown
    data: dict | None  # the record, or None when it could not be read
    problem: str | None = None  # why it could not be read
    raw: str | None = None  # the start of what was there, for the data checks table
    note: str | None = None  # how it was read, when not as written (counted in the checks' notes)

    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else "a row"


def short(b: bytes | str, n: int = 120) -> str:
    s = b.decode("utf-8", "replace") if isinstance(b, bytes) else b
    s = s.strip()
    return s if len(s) <= n else s[: n - 3] + "..."


class _Dup(dict):
    """A JSON object in which a key appeared twice (the parser would keep the last silently)."""
    dup: str = ""


class _Const(float):
    """NaN, Infinity or -Infinity: not JSON, and read as a number they would become the text 'nan' or 'inf'."""
    name: str = ""


class Decoder:
    def __init__(self):
        self.flagged = False
        self._dec = json.JSONDecoder(object_pairs_hook=self._pairs, parse_constant=self._const)

    def _pairs(self, pairs):
        d = dict(pairs)
        if len(d) < len(pairs):
            seen, dup = set(), None
            for k, _ in pairs:
                if k in seen:
                    dup = k
                    break
                seen.add(k)
            d = _Dup(d)
            d.dup, self.flagged = dup, True
        return d

    def _const(self, name):
        c = _Const("nan")
        c.name, self.flagged = name, True
        return c

    def raw_decode(self, text: str, pos: int = 0):
        return self._dec.raw_decode(text, pos)


def record_problem(obj, surrogates: bool) -> str | None:
    """What makes a parsed record unusable as read (walked iteratively: depth is no risk here)."""
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, _Dup):
            return (f"the key {v.dup!r} appears twice in one record (JSON would keep the last silently); keep one")
        if isinstance(v, _Const):
            return f"{v.name} is not a JSON value (a number that is not one); write the value as text or remove it"
        if isinstance(v, dict):
            stack.extend(v.keys() if surrogates else ())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
        elif surrogates and isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError as e:
                return (f"a lone surrogate escape (\\u{ord(v[e.start]):04x}: half of a character, e.g. a cut emoji) "
                        "in the text; fix or remove the escape")
    return None


def _has_surrogate_escape(text: str, start: int, end: int) -> bool:
    return "\\u" in text and bool(_SURROGATE_ESCAPE.search(text, start, end))


def json_line(i: int, line: bytes, dec: Decoder) -> Iterator[Row]:
    """One line of JSON Lines: usually one record; two records on one line are two rows."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        yield Row(i, None, f"line {i}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}); save "
                           "the file as UTF-8", short(line))
        return
    yield from json_text_line(i, text, dec)


def json_text_line(i: int, text: str, dec: Decoder) -> Iterator[Row]:
    pos, n = _WS.match(text).end(), 0
    while pos < len(text):
        dec.flagged = False
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            after = f"after {n} record(s) on this line, " if n else ""
            yield Row(i, None, f"line {i}: {after}invalid JSON ({e.msg}; column {e.colno})", short(text[pos:]))
            return
        except RecursionError:
            yield Row(i, None, f"line {i}: JSON nested too deeply to read", short(text))
            return
        n += 1
        rest = _WS.match(text, end).end()
        if text[rest:rest + 1] == "," and not text[rest + 1:].strip():
            yield Row(i, None, f"line {i}: a ',' after the record: JSON Lines has no commas between records (this "
                               "reads like the inside of a JSON array); remove the trailing commas (e.g. sed -i "
                               "'s/,[[:space:]]*$//' on the file), or make it one JSON array [...] named .json",
                      short(text[pos:]))
            return
        surrogates = _has_surrogate_escape(text, pos, end)
        why = record_problem(obj, surrogates) if dec.flagged or surrogates else None
        inner, note = double_encoded(obj) if not why else (None, None)
        if why or (note and inner is None):
            yield Row(i, None, f"line {i}: {why or note}", short(text[pos:end]))
        elif inner is not None:
            yield Row(i, inner, note=note)
        elif not isinstance(obj, dict):
            yield Row(i, None, f"line {i}: a JSON {type(obj).__name__} where one JSON object per line was "
                               "expected", short(text[pos:end]))
        else:
            yield Row(i, obj)
        pos = rest


DOUBLE_ENCODED = "double-encoded"


def double_encoded(obj) -> tuple[dict | None, str | None]:
    """A JSON string that holds a JSON object (a record encoded twice, e.g. json.dumps of json.dumps): (the object,
    DOUBLE_ENCODED), (None, why it cannot be read), or (None, None) for anything else."""
    if not isinstance(obj, str) or not obj.lstrip().startswith("{"):
        return None, None
    dec = Decoder()
    try:
        inner, end = dec.raw_decode(obj, len(obj) - len(obj.lstrip()))
    except (json.JSONDecodeError, RecursionError):
        return None, None  # text that happens to start with '{': not a record
    if obj[end:].strip() or not isinstance(inner, dict):
        return None, None
    why = record_problem(inner, True)
    if why:
        return None, f"a JSON string holding a JSON object (double-encoded) in which {why}"
    return inner, DOUBLE_ENCODED


def split_lines(chunk: bytes) -> list[bytes]:
    """A line read up to \\n, split again at lone carriage returns (old Mac line ends): JSON text never holds a raw
    CR inside a string, so each is a line end, not a merge of two records."""
    if chunk.endswith(b"\n"):
        chunk = chunk[:-1]
    if chunk.endswith(b"\r"):
        chunk = chunk[:-1]
    return chunk.split(b"\r") if b"\r" in chunk else [chunk]


def json_array(source: str, text: str, dec: Decoder) -> Iterator[Row] | None:
    """The records of a top-level JSON array with their line numbers, or None when the text is not an array."""
    pos = _WS.match(text).end()
    if text[pos:pos + 1] != "[":
        return None

    def items():
        p, line, counted, k = _WS.match(text, pos + 1).end(), 1, 0, 0
        if text[p:p + 1] == "]":
            return
        while True:
            line += text.count("\n", counted, p)
            counted = p
            dec.flagged = False
            try:
                obj, end = dec.raw_decode(text, p)
            except json.JSONDecodeError as e:
                raise DataError(f"{source} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}; fix the "
                                "file there (every record after it would be lost)") from None
            except RecursionError:
                raise DataError(f"{source}: item {k + 1} (line {line}) is nested too deeply to read") from None
            k += 1
            surrogates = _has_surrogate_escape(text, p, end)
            why = record_problem(obj, surrogates) if dec.flagged or surrogates else None
            inner, note = double_encoded(obj) if not why else (None, None)
            if why or (note and inner is None):
                yield Row(line, None, f"line {line}: item {k}: {why or note}", short(text[p:end]))
            elif inner is not None:
                yield Row(line, inner, note=note)
            elif isinstance(obj, dict):
                yield Row(line, obj)
            else:
                yield Row(line, None, f"line {line}: item {k}: a JSON {type(obj).__name__} where a record was "
                                      "expected", short(text[p:end]))
            p = _WS.match(text, end).end()
            if text[p:p + 1] == ",":
                p = _WS.match(text, p + 1).end()
                continue
            lineno = text.count("\n", 0, p) + 1
            if text[p:p + 1] == "]":
                if not text[_WS.match(text, p + 1).end():]:
                    return
                raise DataError(f"{source} is not valid JSON: extra data after the array ends at line {lineno}; "
                                "remove it, or give one JSON value per line as .jsonl")
            raise DataError(f"{source} is not valid JSON: expected ',' or ']' at line {lineno} (after item {k}); "
                            "fix the file there (every record after it would be lost)")
    return items()
