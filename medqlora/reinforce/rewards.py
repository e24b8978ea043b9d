"""GRPO's rewards, each a small function of one completion, read by the evaluate stage's own parser
(evaluation.scoring), so that what reinforcement rewards is what the report scores:

  correctness  1 when the answer after the thought is the right option (or yes/no/maybe) and names no second one
  format       reasoning template: half for one closed thought before the answer, half for an answer that parses as
               one option; otherwise 1 for an answer that parses as one option with no thought left open
  length       TRL's soft overlong punishment (DAPO eq. 13): 0, then linearly down to -1 near max_completion_length

The hacks score nothing: two answers ('the answer is A. The answer is B', where the parser alone would take the last),
the answer only inside the thought, a thought never closed, a letter that is not an option, an empty answer.
reward_functions() wraps them for TRL's GRPOTrainer, with the weights of rl.rewards; the correctness wrapper also logs
the distribution of chosen answers and the share of closed thoughts at every step (a model that learns to always say
'A' shows at once).
"""
from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass

from medqlora.data.prompts import THINK_CLOSE, THINK_OPEN
from medqlora.evaluation.scoring import closed_answer, split_reasoning

NONE = "none"  # the label of an answer that names no option
_MARKDOWN = re.compile(r"[*_`#>]+")
_STATED = r"\b(?i:answer|choice)(?:\s+(?i:is)|\s+(?i:would\s+be)|\s*:|\s*=)?\s*(?:(?i:option)\s*)?"


@dataclass
class Reading:
    pick: str | None  # what the evaluate stage's parser reads: an option letter, yes/no/maybe, or None
    answer: str  # the text after the thought
    thought_closed: bool  # False: a thought was opened and never closed (nothing after it is an answer)
    several: bool  # the answer commits to two different options


def options_json(options: dict | None) -> str:
    """An item's options as the dataset column carries them (a JSON object; empty for yes/no items)."""
    return json.dumps(options or {}, ensure_ascii=False)


def committed(item: dict, answer: str) -> set[str]:
    """Every option the answer commits to: a leading letter or decision word ('B. Naloxone', 'Yes.') and each explicit
    statement ('the answer is B', 'Final answer: (C)'). More than one means two answers: the parser alone would take
    the last statement, which would pay a model for hedging."""
    t = _MARKDOWN.sub("", answer).strip()
    if item["kind"] == "choice":
        L = f"[{''.join(item['options'])}]"
        lead = re.match(rf"\W*\(?({L})\)?(?:[.):]|\s*$)", t)
        stated = re.findall(rf"{_STATED}\(?({L})\)?(?!\w)", t)
    else:
        lead = re.match(r"\W*(yes|no|maybe)\b", t, flags=re.I)
        stated = re.findall(r"\banswer(?:\s+is|\s*:)?\s*(yes|no|maybe)\b", t, flags=re.I)
    return {x.lower() if item["kind"] != "choice" else x for x in ([lead.group(1)] if lead else []) + stated}


def read(item: dict, completion: str, opened: bool) -> Reading:
    """One completion read as the evaluate stage reads it. `opened`: the prompt ends inside a thought ('<think>')."""
    _, answer, finished = split_reasoning(completion, opened)
    return Reading(closed_answer(item, completion, opened), answer, finished, len(committed(item, answer)) > 1)


def correctness(item: dict, completion: str, opened: bool) -> float:
    r = read(item, completion, opened)
    return float(r.pick is not None and r.pick == item["answer"] and not r.several)


def one_closed_thought(completion: str, opened: bool) -> bool:
    """Exactly one thought, closed, before the answer: after a prompt that opened it, one '</think>' and no '<think>';
    otherwise the completion starts with '<think>' and has one of each."""
    t = completion.strip()
    closes, opens = t.count(THINK_CLOSE), t.count(THINK_OPEN)
    if opened:
        return closes == 1 and opens == 0
    return t.startswith(THINK_OPEN) and closes == 1 and opens == 1


