"""Decontamination: training examples that share 13 words in a row with an eval item, found before training.

The measure is lm-evaluation-harness's and GPT-3's: 13-word sequences (n-grams) of the text, case, punctuation and
spacing ignored. An eval item is what the model is shown (question, context, options); a training example is all of
its text (question, context, options, answer, reasoning, explanation, turns), each field on its own (a sequence
running from a question into its answer is not a copy of anything). An item of 8 to 12 words counts when all of it
appears (GPT-3 took 8 as the shortest measure); a shorter one only as the same question (the leak check).

Speed: every eval word gets an id, and each chunk of training rows becomes one array of ids (0 for a word no eval item
has, and between fields), whose windows are hashed with numpy and looked up in the sorted hashes of the eval items'
windows. A hash hit is confirmed word for word, so a collision never flags a row (benchmarks/decontamination.py:
100k training rows against 10k eval items).
"""
from __future__ import annotations

import re
from itertools import islice, repeat
from typing import Iterable, Iterator

from medqlora.data.formats import Checks, Example, in_eval_split, iter_examples, open_rows, question_key, resolve_format

N = 13  # lm-eval's and GPT-3's n-gram length
MIN_WHOLE = 8  # an item of MIN_WHOLE..N-1 words is matched whole (GPT-3's shortest n)
_WORD = re.compile(r"\w+")
# ASCII text (most of it): every character that is neither a word character nor a space becomes a space, then split;
# the same words as _WORD finds, three times as fast
_ASCII = str.maketrans({chr(c): " " for c in range(128) if not (chr(c).isalnum() or chr(c) == "_" or chr(c).isspace())})
_MASK = (1 << 24) - 1  # a table of 2**24 flags, set by the eval windows' hashes' low bits, skips most lookups
_BASE = 0x9E3779B97F4A7C15  # an odd 64-bit multiplier: window hashes wrap around modulo 2**64


def words(text: str | None) -> list[str]:
    """The words of a text, lowercased, punctuation and spacing dropped."""
    if not text:
        return []
    low = text.lower()
    return low.translate(_ASCII).split() if low.isascii() else _WORD.findall(low)


def eval_fields(ex: Example) -> list[str]:
    """What an eval item shows the model: the question (user turns for chat items), context and options."""
    q = " ".join(t["content"] for t in ex.messages if t["role"] == "user") if ex.messages else ex.question
    return [q, ex.context or "", *(ex.options or {}).values()]


def train_fields(ex: Example) -> list[str]:
    """Everything a training example trains on or is prompted with."""
    return [ex.question, ex.answer, ex.context or "", *(ex.options or {}).values(), ex.explanation or "",
            ex.reasoning or "", ex.instruction or "", *(t["content"] for t in ex.messages or [])]


