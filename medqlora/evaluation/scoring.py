"""Scoring generated answers so that the numbers cannot mislead: answer extraction that reads prose and
markdown, ROUGE, accuracy with parse rate, 95% bootstrap intervals for every metric and every change,
degeneration (loops, answers cut off at the token limit), the distribution of closed-form answers against
majority-class and chance baselines, and reasoning answers scored after their thought.
"""
from __future__ import annotations

import re
from collections import Counter

from medqlora.data.prompts import THINK_CLOSE, THINK_OPEN

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL")
DOMINANT_SHARE = 0.6  # one predicted answer in more than this share of items gets a warning


# ---------------------------------------------------------------- reasoning


def prompt_opens_think(items: list[dict]) -> bool:
    """R1-style chat templates end the generation prompt with '<think>': generated text starts inside the thought."""
    return any(it["prompt"].rstrip().endswith(THINK_OPEN) for it in items)


def split_reasoning(text: str, prompt_opened_think: bool = False) -> tuple[str | None, str, bool]:
    """(thought, answer, finished). An R1-style prompt that ends with '<think>' makes the generation start
    inside the thought; a thought that never closes (cut off at max_new_tokens) has no answer."""
    t = text.strip()
    opened = prompt_opened_think or t.startswith(THINK_OPEN)
    if THINK_CLOSE in t:
        thought, answer = t.rsplit(THINK_CLOSE, 1)
        return thought.replace(THINK_OPEN, "").strip(), answer.strip(), True
    if opened:
        return t.replace(THINK_OPEN, "").strip(), "", False
    return None, t, True


def answer_part(text: str, prompt_opened_think: bool = False) -> str:
    return split_reasoning(text, prompt_opened_think)[1]


# ---------------------------------------------------------------- closed-form answer extraction

_MARKDOWN = re.compile(r"[*_`#>]+")


def _clean(text: str) -> str:
    return _MARKDOWN.sub("", text).strip()


def extract_choice(text: str, options: dict[str, str], prompt_opened_think: bool = False) -> str | None:
    """The option letter an answer commits to, or None when it cannot be read, names two options or hedges
    ('Option B or C', 'B/C'), or only rules an option out ('Not B.', 'The answer is not A.').

    In order: an explicit statement ('the answer is B', 'Answer: (B)', the last one wins); a lone letter;
    a letter in parentheses; a line that starts with a letter and that option's text; 'option B'; the one
    option whose text appears. A capital letter that starts a word ('A recent course', 'I think', 'C. difficile')
    is not an answer by itself."""
    t = _clean(answer_part(text, prompt_opened_think))
    if not t:
        return None
    L = f"[{''.join(options)}]"
    pick = _pick(t, options, L, _negated(t, L))
    return None if pick in _alternatives(t, L) else pick  # 'Option B or C', 'B/C' name no one option


# a letter right after a negation ('Not B.', 'the answer is not A', "isn't option C") is ruled out, not chosen
_NEGATION = (r"(?:\bnot|n't|\bnever|\bexcept|\bnor|\brather\s+than|\binstead\s+of)\s+"
             r"(?:(?:the\s+)?(?:option|answer|choice)\s*)?")


def _negated(t: str, L: str) -> set[int]:
    """Positions of option letters that a negation rules out."""
    return {m.start(1) for m in re.finditer(rf"{_NEGATION}\(?({L})\b", t, flags=re.I)}


def _alternatives(t: str, L: str) -> set[str]:
    """Letters offered as alternatives ('B or C', 'either (B) or (D)', 'B/C'): an answer naming one of them hedges."""
    out = set()
    for m in re.finditer(rf"(?<![\w.])\(?({L})\)?\s*(?:\bor\b|/)\s*\(?({L})\)?(?!\w)", t):
        out.update(m.groups())
    return out


