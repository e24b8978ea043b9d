"""Multiple-choice and yes/no items scored as lm-evaluation-harness scores them: the log-likelihood of every option's
continuation after the prompt, in batched forward passes, with no generation.

acc: the option of highest log-likelihood. acc_norm: the highest log-likelihood per character of the option
(lm-eval's acc_norm; for one-letter options it equals acc). Tokenization follows lm-eval's HFLM exactly: trailing
whitespace of the context moves to the front of the continuation, context + continuation is encoded as one string,
and the continuation's tokens are those past the context's own encoding (a word's leading space stays with it).

Prompts (eval.choice_prompt):
  chat     the run's own prompt (chat template or plain, as in training and generation), then the letter ('B') or
           'Yes' / 'No' / 'Maybe', the way the model was taught to start its answer.
  lm_eval  lm-eval's medqa task: 'Question: ...\\nA. ...\\nB. ...\\nAnswer:' then ' A', ' B', ...; yes/no items as
           its pubmedqa task: 'Abstract: <context>\\nQuestion: ...\\nAnswer:' then ' yes', ' no', ' maybe'.
           No chat template, the tokenizer's default special tokens: as lm-eval runs a model without
           --apply_chat_template. An lm-eval task's set (eval.sets task:, e.g. multimedqa) is always scored this way,
           in that task's own prompt (data/lm_eval_prompts.py: medmcqa, mmlu, ...; evaluation/leaderboard.py).
"""
from __future__ import annotations

import math

from medqlora.evaluation.scoring import answer_distribution
from medqlora.training.choice_scoring import (  # noqa: F401  (the scoring itself, shared with the train stage)
    YESNO_CHOICES,
    choice_requests,
    encode_pair,
    lm_eval_context,
    loglikelihoods,
    requests_for,
)


def batch_for(cfg, ref: str, pairs: list[tuple[list[int], list[int]]], print_fn=print,
              merged: bool = False) -> tuple[int, dict]:
    """eval.batch_size, or (auto) the largest power of two of sequences whose own estimated peak (no KV cache, logits
    at the scored positions only: memory_plan.estimate_loglik) stays within memory.max_fraction of the budget, at
    most eval.max_batch_size and the number of distinct sequences. Not the generation batch: the two passes hold
    different things."""
    from medqlora.training import memory, memory_plan
    from medqlora.training.model import compute_dtype

    e = cfg.eval
    inputs = {tuple((ctx + cont)[:-1]): len(cont) for ctx, cont in pairs}
    width, per_row = max(map(len, inputs)), max(inputs.values())
    shape, dtype_bytes = memory.model_shape(ref), compute_dtype(cfg.model).itemsize

    def estimate(batch: int) -> dict[str, float]:
        return memory_plan.estimate_loglik(shape, batch, width, batch * per_row, cfg.model.load_in_4bit and not merged,
                                           dtype_bytes)

    if e.batch_size != "auto":
        batch, why = e.batch_size, "eval.batch_size"
    else:
        budget, where = memory_plan.budget_gb(cfg)
        limit = cfg.memory.max_fraction * budget
        batch = 1
        while batch * 2 <= min(e.max_batch_size, len(inputs)) and memory.total(estimate(batch * 2)) <= limit:
            batch *= 2
        why = f"auto: largest batch within {limit:.1f} GiB ({cfg.memory.max_fraction:.0%} of {where})"
    est = estimate(batch)
    print_fn(f"log-likelihood batch {batch} ({why}); estimated peak "
             + ", ".join(f"{k} {v:.2f}" for k, v in est.items()) + f" GiB for {width} tokens a sequence")
    return batch, {"batch_size": batch, "why": why, "width": width,
                   "estimate_gb": {k: round(v, 3) for k, v in est.items()}}


def score_choices(model, tokenizer, items: list[dict], prompt: str, template: str, batch_size: int,
                  label: str = "", **kw) -> list[dict | None]:
    """Per item (None for free text): the options, their log-likelihoods and characters, the pick by acc and by
    acc_norm, and whether each is the reference."""
    plan, pairs = choice_requests(items, tokenizer, prompt, template)
    scored = loglikelihoods(model, tokenizer, pairs, batch_size, label, **kw) if pairs else []
    out = []
    for it, p in zip(items, plan):
        if p is None:
            out.append(None)
            continue
        start, labels = p
        ll = [scored[start + j][0] for j in range(len(labels))]
        chars = [len(lab) for lab in labels]  # lm-eval: len() of each doc_to_choice string
        pick = labels[max(range(len(ll)), key=ll.__getitem__)]
        pick_norm = labels[max(range(len(ll)), key=lambda j: ll[j] / chars[j])]
        out.append({"choices": labels, "loglik": [round(v, 6) for v in ll], "chars": chars,
                    "is_greedy": [scored[start + j][1] for j in range(len(labels))], "pick": pick,
                    "pick_norm": pick_norm, "correct": pick == it["answer"], "correct_norm": pick_norm == it["answer"]})
    return out


def stderr(values: list[float]) -> float | None:
    """lm-eval's stderr of a mean: the sample standard deviation over the square root of n."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


def loglik_items(choices: list[dict | None]) -> dict[str, list[float]]:
    """Per-item correctness by acc and by acc_norm (closed-form items only), for means and intervals."""
    scored = [c for c in choices if c]
    if not scored:
        return {}
    return {"loglik_acc": [float(c["correct"]) for c in scored],
            "loglik_acc_norm": [float(c["correct_norm"]) for c in scored]}


def loglik_metrics(items: list[dict], choices: list[dict | None]) -> dict:
    """loglik_acc and loglik_acc_norm with lm-eval's stderr, and the distribution of picks (by acc) against the
    references with the baselines and the dominant-answer check; None throughout where nothing was scored."""
    per = loglik_items(choices)
    if not per:
        return {"loglik_acc": None, "loglik_acc_norm": None, "loglik_acc_stderr": None,
                "loglik_acc_norm_stderr": None, "loglik_closed": None}
    scored = [(it, c) for it, c in zip(items, choices) if c]
    out = {}
    for k, v in per.items():
        out[k], out[f"{k}_stderr"] = sum(v) / len(v), stderr(v)
    out["loglik_closed"] = answer_distribution([it for it, _ in scored], [c["pick"] for _, c in scored])
    return out