class Index:
    """The eval items of every set, ready to be looked up. `items[i]` is (set name, item id) of hit i."""

    def __init__(self, sets: dict[str, list[Example]]):
        import numpy as np

        self.items: list[tuple[str, str]] = []
        self.sizes = {name: len(exs) for name, exs in sets.items()}
        self.vocab: dict[str, int] = {}
        self.exact: dict[str, list[int]] = {}  # question key -> items with that question
        self.ids: list = []  # per item, its fields' word ids with 0 between fields
        self.window: list[int] = []  # per item, the length of the sequence it is matched by (0: by question only)
        by_len: dict[int, list[tuple[int, object]]] = {}  # window length -> (item, its windows' starts)
        for name, exs in sets.items():
            for ex in exs:
                i = len(self.items)
                self.items.append((name, ex.id))
                self.exact.setdefault(question_key(ex), []).append(i)
                ids, n_words = [], 0
                for f in eval_fields(ex):
                    w = words(f)
                    n_words = max(n_words, len(w))
                    ids += [self.vocab.setdefault(x, len(self.vocab) + 1) for x in w] + [0]
                arr = np.array(ids, dtype=np.uint64)
                self.ids.append(arr)
                n = min(N, n_words)
                self.window.append(n if n >= MIN_WHOLE else 0)
                if n >= MIN_WHOLE:
                    by_len.setdefault(n, []).append((i, np.nonzero(_valid(arr, n))[0]))
        # per window length: the eval windows' hashes sorted, with the item and start of each
        self.tables = {}
        self.seen = np.zeros(_MASK + 1, dtype=bool)
        for n, where in by_len.items():
            item = np.concatenate([np.full(len(st), i, dtype=np.int64) for i, st in where])
            start = np.concatenate([st for _, st in where]).astype(np.int64)
            h = _item_hashes(self.ids, item, start, n)
            order = np.argsort(h, kind="stable")
            self.tables[n] = (h[order], item[order], start[order])
            self.seen[(h & np.uint64(_MASK)).astype(np.int64)] = True

    def matches(self, examples: list[Example]) -> list[list[int]]:
        """Per training example, the items (indices into `items`) it overlaps: a shared window, or the same
        question."""
        import numpy as np

        flat, bounds = [0], []
        get = self.vocab.get
        for ex in examples:
            start = len(flat)
            for f in train_fields(ex):
                flat.extend(map(get, words(f), repeat(0)))  # map: no Python frame per word
                flat.append(0)
            bounds.append(start)
        ids = np.array(flat, dtype=np.uint64)
        starts = np.array(bounds, dtype=np.int64)
        out: list[set[int]] = [set(self.exact.get(question_key(ex), ())) for ex in examples]
        for n, (table, item, pos) in self.tables.items():
            if len(ids) < n:
                continue
            h = _hashes(ids, n)
            cand = np.nonzero(_valid(ids, n))[0]
            cand = cand[self.seen[(h[cand] & np.uint64(_MASK)).astype(np.int64)]]
            lo = np.searchsorted(table, h[cand], "left")
            found = (lo < len(table)) & (table[np.minimum(lo, len(table) - 1)] == h[cand])
            cand, lo = cand[found], lo[found]
            hi = np.searchsorted(table, h[cand], "right")
            for w, a, b in zip(cand, lo, hi):  # rare: copies only
                row = int(np.searchsorted(starts, w, "right")) - 1
                for k in range(a, b):
                    # confirmed word for word: a hash collision flags nothing
                    if np.array_equal(ids[w:w + n], self.ids[item[k]][pos[k]:pos[k] + n]):
                        out[row].add(int(item[k]))
        return [sorted(s) for s in out]

    def annotate(self, examples: Iterable[Example], chunk: int = 2048) -> Iterator[tuple[Example, list[int]]]:
        """Each example with the items it overlaps, looked up a chunk at a time (one numpy pass per chunk)."""
        it = iter(examples)
        while batch := list(islice(it, chunk)):
            yield from zip(batch, self.matches(batch))


def held_out_examples(dc) -> list[Example]:
    """The eval side of the hash split of data.source, read ahead of the stage's own pass (so data.source is read
    twice) so that training rows can be checked against it as they stream by."""
    rows, columns = open_rows(dc.source, dc, dc.split)
    fmt, mapping = resolve_format(columns, dc)
    return [ex for ex in iter_examples(rows, fmt, mapping, Checks(), set(), "drop", dc.source)
            if in_eval_split(ex, dc.eval_fraction, dc.seed)]


def _valid(ids, n: int):
    """Which windows of n ids hold no 0 (a word no eval item has, or a field boundary)."""
    import numpy as np

    zeros = np.concatenate([[0], np.cumsum(ids == 0)])
    return (zeros[n:] - zeros[:-n]) == 0


def _hashes(ids, n: int):
    """A hash of every window of n ids (polynomial, wrapping modulo 2**64)."""
    import numpy as np

    m = len(ids) - n + 1
    h = np.zeros(m, dtype=np.uint64)
    base = np.uint64(_BASE)
    for j in range(n):
        h = h * base + ids[j:j + m]
    return h


def _item_hashes(ids_per_item: list, item, start, n: int):
    """The hashes of the given windows of the given items, all items' ids laid end to end."""
    import numpy as np

    offsets = np.cumsum([0] + [len(a) for a in ids_per_item])
    every = _hashes(np.concatenate(ids_per_item), n)
    return every[offsets[item] + start]


# ---------------------------------------------------------------- the stage's bookkeeping