def _pick(t: str, options: dict[str, str], L: str, negated: set[int]) -> str | None:
    stated = []
    for m in re.finditer(rf"\b(?:answer|choice)(?:\s+is|\s+would\s+be|\s*:|\s*=)?\s*(?:option\s*)?"
                         rf"(?:\(({L})\)|({L})\b)(\s+or\s+\(?{L}\b)?", t, flags=re.I):
        paren, bare, alternative = m.groups()
        if bare and _as_word(t, m.end(2), bare, strict=False):
            continue  # 'the answer is a course of ...': an article, not option A
        stated.append(None if alternative else (paren or bare).upper())  # 'B or C' names no one option
    if stated:
        return stated[-1]
    lone = re.fullmatch(rf"\(?({L})\)?[.:)]?", t, flags=re.I)
    if lone:
        return lone.group(1).upper()
    parens = {m.group(1).upper() for m in re.finditer(rf"\(({L})\)", t, flags=re.I) if m.start(1) not in negated}
    if len(parens) == 1:
        return parens.pop()
    first = re.match(rf"\(?({L})[.):]\s*(.*)", t)
    if first and (not first.group(2) or first.group(2).lower().startswith(options[first.group(1)].lower()[:20])):
        return first.group(1)
    named = {m.group(1).upper() for m in re.finditer(rf"\boption\s*\(?({L})\b", t, flags=re.I)
             if m.start(1) not in negated}
    if len(named) == 1:
        return named.pop()
    # a capital letter standing alone ('... points to B.'), not as a word ('A recent', 'I think', 'C. difficile')
    low = t.lower()
    spans = {k: [m.span() for m in re.finditer(rf"(?<!\w){re.escape(v.lower())}(?!\w)", low)]
             for k, v in options.items() if v}
    inside = lambda i: any(a <= i < b for ss in spans.values() for a, b in ss)  # noqa: E731  ('vitamin C')
    alone = {m.group(1) for m in re.finditer(rf"(?<![\w.])({L})(?![\w])", t)
             if not _as_word(t, m.end(1), m.group(1)) and not inside(m.start(1)) and m.start(1) not in negated}
    if len(alone) == 1:
        return alone.pop()
    hits = [k for k, ss in spans.items() if ss]
    return hits[0] if len(hits) == 1 else None


def _as_word(text: str, end: int, letter: str, strict: bool = True) -> bool:
    """A letter used as a word or abbreviation: lowercase and followed by more text ('is a course'), followed by
    '. word' ('C. difficile'), or (strict, for letters not introduced by 'the answer is') a capital followed by a
    lowercase word ('A recent', 'I think')."""
    rest = text[end:]
    if letter.islower() and re.match(r"\s+\w", rest):
        return True
    return bool(re.match(r"\.\s*[a-z]", rest) or (strict and re.match(r"\s+[a-z]", rest)))


def extract_decision(text: str, prompt_opened_think: bool = False) -> str | None:
    """yes / no / maybe: an explicit 'the answer is ...' first (the last one), then a leading word, then the
    only decision word used."""
    t = _clean(answer_part(text, prompt_opened_think)).lower()
    stated = re.findall(r"\banswer(?:\s+is|\s*:)?\s*(yes|no|maybe)\b", t)
    if stated:
        return stated[-1]
    lead = re.match(r"\W*(yes|no|maybe)\b", t)
    if lead:
        return lead.group(1)
    found = set(re.findall(r"\b(yes|no|maybe)\b", t))
    return found.pop() if len(found) == 1 else None


def closed_answer(item: dict, text: str, prompt_opened_think: bool = False) -> str | None:
    """The letter (choice) or yes/no/maybe (yesno) that a generated answer commits to, or None."""
    if item["kind"] == "choice":
        return extract_choice(text, item["options"], prompt_opened_think)
    return extract_decision(text, prompt_opened_think)


# ---------------------------------------------------------------- degeneration


