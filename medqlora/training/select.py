"""Which checkpoint becomes the adapter (train.select_by), and the validation accuracy it can be picked by.

At every evaluation the closed-form validation items (multiple choice, yes/no: held out of the training data by
preprocess, data/val_items.jsonl) are scored by log-likelihood, no generation, and logged as eval_val_accuracy beside
eval_loss. train.select_by names the signal that keeps the best checkpoint and that early stopping watches:
val_loss (lowest) or val_accuracy (highest). For multiple-choice fine-tuning the loss is a poor proxy for accuracy.
The evaluate stage's items are never used: selecting on the items it reports would inflate its result.
"""
from __future__ import annotations

import json

from medqlora.core.rundir import RunDir

# signal -> (the trainer's metric, greater is better, what the best one is called)
SIGNALS = {"val_loss": ("eval_loss", False, "the lowest validation loss"),
           "val_accuracy": ("eval_val_accuracy", True, "the highest validation accuracy")}


def signal(train_cfg) -> str | None:
    """The signal that picks the kept checkpoint: train.select_by, else val_loss where early stopping is on (what it
    always kept), else None (the last step's weights)."""
    return train_cfg.select_by or ("val_loss" if train_cfg.early_stopping_patience else None)


def best_args(train_cfg) -> dict:
    """The trainer arguments that keep the best checkpoint by the signal ({} when none: the last step is kept)."""
    s = signal(train_cfg)
    if s is None:
        return {}
    metric, greater, _ = SIGNALS[s]
    return {"load_best_model_at_end": True, "metric_for_best_model": metric, "greater_is_better": greater}


def val_prompt(template: str) -> str:
    """The run's own prompt, as trained; a reasoning template's prompt opens a thought, after which an option's
    log-likelihood measures nothing, so those runs score lm-eval's prompt (no chat template)."""
    return "lm_eval" if template == "reasoning" else "chat"


def evaluated_keys(run: RunDir) -> set[str]:
    """The questions the evaluate stage reports: the held-out items and every eval set's."""
    from medqlora.data.formats import Example, question_key  # here: the report's kept_line needs none of it

    paths = [run.eval_items, *sorted(run.path.glob("data/eval_*.jsonl"))]
    return {question_key(Example.from_dict(json.loads(line)))
            for p in paths if p.is_file() for line in p.read_text().splitlines() if line.strip()}


def val_items(cfg, run: RunDir) -> list[dict]:
    """The closed-form validation items; refused where select_by val_accuracy has none, and wherever one of them is
    an item the evaluate stage reports."""
    from medqlora.data.formats import Example, question_key

    path = run.val_items
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    items = [it for it in items if it.get("kind") in ("choice", "yesno")]
    if not items and cfg.train.select_by == "val_accuracy":
        why = "" if path.is_file() else f" ({path} is missing: the data was prepared before it was written)"
        raise ValueError(f"train.select_by val_accuracy: the validation split has no closed-form (multiple-choice or "
                         f"yes/no) items{why}. Rerun the preprocess stage, raise data.val_fraction, or use "
                         "train.select_by val_loss")
    evaluated = evaluated_keys(run)
    shared = [it for it in items if question_key(Example.from_dict(it)) in evaluated]
    if shared:
        raise ValueError(f"{len(shared)} validation item(s) in {path} are also items the evaluate stage reports "
                         f"(first: {shared[0]['question'][:80]!r}): picking a checkpoint on them would inflate the "
                         "evaluated result. Rerun the preprocess stage, which holds them apart")
    return items


def score_items(model, tokenizer, items: list[dict], prompt: str, template: str, batch_size: int) -> dict:
    """{"val_accuracy": share of the items whose option of highest log-likelihood is the reference}."""
    from medqlora.training.choice_scoring import accuracy

    return {"val_accuracy": accuracy(model, tokenizer, items, prompt, template, batch_size, print_fn=lambda *a: None)}


class ValScorer:
    """model -> {"val_accuracy": ...}, called by the trainer at every evaluation (sft_trainer.ValScoringTrainer)."""

    def __init__(self, items: list[dict], tokenizer, template: str, batch_size: int):
        self.items, self.tokenizer, self.template, self.batch_size = items, tokenizer, template, batch_size

    def __call__(self, model) -> dict:
        import torch

        with torch.no_grad():
            return score_items(model, self.tokenizer, self.items, val_prompt(self.template), self.template,
                               self.batch_size)


def val_scorer(cfg, run: RunDir, tokenizer, has_val: bool) -> ValScorer | None:
    """The validation-accuracy scorer of this run, or None where there is nothing to score (refused where
    select_by needs what is missing)."""
    if not has_val:
        if cfg.train.select_by:
            raise ValueError(f"train.select_by {cfg.train.select_by} is set but the prepared data has no validation "
                             f"rows ({run.val_data} is missing): rerun the preprocess stage with data.val_fraction "
                             "above 0")
        return None
    items = val_items(cfg, run)
    return ValScorer(items, tokenizer, cfg.data.template, cfg.train.micro_batch_size) if items else None


def _step(checkpoint) -> int | None:
    tail = str(checkpoint or "").rstrip("/").rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else None


def selection(train_cfg, state, n_items: int) -> dict | None:
    """What picked the adapter: the signal, the step kept and its value (None without a signal; kept_step None
    where no evaluation kept a checkpoint, and the last step's weights are the adapter)."""
    s = signal(train_cfg)
    step = _step(state.best_model_checkpoint)
    if s is None:
        return None
    return {"by": s, "metric": SIGNALS[s][0], "kept_step": step, "kept_checkpoint": state.best_model_checkpoint,
            "value": state.best_metric, "last_step": state.global_step, "items": n_items if s == "val_accuracy"
            else None, "explicit": train_cfg.select_by is not None}


def kept(train: dict) -> dict | None:
    """{step, by, value, items, explicit} of the checkpoint kept in place of the last step's weights, from a train
    result (one from before train.select_by: early stopping kept the lowest validation loss)."""
    sel = train.get("selection")
    if sel and sel.get("kept_step") is not None:
        return {"step": sel["kept_step"], "by": sel["by"], "value": sel.get("value"), "items": sel.get("items"),
                "explicit": sel.get("explicit", True)}
    es = train.get("early_stopping") or {}
    step = _step(es.get("kept_checkpoint"))
    return {"step": step, "by": "val_loss", "value": train.get("val_best"), "items": None, "explicit": False} \
        if step is not None else None


def value_text(k: dict) -> str | None:
    """The kept step's value of its signal: '0.750 on 7 closed-form validation items, by log-likelihood'."""
    if k.get("value") is None:
        return None
    if k["by"] != "val_accuracy":
        return f"{k['value']:.4f}"
    return f"{k['value']:.3f}" + (f" on {k['items']} closed-form validation items, by log-likelihood"
                                  if k.get("items") else "")


def kept_line(train: dict) -> str:
    """Which weights the adapter holds and which signal chose them, in one line (the train notebook, the headline)."""
    k, last = kept(train), train.get("steps")
    if k is None:
        by = (train.get("selection") or {}).get("by")
        return f"adapter: the last step's weights (step {last}; " + (
            f"train.select_by {by}: no evaluation kept a checkpoint)" if by else "train.select_by not set)")
    how = f"train.select_by {k['by']}" if k["explicit"] else "train.early_stopping_patience (validation loss)"
    where = ("the last step's weights, also" if k["step"] == last
             else f"checkpoint of step {k['step']} (of {last} trained),")
    value = value_text(k)
    return f"adapter: {where} kept by {how}: {SIGNALS[k['by']][2]}" + (f" ({value})" if value else "")
