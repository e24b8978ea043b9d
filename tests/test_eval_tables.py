"""What notebook 05 shows: a closed-form table and warnings for every eval set, answers side by side with options,
loops cut short and marks, categories merged and pooled, a labelled chart with the baselines."""
import json

import pytest

from medqlora.evaluation import items as I
from medqlora.evaluation import tables as T
from medqlora.evaluation.loglik import loglik_metrics
from medqlora.evaluation.scoring import closed_warnings, score

OPTS = {"A": "Vitamin A", "B": "Vitamin C", "C": "Iron", "D": "Zinc"}


def test_a_repeated_word_is_cut_short_and_flagged():
    text, looped = I.shorten_loop("Yes, " + "yes, " * 99 + "it does.")
    assert looped and text.startswith("Yes, yes, yes, …") and 'x100, then 2 more words]' in text
    assert len(text) < 80, "a 100-fold word is not printed in full"
    phrase, looped = I.shorten_loop("The murmur of the murmur of the murmur of the murmur of the heart")
    assert looped and "x4" in phrase
    assert I.shorten_loop("Aortic stenosis causes a systolic murmur.") == ("Aortic stenosis causes a systolic murmur.",
                                                                         False)


def test_categories_are_normalized_merged_and_small_ones_pooled(tmp_path):
    assert I.normalize_category("  Obstetrics & Gynecology") == "obstetrics and gynecology"
    merged = I.merge_categories(["obstetrics", "obstetrics and gynecology", "cardiology", "medicine",
                                 "medicine a", "medicine b"])
    assert merged["obstetrics"] == "obstetrics and gynecology" and merged["cardiology"] == "cardiology"
    assert merged["medicine"] == "medicine", "two longer candidates: no merge"
    cats = ["Obstetrics"] + ["obstetrics and gynecology"] * 2 + ["cardiology"] * 12 + ["microbiology"]
    run = fake_run(tmp_path, [row(f"q{i}", "freetext", c, 0.2, 0.4) for i, c in enumerate(cats)])
    st = I.category_table(run)
    t = st.data
    assert t.loc["obstetrics and gynecology", "items"] == 3 and "obstetrics" not in t.index
    assert t.loc["other (1 categories under 3 items)", "items"] == 1
    assert t["items"].dtype.kind == "i" and t.loc["cardiology", "note"] == ""
    assert "under 10 items" in t.loc["obstetrics and gynecology", "note"]
    assert "'obstetrics' counted as 'obstetrics and gynecology'" in st.caption
    few = I.category_table(fake_run(tmp_path, [row(f"q{i}", "freetext", c, 0.2, 0.4) for i, c in
                                               enumerate(["a", "b", "c"])])).data
    assert list(few.index) == ["a", "b", "c"], "all small: flagged, not pooled into one row"
    assert set(few["note"]) == {"under 10 items: no conclusion"}


def test_side_by_side_shows_options_marks_and_loops(tmp_path):
    rows = [dict(row("m1", "choice", "x", 1.0, 0.0), options=OPTS, reference="B", base="B. Vitamin C",
                 finetuned="Yes, " * 100, finetuned_hit_limit=True),
            row("f1", "freetext", "x", 0.25, 0.5)]
    html = I.side_by_side(fake_run(tmp_path, rows), 5).to_html()
    assert "A. Vitamin A" in html and "D. Zinc" in html
    assert "✓" in html and "✗" in html and "1.000" not in html and "0.250" in html
    assert "[loop:" in html and "[cut at the token limit]" in html and html.count("Yes,") < 10


def test_every_eval_set_gets_its_closed_table_and_warnings():
    yes = [{"kind": "yesno", "answer": a} for a in ["yes"] * 13 + ["no"] * 12 + ["maybe"] * 5]
    mcq = [{"kind": "choice", "answer": a, "options": OPTS} for a in "ABCD" * 5]
    sets = {}
    for name, its, texts in (("held-out", mcq, list("ABCD") * 5), ("yesno", yes, ["Yes, yes, yes"] * 30)):
        m = {who: {**score(its, texts), **loglik_metrics(its, [None] * len(its))} for who in ("base", "finetuned")}
        sets[name] = {"metrics": m, "warnings": closed_warnings(name, m)}
    result = {"sets": sets, "metrics": sets["held-out"]["metrics"],
              "warnings": [w for s in sets.values() for w in s["warnings"]]}
    df = T.closed_table(result)
    assert set(df.index.get_level_values(0)) == {"held-out", "yesno"}
    assert df.loc[("yesno", "answer yes"), "base (generated)"] == "30"
    assert df.loc[("yesno", "answer yes"), "references"] == "13"
    assert df.loc[("yesno", "warning"), "fine-tuned (generated)"] == "answers yes to 100% of items"
    text = T.warnings_text(result)
    assert "WARNING yesno: base answers 'yes' to 100% of 30 items (generated)" in text
    assert "held-out: base accuracy 1.000" not in text, "an accuracy above its baselines is no warning"
    m = score(mcq, ["I am not sure."] * 20)
    assert closed_warnings("x", {"base": m, "finetuned": m})[0] == "x: base gives no readable answer to 100% of 20 items " \
        "(generated)"


def test_the_metrics_chart_has_a_y_label_and_the_baselines(tmp_path):
    its = [{"kind": "choice", "answer": a, "options": OPTS} for a in "AABC"] + [{"kind": "freetext", "reference": "x"}]
    m = score(its, ["A", "A", "A", "A", "x"])
    fig = T.plot_metrics({"metrics": {"base": m, "finetuned": m}, "changes": {}}, tmp_path / "m.png")
    ax = fig.axes[0]
    assert ax.get_ylabel() and (tmp_path / "m.png").is_file()
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "chance baseline" in labels and "majority class baseline" in labels


def row(rid, kind, category, b, f):
    return {"id": rid, "kind": kind, "category": category, "question": f"Question {rid}?", "options": None,
            "reference": "ref", "base": "base answer", "base_answer": "base answer", "base_hit_limit": False,
            "finetuned": "tuned answer", "finetuned_answer": "tuned answer", "finetuned_hit_limit": False,
            "base score": b, "finetuned score": f}


def fake_run(tmp_path, rows):
    from medqlora.core.rundir import RunDir

    (tmp_path / "eval").mkdir(exist_ok=True)
    (tmp_path / "eval" / "answers.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return RunDir(tmp_path)


@pytest.mark.parametrize("n", [0, 3])
def test_side_by_side_of_several_sets(tmp_path, n):
    run = fake_run(tmp_path, [row("a", "freetext", None, 0.1, 0.2)])
    (tmp_path / "eval" / "answers_bench.jsonl").write_text(json.dumps(row("b", "freetext", None, 0.3, 0.1)) + "\n")
    st = I.side_by_side(run, n, ["held-out", "bench"])
    assert "held-out: 1 items" in st.caption and "bench: 1 items" in st.caption
    assert len(st.data) == (0 if n == 0 else 2)
