"""The evaluate stage's generation, before and after issue 31, side by side in one process, on a random-weight model of
a real shape with the settings of a params file (default: the R1 params as shipped: 100 held-out free-text items and
200 MedQA + 200 PubMedQA closed-form items, reasoning template, up to 1,024 new tokens, the memory plan of a 14.7 GiB
card). No trained run is needed: a LoRA adapter of the params' rank on every projection is written from config.json.

    python benchmarks/eval_speed.py MODEL_DIR OUT_DIR --path merged|adapter [--engines eager static continuous]
        [--batches 1 16 64 planned] [--new-tokens 128] [--long 1024] [--deadline EPOCH_SECONDS]

--path merged: the stage's eval.merge path (the 4-bit base dequantized, the adapter merged for the fine-tuned pass;
transformers generate): every engine on the same model. --path adapter: the 4-bit base with the adapter on top; the
eager engine through Unsloth's inference mode (the stage before issue 31), static and continuous through transformers
+ PEFT + bitsandbytes (after), each engine loaded once, the Unsloth load last (its class patches stay in the process).

Each row: one generate() call of the stage (evaluation/generate.py) at that batch, every answer forced to
--new-tokens (min_new_tokens), after a warm-up call of the same shape (its seconds shown apart: compilation, graph
capture); the static engine uses the pass's cache size (longest prompt + eval.max_new_tokens), as the stage does.
'planned' is the memory plan's batch for these items (generate.batch_for). --long times the planned batch once more
at the full answer length (the R1 params' 1,024) for the projection. --profile B profiles one short call at batch B
(torch.profiler): the model's forward against the rest of generate (sampling, stopping, masks: Python), the GPU's
kernel time by kind (matmul, 4-bit dequantization, attention, other) and the GPU's idle time (Python and launches).
Prints GENROW/PROFROW/PROJROW JSON lines and writes rows.jsonl into OUT_DIR.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def emit(out: Path, kind: str, row: dict) -> None:
    print(f"{kind} " + json.dumps(row), flush=True)
    with open(out / "rows.jsonl", "a") as f:
        f.write(json.dumps({"kind": kind, **row}) + "\n")


def r1_items(tok, cfg, data: Path, counts=(100, 200, 200)) -> list[dict]:
    """The R1 params' eval sets in shape: free-text questions (MedQuAD), 4-option vignettes (a PubMedQA abstract's
    first 120 words as the case, options from other questions: a MedQA vignette's length) and PubMedQA yes/no items
    with their abstract, built with the stage's own prompt builder (template, system prompt)."""
    from medqlora.data.formats import Example
    from medqlora.data.prompts import build_prompt

    read = lambda p: [json.loads(line) for line in Path(p).read_text().splitlines() if line.strip()]  # noqa: E731
    mq, pq = read(data / "medquad_sample.jsonl"), read(data / "pubmedqa_pqal.jsonl")
    exs = [Example(f"f{i}", "freetext", r["question"], r["answer"]) for i, r in enumerate(mq[:counts[0]])]
    for i in range(counts[1]):
        r = pq[i % len(pq)]
        case = " ".join(r["context"].split()[:120])
        opts = {k: mq[(i * 4 + j) % len(mq)]["question"][:60] for j, k in enumerate("ABCD")}
        exs.append(Example(f"c{i}", "choice", f"{case} {r['question']}", "A", options=opts))
    exs += [Example(f"y{i}", "yesno", r["question"], r["final_decision"], context=r["context"])
            for i, r in enumerate((pq * 2)[:counts[2]])]
    return [{"id": ex.id, "kind": ex.kind, "prompt": build_prompt(ex, tok, cfg.data.template, cfg.data.system_prompt)}
            for ex in exs]


