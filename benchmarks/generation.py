"""Generation speed of the evaluate stage, side by side in one call: new tokens/s one prompt at a time against
batched, for the fine-tuned model through the adapter (4-bit base + LoRA; Unsloth's inference mode on a GPU) and
through merged weights (the 4-bit base dequantized once, the adapter merged in: eval.merge), and the base pass of
eval.merge (the same dequantized model with the adapter switched off).

Every answer is forced to exactly --new-tokens tokens (min_new_tokens), so the figures count the same work.
It uses the stage's own generate() on a finished run's held-out prompts (repeated up to --prompts).

    python benchmarks/generation.py reports/<run_id> [--new-tokens 128] [--prompts 128] [--batches 1 32 64 128]
Prints one JSON line per measurement (GENROW {...}) and a table at the end. Each row also gives its warm-up pass
(one batch before the timed pass; the first row's warm-up carries the one-time cost: compilation, caches) apart
from the steady rate, and the model's load seconds.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import sys
import time

from medqlora.training import model as M  # noqa: I001
from medqlora.training.model import preload_unsloth

preload_unsloth()  # before transformers, as the notebooks do


def measure(model, tok, items, batch: int, new_tokens: int, template: str) -> dict:
    import torch

    from medqlora.evaluation.generate import generate

    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    warm = generate(model, tok, items[:min(len(items), batch)], new_tokens, new_tokens, batch, "warm-up",
                    print_fn=lambda *a: None, template=template,
                    sampling_kw={"do_sample": False, "min_new_tokens": new_tokens})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    warm_s, warm_n = time.time() - t0, sum(a["new_tokens"] for a in warm)
    t0 = time.time()
    out = generate(model, tok, items, new_tokens, new_tokens, batch, "timed", print_fn=lambda *a: None,
                   template=template, sampling_kw={"do_sample": False, "min_new_tokens": new_tokens})
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    s = time.time() - t0
    n = sum(a["new_tokens"] for a in out)
    peak = torch.cuda.max_memory_reserved() / 1024**3 if torch.cuda.is_available() else None
    # the warm-up pass (one batch, untimed in the steady rate) carries the one-time cost: its rate shown apart
    return {"batch": batch, "prompts": len(items), "new_tokens": n, "seconds": round(s, 2),
            "new_tokens_per_s": round(n / s, 1), "warmup_seconds": round(warm_s, 2),
            "warmup_new_tokens_per_s": round(warm_n / max(warm_s, 1e-9), 1), "peak_reserved_gb": None if peak is None else round(peak, 2)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompts", type=int, default=128)
    p.add_argument("--single-prompts", type=int, default=8, help="prompts timed one at a time")
    p.add_argument("--batches", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--eager", action="store_true", help="generate with torch.compile off (torch.compiler."
                   "set_stance('force_eager')): whether the first batch's one-time cost is compilation")
    p.add_argument("--paths", nargs="+", default=["adapter", "merged"],
                   help="adapter, merged, merged-base (the base pass of eval.merge: adapter disabled)")
    a = p.parse_args(argv)

    import torch
    from torch._dynamo.utils import counters

    if a.eager:
        torch.compiler.set_stance("force_eager")

    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir
    from medqlora.export import merge as MG

    run = RunDir(a.run_dir)
    cfg = load_config(run.config_path)
    items = [json.loads(line) for line in run.eval_items.read_text().splitlines() if line.strip()]
    items = [{**it, "kind": "freetext"} for it in (items * (a.prompts // len(items) + 1))[:a.prompts]]
    ref, _ = M.resolve_model(cfg.model)
    backend = M.resolve_backend(cfg.model)
    adapter = str(run.adapter_dir)  # the trained adapter (the export holds a copy)
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU"
    rows = []
    for path in a.paths:
        t0 = time.time()
        if path == "adapter":
            model, tok = M.load_with_adapter(ref, adapter, cfg.model, backend)
            label = "adapter, Unsloth inference mode" if backend == "unsloth" else "adapter (transformers + PEFT)"
        else:
            model, tok = MG.dequantized_with_adapter(ref, adapter, cfg)
            model = model.to("cuda") if torch.cuda.is_available() else model
            if path == "merged":
                model = model.merge_and_unload()
                label = "merged (dequantized + merge_and_unload, transformers generate)"
            else:  # the evaluate stage's base pass with eval.merge: the same model, adapter switched off
                label = "base pass of eval.merge (dequantized, adapter disabled)"
        load_s = round(time.time() - t0, 1)
        for batch in [1] + a.batches:
            sub = items[:a.single_prompts] if batch == 1 else items
            try:
                with model.disable_adapter() if path == "merged-base" else contextlib.nullcontext():
                    r = measure(model, tok, sub, batch, a.new_tokens, cfg.data.template)
            except Exception as e:  # noqa: BLE001  (one failing setting must not hide the others)
                r = {"batch": batch, "error": f"{type(e).__name__}: {str(e)[:200]}"}
            r.update(path=label + (", eager" if a.eager else ""), load_seconds=load_s, device=device,
                     compiled_graphs=counters["stats"]["unique_graphs"])  # so far in this process
            print("GENROW " + json.dumps(r), flush=True)
            rows.append(r)
        del model
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    print(f"\n{device}, {a.new_tokens} new tokens per answer")
    print(f"{'path':<66} {'batch':>5} {'new tok/s':>10} {'x one-at-a-time':>16} {'peak GiB':>9}")
    for label in dict.fromkeys(r["path"] for r in rows):
        mine = [r for r in rows if r["path"] == label and "error" not in r]
        one = next((r["new_tokens_per_s"] for r in mine if r["batch"] == 1), None)
        for r in [r for r in rows if r["path"] == label]:
            if "error" in r:
                print(f"{label:<66} {r['batch']:>5} {r['error']}")
                continue
            x = f"{r['new_tokens_per_s'] / one:.1f}x" if one else ""
            print(f"{label:<66} {r['batch']:>5} {r['new_tokens_per_s']:>10.1f} {x:>16} {r['peak_reserved_gb'] or '':>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
