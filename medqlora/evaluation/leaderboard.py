"""lm-evaluation-harness tasks among the eval sets (eval.sets: [multimedqa], config/tasks.py): each is scored by
log-likelihood in its own task's prompt, whatever eval.choice_scoring and eval.choice_prompt say, since that is the
number lm-eval and the Open Medical-LLM Leaderboard report; and each task group gets its average over all its items
(lm-eval's weight_by_size), with a paired interval, once every task of the group was scored."""
from __future__ import annotations

import json

from medqlora.config.tasks import GROUPS, TASKS
from medqlora.evaluation.items import answers_path
from medqlora.evaluation.scoring import bootstrap, paired_bootstrap

KEYS = ("loglik_acc", "loglik_acc_norm")


def set_plan(plan: dict, info: dict | None) -> dict:
    """How one eval set's closed-form items are scored: the run's plan, or for an lm-eval task's set, log-likelihood
    in that task's prompt and no generation."""
    task = (info or {}).get("task")
    if not task:
        return plan
    return {**plan, "mode": "loglik", "prompt": "lm_eval", "generate": False, "loglik": True,
            "why": f"lm-eval task {task}: log-likelihood in its own prompt ({TASKS[task].prompt} format), as "
                   "lm-evaluation-harness and the Open Medical-LLM Leaderboard score it"}


def group_scores(run, sets: dict) -> dict:
    """Per task group whose every task was scored (sets[name]['task']): acc and acc_norm over all the group's items
    for both models, with bootstrap intervals and the paired change (the headline's and compare's row shape)."""
    by_task = {st.get("task"): name for name, st in sets.items() if st.get("task")}
    out = {}
    for group, tasks in GROUPS.items():
        if not all(t in by_task for t in tasks):
            continue
        per = {who: {k: [] for k in KEYS} for who in ("base", "finetuned")}
        for t in tasks:
            for line in answers_path(run, by_task[t]).read_text().splitlines():
                row = json.loads(line)
                for who in per:
                    ch = row.get(f"{who}_loglik")
                    if ch:
                        per[who]["loglik_acc"].append(float(ch["correct"]))
                        per[who]["loglik_acc_norm"].append(float(ch["correct_norm"]))
        n = len(per["base"]["loglik_acc"])
        if not n:
            continue
        out[group] = {"tasks": list(tasks), "sets": [by_task[t] for t in tasks], "n_items": n,
                      "metrics": {who: {k: sum(v) / len(v) for k, v in p.items()} for who, p in per.items()},
                      "changes": {k: {"base_ci95": bootstrap(per["base"][k]),
                                      "finetuned_ci95": bootstrap(per["finetuned"][k]),
                                      "change": paired_bootstrap(per["base"][k], per["finetuned"][k])} for k in KEYS}}
    return out


def table(result: dict):
    """The evaluate notebook's view of the lm-eval tasks: per task its prompt, where its items came from, how many
    (against lm-eval's count), which metrics lm-eval reports for it, and both models' acc and acc_norm; each group's
    size-weighted average below its tasks."""
    import pandas as pd

    rows = []
    for name, st in result.get("sets", {}).items():
        task = TASKS.get(st.get("task"))
        if task is None:
            continue
        m = st["metrics"]
        rows.append({"eval set": name, "lm-eval task": task.name, "prompt": f"lm_eval: {task.prompt}",
                     "items": f"{st['n_items']} (lm-eval: {task.items})", "lm-eval reports": ", ".join(task.reports),
                     **{f"{who} {k.removeprefix('loglik_')}": _num(m[who].get(k))
                        for who in ("base", "finetuned") for k in KEYS}})
    for group, g in (result.get("groups") or {}).items():
        rows.append({"eval set": f"{group} (size-weighted)", "lm-eval task": f"{len(g['tasks'])} tasks",
                     "prompt": "each its own", "items": str(g["n_items"]), "lm-eval reports": "acc",
                     **{f"{who} {k.removeprefix('loglik_')}": _num(g["metrics"][who][k])
                        for who in ("base", "finetuned") for k in KEYS}})
    if not rows:
        return pd.DataFrame({"lm-eval tasks": ["none among eval.sets (eval.sets: [multimedqa] adds them)"]})
    return pd.DataFrame(rows).style.hide(axis="index").set_caption(
        "lm-evaluation-harness tasks: log-likelihood in each task's own prompt, no chat template (acc: the likeliest "
        "option; acc_norm: per character). Numbers to set beside lm-eval's and the Open Medical-LLM Leaderboard's.")


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"
