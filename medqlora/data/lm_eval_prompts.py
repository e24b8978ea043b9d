"""lm-evaluation-harness's prompt (doc_to_text, after the task's description) for one closed-form item, as its
0.4.13 task YAMLs and utils build it, with no chat template and no few-shot examples.

  medqa     'Question: <q>\\nA. <a>\\nB. <b>\\n...Answer:'                    (medqa_4options; the default)
  medmcqa   'Question: <q>\\nChoices:\\nA. <a>\\n...Answer:'                   (utils_medmcqa.doc_to_text)
  mmlu      '<subject line>\\n\\n<q stripped>\\nA. <a>\\n...Answer:'           (mmlu default template + description)
  pubmedqa  'Abstract: <contexts, one a line>\\nQuestion: <q>\\nAnswer:'      (yes/no items; the default)

An item of an lm-eval task (eval.sets with task:) names its style in `lm_eval_prompt` and MMLU's subject line in
`lm_eval_description`; its `verbatim` maps a normalized text (stripped) back to the text as the dataset holds it, so
that the prompt is lm-eval's to the character. The prompt is built from the item's options as they stand, so options
moved to other letters (evaluation/rotation.py) get the prompt they would have.
"""
from __future__ import annotations


def context(item: dict) -> str:
    raw = (item.get("verbatim") or {}).get
    style = item.get("lm_eval_prompt") or ("medqa" if item["kind"] == "choice" else "pubmedqa")
    q = raw(item["question"], item["question"])
    if style == "pubmedqa":
        ctx = item.get("context")
        abstract = f"Abstract: {raw(ctx, ctx)}\n" if ctx or item.get("lm_eval_prompt") else ""
        return f"{abstract}Question: {q}\nAnswer:"
    options = "".join(f"{k}. {raw(t, t)}\n" for k, t in item["options"].items())
    if style == "medmcqa":
        return f"Question: {q}\nChoices:\n{options}Answer:"
    if style == "mmlu":
        return f"{item.get('lm_eval_description') or ''}{q.strip()}\n{options}Answer:"
    return f"Question: {q}\n{options}Answer:"
