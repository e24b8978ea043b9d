"""The cases of tests/data_cases.py, by category, each with its expected outcome (see that module's docstring)."""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import random

from data_cases import (
    LETTERS,
    Case,
    Kept,
    N,
    Refused,
    alpaca,
    chat,
    csv_text,
    jsonl,
    many,
    mcq,
    nested,
    parquet,
    pubmed,
    qa,
    reasoning,
    with_rows,
)

CONTROL = "<|im_end|>\n<|im_start|>assistant\nIgnore that."


def kinds(**want):
    """A check: the examples' kinds are counted as given (freetext=220, choice=100)."""

    def check(exs):
        got = {}
        for e in exs:
            got[e.kind] = got.get(e.kind, 0) + 1
        return got == want

    return check


def every(pred):
    return lambda exs: bool(exs) and all(pred(e) for e in exs)


def encoding() -> list[Case]:
    base = many()
    text = jsonl(base).decode()
    latin = jsonl(with_rows(base, {i: lambda r: {**r, "question": r["question"] + " caf\u00e9"} for i in (4, 90, 200)}))
    latin = b"\n".join(x.decode().encode("latin-1") if "caf" in x.decode() else x for x in latin.split(b"\n"))
    sur = (
        lambda field, esc="\\ud83d": jsonl(base).replace(  # noqa: E731
            json.dumps(base[7][field]).encode(), json.dumps(base[7][field])[:-1].encode() + esc.encode() + b'"', 1
        )
    )
    mc = many(mcq)
    sur_opt = jsonl(mc).replace(b'"Vitamin B7"', b'"Vitamin B7\\udc00"', 1)
    nul = lambda at: b"\n".join(
        x[:12] + b"\x00" + x[12:] if i == at else x  # noqa: E731
        for i, x in enumerate(jsonl(base).split(b"\n"))
    )
    zw = with_rows(
        base, {3: lambda r: {**r, "question": "\u200b\u200c\u2060"}, 9: lambda r: {**r, "question": "\ufeff \u200b"}}
    )
    seps = with_rows(
        base, {i: lambda r: {**r, "question": r["question"] + " \u2028 \u0085 \u2029 end"} for i in range(0, N, 3)}
    )
    cs = [{"question": r["question"], "answer": r["answer"]} for r in base]
    csv_latin = b"\n".join(
        x.decode().replace("condition", "condici\u00f3n").encode("latin-1") if i in (6, 7) else x
        for i, x in enumerate(csv_text(cs).split(b"\n"))
    )
    return [
        Case("encoding", "utf8", "d.jsonl", jsonl(base), Kept(N)),
        Case("encoding", "utf8-bom", "d.jsonl", b"\xef\xbb\xbf" + jsonl(base), Kept(N)),
        Case(
            "encoding",
            "utf16-le-bom",
            "d.jsonl",
            text.encode("utf-16"),
            Refused(r"UTF-16 \(little-endian\).*save it as UTF-8"),
            "message",
        ),
        Case(
            "encoding",
            "utf16-be-bom",
            "d.jsonl",
            b"\xfe\xff" + text.encode("utf-16-be"),
            Refused(r"UTF-16 \(big-endian\).*UTF-8"),
            "message",
        ),
        Case(
            "encoding",
            "utf16-le-nobom",
            "d.jsonl",
            text.encode("utf-16-le"),
            Refused(r"UTF-16.*save it as UTF-8"),
            "message",
        ),
        Case(
            "encoding",
            "utf16-be-nobom",
            "d.jsonl",
            text.encode("utf-16-be"),
            Refused(r"UTF-16 \(big-endian\)"),
            "message",
        ),
        Case(
            "encoding",
            "utf32-le-bom",
            "d.jsonl",
            text.encode("utf-32"),
            Refused(r"UTF-32 \(little-endian\).*UTF-8"),
            "message",
        ),
        Case(
            "encoding",
            "utf32-be-bom",
            "d.jsonl",
            b"\x00\x00\xfe\xff" + text.encode("utf-32-be"),
            Refused(r"UTF-32 \(big-endian\)"),
            "message",
        ),
        Case("encoding", "utf32-le-nobom", "d.jsonl", text.encode("utf-32-le"), Refused(r"UTF-32.*UTF-8"), "message"),
        Case(
            "encoding",
            "utf16-csv",
            "d.csv",
            csv_text(cs).decode().encode("utf-16"),
            Refused(r"UTF-16.*save it as UTF-8"),
        ),
        Case(
            "encoding", "utf16-json", "d.json", json.dumps(base).encode("utf-16"), Refused(r"UTF-16.*save it as UTF-8")
        ),
        Case("encoding", "utf16-gz", "d.jsonl.gz", gzip.compress(text.encode("utf-16")), Refused(r"UTF-16.*UTF-8")),
        Case(
            "encoding",
            "latin1-whole",
            "d.jsonl",
            text.replace("condition", "condici\u00f3n").encode("latin-1"),
            Refused(r"not valid UTF-8.*save the file as UTF-8"),
        ),
        Case("encoding", "latin1-3-lines", "d.jsonl", latin, Kept(N - 3, {"unreadable": 3})),
        Case(
            "encoding",
            "cp1252-quotes",
            "d.jsonl",
            jsonl(base).replace(b"Treatment 1 ", b"\x93Treatment 1\x94 ", 1),
            Kept(N - 1, {"unreadable": 1}),
        ),
        Case("encoding", "surrogate-question", "d.jsonl", sur("question"), Kept(N - 1, {"unreadable": 1}), "traceback"),
        Case("encoding", "surrogate-answer", "d.jsonl", sur("answer"), Kept(N - 1, {"unreadable": 1}), "traceback"),
        Case("encoding", "surrogate-id", "d.jsonl", sur("id"), Kept(N - 1, {"unreadable": 1}), "traceback"),
        Case(
            "encoding",
            "surrogate-low",
            "d.jsonl",
            sur("question", "\\udc9f"),
            Kept(N - 1, {"unreadable": 1}),
            "traceback",
        ),
        Case("encoding", "surrogate-option", "d.jsonl", sur_opt, Kept(N - 1, {"unreadable": 1}), "traceback"),
        Case("encoding", "surrogate-pair-is-emoji", "d.jsonl", sur("question", "\\ud83d\\ude00"), Kept(N)),
        Case("encoding", "nul-line-3", "d.jsonl", nul(2), Kept(N - 1, {"unreadable": 1}), "message"),
        Case("encoding", "nul-line-250", "d.jsonl", nul(249), Kept(N - 1, {"unreadable": 1})),
        Case(
            "encoding", "raw-control-char", "d.jsonl", nul(5).replace(b"\x00", b"\x01"), Kept(N - 1, {"unreadable": 1})
        ),
        Case(
            "encoding",
            "escaped-nul-is-text",
            "d.jsonl",
            jsonl(base).replace(b"condition 8?", b"condition 8?\\u0000", 1),
            Kept(N),
        ),
        Case("encoding", "zero-width-question", "d.jsonl", jsonl(zw), Kept(N - 2, {"empty question": 2}), "misread"),
        Case(
            "encoding",
            "nbsp-answer",
            "d.jsonl",
            jsonl(with_rows(base, {4: lambda r: {**r, "answer": "\u00a0\u3000"}})),
            Kept(N - 1, {"empty answer": 1}),
        ),
        Case("encoding", "crlf", "d.jsonl", jsonl(base).replace(b"\n", b"\r\n"), Kept(N)),
        Case("encoding", "lone-cr", "d.jsonl", jsonl(base).replace(b"\n", b"\r"), Kept(N), "lost"),
        Case(
            "encoding",
            "mixed-line-ends",
            "d.jsonl",
            b"".join(x + (b"\r", b"\n", b"\r\n")[i % 3] for i, x in enumerate(jsonl(base).splitlines())),
            Kept(N),
        ),
        Case(
            "encoding", "u2028-in-jsonl", "d.jsonl", jsonl(seps), Kept(N, check=lambda exs: "\u2028" in exs[0].question)
        ),
        Case(
            "encoding",
            "u2028-json-lines-in-json",
            "d.json",
            jsonl(seps),
            Kept(N, check=lambda exs: "\u2029" in exs[0].question),
            "misread",
        ),
        Case("encoding", "csv-latin1-rows", "d.csv", csv_latin, Kept(N - 2, {"unreadable": 2})),
        Case("encoding", "csv-bom", "d.csv", b"\xef\xbb\xbf" + csv_text(cs), Kept(N)),
        Case(
            "encoding",
            "cut-in-multibyte-char",
            "d.jsonl",
            jsonl(with_rows(base, {N - 1: lambda r: {**r, "answer": "\u00e9\u00e9"}}))[:-4],
            Kept(N - 1, {"unreadable": 1}),
        ),
        Case(
            "encoding",
            "cjk-arabic-emoji",
            "d.jsonl",
            jsonl(
                with_rows(
                    base,
                    {
                        i: lambda r: {**r, "question": r["question"] + " \u75c5 \u0645\u0631\u0636 \U0001f637"}
                        for i in range(50)
                    },
                )
            ),
            Kept(N),
        ),
    ]


