"""Reading CSV and TSV files row by row, every record read or the file refused.

A CSV is read with CSV quoting. A TSV comes in two kinds, and both are read as written:
- written by csv.writer or pandas.to_csv(sep="\\t"): a field holding a tab, a quote or a line end is in quotes, with
  its inner quotes doubled. Read with quoting, so that the quotes are never trained as text;
- written plainly (every tab a delimiter, every line a row): a '"' is text, even at the start of a field.
The file is read with quoting when all of it can be (a file csv.writer or pandas wrote always can); otherwise
plainly, unless a field quoted the writers' way shows that quoting was meant: then the file is refused with the
line to fix, as either reading would mis-read it.
"""
from __future__ import annotations

import csv
import io
import re
import sys
from typing import Iterator

from medqlora.data.files import DataError, check_text, open_bytes, reading
from medqlora.data.jsonrows import Row, short

# A field in quotes with a doubled quote inside: how csv.writer and pandas write a field that holds a '"'.
_WRITER_QUOTED = re.compile(r'"(?:[^"]|"")*""(?:[^"]|"")*"')


class _Records:
    """(first line, fields) for each record of the file, the header included; `prev` is the last line read."""

    def __init__(self, f, delimiter: str, quoted: bool):
        text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
        # strict: a stray '"' (a quoted field closed mid-field, or never closed) is an error, not a silent re-split.
        self.reader = csv.reader(text, delimiter=delimiter, strict=True,
                                 **({} if quoted else {"quoting": csv.QUOTE_NONE}))
        self.prev = 0

    def __iter__(self):
        for fields in self.reader:
            start, self.prev = self.prev + 1, self.reader.line_num
            yield start, fields


def _quoting_breaks(source: str) -> tuple[int, str] | None:
    """Where and why the file cannot be read with CSV quoting, or None when all of it can."""
    with reading(source), open_bytes(source) as f:
        recs, width = _Records(f, "\t", True), None
        try:
            for start, fields in recs:
                if width is None:
                    width = len(fields)
                elif len(fields) != width and recs.prev > start:
                    return start, (f"a quoted field opened there runs to line {recs.prev} and leaves {len(fields)} "
                                   f"fields where the header has {width}")
        except csv.Error as e:
            return recs.prev + 1, str(e)
    return None


def _writer_quoted_line(source: str) -> tuple[int, str] | None:
    """The first line holding a field quoted the way csv.writer and pandas.to_csv quote one, and that field."""
    with reading(source), open_bytes(source) as f:
        for start, fields in _Records(f, "\t", False):
            hit = next((x for x in fields if x.startswith('"') and _WRITER_QUOTED.fullmatch(x)), None)
            if hit:
                return start, hit
    return None


def tsv_quoted(source: str) -> bool:
    """Whether a TSV is read with CSV quoting (see the module's docstring); refuses a file that is neither kind."""
    broken = _quoting_breaks(source)
    if broken is None:
        return True
    shown = _writer_quoted_line(source)
    if shown:
        line, why = broken
        raise DataError(f"{source}: line {shown[0]} quotes a field the way csv.writer and pandas.to_csv(sep='\\t') "
                        f"do ({short(shown[1], 60)}: in quotes, inner quotes doubled), but line {line} cannot be read "
                        f"with that quoting ({why}); read without it, the quotes would be trained as text. Fix the "
                        "quote at that line (a quoted field ends with '\"', a '\"' inside it is doubled as \"\"), or "
                        "write the file again with csv.writer or pandas.to_csv")
    return False


def csv_rows(source: str, delimiter: str = ",") -> Iterator[Row]:
    kind = "tsv" if delimiter == "\t" else "csv"
    check_text(source, kind)
    quoted = kind == "csv" or tsv_quoted(source)
    csv.field_size_limit(sys.maxsize)  # a long cell (a case report) is data, not an error that ends the file
    with reading(source, lambda: recs.reader.line_num), open_bytes(source) as f:
        recs = _Records(f, delimiter, quoted)
        records = iter(recs)
        try:
            first = next(records, None)
            if first is None:
                return
            header = [h.strip() for h in first[1]]
            seen: dict[str, int] = {}
            for i, h in enumerate(header, 1):
                if h and h.lower() in seen:
                    raise DataError(f"{source}: line 1: the column {h!r} appears twice in the header (columns "
                                    f"{seen[h.lower()]} and {i}; column names are read case-insensitively); rename "
                                    "or remove one, or its values would be mis-read")
                seen[h.lower()] = i
            for start, fields in records:
                if not any(x.strip() for x in fields):
                    continue
                raw = delimiter.join(fields)
                if len(fields) != len(header) and recs.prev - start >= 2 and quoted:
                    raise DataError(f"{source}: line {start}: a quoted field opened there runs to line {recs.prev}, "
                                    f"and the record has {len(fields)} fields where the header has {len(header)}: an "
                                    "unbalanced '\"' swallows the lines between; close or double the quote (\"\"), "
                                    "or, for a tab-separated file, name it .tsv")
                if any("\udc80" <= ch <= "\udcff" for x in fields for ch in x):
                    yield Row(start, None, f"line {start}: not valid UTF-8; save the file as UTF-8", short(raw))
                elif len(fields) != len(header):
                    yield Row(start, None, f"line {start}: {len(fields)} fields where the header has {len(header)}",
                              short(raw))
                else:
                    yield Row(start, {h: v for h, v in zip(header, fields) if h})
        except csv.Error as e:
            quote = " (an unbalanced '\"': double a quote inside a quoted field as \"\", or quote the whole field)" \
                if "'\"'" in str(e) or "end of data" in str(e) else ""
            line = recs.reader.line_num
            at = f"line {recs.prev + 1}" + (f" (read on to line {line})" if line > recs.prev + 1 else "")
            raise DataError(f"{source}: {at}: unreadable {kind.upper()} ({e}){quote}; the rest of the file cannot be "
                            "read, so none of it is used: fix that line") from None
