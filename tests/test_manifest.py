"""The evaluation manifest (issue 30, point 4): what each eval set was scored on and how, in results/evaluate.json and
the report; compare and batch.md say when runs scored different items or scored them differently."""
import json
from pathlib import Path

from conftest import ROOT

from medqlora.config import RunConfig
from medqlora.core.rundir import NOTEBOOKS, STAGES
from medqlora.evaluation import manifest as MF
from medqlora.run import batch as B
from medqlora.run import compare as comparison

ITEMS = [{"id": "q1", "kind": "choice", "question": "Which vitamin prevents scurvy?", "options": {"A": "C", "B": "D"},
          "answer": "A", "prompt": "<chat>"},
         {"id": "q2", "kind": "freetext", "question": "What is anaphylaxis?", "answer": "A severe allergic reaction.",
          "prompt": "<chat>", "reference": "A severe allergic reaction."}]


def cfg(**ev) -> RunConfig:
    return RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": "m"}, "data": {"source": "d.jsonl"},
                                     "eval": {"max_new_tokens": 96, **ev}})


PLAN = {"mode": "both", "prompt": "chat", "generate": True, "loglik": True, "why": "eval.choice_scoring: both"}


def test_the_manifest_records_source_items_seed_prompt_scoring_and_generation():
    prep = {"eval_fingerprint": {"file": "/data/medqa_eval.jsonl", "sha256": "ab" * 32},
            "eval_sets": {"bench": {"fingerprint": {"hub": "org/bench", "config": "x", "split": "test",
                                                    "revision": "c0ffee"}}}}
    lm_plan = {**PLAN, "mode": "loglik", "prompt": "lm_eval", "generate": False}
    m = MF.build(cfg(), prep, [("held-out", ITEMS, "held-out"), ("bench", ITEMS[:1], "bench")],
                 {"held-out": {"n": 2, "of": 60, "seed": 0}, "bench": None}, {"held-out": PLAN, "bench": lm_plan})
    held, bench = m["sets"]["held-out"], m["sets"]["bench"]
    assert held["source"] == {"file": "/data/medqa_eval.jsonl", "sha256": "ab" * 32}
    assert held["items"] == {"scored": 2, "of": 60, "sample_seed": 0, "sha256": MF.items_sha256(ITEMS)}
    assert held["prompt"] == {"template": "chat", "system_prompt_sha256": None, "loglik": "chat"}
    assert held["scoring"] == {"generate": True, "loglik": True}
    assert held["generation"]["max_new_tokens"] == 96 and held["generation"]["temperature"] == 0.0
    assert bench["source"] == {"hub": "org/bench", "config": "x", "split": "test", "revision": "c0ffee"}
    assert bench["items"]["of"] == 1 and bench["items"]["sample_seed"] is None
    assert bench["prompt"]["loglik"] == "lm_eval: medqa" and bench["scoring"] == {"generate": False, "loglik": True}
    assert bench["generation"] is None, "nothing generated: no generation settings to compare"
    # the items' fingerprint is their content, in any order, not their prompts
    assert MF.items_sha256(ITEMS[::-1]) == MF.items_sha256([{**it, "prompt": "other"} for it in ITEMS])
    assert MF.items_sha256(ITEMS[:1]) != MF.items_sha256([{**ITEMS[0], "answer": "B"}])
    shown = MF.table({"manifest": m}).data
    assert list(shown["eval set"]) == ["held-out", "bench"]
    assert "medqa_eval.jsonl (sha256 abababababab)" in shown.iloc[0]["source"]
    assert shown.iloc[0]["items"] == "2 of 60 (sample seed 0)"


def fake_run(folder: Path, name: str, manifest: dict | None, rouge=(0.05, 0.02, 0.08)) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"run_name: {name}\nmodel: {{name_or_path: m-{name}}}\ndata: {{source: d}}\n")
    stages = [{"name": s, "status": "ok", "seconds": 1.0, "notebook": str(folder / NOTEBOOKS[s]), "error": None}
              for s in STAGES]
    (folder / "summary.json").write_text(json.dumps({"run_id": name, "status": "ok", "stages": stages}))
    (folder / "results").mkdir()
    change, lo, hi = rouge
    st = {"n_items": 60, "metrics": {"base": {"rougeL": 0.2, "n_freetext": 40, "n_choice": 20},
                                     "finetuned": {"rougeL": 0.2 + change, "n_freetext": 40, "n_choice": 20}},
          "changes": {"rougeL": {"change": {"change": change, "ci95": [lo, hi], "n": 40}}}}
    ev = {"sets": {"held-out": st}}
    if manifest is not None:
        ev["manifest"] = manifest
    (folder / "results" / "evaluate.json").write_text(json.dumps(ev))
    return folder


