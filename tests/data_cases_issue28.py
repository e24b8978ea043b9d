"""Issue 28, the data front door: cases written down before the fix, in the style of data_cases_list.py."""

from __future__ import annotations

import csv
import datetime
import io
import json

from data_cases import LETTERS, Case, Kept, N, Refused, jsonl, many, mcq, parquet, qa, with_rows

# What csv.writer and pandas.to_csv quote in a TSV: a tab, a quote, a line end inside a field.
QUOTED_ANSWERS = (
    '"There may be damage to the gene."',
    'Acanthocytes are not "Burr-cell" forms.',
    "Give it\twith food.",
    "First line.\nSecond line.",
    'Both: "a"\tand\n"b".',
)


def _tsv_rows():
    rows = [{"question": r["question"], "answer": r["answer"]} for r in many()]
    return with_rows(rows, {i: lambda r, i=i: {**r, "answer": QUOTED_ANSWERS[i // 17 % 5]} for i in range(3, N, 17)})


def writer_tsv(rows) -> bytes:
    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter="\t", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return out.getvalue().encode()


def pandas_tsv(rows) -> bytes:
    import pandas as pd

    return pd.DataFrame(rows).to_csv(sep="\t", index=False).encode()


def answers_are(want):
    """A check: the kept examples' answers are exactly these, in order (no CSV quotes trained)."""
    return lambda exs: [e.answer for e in exs] == want


def _broken_writer_tsv() -> bytes:
    """A csv.writer TSV (quoted fields with doubled quotes) in which one hand-edited line opens a quote it never
    closes: read with quoting it cannot be, read without it the quotes would be trained."""
    lines = writer_tsv(_tsv_rows()).split(b"\n")
    lines[100] = b'"' + lines[100]
    return b"\n".join(lines)


def issue28() -> list[Case]:
    tsv = _tsv_rows()
    want = [r["answer"].strip() for r in tsv]
    base, mc = many(), many(mcq)
    alt = [{**r, "answer": [r["answer"], "Another accepted answer."]} for r in base]
    several = with_rows(mc, {i: lambda r: {**r, "answer": ["A", "C"]} for i in range(5)})
    one_item = [{**r, "answer": [r["answer"]]} for r in mc]
    double = "".join(json.dumps(json.dumps(r)) + "\n" for r in base).encode()
    double_array = json.dumps([json.dumps(r) for r in base]).encode()
    mixed_alias = many(mcq, 150) + [
        {**{k: v for k, v in mcq(i).items() if k != "options"}, "choices": mcq(i)["options"]} for i in range(150, N)
    ]
    dated = parquet(
        {
            "question": [r["question"] for r in base],
            "answer": [r["answer"] for r in base],
            "source": [datetime.date(2024, 1, 1 + i % 28) for i in range(N)],
        }
    )
    return [
        Case(
            "structure", "tsv-csv-writer-quoted", "d.tsv", writer_tsv(tsv), Kept(N, check=answers_are(want)), "misread"
        ),
        Case("structure", "tsv-pandas-quoted", "d.tsv", pandas_tsv(tsv), Kept(N, check=answers_are(want)), "misread"),
        Case(
            "structure",
            "tsv-csv-writer-one-broken-quote",
            "d.tsv",
            _broken_writer_tsv(),
            Refused(r"line 101.*quot.*csv\.writer.*pandas"),
            "misread",
        ),
        Case(
            "structure",
            "jsonl-every-line-ends-in-comma",
            "d.jsonl",
            jsonl(base).replace(b"}\n", b"},\n"),
            Refused(r"no readable row.*a ',' after the record.*trailing commas"),
            "message",
        ),
        Case(
            "structure",
            "jsonl-one-line-ends-in-comma",
            "d.jsonl",
            jsonl(base).replace(b"}\n", b"}, \n", 1),
            Kept(N - 1, {"unreadable": 1}),
            "lost",
        ),
        Case(
            "structure",
            "jsonl-empty-objects",
            "d.jsonl",
            b"{}\n" * N,
            Refused(r"^(?!.*: None\.).*every record .* is empty \(\{\}\)"),
            "message",
        ),
        Case(
            "structure",
            "jsonl-double-encoded-lines",
            "d.jsonl",
            double,
            Kept(N, check=answers_are([r["answer"] for r in base])),
            "message",
        ),
        Case(
            "structure",
            "jsonl-strings-that-are-not-records",
            "d.jsonl",
            b'"{broken, not a record"\n' * 20,
            Refused(r"^(?!.*looks like CSV).*no readable row.*a JSON str where one JSON object"),
            "message",
        ),
        Case(
            "structure",
            "json-array-of-double-encoded-records",
            "d.json",
            double_array,
            Kept(N, check=answers_are([r["answer"] for r in base])),
            "message",
        ),
        Case(
            "content",
            "answer-list-of-alternatives",
            "d.jsonl",
            jsonl(alt),
            Kept(N, check=answers_are([r["answer"] for r in base])),
            "misread",
        ),
        Case(
            "content",
            "mcq-answer-list-of-two-options",
            "d.jsonl",
            jsonl(several),
            Kept(N - 5, {"several answers": 5}),
            "misread",
        ),
        Case(
            "content",
            "mcq-answer-list-of-one",
            "d.jsonl",
            jsonl(one_item),
            Kept(N, check=answers_are([LETTERS[i % 4] for i in range(N)])),
        ),
        Case(
            "schema",
            "parquet-date-column",
            "d.parquet",
            dated,
            Kept(N, check=lambda exs: exs[0].category == "2024-01-01" and exs[0].answer == qa(0)["answer"]),
            "message",
        ),
        Case(
            "schema",
            "options-and-choices-mixed",
            "d.jsonl",
            jsonl(mixed_alias),
            Kept(N, check=lambda exs: all(e.kind == "choice" and len(e.options) == 4 for e in exs)),
            "lost",
        ),
        Case(
            "content",
            "every-answer-not-an-option",
            "d.jsonl",
            jsonl([{**r, "answer": "Z"} for r in mc]),
            Refused(r"^(?!.*Map the right columns).*answer not an option 300.*columns are read as .*options=options"),
            "message",
        ),
    ]
