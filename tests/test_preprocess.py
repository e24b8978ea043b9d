"""prepare(): the whole preprocessing stage with the real tokenizer, without a model."""
import json

import datasets
import pytest
from conftest import ROOT, write_jsonl

from medqlora.config import RunConfig
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.data.formats import DataError


def config(tokenizer_dir, **data) -> RunConfig:
    return RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": tokenizer_dir, "max_seq_length": 256},
                                     "data": {"val_fraction": 0, **data}})  # no validation split unless asked


def test_bundled_sample_prepares_with_fixed_eval_split(tmp_path, tokenizer, tokenizer_dir):
    cfg = config(tokenizer_dir, source=str(ROOT / "data" / "medqa_train.jsonl"),
                 eval_source=str(ROOT / "data" / "medqa_eval.jsonl"), val_fraction=0.1)
    run = RunDir(tmp_path / "run")
    p = P.prepare(cfg, run, tokenizer)
    k = p.checks.kinds
    assert (k["eval/freetext"], k["eval/choice"]) == (40, 20)
    assert k["train/freetext"] + k["val/freetext"] == 160 and k["train/choice"] + k["val/choice"] == 80
    assert 12 <= p.checks.kept["val"] <= 36, "about a tenth of the 240 training rows is held out for validation"
    import datasets

    val, train = datasets.load_from_disk(str(run.val_data)), datasets.load_from_disk(str(run.train_data))
    assert len(val) == p.checks.kept["val"] and len(train) == p.checks.kept["train"]
    assert not set(val["id"]) & set(train["id"]), "a validation row is never trained on"
    result = P.save_result(p, cfg, run)
    assert result["val_examples"] == len(val) and result["train_examples"] == len(train)
    capped = P.prepare(config(tokenizer_dir, source=str(ROOT / "data" / "medqa_train.jsonl"),
                              eval_source=str(ROOT / "data" / "medqa_eval.jsonl"), val_fraction=0.1,
                              val_max_examples=5), RunDir(tmp_path / "capped"), tokenizer)
    assert capped.checks.kept["val"] == 5 and capped.checks.kept["train"] == 235
    assert p.checks.dropped == {}, "the bundled sample is clean and has no train/eval overlap"
    assert max(p.train_lengths) <= 256


def test_streaming_gives_the_same_prepared_data(tmp_path, tokenizer, tokenizer_dir):
    src = str(ROOT / "data" / "medqa_train.jsonl")
    whole = P.prepare(config(tokenizer_dir, source=src, eval_fraction=0.2), RunDir(tmp_path / "a"), tokenizer)
    streamed = P.prepare(config(tokenizer_dir, source=src, eval_fraction=0.2, streaming=True),
                         RunDir(tmp_path / "b"), tokenizer)
    assert streamed.fingerprint == whole.fingerprint
    assert streamed.checks.kept == whole.checks.kept and whole.checks.kept["eval"] > 20


def test_overlong_duplicate_and_leaked_rows_are_counted_and_dropped(tmp_path, tokenizer, tokenizer_dir):
    train = write_jsonl(tmp_path / "t.jsonl", [
        {"question": "What causes scurvy?", "answer": "Vitamin C deficiency."},
        {"question": "What causes scurvy?", "answer": "Vitamin C deficiency."},     # duplicate
        {"question": "What causes rickets?", "answer": "Vitamin D deficiency."},    # also in eval: leak
        {"question": "Describe everything.", "answer": "word " * 400},              # over-long
        {"question": "What causes pellagra?", "answer": "Niacin deficiency."},
    ])
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What causes RICKETS? ", "answer": "Lack of vitamin D."}])
    run = RunDir(tmp_path / "run")
    p = P.prepare(config(tokenizer_dir, source=str(train), eval_source=str(ev), min_train_examples=1,
                         max_drop_fraction=0.8), run, tokenizer)
    assert p.checks.dropped == {"duplicate": 1, "leak": 1, "over-long": 1}
    assert p.checks.kept == {"eval": 1, "train": 2}
    reasons = P.dropped_table(p).iloc[:, 0].tolist()
    assert any(r.startswith("over-long: ") and "> model.max_seq_length 256" in r for r in reasons)
    assert len(datasets.load_from_disk(str(run.train_data))) == 2
    assert [json.loads(x)["question"] for x in run.eval_items.read_text().splitlines()] == ["What causes RICKETS?"]


def test_fsspec_url_source(tmp_path, tokenizer, tokenizer_dir):
    import fsspec

    with fsspec.open("memory://bucket/qa.jsonl", "w") as f:
        for i in range(30):
            f.write(json.dumps({"question": f"What is finding {i}?", "answer": f"Finding {i} is a sign."}) + "\n")
    p = P.prepare(config(tokenizer_dir, source="memory://bucket/qa.jsonl", eval_fraction=0.3),
                  RunDir(tmp_path / "run"), tokenizer)
    assert p.source_format == "qa" and p.checks.read == 30 and sum(p.checks.kept.values()) == 30


def test_nothing_left_is_a_clear_error_and_writes_nothing(tmp_path, tokenizer, tokenizer_dir):
    bad = write_jsonl(tmp_path / "t.jsonl", [{"question": "", "answer": "x"}, {"question": "Q?", "answer": ""}])
    run = RunDir(tmp_path / "run")
    with pytest.raises(DataError, match=r"2 of 2 rows dropped .*0 training examples left.*empty question 1"):
        P.prepare(config(tokenizer_dir, source=str(bad)), run, tokenizer)
    assert not run.train_data.exists() and not run.eval_items.exists()


def test_the_stop_hint_never_suggests_a_max_seq_length_at_or_below_the_limit():
    """Issue 28: over-long rows among other drops once gave '--set model.max_seq_length=448' at a limit of 512."""
    from medqlora.config import DataConfig
    from medqlora.data.formats import Checks

    checks = Checks(read=600, kept={"train": 270, "eval": 20}, dropped={"unreadable": 300, "over-long": 10})
    lengths = [100 + i % 300 for i in range(290)] + [600 + i for i in range(10)]
    with pytest.raises(DataError) as e:
        P.refuse_meaningless(checks, DataConfig(source="d.jsonl"), 512, lengths, [{"id": "x"}])
    msg = str(e.value)
    suggested = [int(x) for x in __import__("re").findall(r"model\.max_seq_length=(\d+)", msg)]
    assert suggested and all(s > 512 for s in suggested), msg
    assert "model.max_seq_length=640 would keep them all" in msg, msg