def manifest_for(items, source: str, max_new_tokens=96, prompt=PLAN) -> dict:
    return MF.build(cfg(max_new_tokens=max_new_tokens), {"eval_fingerprint": {"file": source, "sha256": source[-1] * 64}},
                    [("held-out", items, "held-out")], {"held-out": None}, {"held-out": prompt})


OTHER = [{**ITEMS[0], "question": "Which vitamin prevents rickets?"}, ITEMS[1]]


def test_compare_of_two_runs_scored_on_different_eval_files_says_so(tmp_path):
    a = fake_run(tmp_path / "a", "a", manifest_for(ITEMS, "/data/eval_a.jsonl"), (0.05, 0.02, 0.08))
    b = fake_run(tmp_path / "b", "b", manifest_for(OTHER, "/data/eval_b.jsonl"), (0.09, 0.04, 0.12))
    printed = []
    runs = comparison.load_runs([a, b], print_fn=printed.append)
    notes = comparison.not_comparable(runs)
    assert list(notes) == ["held-out"]
    line = notes["held-out"][0]
    assert line.startswith("held-out: scored on different items: a (eval_a.jsonl") and "b (eval_b.jsonl" in line
    assert any(line in p for p in printed), "load_runs says it where the comparison notebook shows its output"
    rows = comparison.metric_rows(runs)
    assert not any(r["best"] for r in rows), "no best run among runs that scored different items"
    assert all(r["comparable"] is False for r in rows)
    assert "different items" in comparison.metrics_table(runs).caption
    md = comparison.summary_md(runs)
    assert "**Not comparable as they stand**" in md and line in md


def test_the_same_items_with_other_settings_are_said_and_the_same_run_twice_is_silent(tmp_path):
    a = fake_run(tmp_path / "a", "a", manifest_for(ITEMS, "/data/eval.jsonl"))
    b = fake_run(tmp_path / "b", "b", manifest_for(ITEMS[::-1], "/data/eval.jsonl", max_new_tokens=128))
    c = fake_run(tmp_path / "c", "c", manifest_for(ITEMS, "/data/eval.jsonl"))
    notes = comparison.not_comparable(comparison.load_runs([a, b, c], print_fn=lambda *x: None))
    assert notes["held-out"] == ["held-out: scored with different generation settings: max_new_tokens 96 (a, c) | "
                                 "128 (b)"]
    rows = comparison.metric_rows(comparison.load_runs([a, c], print_fn=lambda *x: None))
    assert all(r["comparable"] for r in rows) and comparison.not_comparable(comparison.load_runs([a, c])) == {}
    lm = {**PLAN, "prompt": "lm_eval"}
    d = fake_run(tmp_path / "d", "d", manifest_for(ITEMS, "/data/eval.jsonl", prompt=lm))
    notes = comparison.not_comparable(comparison.load_runs([a, d], print_fn=lambda *x: None))
    assert notes["held-out"] == ["held-out: scored with different prompts: log-likelihood prompt chat (a) | "
                                 "log-likelihood prompt lm_eval: medqa (d)"]


def test_a_run_without_a_manifest_is_named(tmp_path):
    a = fake_run(tmp_path / "a", "a", manifest_for(ITEMS, "/data/eval.jsonl"))
    old = fake_run(tmp_path / "old", "old", None)
    notes = comparison.not_comparable(comparison.load_runs([a, old], print_fn=lambda *x: None))
    assert notes["held-out"] == ["held-out: old has no evaluation manifest (evaluated before it was recorded): "
                                 "whether it scored the same items the same way is unknown"]


def test_batch_md_says_when_runs_scored_different_items(tmp_path, monkeypatch):
    a = fake_run(tmp_path / "a", "a", manifest_for(ITEMS, "/data/eval_a.jsonl"))
    b = fake_run(tmp_path / "b", "b", manifest_for(OTHER, "/data/eval_b.jsonl"))
    monkeypatch.setattr(B, "compare_report", lambda folders, out: out / "compare.html")
    out = B.batch_summary([a, b], tmp_path / "reports", [0, 0])
    md = (out / "batch.md").read_text()
    assert "**Not comparable as they stand**" in md and "held-out: scored on different items" in md


def test_the_bundled_files_fingerprint_is_their_sha256(tmp_path):
    import hashlib

    from medqlora.data.benchmarks import fingerprint

    path = ROOT / "data" / "medqa_eval.jsonl"
    c = RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": "m"},
                                  "data": {"source": str(path)}}).data
    assert fingerprint(c) == {"file": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