def format_score(item: dict, completion: str, opened: bool, reasoning: bool) -> float:
    r = read(item, completion, opened)
    parses = r.pick is not None and not r.several
    if reasoning:
        return 0.5 * one_closed_thought(completion, opened) + 0.5 * parses
    return float(parses and r.thought_closed)


def length_penalty(n_tokens: int, max_len: int, cache: int) -> float:
    """TRL's soft overlong punishment for one completion of n_tokens."""
    from trl.rewards import get_soft_overlong_punishment

    return get_soft_overlong_punishment(max_len, cache)([[0] * n_tokens])[0]


# ---------------------------------------------------------------- for TRL's GRPOTrainer


def _text(completion) -> str:
    """A completion as TRL passes it: text, or (conversational prompts) a list with one assistant message."""
    if isinstance(completion, list):
        return "".join(m.get("content") or "" for m in completion if isinstance(m, dict))
    return completion or ""


def _items(answer, kind, options) -> list[dict]:
    return [{"answer": a, "kind": k, "options": json.loads(o) if o else None} for a, k, o in zip(answer, kind, options)]


class AnswerRecorder:
    """The answers chosen at each call (one GRPO step's completions): logged as shares into the trainer's history
    (answers/<label>, answers/thought_closed) through TRL's log_metric, or kept in `pending` for the progress callback
    to write into the step's history entry where a trainer passes no log_metric; counted over the run in `totals`."""

    def __init__(self, labels: list[str] | None = None):
        self.labels = list(labels or [])
        self.totals: Counter = Counter()
        self.pending: list[dict[str, float]] = []

    def record(self, readings: list[Reading], log_metric=None) -> None:
        if not readings:
            return
        picks = [NONE if r.pick is None or r.several else r.pick for r in readings]
        self.totals.update(picks)
        counts = Counter(picks)
        shares = {f"answers/{label}": counts.get(label, 0) / len(picks)
                  for label in dict.fromkeys([*self.labels, *counts, NONE])}
        shares["answers/thought_closed"] = sum(r.thought_closed for r in readings) / len(readings)
        if log_metric is None:
            self.pending.append(shares)
            return
        for name, value in shares.items():
            log_metric(name, value)

    def take_pending(self) -> dict[str, float]:
        """The shares recorded without log_metric since the last call, averaged (empty when none)."""
        calls, self.pending = self.pending, []
        keys = dict.fromkeys(k for c in calls for k in c)
        return {k: sum(c.get(k, 0.0) for c in calls) / len(calls) for k in keys}


def reward_functions(rl, template: str, recorder: AnswerRecorder | None = None) -> tuple[list, list[float]]:
    """The three rewards as TRL reward functions (named correctness, format, length) and their weights (rl.rewards).
    The dataset's columns answer, kind, options and opened reach them as keyword arguments."""
    reasoning = template == "reasoning"

    def correctness_fn(completions, answer, kind, options, opened, log_metric=None, **_):
        items = _items(answer, kind, options)
        readings = [read(it, _text(c), o) for it, c, o in zip(items, completions, opened)]
        if recorder is not None:
            recorder.record(readings, log_metric)
        return [float(r.pick is not None and r.pick == it["answer"] and not r.several)
                for r, it in zip(readings, items)]

    def format_fn(completions, answer, kind, options, opened, **_):
        return [format_score(it, _text(c), o, reasoning)
                for it, c, o in zip(_items(answer, kind, options), completions, opened)]

    from trl.rewards import get_soft_overlong_punishment

    overlong = get_soft_overlong_punishment(rl.max_completion_length, rl.cache)

    def length_fn(completion_ids, **_):
        return overlong(completion_ids)

    correctness_fn.__name__, format_fn.__name__, length_fn.__name__ = "correctness", "format", "length"
    w = rl.rewards
    return [correctness_fn, format_fn, length_fn], [w.correctness, w.format, w.length]
