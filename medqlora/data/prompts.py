"""Turning an Example into (prompt, completion) text and into input_ids with a masked prompt.

The same prompt builder serves training and evaluation, so the model is asked at test time exactly
as it was taught.
"""
from __future__ import annotations

from medqlora.data.formats import Example

CHOICE_INSTRUCTION = "Answer with the letter of the correct option."
YESNO_INSTRUCTION = "Answer yes, no or maybe, then explain briefly."
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"


def user_text(ex: Example) -> str:
    """The question as the user asks it, with context and options where the item has them."""
    parts = [f"{ex.instruction}\n"] if ex.instruction else []  # alpaca: the task, then its input
    if ex.context:
        parts.append(f"Context:\n{ex.context}\n")
    if ex.kind == "freetext" and not ex.context:
        return "\n".join([*parts, ex.question])
    parts.append(f"Question: {ex.question}" if ex.context or ex.options else ex.question)
    if ex.options:
        parts.append("\nOptions:\n" + "\n".join(f"{k}. {v}" for k, v in ex.options.items()))
        parts.append(f"\n{CHOICE_INSTRUCTION}")
    elif ex.kind == "yesno":
        parts.append(f"\n{YESNO_INSTRUCTION}")
    return "\n".join(parts)


def answer_text(ex: Example) -> str:
    """What the model is trained to say (before any chain of thought)."""
    if ex.kind == "choice":
        text = f"{ex.answer}. {ex.options[ex.answer]}"
        return f"{text}\n{ex.explanation}" if ex.explanation else text
    if ex.kind == "yesno":
        head = ex.answer.capitalize() + "."
        return f"{head} {ex.explanation}" if ex.explanation else head
    return ex.answer


def messages_for(ex: Example, system_prompt: str | None) -> list[dict]:
    if ex.messages:
        msgs = [dict(t) for t in ex.messages]
    else:
        msgs = [{"role": "user", "content": user_text(ex)}]
    if system_prompt and not any(t["role"] == "system" for t in msgs):
        msgs.insert(0, {"role": "system", "content": system_prompt})
    return msgs


def build_prompt(ex: Example, tokenizer, template: str, system_prompt: str | None = None) -> str:
    if template == "plain":
        sys = f"{system_prompt}\n\n" if system_prompt else ""
        return f"{sys}### Question:\n{user_text(ex)}\n\n### Answer:\n"
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat template; set data.template: plain, or give "
                         "model.chat_template")
    return tokenizer.apply_chat_template(messages_for(ex, system_prompt), tokenize=False,
                                         add_generation_prompt=True)


def build_completion(ex: Example, prompt: str, tokenizer, template: str) -> str:
    """The trained text: the answer (after a <think> block for the reasoning template) and end of turn."""
    body = answer_text(ex)
    if template == "reasoning":
        thought = f"{THINK_OPEN}\n{ex.reasoning or ''}\n{THINK_CLOSE}\n\n{body}"
        # Some R1-distill templates end the generation prompt with "<think>\n" already.
        if prompt.rstrip().endswith(THINK_OPEN):
            thought = thought[len(THINK_OPEN):].lstrip("\n")
        body = thought
    eos = tokenizer.eos_token or ""
    return body + eos


def adds_special_tokens(template: str) -> bool:
    """Chat templates already contain the begin-of-text token; the plain template needs the tokenizer's. Training
    and evaluation both tokenize prompts with this, so each model is asked as it was taught."""
    return template == "plain"


def tokenize_example(prompt: str, completion: str, tokenizer, template: str) -> dict:
    """input_ids of prompt+completion and labels with the prompt masked (-100): only answers are trained."""
    p_ids = tokenizer(prompt, add_special_tokens=adds_special_tokens(template))["input_ids"]
    c_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    return {"input_ids": p_ids + c_ids, "labels": [-100] * len(p_ids) + c_ids,
            "n_prompt_tokens": len(p_ids), "n_tokens": len(p_ids) + len(c_ids)}
