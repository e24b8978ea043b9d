"""The evaluation manifest: for every eval set, what was scored and how, so that two reports can be told comparable
or not. Per set: the source with its fingerprint (a file's SHA-256, a hub dataset's name, config, split and revision,
or the hash split of data.source), the items scored (how many of how many, the sampling seed, a SHA-256 of their
content), the prompt format, the scoring and the generation settings. It is written into results/evaluate.json and
shown in the report; compare and batch.md read it (differences) to say when runs scored different items or scored
them differently, instead of setting their numbers side by side silently.

Not part of it: the base model and its chat template. Runs of a batch differ in the model on purpose; what must
match is the items and the settings chosen in eval: and data.template.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

ITEM_FIELDS = ("id", "kind", "question", "options", "answer", "context")  # an item's content, not its prompt


def items_sha256(items: list[dict]) -> str:
    """A fingerprint of what the items ask and expect, in any order; prompts left out (the prompt format is
    recorded apart)."""
    lines = sorted(json.dumps([it.get(k) for k in ITEM_FIELDS], ensure_ascii=False, sort_keys=True) for it in items)
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


def loglik_prompt(items: list[dict], plan: dict) -> str | None:
    """The log-likelihood prompt a set's items were scored in: chat, or lm_eval with each lm-eval task format used."""
    if not plan["loglik"]:
        return None
    if plan["prompt"] != "lm_eval":
        return plan["prompt"]
    styles = sorted({it.get("lm_eval_prompt") or ("medqa" if it["kind"] == "choice" else "pubmedqa")
                     for it in items if it["kind"] in ("choice", "yesno")})
    return "lm_eval: " + ", ".join(styles) if styles else "lm_eval"


def build(cfg, prep: dict, chosen: list[tuple[str, list[dict], str]], sampled: dict, plans: dict) -> dict:
    """The manifest of one evaluation: chosen is (set name, items scored, source text) per set; prep the preprocess
    result (where the items came from); sampled each set's {n, of, seed} or None; plans each set's scoring plan."""
    e, d = cfg.eval, cfg.data
    sets = {}
    for name, items, _ in chosen:
        plan, s = plans[name], sampled.get(name)
        generated = plan["generate"] or any(it["kind"] == "freetext" for it in items)
        source = prep.get("eval_fingerprint") if name == "held-out" else \
            ((prep.get("eval_sets") or {}).get(name) or {}).get("fingerprint")
        sets[name] = {
            "source": source,
            "items": {"scored": len(items), "of": s["of"] if s else len(items), "sample_seed": s["seed"] if s else None,
                      "sha256": items_sha256(items)},
            "prompt": {"template": d.template, "loglik": loglik_prompt(items, plan),
                       "system_prompt_sha256": hashlib.sha256(d.system_prompt.encode()).hexdigest()
                       if d.system_prompt else None},
            "scoring": {"generate": generated, "loglik": plan["loglik"]},
            "generation": {"max_new_tokens": e.max_new_tokens, "max_new_tokens_choice": e.max_new_tokens_choice,
                           "temperature": e.temperature, "top_p": e.top_p, "repetition_penalty": e.repetition_penalty}
            if generated else None}
    return {"sets": sets}


# ---------------------------------------------------------------- said in words


def source_text(src: dict | None) -> str:
    if not src:
        return "source not recorded"
    if "split_of" in src:
        return f"{src['eval_fraction']:.0%} of {source_text(src['split_of'])} by hash (seed {src['seed']})"
    if "hub" in src:
        where = " ".join(x for x in (src["hub"], src.get("config"), src.get("split")) if x)
        return f"{where} @ {src.get('revision') or 'unpinned revision'}"
    return f"{Path(src['file']).name} (sha256 {src['sha256'][:12]})"


def items_text(it: dict) -> str:
    seed = f" (sample seed {it['sample_seed']})" if it.get("sample_seed") is not None else ""
    return (f"{it['scored']} of {it['of']}" if it["scored"] != it["of"] else f"{it['scored']}") + seed


def scoring_text(sc: dict) -> str:
    return " and ".join(x for x, on in (("generated", sc["generate"]), ("log-likelihood", sc["loglik"])) if on)


