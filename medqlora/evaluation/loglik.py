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
           --apply_chat_template.
"""
from __future__ import annotations

import math
import time

from medqlora.data.prompts import adds_special_tokens
from medqlora.evaluation.scoring import answer_distribution

YESNO_CHOICES = ("yes", "no", "maybe")


def lm_eval_context(item: dict) -> str:
    """The prompt of lm-eval's medqa task (multiple choice) or pubmedqa task (yes/no) for one item."""
    if item["kind"] == "choice":
        options = "".join(f"{k}. {v}\n" for k, v in item["options"].items())
        return f"Question: {item['question']}\n{options}Answer:"
    abstract = f"Abstract: {item['context']}\n" if item.get("context") else ""
    return f"{abstract}Question: {item['question']}\nAnswer:"


def requests_for(item: dict, prompt: str) -> tuple[str, list[str], list[str]]:
    """(context, option labels, continuations) of one closed-form item in the chosen prompt format."""
    labels = list(item["options"]) if item["kind"] == "choice" else list(YESNO_CHOICES)
    if prompt == "lm_eval":
        return lm_eval_context(item), labels, [f" {label}" for label in labels]  # lm-eval's target_delimiter
    conts = labels if item["kind"] == "choice" else [label.capitalize() for label in labels]  # as trained: 'Yes.'
    return item["prompt"], labels, conts


def encode_pair(tokenizer, context: str, continuation: str, add_special_tokens: bool) -> tuple[list[int], list[int]]:
    """Context and continuation token ids exactly as lm-eval's HFLM._encode_pair makes them."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer(context + continuation, add_special_tokens=add_special_tokens)["input_ids"]
    ctx = tokenizer(context, add_special_tokens=add_special_tokens)["input_ids"]
    return ctx, whole[len(ctx):]


def loglikelihoods(model, tokenizer, pairs: list[tuple[list[int], list[int]]], batch_size: int, label: str = "",
                   print_fn=print, oom_retries: int = 3, oom_log: list | None = None) -> list[tuple[float, bool]]:
    """(sum of log-probabilities of the continuation, whether greedy decoding would produce it) per pair, as
    lm-eval computes them: the model reads context + continuation minus its last token, right-padded (a causal
    model's real tokens never see the padding), and only the continuation's positions are turned into logits.
    Pairs with the same input (one-token options after one prompt) share one forward pass."""
    import torch

    from medqlora.core.system import free_memory
    from medqlora.training.train import _is_oom

    device = next(model.parameters()).device
    inputs: dict[tuple[int, ...], list[int]] = {}
    for i, (ctx, cont) in enumerate(pairs):
        if not cont or not ctx:
            raise ValueError(f"option {i}: the prompt or the option's continuation tokenizes to nothing")
        inputs.setdefault(tuple((ctx + cont)[:-1]), []).append(i)
    order = sorted(inputs, key=len, reverse=True)  # similar lengths share a batch, longest first (OOM shows early)
    out: list[tuple[float, bool] | None] = [None] * len(pairs)
    oom_log = oom_log if oom_log is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pos, t0 = 0, time.time()
    while pos < len(order):
        chunk = order[pos:pos + batch_size]
        width = len(chunk[0])
        starts = [len(inp) - len(pairs[i][1]) for inp in chunk for i in inputs[inp]]
        lo = min(starts)
        ids = torch.tensor([list(inp) + [pad] * (width - len(inp)) for inp in chunk], device=device)
        try:
            with torch.no_grad():
                logits = _logits(model, ids, lo, width)
        except Exception as e:
            if not _is_oom(e) or batch_size == 1 or len(oom_log) >= oom_retries:
                raise
            free_memory(reset_peak=True)
            oom_log.append({"label": f"{label} log-likelihood", "batch_size": [batch_size, batch_size // 2]})
            print_fn(f"{label}: out of memory at batch {batch_size}; going on at batch {batch_size // 2}")
            batch_size //= 2
            continue
        logp = torch.log_softmax(logits.float(), dim=-1)  # (batch, width - lo, vocab)
        for row, inp in enumerate(chunk):
            for i in inputs[inp]:
                cont = pairs[i][1]
                first = len(inp) - len(cont) - lo  # the logits at position p predict token p + 1
                lp = logp[row, first:first + len(cont)]
                target = torch.tensor(cont, device=lp.device)
                out[i] = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        pos += len(chunk)
    print_fn(f"{label}: {len(pairs)} options scored by log-likelihood in {len(order)} sequences, "
             f"{time.time() - t0:.1f} s")
    return out


def _logits(model, ids, lo: int, width: int):
    """Logits of positions lo..width-1 only (the continuations'), so a large vocabulary does not fill memory."""
    try:
        logits = model(input_ids=ids, logits_to_keep=width - lo).logits
        if logits.shape[1] == width - lo:
            return logits
    except TypeError:  # a forward without logits_to_keep: all positions, then the slice
        pass
    logits = model(input_ids=ids).logits
    if logits.shape[1] != width:
        raise RuntimeError(f"the model returned logits for {logits.shape[1]} of {width} positions: it cannot be scored "
                           "by log-likelihood (set eval.choice_scoring: generate)")
    return logits[:, lo:]


def score_choices(model, tokenizer, items: list[dict], prompt: str, template: str, batch_size: int,
                  label: str = "", **kw) -> list[dict | None]:
    """Per item (None for free text): the options, their log-likelihoods and characters, the pick by acc and by
    acc_norm, and whether each is the reference."""
    # chat: tokenized as in training; lm_eval: the tokenizer's own special tokens (a Llama's begin-of-text), as
    # lm-eval 0.4.13's HFLM encodes when add_bos_token is left unset
    special = adds_special_tokens(template) if prompt == "chat" else True
    plan, pairs = [], []
    for it in items:
        if it["kind"] not in ("choice", "yesno"):
            plan.append(None)
            continue
        context, labels, conts = requests_for(it, prompt)
        plan.append((len(pairs), labels))
        pairs.extend(encode_pair(tokenizer, context, c, special) for c in conts)
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