def loops(text: str, n: int = 3, repeats: int = 3) -> bool:
    """An answer that repeats itself: some n-word sequence occurs `repeats` times or more."""
    words = text.lower().split()
    grams = Counter(tuple(words[i:i + n]) for i in range(len(words) - n + 1))
    return bool(grams) and max(grams.values()) >= repeats


# ---------------------------------------------------------------- metrics


def rouge_items(predictions: list[str], references: list[str]) -> dict[str, list[float]]:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(list(ROUGE_KEYS), use_stemmer=True)
    out = {k: [] for k in ROUGE_KEYS}
    for p, r in zip(predictions, references):
        s = scorer.score(r, p)
        for k in ROUGE_KEYS:
            out[k].append(s[k].fmeasure)
    return out


def rouge_scores(predictions: list[str], references: list[str]) -> dict[str, float]:
    items = rouge_items(predictions, references)
    n = max(len(predictions), 1)
    return {k: sum(v) / n for k, v in items.items()}


def item_scores(items: list[dict], answers: list[dict | str], opened: bool = False) -> dict[str, list[float]]:
    """Per-item values of every metric (free-text ROUGE, closed-form correctness and parse), for intervals."""
    texts = [a["text"] if isinstance(a, dict) else a for a in answers]
    free = [(it, t) for it, t in zip(items, texts) if it["kind"] == "freetext"]
    closed = [(it, t) for it, t in zip(items, texts) if it["kind"] in ("choice", "yesno")]
    out = rouge_items([answer_part(t, opened) for _, t in free], [it["reference"] for it, _ in free]) if free \
        else {k: [] for k in ROUGE_KEYS}
    parsed = [closed_answer(it, t, opened) for it, t in closed]
    out["accuracy"] = [float(p == it["answer"]) for p, (it, _) in zip(parsed, closed)]
    out["parse_rate"] = [float(p is not None) for p in parsed]
    return out


def headline_per_item(items: list[dict], per: dict[str, list[float]]) -> list[float]:
    """Each item's headline score, in item order, from item_scores: ROUGE-L for free text, 1/0 for closed-form."""
    free, closed = iter(per["rougeL"]), iter(per["accuracy"])
    return [next(free) if it["kind"] == "freetext" else next(closed) for it in items]


def score(items: list[dict], answers: list[dict | str], opened: bool = False,
          per: dict[str, list[float]] | None = None) -> dict:
    """Means of every metric, the item counts, degeneration and answer lengths, closed-form distributions.
    `per`: item_scores of these answers, when the caller has them already."""
    texts = [a["text"] if isinstance(a, dict) else a for a in answers]
    per = per or item_scores(items, answers, opened)
    n_free = sum(1 for it in items if it["kind"] == "freetext")
    n_closed = sum(1 for it in items if it["kind"] in ("choice", "yesno"))
    out = {"n_freetext": n_free, "n_choice": n_closed}
    for k, v in per.items():
        out[k] = sum(v) / len(v) if v else None
    splits = [split_reasoning(t, opened) for t in texts]
    out["answer_words_mean"] = sum(len(s[1].split()) for s in splits) / max(len(texts), 1)
    out["looping"] = sum(loops(t) for t in texts) / max(len(texts), 1)
    hit = [a.get("hit_limit") for a in answers if isinstance(a, dict)]
    out["hit_token_limit"] = sum(bool(h) for h in hit) / len(hit) if hit else None
    out["unfinished_thought"] = sum(not s[2] for s in splits)
    out["closed"] = closed_distribution(items, texts, opened)
    return out


def closed_distribution(items: list[dict], texts: list[str], opened: bool = False) -> dict | None:
    """Generated closed-form answers against the references (answer_distribution), with up to 10 unread answers."""
    closed = [(it, t) for it, t in zip(items, texts) if it["kind"] in ("choice", "yesno")]
    if not closed:
        return None
    picks = [closed_answer(it, t, opened) for it, t in closed]
    return {**answer_distribution([it for it, _ in closed], picks),
            "unparsed": [t[:200] for (_, t), p in zip(closed, picks) if p is None][:10]}


