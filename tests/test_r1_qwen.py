"""DeepSeek-R1-Distill-Qwen for real (issue 29): a tiny random Qwen2 that carries the real R1-Distill-Qwen tokenizer
and chat template (tests/assets holds the header of a real 7B GGUF: 152,064 tokens, full-width-bar control tokens,
<think> as a non-special added token, bos 151646, eos 151643, pad 151654), as a GGUF base and as a transformers
folder laid out as the hub repo."""
import json
from pathlib import Path

import pytest

from medqlora.config import ModelConfig
from medqlora.testing import R1_ROWS, make_tiny_r1_qwen_folder, make_tiny_r1_qwen_gguf, r1_header, r1_template

IDS = {"<｜begin▁of▁sentence｜>": 151646, "<｜User｜>": 151644, "<｜Assistant｜>": 151645,
       "<｜end▁of▁sentence｜>": 151643, "<think>": 151648, "</think>": 151649}
TOKENIZER_KEYS = ("tokens", "token_type", "merges", "bos_token_id", "eos_token_id", "padding_token_id",
                  "add_bos_token", "pre")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("r1")


@pytest.fixture(scope="module")
def r1_gguf(work):
    (work / "base").mkdir()
    return make_tiny_r1_qwen_gguf(work / "base" / "r1-tiny.gguf", work)


@pytest.fixture(scope="module")
def r1_folder(work):
    return make_tiny_r1_qwen_folder(work / "hub", work)


def chat_prompt(tok, question="Which vitamin prevents scurvy?"):
    return tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True)


def test_a_gguf_base_trains_on_the_tokenizer_its_file_has(r1_gguf, tmp_path):
    """Point 1: transformers' converter gives bos None, eos/pad <|endoftext|> at 152064 (past the embedding) and
    splits every control token into bytes; the converted base must carry the GGUF's own tokenizer."""
    from medqlora.training.model import load_tokenizer, resolve_model

    cfg = ModelConfig(name_or_path=str(Path(r1_gguf).parent), gguf_file=Path(r1_gguf).name, cache_dir=str(tmp_path))
    ref, notes = resolve_model(cfg)
    tok = load_tokenizer(ref, cfg)
    for text, i in IDS.items():
        assert tok(text, add_special_tokens=False)["input_ids"] == [i], text
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (151646, 151643, 151654)
    assert len(tok) == 151665 and max(tok.get_vocab().values()) < R1_ROWS
    assert tok("Hello world")["input_ids"] == [151646, 9707, 1879], "add_bos as the GGUF says"
    assert chat_prompt(tok) == "<｜begin▁of▁sentence｜><｜User｜>Which vitamin prevents scurvy?<｜Assistant｜>"
    assert any("rebuilt from the GGUF" in f for f in notes["tokenizer_fixes"]), notes


def test_a_gguf_whose_tokenizer_cannot_be_rebuilt_is_refused_naming_the_tokens(work, tmp_path):
    from medqlora.training.gguf_tokenizer import TokenizerMismatch
    from medqlora.training.model import resolve_model

    (tmp_path / "m").mkdir()
    bad = make_tiny_r1_qwen_gguf(tmp_path / "m" / "odd.gguf", work, strings={"tokenizer.ggml.pre": "chatglm-bpe"})
    cfg = ModelConfig(name_or_path=str(tmp_path / "m"), gguf_file="odd.gguf", cache_dir=str(tmp_path / "cache"))
    with pytest.raises(TokenizerMismatch) as e:
        resolve_model(cfg)
    msg = str(e.value)
    assert "'<｜User｜>' -> [27, 130957, 1474, 130957, 29] (the GGUF: [151644])" in msg, msg
    assert "pad is '<|endoftext|>' (152064) where the GGUF says '<|vision_pad|>' (151654)" in msg
    assert "bos is None" in msg and "past the embedding's 152064 rows" in msg
    assert "'chatglm-bpe'" in msg and "transformers folder" in msg
    assert not list((tmp_path / "cache").glob("*/config.json")), "nothing is left to train on"