class Report:
    """What the preprocess stage found and did: per eval set, the items that overlap training rows, those rows
    (dropped as leaks, dropped by data.decontaminate: drop, or kept), and a few examples."""

    def __init__(self, index: Index, mode: str):
        self.index, self.mode = index, mode
        self.rows: list[tuple[str, list[int], str]] = []  # (training id, items, action: leak | dropped | kept)
        self.examples: list[dict] = []

    def verdict(self, ex: Example, hits: list[int]) -> str | None:
        """Why the training example is dropped (a drop reason), or None to train on it; counted either way."""
        if not hits:
            return None
        exact = [i for i in hits if i in self.index.exact.get(question_key(ex), ())]
        action = "leak" if exact else "dropped" if self.mode == "drop" else "kept"
        self.rows.append((ex.id, hits, action))
        first = exact[0] if exact else hits[0]
        name, item_id = self.index.items[first]
        if len(self.examples) < 10:
            self.examples.append({"train_id": ex.id, "set": name, "eval_item": item_id, "action": action})
        if exact:  # the held-out split means nothing when the same question is trained on: always dropped
            return "leak: question is also in the eval set" if name == "held-out" else \
                f"leak: question is also in eval set {name}"
        if action == "dropped":
            n = self.index.window[first]
            what = f"{N} words in a row" if n == N else f"all {n} words of the question"
            where = "held-out item" if name == "held-out" else f"eval set {name} item"
            return f"contaminated: shares {what} with {where} {item_id} (data.decontaminate: drop)"
        return None

    def result(self, kept: dict[str, set[str]] | None = None) -> dict:
        """Per set: items overlapping, of how many, the training rows and what became of them; a line each.
        kept: per set, the ids of the items actually scored (a held-out item dropped as over-long is not)."""
        sets = {}
        for name, size in self.index.sizes.items():
            keep = (kept or {}).get(name)

            def in_set(i: int) -> bool:
                set_name, item_id = self.index.items[i]
                return set_name == name and (keep is None or item_id in keep)

            items = {i for _, hits, _ in self.rows for i in hits if in_set(i)}
            acts = [a for _, hits, a in self.rows if any(in_set(i) for i in hits)]
            sets[name] = {"items": len(items), "of": len(keep) if keep is not None else size,
                          "train_rows": len(acts), "leaks": acts.count("leak"), "dropped": acts.count("dropped"),
                          "kept": acts.count("kept")}
        lines = [line(name, s) for name, s in sets.items()]
        return {"measure": f"{N} words in a row (case, punctuation and spacing ignored; an item of {MIN_WHOLE}-{N - 1} "
                           "words: all of it; a shorter one: the same question)", "mode": self.mode, "sets": sets,
                "lines": lines, "examples": self.examples,
                "warnings": [ln for ln, s in zip(lines, sets.values()) if s["kept"]]}


def line(name: str, s: dict) -> str:
    """'<set>: K of N items overlap the training data (R training rows: ...)'."""
    text = f"{name}: {s['items']} of {s['of']} items overlap the training data"
    if not s["train_rows"]:
        return text
    parts = []
    if s["leaks"]:
        parts.append(f"{s['leaks']} with the same question, dropped as {'a leak' if s['leaks'] == 1 else 'leaks'}")
    if s["dropped"]:
        parts.append(f"{s['dropped']} dropped, data.decontaminate is drop")
    if s["kept"]:
        parts.append(f"{s['kept']} kept, data.decontaminate is warn; drop removes them")
    rows = s["train_rows"]
    return f"{text} ({rows} training row{'s' if rows != 1 else ''}: " + "; ".join(parts) + ")"


def table(result: dict):
    """The preprocess notebook's view: per eval set the items that overlap training rows and what became of those
    rows; the first overlaps found, by id, in the caption."""
    import pandas as pd

    df = pd.DataFrame([{"eval set": name, "items overlapping": s["items"], "of": s["of"],
                        "training rows": s["train_rows"], "dropped as leaks": s["leaks"],
                        "dropped (data.decontaminate: drop)": s["dropped"], "kept (decontaminate: warn)": s["kept"]}
                       for name, s in result["sets"].items()])
    shown = "; ".join(f"{e['train_id']} ~ {e['set']} {e['eval_item']} ({e['action']})" for e in result["examples"])
    caption = f"Overlap: {result['measure']}." + (f" First found: {shown}" if shown else "")
    return df.style.hide(axis="index").set_caption(caption)
