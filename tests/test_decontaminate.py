"""Decontamination (issue 30, point 2): training rows that share a 13-word sequence with an eval item are found before
training, reported per eval set, and dropped with data.decontaminate: drop."""
import json

import datasets
import pytest
from conftest import ROOT, write_jsonl

from medqlora.config import RunConfig
from medqlora.core.rundir import RunDir
from medqlora.data import decontaminate as DC
from medqlora.data import preprocess as P
from medqlora.data.formats import Example


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def example(row: dict, i: int = 0) -> Example:
    ex = Example(row.get("id", f"r{i}"), "choice" if row.get("options") else "freetext", row["question"],
                 row.get("answer", row.get("final_decision", "")), context=row.get("context"),
                 options=row.get("options"), explanation=row.get("long_answer"))
    return ex


def long_questions(rows, n_words=13) -> list[dict]:
    return [r for r in rows if len(DC.words(r["question"])) >= n_words]


BUNDLED_TRAIN = read(ROOT / "data" / "medqa_train.jsonl")
BUNDLED_EVAL = read(ROOT / "data" / "medqa_eval.jsonl")
BUNDLED_YESNO = read(ROOT / "data" / "yesno_bench.jsonl")


def planted() -> list[dict]:
    """Training rows made from eval items the ways copies circulate: the question numbered, other options; the
    question in capitals with its spacing changed inside a longer case; a 13-word slice of a benchmark's abstract in
    an answer; a short (8-12 word) question asked whole inside a longer one."""
    long_mcq = [r for r in long_questions(BUNDLED_EVAL) if r.get("options")]
    long_free = [r for r in long_questions(BUNDLED_EVAL) if not r.get("options")]
    short = [r for r in BUNDLED_EVAL if 8 <= len(DC.words(r["question"])) < 13]
    abstract = BUNDLED_YESNO[3]["context"].split()
    assert long_mcq and long_free and short and len(abstract) > 30
    return [
        {"id": "copy-mcq", "question": "Exam item 12. " + long_mcq[0]["question"], "options": {"A": "x", "B": "y"},
         "answer": "B"},
        {"id": "copy-free", "question": "A case for the ward round.  " + "  ".join(long_free[0]["question"].upper()
                                                                                  .split()) + " Explain.",
         "answer": "See the guideline."},
        {"id": "copy-abstract", "question": "What did the trial find?",
         "answer": "It reported that " + " ".join(abstract[5:18]) + " overall."},
        {"id": "copy-short", "question": f"Before the exam, {short[0]['question'].lower()} Be brief.",
         "answer": "A short answer."},
    ], [long_mcq[0]["id"], long_free[0]["id"], BUNDLED_YESNO[3]["id"], short[0]["id"]]


def bundled_index() -> DC.Index:
    return DC.Index({"held-out": [example(r, i) for i, r in enumerate(BUNDLED_EVAL)],
                     "yesno": [example(r, i) for i, r in enumerate(BUNDLED_YESNO)]})


def test_planted_copies_are_flagged_exactly_and_nothing_on_the_bundled_data():
    rows, sources = planted()
    train = [example(r, i) for i, r in enumerate(BUNDLED_TRAIN + rows)]
    index = bundled_index()
    flagged = {ex.id: [index.items[i] for i in hits] for ex, hits in index.annotate(iter(train), chunk=64)}
    hit = {k: v for k, v in flagged.items() if v}
    assert sorted(hit) == sorted(r["id"] for r in rows), hit
    for r, src in zip(rows, sources):
        assert [item_id for _, item_id in hit[r["id"]]] == [src], (r["id"], hit[r["id"]])
    assert hit["copy-abstract"] == [("yesno", BUNDLED_YESNO[3]["id"])]


