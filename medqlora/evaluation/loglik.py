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
                   print_fn=print, oom_retries: int = 3, oom_log: list | None = None,
                   stats: dict | None = None) -> list[tuple[float, bool]]:
    """(sum of log-probabilities of the continuation, whether greedy decoding would produce it) per pair, as
    lm-eval computes them: the model reads context + continuation minus its last token, right-padded (a causal
    model's real tokens never see the padding), and only the continuation's positions are turned into logits.
    Pairs with the same input (one-token options after one prompt) share one forward pass. `stats` gets the
    pass's batch and its memory peak (peak_gb: GPU peak reserved, or the process RSS after each batch on a CPU)."""
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
    pos, t0, peak = 0, time.time(), 0.0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()  # this pass's own peak
    while pos < len(order):
        chunk = order[pos:pos + batch_size]
        width = len(chunk[0])
        # the scored positions, row by row: the logits at position p predict token p + 1
        n_cont = [len(pairs[inputs[inp][0]][1]) for inp in chunk]  # one input, one continuation length
        rows = [r for r, c in enumerate(n_cont) for _ in range(c)]
        cols = [len(inp) - c + j for inp, c in zip(chunk, n_cont) for j in range(c)]
        ids = torch.tensor([list(inp) + [pad] * (width - len(inp)) for inp in chunk], device=device)
        try:
            with torch.no_grad():
                logits = _scored_logits(model, ids, rows, cols)  # (scored positions, vocab)
        except Exception as e:
            if not _is_oom(e) or batch_size == 1 or len(oom_log) >= oom_retries:
                raise
            free_memory(reset_peak=True)
            oom_log.append({"label": f"{label} log-likelihood", "batch_size": [batch_size, batch_size // 2]})
            print_fn(f"{label}: out of memory at batch {batch_size}; going on at batch {batch_size // 2}")
            batch_size //= 2
            continue
        logp = torch.log_softmax(logits.float(), dim=-1)
        peak = max(peak, _memory_now(device))
        at = 0
        for inp, c in zip(chunk, n_cont):
            lp = logp[at:at + c]
            at += c
            for i in inputs[inp]:
                target = torch.tensor(pairs[i][1], device=lp.device)
                out[i] = (float(lp.gather(-1, target[:, None]).sum()), bool((lp.argmax(-1) == target).all()))
        pos += len(chunk)
    print_fn(f"{label}: {len(pairs)} options scored by log-likelihood in {len(order)} sequences, "
             f"{time.time() - t0:.1f} s")
    if stats is not None:
        stats.update(batch_size=batch_size, sequences=len(order), peak_gb=round(peak, 3))
    return out


def _memory_now(device) -> float:
    """GiB: the GPU's peak reserved since the pass began, or the process RSS (a CPU keeps no peak to reset)."""
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_reserved() / 1024**3
    import psutil

    return psutil.Process().memory_info().rss / 1024**3


def _scored_logits(model, ids, rows: list[int], cols: list[int]):
    """Logits at (rows[j], cols[j]) only, (len(rows), vocab): the hidden states are picked before the output layer
    (a pre-hook on it), so no batch x width x vocabulary tensor is made (703 x 128 x 49,152 floats: 16.5 GiB). A
    model whose output layer is not called as expected gets logits_to_keep's positions, then the pick."""
    import torch

    batch, width = ids.shape
    keep = width - min(cols)  # the positions from the first scored one on
    r, c = torch.tensor(rows, device=ids.device), torch.tensor(cols, device=ids.device)
    picked = []

    def pick(module, args):
        h = args[0]
        if picked or h.dim() != 3 or h.shape[0] != batch or h.shape[1] not in (keep, width):
            return None  # not the call expected: left alone
        picked.append(h.shape[1])
        return (h[r, c - (width - h.shape[1])][None], *args[1:])

    try:
        head = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        head = None
    handle = head.register_forward_pre_hook(pick) if isinstance(head, torch.nn.Module) else None
    logits = None
    try:
        logits = _forward(model, ids, keep)
    except Exception as e:
        from medqlora.training.train import _is_oom

        if not picked or _is_oom(e):
            raise
    finally:
        if handle is not None:
            handle.remove()
    if picked and logits is not None and logits.shape[:2] == (1, len(rows)):
        return logits[0]
    if picked:  # the forward reshaped the output layer's result (or failed on it): again, without the hook
        logits = _forward(model, ids, keep)
    if logits.shape[:2] not in ((batch, keep), (batch, width)):
        raise RuntimeError(f"the model returned logits of shape {tuple(logits.shape)} for {batch} x {width} tokens: "
                           "it cannot be scored by log-likelihood (set eval.choice_scoring: generate)")
    return logits[r, c - (width - logits.shape[1])]


def _forward(model, ids, keep: int):
    """The model's logits for the last `keep` positions (all of them where the forward has no logits_to_keep),
    without a KV cache: nothing reads one."""
    try:
        return model(input_ids=ids, logits_to_keep=keep, use_cache=False).logits
    except TypeError:
        return model(input_ids=ids, use_cache=False).logits


def choice_requests(items: list[dict], tokenizer, prompt: str, template: str) -> tuple[list, list]:
    """Per item, None (free text) or (index of its first pair, option labels); and every option's (context,
    continuation) token ids."""
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
    return plan, pairs


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
