"""Parts of benchmarks/train_speed.py: the fixed-shape bare loop (the ceiling the train stage is measured against)
and where a stage notebook's seconds go (kernel start, imports, load, first step, loop, saving)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from bare_loops import TARGETS


def fixed_loop(model_dir: str, steps: int = 20, warmup: int = 3, batch: int = 4, seq: int = 2048) -> dict:
    """Bare Unsloth, r=16 on all 7 projections, its gradient checkpointing, a plain loop of forward + backward +
    AdamW on batch x seq random tokens (no data, no padding, no trainer): tokens/s over `steps` after `warmup`."""
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("unsloth-fixed: the fixed-shape loop needs Unsloth on a GPU (none here)")
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(model_dir, max_seq_length=seq, load_in_4bit=True, dtype=None)
    model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
                                             target_modules=TARGETS, use_gradient_checkpointing="unsloth",
                                             random_state=3407)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    vocab = model.config.vocab_size
    ids = torch.randint(10, vocab - 10, (batch, seq), device="cuda")
    first = None
    for i in range(warmup + steps):
        if i == warmup:
            torch.cuda.synchronize()
            t0 = time.time()
        t_step = time.time()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i == 0:
            torch.cuda.synchronize()
            first = time.time() - t_step
    torch.cuda.synchronize()
    s = time.time() - t0
    return {"seconds": s, "steps": steps, "losses": [(steps, float(loss))], "epoch": 1.0, "first_step_seconds": first,
            "fixed_tokens": steps * batch * seq, "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            "micro_batch": batch, "accumulation": 1}


def stage_parts(run_dir: Path, stage: str = "train") -> dict:
    """Seconds of one stage by part, from the executed notebook's cell timings (papermill) and the run's
    memory.jsonl events: kernel start (the stage's seconds not spent in any cell), the imports cell, the memory
    plan, loading (model + LoRA), then inside the training cell: trainer setup + first step, the loop, saving."""
    from medqlora.core.rundir import NOTEBOOKS

    nb = json.loads((Path(run_dir) / NOTEBOOKS[stage]).read_text())
    names = {"notebook.start": "imports + config", "plan_training": "memory plan", "load_for_training": "load",
             "train.train(": "train cell", "generate": "generation"}
    parts: dict[str, float] = {}
    for cell in nb["cells"]:
        d = (cell.get("metadata", {}).get("papermill") or {}).get("duration")
        if d is None or cell["cell_type"] != "code":
            continue
        src = "".join(cell["source"])
        key = next((v for k, v in names.items() if k in src), "other cells")
        parts[key] = round(parts.get(key, 0.0) + d, 2)
    summary = json.loads((Path(run_dir) / "summary.json").read_text())
    total = next((s["seconds"] for s in summary["stages"] if s["name"] == stage), None)
    if total is not None:
        parts["kernel start + papermill"] = round(total - sum(parts.values()), 2)
        parts["stage total"] = total
    ev = [json.loads(x) for x in (Path(run_dir) / "memory.jsonl").read_text().splitlines() if x.strip()]
    t = {e["event"]: e["time"] for e in ev if e.get("stage") == stage}
    steps = sorted((int(k.split()[1]), v) for k, v in t.items() if k.startswith("step "))
    if "before training" in t and steps:
        if "packing checked" in t:  # recorded since 2026-12-02
            parts["trainer setup + packing check"] = round(t["packing checked"] - t["before training"], 2)
            began = t.get("training began")  # the trainer's on_train_begin, recorded since 2026-12-02 (session 2)
            if began is not None and began >= t["packing checked"]:
                parts["trainer start (train() to on_train_begin)"] = round(began - t["packing checked"], 2)
                parts["first step (on_train_begin to its log)"] = round(steps[0][1] - began, 2)
            parts["first logged step"] = round(steps[0][1] - t["packing checked"], 2)
        elif t.get("training began", 0) >= t["before training"]:  # no packing (transformers on a CPU)
            parts["trainer setup + start (to on_train_begin)"] = round(t["training began"] - t["before training"], 2)
            parts["first step (on_train_begin to its log)"] = round(steps[0][1] - t["training began"], 2)
        else:
            parts["trainer setup + packing check + first logged step"] = round(steps[0][1] - t["before training"], 2)
        parts["loop after the first logged step"] = round(steps[-1][1] - steps[0][1], 2)
        if "adapter saved" in t:
            parts["saving"] = round(t["adapter saved"] - steps[-1][1], 2)
        parts["logged steps"] = [steps[0][0], steps[-1][0]]
    return parts


def outside_trainer_loop(parts: dict) -> float | None:
    """The same with the loop counted as the trainer counts it (on_train_begin to the last step: the first step's
    compilation inside it), as the issue's 102.4 s was."""
    first = parts.get("first step (on_train_begin to its log)")
    loop = parts.get("loop after the first logged step")
    if first is None or loop is None or "stage total" not in parts:
        return None
    return round(parts["stage total"] - loop - first, 2)


def outside_loop(parts: dict) -> float | None:
    """The stage's seconds outside its training loop (the loop: from the end of the first logged step to the last,
    so compilation in the first step counts as outside, as it does for every run of a batch)."""
    loop = parts.get("loop after the first logged step")
    return round(parts["stage total"] - loop, 2) if loop is not None and "stage total" in parts else None


if __name__ == "__main__":  # python benchmarks/speed_parts.py RUN_DIR: one run's train stage by part, as JSON
    import sys

    p = stage_parts(Path(sys.argv[1]))
    print(json.dumps({**p, "outside the loop": outside_loop(p), "outside the trainer's loop": outside_trainer_loop(p)}))
