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

from .config import DataConfig, is_local_path

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


# ---------------------------------------------------------------- the check at the door


def preflight(cfg: DataConfig, eval_sets=()) -> list[str]:
    """Problems with data.source and data.eval_source found by reading their first rows: an empty or
    unreadable file, a file that is not what its suffix says, columns that match no format, or first
    rows none of which can be used. Hub names are not fetched here: the preprocess stage loads them."""
    from . import data as D

    problems = []
    for key, source, c in [("data.source", cfg.source, cfg), ("data.eval_source", cfg.eval_source, cfg),
                           *((f"eval.sets ({es.name})", es.source, set_config(cfg, es)) for es in eval_sets)]:
        if not source or kind_of_safe(source) == "hub":
            continue
        try:
            problems += _preflight_one(key, source, c, D)
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


def _preflight_one(key: str, source: str, cfg: DataConfig, D) -> list[str]:
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
