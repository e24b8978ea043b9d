"""Reading a data source row by row: every record in the file is read, or the file is refused.

Local files and fsspec URLs are read line by line, so that one bad line is one counted, explained drop
(`line 2: invalid JSON (...)`) rather than a failed load; what would lose or mis-read records (a cut gzip stream, an
unbalanced CSV quote, columns of unequal length, a duplicate column) refuses the file with the line and the fix.
Hub datasets go through `datasets.load_dataset`. Every item is a `Row`: the record, or why it could not be read.
Columns are learnt from every row that will be read, not from the first ones.
"""
from __future__ import annotations

import ast
import json
import re
from itertools import islice
from pathlib import Path
from typing import Iterator

from medqlora.config import DataConfig
from medqlora.data.files import DataError, check_text, head_bytes, kind_of, open_bytes, reading
from medqlora.data.jsonrows import (
    Decoder,
    Row,
    double_encoded,
    json_array,
    json_line,
    json_text_line,
    record_problem,
    short,
    split_lines,
)
from medqlora.data.tabular import csv_rows

__all__ = ["DataError", "Row", "kind_of", "rows", "open_rows", "structured", "head_bytes"]


def _jsonl_rows(source: str) -> Iterator[Row]:
    check_text(source, "jsonl")
    dec, n = Decoder(), 0
    with reading(source, lambda: n), open_bytes(source) as f:
        for chunk in f:
            for line in split_lines(chunk):
                n += 1
                if n == 1:
                    line = line.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte-order mark (Windows editors write one)
                if line.strip():  # blank lines hold no row
                    yield from json_line(n, line, dec)


