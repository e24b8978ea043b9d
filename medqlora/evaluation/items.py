"""What notebook 05 shows item by item: the answers side by side (options, loops cut short and flagged, correctness
as a mark) and the scores by category (names normalized, near duplicates merged, small categories pooled)."""
from __future__ import annotations

import json
import re

LOOP_REPEATS = 4  # a word or phrase of up to LOOP_UNIT words said this many times in a row is a loop
LOOP_UNIT = 8
MAX_CHARS = 700  # longer answers are cut in the side-by-side (the whole text stays in answers*.jsonl)
POOL_BELOW = 3  # categories with fewer items are pooled into one 'other' row
FEW_ITEMS = 10  # categories with fewer items are flagged: a difference there means nothing


def answers_path(run, name: str = "held-out"):
    return run / "eval" / ("answers.jsonl" if name == "held-out" else f"answers_{name}.jsonl")


def item_table(run, name: str = "held-out") -> list[dict]:
    """Every answered item of an eval set with both models' scores (saved when it was scored: ROUGE-L, or correct)
    and improved / regressed / unchanged (a ROUGE-L change over 0.05, or a change in correctness)."""
    rows = [json.loads(line) for line in answers_path(run, name).read_text().splitlines()]
    for r in rows:
        d = r["finetuned score"] - r["base score"]
        r["change"] = "improved" if d > 0.05 else "regressed" if d < -0.05 else "unchanged"
        r["delta"] = d
    return rows


# ---------------------------------------------------------------- side by side


def shorten_loop(text: str, keep: int = 3) -> tuple[str, bool]:
    """(text, looped): a run of one word or phrase repeated LOOP_REPEATS times or more is cut after `keep`
    repetitions and flagged with how often it repeats and what followed ('Yes, yes, yes, … [loop: "yes," x97]')."""
    words = text.split()
    norm = [re.sub(r"\W+", "", w.lower()) for w in words]
    for i in range(len(words)):
        for n in range(1, LOOP_UNIT + 1):
            unit = norm[i:i + n]
            if len(unit) < n or not any(unit):
                break
            reps = 1
            while norm[i + reps * n:i + (reps + 1) * n] == unit:
                reps += 1
            if reps >= LOOP_REPEATS:
                rest = len(words) - (i + reps * n)
                after = f", then {rest} more words" if rest else ""
                return (" ".join(words[:i + keep * n]) + f" … [loop: \"{' '.join(words[i:i + n])}\" x{reps}{after}]",
                        True)
    return text, False


def answer_cell(row: dict, who: str) -> str:
    """One model's answer as the side-by-side shows it: loops cut short and flagged, long text cut, a cut at the
    token limit said, and the log-likelihood pick where closed-form items were scored that way too."""
    text = row.get(who)
    if text is None:  # scored by log-likelihood only
        text = f"(not generated) {row[f'{who}_answer']}"
    text, _ = shorten_loop(text)
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS] + f" … [{len(text) - MAX_CHARS} more characters]"
    if row.get(f"{who}_hit_limit"):
        text += " [cut at the token limit]"
    ch = row.get(f"{who}_loglik")
    if ch and row.get(who) is not None:
        text += f"\n[log-likelihood pick: {ch['pick']} {mark(ch['correct'])}]"
    return text


def mark(correct) -> str:
    return "✓" if correct else "✗"


def score_cell(row: dict, who: str) -> str:
    """ROUGE-L for free text (3 decimals), a mark for closed-form items."""
    v = row[f"{who} score"]
    return f"{v:.3f}" if row["kind"] == "freetext" else mark(v >= 0.5)


def question_cell(row: dict) -> str:
    opts = row.get("options")
    return row["question"] + ("\n" + "\n".join(f"{k}. {v}" for k, v in opts.items()) if opts else "")


