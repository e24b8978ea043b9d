"""The loss history's figures from a trainer log history (synthetic: no model, milliseconds)."""
import pytest

from medqlora.training import history as H


def log(step, loss, epoch, **kw):
    return {"step": step, "loss": loss, "epoch": epoch, "learning_rate": 1e-4, **kw}


# logging_steps 5 with the first step logged: each entry covers the steps since the previous one (1, 4, 5, 5 ...)
HISTORY = [log(1, 3.0, 0.08), log(5, 2.0, 0.42), log(10, 1.0, 0.83), log(12, 1.0, 1.0),
           {"step": 12, "epoch": 1.0, "eval_loss": 1.8},
           log(15, 0.5, 1.25), log(20, 0.5, 1.67), log(24, 0.5, 2.0),
           {"step": 24, "epoch": 2.0, "eval_loss": 1.9}]


def test_epoch_table_and_train_loss_weight_each_logged_loss_by_the_steps_it_covers():
    """Issue 17 point 8: the epoch table's loss was the unweighted mean of the logged losses (epoch 1: 1.75) while
    train_loss weighted each by its steps; one computation now gives both."""
    s = H.summarize_history(HISTORY, 24)
    ep1, ep2 = s["epochs_table"]
    assert ep1["train_loss"] == pytest.approx((3.0 * 1 + 2.0 * 4 + 1.0 * 5 + 1.0 * 2) / 12)  # 1.5, not 1.75
    assert ep2["train_loss"] == pytest.approx(0.5)
    # the run's mean is the step-weighted mean of its epochs' means
    assert s["train_loss"] == pytest.approx((ep1["train_loss"] * 12 + ep2["train_loss"] * 12) / 24)
    assert ep1["val_loss"] == 1.8 and ep2["val_loss"] == 1.9


def test_smoothed_ends_and_validation_figures():
    s = H.summarize_history(HISTORY, 24)
    # logged every ~4 steps, so each end spans two intervals (8 steps, more than a fifth of 24): the entries at
    # steps 1 and 5 (covering 1 and 4 steps), and those after step 16
    assert s["loss_start"] == pytest.approx((3.0 * 1 + 2.0 * 4) / 5) and s["loss_end"] == pytest.approx(0.5)
    assert s["val_losses"] == [(12, 1.8), (24, 1.9)]
    assert (s["val_first"], s["val_last"], s["val_best"], s["val_best_step"]) == (1.8, 1.9, 1.8, 12)
    line = H.loss_line(s)
    assert "training loss 2.2000 -> 0.5000" in line and "validation loss 1.8000 (step 12) -> 1.9000 (step 24)" in line


def test_noisy_single_steps_do_not_decide_the_ends():
    """The default run printed 'loss 2.6052 -> 2.8264': two single steps. A falling curve whose last logged
    step is a spike must still read as falling."""
    losses = [(s, 3.0 - 0.05 * s) for s in range(1, 30)] + [(30, 3.5)]
    start, end = H.loss_ends(losses)
    assert end < start < 3.0
    assert H.weighted_mean(losses) == pytest.approx(sum(v for _, v in losses) / 30)


def test_a_history_without_validation_says_so():
    s = H.summarize_history(HISTORY[:4], 12)
    assert s["val_losses"] == [] and s["val_best"] is None
    assert "no validation loss" in H.loss_line(s)
