"""train.select_by (issue 30, point 1): the kept checkpoint is picked by what the model is for. Closed-form validation
items (held out of the training data, never the evaluated ones) are scored by log-likelihood at every evaluation,
logged beside the validation loss, and, with select_by: val_accuracy, drive early stopping and the exported adapter;
the train notebook's line, the model card and the headline say which step was kept and by which signal."""
import json

import pytest
import torch
from conftest import tiny_params, write_jsonl
from safetensors.torch import load_file

from medqlora.config import ConfigError, load_config
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.export import exporter as E
from medqlora.run import headline as H
from medqlora.training import history as HI
from medqlora.training import model as M
from medqlora.training import select as S
from medqlora.training import train as T


def quiet(*a):
    pass


def mcq_rows(n: int, answers: str = "ABCD") -> list[dict]:
    return [{"question": f"Which antidote reverses poison {i}?",
             "options": {"A": f"Antidote {i}", "B": f"Toxin {i}", "C": "Saline", "D": "Charcoal"},
             "answer": answers[i % len(answers)]} for i in range(n)]


def mcq_run(tmp_path, tiny_model_dir, answers="ABCD", data=None, **train):
    """A prepared run of multiple-choice rows with a validation split (data.val_fraction 0.3)."""
    src = write_jsonl(tmp_path / "t.jsonl", mcq_rows(24, answers))
    ev = write_jsonl(tmp_path / "e.jsonl", [{**r, "question": r["question"].replace("poison", "venom")}
                                            for r in mcq_rows(4, answers)])
    settings = {"max_steps": 8, "learning_rate": 1e-2, "micro_batch_size": 4, "group_by_length": False,
                "eval_steps": 1, **train}
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, src, ev, train=settings,
                                  data={"val_fraction": 0.3, **(data or {})}))
    run = RunDir(tmp_path / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    return cfg, run


def test_select_by_val_accuracy_exports_the_checkpoint_of_best_accuracy_and_says_so(tmp_path, tiny_model_dir,
                                                                                     monkeypatch):
    """The validation accuracy is planted (the real scoring runs, its value is replaced) to peak at step 3: neither
    the last step (8) nor the step of lowest validation loss. Selection, export, card and headline run for real."""
    cfg, run = mcq_run(tmp_path, tiny_model_dir, select_by="val_accuracy")
    assert run.result("preprocess")["val_examples"] >= 2
    planted = iter([0.25, 0.5, 0.75, 0.5, 0.5, 0.25, 0.5, 0.5, 0.5, 0.5])
    real, calls = S.score_items, []

    def score(*a, **kw):
        got = real(*a, **kw)
        calls.append(got["val_accuracy"])
        return {**got, "val_accuracy": next(planted)}

    monkeypatch.setattr(S, "score_items", score)
    lines = []
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=lines.append)
    assert calls and all(0.0 <= a <= 1.0 for a in calls), "the real scorer ran at every evaluation"
    acc = dict(result["val_accuracies"])
    assert list(acc) == list(range(1, 9)) and acc[3] == 0.75 == max(acc.values())
    assert result["steps"] == 8 and result["val_best_step"] != 3, "premise: the lowest loss is elsewhere"
    sel = result["selection"]
    assert sel["by"] == "val_accuracy" and sel["kept_step"] == 3 and sel["value"] == 0.75
    assert sel["items"] == result["val_accuracy_items"] == run.result("preprocess")["val_examples"]
    # the adapter saved is checkpoint 3's weights, not the last step's
    kept = load_file(str(run / "checkpoints" / "checkpoint-3" / "adapter_model.safetensors"))
    saved = load_file(str(run.adapter_dir / "adapter_model.safetensors"))
    assert kept.keys() == saved.keys() and all(torch.equal(kept[k], saved[k]) for k in kept)
    # logged beside the validation loss: progress, epoch table, plot
    assert any("validation accuracy 0.750" in line for line in lines), lines
    assert result["epochs_table"][-1]["val_accuracy"] == 0.5
    HI.plot_loss(result, tmp_path / "loss.png")
    notebook_line = S.kept_line(result)
    assert "checkpoint of step 3" in notebook_line and "highest validation accuracy (0.750" in notebook_line
    assert "train.select_by val_accuracy" in notebook_line
    run.save_result("train", result)
    E.export(cfg, run)
    card = (run.export_dir / "adapter" / "README.md").read_text()
    assert "checkpoint of step 3, the highest validation accuracy" in card, card
    assert "validation accuracy 0.2500 -> 0.7500 at the kept step 3 (last measured 0.5000)" in card, card
    md = H.markdown(H.build(run))
    assert "**Adapter:** checkpoint of step 3 (of 8 trained), kept by train.select_by val_accuracy" in md, md