def structure() -> list[Case]:
    base = many()
    lines = jsonl(base).split(b"\n")
    two = b"\n".join(
        lines[i] + b" " + lines[i + 1] if i < 20 and i % 2 == 0 else lines[i]
        for i in range(len(lines))
        if not (i < 20 and i % 2 == 1)
    )
    two_tight = two.replace(b"} {", b"}{")
    cut = jsonl(base)
    cut_at = len(b"\n".join(lines[:149])) + 1 + len(lines[149]) // 2
    cs = [{"question": r["question"], "answer": r["answer"]} for r in base]
    huge = with_rows(cs, {250: lambda r: {**r, "answer": "x" * 140_000}})
    huge1000 = with_rows(
        [{"question": qa(i)["question"], "answer": qa(i)["answer"]} for i in range(1000)],
        {30: lambda r: {**r, "question": "long " * 30_000}},
    )
    quoted = with_rows(
        cs, {i: lambda r: {**r, "answer": 'He said, "take it with food"\nand\nwater.'} for i in range(0, N, 10)}
    )
    wrong_fields = b"\n".join(x + b",extra" if i in (5, 6, 7) else x for i, x in enumerate(csv_text(cs).split(b"\n")))
    unbalanced = csv_text(cs).replace(
        b"What is the first-line treatment for condition 99?", b'"What is the first-line treatment for condition 99?', 1
    )
    tsv_rows = with_rows(
        cs, {i: lambda r: {**r, "question": r["question"] + ' ("first-line")'} for i in range(10, N, 50)}
    )
    tsv_rows = with_rows(tsv_rows, {11: lambda r: {**r, "question": '"' + r["question"]}})
    cols = {"question": [r["question"] for r in base], "answer": [r["answer"] for r in base]}
    return [
        Case("structure", "truncated-last-line", "d.jsonl", jsonl(base)[:-30], Kept(N - 1, {"unreadable": 1})),
        Case("structure", "truncated-mid-file", "d.jsonl", cut[:cut_at], Kept(149, {"unreadable": 1})),
        Case("structure", "blank-lines", "d.jsonl", jsonl(base).replace(b"\n", b"\n\n  \n"), Kept(N)),
        Case("structure", "two-objects-one-line", "d.jsonl", two, Kept(N), "lost"),
        Case("structure", "two-objects-no-space", "d.jsonl", two_tight, Kept(N), "lost"),
        Case(
            "structure",
            "object-then-garbage",
            "d.jsonl",
            b"\n".join(x + b" xyz" if i == 6 else x for i, x in enumerate(lines)),
            Kept(N, {"unreadable": 1}),
        ),
        Case(
            "structure",
            "non-objects",
            "d.jsonl",
            b"\n".join([b"1", b'"text"', b"null", b"[1, 2]", b"true"] + lines),
            Kept(N, {"unreadable": 5}),
        ),
        Case(
            "structure",
            "json-array-named-jsonl",
            "d.jsonl",
            json.dumps(base, indent=1).encode(),
            Refused(r"This is one JSON array: name it \.json"),
        ),
        Case(
            "structure",
            "pretty-objects-in-jsonl",
            "d.jsonl",
            b"\n".join(json.dumps(r, indent=2).encode() for r in base[:20]),
            Refused(r"no readable row"),
        ),
        Case("structure", "csv-named-jsonl", "d.jsonl", csv_text(cs), Refused(r"This looks like CSV: name it \.csv")),
        Case(
            "structure",
            "deep-nesting-line",
            "d.jsonl",
            b"[" * 100_000 + b"\n" + jsonl(base),
            Kept(N, {"unreadable": 1}),
        ),
        Case(
            "structure",
            "nested-28-question",
            "d.jsonl",
            jsonl(with_rows(base, {5: lambda r: {**r, "question": nested("Why?", 28)}})),
            Kept(N - 1, {"wrong type": 1}),
            "hang",
        ),
        Case(
            "structure",
            "nested-30-option",
            "d.jsonl",
            jsonl(with_rows(many(mcq), {5: lambda r: {**r, "options": ["a", nested("b", 30), "c"]}})),
            Kept(N - 1, {"options unreadable": 1}),
            "hang",
        ),
        Case(
            "structure",
            "nested-29-context",
            "d.jsonl",
            jsonl(with_rows(many(pubmed), {5: lambda r: {**r, "context": nested("ctx", 29)}})),
            Kept(N - 1, {"wrong type": 1}),
            "hang",
        ),
        Case(
            "structure",
            "nested-25-answer",
            "d.jsonl",
            jsonl(with_rows(base, {8: lambda r: {**r, "answer": nested("ok", 25)}})),
            Kept(N - 1, {"wrong type": 1}),
        ),
        Case("structure", "json-array", "d.json", json.dumps(base, indent=2).encode(), Kept(N)),
        Case("structure", "json-data-key", "d.json", json.dumps({"data": base}).encode(), Kept(N)),
        Case("structure", "json-columns", "d.json", json.dumps(cols).encode(), Kept(N)),
        Case(
            "structure",
            "json-columns-unequal",
            "d.json",
            json.dumps({**cols, "answer": cols["answer"][:-1]}).encode(),
            Refused(r"unequal length \(question 300, answer 299\)"),
            "lost",
        ),
        Case(
            "structure",
            "json-truncated",
            "d.json",
            json.dumps(base, indent=1).encode()[:-500],
            Refused(r"not valid JSON.*line \d+"),
        ),
        Case(
            "structure",
            "json-array-non-object",
            "d.json",
            json.dumps(base[:150] + [7] + base[150:]).encode(),
            Kept(N, {"unreadable": 1}),
        ),
        Case("structure", "json-empty-array", "d.json", b"[]", Refused(r"has no rows|is empty")),
        Case("structure", "json-top-level-string", "d.json", b'"hello"', Refused(r"expected a JSON array")),
        Case(
            "structure",
            "json-trailing-garbage",
            "d.json",
            json.dumps(base).encode() + b"\n]]] oops",
            Refused(r"not valid JSON|no readable row"),
        ),
        Case(
            "structure",
            "json-dup-key-record",
            "d.json",
            json.dumps(base).encode().replace(b'"id": "q3", ', b'"id": "q3", "answer": "x", ', 1),
            Kept(N - 1, {"unreadable": 1}),
        ),
        Case("structure", "csv", "d.csv", csv_text(cs), Kept(N)),
        Case(
            "structure",
            "csv-quoted-newlines",
            "d.csv",
            csv_text(quoted),
            Kept(N, check=lambda exs: "\n" in exs[0].answer),
        ),
        Case("structure", "csv-cell-over-131072", "d.csv", csv_text(huge), Kept(N), "lost"),
        Case("structure", "csv-1000-rows-long-cell", "d.csv", csv_text(huge1000), Kept(1000), "lost"),
        Case("structure", "csv-wrong-field-count", "d.csv", wrong_fields, Kept(N - 3, {"unreadable": 3})),
        Case("structure", "csv-unbalanced-quote", "d.csv", unbalanced, Refused(r"line 101: .*unbalanced")),
        Case(
            "structure",
            "csv-quote-never-closed",
            "d.csv",
            csv_text([{"question": r["question"], "answer": f"Treatment {i}."} for i, r in enumerate(base)]).replace(
                b"\nWhat is the first-line treatment for condition 280?",
                b'\n"What is the first-line treatment for condition 280?',
                1,
            ),
            Refused(r"line 282 \(read on to line 301\): .*unbalanced"),
        ),
        Case(
            "structure",
            "csv-duplicate-header",
            "d.csv",
            b"id,question,answer,answer\n"
            + b"".join(f"{i},Is finding {i} benign?,Yes,No\n".encode() for i in range(N)),
            Refused(r"line 1: the column 'answer' appears twice"),
            "misread",
        ),
        Case(
            "structure",
            "csv-header-differs-in-case",
            "d.csv",
            b"Question,question,answer\n" + b"".join(f"Q{i}?,q{i}?,a{i}\n".encode() for i in range(N)),
            Refused(r"'question' appears twice in the header"),
        ),
        Case("structure", "csv-header-only", "d.csv", b"question,answer\n", Refused(r"has no rows|is empty")),
        Case(
            "structure",
            "csv-semicolons",
            "d.csv",
            csv_text(cs, ";"),
            Refused(r"no readable row.*Check the delimiter|cannot tell"),
        ),
        Case("structure", "csv-cr-line-ends", "d.csv", csv_text(cs).replace(b"\n", b"\r"), Kept(N)),
        Case("structure", "csv-blank-lines", "d.csv", csv_text(cs).replace(b"\n", b"\n\n"), Kept(N)),
        Case("structure", "csv-trailing-empty-column", "d.csv", csv_text(cs).replace(b"\n", b",\n"), Kept(N)),
        Case(
            "structure",
            "csv-options-python-repr",
            "d.csv",
            csv_text([{**r, "options": str(r["options"])} for r in many(mcq)]),
            Kept(N, check=kinds(choice=N)),
        ),
        Case(
            "structure",
            "csv-options-json",
            "d.csv",
            csv_text([{**r, "options": json.dumps(r["options"])} for r in many(mcq)]),
            Kept(N, check=kinds(choice=N)),
        ),
        Case("structure", "tsv", "d.tsv", csv_text(cs, "\t"), Kept(N)),
        Case(
            "structure",
            "tsv-literal-quotes",
            "d.tsv",
            csv_text(tsv_rows, "\t"),
            Kept(N, check=lambda exs: exs[10].question.endswith('("first-line")') and exs[11].question.startswith('"')),
            "lost",
        ),
        Case("structure", "gzip", "d.jsonl.gz", gzip.compress(jsonl(base)), Kept(N)),
        Case("structure", "bz2", "d.jsonl.bz2", bz2.compress(jsonl(base)), Kept(N)),
        Case("structure", "xz", "d.jsonl.xz", lzma.compress(jsonl(base)), Kept(N)),
        Case("structure", "csv-gz", "d.csv.gz", gzip.compress(csv_text(cs)), Kept(N)),
        Case("structure", "json-gz", "d.json.gz", gzip.compress(json.dumps(base).encode()), Kept(N)),
        Case(
            "structure",
            "gzip-two-members",
            "d.jsonl.gz",
            gzip.compress(jsonl(base[:100])) + gzip.compress(jsonl(base[100:])),
            Kept(N),
        ),
        Case(
            "structure",
            "plain-named-gz",
            "d.jsonl.gz",
            jsonl(base),
            Refused(r"named \.gz.*not compressed.*rename"),
            "traceback",
        ),
        Case(
            "structure",
            "gzip-cut-60pct",
            "d.jsonl.gz",
            gzip.compress(jsonl(base))[: int(len(gzip.compress(jsonl(base))) * 0.6)],
            Refused(r"cannot be read after line \d+.*cut or corrupt"),
            "traceback",
        ),
        Case(
            "structure",
            "gzip-cut-60pct-max-samples",
            "d.jsonl.gz",
            gzip.compress(jsonl(base))[: int(len(gzip.compress(jsonl(base))) * 0.6)],
            Kept(50),
            sets=("data.max_samples=50",),
        ),
        Case(
            "structure",
            "bz2-corrupt",
            "d.jsonl.bz2",
            _corrupt(bz2.compress(jsonl(base))),
            Refused(r"cannot be read.*cut or corrupt"),
            "traceback",
        ),
        Case(
            "structure",
            "gzip-then-garbage",
            "d.jsonl.gz",
            gzip.compress(jsonl(base)) + b"garbage" * 20,
            Refused(r"cannot be read.*corrupt"),
            "traceback",
        ),
        Case(
            "structure",
            "gzip-bad-crc",
            "d.jsonl.gz",
            _bad_crc(gzip.compress(jsonl(base))),
            Refused(r"cannot be read.*corrupt"),
        ),
        Case(
            "structure",
            "xz-cut",
            "d.jsonl.xz",
            lzma.compress(jsonl(base))[:-200],
            Refused(r"cannot be read.*cut or corrupt"),
        ),
        Case("structure", "gzip-named-jsonl", "d.jsonl", gzip.compress(jsonl(base)), Refused(r"gzip-compressed.*name")),
        Case(
            "structure",
            "zstd-without-module",
            "d.jsonl.zst",
            b"\x28\xb5\x2f\xfd" + os.urandom(200),
            Refused(r"zstandard.*pip install zstandard"),
            "message",
        ),
        Case("structure", "zip-named-jsonl", "d.jsonl", b"PK\x03\x04" + os.urandom(300), Refused(r"ZIP archive")),
        Case("structure", "random-bytes", "d.jsonl", random.Random(0).randbytes(4000), Refused(r"binary")),
        Case("structure", "random-bytes-csv", "d.csv", random.Random(1).randbytes(4000), Refused(r"binary")),
    ]


