"""Packed training is exact: examples sharing a row neither see each other nor lose their prompt mask."""
import datasets
import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_params, write_jsonl

from medqlora.config import load_config
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as PP
from medqlora.training import model as M
from medqlora.training import packing as P
from medqlora.training import train as T


@pytest.fixture
def packed_run(tmp_path, tiny_model_dir):
    """Prompts and answers of very different lengths, so one packed row holds several examples."""
    rows = [{"question": "What is the first-line treatment for condition %d?%s" % (i, " Explain briefly." * (i % 5)),
             "answer": " ".join(["Treatment %d, then review in clinic." % i] * (1 + i % 7))} for i in range(24)]
    src = write_jsonl(tmp_path / "t.jsonl", rows)
    ev = write_jsonl(tmp_path / "e.jsonl", [{"question": "What is the first-line treatment for X?", "answer": "Y."}])
    cfg = load_config(tiny_params(tmp_path, tiny_model_dir, src, ev, model={"max_seq_length": 256},
                                  train={"max_steps": 3, "micro_batch_size": 2, "packing": True,
                                         "learning_rate": 1e-2}))
    run = RunDir(tmp_path / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    PP.save_result(PP.prepare(cfg, run, tok), cfg, run)
    return cfg, run


def token_losses(model, **kw):
    """Per-token cross-entropy (next-token, -100 ignored) straight from the logits: independent of the model's
    own loss function and of packing.check."""
    labels = kw.pop("labels")
    logits = model(**kw).logits.float()  # without labels: TRL's chunked loss returns no logits
    return F.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="none"), labels[0, 1:] != -100


def packed_batch(cfg, run, loaded):
    from trl import SFTTrainer

    ds = datasets.load_from_disk(str(run.train_data)).select_columns(["input_ids", "labels"])
    trainer = SFTTrainer(model=loaded.model, args=T.sft_config(cfg, run, packing=True), train_dataset=ds,
                         processing_class=loaded.tokenizer)
    return ds, trainer, next(iter(trainer.get_train_dataloader()))


def test_each_packed_example_has_the_loss_it_has_alone_and_keeps_its_prompt_mask(packed_run):
    cfg, run = packed_run
    loaded = T.load_for_training(cfg)
    loaded.model.config.use_cache = False  # as train() sets it
    ds, _, batch = packed_batch(cfg, run, loaded)
    assert "attention_mask" not in batch and batch["input_ids"].shape[0] == 1  # one flat row, padding-free
    segs = P.segments(batch["position_ids"][0].tolist())
    assert len(segs) >= 4, "the fixture must put several examples in one row"
    rows = {tuple(r["input_ids"]): r["labels"] for r in ds}
    loaded.model.eval()
    with torch.no_grad():
        packed_tok, packed_mask = token_losses(loaded.model, input_ids=batch["input_ids"], labels=batch["labels"],
                                               position_ids=batch["position_ids"])
        for a, b in segs:
            ids, labels = batch["input_ids"][:, a:b], batch["labels"][:, a:b]
            want = rows[tuple(ids[0].tolist())]  # the example as preprocessing masked it
            got = labels[0].tolist()
            assert [g == -100 for g in got[1:]] == [w == -100 for w in want[1:]], "prompt mask changed by packing"
            assert got[1:] == want[1:]
            alone, alone_mask = token_losses(loaded.model, input_ids=ids, labels=labels)
            # positions a..b-2 of the packed row predict this example's tokens a+1..b-1
            inside, inside_mask = packed_tok[a:b - 1], packed_mask[a:b - 1]
            assert torch.equal(inside_mask, alone_mask)
            n = int(alone_mask.sum())
            assert n > 0
            per_example_packed = inside[inside_mask].mean().item()
            per_example_alone = alone[alone_mask].mean().item()
            assert per_example_packed == pytest.approx(per_example_alone, abs=1e-4)


class IgnoresPackingMarks(torch.nn.Module):
    """A backend that drops where examples start (position_ids, Unsloth's packed lengths): its attention sees one
    long sequence, as attention without packing support does."""

    def __init__(self, model):
        super().__init__()
        self.inner = model

    def forward(self, input_ids=None, labels=None, **packing_marks):
        return self.inner(input_ids=input_ids, labels=labels)


def test_the_check_fails_where_attention_crosses_example_boundaries(packed_run):
    cfg, run = packed_run
    loaded = T.load_for_training(cfg)
    ds, trainer, batch = packed_batch(cfg, run, loaded)
    clean = P.check(loaded.model, batch, ds.to_list())
    assert clean.passed and clean.prompt_masked and clean.examples >= 4, clean
    assert clean.prompt_checked == clean.examples
    assert clean.max_abs_diff < 1e-4
    mixed = P.check(IgnoresPackingMarks(loaded.model), batch, ds.to_list())
    assert not mixed.passed and mixed.max_abs_diff > 10 * mixed.tolerance, mixed
    assert "EXAMPLES NOT ISOLATED" in mixed.line()


