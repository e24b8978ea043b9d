"""Closed-form items scored by log-likelihood, the pure part: every option's continuation after the prompt, in
batched forward passes, no generation. The train stage scores its closed-form validation items with it at every
evaluation (train.select_by), the evaluate stage its eval sets (evaluation/loglik.py adds the batch size, the picks
and the metrics). It lives here, below both, because training must not import evaluation. The prompts and the
tokenization follow lm-evaluation-harness (evaluation/loglik.py's docstring says how).
"""
from __future__ import annotations

import time

from medqlora.data.lm_eval_prompts import context as lm_eval_task_context
from medqlora.data.prompts import adds_special_tokens

YESNO_CHOICES = ("yes", "no", "maybe")


def lm_eval_context(item: dict) -> str:
    """The prompt of the item's lm-eval task (eval.sets task:), else of lm-eval's medqa task (multiple choice) or
    pubmedqa task (yes/no)."""
    return lm_eval_task_context(item)


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
            if not is_oom(e) or batch_size == 1 or len(oom_log) >= oom_retries:
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
        if not picked or is_oom(e):
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


def is_oom(e: BaseException) -> bool:
    """A CUDA out-of-memory error, however the library wrapped it."""
    import torch

    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def accuracy(model, tokenizer, items: list[dict], prompt: str, template: str, batch_size: int,
             print_fn=print) -> float | None:
    """The share of closed-form items whose option of highest log-likelihood is the reference (lm-eval's acc);
    None when no item is closed-form."""
    plan, pairs = choice_requests(items, tokenizer, prompt, template)
    scored = loglikelihoods(model, tokenizer, pairs, batch_size, "validation", print_fn=print_fn) if pairs else []
    correct = []
    for it, p in zip(items, plan):
        if p is not None:
            start, labels = p
            ll = [scored[start + j][0] for j in range(len(labels))]
            correct.append(labels[max(range(len(ll)), key=ll.__getitem__)] == it["answer"])
    return sum(correct) / len(correct) if correct else None
