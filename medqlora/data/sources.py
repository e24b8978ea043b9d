"""Reading a data source row by row, and checking it at the door before any notebook runs.

Local files and fsspec URLs are read line by line, so that one bad line is one counted, explained drop
(`line 2: invalid JSON (...)`) rather than a failed load; hub datasets go through `datasets.load_dataset`.
Every item is a `Row`: the record, or the reason it could not be read and where.
"""
from __future__ import annotations

import ast
import csv
import io
import json
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Iterable, Iterator

from medqlora.config import DataConfig, is_local_path

PEEK_ROWS = 200  # rows read to learn the columns (and, in the preflight, to check the file)


class DataError(ValueError):
    """The data cannot be used as configured; the message says what to change."""


@dataclass
class Row:
    line: int | None  # line in a text file (row number for Parquet and hub data); None if unknown
    data: dict | None  # the record, or None when it could not be read
    problem: str | None = None  # why it could not be read
    raw: str | None = None  # the start of what was there, for the data checks table

    def where(self) -> str:
        return f"line {self.line}" if self.line is not None else "a row"


def kind_of(source: str) -> str:
    """jsonl | json | csv | parquet for files and URLs; hub for a hub dataset name."""
    if not (is_local_path(source) or "://" in source):
        return "hub"
    p = source.lower().removesuffix(".gz").removesuffix(".bz2").removesuffix(".zst")
    for suffix, kind in ((".jsonl", "jsonl"), (".ndjson", "jsonl"), (".json", "json"), (".csv", "csv"),
                         (".tsv", "csv"), (".parquet", "parquet")):
        if p.endswith(suffix):
            return kind
    raise DataError(f"unsupported file type: {source}; use .jsonl, .json, .csv or .parquet (optionally .gz)")


def _open(source: str, mode: str = "rb"):
    import fsspec

    if is_local_path(source) and not Path(source).expanduser().exists():
        raise DataError(f"data file not found: {source}")
    try:
        return fsspec.open(source, mode, compression="infer").open()
    except FileNotFoundError as e:
        raise DataError(f"data file not found: {source}") from e
    except (OSError, ImportError, ValueError) as e:
        raise DataError(f"could not open {source}: {type(e).__name__}: {e}") from e


def _short(b: bytes | str, n: int = 120) -> str:
    s = b.decode("utf-8", "replace") if isinstance(b, bytes) else b
    s = s.strip()
    return s if len(s) <= n else s[: n - 3] + "..."


def _json_line(i: int, line: bytes) -> Row:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as e:
        return Row(i, None, f"line {i}: not valid UTF-8 (byte 0x{line[e.start]:02x} at column {e.start + 1}); save "
                            "the file as UTF-8", _short(line))
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        return Row(i, None, f"line {i}: invalid JSON ({e.msg}; column {e.colno})", _short(text))
    except RecursionError:
        return Row(i, None, f"line {i}: JSON nested too deeply to read", _short(text))
    if not isinstance(obj, dict):
        return Row(i, None, f"line {i}: a JSON {type(obj).__name__} where one JSON object per line was expected",
                   _short(text))
    return Row(i, obj)


def _jsonl_rows(source: str) -> Iterator[Row]:
    with _open(source) as f:
        for i, line in enumerate(f, start=1):
            if i == 1:
                line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors write one)
            if line.strip():  # blank lines hold no row
                yield _json_line(i, line.rstrip(b"\r\n"))


