"""A generator of unusual and broken data files, each with its outcome written down before it is run.

Every case is a file (or a link, a pipe, a folder) and the promise for it: either `Kept(n, dropped)` (the door lets
it in, and reading it keeps n examples and drops exactly these counts by reason, so that every record in the file
is read and rows read = kept + dropped), or `Refused(pattern)` (`runner.py --check` exits 2 with a message naming the
file and matching the pattern). Cases carry the issue 16 class they reproduce (hang, traceback, lost, misread,
message) where they come from it. `python tests/data_cases.py` prints the table of outcomes by category.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

N = 300  # rows in a generated file
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ---------------------------------------------------------------- rows


def qa(i: int) -> dict:
    return {"id": f"q{i}", "question": f"What is the first-line treatment for condition {i}?",
            "answer": f"Treatment {i} is recommended, with review after {i % 7 + 1} weeks."}


def mcq(i: int) -> dict:
    return {"id": f"m{i}", "question": f"Which deficiency causes clinical finding number {i}?",
            "options": {k: f"Vitamin {k}{i}" for k in "ABCD"}, "answer": "ABCD"[i % 4]}


def alpaca(i: int) -> dict:
    return {"instruction": "Answer the medical question.", "input": f"How is disorder {i} diagnosed?",
            "output": f"Disorder {i} is diagnosed by test {i}."}


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"What does symptom {i} suggest?"},
                         {"role": "assistant", "content": f"Symptom {i} suggests condition {i}."}]}


def pubmed(i: int) -> dict:
    return {"id": f"p{i}", "question": f"Does drug {i} reduce mortality?", "context": f"A trial of drug {i}.",
            "long_answer": f"Drug {i} reduced mortality.", "final_decision": ("yes", "no", "maybe")[i % 3]}


def reasoning(i: int) -> dict:
    return {"Question": f"Why does lesion {i} cause pain?", "Complex_CoT": f"Lesion {i} compresses a nerve.",
            "Response": f"Because lesion {i} compresses a nerve."}


def many(fn=qa, n=N) -> list[dict]:
    return [fn(i) for i in range(n)]


def jsonl(rows, ascii_=False) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=ascii_) + "\n" for r in rows).encode()


def csv_text(rows, delimiter=",") -> bytes:
    import csv

    out = io.StringIO()
    w = csv.DictWriter(out, fieldnames=list(rows[0]), delimiter=delimiter, lineterminator="\n",
                       **({"quoting": csv.QUOTE_NONE, "escapechar": None, "quotechar": None} if delimiter == "\t"
                          else {}))
    w.writeheader()
    w.writerows(rows)
    return out.getvalue().encode()


def with_rows(rows, at: dict[int, Callable[[dict], dict]]):
    return [at[i](dict(r)) if i in at else r for i, r in enumerate(rows)]


def nested(value, depth):
    for _ in range(depth):
        value = [value]
    return value


def parquet(table_dict, schema=None) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.table(table_dict, schema=schema), buf)
    return buf.getvalue()


# ---------------------------------------------------------------- outcomes


@dataclass
class Kept:
    kept: int
    dropped: dict[str, int] = field(default_factory=dict)
    check: Callable[[list], bool] | None = None  # on the examples: they are read as what they are


@dataclass
class Refused:
    pattern: str  # searched in the door's message, which must also name the file


@dataclass
class Case:
    category: str  # encoding | structure | schema | content | file
    name: str
    filename: str
    content: bytes | Callable[[Path], None]  # the bytes, or a function making the thing at the path
    expect: Kept | Refused
    issue: str = ""  # the issue 16 class it reproduces: hang, traceback, lost, misread, message
    sets: tuple[str, ...] = ()  # extra --set overrides

    @property
    def id(self) -> str:
        return f"{self.category}-{self.name}"


class Hang(BaseException):
    """The door or the reader did not answer in time (a BaseException: no `except Exception` swallows it)."""


@contextlib.contextmanager
def deadline(seconds: int):
    def fire(*_):
        raise Hang(f"no answer in {seconds} s")
    old = signal.signal(signal.SIGALRM, fire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def make(case: Case, folder: Path) -> Path:
    path = folder / case.filename
    path.parent.mkdir(parents=True, exist_ok=True)
    if callable(case.content):
        case.content(path)
    else:
        path.write_bytes(case.content)
    return path


_WARM = []


def warm(folder: Path) -> None:
    """One untimed --check first: the runner's lazy imports (torch, transformers) are not the case's time."""
    if not _WARM:
        from medqlora.run import cli as R

        (folder / "warm.jsonl").write_bytes(jsonl(many()))
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            R.main(["--set", "data.eval_source=null", "--set", f"data.source={folder / 'warm.jsonl'}", "--check"])
        _WARM.append(True)


def run_case(case: Case, folder: Path, seconds: int = 10) -> dict:
    """What happened: {'outcome': refused|kept|stage-error|traceback|hang, 'message', 'kept', 'dropped', ...}."""
    import traceback

    from medqlora.config import load_config
    from medqlora.data import formats as D
    from medqlora.run import cli as R

    root = Path(__file__).resolve().parents[1]
    folder.mkdir(parents=True, exist_ok=True)
    warm(folder)
    path = make(case, folder)
    sets = ["data.eval_source=null", f"data.source={path}", *case.sets]
    err = io.StringIO()
    try:
        with deadline(seconds), contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            code = R.main([a for s in sets for a in ("--set", s)] + ["--check"])
    except Hang as e:
        return {"outcome": "hang", "message": f"door: {e}"}
    except Exception:
        return {"outcome": "traceback", "message": traceback.format_exc(limit=3)}
    if code != 0:
        return {"outcome": "refused", "code": code, "message": err.getvalue()}
    try:
        with deadline(seconds):
            cfg = load_config(root / "params" / "default.yaml", sets).data
            rows, columns = D.open_rows(cfg.source, cfg, cfg.split)
            fmt, mapping = D.resolve_format(columns, cfg)
            checks = D.Checks()
            examples = list(D.iter_examples(rows, fmt, mapping, checks, set(), cfg.on_bad_rows, cfg.source))
            for ex in examples:
                checks.keep("train", ex.kind)
    except Hang as e:
        return {"outcome": "hang", "message": f"stage: {e}"}
    except D.DataError as e:
        return {"outcome": "stage-error", "message": str(e)}
    except Exception:
        return {"outcome": "traceback", "message": traceback.format_exc(limit=3)}
    return {"outcome": "kept", "kept": len(examples), "dropped": dict(checks.dropped), "read": checks.read,
            "balanced": checks.balanced(), "examples": examples, "format": fmt,
            "reasons": [s["reason"] for v in checks.samples.values() for s in v]}


def verdict(case: Case, got: dict, path: Path) -> str | None:
    """None when the case was answered as promised; otherwise what differs."""
    exp = case.expect
    if isinstance(exp, Refused):
        if got["outcome"] != "refused":
            seen = f"kept {got['kept']} dropped {got['dropped']}" if got["outcome"] == "kept" else got["message"][-300:]
            return f"expected a refusal /{exp.pattern}/, got {got['outcome']}: {seen}"
        msg = got["message"]
        if got.get("code") != 2 or "Traceback" in msg:
            return f"refused with exit {got.get('code')}: {msg[-300:]}"
        if str(path) not in msg and path.name not in msg:
            return f"the message does not name the file: {msg[-300:]}"
        if not re.search(exp.pattern, msg, re.S):
            return f"message does not match /{exp.pattern}/: {msg[-400:]}"
        return None
    if got["outcome"] != "kept":
        return f"expected kept {exp.kept} dropped {exp.dropped}, got {got['outcome']}: {got['message'][-400:]}"
    if not got["balanced"]:
        return f"rows read {got['read']} != kept + dropped"
    if (got["kept"], got["dropped"]) != (exp.kept, exp.dropped):
        return f"expected kept {exp.kept} dropped {exp.dropped}, got kept {got['kept']} dropped {got['dropped']} " \
               f"({got['reasons'][:2]})"
    if exp.check and not exp.check(got["examples"]):
        return f"kept {got['kept']} as promised, but the examples are not read as what they are " \
               f"(first: {got['examples'][0] if got['examples'] else None})"
    return None


def all_cases() -> list[Case]:
    from data_cases_list import cases

    return cases()


def main(argv=None) -> int:
    """Run every case (against whatever medqlora is on the path) and print the table by category."""
    import tempfile

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    cases = all_cases()
    table: dict[str, list[int]] = {}
    fails = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, case in enumerate(cases):
            folder = Path(tmp) / f"c{i:03d}"
            got = run_case(case, folder)
            why = verdict(case, got, folder / case.filename)
            for key in (case.category, f"issue:{case.issue}" if case.issue else None, "all"):
                if key:
                    row = table.setdefault(key, [0, 0])
                    row[why is not None] += 1
            if why:
                fails.append(f"{case.id} [{case.issue or '-'}] {got['outcome']}: {why[:300]}")
    print("| category | cases | as promised | not |\n|---|---|---|---|")
    for key, (ok, bad) in table.items():
        print(f"| {key} | {ok + bad} | {ok} | {bad} |")
    print("\n".join(["", "not as promised:"] + fails) if fails else "")
    return 0


if __name__ == "__main__":  # through the module's own name, so that the cases' classes are these
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import data_cases

    raise SystemExit(data_cases.main(sys.argv[1:]))