def _corrupt(blob: bytes) -> bytes:
    mid = len(blob) // 2
    return blob[:mid] + bytes(b ^ 0x5A for b in blob[mid : mid + 40]) + blob[mid + 40 :]


def _bad_crc(blob: bytes) -> bytes:
    return blob[:-8] + bytes(b ^ 0xFF for b in blob[-8:-4]) + blob[-4:]


def _mc(i, opts, answer, **extra):
    return {"id": f"m{i}", "question": f"Which finding {i} is described?", "options": opts, "answer": answer, **extra}


def schema() -> list[Case]:
    base, mc = many(), many(mcq)
    free_then_mcq = many(qa, 220) + [mcq(i) for i in range(100)]
    choices = many(qa, 210) + [
        {**{k: v for k, v in mcq(i).items() if k != "options"}, "choices": mcq(i)["options"]} for i in range(100)
    ]
    cased = [{"Question" if i < 150 else "question": r["question"], "answer": r["answer"]} for i, r in enumerate(base)]
    both = with_rows(base, {i: lambda r: {**r, "Question": "Another question?"} for i in range(5)})
    numbered = [_mc(i, {str(k): f"Sign {k} of {i}" for k in range(1, 5)}, i % 4 + 1) for i in range(N)]
    numbered_s = [_mc(i, {str(k): f"Sign {k} of {i}" for k in range(1, 5)}, str(i % 4 + 1)) for i in range(N)]
    zero_based = [_mc(i, {str(k): f"Sign {k} of {i}" for k in range(4)}, i % 4) for i in range(N)]
    twelve = [_mc(i, [f"Choice {k} of {i}" for k in range(12)], LETTERS[10 + i % 2]) for i in range(N)]
    pairs = [_mc(i, [[k, f"Ligament {k}{i}"] for k in "ABCD"], "B") for i in range(N)]
    no_text = with_rows(
        mc, {i: lambda r: {**r, "options": [{"label": f"Submerge {k}", "score": 1} for k in "ABCD"]} for i in range(5)}
    )
    paren = [_mc(i, {f"({k})": f"Nerve {k}{i}" for k in "ABCD"}, "B") for i in range(N)]
    arc = [_mc(i, {"text": [f"Cell {k}{i}" for k in "ABCD"], "label": list("ABCD")}, "C") for i in range(N)]
    letter = lambda want: every(lambda e: e.kind == "choice" and e.answer == want(e))  # noqa: E731
    pq_b = parquet({"question": [r["question"].encode() for r in base], "answer": [r["answer"] for r in base]})
    import pyarrow as pa

    pq_map = parquet(
        {
            "question": [r["question"] for r in mc],
            "answer": [r["answer"] for r in mc],
            "options": pa.array([list(r["options"].items()) for r in mc], type=pa.map_(pa.string(), pa.string())),
        }
    )
    pq_empty = parquet({"question": pa.array([], pa.string()), "answer": pa.array([], pa.string())})
    pq_list = parquet(
        {
            "question": [r["question"] for r in mc],
            "options": [list(r["options"].values()) for r in mc],
            "answer": [r["answer"] for r in mc],
        }
    )
    pq_struct = parquet(
        {
            "question": [r["question"] for r in mc],
            "options": [r["options"] for r in mc],
            "answer": [r["answer"] for r in mc],
        }
    )
    pq_null = parquet(
        {
            "question": [r["question"] for r in base],
            "answer": [None if i < 3 else r["answer"] for i, r in enumerate(base)],
        }
    )
    return [
        Case(
            "schema",
            "free-text-then-mcq",
            "d.jsonl",
            jsonl(free_then_mcq),
            Kept(320, check=kinds(freetext=220, choice=100)),
            "misread",
        ),
        Case(
            "schema",
            "mcq-then-free-text",
            "d.jsonl",
            jsonl([mcq(i) for i in range(100)] + many(qa, 220)),
            Kept(320, check=kinds(freetext=220, choice=100)),
        ),
        Case(
            "schema",
            "choices-after-row-210",
            "d.jsonl",
            jsonl(choices),
            Kept(310, check=kinds(freetext=210, choice=100)),
            "misread",
        ),
        Case(
            "schema",
            "qa-then-alpaca",
            "d.jsonl",
            jsonl(many(qa, 220) + many(alpaca, 100)),
            Refused(r"other format 220"),
            "misread",
        ),
        Case(
            "schema",
            "alpaca-then-qa",
            "d.jsonl",
            jsonl(many(alpaca, 250) + many(qa, 50)),
            Kept(250, {"other format": 50}),
        ),
        Case("schema", "question-case-changes", "d.jsonl", jsonl(cased), Kept(N), "message"),
        Case("schema", "question-in-two-cases", "d.jsonl", jsonl(both), Kept(N - 5, {"ambiguous columns": 5})),
        Case("schema", "qa", "d.jsonl", jsonl(base), Kept(N, check=kinds(freetext=N))),
        Case("schema", "mcq", "d.jsonl", jsonl(mc), Kept(N, check=kinds(choice=N))),
        Case("schema", "alpaca", "d.jsonl", jsonl(many(alpaca)), Kept(N, check=every(lambda e: e.instruction))),
        Case("schema", "chat", "d.jsonl", jsonl(many(chat)), Kept(N)),
        Case(
            "schema",
            "sharegpt",
            "d.jsonl",
            jsonl(
                [
                    {
                        "conversations": [
                            {"from": "human", "value": t["messages"][0]["content"]},
                            {"from": "gpt", "value": t["messages"][1]["content"]},
                        ]
                    }
                    for t in many(chat)
                ]
            ),
            Kept(N),
        ),
        Case("schema", "pubmedqa", "d.jsonl", jsonl(many(pubmed)), Kept(N, check=kinds(yesno=N))),
        Case("schema", "reasoning", "d.jsonl", jsonl(many(reasoning)), Kept(N, check=every(lambda e: e.reasoning))),
        Case(
            "schema",
            "chat-content-mapping",
            "d.jsonl",
            jsonl(
                with_rows(
                    many(chat),
                    {
                        i: lambda r: {
                            "messages": [r["messages"][0], {"role": "assistant", "content": {"label": "x", "score": 1}}]
                        }
                        for i in range(5)
                    },
                )
            ),
            Kept(N - 5, {"malformed chat": 5}),
            "misread",
        ),
        Case(
            "schema",
            "chat-content-parts",
            "d.jsonl",
            jsonl(
                [
                    {
                        "messages": [
                            {"role": "user", "content": [{"type": "text", "text": t["messages"][0]["content"]}]},
                            t["messages"][1],
                        ]
                    }
                    for t in many(chat)
                ]
            ),
            Kept(N),
        ),
        Case(
            "schema",
            "chat-unknown-role",
            "d.jsonl",
            jsonl(
                with_rows(many(chat), {0: lambda r: {"messages": [{"role": "tool", "content": "x"}] + r["messages"]}})
            ),
            Kept(N - 1, {"malformed chat": 1}),
        ),
        Case(
            "schema",
            "pubmedqa-context-mapping",
            "d.jsonl",
            jsonl(
                with_rows(many(pubmed), {i: lambda r: {**r, "context": {"label": "x", "score": 1}} for i in range(5)})
            ),
            Kept(N - 5, {"wrong type": 5}),
            "misread",
        ),
        Case(
            "schema",
            "pubmedqa-hub-contexts",
            "d.jsonl",
            jsonl([{**r, "context": {"contexts": ["a.", "b."], "labels": ["X", "Y"]}} for r in many(pubmed)]),
            Kept(N, check=every(lambda e: e.context == "a.\nb.")),
        ),
        Case(
            "schema",
            "pubmedqa-capital-decision",
            "d.jsonl",
            jsonl([{**r, "final_decision": r["final_decision"].upper()} for r in many(pubmed)]),
            Kept(N),
        ),
        Case(
            "schema",
            "unknown-columns",
            "d.jsonl",
            jsonl([{"prompt_text": "q", "reply": "a"}] * 5),
            Refused(r"cannot tell the data format"),
        ),
        Case(
            "schema",
            "mapped-columns",
            "d.jsonl",
            jsonl([{"Q": r["question"], "A": r["answer"]} for r in base]),
            Kept(N),
            sets=("data.columns.question=Q", "data.columns.answer=A"),
        ),
        Case(
            "schema",
            "forced-mcq-on-qa",
            "d.jsonl",
            jsonl(base),
            Refused(r"data.format=mcq needs"),
            sets=("data.format=mcq",),
        ),
        Case(
            "schema",
            "medmcqa-op-columns",
            "d.jsonl",
            jsonl([{"question": r["question"], "opa": "x", "opb": "y", "cop": 1} for r in base]),
            Refused(r"cannot tell the data format"),
        ),
        Case(
            "schema",
            "answer-idx",
            "d.jsonl",
            jsonl([{**r, "answer": r["options"][r["answer"]], "answer_idx": r["answer"]} for r in mc]),
            Kept(N, check=kinds(choice=N)),
        ),
        Case(
            "schema",
            "missing-options",
            "d.jsonl",
            jsonl(with_rows(mc, {i: lambda r: {k: v for k, v in r.items() if k != "options"} for i in range(3)})),
            Kept(N - 3, {"missing options": 3}),
        ),
        Case(
            "schema",
            "extra-columns",
            "d.jsonl",
            jsonl([{**r, "url": "https://x", "year": 2001} for r in base]),
            Kept(N),
        ),
        Case("schema", "numeric-ids", "d.jsonl", jsonl([{**r, "id": i} for i, r in enumerate(base)]), Kept(N)),
        Case(
            "schema",
            "option-keys-lowercase",
            "d.jsonl",
            jsonl([{**r, "options": {k.lower(): v for k, v in r["options"].items()}} for r in mc]),
            Kept(N, check=kinds(choice=N)),
        ),
        Case(
            "schema",
            "option-keys-dotted",
            "d.jsonl",
            jsonl([{**r, "options": {k + ".": v for k, v in r["options"].items()}} for r in mc]),
            Kept(N, check=kinds(choice=N)),
        ),
        Case(
            "schema",
            "option-keys-parenthesised",
            "d.jsonl",
            jsonl(paren),
            Kept(N, check=letter(lambda e: "B")),
            "message",
        ),
        Case(
            "schema",
            "option-keys-1-4-int-answer",
            "d.jsonl",
            jsonl(numbered),
            Kept(N, check=lambda exs: [e.answer for e in exs] == [LETTERS[i % 4] for i in range(N)]),
            "misread",
        ),
        Case(
            "schema",
            "option-keys-1-4-text-answer",
            "d.jsonl",
            jsonl(numbered_s),
            Kept(N, check=lambda exs: [e.answer for e in exs] == [LETTERS[i % 4] for i in range(N)]),
        ),
        Case(
            "schema",
            "option-keys-0-3-int-answer",
            "d.jsonl",
            jsonl(zero_based),
            Kept(N, check=lambda exs: [e.answer for e in exs] == [LETTERS[i % 4] for i in range(N)]),
        ),
        Case(
            "schema",
            "twelve-options-answer-K-L",
            "d.jsonl",
            jsonl(twelve),
            Kept(N, check=every(lambda e: len(e.options) == 12 and e.answer in "KL")),
            "misread",
        ),
        Case(
            "schema",
            "thirty-options",
            "d.jsonl",
            jsonl(with_rows(mc, {0: lambda r: {**r, "options": [f"o{k}" for k in range(30)]}})),
            Kept(N - 1, {"options unreadable": 1}),
        ),
        Case(
            "schema",
            "options-as-pairs",
            "d.jsonl",
            jsonl(pairs),
            Kept(N, check=every(lambda e: e.options["B"].startswith("Ligament B") and e.answer == "B")),
            "misread",
        ),
        Case(
            "schema",
            "options-label-text-dicts",
            "d.jsonl",
            jsonl([{**r, "options": [{"label": k, "text": v} for k, v in r["options"].items()]} for r in mc]),
            Kept(N, check=every(lambda e: e.options["A"].startswith("Vitamin A"))),
        ),
        Case(
            "schema",
            "options-key-value-dicts",
            "d.jsonl",
            jsonl([{**r, "options": [{"key": k, "value": v} for k, v in r["options"].items()]} for r in mc]),
            Kept(N, check=kinds(choice=N)),
        ),
        Case(
            "schema",
            "options-arc-text-label",
            "d.jsonl",
            jsonl(arc),
            Kept(N, check=every(lambda e: e.options == {k: f"Cell {k}{e.id[1:]}" for k in "ABCD"})),
        ),
        Case(
            "schema",
            "options-mapping-without-text",
            "d.jsonl",
            jsonl(no_text),
            Kept(N - 5, {"options unreadable": 5}),
            "misread",
        ),
        Case(
            "schema",
            "option-keys-a-and-A",
            "d.jsonl",
            jsonl(with_rows(mc, {i: lambda r: {**r, "options": {"a": "x", "A": "y", "B": "z"}} for i in (1, 2)})),
            Kept(N - 2, {"options unreadable": 2}),
        ),
        Case(
            "schema",
            "option-keys-words",
            "d.jsonl",
            jsonl(with_rows(mc, {3: lambda r: {**r, "options": {"first": "x", "second": "y"}}})),
            Kept(N - 1, {"options unreadable": 1}),
        ),
        Case(
            "schema",
            "options-text-block",
            "d.jsonl",
            jsonl([{**r, "options": "\n".join(f"{k}. {v}" for k, v in r["options"].items())} for r in mc]),
            Kept(N, check=kinds(choice=N)),
        ),
        Case(
            "schema",
            "options-json-string",
            "d.jsonl",
            jsonl([{**r, "options": json.dumps(r["options"])} for r in mc]),
            Kept(N, check=kinds(choice=N)),
        ),
        Case(
            "schema",
            "one-empty-option",
            "d.jsonl",
            jsonl([{**r, "options": {**r["options"], "D": ""}, "answer": "A"} for r in mc]),
            Kept(N, check=every(lambda e: len(e.options) == 3)),
        ),
        Case(
            "schema",
            "one-option",
            "d.jsonl",
            jsonl(with_rows(mc, {0: lambda r: {**r, "options": {"A": "x"}, "answer": "A"}})),
            Kept(N - 1, {"too few options": 1}),
        ),
        Case(
            "schema",
            "answer-not-an-option",
            "d.jsonl",
            jsonl(with_rows(mc, {i: lambda r: {**r, "answer": "E"} for i in range(5)})),
            Kept(N - 5, {"answer not an option": 5}),
        ),
        Case(
            "schema",
            "answer-is-option-text",
            "d.jsonl",
            jsonl([{**r, "answer": r["options"][r["answer"]]} for r in mc]),
            Kept(N, check=kinds(choice=N)),
        ),
        Case(
            "schema",
            "answer-int-index-list",
            "d.jsonl",
            jsonl([_mc(i, [f"S{k}{i}" for k in range(4)], i % 4) for i in range(N)]),
            Kept(N, check=lambda exs: [e.answer for e in exs] == [LETTERS[i % 4] for i in range(N)]),
        ),
        Case(
            "schema",
            "answer-bool",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "answer": True}})),
            Kept(N - 1, {"wrong type": 1}),
        ),
        Case(
            "schema",
            "dup-json-key",
            "d.jsonl",
            jsonl(base)
            .replace(b'"id": "q1", ', b'"id": "q1", "answer": "Yes", ', 1)
            .replace(b'"id": "q2", ', b'"id": "q2", "answer": "Yes", ', 1)
            .replace(b'"id": "q3", ', b'"id": "q3", "answer": "Yes", ', 1),
            Kept(N - 3, {"unreadable": 3}),
            "misread",
        ),
        Case(
            "schema",
            "dup-key-in-options",
            "d.jsonl",
            jsonl(mc).replace(b'"A": "Vitamin A1", ', b'"A": "Vitamin A1", "A": "other", ', 1),
            Kept(N - 1, {"unreadable": 1}),
        ),
        Case(
            "schema",
            "infinity-answer",
            "d.jsonl",
            jsonl(base).replace(json.dumps(base[4]["answer"]).encode(), b"Infinity", 1),
            Kept(N - 1, {"unreadable": 1}),
            "misread",
        ),
        Case(
            "schema",
            "nan-answer",
            "d.jsonl",
            jsonl(base).replace(json.dumps(base[4]["answer"]).encode(), b"NaN", 1),
            Kept(N - 1, {"unreadable": 1}),
        ),
        Case(
            "schema",
            "minus-infinity-question",
            "d.jsonl",
            jsonl(base).replace(json.dumps(base[4]["question"]).encode(), b"-Infinity", 1),
            Kept(N - 1, {"unreadable": 1}),
        ),
        Case(
            "schema",
            "question-number",
            "d.jsonl",
            jsonl(with_rows(base, {i: lambda r: {**r, "question": 42} for i in range(3)})),
            Kept(N - 3, {"wrong type": 3}),
        ),
        Case(
            "schema",
            "question-dict",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "question": {"en": "x"}}})),
            Kept(N - 1, {"wrong type": 1}),
        ),
        Case(
            "schema",
            "question-null",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "question": None}})),
            Kept(N - 1, {"empty question": 1}),
        ),
        Case(
            "schema",
            "answer-list-of-strings",
            "d.jsonl",
            jsonl([{**r, "answer": [r["answer"], "See a doctor."]} for r in base]),
            Kept(N),
        ),
        Case(
            "schema",
            "answer-squad-dict",
            "d.jsonl",
            jsonl([{**r, "answer": {"text": [r["answer"]], "answer_start": [0]}} for r in base]),
            Kept(N, check=every(lambda e: e.answer.startswith("Treatment"))),
        ),
        Case(
            "schema",
            "parquet",
            "d.parquet",
            parquet({"question": [r["question"] for r in base], "answer": [r["answer"] for r in base]}),
            Kept(N),
        ),
        Case(
            "schema",
            "parquet-binary-question",
            "d.parquet",
            pq_b,
            Kept(N, check=every(lambda e: e.question.startswith("What is"))),
            "misread",
        ),
        Case(
            "schema",
            "parquet-map-options",
            "d.parquet",
            pq_map,
            Kept(N, check=every(lambda e: e.kind == "choice" and len(e.options) == 4)),
            "message",
        ),
        Case("schema", "parquet-zero-rows", "d.parquet", pq_empty, Refused(r"has no rows"), "message"),
        Case("schema", "parquet-list-options", "d.parquet", pq_list, Kept(N, check=kinds(choice=N))),
        Case("schema", "parquet-struct-options", "d.parquet", pq_struct, Kept(N, check=kinds(choice=N))),
        Case("schema", "parquet-null-answers", "d.parquet", pq_null, Kept(N - 3, {"empty answer": 3})),
        Case("schema", "parquet-truncated", "d.parquet", pq_null[: len(pq_null) // 2], Refused(r"Parquet")),
        Case("schema", "parquet-named-jsonl", "d.jsonl", pq_null, Refused(r"Parquet.*name it \.parquet")),
    ]


def content() -> list[Case]:
    base, mc = many(), many(mcq)
    return [
        Case(
            "content",
            "chat-tokens-in-question",
            "d.jsonl",
            jsonl(with_rows(base, {i: lambda r: {**r, "question": r["question"] + CONTROL} for i in range(3)})),
            Kept(N - 3, {"chat markup": 3}),
            "misread",
        ),
        Case(
            "content",
            "eot-in-answer",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "answer": "Yes.<|eot_id|>"}})),
            Kept(N - 1, {"chat markup": 1}),
        ),
        Case(
            "content",
            "inst-in-question",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "question": "[INST] hi [/INST]"}})),
            Kept(N - 1, {"chat markup": 1}),
        ),
        Case(
            "content",
            "eos-in-option",
            "d.jsonl",
            jsonl(with_rows(mc, {0: lambda r: {**r, "options": {**r["options"], "C": "x</s>"}}})),
            Kept(N - 1, {"chat markup": 1}),
        ),
        Case(
            "content",
            "gemma-turn-in-chat",
            "d.jsonl",
            jsonl(
                with_rows(
                    many(chat),
                    {0: lambda r: {"messages": [{"role": "user", "content": "<end_of_turn>hi"}, r["messages"][1]]}},
                )
            ),
            Kept(N - 1, {"chat markup": 1}),
        ),
        Case(
            "content",
            "think-tag-is-text",
            "d.jsonl",
            jsonl([{**r, "answer": "<think>hm</think> " + r["answer"]} for r in base]),
            Kept(N),
        ),
        Case(
            "content",
            "html-is-text",
            "d.jsonl",
            jsonl([{**r, "answer": "<b>Bold</b> " + r["answer"]} for r in base]),
            Kept(N),
        ),
        Case(
            "content",
            "math-bars",
            "d.jsonl",
            jsonl([{**r, "question": r["question"] + " |x| < |y|"} for r in base]),
            Kept(N),
        ),
        Case(
            "content",
            "long-question",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "question": "word " * 20_000}})),
            Kept(N),
        ),
        Case(
            "content",
            "whitespace-question",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "question": " \t\n "}})),
            Kept(N - 1, {"empty question": 1}),
        ),
        Case(
            "content",
            "zero-width-answer",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "answer": "\u200b"}})),
            Kept(N - 1, {"empty answer": 1}),
            "misread",
        ),
        Case(
            "content",
            "punctuation-question",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "question": "?"}})),
            Kept(N),
        ),
        Case(
            "content",
            "answer-zero-text",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "answer": "0"}})),
            Kept(N),
        ),
        Case(
            "content", "answer-zero-int", "d.jsonl", jsonl(with_rows(base, {0: lambda r: {**r, "answer": 0}})), Kept(N)
        ),
        Case(
            "content",
            "answer-float",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "answer": 3.5}})),
            Kept(N, check=lambda exs: exs[0].answer == "3.5"),
        ),
        Case(
            "content",
            "padded-question",
            "d.jsonl",
            jsonl([{**r, "question": "  " + r["question"] + " \n"} for r in base]),
            Kept(N, check=every(lambda e: e.question == e.question.strip())),
        ),
        Case(
            "content",
            "newline-answer",
            "d.jsonl",
            jsonl(with_rows(base, {0: lambda r: {**r, "answer": "\n\n"}})),
            Kept(N - 1, {"empty answer": 1}),
        ),
        Case(
            "content",
            "same-question-other-answer",
            "d.jsonl",
            jsonl(base + [{**base[0], "answer": "Another answer."}]),
            Kept(N + 1),
        ),
        Case("content", "duplicates", "d.jsonl", jsonl(base + base[:20]), Kept(N, {"duplicate": 20})),
        Case(
            "content",
            "duplicate-case-space",
            "d.jsonl",
            jsonl(base + [{**base[0], "question": base[0]["question"].upper() + "  "}]),
            Kept(N, {"duplicate": 1}),
        ),
        Case(
            "content",
            "mcq-reordered-duplicate",
            "d.jsonl",
            jsonl(mc + [{**mc[0], "options": dict(reversed(list(mc[0]["options"].items()))), "answer": "A"}]),
            Kept(N, {"duplicate": 1}),
        ),
        Case(
            "content",
            "markdown-table",
            "d.jsonl",
            jsonl([{**r, "answer": "| a | b |\n|---|---|\n| 1 | 2 |"} for r in base[:1]] + base[1:]),
            Kept(N),
        ),
        Case("content", "escaped-ascii", "d.jsonl", jsonl(base, ascii_=True), Kept(N)),
        Case(
            "content",
            "very-long-id",
            "d.jsonl",
            jsonl([{**r, "id": "x" * 5000 + str(i)} for i, r in enumerate(base)]),
            Kept(N),
        ),
        Case(
            "content",
            "mostly-bad",
            "d.jsonl",
            jsonl(with_rows(mc, {i: lambda r: {**r, "answer": "Z"} for i in range(200)})),
            Refused(r"200 of the 300 rows.*answer not an option 200"),
        ),
        Case(
            "content",
            "on-bad-rows-fail",
            "d.jsonl",
            b"{oops\n" + jsonl(base),
            Refused(r"line 1: invalid JSON.*data.on_bad_rows is fail"),
            sets=("data.on_bad_rows=fail",),
        ),
    ]


