"""Estimated against measured peak training memory, through the project's own train stage (Unsloth on a GPU).

For each (max_seq_length, micro-batch) it prepares a run folder of rows exactly max_seq_length tokens long (the
estimate's worst case: full micro-batches of longest rows), trains 3 steps with medqlora.training.train.train, and prints
one JSON line: the estimate by part (medqlora.training.memory) and the measured peak (torch's max reserved and allocated).
The model is loaded once per call; its weights are part of both figures.

    python benchmarks/memory_estimate.py MODEL_DIR [SEQxMB ...] [--optimizer adamw_8bit] [--no-checkpointing]
e.g. python benchmarks/memory_estimate.py /tmp/m1b 512x1 512x4 2048x1 2048x4
(MODEL_DIR: a random-weight model with a real shape: ../shared/gpu/make-random-model.py or python -m medqlora.testing)
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
from pathlib import Path

from medqlora.config import RunConfig
from medqlora.core.rundir import RunDir
from medqlora.training import memory as MEM  # noqa: I001
from medqlora.training import train as T  # first: it imports Unsloth before transformers


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


def main(argv=None) -> int:
    import torch

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model")
    p.add_argument("configs", nargs="*", default=["512x1", "512x4", "2048x1", "2048x4"])
    p.add_argument("--optimizer", default="adamw_8bit")
    p.add_argument("--no-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=3)
    a = p.parse_args(argv)
    shape = MEM.model_shape(a.model)
    pairs = [tuple(int(x) for x in c.split("x")) for c in a.configs]
    base = {"run_name": "mem", "model": {"name_or_path": a.model, "max_seq_length": max(s for s, _ in pairs)},
            "data": {"source": "synthetic.jsonl"}, "lora": {"r": 16, "alpha": 16},
            "train": {"max_steps": a.steps, "optimizer": a.optimizer, "gradient_checkpointing": not a.no_checkpointing,
                      "gradient_accumulation": 1, "logging_steps": 1, "group_by_length": False}}
    loaded = T.load_for_training(RunConfig.model_validate(base))
    for seq, mb in pairs:
        cfg = RunConfig.model_validate({**base, "model": {**base["model"], "max_seq_length": seq},
                                        "train": {**base["train"], "micro_batch_size": mb}})
        with tempfile.TemporaryDirectory() as tmp:
            run = prepared_run(Path(tmp) / "run", seq, mb * a.steps, shape.vocab)
            gc.collect()
            if torch.cuda.is_available():  # (on a CPU the script runs as a smoke test; measured figures are 0)
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            result = T.train(cfg, run, loaded, print_fn=lambda *x: None)
            parts = MEM.estimate_training(shape, MEM.settings_from(cfg, loaded.backend), cfg.lora.r,
                                          cfg.lora.target_modules)
            row = {"model": Path(a.model).name, "hidden": shape.hidden, "layers": shape.layers, "seq": seq, "mb": mb,
                   "optimizer": a.optimizer, "checkpointing": not a.no_checkpointing,
                   "estimate_gb": round(MEM.total(parts), 3), "parts": {k: round(v, 3) for k, v in parts.items()},
                   "measured_reserved_gb": round(torch.cuda.max_memory_reserved() / MEM.GIB, 3),
                   "measured_allocated_gb": round(torch.cuda.max_memory_allocated() / MEM.GIB, 3),
                   "final_loss": result["final_loss"], "seconds": result["seconds"]}
            row["error"] = round(row["estimate_gb"] / max(row["measured_reserved_gb"], 1e-9) - 1, 3)
            print("MEMROW " + json.dumps(row), flush=True)
            del result
    return 0


if __name__ == "__main__":
    sys.exit(main())
