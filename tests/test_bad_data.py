"""Bad data gets a clear answer at the door (runner exit 2, naming the file) or is read with every dropped row
counted by reason; never a library traceback as the only explanation. Ends with a fuzz test over corrupted
variants of the bundled data."""
import json
import random

import pytest
from conftest import ROOT

from medqlora.config import load_config
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.data.formats import DataError
from medqlora.run import cli as R

BUNDLED = [json.loads(line) for line in (ROOT / "data" / "medqa_train.jsonl").read_text().splitlines()]
KNOWN_REASONS = {"unreadable", "empty question", "empty answer", "duplicate", "over-long", "leak", "malformed chat",
                 "malformed decision", "answer not an option", "options unreadable", "too few options", "wrong type",
                 "missing options", "other format", "ambiguous columns", "chat markup"}


def check(path, capsys, *extra) -> tuple[int, str]:
    """runner.py --check with data.source=path: validation and the data check at the door, nothing run."""
    code = R.main(["--set", f"data.source={path}", "--set", "data.eval_source=null", "--check", *extra])
    return code, capsys.readouterr().err


def lines(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.mark.parametrize("name,content,message", [
    ("empty.jsonl", b"", r"is empty \(no rows\)"),
    ("blank.jsonl", b"\n \n\n", r"is empty \(no rows\)"),
    ("garbage.jsonl", random.Random(0).randbytes(4000), "looks like a binary file"),
    ("latin1.jsonl", '{"question": "Qu\u00e9 es?", "answer": "S\u00ed."}\n'.encode("latin-1"),
     r"line 1: not valid UTF-8 \(byte 0xe9 at column 17\); save the file as UTF-8"),
    ("csv.jsonl", b"question,answer\nWhat causes scurvy?,Vitamin C deficiency.\n",
     r"line 1: invalid JSON .*This looks like CSV: name it \.csv"),
    ("array.jsonl", json.dumps(BUNDLED[:5]).encode(), r"This is one JSON array: name it \.json"),
    ("columns.jsonl", b'{"prompt_text": "q", "reply": "a"}\n', r"cannot tell the data format from the columns"),
    ("bad.json", b'[{"question": "q", "answer": "a"},', r"is not valid JSON: .* line 1"),
], ids=["empty", "blank-lines", "binary-garbage", "latin-1", "csv-named-jsonl", "json-array-named-jsonl", "unknown-columns",
        "broken-json"])
def test_unusable_files_are_refused_at_the_door_with_exit_2(tmp_path, capsys, name, content, message):
    import re

    path = tmp_path / name
    path.write_bytes(content)
    code, err = check(path, capsys)
    assert code == 2
    assert str(path) in err and re.search(message, err), err
    assert "Traceback" not in err and "Offline?" not in err


def test_mostly_bad_rows_are_refused_at_the_door_and_a_few_are_not(tmp_path, capsys):
    rows = [{"question": r["question"], "options": {"A": "x", "B": "y"}, "answer": "E"} for r in BUNDLED[:30]]
    code, err = check(lines(tmp_path / "mcq.jsonl", rows), capsys)
    assert code == 2 and "30 of the 30 rows" in err and "answer not an option 30" in err
    assert "answer 'E' is neither a letter among options A-B" in err
    code, err = check(lines(tmp_path / "some.jsonl", rows[:3] + BUNDLED[:30]), capsys)
    assert code == 0, err
    code, err = check(lines(tmp_path / "strict.jsonl", rows[:1] + BUNDLED[:30]), capsys,
                      "--set", "data.on_bad_rows=fail")
    assert code == 0, "on_bad_rows=fail stops at the stage on an unusable row, not a readable one"
    (tmp_path / "strict2.jsonl").write_text("{oops\n" + "".join(json.dumps(r) + "\n" for r in BUNDLED[:5]))
    code, err = check(tmp_path / "strict2.jsonl", capsys, "--set", "data.on_bad_rows=fail")
    assert code == 2 and "line 1: invalid JSON" in err and "data.on_bad_rows is fail" in err


@pytest.fixture(scope="module")
def default_cfg():
    return load_config(ROOT / "params" / "default.yaml", ["data.eval_source=null"])


def prepare(cfg, path, tmp_path, tokenizer, **data):
    cfg = cfg.model_copy(deep=True)
    cfg.data.source = str(path)
    for k, v in data.items():
        setattr(cfg.data, k, v)
    return P.prepare(cfg, RunDir(tmp_path / "run"), tokenizer)


def test_bad_rows_among_good_are_dropped_and_counted_with_their_line(tmp_path, tokenizer, default_cfg):
    text = "".join(json.dumps(r) + "\n" for r in BUNDLED[:60]).splitlines()
    text[10] = text[10][:25]  # truncated
    raw = "\n".join(text).encode().replace(b'"question": "', b'"question": "\xff', 1) + b"\n"  # line 1: bad byte
    (tmp_path / "d.jsonl").write_bytes(raw)
    p = prepare(default_cfg, tmp_path / "d.jsonl", tmp_path, tokenizer)
    assert p.checks.read == 60 and p.checks.dropped == {"unreadable": 2} and p.checks.balanced()
    reasons = [s["reason"] for s in p.checks.samples["unreadable"]]
    assert reasons[0].startswith("unreadable: line 1: not valid UTF-8 (byte 0xff")
    assert reasons[1].startswith("unreadable: line 11: invalid JSON")
    table = P.checks_table(p)
    assert table.loc["dropped: unreadable", "rows"] == 2 and table.loc["read = kept + dropped", "rows"] == "yes"


def test_long_rows_that_would_leave_too_little_are_refused_with_the_length_that_fits(tmp_path, tokenizer,
                                                                                     default_cfg):
    mcq = [r for r in BUNDLED if "options" in r]
    rows = [{**mcq[i % len(mcq)], "question": f"Case {i}: {mcq[i % len(mcq)]['question']}",
             "explanation": "The explanation goes through each option in depth. " * (60 + i % 20)}
            for i in range(100)]
    run = RunDir(tmp_path / "run")
    with pytest.raises(DataError, match=r"rows dropped .*over-long .*--set model.max_seq_length=\d+ would keep 95%"):
        prepare(default_cfg, lines(tmp_path / "long.jsonl", rows), tmp_path, tokenizer)
    assert not run.train_data.exists() and not run.eval_items.exists(), "nothing half-written"


def test_eval_items_are_measured_on_their_prompt_not_their_reference(tmp_path, tokenizer, default_cfg):
    train = BUNDLED[:40]
    ev = [{"question": f"Explain condition {i}.", "answer": "A very long reference answer. " * 300} for i in range(5)]
    cfg = default_cfg.model_copy(deep=True)
    cfg.data.eval_source = lines(tmp_path / "eval.jsonl", ev)
    p = prepare(cfg, lines(tmp_path / "train.jsonl", train), tmp_path, tokenizer)
    assert p.checks.kept["eval"] == 5 and "over-long" not in p.checks.dropped


# ---------------------------------------------------------------- fuzz


def _mutations(rng: random.Random):
    """(name, bytes of a .jsonl file) pairs: the bundled data corrupted in the ways real files are."""
    base = [dict(r) for r in BUNDLED]

    def dump(rows):
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()

    def some(rows, frac, fn):
        rows = [dict(r) for r in rows]
        for i in rng.sample(range(len(rows)), max(1, int(len(rows) * frac))):
            rows[i] = fn(rows[i])
        return rows

    good = dump(base)
    lines_ = good.splitlines()
    yield "truncated-lines", b"\n".join(x[: rng.randrange(1, len(x))] if rng.random() < 0.1 else x for x in lines_)
    yield "truncated-file", good[: len(good) // 2 + 7]
    yield "wrong-types", dump(some(base, 0.2, lambda r: {**r, "question": rng.choice([7, [1, 2], {"x": 1}, None, True])}))
    yield "answer-types", dump(some(base, 0.2, lambda r: {**r, "answer": rng.choice([3, [], {}, None, 2.5])}))
    yield "missing-fields", dump(some(base, 0.2, lambda r: {k: v for k, v in r.items()
                                                            if k != rng.choice(["question", "answer", "options"])}))
    yield "bad-bytes", b"\n".join(x[:5] + b"\xc3\x28" + x[5:] if rng.random() < 0.1 else x for x in lines_)
    yield "latin-1", dump(base[:40]).decode().replace("a", "\u00e9").encode("latin-1", "replace")
    yield "garbage-tail", good + bytes(rng.randrange(256) for _ in range(3000))
    yield "garbage-head", bytes(rng.randrange(1, 256) for _ in range(300)) + b"\n" + good
    yield "empty-options", dump(some(base, 0.3, lambda r: {**r, "options": rng.choice([{}, [], "", None, "  "])}))
    yield "one-option", dump(some(base, 0.2, lambda r: {**r, "options": {"A": "only"}, "answer": "A"}))
    yield "bad-option-text", dump(some(base, 0.2, lambda r: {**r, "options": "A) x B) y", "answer": "B"}))
    yield "huge-fields", dump(some(base, 0.05, lambda r: {**r, "answer": "word " * 50000}))
    yield "mixed-formats", dump(some(base, 0.3, lambda r: rng.choice([
        {"instruction": "Answer.", "input": r["question"], "output": str(r.get("answer"))},
        {"messages": [{"role": "user", "content": r["question"]}, {"role": "assistant", "content": "ok"}]},
        {"Question": r["question"], "Complex_CoT": "think", "Response": "ok"}])))
    yield "not-objects", b"\n".join(rng.choice([b"1", b'"text"', b"null", b"[1,2]"]) if rng.random() < 0.1 else x
                                   for x in lines_)
    yield "all-not-objects", b"\n".join([b"1", b"2", b"[]", b'"x"'] * 10)
    yield "bom-crlf", b"\xef\xbb\xbf" + good.replace(b"\n", b"\r\n")
    yield "nan-tokens", good.replace(b'"answer": "A"', b'"answer": NaN', 5)
    yield "deep-nesting", b"[" * 5000 + b"\n" + good
    yield "duplicates", dump(base + base[:100])
    yield "answer-out-of-range", dump(some(base, 0.6, lambda r: {**r, "options": {"A": "x", "B": "y"}, "answer": "F"}))
    yield "empty-strings", dump(some(base, 0.3, lambda r: {k: "" for k in r}))
    yield "only-blank", b"\n\n   \n"
    yield "random-json", dump([{rng.choice("abc"): rng.random()} for _ in range(50)])


MUTATIONS = list(_mutations(random.Random(1234)))


@pytest.mark.parametrize("name,content", MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_fuzz_every_corrupted_file_is_refused_clearly_or_read_with_every_drop_counted(
        tmp_path, capsys, tokenizer, default_cfg, name, content):
    path = tmp_path / f"{name}.jsonl"
    path.write_bytes(content)
    code, err = check(path, capsys)
    if code == 2:  # refused at the door: the message names the file and says what is wrong
        assert str(path) in err and "Traceback" not in err, err
        return
    assert code == 0, err
    try:
        p = prepare(default_cfg, path, tmp_path, tokenizer)
    except DataError as e:  # refused by the stage: counts and a fix, never a library's own error
        assert "rows dropped" in str(e) or "training examples left" in str(e), str(e)
        return
    assert p.checks.balanced(), p.checks
    assert set(p.checks.dropped) <= KNOWN_REASONS, p.checks.dropped
    assert p.checks.read > 0 and p.checks.kept.get("train", 0) >= default_cfg.data.min_train_examples


def test_a_byte_order_mark_and_windows_line_ends_lose_nothing(tmp_path):
    from medqlora.config import DataConfig
    from medqlora.data import formats as D

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + "".join(json.dumps(r) + "\r\n" for r in BUNDLED[:5]).encode())
    rows, cols = D.open_rows(str(path), DataConfig(source=str(path)), "train")
    assert cols[0] == "id" and all(r.data for r in rows)


def test_a_multiple_choice_row_without_options_is_not_trained_as_a_bare_letter():
    from medqlora.data import formats as D

    m = {"question": "question", "options": "options", "answer": "answer"}
    ex, why = D.normalize({"question": "Scurvy?", "options": {}, "answer": "B"}, "mcq", m, 0)
    assert ex is None and why == "missing options: answer 'B' names an option, but the row has no options"
    ex, why = D.normalize({"question": "What causes scurvy?", "answer": "Vitamin C deficiency."}, "mcq", m, 0)
    assert ex.kind == "freetext", "a free-text row in a mixed file stays free text"
    ex, why = D.normalize({"question": 7, "answer": "x"}, "qa", {"question": "question", "answer": "answer"}, 0)
    assert why == "wrong type: question (question) is a int, not text"


# ---------------------------------------------------------------- issue 16 cases through the whole stage

STAGE_CASES = ["encoding-surrogate-question", "encoding-surrogate-option", "encoding-surrogate-id",
               "content-chat-tokens-in-question", "schema-free-text-then-mcq", "schema-option-keys-1-4-int-answer",
               "encoding-lone-cr", "structure-two-objects-one-line", "schema-parquet-binary-question",
               "structure-tsv-literal-quotes"]


@pytest.mark.parametrize("case_id", STAGE_CASES)
def test_issue_16_cases_go_through_the_preprocess_stage_with_the_promised_counts(case_id, tmp_path, tokenizer,
                                                                                default_cfg):
    """The preprocess stage itself (tokenizer, eval split, Arrow writing) on the cases that used to kill it or mis-read
    it: every record read, the promised drops and nothing else, and what reaches the prompts is what the file says."""
    from data_cases import make
    from data_cases_list import CONTROL, cases

    case = next(c for c in cases() if c.id == case_id)
    p = prepare(default_cfg, make(case, tmp_path), tmp_path, tokenizer)
    exp = case.expect
    assert p.checks.balanced() and p.checks.read == exp.kept + sum(exp.dropped.values()), p.checks
    assert p.checks.dropped == exp.dropped and sum(p.checks.kept.values()) == exp.kept, p.checks
    prompts = [e["prompt"] for e in p.eval_items]
    assert not any(CONTROL in x for x in prompts) and not any("b'What" in x for x in prompts)
    if case_id == "schema-free-text-then-mcq":  # the multiple-choice rows after row 200 keep their options
        choice = [e for e in p.eval_items if e["kind"] == "choice"]
        assert choice and all(len(e["options"]) == 4 and "Options:" in e["prompt"] for e in choice)
        # every multiple-choice row is read as one, whichever split it lands in (train, validation or eval)
        assert p.checks.kinds.get("train/choice", 0) + p.checks.kinds.get("val/choice", 0) + len(choice) == 100
