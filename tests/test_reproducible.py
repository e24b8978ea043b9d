"""A rerun is the same run (issue 28, point 6): with the same train.seed and data the transformers + PEFT path gives
bit-identical adapters on the CPU, LoRA initialization included; and a one-step smoke run trains (point 12): warmup
leaves it a non-zero learning rate, so its adapter can be exported."""
import hashlib

from conftest import tiny_params, write_jsonl

from medqlora.config import load_config
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.export import exporter as E
from medqlora.training import model as M
from medqlora.training import train as T


def quiet(*a):
    pass


def prepared(tmp_path, tiny_model_dir, name, **train):
    rows = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}, given slowly."}
            for i in range(8)]
    (tmp_path / name).mkdir()
    src = write_jsonl(tmp_path / name / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / name / "e.jsonl", [{"question": "Which drug reverses overdose 99?",
                                                    "answer": "Reversal agent 99."}])
    settings = {"max_steps": 2, "learning_rate": 1e-2, "micro_batch_size": 2, "group_by_length": False, **train}
    cfg = load_config(tiny_params(tmp_path / name, tiny_model_dir, src, ev, train=settings, lora={"dropout": 0.1}))
    run = RunDir(tmp_path / name / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    return cfg, run


def adapter_sha256(tmp_path, tiny_model_dir, name, **train) -> str:
    cfg, run = prepared(tmp_path, tiny_model_dir, name, **train)
    T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet)
    return hashlib.sha256((run.adapter_dir / "adapter_model.safetensors").read_bytes()).hexdigest()


def test_the_same_seed_gives_a_bit_identical_adapter(tmp_path, tiny_model_dir):
    import torch

    first = adapter_sha256(tmp_path, tiny_model_dir, "a", seed=11)
    torch.rand(1000)  # whatever ran before in the process must not matter
    assert adapter_sha256(tmp_path, tiny_model_dir, "b", seed=11) == first
    assert adapter_sha256(tmp_path, tiny_model_dir, "c", seed=12) != first, "the seed must change the run"


def test_a_one_step_smoke_run_trains_and_its_adapter_can_be_exported(tmp_path, tiny_model_dir):
    cfg, run = prepared(tmp_path, tiny_model_dir, "smoke", max_steps=1)
    assert cfg.train.warmup_ratio > 0, "the default warmup"
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=quiet)
    assert result["steps"] == 1 and result["warmup_steps"] == 0, "a warmup step would be the only one, at rate 0"
    info = E.inspect_adapter(run.adapter_dir, cfg)  # refuses an adapter whose every LoRA B is zero
    assert info["lora_B_trained"].split("/")[0] == info["lora_B_trained"].split("/")[1]


def test_warmup_always_leaves_a_step_with_a_non_zero_rate(tmp_path):
    cfg = load_config(tiny_params(tmp_path, "m", write_jsonl(tmp_path / "t.jsonl", []), None,
                                  train={"warmup_ratio": 0.5}))
    args = T.sft_config(cfg, RunDir(tmp_path / "run"), packing=False)
    # the first warmup step has rate 0: at most all steps but one warm up
    assert [args.get_warmup_steps(n) for n in (1, 2, 3, 10)] == [0, 1, 2, 5]