def _llama_layout(work, folder: Path, with_config: bool) -> Path:
    """A folder laid out as the R1-Distill-Llama hub repo: a Llama config.json, a byte-level BPE tokenizer.json with
    Llama 3's split regex, and a tokenizer_config.json that says LlamaTokenizerFast."""
    from medqlora.training.gguf_tokenizer import read_vocab, rebuild

    v = read_vocab(r1_header(work))
    v.pre = "llama-bpe"
    folder.mkdir()
    rebuild(v).backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": v.tokens[v.bos], "eos_token": v.tokens[v.eos],
        "pad_token": v.tokens[v.eos], "legacy": True, "tokenizer_class": "LlamaTokenizerFast",
        "chat_template": v.chat_template}))
    if with_config:
        (folder / "config.json").write_text(json.dumps({
            "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": R1_ROWS, "hidden_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "bos_token_id": v.bos,
            "eos_token_id": v.eos}))
    return folder


@pytest.mark.parametrize("with_config", [True, False], ids=["hub-layout", "tokenizer-only"])
def test_a_llama_tokenizer_class_over_a_byte_level_tokenizer_json_is_caught_at_load(work, tmp_path, with_config):
    """Point 6: transformers 5.17 loads such a folder as a SentencePiece-style LlamaTokenizer ("Hello world" ->
    [39, 95292], Chinese -> []); the load checks a few strings against tokenizer.json and takes the file as written."""
    from tokenizers import Tokenizer

    from medqlora.training.model import load_tokenizer

    folder = _llama_layout(work, tmp_path / "r1-llama", with_config)
    tok = load_tokenizer(str(folder), ModelConfig(name_or_path=str(folder)))
    raw = Tokenizer.from_file(str(folder / "tokenizer.json"))
    for text in ("Hello world", "高血压患者", "<｜User｜>Dose 1250 mg<｜Assistant｜>"):
        want = raw.encode(text, add_special_tokens=False).ids
        assert tok(text, add_special_tokens=False)["input_ids"] == want and want, text
    assert tok("Hello world")["input_ids"] == [151646, 9707, 1879]
    assert (tok.bos_token_id, tok.eos_token_id) == (151646, 151643) and tok.chat_template


@pytest.mark.parametrize("thinks", [False, True], ids=["early-template", "think-template"])
def test_both_r1_templates_train_one_think_and_score_after_it(r1_folder, work, thinks):
    from medqlora.data.normalize import Example
    from medqlora.data.prompts import build_completion, build_prompt, tokenize_example
    from medqlora.evaluation.scoring import extract_choice, prompt_opens_think, split_reasoning
    from medqlora.training.model import load_tokenizer

    tok = load_tokenizer(r1_folder, ModelConfig(name_or_path=r1_folder))
    tok.chat_template = r1_template(thinks, r1_header(work))
    options = {"A": "Vitamin A", "B": "Vitamin C", "C": "Iron"}
    ex = Example(id="1", kind="choice", question="Which vitamin prevents scurvy?", answer="B", options=options,
                 reasoning="A? No: collagen needs vitamin C.")
    prompt = build_prompt(ex, tok, "reasoning")
    completion = build_completion(ex, prompt, tok, "reasoning")
    assert (prompt + completion).count("<think>") == 1 and (prompt + completion).count("</think>") == 1
    row = tokenize_example(prompt, completion, tok, "reasoning")
    assert row["input_ids"].count(151648) == 1 and row["input_ids"].count(151649) == 1
    assert row["input_ids"].count(151646) == 1 and row["input_ids"][0] == 151646, "one bos, first"
    assert row["input_ids"].count(151644) == 1 and row["input_ids"][-1] == 151643
    trained = [i for i in row["labels"] if i != -100]
    assert (151648 in trained) is not thinks, "<think> is trained unless the prompt already opens it"
    assert prompt_opens_think([{"prompt": prompt}]) is thinks
    generated = completion.removesuffix(tok.eos_token)
    assert split_reasoning(generated, thinks)[1] == "B. Vitamin C"
    assert extract_choice(generated, options, thinks) == "B", "the thought's 'A?' is not the answer"