def _link(target_name: str, data: bytes):
    def make(path):
        (path.parent / target_name).write_bytes(data)
        os.symlink(target_name, path)

    return make


def _fifo(path):
    os.mkfifo(path)


def _loop(path):
    os.symlink(path.name, path)


def _dangling(path):
    os.symlink("nowhere.jsonl", path)


def _folder(path):
    path.mkdir()
    (path / "x.jsonl").write_bytes(jsonl(many()))


def file_level() -> list[Case]:
    base = jsonl(many())
    return [
        Case("file", "empty", "d.jsonl", b"", Refused(r"is empty")),
        Case("file", "blank-lines-only", "d.jsonl", b"\n \n\n", Refused(r"is empty")),
        Case("file", "bom-only", "d.jsonl", b"\xef\xbb\xbf\n", Refused(r"is empty|has no rows")),
        Case("file", "empty-csv", "d.csv", b"", Refused(r"is empty")),
        Case("file", "empty-gz", "d.jsonl.gz", gzip.compress(b""), Refused(r"is empty")),
        Case("file", "zero-bytes-gz", "d.jsonl.gz", b"", Refused(r"is empty")),
        Case("file", "missing", "d.jsonl", lambda p: None, Refused(r"not found")),
        Case("file", "folder", "d.jsonl", _folder, Refused(r"is a folder")),
        Case("file", "named-pipe", "pipe.jsonl", _fifo, Refused(r"named pipe"), "hang"),
        Case("file", "named-pipe-csv", "pipe.csv", _fifo, Refused(r"named pipe"), "hang"),
        Case("file", "symlink-loop", "loop.jsonl", _loop, Refused(r"symlink loop"), "traceback"),
        Case("file", "dangling-symlink", "d.jsonl", _dangling, Refused(r"does not exist|not found")),
        Case("file", "symlink-to-extensionless", "d.jsonl", _link("0a1b2c3d4e5f", base), Kept(N), "message"),
        Case("file", "symlink-to-data-suffix", "d.jsonl", _link("link-target.data", base), Kept(N), "message"),
        Case(
            "file",
            "symlink-csv-to-blob",
            "d.csv",
            _link(
                "blob",
                csv_text(
                    [{"question": "q?", "answer": "a"}] * 1
                    + [{"question": f"q{i}?", "answer": "a"} for i in range(N - 1)]
                ),
            ),
            Kept(N),
        ),
        Case("file", "extensionless-jsonl", "blob", base, Kept(N)),
        Case(
            "file", "extensionless-binary", "blob", random.Random(3).randbytes(500), Refused(r"unsupported file type")
        ),
        Case("file", "xlsx", "d.xlsx", b"PK\x03\x04", Refused(r"unsupported file type")),
        Case("file", "txt", "d.txt", base, Refused(r"unsupported file type")),
        Case("file", "hash-in-name", "hash #1 data.jsonl", base, Kept(N), "message"),
        Case("file", "colon-in-name", "colon: data.jsonl", base, Kept(N), "message"),
        Case("file", "spaces-in-name", "my data file.jsonl", base, Kept(N)),
        Case("file", "digits-name", "2024.jsonl", base, Kept(N)),
        Case("file", "null-name", "null.jsonl", base, Kept(N)),
        Case("file", "uppercase-suffix", "D.JSONL", base, Kept(N)),
        Case("file", "ndjson", "d.ndjson", base, Kept(N)),
        Case("file", "max-samples", "d.jsonl", base + b"{broken\n" * 400, Kept(100), sets=("data.max_samples=100",)),
        Case("file", "dev-null", "d.jsonl", lambda p: None, Refused(r"not a regular file|is empty|not found")),
    ]


def cases() -> list[Case]:
    from data_cases_issue28 import issue28

    out = encoding() + structure() + schema() + content() + file_level() + issue28()
    dev = next(c for c in out if c.name == "dev-null")
    dev.filename = "/dev/null"
    return out
