"""TRL's SFTTrainer that also scores the closed-form validation items at every evaluation (train.select_by). Its own
module: importing it loads trl (seconds), which only the train stage needs."""
from __future__ import annotations

from trl import SFTTrainer


class ValScoringTrainer(SFTTrainer):
    """val_scorer (model -> {name: value}) runs right after the validation loss, inside the evaluation loop, so that
    eval_<name> is in the evaluation's metrics before the trainer logs them (log history, tensorboard, wandb), hands
    them to the callbacks (early stopping) and picks the best checkpoint (metric_for_best_model): a compute_metrics
    would need generated predictions, and a callback's on_evaluate comes after the logging."""

    def __init__(self, *args, val_scorer=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.val_scorer = val_scorer

    def evaluation_loop(self, *args, **kwargs):
        out = super().evaluation_loop(*args, **kwargs)
        if self.val_scorer is not None:
            prefix = kwargs.get("metric_key_prefix", "eval")
            out.metrics.update({f"{prefix}_{k}": v for k, v in self.val_scorer(self.model).items() if v is not None})
        return out