def test_reasoning_choice_plan_says_the_real_reason():
    """Point 5: the early template's prompt does not open a thought; the reason for no log-likelihood is that the
    model was trained to think before it answers."""
    from medqlora.config import RunConfig
    from medqlora.evaluation.evaluate import choice_plan

    cfg = RunConfig.model_validate({"run_name": "t", "model": {"name_or_path": "m"},
                                    "data": {"source": "x.jsonl", "template": "reasoning"},
                                    "eval": {"choice_scoring": "both"}})
    why = choice_plan(cfg)["why"]
    assert "opens a thought" not in why and "trains the answer after a thought" in why, why


def test_the_headline_quotes_the_check_that_failed():
    """Point 3: a GGUF whose tokenizer check failed while its logits passed is reported by its tokenizer."""
    from medqlora.run import headline as H

    check = {"passed": False, "logits_rel_rmse": 0.00933, "tolerance": 0.05, "top1_agreement": 1.0, "prompts": 3,
             "tokenizer_same_ids": "0/3", "metadata_differs": {}, "vocab_ok": True,
             "vocab": {"tokens": R1_ROWS, "embedding_rows": R1_ROWS, "output_rows": R1_ROWS}}
    export = {"verified": True, "formats": {"gguf": {"quant": "q8_0", "check": check}},
              "failed_checks": {"gguf": "gguf (q8_0) check FAILED: tokenizer gives the same ids on only 0/3 prompts"}}
    [warning] = H.export_warnings(export)
    assert "tokenizer gives the same ids on only 0/3 prompts" in warning and "0.00933" not in warning, warning
    del export["failed_checks"]  # an export.json from before: the reason is worked out from the check
    [warning] = H.export_warnings(export)
    assert "tokenizer gives the same ids on only 0/3 prompts" in warning and "0.00933" not in warning, warning


def test_a_tokenizer_config_naming_no_unk_or_pad_adds_no_token_the_base_never_had(r1_folder, tmp_path):
    """Point 4: where tokenizer_config.json names no unk or pad, transformers' Qwen2Tokenizer adds its default
    <|endoftext|> at 151665 (unk and pad); saved with the merged model, the GGUF typed it CONTROL and padded with it.
    The load takes tokenizer.json as written: 151,665 entries, and the GGUF keeps 151665 an UNUSED padding row."""
    import gguf

    from medqlora.export.gguf_meta import vocab_fields
    from medqlora.training.model import load_tokenizer

    src = tmp_path / "src"
    src.mkdir()
    for name in ("tokenizer.json", "config.json", "generation_config.json"):
        (src / name).write_bytes((Path(r1_folder) / name).read_bytes())
    cfg = json.loads((Path(r1_folder) / "tokenizer_config.json").read_text())
    (src / "tokenizer_config.json").write_text(json.dumps({k: v for k, v in cfg.items()
                                                            if k not in ("unk_token", "pad_token")}))
    tok = load_tokenizer(str(src), ModelConfig(name_or_path=str(src)))
    assert len(tok) == 151665 and "<|endoftext|>" not in tok.get_vocab()
    assert tok.pad_token_id == 151643, "no pad named: the end of turn, as the project pads"
    tok.save_pretrained(tmp_path / "merged")  # as the merge saves the training tokenizer
    (tmp_path / "merged" / "config.json").write_bytes((src / "config.json").read_bytes())
    tokens, types, pre = vocab_fields(tmp_path / "merged", R1_ROWS, None)
    assert (tokens[151665], types[151665], pre) == ("[PAD151665]", gguf.TokenType.UNUSED, "deepseek-r1-qwen")


def _prompts(tok):
    return [chat_prompt(tok), chat_prompt(tok, "Dose of amoxicillin?") + "<think>\nweigh 15 mg/kg\n</think>\n\n"
            "500 mg<｜end▁of▁sentence｜>", "<｜begin▁of▁sentence｜>plain text 高血压 <tool_call> <|EOT|>"]


