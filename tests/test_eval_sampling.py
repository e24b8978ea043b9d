"""eval.max_samples takes a seeded sample spread over the file (issue 28, point 10), not the first N lines: a file
sorted by topic or kind still gives a sample of all of it, with its share of free-text and closed-form items, in file
order, the same on every call; the evaluate result and its tables say N of M."""
import json

from conftest import write_jsonl

from medqlora.evaluation import tables
from medqlora.evaluation.generate import select_items


def sorted_file(tmp_path, n_free=60, n_closed=30):
    """Free text first, then closed-form items, each sorted by topic: the layout that biased the first N."""
    rows = [{"id": f"f{i}", "kind": "freetext", "topic": i // 20} for i in range(n_free)]
    rows += [{"id": f"c{i}", "kind": "choice" if i % 2 else "yesno", "topic": i // 10} for i in range(n_closed)]
    return write_jsonl(tmp_path / "eval.jsonl", rows), rows


def test_the_sample_is_spread_over_the_file_with_its_share_of_kinds_in_file_order(tmp_path):
    path, rows = sorted_file(tmp_path)
    items, sampled = select_items(path, 15)
    assert sampled == {"n": 15, "of": 90, "seed": sampled["seed"]} and isinstance(sampled["seed"], int)
    kinds = [it["kind"] for it in items]
    assert kinds.count("freetext") == 10 and len(kinds) - kinds.count("freetext") == 5, "two thirds free text"
    order = [next(i for i, r in enumerate(rows) if r["id"] == it["id"]) for it in items]
    assert order == sorted(order) and len(set(order)) == 15, "file order, no repeats"
    assert {it["topic"] for it in items if it["kind"] == "freetext"} == {0, 1, 2}, "every stretch of the file"
    assert {it["topic"] for it in items if it["kind"] != "freetext"} == {0, 1, 2}
    assert items != [json.loads(x) for x in path.read_text().splitlines()[:15]]


def test_the_same_sample_on_every_call_and_another_for_another_seed(tmp_path):
    path, _ = sorted_file(tmp_path)
    first, info = select_items(path, 15)
    assert select_items(path, 15) == (first, info), "base and fine-tuned, and every rerun, score the same items"
    other, other_info = select_items(path, 15, seed=info["seed"] + 1)
    assert other != first and other_info["seed"] == info["seed"] + 1


def test_a_rare_kind_keeps_at_least_one_item(tmp_path):
    rows = [{"id": f"f{i}", "kind": "freetext"} for i in range(97)] + [{"id": "c", "kind": "choice"}]
    items, _ = select_items(write_jsonl(tmp_path / "e.jsonl", rows), 10)
    assert len(items) == 10 and [it["id"] for it in items][-1] == "c"


def test_no_cap_or_a_cap_above_the_file_takes_every_item_and_says_nothing_was_sampled(tmp_path):
    path, rows = sorted_file(tmp_path, 4, 2)
    for cap in (None, 6, 50):
        items, sampled = select_items(path, cap)
        assert [it["id"] for it in items] == [r["id"] for r in rows] and sampled is None


def result_with(sampled):
    m = {"n_freetext": 10, "n_choice": 5, "rougeL": 0.2, "accuracy": None}
    st = {"n_items": 15, "sampled": sampled, "metrics": {"base": m, "finetuned": {**m, "rougeL": 0.3}},
          "changes": {"rougeL": {"change": {"change": 0.1, "ci95": [0.05, 0.15]}}}}
    return {**st, "sets": {"held-out": st}}


def test_the_tables_say_n_of_m_items():
    r = result_with({"n": 15, "of": 90, "seed": 0})
    assert "15 of 90 items" in tables.metrics_table(r).loc["items scored"].iloc[0]
    assert "15 of 90 items" in tables.sets_table(r)["items scored"].iloc[0]
    whole = result_with(None)
    assert tables.metrics_table(whole).loc["items scored"].iloc[0] == "all 15 items"