def write_adapter(ref: str, out: Path, cfg) -> str:
    """A LoRA adapter of the params' rank on the params' projections, written from config.json (no model loaded):
    A random, B small random, so the fine-tuned model differs from the base."""
    import torch
    from safetensors.torch import save_file

    c = json.loads((Path(ref) / "config.json").read_text())
    h, inter, layers = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    hd = c.get("head_dim") or h // c["num_attention_heads"]
    kv = c["num_key_value_heads"] * hd
    shapes = {"q_proj": (h, h), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (h, h), "gate_proj": (h, inter),
              "up_proj": (h, inter), "down_proj": (inter, h)}
    r, g = cfg.lora.r, torch.Generator().manual_seed(0)
    targets = [t for t in cfg.lora.target_modules if t in shapes]
    tensors = {}
    for i in range(layers):
        for t in targets:
            fan_in, fan_out = shapes[t]
            where = "self_attn" if t.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp"
            name = f"base_model.model.model.layers.{i}.{where}.{t}"
            tensors[f"{name}.lora_A.weight"] = torch.randn(r, fan_in, generator=g) / math.sqrt(fan_in)
            tensors[f"{name}.lora_B.weight"] = torch.randn(fan_out, r, generator=g) * 1e-3
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()},
              str(out / "adapter_model.safetensors"))
    (out / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": r, "lora_alpha": cfg.lora.alpha, "lora_dropout": 0.0,
        "target_modules": targets, "bias": "none", "base_model_name_or_path": ref, "inference_mode": True,
        "use_rslora": cfg.lora.rslora, "fan_in_fan_out": False, "modules_to_save": None}))
    return str(out)


def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(model, tok, items, batch, new_tokens, engine, cache_len, cfg, label, warm_tokens=4, single=2) -> dict:
    """One generate() call of `batch` prompts (batch 1: `single` prompts one after another) after a warm-up call of
    the same shape."""
    import torch

    from medqlora.evaluation.generate import generate

    sub = items[:single if batch == 1 else batch]
    kw = {"print_fn": lambda *a: None, "template": cfg.data.template, "engine": engine, "max_cache_len": cache_len}
    t0 = time.time()
    generate(model, tok, sub[:batch], warm_tokens, warm_tokens, batch, "warm-up",
             sampling_kw={"do_sample": False, "min_new_tokens": warm_tokens}, **kw)
    sync()
    warm_s = time.time() - t0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    out = generate(model, tok, sub, new_tokens, new_tokens, batch, label,
                   sampling_kw={"do_sample": False, "min_new_tokens": new_tokens}, **kw)
    sync()
    s = time.time() - t0
    n = sum(a["new_tokens"] for a in out)
    peak = torch.cuda.max_memory_reserved() / 1024**3 if torch.cuda.is_available() else None
    return {"batch": batch, "prompts": len(sub), "new_tokens_each": new_tokens, "new_tokens": n, "seconds": round(s, 2),
            "new_tokens_per_s": round(n / s, 1), "steps_per_s": round(n / s / batch, 1),
            "warmup_seconds": round(warm_s, 2), "peak_reserved_gb": None if peak is None else round(peak, 2),
            "texts": [a["text"] for a in out]}


KINDS = (("dequant_4bit", ("dequant", "gemm_4bit", "gemv_4bit", "kgemm", "4bit")),
         ("attention", ("attention", "fmha", "flash", "sdpa", "softmax")),
         ("matmul", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "matmul", "splitk")))