def test_a_gguf_from_the_hub_layout_folder_has_the_source_tokenizer_and_passes_its_check(r1_folder, work, tmp_path):
    """Points 2 and 4: the export writes the source's tokenizer (pre deepseek-r1-qwen, no CONTROL <|endoftext|> the
    base never had, pad 151654) and checks it with the GGUF's own token list, not transformers' converter."""
    from medqlora.core.gguf_kv import read_kv
    from medqlora.export import gguf as G
    from medqlora.training.model import load_tokenizer

    cfg = ModelConfig(name_or_path=r1_folder)
    made = G.write_gguf(r1_folder, tmp_path / "r1.gguf", "q8_0", "r1", G.tokenizer_pre(cfg))
    got, src = read_kv(made["file"]), read_kv(r1_header(work))
    for key in TOKENIZER_KEYS:
        a, b = got[f"tokenizer.ggml.{key}"], src[f"tokenizer.ggml.{key}"]
        assert (list(a) == list(b)) if hasattr(a, "__len__") and not isinstance(a, str) else a == b, key
    assert got["tokenizer.chat_template"] == src["tokenizer.chat_template"]
    check = G.check_gguf(made["file"], r1_folder, _prompts(load_tokenizer(r1_folder, cfg)), "q8_0")
    assert check["passed"] and check["tokenizer_same_ids"] == "3/3", check


# ---------------------------------------------------------------- the five stages with the R1 params

COT = [("A 54-year-old has crushing chest pain and ST elevation in II, III and aVF. Which artery is blocked?",
        "ST elevation in the inferior leads points to the inferior wall, supplied mostly by the right coronary artery.",
        "The right coronary artery."),
       ("Which electrolyte disturbance gives peaked T waves?", "Peaked T waves come early in hyperkalaemia.",
        "Hyperkalaemia."),
       ("What is the antidote for paracetamol overdose?", "Paracetamol poisoning depletes glutathione; "
        "N-acetylcysteine restores it.", "N-acetylcysteine."),
       ("Which vitamin deficiency causes scurvy?", "Collagen synthesis needs vitamin C.", "Vitamin C."),
       ("First-line drug for anaphylaxis?", "Adrenaline acts on alpha and beta receptors at once.",
        "Intramuscular adrenaline."),
       ("Which nerve is injured in wrist drop?", "Wrist extensors are supplied by the radial nerve.",
        "The radial nerve."),
       ("What does a positive Murphy sign suggest?", "Pain that stops inspiration under the right costal margin "
        "points to the gallbladder.", "Acute cholecystitis."),
       ("Which organism causes most community-acquired pneumonia?", "Streptococcus pneumoniae leads in every "
        "series.", "Streptococcus pneumoniae.")]


def r1_params(tmp_path: Path, model: dict) -> Path:
    """params/deepseek-r1-distill-qwen-7b.yaml with the tiny model, a few rows of medical-o1-reasoning-SFT's shape,
    a local held-out file (free text and multiple choice) and CPU-sized training: the R1 params otherwise."""
    import yaml
    from conftest import ROOT, write_jsonl

    raw = yaml.safe_load((ROOT / "params" / "deepseek-r1-distill-qwen-7b.yaml").read_text())
    train = write_jsonl(tmp_path / "o1.jsonl", [{"Question": q, "Complex_CoT": c, "Response": r} for q, c, r in COT])
    held = [json.loads(line) for line in (ROOT / "data" / "medqa_eval.jsonl").read_text().splitlines()]
    held = [r for r in held if "options" not in r][:2] + [r for r in held if "options" in r][:2]
    raw["model"] = {**raw["model"], **model, "max_seq_length": 256, "cache_dir": str(tmp_path / "cache")}
    raw["data"] = {**{k: v for k, v in raw["data"].items() if k not in ("config_name", "split", "eval_fraction")},
                   "source": str(train), "eval_source": str(write_jsonl(tmp_path / "held.jsonl", held)),
                   "min_train_examples": 2, "val_fraction": 0}
    raw["lora"].update(r=8)
    raw["train"].update(micro_batch_size=4, gradient_accumulation=1, optimizer="adamw_torch", learning_rate=1e-3,
                        logging_steps=1, save_steps=100, gradient_checkpointing=False)
    raw["export"] = {"formats": ["lora", "gguf"], "gguf_quant": "q8_0"}
    raw["eval"].update(max_samples=4, max_new_tokens=12, max_new_tokens_choice=8, batch_size=4, sets=[])
    raw["memory"] = {}
    path = tmp_path / "r1-qwen.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True))
    return path


