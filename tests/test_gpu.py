"""The Unsloth path on a CUDA GPU: trains, exports and reloads. Skipped where there is no GPU or no Unsloth.

Run there with: MEDQLORA_TOKENIZER_DIR=<tokenizer folder> python -m pytest -m gpu tests/test_gpu.py
"""
import importlib.util

import pytest
from conftest import tiny_params, write_jsonl

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available() or importlib.util.find_spec("unsloth") is None,
                                 reason="needs a CUDA GPU and unsloth")]


def test_unsloth_trains_exports_and_reloads(tmp_path, tokenizer_dir):
    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir
    from medqlora.data import preprocess as P
    from medqlora.export import exporter as E
    from medqlora.testing import make_tiny_llama
    from medqlora.training import model as M
    from medqlora.training import train as T

    model_dir = make_tiny_llama(tmp_path / "m", tokenizer_dir, hidden=256, layers=2, heads=4, kv_heads=2,
                                intermediate=512)
    rows = [{"question": f"What is the antidote for poison {i}?", "answer": f"Antidote {i} given early."}
            for i in range(8)]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is the antidote for poison 9?", "answer": "Antidote 9."}])
    cfg = load_config(tiny_params(tmp_path, model_dir, train, ev, model={"backend": "unsloth"},
                                  train={"max_steps": 30, "learning_rate": 1e-2, "micro_batch_size": 8}))
    run = RunDir(tmp_path / "run")
    tok = M.load_tokenizer(model_dir, cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    loaded = T.load_for_training(cfg)
    assert loaded.backend == "unsloth"
    result = T.train(cfg, run, loaded, print_fn=print)
    run.save_result("train", result)
    losses = [loss for _, loss in result["losses"]]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5, losses
    assert 0 < result["peak_memory_gb"] < 10
    exported = E.export(cfg, run)
    info = E.inspect_adapter(exported["adapter_dir"], cfg)
    assert info["lora_B_trained"].split("/")[0] == info["lora_B_trained"].split("/")[1]

    model, tok = M.load_with_adapter(model_dir, exported["adapter_dir"], cfg.model, "unsloth")
    ids = torch.tensor([tok("What is the antidote for poison 2?")["input_ids"]], device="cuda")
    with torch.no_grad():
        tuned = model(input_ids=ids).logits.float()
        with model.disable_adapter():
            base = model(input_ids=ids).logits.float()
        again = model(input_ids=ids).logits.float()
    assert (tuned - base).abs().max() > 0.3, "the reloaded adapter must change the outputs"
    assert torch.allclose(tuned, again), "adapter back on after disable gives the same outputs"


def test_unsloth_resume_reports_the_same_totals_as_an_uninterrupted_run(tmp_path, tokenizer_dir):
    """Unsloth replaces the trainer's inner loop: the history-based figures must hold there too."""
    from test_train import Crash

    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir
    from medqlora.data import preprocess as P
    from medqlora.testing import make_tiny_llama
    from medqlora.training import model as M
    from medqlora.training import train as T

    model_dir = make_tiny_llama(tmp_path / "m", tokenizer_dir, hidden=256, layers=2, heads=4, kv_heads=2,
                                intermediate=512)
    rows = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}."} for i in range(8)]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "Which drug reverses overdose 99?", "answer": "Agent 99."}])
    results = {}
    for name, crash in (("whole", None), ("cut", 6)):
        (tmp_path / name).mkdir()
        cfg = load_config(tiny_params(tmp_path / name, model_dir, train, ev, model={"backend": "unsloth"},
                                      train={"max_steps": 8, "save_steps": 4, "learning_rate": 1e-2,
                                             "micro_batch_size": 2, "warmup_ratio": 0.25, "logging_steps": 3}))
        run = RunDir(tmp_path / name / "run")
        P.save_result(P.prepare(cfg, run, M.load_tokenizer(model_dir, cfg.model)), cfg, run)
        if crash:
            with pytest.raises(RuntimeError, match="simulated crash"):
                T.train(cfg, run, T.load_for_training(cfg), print_fn=print, callbacks=[Crash(at=crash)])
        results[name] = T.train(cfg, run, T.load_for_training(cfg), print_fn=print)
    whole, resumed = results["whole"], results["cut"]
    print({k: (whole[k], resumed[k]) for k in ("steps", "first_loss", "final_loss", "train_loss", "seconds",
                                               "warmup_steps", "losses")})
    assert resumed["resumed_from"].endswith("checkpoint-4")
    assert [s for s, _ in resumed["losses"]] == [s for s, _ in whole["losses"]] == [1, 3, 6, 8]
    assert whole["warmup_steps"] == 2
    for key in ("first_loss", "final_loss", "train_loss"):
        assert resumed[key] == pytest.approx(whole[key], rel=0.05), key


def test_unsloth_packs_by_default_and_keeps_packed_examples_apart(tmp_path, tokenizer_dir):
    """Unsloth's packed attention on the run's own first packed row: each example's loss as alone, prompt masked;
    a model that ignores the packing marks shows how far apart the losses go when examples see each other."""
    import datasets
    from test_packing import IgnoresPackingMarks
    from trl import SFTTrainer

    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir
    from medqlora.data import preprocess as P
    from medqlora.testing import make_tiny_llama
    from medqlora.training import model as M
    from medqlora.training import packing as PK
    from medqlora.training import train as T

    model_dir = make_tiny_llama(tmp_path / "m", tokenizer_dir, hidden=256, layers=2, heads=4, kv_heads=2,
                                intermediate=512)
    rows = [{"question": "What is the first-line treatment for condition %d?%s" % (i, " Explain briefly." * (i % 5)),
             "answer": " ".join(["Treatment %d, then review in clinic." % i] * (1 + i % 7))} for i in range(24)]
    train = write_jsonl(tmp_path / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is the first-line treatment for X?", "answer": "Y."}])
    cfg = load_config(tiny_params(tmp_path, model_dir, train, ev, model={"backend": "unsloth", "max_seq_length": 256},
                                  train={"max_steps": 6, "learning_rate": 1e-2, "micro_batch_size": 2}))
    assert cfg.train.packing == "auto"
    run = RunDir(tmp_path / "run")
    P.save_result(P.prepare(cfg, run, M.load_tokenizer(model_dir, cfg.model)), cfg, run)
    loaded = T.load_for_training(cfg)
    result = T.train(cfg, run, loaded, print_fn=print)
    check = result["packing_check"]
    print("packing check", check)
    assert result["packing"] is True and check["passed"] and check["examples"] >= 4 and check["prompt_masked"]
    ds = datasets.load_from_disk(str(run.train_data)).select_columns(["input_ids", "labels"])
    trainer = SFTTrainer(model=loaded.model, args=T.sft_config(cfg, run, packing=True), train_dataset=ds,
                         processing_class=loaded.tokenizer)
    batch = {k: v.to("cuda") if hasattr(v, "to") else v for k, v in next(iter(trainer.get_train_dataloader())).items()}
    print("packed batch keys", sorted(batch))
    clean = PK.check(loaded.model, batch, ds.to_list())
    mixed = PK.check(IgnoresPackingMarks(loaded.model), batch, ds.to_list())
    print("clean", clean.max_abs_diff, "mixed", mixed.max_abs_diff)
    assert clean.passed and mixed.max_abs_diff > 3 * clean.max_abs_diff
