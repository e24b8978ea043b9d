"""Estimated against measured peak training memory, through the project's own train stage (Unsloth on a GPU).

For each (max_seq_length, micro-batch) it prepares a run folder of rows exactly max_seq_length tokens long (the
estimate's worst case: full micro-batches of longest rows), trains 3 steps with medqlora.training.train.train, and
prints one JSON line: the estimate by part (medqlora.training.memory) and the measured peak (torch's max reserved
and allocated). The model is loaded once per LoRA rank; its weights are part of both figures.

    python benchmarks/memory_estimate.py MODEL_DIR [SEQxMB ...] [--r 16,64] [--packing auto|true|false]
        [--profile SEQxMB ...] [--jsonl rows.jsonl] [--tag no-xformers]
e.g. python benchmarks/memory_estimate.py /tmp/m1b 512x1 512x4 2048x1 2048x4 --r 16,64
(MODEL_DIR: a random-weight model with a real shape: python -m medqlora.testing, with --vocab 128256 for Llama 3's
vocabulary). --profile records the allocator's history for those configs and adds, to their row, the live
allocations at the peak grouped by the Python line that made them (what the estimate has to account for).
Each row names the attention path Unsloth takes (flash-attn, xformers or SDPA) and the fused loss's chunking.
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from medqlora.config import RunConfig
from medqlora.core.rundir import RunDir
from medqlora.training import memory as MEM  # noqa: I001
from medqlora.training import train as T  # first: it imports Unsloth before transformers
from medqlora.training.attention import attention_path

SKIP = ("/torch/", "/contextlib.py", "/functools.py", "<frozen", "/unsloth_zoo/compiler", "unsloth_compiled_cache")


def prepared_run(folder: Path, seq: int, rows: int, vocab: int) -> RunDir:
    import datasets
    import torch

    g = torch.Generator().manual_seed(seq)
    ids = torch.randint(10, vocab - 10, (rows, seq), generator=g).tolist()
    masked = seq // 10  # a prompt share, as real rows have
    ds = datasets.Dataset.from_dict({"input_ids": ids, "labels": [[-100] * masked + r[masked:] for r in ids],
                                     "n_tokens": [seq] * rows})
    run = RunDir(folder)
    ds.save_to_disk(str(run.train_data))
    run.save_result("preprocess", {"fingerprint": f"synthetic-{seq}-{rows}", "max_seq_length": seq})
    return run


def ce_chunks(tokens: int, vocab: int, hidden: int) -> dict:
    """The fused cross-entropy's chunk count for this micro-batch (Unsloth sizes it from the card's free memory)."""
    try:
        from unsloth_zoo.fused_losses import cross_entropy_loss as CE
        from unsloth_zoo.tiled_mlp import _default_target_gb

        n = CE.get_chunk_size(1, tokens, vocab, fixed_gb=tokens * hidden * 2 / MEM.GIB)
        return {"ce_chunks": n, "ce_target_gb": round(min(_default_target_gb(None), CE._CE_TARGET_GB_CAP), 2)}
    except Exception as e:  # noqa: BLE001
        return {"ce_chunks": None, "ce_error": str(e)[:100]}


def peak_breakdown(snapshot: dict, top: int = 14) -> dict:
    """Replays the allocator's trace: the allocations live at the highest point, summed by the first frame outside
    torch (file:line function), biggest first. Figures are GiB above what was allocated when recording began."""
    live: dict[int, tuple[int, str]] = {}
    cur = peak = 0
    at_peak: dict[int, tuple[int, str]] = {}
    for trace in snapshot.get("device_traces", []):
        for ev in trace:
            a, addr, size = ev.get("action"), ev.get("addr"), ev.get("size", 0)
            if a == "alloc":
                every = ev.get("frames", [])
                frames = [f for f in every if not any(s in f.get("filename", "") for s in SKIP)]
                f = frames[0] if frames else (every or [{}])[0]
                names = {x.get("name", "") for x in every}
                phase = ("packing check" if "check" in names and any(x.get("filename", "").endswith("packing.py")
                                                                     for x in every)
                         else "backward" if any("backward" in n for n in names) else "forward/other")
                key = f"{phase} | {Path(f.get('filename', '?')).name}:{f.get('line', '?')} {f.get('name', '?')}"
                live[addr] = (size, key)
                cur += size
                if cur > peak:
                    peak, at_peak = cur, dict(live)
            elif a in ("free_requested", "free_completed") and addr in live:
                cur -= live.pop(addr)[0]
    by = defaultdict(int)
    for size, key in at_peak.values():
        by[key] += size
    rows = sorted(by.items(), key=lambda kv: -kv[1])[:top]
    return {"peak_above_start_gb": round(peak / MEM.GIB, 3), "by_line_gb": {k: round(v / MEM.GIB, 3) for k, v in rows}}


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("configs", nargs="*", default=["512x1", "512x4", "2048x1", "2048x4"])
    p.add_argument("--optimizer", default="adamw_8bit")
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--r", default="16", help="LoRA ranks, comma-separated: the model is loaded once per rank")
    p.add_argument("--packing", default="auto", choices=["auto", "true", "false"])
    p.add_argument("--profile", nargs="*", default=[], help="SEQxMB configs to record the allocator's history for")
    p.add_argument("--jsonl", default=None, help="also append each row to this file")
    p.add_argument("--tag", default="", help="a label kept in each row (e.g. no-xformers)")
    p.add_argument("--no-packing-check", action="store_true", help="skip the train stage's packing check (to see "
                   "what it adds to the peak)")
    p.add_argument("--no-cudnn", action="store_true", help="SDPA without its cuDNN backend")
    a = p.parse_args(argv)
    if a.no_cudnn:
        torch.backends.cuda.enable_cudnn_sdp(False)
    if a.no_packing_check:
        from medqlora.training import packing as PK

        T.P.check_trainer = lambda trainer, rows=None: PK.PackingCheck(0, 0, 0.0, 1.0, True, 0, [], [])
    shape = MEM.model_shape(a.model)
    pairs = [tuple(int(x) for x in c.split("x")) for c in a.configs]
    profile = {tuple(int(x) for x in c.split("x")) for c in a.profile}
    packing = {"auto": "auto", "true": True, "false": False}[a.packing]
    gpu = torch.cuda.is_available()  # on a CPU the script runs as a smoke test; measured figures are 0
    for r in [int(x) for x in a.r.split(",")]:
        base = {"run_name": "mem", "model": {"name_or_path": a.model, "max_seq_length": max(s for s, _ in pairs)},
                "data": {"source": "synthetic.jsonl"}, "lora": {"r": r, "alpha": r},
                "train": {"max_steps": a.steps, "optimizer": a.optimizer, "packing": packing,
                          "gradient_checkpointing": not a.no_checkpointing, "gradient_accumulation": 1,
                          "logging_steps": 1, "group_by_length": False}}
        loaded = T.load_for_training(RunConfig.model_validate(base))
        weights_gb = torch.cuda.memory_allocated() / MEM.GIB if gpu else 0.0
        for seq, mb in pairs:
            cfg = RunConfig.model_validate({**base, "model": {**base["model"], "max_seq_length": seq},
                                            "train": {**base["train"], "micro_batch_size": mb}})
            with tempfile.TemporaryDirectory() as tmp:
                run = prepared_run(Path(tmp) / "run", seq, mb * a.steps, shape.vocab)
                gc.collect()
                if gpu:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                start_gb = torch.cuda.memory_allocated() / MEM.GIB if gpu else 0.0
                # Unsloth's SFTTrainer takes max_length == 1024 (TRL's default) for "not given" and trains at the length
                # the model was loaded with instead: loaded once at the longest length, rows of 1,024 were packed to
                # 8,192 (3x the tokens a micro-batch; how issue 17.9's -36% was measured). The stage loads at its own.
                for m in (loaded.model, getattr(loaded.model, "get_base_model", lambda: None)()):
                    if m is not None and hasattr(m, "max_seq_length"):
                        m.max_seq_length = seq
                recording = gpu and (seq, mb) in profile
                if recording:
                    torch.cuda.memory._record_memory_history(max_entries=400000, stacks="python")
                result = T.train(cfg, run, loaded, print_fn=lambda *x: None)
                breakdown = None
                if recording:
                    breakdown = peak_breakdown(torch.cuda.memory._snapshot())
                    torch.cuda.memory._record_memory_history(enabled=None)
                settings = MEM.settings_from(cfg, loaded.backend)
                parts = MEM.estimate_training(shape, settings, cfg.lora.r, cfg.lora.target_modules)
                row = {"model": Path(a.model).name, "hidden": shape.hidden, "layers": shape.layers,
                       "vocab": shape.vocab, "tied": shape.tied, "r": r, "seq": seq, "mb": mb,
                       "tag": a.tag + (" no-packing-check" if a.no_packing_check else "") + (" no-cudnn" if a.no_cudnn
                                                                                           else ""),
                       "packing": result["packing"], "optimizer": a.optimizer, "checkpointing": not a.no_checkpointing,
                       "attention": attention_path(import_unsloth=True), **ce_chunks(seq * mb, shape.vocab, shape.hidden),
                       "estimate_gb": round(MEM.total(parts), 3), "parts": {k: round(v, 3) for k, v in parts.items()},
                       "weights_allocated_gb": round(weights_gb, 3), "start_allocated_gb": round(start_gb, 3),
                       "measured_reserved_gb": round(torch.cuda.max_memory_reserved() / MEM.GIB, 3) if gpu else 0,
                       "measured_allocated_gb": round(torch.cuda.max_memory_allocated() / MEM.GIB, 3) if gpu else 0,
                       "final_loss": result["final_loss"], "seconds": result["seconds"], "breakdown": breakdown}
                row["error"] = round(row["estimate_gb"] / max(row["measured_reserved_gb"], 1e-9) - 1, 3)
                print("MEMROW " + json.dumps(row), flush=True)
                if a.jsonl:
                    with open(a.jsonl, "a") as f:
                        f.write(json.dumps(row) + "\n")
                del result
        del loaded
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