def _json_rows(source: str) -> Iterator[Row]:
    """A .json file: an array of records, {column: [values]}, or {"data": [records]}; JSON Lines also work."""
    check_text(source, "json")
    with reading(source), open_bytes(source) as f:
        blob = f.read()
    try:
        text = blob.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = blob.count(b"\n", 0, e.start) + 1
        raise DataError(f"{source} is not UTF-8 text (byte 0x{blob[e.start]:02x} at line {line}); save it as UTF-8 "
                        "JSON") from None
    dec = Decoder()
    items = json_array(source, text, dec)
    if items is not None:
        yield from items
        return
    try:
        obj, end = dec.raw_decode(text, len(text) - len(text.lstrip()))
    except json.JSONDecodeError as e:
        raise DataError(f"{source} is not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None
    except RecursionError:
        raise DataError(f"{source} is nested too deeply to read") from None
    if text[end:].strip():  # several JSON values: read it as JSON Lines (split at line ends only)
        n = 0
        for chunk in text.split("\n"):
            for line in split_lines(chunk.encode()):
                n += 1
                if line.strip():
                    yield from json_text_line(n, line.decode(), dec)
        return
    if isinstance(obj, dict) and isinstance(obj.get("data"), list):
        obj = obj["data"]
    elif isinstance(obj, dict) and obj and all(isinstance(v, list) for v in obj.values()):
        lengths = {c: len(v) for c, v in obj.items()}
        if len(set(lengths.values())) > 1:
            listed = ", ".join(f"{c} {n}" for c, n in lengths.items())
            raise DataError(f"{source} holds columns of unequal length ({listed}); every column needs one value per "
                            "row, or rows would be paired wrongly")
        if getattr(obj, "dup", ""):
            raise DataError(f"{source}: the column {obj.dup!r} appears twice; keep one")
        obj = [dict(zip(obj, vals)) for vals in zip(*obj.values())]
    if not isinstance(obj, list):
        raise DataError(f"{source}: expected a JSON array of records (or JSON Lines), found a JSON "
                        f"{type(obj).__name__}")
    for i, rec in enumerate(obj, start=1):
        why = record_problem(rec, True) if isinstance(rec, (dict, list)) else None
        inner, note = double_encoded(rec)
        if inner is not None:
            yield Row(None, inner, note=note)
        elif why or note or not isinstance(rec, dict):
            why = why or note
            yield Row(None, None, f"item {i}: {why or f'a JSON {type(rec).__name__} where a record was expected'}",
                      short(json.dumps(rec, default=str)))
        else:
            yield Row(None, rec)


def _datasets_rows(ds) -> Iterator[Row]:
    for i, rec in enumerate(ds, start=1):
        yield Row(i, dict(rec))


def _parquet_rows(source: str) -> Iterator[Row]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    with reading(source, lambda: n), open_bytes(source) as f:
        try:
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            dups = sorted({c for c in names if [x.lower() for x in names].count(c.lower()) > 1})
            if dups:
                raise DataError(f"{source}: the column(s) {dups} appear twice (names are read case-insensitively); "
                                "rename one")
            for batch in pf.iter_batches(batch_size=1024):
                for rec in batch.to_pylist():
                    n += 1
                    yield Row(n, rec)
        except (pa.ArrowException, OSError) as e:  # not a Parquet file, truncated, ...
            at = f" after row {n}" if n else ""
            raise DataError(f"{source} could not be read as Parquet{at}: {type(e).__name__}: {e}; check that it is "
                            "a complete Parquet file") from None


def _hub_rows(source: str, cfg: DataConfig, split: str, info: dict | None = None) -> Iterator[Row]:
    import datasets

    try:
        ds = datasets.load_dataset(source, cfg.config_name, split=split, streaming=cfg.streaming,
                                   revision=cfg.revision)
    except Exception as e:  # hub unreachable, gated, bad split or config
        raise DataError(f"{source!r} is read as a hub dataset name (config {cfg.config_name!r}, split {split!r}) and "
                        f"could not be loaded: {type(e).__name__}: {e}. Offline, or a local file meant? Give the "
                        "path of a local .jsonl/.json/.csv/.parquet file") from e
    if info is not None:  # the commit read: datasets caches a hub dataset under its commit hash
        cached = [f["filename"] for f in getattr(ds, "cache_files", None) or []]
        commit = Path(cached[0]).parent.name if cached else ""
        info["revision"] = cfg.revision or (commit if re.fullmatch(r"[0-9a-f]{40}", commit) else None)
    yield from _datasets_rows(ds)


def rows(source: str, cfg: DataConfig, split: str, info: dict | None = None) -> Iterator[Row]:
    """Every row of the source as a Row, streamed (nothing is loaded whole except a .json file). info: filled with
    the revision a hub dataset was read at."""
    kind = kind_of(source)
    if kind == "hub":
        return _hub_rows(source, cfg, split, info)
    if kind == "tsv":
        return csv_rows(source, "\t")
    return {"jsonl": _jsonl_rows, "json": _json_rows, "csv": csv_rows, "parquet": _parquet_rows}[kind](source)


def open_rows(source: str, cfg: DataConfig, split: str, info: dict | None = None) -> tuple[Iterator[Row], list[str]]:
    """The rows (at most data.max_samples) and the column names, learnt from every one of those rows (a file whose
    rows change shape part-way, e.g. two files concatenated, is detected as a whole). JSON files are read twice
    for this; CSV, Parquet and hub data have one header."""
    def capped():
        it = rows(source, cfg, split, info)
        return islice(it, cfg.max_samples) if cfg.max_samples else it

    kind = kind_of(source)
    columns: dict[str, None] = {}
    if kind in ("jsonl", "json"):
        for r in capped():
            columns.update(dict.fromkeys(r.data or {}))
        return iter(capped()), list(columns)
    it = iter(capped())
    head = list(islice(it, 1))
    for r in head:
        columns.update(dict.fromkeys(r.data or {}))
    if not head or head[0].data is None:  # no header row to learn from: the first readable one
        more = [r for r in islice(it, 200)]
        for r in more:
            columns.update(dict.fromkeys(r.data or {}))
        head += more

    def chained():
        yield from head
        yield from it
    return chained(), list(columns)


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
