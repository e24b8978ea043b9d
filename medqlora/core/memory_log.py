"""memory.jsonl in the run folder: a snapshot of memory at every major step of every stage."""
from __future__ import annotations

import json
import time
from pathlib import Path

from medqlora.core.system import memory_snapshot


def record(run, stage: str, event: str, **extra) -> dict:
    """Append a memory snapshot (GPU allocated/reserved/peak/free, or RSS and free RAM) to run/memory.jsonl."""
    snap = {"time": round(time.time(), 2), "stage": stage, "event": event,
            **{k: round(v, 3) for k, v in memory_snapshot().items()}, **extra}
    with open(Path(run.path) / "memory.jsonl", "a") as f:
        f.write(json.dumps(snap) + "\n")
    return snap


def read_records(run) -> list[dict]:
    p = Path(run.path) / "memory.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()] if p.is_file() else []


def peaks_by_stage(run) -> dict[str, float]:
    """The highest memory each stage reached: GPU peak reserved where there is a GPU, else process RSS."""
    out: dict[str, float] = {}
    for r in read_records(run):
        v = r.get("gpu_peak_gb", r.get("rss_gb"))
        if v is not None:
            out[r["stage"]] = max(out.get(r["stage"], 0.0), v)
    return out
