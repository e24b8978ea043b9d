"""What the machine is: hardware, memory at any moment, library versions, and Colab installs."""
from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import subprocess
import sys
from pathlib import Path

GB = 1024**3
STACK = ["torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "unsloth",
         "unsloth_zoo", "papermill", "rouge_score"]
# Needed on every backend; unsloth only for the GPU path.
REQUIRED = ["torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "rouge_score"]


def clock(seconds: float) -> str:
    """m:ss, or h:mm:ss from an hour up: elapsed times and ETAs."""
    s = int(max(seconds, 0))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def human_size(n: float | None) -> str:
    """A file size a reader takes in at a glance: 512 B, 3.4 KiB, 12.5 MiB, 1.20 GiB."""
    if n is None or n != n:
        return ""
    for unit, scale in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= scale:
            v = n / scale
            return f"{v:.2f} {unit}" if v < 10 else f"{v:.1f} {unit}"
    return f"{int(n)} B"


def human_value(key: str, v) -> str:
    """A table cell: whole numbers without '.0' and with thousands separators, sizes (keys naming bytes) in units,
    other floats to four significant digits."""
    if v is None:
        return ""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    if "bytes" in key.lower():
        return human_size(v)
    if isinstance(v, int) or float(v).is_integer():
        return f"{int(v):,}"
    return f"{v:.4g}"


def in_colab() -> bool:
    return "google.colab" in sys.modules or "COLAB_RELEASE_TAG" in os.environ or "COLAB_GPU" in os.environ


def versions(names=STACK) -> dict[str, str | None]:
    out = {}
    for n in names:
        try:
            out[n] = importlib.metadata.version(n.replace("_", "-"))
        except importlib.metadata.PackageNotFoundError:
            try:
                out[n] = importlib.metadata.version(n)
            except importlib.metadata.PackageNotFoundError:
                out[n] = None
    return out


def gpu_requirements() -> list[str]:
    """The pinned GPU stack: the `gpu` extra of medqlora's pyproject.toml (the checkout's, else the installed
    package's metadata), so that there is one list."""
    import re

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    if pyproject.is_file() and (Path(__file__).resolve().parents[2] / "runner.py").is_file():
        import tomllib

        return list(tomllib.loads(pyproject.read_text())["project"]["optional-dependencies"]["gpu"])
    reqs = importlib.metadata.requires("medqlora") or []
    return [r.split(";")[0].strip() for r in reqs if re.search(r"extra\s*==\s*['\"]gpu['\"]", r)]


def colab_install_commands(missing: list[str]) -> list[list[str]]:
    """The pip command that brings the GPU stack to a Colab runtime: medqlora's `gpu` extra, pinned (Unsloth,
    unsloth_zoo and xformers at the versions tested with trl 1.14.2; Colab's own torch is kept when it is in
    Unsloth's range, torch>=2.10,<2.15)."""
    if not missing:
        return []
    return [[sys.executable, "-m", "pip", "install", "-q", *gpu_requirements()]]


def ensure_installed(want_unsloth: bool = True) -> dict:
    """On Colab install what is missing; elsewhere only check. Returns what was found and done."""
    needed = REQUIRED + (["unsloth"] if want_unsloth else [])
    missing = [n for n in needed if importlib.util.find_spec(n) is None]
    done = []
    if missing and in_colab():
        for cmd in colab_install_commands(missing):
            subprocess.run(cmd, check=True)
            done.append(" ".join(cmd[3:]))
        importlib.invalidate_caches()
        missing = [n for n in needed if importlib.util.find_spec(n) is None]
    return {"missing": missing, "installed": done, "colab": in_colab()}


def memory_snapshot() -> dict:
    """Process RSS, system RAM, and GPU memory (allocated, reserved, peak, total) in GiB."""
    import psutil

    vm = psutil.virtual_memory()
    snap = {"rss_gb": psutil.Process().memory_info().rss / GB, "ram_used_gb": (vm.total - vm.available) / GB,
            "ram_total_gb": vm.total / GB}
    try:
        import torch

        if torch.cuda.is_available():
            free, total = torch.cuda.mem_get_info()
            snap.update(gpu_allocated_gb=torch.cuda.memory_allocated() / GB,
                        gpu_reserved_gb=torch.cuda.memory_reserved() / GB,
                        gpu_peak_gb=torch.cuda.max_memory_reserved() / GB,
                        gpu_free_gb=free / GB, gpu_total_gb=total / GB)
    except ImportError:
        pass
    return snap


def free_memory(reset_peak: bool = False) -> None:
    """Drop unreferenced objects and return cached GPU memory (and, for a fresh measurement, reset the peak)."""
    import gc

    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        if reset_peak:
            torch.cuda.reset_peak_memory_stats()


def peak_memory_gb() -> float:
    """Peak GPU memory reserved where there is a GPU, else the process's peak RSS."""
    import torch

    if torch.cuda.is_available():
        return torch.cuda.max_memory_reserved() / GB
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB  # Linux reports KiB


def memory_line(snap: dict | None = None) -> str:
    s = snap or memory_snapshot()
    line = f"RSS {s['rss_gb']:.2f} GiB | RAM {s['ram_used_gb']:.1f}/{s['ram_total_gb']:.1f} GiB"
    if "gpu_total_gb" in s:
        line += (f" | GPU alloc {s['gpu_allocated_gb']:.2f}, reserved {s['gpu_reserved_gb']:.2f}, "
                 f"peak {s['gpu_peak_gb']:.2f} of {s['gpu_total_gb']:.1f} GiB")
    return line


def hardware() -> dict:
    """GPU type, memory, CUDA, bf16 and 4-bit support; CPU cores and RAM either way."""
    import psutil
    import torch

    info = {"python": platform.python_version(), "platform": platform.platform(),
            "cpu_cores": os.cpu_count(), "ram_total_gb": round(psutil.virtual_memory().total / GB, 1),
            "ram_available_gb": round(psutil.virtual_memory().available / GB, 1), "gpu": None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        free, total = torch.cuda.mem_get_info()
        info["gpu"] = {"name": props.name, "count": torch.cuda.device_count(),
                       "total_gb": round(total / GB, 1), "free_gb": round(free / GB, 1),
                       "capability": f"{props.major}.{props.minor}", "cuda": torch.version.cuda,
                       "bf16": torch.cuda.is_bf16_supported()}
    info["four_bit"] = check_4bit()
    return info


def check_4bit() -> str:
    """Quantize and matmul one small layer with bitsandbytes NF4 on the device that will train."""
    try:
        import bitsandbytes as bnb
        import torch

        dev = "cuda" if torch.cuda.is_available() else "cpu"
        dtype = torch.float16 if dev == "cuda" else torch.float32
        layer = bnb.nn.Linear4bit(64, 64, compute_dtype=dtype, quant_type="nf4").to(dev)
        out = layer(torch.randn(2, 64, device=dev, dtype=dtype))
        if not torch.isfinite(out).all():
            return f"FAILED on {dev}: non-finite output"
        return f"ok on {dev} (bitsandbytes {bnb.__version__}, nf4)"
    except Exception as e:  # reported, not raised: the setup report should show what is wrong
        return f"FAILED: {type(e).__name__}: {e}"


def versions_table():
    import pandas as pd

    v = versions()
    need = {n: ("required" if n in REQUIRED else "GPU path" if n.startswith("unsloth") else "optional") for n in v}
    return pd.DataFrame({"version": {k: x or "MISSING" for k, x in v.items()}, "needed": need})