def answer_distribution(items: list[dict], picks: list[str | None]) -> dict:
    """Predicted answers (None: unread) against the references, the majority-class and chance baselines, and whether
    one answer dominates the predictions (a model that always says 'A' is not a model that knows a little)."""
    predicted = Counter(str(p) for p in picks)
    reference = Counter(it["answer"] for it in items)
    n = len(items)
    chance = sum(1 / (len(it["options"]) if it["kind"] == "choice" else 3) for it in items) / n
    top, top_n = predicted.most_common(1)[0]
    return {"predicted": dict(predicted), "reference": dict(reference),
            "majority_baseline": reference.most_common(1)[0][1] / n, "chance_baseline": chance,
            "dominant": top if top_n / n > DOMINANT_SHARE else None, "dominant_share": top_n / n}


def closed_warnings(name: str, metrics: dict) -> list[str]:
    """What a reader must not miss about one eval set's closed-form scores, per model and scoring: one answer given
    to most items, and an accuracy not above the chance or the majority-class baseline."""
    out = []
    for who, label in (("base", "base"), ("finetuned", "fine-tuned")):
        m = metrics[who]
        for acc_key, dist_key, how in (("accuracy", "closed", "generated"), ("loglik_acc", "loglik_closed",
                                                                              "log-likelihood")):
            d, acc = m.get(dist_key), m.get(acc_key)
            if not d or acc is None:
                continue
            n = sum(d["predicted"].values())
            if d["dominant"] == "None":  # most answers could not be read as any option
                out.append(f"{name}: {label} gives no readable answer to {d['dominant_share']:.0%} of {n} items ({how})")
            elif d["dominant"]:
                out.append(f"{name}: {label} answers {d['dominant']!r} to {d['dominant_share']:.0%} of {n} items ({how})")
            floor = max(d["chance_baseline"], d["majority_baseline"])
            if acc <= floor:
                which = "chance" if d["chance_baseline"] >= d["majority_baseline"] else "majority-class"
                out.append(f"{name}: {label} accuracy {acc:.3f} ({how}) is not above the {which} baseline {floor:.3f}")
    return out


def bootstrap(values: list[float], n: int = 2000, seed: int = 0) -> list[float] | None:
    """95% interval of a mean by resampling items."""
    import numpy as np

    if not values:
        return None
    v = np.asarray(values, dtype=float)
    means = v[np.random.default_rng(seed).integers(0, len(v), size=(n, len(v)))].mean(axis=1)
    return [float(x) for x in np.percentile(means, [2.5, 97.5])]


def paired_bootstrap(base: list[float], tuned: list[float], n: int = 2000, seed: int = 0) -> dict | None:
    """Change in the mean (fine-tuned - base) with a 95% interval from resampling items in pairs."""
    import numpy as np

    if not base:
        return None
    b, t = np.asarray(base, dtype=float), np.asarray(tuned, dtype=float)
    idx = np.random.default_rng(seed).integers(0, len(b), size=(n, len(b)))
    deltas = (t[idx] - b[idx]).mean(axis=1)
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return {"change": float(t.mean() - b.mean()), "ci95": [float(lo), float(hi)], "n": len(b)}


def intervals(items: list[dict], base: list, tuned: list, opened: bool = False,
              per: tuple[dict, dict] | None = None) -> dict:
    """For every metric: each model's 95% interval and the paired change with its interval. `per`: the
    (base, fine-tuned) item_scores, when the caller has them already."""
    b, t = per or (item_scores(items, base, opened), item_scores(items, tuned, opened))
    return {k: {"base_ci95": bootstrap(b[k]), "finetuned_ci95": bootstrap(t[k]), "change": paired_bootstrap(b[k], t[k])}
            for k in b if b[k]}