def test_what_is_not_a_copy_is_not_flagged():
    index = DC.Index({"b": [Example("e1", "freetext", " ".join(f"w{i}" for i in range(20)), "a"),
                            Example("e2", "freetext", "Which drug treats scurvy?", "vitamin C")]})
    twelve = Example("t1", "freetext", "intro " + " ".join(f"w{i}" for i in range(12)) + " outro", "a")
    thirteen = Example("t2", "freetext", "intro " + " ".join(f"W{i}," for i in range(3, 16)) + " outro", "a")
    short = Example("t3", "freetext", "Tell me: which drug treats scurvy? Quickly.", "vitamin C")  # 4 words: too short
    across = Example("t4", "freetext", " ".join(f"w{i}" for i in range(7)), " ".join(f"w{i}" for i in range(7, 13)))
    got = {ex.id: hits for ex, hits in index.annotate(iter([twelve, thirteen, short, across]))}
    assert got["t1"] == [] and got["t3"] == []
    assert got["t2"] == [0], "13 words in a row, whatever the case and punctuation"
    assert got["t4"] == [], "a sequence split between the question and the answer is not one sequence"


def config(tokenizer_dir, **data) -> RunConfig:
    return RunConfig.model_validate({
        "run_name": "t", "model": {"name_or_path": tokenizer_dir, "max_seq_length": 512},
        "data": {"val_fraction": 0, "source": str(ROOT / "data" / "medqa_train.jsonl"),
                 "eval_source": str(ROOT / "data" / "medqa_eval.jsonl"), **data},
        "eval": {"sets": [{"name": "yesno", "source": str(ROOT / "data" / "yesno_bench.jsonl"), "format": "pubmedqa",
                           "max_items": 30}]}})


def test_the_bundled_data_has_no_overlap_and_says_so(tmp_path, tokenizer, tokenizer_dir):
    run = RunDir(tmp_path / "run")
    p = P.prepare(config(tokenizer_dir), run, tokenizer)
    result = P.save_result(p, config(tokenizer_dir), run)
    d = result["decontamination"]
    assert d["sets"]["held-out"]["items"] == 0 and d["sets"]["held-out"]["of"] == 60
    assert d["sets"]["yesno"]["items"] == 0 and d["sets"]["yesno"]["of"] == 30
    assert d["lines"] == ["held-out: 0 of 60 items overlap the training data",
                          "yesno: 0 of 30 items overlap the training data"]
    assert not d["warnings"], "nothing overlaps: nothing to warn about"


@pytest.mark.parametrize("mode", ["warn", "drop"])
def test_planted_copies_in_a_training_file_are_reported_and_dropped_with_drop(mode, tmp_path, tokenizer,
                                                                              tokenizer_dir):
    rows, sources = planted()
    train = write_jsonl(tmp_path / "train.jsonl", BUNDLED_TRAIN + rows)
    run = RunDir(tmp_path / "run")
    cfg = config(tokenizer_dir, source=str(train), decontaminate=mode)
    p = P.prepare(cfg, run, tokenizer)
    result = P.save_result(p, cfg, run)
    d = result["decontamination"]
    assert d["sets"]["held-out"]["items"] == 3 and d["sets"]["yesno"]["items"] == 1
    assert d["sets"]["held-out"]["train_rows"] == 3 and d["sets"]["yesno"]["train_rows"] == 1
    ids = set(datasets.load_from_disk(str(run.train_data))["id"])
    if mode == "warn":
        assert "contaminated" not in p.checks.dropped and {r["id"] for r in rows} <= ids
        assert d["lines"][0] == ("held-out: 3 of 60 items overlap the training data (3 training rows: 3 kept, "
                                 "data.decontaminate is warn; drop removes them)")
        assert d["warnings"] == d["lines"], "training on overlapping rows is a warning (the headline shows it)"
    else:
        assert p.checks.dropped == {"contaminated": 4} and not {r["id"] for r in rows} & ids
        assert not d["warnings"], "dropped: the eval sets no longer overlap what is trained"
        assert d["lines"][1] == ("yesno: 1 of 30 items overlap the training data (1 training row: 1 dropped, "
                                 "data.decontaminate is drop)")
        reasons = P.dropped_table(p).iloc[:, 0].tolist()
        assert any(r.startswith("contaminated: shares 13 words in a row with eval set yesno item yn-04") for r in
                   reasons), reasons
    assert len(ids) == 240 + (4 if mode == "warn" else 0)
    examples = {e["train_id"]: e for e in d["examples"]}
    assert examples["copy-mcq"]["eval_item"] == sources[0] and examples["copy-mcq"]["set"] == "held-out"


