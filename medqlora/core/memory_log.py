"""memory.jsonl in the run folder: a snapshot of memory at every major step of every stage."""
from __future__ import annotations

import time
from pathlib import Path

from medqlora.core import jsonl_log
from medqlora.core.system import memory_snapshot


def record(run, stage: str, event: str, **extra) -> dict:
    """Append a memory snapshot (GPU allocated/reserved/peak/free, or RSS and free RAM) to run/memory.jsonl.
    A full disk raises jsonl_log.DiskFull (an OSError naming the folder) and leaves the file whole."""
    snap = {"time": round(time.time(), 2), "stage": stage, "event": event,
            **{k: round(v, 3) for k, v in memory_snapshot().items()}, **extra}
    jsonl_log.append(Path(run.path) / "memory.jsonl", snap)
    return snap


def read_records(run) -> list[dict]:
    """Every whole record; a torn line (a kill or a full disk mid-write) is skipped with a warning."""
    return jsonl_log.read(Path(run.path) / "memory.jsonl")


def peaks_by_stage(run) -> dict[str, float]:
    """The highest memory each stage reached: GPU peak reserved where there is a GPU, else process RSS, or the peak
    a record measured over its own step (peak_gb: a CPU pass's RSS is back down by the time it is recorded)."""
    out: dict[str, float] = {}
    for r in read_records(run):
        vals = [v for v in (r.get("gpu_peak_gb", r.get("rss_gb")), r.get("peak_gb")) if v is not None]
        if vals and "stage" in r:
            out[r["stage"]] = max(out.get(r["stage"], 0.0), *vals)
    return out


def stage_table(run, stage: str):
    import pandas as pd

    rows = [r for r in read_records(run) if r.get("stage") == stage and not str(r.get("event")).startswith("step ")]
    cols = [c for c in ("event", "gpu_allocated_gb", "gpu_reserved_gb", "gpu_peak_gb", "gpu_free_gb", "rss_gb",
                        "ram_used_gb", "peak_gb") if any(c in r for r in rows)]
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