def table(result: dict):
    """The evaluate notebook's view of the manifest: one row per eval set."""
    import pandas as pd

    rows = []
    for name, m in ((result.get("manifest") or {}).get("sets") or {}).items():
        p, g = m["prompt"], m["generation"]
        rows.append({"eval set": name, "source": source_text(m["source"]), "items": items_text(m["items"]),
                     "items sha256": m["items"]["sha256"][:12], "scoring": scoring_text(m["scoring"]),
                     "prompt": f"template {p['template']}" + (", system prompt" if p["system_prompt_sha256"] else "")
                     + (f"; log-likelihood: {p['loglik']}" if p["loglik"] else ""),
                     "generation": ", ".join(f"{k} {v}" for k, v in g.items()) if g else "none"})
    if not rows:
        return pd.DataFrame({"manifest": ["not recorded (evaluated before the manifest was)"]})
    return pd.DataFrame(rows).style.hide(axis="index").set_caption(
        "What each eval set was scored on and how (results/evaluate.json 'manifest'): two runs' numbers compare only "
        "where these agree (compare and batch.md check it)")


# ---------------------------------------------------------------- comparing runs


def differences(runs: list[tuple[str, dict | None, list[str]]]) -> dict[str, list[str]]:
    """Per eval set that two or more runs scored: what makes their numbers not comparable as they stand, one line
    each. runs: (label, manifest or None, the run's eval set names)."""
    names = list(dict.fromkeys(n for _, _, sets in runs for n in sets))
    out = {}
    for name in names:
        have = [(label, (m or {}).get("sets", {}).get(name)) for label, m, sets in runs if name in sets]
        if len(have) < 2:
            continue
        lines = []
        unknown = [label for label, entry in have if entry is None]
        if unknown and len(unknown) < len(have):  # none has one (all evaluated before): nothing to tell apart
            lines.append(f"{name}: {', '.join(unknown)} {'has' if len(unknown) == 1 else 'have'} no evaluation "
                         "manifest (evaluated before it was recorded): whether it scored the same items the same way "
                         "is unknown")
        known = [(label, entry) for label, entry in have if entry is not None]
        if len(known) >= 2:
            lines += _differ(name, known)
        if lines:
            out[name] = lines
    return out


def _groups(known, value) -> list[tuple[str, list[str]]]:
    """The runs grouped by value(entry), in order of first appearance: [(value's text, labels)]."""
    by: dict[str, list[str]] = {}
    for label, entry in known:
        by.setdefault(json.dumps(value(entry), sort_keys=True, default=str), []).append(label)
    return list(by.items())


def _said(groups, text) -> str:
    return " | ".join(f"{text(json.loads(v))} ({', '.join(labels)})" for v, labels in groups)


def _differ(name: str, known) -> list[str]:
    lines = []
    items = _groups(known, lambda e: [e["items"]["sha256"], e["source"], e["items"]])
    if len({json.loads(v)[0] for v, _ in items}) > 1:
        lines.append(f"{name}: scored on different items: " + " | ".join(
            f"{', '.join(labels)} ({source_text(v[1])}; {items_text(v[2])} items, items sha256 {v[0][:12]})"
            for v, labels in ((json.loads(v), labels) for v, labels in items)))
    labels = {"template": "template", "system_prompt_sha256": "system prompt", "loglik": "log-likelihood prompt"}
    prompts = _groups(known, lambda e: e["prompt"])
    if len(prompts) > 1:
        keys = [k for k in labels if len({json.dumps(json.loads(v).get(k)) for v, _ in prompts}) > 1]
        lines.append(f"{name}: scored with different prompts: " + _said(
            prompts, lambda v: ", ".join(f"{labels[k]} {(v.get(k) or 'none')[:40]}" for k in keys)))
    scorings = _groups(known, lambda e: e["scoring"])
    if len(scorings) > 1:
        lines.append(f"{name}: scored differently: " + _said(scorings, scoring_text))
    generating = [(label, e) for label, e in known if e["generation"]]
    gens = _groups(generating, lambda e: e["generation"])
    if len(gens) > 1:
        keys = [k for k in json.loads(gens[0][0]) if len({json.dumps(json.loads(v).get(k)) for v, _ in gens}) > 1]
        lines.append(f"{name}: scored with different generation settings: " + "; ".join(
            f"{k} " + " | ".join(f"{json.loads(v).get(k)} ({', '.join(lb)})" for v, lb in _merge(gens, k))
            for k in keys))
    return lines


def _merge(groups, key):
    """Groups merged where they agree on one key: [(json of a value holding it, labels)]."""
    by: dict[str, tuple[str, list[str]]] = {}
    for v, labels in groups:
        k = json.dumps(json.loads(v).get(key))
        by.setdefault(k, (v, []))[1].extend(labels)
    return list(by.values())
