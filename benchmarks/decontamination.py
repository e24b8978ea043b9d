"""Decontamination speed: training rows checked against eval items for shared 13-word sequences (medqlora.data.
decontaminate), the way the preprocess stage does it, on synthetic medical-length text.

Words are drawn from a Zipf-shaped vocabulary of 30,000 (so most training words are also eval words, as in real
medical text, and every window has to be hashed and looked up); eval items have a question of about 120 words and four
options, training rows a question of about 120 words and an answer of about 130. `--plant` training rows carry a
13-word slice of an eval item's question: all of them, and nothing else, must be found.

    python benchmarks/decontamination.py [--train 100000] [--eval 10000] [--plant 100]

Prints one JSON line: the seconds to index the eval items and to check the training rows, and what was found.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np

from medqlora.data.decontaminate import Index
from medqlora.data.formats import Example


def texts(rng, vocab: list[str], n: int, mean_words: int) -> list[str]:
    """n texts of about mean_words words each, Zipf-distributed over the vocabulary."""
    lengths = rng.integers(mean_words // 2, mean_words * 3 // 2, size=n)
    ranks = np.minimum(rng.zipf(1.2, size=int(lengths.sum())) - 1, len(vocab) - 1)
    words = [vocab[r] for r in ranks]
    out, at = [], 0
    for k in lengths:
        out.append(" ".join(words[at:at + k]))
        at += k
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--train", type=int, default=100_000)
    p.add_argument("--eval", type=int, default=10_000)
    p.add_argument("--plant", type=int, default=100)
    a = p.parse_args()
    rng = np.random.default_rng(0)
    vocab = [f"w{i}" for i in range(30_000)]
    questions = texts(rng, vocab, a.eval, 120)
    options = texts(rng, vocab, a.eval * 4, 4)
    evals = [Example(f"e{i}", "choice", q, "A", options=dict(zip("ABCD", options[4 * i:4 * i + 4])))
             for i, q in enumerate(questions)]
    tq, ta = texts(rng, vocab, a.train, 120), texts(rng, vocab, a.train, 130)
    train = [Example(f"t{i}", "freetext", q, ans) for i, (q, ans) in enumerate(zip(tq, ta))]
    planted = {}
    for k, i in enumerate(rng.choice(a.train, size=a.plant, replace=False)):
        src = int(rng.integers(a.eval))
        words = questions[src].split()
        cut = int(rng.integers(0, max(len(words) - 13, 1)))
        train[i].answer = train[i].answer + " " + " ".join(words[cut:cut + 13]).upper()
        planted[train[i].id] = f"e{src}"
    n_words = sum(len(t.question.split()) + len(t.answer.split()) for t in train)

    t0 = time.perf_counter()
    index = Index({"bench": evals})
    built = time.perf_counter() - t0
    t0 = time.perf_counter()
    found = {ex.id: [index.items[i][1] for i in hits] for ex, hits in index.annotate(iter(train)) if hits}
    checked = time.perf_counter() - t0
    exact = all(planted[t] in found.get(t, []) for t in planted) and set(found) == set(planted)
    print(json.dumps({"train_rows": a.train, "train_words": n_words, "eval_items": a.eval,
                      "eval_windows": int(sum(len(t[0]) for t in index.tables.values())),
                      "index_seconds": round(built, 2), "check_seconds": round(checked, 2),
                      "total_seconds": round(built + checked, 2), "planted": len(planted), "flagged": len(found),
                      "exactly_the_planted": exact}))
    if not exact:
        raise SystemExit("the rows found are not exactly the planted copies")


if __name__ == "__main__":
    main()