def profile(model, tok, items, batch, engine, cache_len, cfg, steps=16) -> dict:
    """Where one short call's time goes: the model's forward (the transformers module's forward, wrapped in a
    profiler range) against generate's own work, and the GPU's kernel time by kind against its idle time."""
    import torch
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    from medqlora.evaluation.fast_generate import _causal_lm
    from medqlora.evaluation.generate import generate

    inner = _causal_lm(model)
    real = inner.forward

    def forward(*a, **k):
        with record_function("model_forward"):
            return real(*a, **k)

    sub = items[:batch]
    kw = {"print_fn": lambda *a: None, "template": cfg.data.template, "engine": engine, "max_cache_len": cache_len,
          "sampling_kw": {"do_sample": False, "min_new_tokens": steps}}
    generate(model, tok, sub, steps, steps, batch, "warm-up", **kw)  # compiled and captured before the profile
    inner.forward = forward if engine == "eager" else real
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    try:
        with torch_profile(activities=acts) as prof:
            sync()
            t0 = time.time()
            generate(model, tok, sub, steps, steps, batch, "profile", **kw)
            sync()
            wall = time.time() - t0
    finally:
        if "forward" in inner.__dict__:
            del inner.forward
    fwd_us, kernels = 0.0, {"matmul": 0.0, "dequant_4bit": 0.0, "attention": 0.0, "other": 0.0}
    for e in prof.key_averages():
        if e.key == "model_forward":
            fwd_us += e.cpu_time_total
        if str(e.device_type).endswith("CUDA") and e.self_device_time_total > 0:
            name = e.key.lower()
            kind = next((k for k, words in KINDS if any(w in name for w in words)), "other")
            kernels[kind] += e.self_device_time_total
    busy = sum(kernels.values()) / 1e6
    row = {"batch": batch, "steps": steps, "wall_s": round(wall, 3), "engine": engine,
           "gpu_kernels_s": round(busy, 3), "gpu_idle_share": round(max(0.0, 1 - busy / wall), 3),
           **{f"{k}_share": round(v / 1e6 / wall, 3) for k, v in kernels.items()}}
    if engine == "eager":  # the range is only there on the eager path (a compiled step has no Python forward)
        row.update(forward_share=round(fwd_us / 1e6 / wall, 3), outside_forward_share=round(1 - fwd_us / 1e6 / wall, 3))
    return row


def agreement(a: list[str], b: list[str]) -> float:
    return round(sum(x == y for x, y in zip(a, b)) / max(1, min(len(a), len(b))), 3)


