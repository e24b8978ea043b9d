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


def stage_table(run, stage: str):
    import pandas as pd

    rows = [r for r in read_records(run) if r["stage"] == stage and not r["event"].startswith("step ")]
    cols = [c for c in ("event", "gpu_allocated_gb", "gpu_reserved_gb", "gpu_peak_gb", "gpu_free_gb", "rss_gb",
                        "ram_used_gb") if any(c in r for r in rows)]
    return pd.DataFrame(rows)[cols].set_index("event") if rows else pd.DataFrame()


def plot_run(run, path: Path):
    import matplotlib.pyplot as plt

    recs = read_records(run)
    if not recs:
        return None
    t0 = recs[0]["time"]
    key = "gpu_reserved_gb" if "gpu_reserved_gb" in recs[0] else "rss_gb"
    fig, ax = plt.subplots(figsize=(8, 3.2))
    ax.plot([r["time"] - t0 for r in recs], [r.get(key, 0) for r in recs], marker=".", lw=1)
    stages = []
    for r in recs:
        if not stages or stages[-1][0] != r["stage"]:
            stages.append((r["stage"], r["time"] - t0))
    for name, t in stages:
        ax.axvline(t, color="grey", ls=":", lw=0.8)
        ax.text(t, ax.get_ylim()[1] * 0.95, name, fontsize=8, rotation=90, va="top")
    ax.set_xlabel("seconds since the run's first record (dotted: stage starts)")
    ax.set_ylabel("GPU reserved (GiB)" if key.startswith("gpu") else "process RSS (GiB)")
    ax.set_title("memory over the whole run")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return fig