def test_an_exact_question_copy_stays_a_leak_and_is_counted(tmp_path, tokenizer, tokenizer_dir):
    """A training question equal to an eval question is dropped as a leak in either mode (the held-out split means
    nothing otherwise), and the item counts as overlapping, even a question too short for a 13-word sequence."""
    short = next(r for r in BUNDLED_EVAL if len(DC.words(r["question"])) < 8)
    copy = {"question": short["question"], "answer": "Another answer."}
    train = write_jsonl(tmp_path / "train.jsonl", BUNDLED_TRAIN + [copy])
    run = RunDir(tmp_path / "run")
    cfg = config(tokenizer_dir, source=str(train))
    p = P.prepare(cfg, run, tokenizer)
    d = P.save_result(p, cfg, run)["decontamination"]
    assert p.checks.dropped == {"leak": 1}
    assert d["sets"]["held-out"]["items"] == 1 and d["sets"]["held-out"]["leaks"] == 1
    assert d["lines"][0] == ("held-out: 1 of 60 items overlap the training data (1 training row: 1 with the same "
                             "question, dropped as a leak)")


def test_the_hash_split_held_out_items_are_checked_too(tmp_path, tokenizer, tokenizer_dir):
    """Without data.eval_source the held-out items come from data.source itself: a near copy (same 13 words, another
    question) that the hash puts on the training side is found."""
    from medqlora.data.formats import in_eval_split

    rows = [{"id": f"q{i}", "question": "Which " + " ".join(f"finding{i}x{j}" for j in range(14)) + "?",
             "answer": f"Answer {i}."} for i in range(40)]  # no two share a word but 'which
    ev = next(r for r in rows if in_eval_split(example(r), 0.2, 42))
    near = None
    for k in range(200):
        cand = {"id": "near", "question": f"Variant {k}. " + ev["question"], "answer": "Another answer."}
        if not in_eval_split(example(cand), 0.2, 42):
            near = cand
            break
    train = write_jsonl(tmp_path / "train.jsonl", rows + [near])
    cfg = RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": tokenizer_dir, "max_seq_length": 256},
                                    "data": {"val_fraction": 0, "source": str(train), "eval_fraction": 0.2,
                                             "decontaminate": "drop", "max_drop_fraction": 0.9}})
    p = P.prepare(cfg, RunDir(tmp_path / "run"), tokenizer)
    d = p.decontamination
    assert d["sets"]["held-out"]["of"] == p.checks.kept["eval"]
    assert any(e["train_id"] == "near" and e["eval_item"] == ev["id"] for e in d["examples"]), d
    assert p.checks.dropped.get("contaminated", 0) >= 1


def test_data_decontaminate_is_warn_by_default_and_checked():
    from pydantic import ValidationError

    cfg = RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": "m"}, "data": {"source": "d.jsonl"}})
    assert cfg.data.decontaminate == "warn"
    with pytest.raises(ValidationError, match=r"decontaminate[\s\S]*'warn' or 'drop'"):
        RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": "m"},
                                  "data": {"source": "d.jsonl", "decontaminate": "remove"}})


def test_the_headline_says_the_overlap_per_eval_set(tmp_path):
    from medqlora.core.rundir import write_json
    from medqlora.run import headline as H

    run = RunDir(tmp_path / "run")
    (run / "results").mkdir(parents=True)
    lines = ["held-out: 0 of 60 items overlap the training data",
             "medqa: 12 of 200 items overlap the training data (15 training rows: 15 kept, data.decontaminate is warn; "
             "drop removes them)"]
    write_json(run / "results" / "preprocess.json", {"decontamination": {"lines": lines, "warnings": lines[1:]}})
    md = H.markdown(H.build(run))
    assert "**Decontamination** (13 words in a row shared with training rows): " + "; ".join(lines) in md
    assert f"- ⚠ {lines[1]}" in md, "training on overlapping rows is a warning"