def project(rows: list[dict], cfg, n: dict, load_s: float) -> list[dict]:
    """The R1 evaluate stage's generation time per engine from its planned-batch rate (the --long row where there is
    one): the tokens as the stage budgets them (free text eval.max_new_tokens, closed eval.max_new_tokens_choice) and
    the issue's upper bound (every item eval.max_new_tokens), random weights never stopping early; two passes (base
    and fine-tuned) for a first run, one for the later runs of a batch (the base answers reused)."""
    e, out = cfg.eval, []
    for engine in dict.fromkeys(r["engine"] for r in rows):
        mine = [r for r in rows if r["engine"] == engine and r.get("planned")]
        if not mine:
            continue
        best = max(mine, key=lambda r: r["new_tokens_each"])
        budgeted = n["freetext"] * e.max_new_tokens + n["closed"] * e.max_new_tokens_choice
        upper = (n["freetext"] + n["closed"]) * e.max_new_tokens
        one = lambda tokens: best["warmup_seconds"] + tokens / best["new_tokens_per_s"]  # noqa: E731
        out.append({"engine": engine, "batch": best["batch"], "rate": best["new_tokens_per_s"],
                    "rate_at_new_tokens": best["new_tokens_each"], "load_s": round(load_s, 1),
                    "tokens_per_pass_budgeted": budgeted, "tokens_per_pass_upper": upper,
                    "first_run_s_budgeted": round(load_s + 2 * one(budgeted), 1),
                    "first_run_s_upper": round(load_s + 2 * one(upper), 1),
                    "later_run_s_upper": round(load_s + one(upper), 1)})
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("out")
    p.add_argument("--path", choices=["merged", "adapter"], required=True)
    p.add_argument("--params", default=str(ROOT / "params" / "deepseek-r1-distill-llama-8b.yaml"))
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "data"),
                   help="its medquad_sample.jsonl and pubmedqa_pqal.jsonl")
    p.add_argument("--engines", nargs="+", default=["eager", "static", "continuous"])
    p.add_argument("--batches", nargs="+", default=["planned", "64", "16", "1"])
    p.add_argument("--batches-for", nargs="*", default=[], help="ENGINE=B,B: fewer batches for an engine")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--long", type=int, default=0, help="the planned batch again at this many new tokens")
    p.add_argument("--long-engines", nargs="*", default=["static", "continuous"])
    p.add_argument("--profile", type=int, default=0, help="profile one short call at this batch (eager and static)")
    p.add_argument("--deadline", type=float, default=0, help="epoch seconds: rows that would start later are skipped")
    p.add_argument("--min-left", type=float, default=25, help="seconds a row needs left before the deadline")
    p.add_argument("--step-s", type=float, default=0.02, help="and this much more per new token")
    p.add_argument("--reserve", type=float, default=0,
                   help="seconds kept for the eager rows by the engines before them")
    p.add_argument("--eager-loader", default="unsloth", help="adapter path: the eager engine's backend (hf on a CPU)")
    p.add_argument("--single", type=int, default=2, help="prompts timed one at a time for batch 1")
    p.add_argument("--wait-for", default=None, help="a file to wait for before loading (another job's GPU work)")
    p.add_argument("--model-ready", default=None, help="a file to wait for before reading the model folder (its build)")
    a = p.parse_args(argv)

    from medqlora.training.model import preload_unsloth

    preload_unsloth()  # as the evaluate stage's notebook does, before transformers
    import random

    import torch
    import yaml

    from medqlora.config import load_config
    from medqlora.evaluation import fast_generate as FG
    from medqlora.evaluation.generate import batch_for
    from medqlora.training import model as M

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    while a.model_ready and not Path(a.model_ready).exists():  # imported while the model was being built
        time.sleep(1)
    raw = yaml.safe_load(Path(a.params).read_text())
    raw["model"]["name_or_path"] = a.model
    (out / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    cfg = load_config(out / "params.yaml")
    ref = a.model
    adapter = write_adapter(ref, out / "adapter", cfg)
    tok = M.load_tokenizer(ref, cfg.model)
    items = r1_items(tok, cfg, Path(a.data))
    n = {"freetext": sum(it["kind"] == "freetext" for it in items)}
    n["closed"] = len(items) - n["freetext"]
    planned, batching = batch_for(cfg, ref, items, tok, merged=a.path == "merged")
    cache_len = batching["cache_len"]
    random.Random(0).shuffle(items)  # each measured batch holds the mix of kinds and lengths
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    FG.COMPILE["dynamic"] = None  # the benchmark's other batch sizes: one dynamic recompile, not one per size
    emit(out, "SETUP", {"device": device, "path": a.path, "planned_batch": planned, "why": batching["why"],
                        "cache_len": cache_len, "items": n, "estimate_gb": batching["estimate_gb"]})
    only = {k: [planned if b == "planned" else int(b) for b in v.split(",")]
            for k, v in (x.split("=") for x in a.batches_for)}
    left = lambda: a.deadline - time.time() if a.deadline else 1e9  # noqa: E731
    rows, texts_by, loads = [], {}, {}
    loaded = None
    for engine in a.engines:
        if left() < a.min_left * 2:
            emit(out, "SKIPROW", {"engine": engine, "why": "no time left"})
            continue
        loader = "merged" if a.path == "merged" else (a.eager_loader if engine == "eager" else "hf")
        reserve = a.reserve if "eager" in a.engines[a.engines.index(engine) + 1:] else 0.0
        while a.wait_for and not Path(a.wait_for).exists():
            time.sleep(1)
        if loaded is None or loaded[0] != loader:
            model = loaded = None
            gc.collect()
            torch.cuda.empty_cache() if torch.cuda.is_available() else None
            t0 = time.time()
            if loader == "merged":
                from medqlora.export import merge as MG

                model, tok = MG.dequantized_with_adapter(ref, adapter, cfg)
                model = (model.to("cuda") if torch.cuda.is_available() else model).merge_and_unload()
            else:
                model, tok = M.load_with_adapter(ref, adapter, cfg.model, loader)
            loads[loader] = time.time() - t0
            loaded = (loader, model)
            emit(out, "LOAD", {"loader": loader, "seconds": round(loads[loader], 1)})
        for b in dict.fromkeys(only.get(engine) or [planned if x == "planned" else int(x) for x in a.batches]):
            lengths = [a.new_tokens] + ([a.long] if a.long and b == planned and engine in a.long_engines else [])
            for new_tokens in lengths:
                if left() < a.min_left + a.step_s * new_tokens + reserve:
                    emit(out, "SKIPROW", {"engine": engine, "batch": b, "new_tokens": new_tokens,
                                          "why": "no time left"})
                    continue
                try:
                    r = measure(model, tok, items, b, new_tokens, engine, cache_len, cfg, engine, single=a.single)
                except Exception as err:  # noqa: BLE001  (one failing setting must not hide the others)
                    r = {"batch": b, "new_tokens_each": new_tokens, "error": f"{type(err).__name__}: {str(err)[:300]}"}
                texts_by[(engine, b, new_tokens)] = r.pop("texts", None)
                r.update(engine=engine, loader=loader, planned=b == planned, device=device)
                emit(out, "GENROW", r)
                rows.append(r)
        if a.profile and engine in ("eager", "static") and left() > a.min_left + reserve:
            try:
                emit(out, "PROFROW", {**profile(model, tok, items, a.profile, engine, cache_len, cfg),
                                      "loader": loader, "device": device})
            except Exception as err:  # noqa: BLE001
                emit(out, "PROFROW", {"engine": engine, "error": f"{type(err).__name__}: {str(err)[:300]}"})
    ok = [r for r in rows if "error" not in r]
    for r in ok:  # greedy answers against the eager path's, same prompts, batch and length (16 bits: near-ties differ)
        ref_texts = texts_by.get(("eager", r["batch"], r["new_tokens_each"]))
        if r["engine"] != "eager" and ref_texts:
            r["same_answers_as_eager"] = agreement(texts_by[(r["engine"], r["batch"], r["new_tokens_each"])], ref_texts)
            emit(out, "AGREEROW", {k: r[k] for k in ("engine", "batch", "new_tokens_each", "same_answers_as_eager")})
    for pr in project(ok, cfg, n, max(loads.values(), default=0.0)):
        emit(out, "PROJROW", {**pr, "device": device})
    print(f"\n{device}, {a.path} path, planned batch {planned}, cache {cache_len} positions")
    print(f"{'engine':<11} {'loader':<8} {'batch':>5} {'new tok':>7} {'tok/s':>9} {'x eager':>8} {'warm-up s':>9} "
          f"{'peak GiB':>8} {'same as eager':>13}")
    base = {(r["batch"], r["new_tokens_each"]): r["new_tokens_per_s"] for r in ok if r["engine"] == "eager"}
    for r in rows:
        if "error" in r:
            print(f"{r['engine']:<11} {r['loader']:<8} {r['batch']:>5} {r['new_tokens_each']:>7} {r['error'][:80]}")
            continue
        key = (r["batch"], r["new_tokens_each"])
        x = f"{r['new_tokens_per_s'] / base[key]:.2f}" if key in base else ""
        print(f"{r['engine']:<11} {r['loader']:<8} {r['batch']:>5} {r['new_tokens_each']:>7} "
              f"{r['new_tokens_per_s']:>9.1f} "
              f"{x:>8} {r['warmup_seconds']:>9.1f} {r['peak_reserved_gb'] or '':>8} "
              f"{r.get('same_answers_as_eager', ''):>13}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