def test_early_stopping_follows_the_validation_accuracy(tmp_path, tiny_model_dir, monkeypatch):
    """With select_by val_accuracy, patience counts evaluations without a better accuracy (not loss)."""
    cfg, run = mcq_run(tmp_path, tiny_model_dir, select_by="val_accuracy", early_stopping_patience=2)
    planted = iter([0.25, 0.75, 0.5, 0.5, 1.0, 1.0, 1.0, 1.0, 1.0])
    monkeypatch.setattr(S, "score_items", lambda *a, **kw: {"val_accuracy": next(planted)})
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet)
    assert result["steps"] == 4 and result["early_stopping"]["stopped_early"], result["val_accuracies"]
    assert result["selection"]["kept_step"] == 2
    run.save_result("train", result)
    warnings = "\n".join(H.build(run).warnings)
    assert "training stopped early at step 4 (validation accuracy did not improve for 2 evaluations); the adapter " \
           "is the best checkpoint, step 2" in warnings, warnings


def test_the_validation_accuracy_is_measured_beside_the_loss_without_select_by(tmp_path, tiny_model_dir):
    """Without select_by the accuracy is logged all the same (real scoring) and the last step's weights are kept."""
    cfg, run = mcq_run(tmp_path, tiny_model_dir, max_steps=4, eval_steps=2)
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet)
    assert [s for s, _ in result["val_accuracies"]] == [2, 4] and result["selection"] is None
    n = result["val_accuracy_items"]
    assert n == run.result("preprocess")["val_examples"]
    assert all(round(a * n) == pytest.approx(a * n) for _, a in result["val_accuracies"]), "a share of the items"
    assert "validation accuracy" in HI.loss_line(result)
    assert S.kept_line(result) == "adapter: the last step's weights (step 4; train.select_by not set)"


def test_select_by_needs_a_validation_set_held_out_of_the_training_data(tmp_path, tiny_model_dir, sample_data):
    params = tiny_params(tmp_path, tiny_model_dir, *sample_data, train={"select_by": "val_accuracy"})
    with pytest.raises(ConfigError, match=r"train\.select_by val_accuracy .*data\.val_fraction above 0.*never"):
        load_config(params)


def test_validation_items_that_are_evaluated_items_are_refused(tmp_path, tiny_model_dir):
    cfg, run = mcq_run(tmp_path, tiny_model_dir, select_by="val_accuracy")
    val = [json.loads(line) for line in run.val_items.read_text().splitlines()]
    assert val and all(it["kind"] == "choice" and it["prompt"] for it in val)
    evaluated = json.loads(run.eval_items.read_text().splitlines()[0])
    run.val_items.write_text(run.val_items.read_text() + json.dumps(evaluated) + "\n")
    with pytest.raises(ValueError, match="1 validation item.* also .*evaluate stage reports.*inflate"):
        S.val_scorer(cfg, run, None, has_val=True)


def test_select_by_val_accuracy_without_closed_form_validation_items_is_refused(tmp_path, tiny_model_dir):
    rows = [{"question": f"What is the antidote for poison {i}?", "answer": f"Antidote {i}."} for i in range(20)]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is the antidote for poison 99?", "answer": "None."}])
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, src, ev, train={"select_by": "val_accuracy"},
                                  data={"val_fraction": 0.3}))
    run = RunDir(tmp_path / "run")
    P.save_result(P.prepare(cfg, run, M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)), cfg, run)
    with pytest.raises(ValueError, match="validation split has no closed-form .*train.select_by val_loss"):
        T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet)


def test_each_way_the_adapter_was_kept_is_said():
    """Synthetic train results (milliseconds): the best step is the last one, no evaluation kept one, and a train.json
    from before select_by whose early stopping kept the lowest validation loss."""
    last_best = {"steps": 8, "epochs": 1.0, "selection": {"by": "val_accuracy", "kept_step": 8, "value": 0.8,
                                                          "items": 5, "explicit": True}}
    assert S.kept_line(last_best) == ("adapter: the last step's weights, also kept by train.select_by val_accuracy: "
                                      "the highest validation accuracy (0.800 on 5 closed-form validation items, by "
                                      "log-likelihood)")
    assert E.weights_line(last_best) == ("8 / 1.0 (also the highest validation accuracy, train.select_by val_accuracy: "
                                         "0.800 on 5 closed-form validation items, by log-likelihood)")
    none_kept = {"steps": 2, "selection": {"by": "val_loss", "kept_step": None, "explicit": True}}
    assert S.kept_line(none_kept) == ("adapter: the last step's weights (step 2; train.select_by val_loss: no "
                                      "evaluation kept a checkpoint)")
    before = {"steps": 6, "val_best": 1.5, "early_stopping": {"kept_checkpoint": "checkpoints/checkpoint-5"}}
    assert S.kept_line(before) == ("adapter: checkpoint of step 5 (of 6 trained), kept by "
                                   "train.early_stopping_patience (validation loss): the lowest validation loss (1.5000)")
