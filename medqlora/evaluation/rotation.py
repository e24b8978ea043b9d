"""Option-order robustness: a model can score above chance by preferring a position. Every multiple-choice item
scored by log-likelihood is scored again with its options rotated, each answer text moved to every letter once (k
options: k orders, the one as written among them), still without generation. Reported per eval set and model:
loglik_acc_rotated, the accuracy averaged over the orders, and rotation_consistency, the share of items whose chosen
answer text is the same in every order; warned when that share is low or the accuracy falls under rotation.
Yes/no items have no letters to move and are left out.
"""
from __future__ import annotations

from medqlora.data.formats import Example
from medqlora.data.prompts import build_prompt
from medqlora.evaluation.loglik import score_choices, stderr

# Below this share of items answered alike in every order, the picks follow positions more than content (a model
# that always says 'A' scores 0; one that knows the answers, 1).
LOW_CONSISTENCY = 0.5
# An accuracy this much higher as written than averaged over the orders came partly from where the answers sit.
ROTATION_DROP = 0.05


def rotate(item: dict, r: int, tokenizer=None, template: str = "chat", system_prompt: str | None = None) -> dict:
    """The item with each option's text moved r letters on (the last ones wrap to A) and the answer with its text;
    with a tokenizer, its chat prompt built again from the new options as preprocess built it."""
    keys, texts = list(item["options"]), list(item["options"].values())
    k = len(keys)
    options = {keys[j]: texts[(j - r) % k] for j in range(k)}
    out = {**item, "options": options, "answer": keys[(keys.index(item["answer"]) + r) % k]}
    if tokenizer is not None:
        out["prompt"] = build_prompt(Example.from_dict(out), tokenizer, template, system_prompt)
    return out


def add_rotations(model, tokenizer, items: list[dict], choices: list[dict | None], prompt: str, template: str,
                  system_prompt: str | None, batch_size: int, label: str = "", print_fn=print, **kw) -> dict:
    """Score every multiple-choice item that was scored by log-likelihood (choices[i] not None) in its other k - 1
    orders, in one batched pass, and record in choices[i]["rotation"] the letter picked in each order (as written
    first), the original letter of the text it picked, whether it was right, the item's accuracy over the orders and
    whether it picked one text throughout. An item whose chat prompt is not the one its options build (a prompt
    made elsewhere) is not rotated, and counted."""
    chat = tokenizer if prompt == "chat" else None  # lm_eval prompts are made from the options at scoring time
    todo, rotated, skipped = [], [], 0
    for i, (it, ch) in enumerate(zip(items, choices)):
        if not ch or it["kind"] != "choice" or len(it.get("options") or {}) < 2:
            continue
        if chat is not None and rotate(it, 0, chat, template, system_prompt)["prompt"] != it["prompt"]:
            skipped += 1
            continue
        todo.append(i)
        rotated += [rotate(it, r, chat, template, system_prompt) for r in range(1, len(it["options"]))]
    scored = score_choices(model, tokenizer, rotated, prompt, template, batch_size, f"{label} rotated options",
                           print_fn=print_fn, **kw) if rotated else []
    at = 0
    for i in todo:
        ch, keys = choices[i], list(items[i]["options"])
        k = len(keys)
        orders = [ch, *scored[at:at + k - 1]]
        at += k - 1
        picks = [o["pick"] for o in orders]
        chosen = [keys[(keys.index(p) - r) % k] for r, p in enumerate(picks)]  # where the picked text was written
        correct = [bool(o["correct"]) for o in orders]
        ch["rotation"] = {"picks": picks, "chosen": chosen, "correct": correct, "accuracy": sum(correct) / k,
                          "consistent": len(set(chosen)) == 1}
    if skipped:
        print_fn(f"{label}: {skipped} multiple-choice items not rotated (their prompt is not the one the run builds "
                 "from their options)")
    return {"items": len(todo), "skipped": skipped}


def _rotated(choices: list[dict | None]) -> list[dict]:
    return [c["rotation"] for c in choices if c and c.get("rotation")]


def rotation_items(choices: dict[str, list[dict | None]]) -> dict[str, dict[str, list[float]]]:
    """Per model, the per-item figures for paired intervals: each item's accuracy over the orders and whether it was
    consistent; empty for both unless both models were rotated on the same items (a base model's answers stored
    before rotation existed have none)."""
    rot = {who: _rotated(c) for who, c in choices.items()}
    if len({len(r) for r in rot.values()}) != 1 or not next(iter(rot.values()), None):
        return {who: {} for who in choices}
    return {who: {"loglik_acc_rotated": [x["accuracy"] for x in r],
                  "rotation_consistency": [float(x["consistent"]) for x in r]} for who, r in rot.items()}


def rotation_metrics(choices: list[dict | None]) -> dict:
    """One model's rotation figures on one eval set ({} where no item was rotated)."""
    rot = _rotated(choices)
    if not rot:
        return {}
    acc, same = [x["accuracy"] for x in rot], [float(x["consistent"]) for x in rot]
    return {"loglik_acc_rotated": sum(acc) / len(acc), "loglik_acc_rotated_stderr": stderr(acc),
            "rotation_consistency": sum(same) / len(same),
            "rotation": {"items": len(rot), "rotations": sum(len(x["correct"]) for x in rot),
                         "as_written": sum(x["correct"][0] for x in rot) / len(rot)}}


def rotation_warnings(name: str, metrics: dict) -> list[str]:
    """Per model: few items answered alike in every order, or an accuracy that falls when the options move."""
    out = []
    for who, label in (("base", "base"), ("finetuned", "fine-tuned")):
        m = metrics.get(who) or {}
        r = m.get("rotation")
        if not r:
            continue
        same, acc = m["rotation_consistency"], m["loglik_acc_rotated"]
        if same < LOW_CONSISTENCY:
            out.append(f"{name}: {label} picks the same answer under every order of the options for only {same:.0%} "
                       f"of {r['items']} multiple-choice items (log-likelihood): its choice follows where an option "
                       "sits more than what it says")
        if r["as_written"] - acc >= ROTATION_DROP:
            out.append(f"{name}: {label} accuracy falls when the options are rotated: {r['as_written']:.3f} as "
                       f"written -> {acc:.3f} averaged over every order ({r['items']} multiple-choice items, "
                       "log-likelihood): part of it came from where the right answers sit")
    return out
