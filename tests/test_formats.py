"""Merged 16-bit and GGUF exports on a tiny trained Llama: the merge computes what the adapter computed, the
GGUF reads back to the merged model's logits, and what cannot be made here is said without losing the rest."""
import json

import pytest
import torch
from conftest import tiny_params, write_jsonl

from medqlora.config import load_config
from medqlora.core.rundir import RunDir
from medqlora.data import preprocess as P
from medqlora.export import exporter as E
from medqlora.export import gguf as G
from medqlora.export import merge as MG
from medqlora.training import model as M
from medqlora.training import train as T


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("formats")
    rows = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}, given slowly."}
            for i in range(8)]
    ev = [{"question": f"Which drug reverses overdose {i}?", "answer": f"Reversal agent {i}."} for i in (90, 91, 92)]
    cfg = load_config(tiny_params(tmp, tiny_model_dir, write_jsonl(tmp / "t.jsonl", rows),
                                  write_jsonl(tmp / "e.jsonl", ev),
                                  train={"max_steps": 6, "learning_rate": 2e-2, "micro_batch_size": 4,
                                         "group_by_length": False},
                                  export={"formats": ["merged_16bit", "gguf"], "gguf_quant": "q8_0"}))
    run = RunDir(tmp / "run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    run.save_result("train", T.train(cfg, run, T.load_for_training(cfg), print_fn=lambda *a: None))
    return cfg, run


def test_merged_and_gguf_exported_checked_and_in_the_manifest(trained_run):
    cfg, run = trained_run
    result = E.export(cfg, run)
    merged, gguf = result["formats"]["merged_16bit"], result["formats"]["gguf"]
    assert merged["check"]["identical"] == merged["check"]["prompts"] == 3, merged["check"]["rows"]
    assert merged["check"]["passed"] and merged["check"]["top1_agreement"] > 0.95
    assert (run.export_dir / "merged" / "config.json").is_file()
    st = json.loads((run.export_dir / "merged" / "config.json").read_text())
    assert st.get("dtype", st.get("torch_dtype")) == "bfloat16"
    assert gguf["check"]["passed"], gguf["check"]
    assert gguf["check"]["logits_rel_rmse"] < 0.05 and gguf["check"]["top1_agreement"] > 0.9
    assert gguf["file"].endswith("gguf/tiny-q8_0.gguf")
    files = json.loads((run.export_dir / E.MANIFEST).read_text())["files"]
    assert {"merged/config.json", "gguf/tiny-q8_0.gguf", "adapter/adapter_model.safetensors"} <= set(files)
    assert E.verify(run.export_dir) == []
    assert not (run / "merged.scratch").exists()
    assert "PASSED" in E.formats_table(result).to_html()
    meta = json.loads((run.export_dir / "training_metadata.json").read_text())
    assert len(meta["base_model"]["revision"]["local_fingerprint"]) == 16, "which base weights, when knowable"
    import gguf as gg

    f = gg.GGUFReader(gguf["file"]).fields
    assert f["general.size_label"].contents() == "3.2M" and f["tokenizer.ggml.add_bos_token"].contents() is False
    # the Ollama Modelfile beside it asks as evaluation asked: the first held-out prompt, rebuilt from its template
    assert "gguf/Modelfile" in files
    modelfile = (run.export_dir / "gguf" / "Modelfile").read_text()
    assert "FROM ./tiny-q8_0.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile
    template = modelfile.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    no_system = template.split("{{ else }}", 1)[1].rsplit("{{ end }}", 1)[0]
    item = json.loads(run.eval_items.read_text().splitlines()[0])
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    user = item["prompt"].split("<|im_start|>user\n", 1)[1].split("<|im_end|>", 1)[0]
    assert no_system.replace("{{ .Prompt }}", user) == item["prompt"] == tok.apply_chat_template(
        [{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)


def test_merged_model_greedy_answers_equal_the_adapters(trained_run, tmp_path):
    """Merging onto the dequantized 4-bit base: the merged model computes what the 4-bit + LoRA model computed."""
    cfg, run = trained_run
    ref, _ = M.resolve_model(cfg.model)
    MG.merge_to(cfg, ref, str(run.adapter_dir), tmp_path / "merged", "hf")
    adapter_model, tok = M.load_with_adapter(ref, str(run.adapter_dir), cfg.model, "hf")
    merged, mtok = MG.load_merged(tmp_path / "merged", dtype=torch.float32)
    prompts = E.check_prompts(run)
    ids = tok(prompts[0], return_tensors="pt")
    with torch.no_grad():
        a, b = adapter_model(**ids).logits, merged(**ids).logits
    assert (a - b).abs().max() < 5e-2 * a.abs().max(), "merged weights reproduce the adapter model's logits"
    with adapter_model.disable_adapter(), torch.no_grad():
        base = adapter_model(**ids).logits
    assert (base - b).abs().max() > 10 * (a - b).abs().max(), "and the merge really holds the LoRA update"
    check = MG.compare_greedy(adapter_model, tok, merged, mtok, prompts, 16, cfg.data.template)
    assert check["identical"] == len(prompts)


@pytest.mark.parametrize("quant", ["f16", "q4_0"])
def test_gguf_reads_back_within_its_quantization_tolerance(trained_run, tmp_path, quant):
    cfg, run = trained_run
    ref, _ = M.resolve_model(cfg.model)
    MG.merge_to(cfg, ref, str(run.adapter_dir), tmp_path / "merged", "hf")
    out = G.write_gguf(tmp_path / "merged", tmp_path / f"m-{quant}.gguf", quant)
    check = G.check_gguf(out["file"], tmp_path / "merged", E.check_prompts(run), quant)
    assert check["passed"], check
    if quant == "f16":
        assert check["logits_rel_rmse"] < 1e-3 and check["top1_agreement"] == 1.0


def test_gguf_without_the_llama_qk_permutation_would_be_caught(trained_run, tmp_path, monkeypatch):
    """The check is real: skip the Q/K row permutation llama.cpp expects and the read-back logits fall apart."""
    cfg, run = trained_run
    ref, _ = M.resolve_model(cfg.model)
    MG.merge_to(cfg, ref, str(run.adapter_dir), tmp_path / "merged", "hf")
    monkeypatch.setattr(G, "_permute", lambda w, n_head, n_kv: w)
    out = G.write_gguf(tmp_path / "merged", tmp_path / "bad.gguf", "f16")
    check = G.check_gguf(out["file"], tmp_path / "merged", E.check_prompts(run), "f16")
    # a correct f16 reads back within 1e-3 (test above); without the permutation 0.0092 on this tiny model (its
    # seeded adapter), which the old f16 tolerance of 1e-2 let through
    assert not check["passed"] and check["logits_rel_rmse"] > max(5e-3, G.TOLERANCE["f16"])


def test_a_k_quant_is_said_early_and_the_other_formats_still_exported(trained_run, tmp_path, monkeypatch):
    """Where llama-cpp-python (the [gguf] extra) is not installed; where it is, tests/test_llama_cpp.py makes one."""
    from medqlora.config import export as export_section

    monkeypatch.setattr(export_section, "llama_cpp_installed", lambda: False)
    cfg, run = trained_run
    with pytest.warns(UserWarning, match="q4_k_m needs llama.cpp"):
        kq = load_config(tiny_params(tmp_path, cfg.model.name_or_path, tmp_path / "x.jsonl", None,
                                     export={"formats": ["merged_16bit", "gguf"], "gguf_quant": "q4_k_m"}))
    cfg2 = cfg.model_copy(update={"export": kq.export})
    result = E.export(cfg2, run)
    assert "llama-quantize" in result["formats"]["gguf"]["error"]
    assert "pip install 'medqlora[gguf]'" in result["formats"]["gguf"]["error"]
    assert "merged_16bit" in result["formats"] and E.verify(run.export_dir) == []
    assert not (run.export_dir / "gguf").exists()
    with pytest.raises(ValueError, match="unknown GGUF quantization"):
        load_config(tiny_params(tmp_path, cfg.model.name_or_path, tmp_path / "x.jsonl", None,
                                export={"gguf_quant": "q3"}))
    with pytest.raises(G.GGUFUnsupported, match="covers"):
        G.check_supported("gpt_neox", "q8_0")


def test_evaluation_through_merged_weights_gives_the_adapters_answers(trained_run):
    """eval.merge: both models answer from the dequantized base, the fine-tuned one with the adapter merged in;
    greedy answers equal those of the 4-bit base with the adapter on top."""
    from medqlora.evaluation import evaluate as EV

    cfg, run = trained_run
    lora_only = cfg.model_copy(deep=True)
    lora_only.export.formats = ["lora"]
    run.save_result("export", E.export(lora_only, run))
    answers, lines = {}, []
    for merge in (False, True):
        c = cfg.model_copy(deep=True)
        c.eval.merge = merge
        result = EV.compare(c, run, print_fn=lines.append)
        assert result["merged"] is merge and result["new_tokens_per_s"]["finetuned"] > 0
        assert all(result["first_batch_seconds"][who] > 0 for who in ("base", "finetuned"))  # timed apart
        answers[merge] = [(a["base"], a["finetuned"]) for a in map(json.loads, (run / "eval" / "answers.jsonl")
                                                                    .read_text().splitlines())]
    assert answers[True] == answers[False] and len(answers[True]) == 3
    assert any("fine-tuned answers from merged weights (eval.merge: True)" in line for line in lines)
    assert any("adapter merged into the weights" in line for line in lines)


def test_auto_generation_batch_is_the_largest_that_fits_the_budget(trained_run):
    from medqlora.evaluation import generate as GEN
    from medqlora.training import memory

    cfg, run = trained_run
    ref, _ = M.resolve_model(cfg.model)
    tok = M.load_tokenizer(ref, cfg.model)
    items = [{"prompt": "Which drug reverses overdose?" * 4, "kind": "freetext"}] * 300
    c = cfg.model_copy(deep=True)
    c.eval.batch_size = "auto"
    c.memory.budget_gb = 64.0
    batch, info = GEN.batch_for(c, ref, items, tok, print_fn=lambda *a: None)
    assert batch == c.eval.max_batch_size == 128, "a roomy budget: capped by eval.max_batch_size"
    shape, total = memory.model_shape(ref), None
    # a budget that fits 8 sequences but not 16 picks 8
    total = len(tok(items[0]["prompt"])["input_ids"]) + max(c.eval.max_new_tokens, c.eval.max_new_tokens_choice)
    at = {b: memory.total(memory.estimate_generation(shape, b, total, True)) for b in (8, 16)}
    c.memory.budget_gb = (at[8] + at[16]) / 2 / c.memory.max_fraction
    batch, info = GEN.batch_for(c, ref, items, tok, print_fn=lambda *a: None)
    assert batch == 8 and info["why"].startswith("auto: largest batch within")
    c.eval.batch_size = 5
    assert GEN.batch_for(c, ref, items, tok, print_fn=lambda *a: None)[0] == 5


def test_a_gguf_whose_read_back_failed_is_one_failed_row_in_the_formatted_table():
    result = {"adapter_dir": "a", "adapter": {"rank": 8, "lora_B_trained": "4/4"},
              "formats": {"gguf": {"file": "g.gguf", "bytes": 2 * 1024**2, "quant": "q8_0",
                                   "check": {"passed": False, "error": "could not read it back: OSError: x"}}}}
    html = E.formats_table(result).to_html()
    assert "FAILED: could not read it back" in html and ">2.00 MiB<" in html  # sized as for the other rows


def test_a_failed_check_fails_the_stage_and_its_format_is_not_published(trained_run, tmp_path, monkeypatch):
    """A GGUF whose check fails is set aside, kept out of the manifest and the destination, and the stage fails
    saying which check and by how much; the adapter and the merged model (which passed) are exported. With
    export.keep_failed the same GGUF is published, marked as failed."""
    cfg, run = trained_run
    monkeypatch.setitem(G.TOLERANCE, "q8_0", 1e-9)  # no real q8_0 file is this close
    c = cfg.model_copy(deep=True)
    c.export.destination = str(tmp_path / "published")
    with pytest.raises(RuntimeError, match=r"gguf \(q8_0\) check FAILED: logits rel. RMSE against the merged model "
                                           r"\d\.\d+e-\d+ > tolerance 1e-09"):
        E.export(c, run)
    files = json.loads((run.export_dir / E.MANIFEST).read_text())["files"]
    assert "adapter/adapter_model.safetensors" in files and "merged/config.json" in files
    assert not [f for f in files if f.startswith("gguf/")] and not (run.export_dir / "gguf").exists()
    assert E.verify(run.export_dir) == [] and not (tmp_path / "published").exists()
    assert (run / "export.rejected" / "gguf" / "tiny-q8_0.gguf").is_file(), "set aside for a look"
    c.export.keep_failed = True
    result = E.export(c, run)
    assert result["kept_failed"] == ["gguf"] and not result["formats"]["gguf"]["check"]["passed"]
    assert "gguf/tiny-q8_0.gguf" in json.loads((run.export_dir / E.MANIFEST).read_text())["files"]
    assert E.verify(str(tmp_path / "published")) == [] and "FAILED" in E.formats_table(result).to_html()


def test_failed_checks_say_which_check_and_by_how_much():
    from medqlora.export.formats import failed_checks

    good_gguf = {"quant": "q8_0", "check": {"passed": True}}
    crashed = failed_checks({"gguf": {"quant": "q8_0", "check": {"passed": False, "error": "could not read it "
                                                                  "back: OSError: truncated"}}})
    assert crashed == {"gguf": "gguf (q8_0) check FAILED: could not read it back: OSError: truncated"}
    bad_merge = {"passed": False, "logits_rel_rmse": 0.21, "tolerance": 0.05, "top1_agreement": 0.9,
                 "identical": 1, "prompts": 3}
    out = failed_checks({"merged_16bit": {"check": bad_merge}, "gguf": good_gguf})
    assert out["merged_16bit"] == ("merged_16bit check FAILED: logits rel. RMSE against the adapter model 2.10e-01 "
                                   "> tolerance 5.00e-02 (top-1 agreement 90.0%, greedy answers identical on 1/3)")
    assert "made from a merged model whose check failed" in out["gguf"], "a GGUF of a bad merge is bad too"
    assert failed_checks({"merged_16bit": {"check": {**bad_merge, "passed": True}}, "gguf": good_gguf}) == {}