def _chain(tmp_path, work, model: dict, run_id: str) -> tuple[Path, str]:
    from test_runner import notebook_errors, runner

    reports = tmp_path / "reports"
    r = runner(r1_params(tmp_path, model), "--reports-dir", reports, "--run-id", run_id, timeout=1500)
    run = reports / run_id
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    s = json.loads((run / "summary.json").read_text())
    assert [(x["name"], x["status"]) for x in s["stages"]] == [
        (n, "ok") for n in ("setup", "preprocess", "train", "export", "evaluate")]
    assert all(notebook_errors(run / x["notebook"]) == [] for x in s["stages"])
    # the first training example: one bos, control tokens one id each, <think> trained, the prompt masked
    from datasets import load_from_disk

    from medqlora.training.model import load_tokenizer

    first = load_from_disk(str(run / "data" / "train"))[0]
    ids, labels = first["input_ids"], first["labels"]
    tok = load_tokenizer(str(run / "export" / "adapter"), ModelConfig(name_or_path="x"))
    print(f"\n{run_id}: first training example, as rendered:\n{tok.decode(ids)!r}")
    assert ids.count(151646) == 1 and ids[0] == 151646 and ids.count(151644) == 1 and ids.count(151645) == 1
    n_prompt = labels.count(-100)
    assert ids[n_prompt - 1] == 151645 and labels[n_prompt] == 151648 == ids[n_prompt], "<think> trained first"
    assert ids[-1] == 151643 and max(ids) < R1_ROWS
    # the export: no keep_failed, the GGUF's check passed on its own token list (and llama.cpp's, where installed)
    ex = json.loads((run / "results" / "export.json").read_text())
    g = ex["formats"]["gguf"]
    assert not ex["failed_checks"] and g["check"]["passed"], g["check"]
    import importlib.util

    assert g["check"]["llama_cpp_same_ids"] == ("3/3" if importlib.util.find_spec("llama_cpp") else None)
    from medqlora.core.gguf_kv import read_kv

    got, src = read_kv(run / "export" / "gguf" / Path(g["file"]).name), read_kv(r1_header(work))
    for key in TOKENIZER_KEYS:
        a, b = got[f"tokenizer.ggml.{key}"], src[f"tokenizer.ggml.{key}"]
        assert (list(a) == list(b)) if hasattr(a, "__len__") and not isinstance(a, str) else a == b, key
    assert got["tokenizer.chat_template"] == src["tokenizer.chat_template"]
    ev = json.loads((run / "results" / "evaluate.json").read_text())
    assert ev["reasoning_opened_in_prompt"] is False and "opens a thought" not in ev["choice_scoring"]["why"]
    return run, r.stdout


@pytest.mark.slow
def test_r1_params_run_five_stages_on_the_gguf_base(r1_gguf, work, tmp_path):
    run, out = _chain(tmp_path, work, {"name_or_path": str(Path(r1_gguf).parent), "gguf_file": Path(r1_gguf).name},
                      "gguf")
    # the conversion said what it rebuilt where it ran (the runner's checks before the notebooks, or a notebook)
    said = out + (run / "run.log").read_text()
    assert "WARNING tokenizer rebuilt from the GGUF's own token list" in said and "'<｜User｜>' -> [27, " in said


@pytest.mark.slow
def test_r1_params_run_five_stages_on_the_hub_layout_folder(r1_folder, work, tmp_path):
    _chain(tmp_path, work, {"name_or_path": r1_folder}, "folder")