def test_the_check_compiles_nothing_and_says_how_long_it_took(packed_run):
    """Unsloth compiles each decoder layer for unpacked rows, per grad mode, and trains packed rows uncompiled: a check
    run through the compiled path paid compilations the run never used (most of the train stage's setup on a GPU).
    The check runs eagerly; the same model compiles as soon as it is called outside the check."""
    cfg, run = packed_run
    loaded = T.load_for_training(cfg)
    ds, trainer, batch = packed_batch(cfg, run, loaded)
    graphs = []

    def counting_backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    model = loaded.model
    model.forward = torch.compile(model.forward, backend=counting_backend)
    result = P.check(model, batch, ds.to_list())
    assert result.passed and result.examples >= 4
    assert graphs == [], f"the check compiled {len(graphs)} graphs"
    assert result.seconds > 0 and f"{result.seconds:.1f} s" in result.line()
    with torch.no_grad():
        model(input_ids=batch["input_ids"], position_ids=batch["position_ids"])
    assert graphs, "the counting backend sees compilations outside the check (else this test shows nothing)"
    torch._dynamo.reset()


def test_the_check_leaves_the_4bit_weights_in_their_training_layout(packed_run):
    """An eval-mode forward on a CPU with AVX512-BF16 makes bitsandbytes repack the weights for inference, a layout
    with no backward pass: the check, which runs before the first step, must not do that."""
    cfg, run = packed_run
    loaded = T.load_for_training(cfg)
    loaded.model.eval()  # as from_pretrained leaves it
    _, trainer, _ = packed_batch(cfg, run, loaded)
    assert P.check_trainer(trainer).passed
    layers = [m for m in loaded.model.modules() if hasattr(getattr(m, "weight", None), "quant_state")]
    assert layers and not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
    assert not loaded.model.training, "the model's mode is restored"


def test_training_packed_runs_the_check_first_and_records_it(packed_run):
    cfg, run = packed_run
    lines = []
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=lines.append)
    check = result["packing_check"]
    assert result["packing"] is True and check["passed"] and check["examples"] >= 4
    assert check["prompt_checked"] == check["examples"]
    assert any(line.startswith("packing check:") and "examples isolated" in line for line in lines)
    assert result["steps"] == 3 and result["useful_tokens"] > 0 and result["useful_tokens_per_s"] > 0


def test_a_failed_check_stops_explicit_packing_and_turns_auto_packing_off(packed_run, monkeypatch):
    cfg, run = packed_run
    bad = P.PackingCheck(5, 100, 0.4, 1e-3, True, 5, [1.0], [1.4])
    monkeypatch.setattr(P, "check_trainer", lambda *a, **k: bad)
    with pytest.raises(RuntimeError, match="NOT ISOLATED.*set train.packing: false"):
        T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None)
    auto = cfg.model_copy(deep=True)
    auto.train.packing = "auto"
    monkeypatch.setattr(P, "resolve", lambda setting, backend: True)  # auto as on a GPU
    lines = []
    result = T.train(auto, run, T.load_for_training(auto), print_fn=lines.append)
    assert result["packing"] is False and result["steps"] == 3
    assert "packing: off for this run" in " ".join(lines)
    assert result["optimizations"][-1].startswith("packing off")


def test_packing_auto_is_on_with_unsloth_only_and_explicit_settings_win():
    assert P.resolve("auto", "unsloth") is True and P.resolve("auto", "hf") is False
    assert P.resolve(True, "hf") is True and P.resolve(False, "unsloth") is False
    assert P.segments([0, 1, 2, 0, 1, 0, 1, 2, 3, 0, 0]) == [(0, 3), (3, 5), (5, 9)]


def test_a_row_of_one_example_compares_nothing_so_the_check_searches_on_and_else_says_not_checked(packed_run):
    """Only row 0 of the first batch was checked: a row holding one example "passed" even for a model that attends
    across examples (it has no other example to attend to). The check now looks for a row holding two or more."""
    cfg, run = packed_run
    loaded = T.load_for_training(cfg)
    ds, _, batch = packed_batch(cfg, run, loaded)
    a, b = P.segments(batch["position_ids"][0].tolist())[0]
    lone = {k: batch[k][:, a:b] for k in ("input_ids", "labels", "position_ids")}  # a packed row of one example
    crossing = IgnoresPackingMarks(loaded.model)
    only_one = P.check(crossing, lone, ds.to_list())
    assert not only_one.passed and not only_one.failed and only_one.verdict == "not checked"
    assert "not checked" in only_one.line() and "isolated" not in only_one.line()
    assert only_one.to_dict()["passed"] is False and only_one.to_dict()["verdict"] == "not checked"
    found = P.check(crossing, [lone, lone, batch], ds.to_list())
    assert found.failed and found.examples >= 2 and found.batches_searched == 3
    assert "EXAMPLES NOT ISOLATED" in found.line() and "batch 3" in found.line()
    assert P.check(loaded.model, [lone, batch], ds.to_list()).passed


def test_training_goes_on_packed_when_the_check_could_compare_nothing(packed_run, monkeypatch):
    cfg, run = packed_run
    nothing = P.PackingCheck(0, 0, 0.0, 0.0, True, 0, [], [], P.MAX_SEARCH_BATCHES)
    monkeypatch.setattr(P, "check_trainer", lambda *a, **k: nothing)
    lines = []
    result = T.train(cfg, run, T.load_for_training(cfg), print_fn=lines.append)
    assert result["packing"] is True and result["packing_check"]["verdict"] == "not checked"
    assert any(line.startswith("packing check: not checked") for line in lines)