def _json_rows(source: str) -> Iterator[Row]:
    """A .json file: an array of records, {column: [values]}, or {"data": [records]}; JSON Lines also work."""
    with _open(source) as f:
        blob = f.read()
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(f"{source} is not UTF-8 text (byte 0x{blob[e.start]:02x} at offset {e.start}); "
                        "save it as UTF-8 JSON") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":  # several JSON values: read it as JSON Lines, line by line
            yield from (_json_line(i, line.encode()) for i, line in enumerate(text.splitlines(), 1) if line.strip())
            return
        raise DataError(f"{source} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    if isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
        cols = list(obj)
        obj = [dict(zip(cols, vals)) for vals in zip(*obj.values())]
    if not isinstance(obj, list):
        raise DataError(f"{source}: expected a JSON array of records (or JSON Lines), found a JSON "
                        f"{type(obj).__name__}")
    for i, rec in enumerate(obj, start=1):
        yield Row(None, rec) if isinstance(rec, dict) else Row(
            None, None, f"item {i}: a JSON {type(rec).__name__} where a record was expected", _short(json.dumps(rec)))


def _csv_rows(source: str) -> Iterator[Row]:
    with _open(source) as f:
        text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
        delimiter = "\t" if ".tsv" in source.lower() else ","
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader, None)
            if header is None:
                return
            header = [h.strip() for h in header]
            prev = reader.line_num
            for fields in reader:
                start, prev = prev + 1, reader.line_num
                if not any(x.strip() for x in fields):
                    continue
                raw = delimiter.join(fields)
                if any("\udc80" <= ch <= "\udcff" for x in fields for ch in x):
                    yield Row(start, None, f"line {start}: not valid UTF-8; save the file as UTF-8", _short(raw))
                elif len(fields) != len(header):
                    yield Row(start, None, f"line {start}: {len(fields)} fields where the header has {len(header)}",
                              _short(raw))
                else:
                    yield Row(start, dict(zip(header, fields)))
        except csv.Error as e:
            yield Row(reader.line_num, None, f"line {reader.line_num}: unreadable CSV ({e}); the rest of the file "
                      "is not read")


def _datasets_rows(ds) -> Iterator[Row]:
    for i, rec in enumerate(ds, start=1):
        yield Row(i, dict(rec))


def _parquet_rows(source: str) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_dataset("parquet", data_files=source, split="train", streaming=True)
        first = list(islice(iter(ds), 1))
    except Exception as e:  # pyarrow's own errors: not a Parquet file, truncated, ...
        raise DataError(f"{source} could not be read as Parquet: {type(e).__name__}: {e}") from None
    yield from _datasets_rows(chain(first, islice(iter(ds), 1, None)))


def _hub_rows(source: str, cfg: DataConfig, split: str) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(source, cfg.config_name, split=split, streaming=cfg.streaming)
    except Exception as e:  # hub unreachable, gated, bad split or config
        raise DataError(f"{source!r} is read as a hub dataset name (config {cfg.config_name!r}, split {split!r}) and "
                        f"could not be loaded: {type(e).__name__}: {e}. Offline, or a local file meant? Give the "
                        "path of a local .jsonl/.json/.csv/.parquet file") from e
    yield from _datasets_rows(ds)


def rows(source: str, cfg: DataConfig, split: str) -> Iterator[Row]:
    """Every row of the source as a Row, streamed (nothing is loaded whole except a .json array)."""
    kind = kind_of(source)
    if kind == "hub":
        return _hub_rows(source, cfg, split)
    return {"jsonl": _jsonl_rows, "json": _json_rows, "csv": _csv_rows, "parquet": _parquet_rows}[kind](source)


def open_rows(source: str, cfg: DataConfig, split: str) -> tuple[Iterator[Row], list[str]]:
    """The rows (at most data.max_samples) and the column names, learnt from the first rows."""
    it = rows(source, cfg, split)
    head = list(islice(it, PEEK_ROWS))
    columns: list[str] = []
    for r in head:
        for c in r.data or {}:
            if c not in columns:
                columns.append(c)
    out: Iterable[Row] = chain(head, it)
    if cfg.max_samples:
        out = islice(out, cfg.max_samples)
    return iter(out), columns


def structured(text: str):
    """A list or mapping written as text: JSON, or a Python literal (pandas writes dicts and lists into CSV that
    way); None when it is neither."""
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        return None
