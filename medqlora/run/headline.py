"""What happened, in one screen: per eval set and metric base -> fine-tuned with the paired 95% interval and a
verdict, every warning in one list, the training and validation loss in one line, and links to each stage. Read
from the run folder's results/*.json only (a missing file or key means that part is not shown, never a failure),
and written at the top of report.html and summary.md."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from medqlora.core.rundir import NOTEBOOKS, RunDir, read_json

# A change of at least this much (absolute share of answers) in looping or token-limit rates is worth a warning,
# and so is a fine-tuned rate at or above HIGH_RATE whatever it was before.
RATE_CHANGE, HIGH_RATE = 0.10, 0.50
# A ROUGE change that comes with answers this many times longer or shorter is as much about length as content.
LENGTH_RATIO = 1.5
LABELS = {"rougeL": "ROUGE-L (free text)", "accuracy": "accuracy (closed-form, generated)", "rouge1": "ROUGE-1",
          "rouge2": "ROUGE-2", "loglik_acc": "accuracy (closed-form, log-likelihood: lm-eval acc)",
          "loglik_acc_norm": "accuracy (log-likelihood per character: lm-eval acc_norm)",
          "loglik_acc_rotated": "accuracy (log-likelihood, averaged over option rotations)",
          "rotation_consistency": "same answer under every option rotation (share of items)"}
NOT_IN_HEADLINE = {"rouge1", "rouge2", "rougeLsum", "parse_rate"}  # in the evaluate stage's own tables


@dataclass
class Headline:
    rows: list[dict] = field(default_factory=list)  # set, metric, items, base, finetuned, change, ci95, verdict
    warnings: list[str] = field(default_factory=list)
    samples: list[str] = field(default_factory=list)  # "<set>: N of M items (...)" where eval.max_samples sampled
    losses: str | None = None
    decontamination: list[str] = field(default_factory=list)  # per eval set: items that overlap training rows
    kept: str | None = None  # which checkpoint is the adapter and which signal chose it (train.select_by)
    stages: list[tuple[str, str]] = field(default_factory=list)  # (stage, status)


def _load(run: RunDir, stage: str) -> dict | None:
    path = run.result_path(stage)
    try:
        return read_json(path) if path.is_file() else None
    except (OSError, ValueError):
        return None


def stored_warnings(run: RunDir) -> list[str]:
    """Every line under a `warnings` key, at any depth, of every results/*.json: the stages' own words, so that a
    warning a stage adds reaches the headline without a change here."""
    def walk(obj) -> list[str]:
        if isinstance(obj, dict):
            return [w for k, v in obj.items()
                    for w in ([x for x in v if isinstance(x, str)] if k == "warnings" and isinstance(v, list)
                              else walk(v))]
        return [w for v in obj for w in walk(v)] if isinstance(obj, list) else []

    out = []
    for path in sorted((run / "results").glob("*.json")):
        try:
            out += walk(read_json(path))
        except (OSError, ValueError):
            continue
    return out


def sample_note(name: str, st: dict) -> str | None:
    """'<set>: N of M items (...)' where eval.max_samples scored a sample of the set (evaluate.json's `sampled`)."""
    s = st.get("sampled")
    if not isinstance(s, dict) or s.get("n") is None or s.get("of") is None:
        return None
    seed = f", seed {s['seed']}" if s.get("seed") is not None else ""
    return f"{name}: {s['n']} of {s['of']} items (eval.max_samples{seed})"


def verdict(ci: list[float] | None) -> str:
    if not ci:
        return "n/a"
    return "better" if ci[0] > 0 else "worse" if ci[1] < 0 else "no clear difference"


def build(run: RunDir, stages: list[dict] | None = None) -> Headline:
    """The headline of a run folder; `stages`: summary.json's stage records (status of each), when known."""
    h = Headline()
    ev, train, export = _load(run, "evaluate"), _load(run, "train"), _load(run, "export")
    h.decontamination = ((_load(run, "preprocess") or {}).get("decontamination") or {}).get("lines") or []
    if ev:
        sets = ev.get("sets") or {"held-out": {"metrics": ev.get("metrics", {}), "changes": ev.get("changes", {}),
                                               "answers": ev.get("answers")}}
        for name, st in sets.items():
            h.rows += _metric_rows(name, st)
            if st.get("after_sft"):  # both train and reinforce ran: what the RL step changed, paired
                from medqlora.evaluation.after_sft import rl_step

                h.rows += _metric_rows(f"{name} (RL step: after SFT -> after RL)", rl_step(st))
            h.warnings += set_warnings(name, st, run)
            if sample_note(name, st):
                h.samples.append(sample_note(name, st))
        for group, g in (ev.get("groups") or {}).items():  # an lm-eval task group's average over all its items
            h.rows += _metric_rows(f"{group} (size-weighted)", g)
    if train:
        from medqlora.training.history import loss_ends, loss_line

        if train.get("losses"):  # the ends from the logged losses themselves (also for a train.json from before)
            start, end = loss_ends([tuple(x) for x in train["losses"]])
            train = {**train, "loss_start": start, "loss_end": end}
        h.losses = loss_line(train)
        h.warnings += train_warnings(train)
        from medqlora.training.select import kept, kept_line

        h.kept = kept_line(train).removeprefix("adapter: ") if kept(train) else None  # said where a signal chose
    if export:
        h.warnings += export_warnings(export)
    h.warnings += stored_warnings(run)  # the rest of what the stages wrote (each set's are in place already)
    h.warnings = list(dict.fromkeys(h.warnings))  # evaluate.json's top-level list repeats every set's
    by_name = {s["name"]: s for s in stages or []}
    for stage in run.stages():  # reinforce only where the run has it
        s = by_name.get(stage)
        status = s["status"] if s else ("ok" if run.result_path(stage).is_file() else "not run")
        h.stages.append((stage, status))
        if s and s["status"] not in ("ok", "running"):
            h.warnings.insert(0, f"stage {stage} {s['status']}" + (f": {s['error']}" if s.get("error") else ""))
    return h


def _metric_rows(name: str, st: dict) -> list[dict]:
    m, changes = st.get("metrics") or {}, st.get("changes") or {}
    base, tuned = m.get("base") or {}, m.get("finetuned") or {}
    keys = [k for k in ("rougeL", "accuracy") if k in changes]
    keys += sorted(k for k in changes if k not in keys and k not in NOT_IN_HEADLINE)
    rows = []
    for k in keys:
        c = (changes.get(k) or {}).get("change")
        if not c or base.get(k) is None:
            continue
        rows.append({"set": name, "metric": LABELS.get(k, k), "items": c.get("n"), "base": base[k],
                     "finetuned": tuned.get(k), "change": c["change"], "ci95": c.get("ci95"),
                     "verdict": verdict(c.get("ci95"))})
    return rows


def set_warnings(name: str, st: dict, run: RunDir | None = None) -> list[str]:
    """What a reader must know before trusting the set's numbers: the evaluate stage's own warnings for the set
    (verbatim), then what only the headline puts together: one answer for everything, accuracy no better than
    guessing, answers that loop or run into the token limit, a ROUGE change that is mostly a length change."""
    out = [w for w in st.get("warnings") or [] if isinstance(w, str)]
    # The stage's list (closed_warnings) already says each dominant answer and each accuracy not above a baseline,
    # for both scorings; an evaluate.json from before it kept warnings gets them from here.
    said = "warnings" in st
    m, changes = st.get("metrics") or {}, st.get("changes") or {}
    base, tuned = m.get("base") or {}, m.get("finetuned") or {}
    closed = {who: (m.get(who) or {}).get("closed") or {} for who in ("base", "finetuned")}
    dom = {who: (c.get("dominant"), c.get("dominant_share")) for who, c in closed.items()
           if c.get("dominant") and c.get("dominant") != "None"}  # "None": no option named, said below
    n_closed = base.get("n_choice")
    of = f" of {n_closed} closed-form items" if n_closed else ""
    if len(dom) == 2 and dom["base"][0] == dom["finetuned"][0]:
        out.append(f"{name}: both models answer \"{dom['base'][0]}\" to nearly everything ({dom['base'][1]:.0%} and "
                   f"{dom['finetuned'][1]:.0%}{of}): the accuracy measures the share of \"{dom['base'][0]}\" "
                   f"references ({_reference_share(closed['base'], dom['base'][0])}), not knowledge")
    elif not said:
        for who, (answer, share) in dom.items():
            label = "base" if who == "base" else "fine-tuned"
            out.append(f"{name}: the {label} model answers \"{answer}\" to {share:.0%}{of} (references: "
                       f"{_reference_share(closed[who], answer)} \"{answer}\")")
    acc = tuned.get("accuracy")
    c = closed["finetuned"]
    if acc is not None and c.get("chance_baseline") is not None:
        chance, major = c["chance_baseline"], c.get("majority_baseline") or 0.0
        bar = max(chance, major)
        ci = (changes.get("accuracy") or {}).get("finetuned_ci95")
        against = f"chance {chance:.3f}, always the most common answer {major:.3f}"
        base_acc = base.get("accuracy")
        was = f" (base {base_acc:.3f})" if base_acc is not None else ""
        if acc <= bar and not said:
            out.append(f"{name}: fine-tuned accuracy {acc:.3f}{was} is not above the baselines ({against})")
        elif acc > bar and ci and ci[0] <= bar:
            out.append(f"{name}: fine-tuned accuracy {acc:.3f}{was} is not clearly above the baselines ({against}): "
                       f"its 95% interval reaches down to {ci[0]:.3f}")
    rouge = (changes.get("rougeL") or {}).get("change")
    wb, wf = base.get("answer_words_mean"), tuned.get("answer_words_mean")
    if rouge and wb and wf and max(wb, wf) / max(min(wb, wf), 1e-9) >= LENGTH_RATIO:
        ref = _reference_words(st.get("answers"), run)
        out.append(f"{name}: ROUGE-L {rouge['change']:+.3f} comes with answers {wb:.0f} -> {wf:.0f} words on average"
                   + (f" (references: {ref:.0f})" if ref else "") + ": ROUGE rewards a length near the reference's, "
                   "so the change is partly length; read the side-by-side answers before calling it better")
    for key, what in (("looping", "answers that repeat themselves"), ("hit_token_limit", "answers cut off at the "
                                                                       "token limit")):
        b, f = base.get(key), tuned.get(key)
        if b is None or f is None:
            continue
        if abs(f - b) >= RATE_CHANGE or f >= HIGH_RATE:
            out.append(f"{name}: {what}: {b:.0%} -> {f:.0%}")
    parse, parse_base = tuned.get("parse_rate"), base.get("parse_rate")
    if parse is not None and parse < 0.8:
        was = f" (base {parse_base:.0%})" if parse_base is not None else ""
        out.append(f"{name}: only {parse:.0%} of the fine-tuned closed-form answers name an option{was}: the rest "
                   "count as wrong")
    return out


def _reference_share(closed: dict, answer: str) -> str:
    ref = closed.get("reference") or {}
    total = sum(ref.values())
    return f"{ref.get(answer, 0) / total:.0%}" if total else "?"


def _reference_words(answers_path: str | None, run: RunDir | None = None) -> float | None:
    """Mean words of the free-text references, from the set's answers file (in the run folder when the folder
    moved since; None when it cannot be read)."""
    if not answers_path:
        return None
    path = Path(answers_path)
    if not path.is_file() and run is not None:
        path = run / "eval" / path.name
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError):
        return None
    refs = [len(str(r.get("reference", "")).split()) for r in rows if r.get("kind") == "freetext"]
    return sum(refs) / len(refs) if refs else None


def train_warnings(t: dict) -> list[str]:
    out = []
    start, end = t.get("loss_start", t.get("first_loss")), t.get("loss_end", t.get("final_loss"))
    val = t.get("val_losses") or []
    if start is not None and end is not None and end >= start:
        why = ""
        if len(val) >= 2 and val[-1][1] < val[0][1]:
            why = (f"; the validation loss fell ({val[0][1]:.4f} -> {val[-1][1]:.4f}), so read this as batch-to-batch "
                   f"noise over {len(t.get('losses') or [])} logged steps rather than a failed run")
        out.append(f"training loss did not fall ({start:.4f} -> {end:.4f}, mean of the first and last fifth of "
                   f"steps{why})")
    if len(val) >= 2:
        first, last, best = val[0][1], val[-1][1], t.get("val_best") or min(v for _, v in val)
        if last > first:
            out.append(f"validation loss rose ({first:.4f} at step {val[0][0]} -> {last:.4f} at step {val[-1][0]})")
        elif last > best * 1.02:
            out.append(f"validation loss rose after step {t.get('val_best_step')} (best {best:.4f}, last {last:.4f}): "
                       "later steps overfit; train.early_stopping_patience keeps the best checkpoint")
    if (t.get("early_stopping") or {}).get("stopped_early"):
        from medqlora.training.select import kept

        k = kept(t) or {"by": "val_loss", "step": t.get("val_best_step")}
        what = "validation accuracy" if k["by"] == "val_accuracy" else "validation loss"
        patience = (t.get("early_stopping") or {}).get("patience")
        out.append(f"training stopped early at step {t.get('steps')} ({what} did not improve"
                   + (f" for {patience} evaluations" if patience else "") + f"); the adapter is the best checkpoint, "
                   f"step {k['step']}")
    return out


def export_warnings(e: dict) -> list[str]:
    out = [] if e.get("verified", True) else ["export: the manifest did not verify (files differ from their SHA-256)"]
    for name, f in (e.get("formats") or {}).items():
        if not isinstance(f, dict):
            continue
        if f.get("error"):
            out.append(f"export {name}: not written ({f['error'][:160]})")
        check = f.get("check") or {}
        if check and not check.get("passed", True):
            reason = _failed_reason(name, f, e)
            if reason:  # the check that failed, as the export said it (not the logits when the tokenizer failed)
                why = f" ({reason[:300]})"
            elif check.get("error"):
                why = f" ({check['error'][:160]})"
            elif check.get("logits_rel_rmse") is not None and check.get("tolerance") is not None:
                why = (f" (logits rel. RMSE {check['logits_rel_rmse']:.3g} against the adapter's, tolerance "
                       f"{check['tolerance']:.3g}" + (f"; greedy answers identical on {check['identical']}/"
                                                      f"{check['prompts']} prompts" if "identical" in check else "")
                       + ")")
            else:
                why = ""
            out.append(f"export {name}: check FAILED{why}; the exported file may not answer as the evaluated "
                       "adapter does")
    return out


def _failed_reason(name: str, f: dict, e: dict) -> str | None:
    """Which check of a format failed: export.json's failed_checks, else worked out from the recorded check."""
    said = (e.get("failed_checks") or {}).get(name)
    if not said:
        from medqlora.export.formats import failed_checks

        try:
            said = failed_checks({name: f}).get(name)
        except (KeyError, TypeError, AttributeError, ValueError):  # a partial record from before: said otherwise
            said = None
    return said.split("check FAILED: ", 1)[-1] if said else None


def markdown(h: Headline, links: str = "anchors") -> str:
    """The headline as Markdown: links to `#stage-<name>` anchors (report.html) or to the notebooks (summary.md)."""
    lines = []
    if h.rows:
        lines += ["| eval set | metric | items | base | fine-tuned | change [95% CI, paired] | verdict |",
                  "|---|---|---|---|---|---|---|"]
        for r in h.rows:
            ci = f" [{r['ci95'][0]:+.3f}, {r['ci95'][1]:+.3f}]" if r.get("ci95") else ""
            tuned = "n/a" if r["finetuned"] is None else f"{r['finetuned']:.3f}"
            lines.append(f"| {r['set']} | {r['metric']} | {r['items'] or ''} | {r['base']:.3f} | {tuned} | "
                         f"{r['change']:+.3f}{ci} | {r['verdict']} |")
        if h.samples:
            lines += ["", "Scored on a sample: " + "; ".join(h.samples)]
    else:
        lines.append("No evaluation results yet.")
    lines += ["", f"**Warnings ({len(h.warnings)})**" if h.warnings else "**Warnings:** none"]
    lines += [f"- ⚠ {w}" for w in h.warnings]
    if h.losses:
        lines += ["", f"**Loss:** {h.losses}"]
    if h.decontamination:
        lines += ["", "**Decontamination** (13 words in a row shared with training rows): "
                  + "; ".join(h.decontamination)]
    if h.kept:
        lines += ["", f"**Adapter:** {h.kept}"]
    parts = []
    for stage, status in h.stages:
        target = f"#stage-{stage}" if links == "anchors" else NOTEBOOKS[stage]
        parts.append(f"[{stage}]({target})" + ("" if status == "ok" else f" ({status})"))
    lines += ["", "**Stages:** " + " · ".join(parts)]
    return "\n".join(lines) + "\n"