def side_by_side(run, n: int, names: str | list[str] = "held-out"):
    """Per eval set, the same question (with its options), the reference and both answers, with per-item scores and
    whether the fine-tuned answer improved, regressed or stayed; the n worst changes of each set first. Wrapped,
    left-aligned text."""
    import pandas as pd

    shown, notes = [], []
    for name in [names] if isinstance(names, str) else names:
        rows = item_table(run, name)
        picked = sorted(rows, key=lambda r: r["delta"])[:n]
        shown += [{"eval set": name, "change": r["change"], "kind": r["kind"], "question": question_cell(r),
                   "reference": r["reference"], "base": answer_cell(r, "base"),
                   "base score (ROUGE-L or ✓/✗)": score_cell(r, "base"), "fine-tuned": answer_cell(r, "finetuned"),
                   "fine-tuned score": score_cell(r, "finetuned")} for r in picked]
        counts = pd.Series([r["change"] for r in rows]).value_counts().to_dict()
        looped = {who: sum(shorten_loop(r.get(who) or "")[1] for r in rows) for who in ("base", "finetuned")}
        notes.append(f"{name}: {len(rows)} items, {counts.get('improved', 0)} improved, "
                     f"{counts.get('regressed', 0)} regressed, {counts.get('unchanged', 0)} unchanged; answers that "
                     f"loop: base {looped['base']}, fine-tuned {looped['finetuned']}")
    caption = ("; ".join(notes) + f". Improved / regressed: a ROUGE-L change over 0.05, or correctness. The {n} worst "
               "changes of each set are shown, loops cut short.")
    return (pd.DataFrame(shown).style.set_caption(caption).hide(axis="index")
            .set_properties(**{"text-align": "left", "white-space": "pre-wrap", "vertical-align": "top"}))


# ---------------------------------------------------------------- categories


def normalize_category(name) -> str:
    """Lowercase, '&' and '_' as words, single spaces: 'Obstetrics & Gynecology ' -> 'obstetrics and gynecology'."""
    return " ".join(str(name or "").lower().replace("&", " and ").replace("_", " ").split()) or "(none)"


def merge_categories(names) -> dict[str, str]:
    """Each normalized category -> the one it is counted under. A category whose words are the first words of
    exactly one longest other category joins it ('obstetrics' -> 'obstetrics and gynecology'); where two or more
    longer ones start that way ('medicine' with 'medicine a' and 'medicine b'), it stays apart."""
    names = set(names)
    out = {}
    for a in names:
        words = a.split()
        longer = [b for b in names if b != a and b.split()[:len(words)] == words]
        top = [b for b in longer if not any(c != b and c.split()[:len(b.split())] == b.split() for c in longer)]
        out[a] = top[0] if len(top) == 1 else a
    return out


def category_table(run, name: str = "held-out"):
    """Each category of the eval set (specialty, question type, topic: the data's category column), normalized and
    merged (merge_categories), with its items and both models' mean score (ROUGE-L for free text, correctness for
    closed-form items); categories under POOL_BELOW items pooled into one row (unless all are that small), those
    under FEW_ITEMS flagged."""
    import pandas as pd

    rows = item_table(run, name)
    if not rows or not any(r.get("category") for r in rows):
        return pd.DataFrame({"categories": ["the eval set has no category column"]})
    merged = merge_categories(normalize_category(r.get("category")) for r in rows)
    cat = [merged[normalize_category(r.get("category"))] for r in rows]
    sizes = pd.Series(cat).value_counts()
    small = sorted(sizes[sizes < POOL_BELOW].index)
    if len(small) == len(sizes):  # every category is small: one pooled row would hide them all; flagged instead
        small = []
    pool = f"other ({len(small)} categories under {POOL_BELOW} items)"
    df = pd.DataFrame([{"category": pool if c in small else c, "items": 1, "base": r["base score"],
                        "fine-tuned": r["finetuned score"], "improved": int(r["change"] == "improved"),
                        "regressed": int(r["change"] == "regressed")} for c, r in zip(cat, rows)])
    out = df.groupby("category").agg(items=("items", "sum"), base=("base", "mean"), finetuned=("fine-tuned", "mean"),
                                     improved=("improved", "sum"), regressed=("regressed", "sum"))
    out["change"] = out["finetuned"] - out["base"]  # scores: ROUGE-L for free text, 1/0 for closed-form
    out["note"] = ["" if k >= FEW_ITEMS else f"under {FEW_ITEMS} items: no conclusion" for k in out["items"]]
    out = out.rename(columns={"base": "base score", "finetuned": "fine-tuned score"}).sort_values("change")
    joined = sorted(a for a, b in merged.items() if a != b)
    caption = (f"{name}: {len(rows)} items in {len(out)} categories (names lowercased; "
               + (", ".join(f"'{a}' counted as '{merged[a]}'" for a in joined) or "no near duplicates")
               + (f"; pooled: {', '.join(small)}" if small else "") + ")")
    return out.style.format({"base score": "{:.3f}", "fine-tuned score": "{:.3f}", "change": "{:+.3f}"}) \
        .set_caption(caption)
