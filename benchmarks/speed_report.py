"""The table and the loss plot of benchmarks/train_speed.py, from the setups' JSON files in its output folder."""
from __future__ import annotations

import json
from pathlib import Path

SETUPS = ["project", "project-as-written", "project-unpacked", "project-packed", "unsloth-default", "unsloth-packing",
          "unsloth-packing-mb8", "hf", "unsloth-fixed"]
# Dense bf16 (fp16 for the T4) tensor-core peaks, TFLOPS, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L4": 121.0, "T4": 65.0, "A10": 125.0}


def peak_tflops(card: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in card), None)


def report(out: Path) -> str:
    meta = json.loads((out / "meta.json").read_text())
    rows = {s: json.loads((out / f"{s}.json").read_text()) for s in SETUPS if (out / f"{s}.json").is_file()}
    n_params = meta["params"]
    card = next(iter(rows.values()))["card"] if rows else "?"
    peak = peak_tflops(card)
    lines = [f"{meta['shape']} shape, {meta['examples']} examples, {meta['useful_tokens']:,} useful tokens "
             f"(mean {meta['mean_tokens']:.0f}, p90 {meta['p90_tokens']}, max {meta['max_tokens']}), {card}, "
             f"{meta['date']}", "",
             "| setup | packed rows' attention | micro-batch x accumulation | optimizer steps | examples per step | "
             "useful tokens/s (loop) | steady tokens/s | first step s | x bare packing | x Unsloth defaults | x HF "
             "stack | x fixed loop | peak memory GiB | MFU | final loss |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rate_of = lambda r: r.get("steady_tokens_per_s") or r["useful_tokens_per_s"]  # noqa: E731
    ref = {k: rate_of(rows[k]) for k in ("unsloth-packing", "unsloth-default", "hf", "unsloth-fixed") if k in rows}
    for s, r in rows.items():
        rate = rate_of(r)
        ratio = lambda k: f"{rate / ref[k]:.2f}" if k in ref else "-"  # noqa: E731
        mem = r.get("peak_reserved_gib") or r.get("peak_memory_gib")
        mfu = f"{6 * n_params * rate / (peak * 1e12):.1%}" if peak else "-"
        steps = f"{r['steps']}" + (f" (of {round(r['steps'] / r['epoch'])})" if (r.get("epoch") or 1) < 0.999 else "")
        per_step = meta["examples"] * min(r.get("epoch") or 1.0, 1.0) / r["steps"]
        if s == "unsloth-fixed":
            per_step = r["useful_tokens"] / r["steps"] / 2048  # rows of random tokens, no examples
        first = r.get("first_step_seconds")
        lines.append(f"| {s} | {r.get('attention_label', '?')} | {r['micro_batch']} x {r['accumulation']} | {steps} | "
                     f"{per_step:.0f} | {r['useful_tokens_per_s']:,.0f} | "
                     + (f"{r['steady_tokens_per_s']:,.0f} | " if r.get("steady_tokens_per_s") else "- | "))
        lines[-1] += (f"{first:.1f} | " if first is not None else "- | ") + (
            f"{ratio('unsloth-packing')} | {ratio('unsloth-default')} | {ratio('hf')} | {ratio('unsloth-fixed')} | "
            f"{mem:.2f} | {mfu} | {r['losses'][-1][1]:.3f} |")
    p = rows.get("project")
    if p:
        lines += ["", f"project train stage: {p['stage_seconds']} s as a notebook, {p['seconds']:.1f} s of it in "
                  f"the training loop; memory plan: {'; '.join(p['memory_plan_steps']) or 'as written'}"]
        if p.get("stages_before_seconds"):
            lines.append("stages before it in the same runner.py: " + ", ".join(
                f"{k} {v} s" for k, v in p["stages_before_seconds"].items()) + f"; its kernel's imports done ahead: "
                f"{p.get('imports_done_ahead_s')} s; runner.py in all: {p['runner_seconds']} s")
        if p.get("stage_parts"):
            from speed_parts import outside_loop, outside_trainer_loop

            parts = {k: v for k, v in p["stage_parts"].items() if k != "logged steps"}
            lines.append("train stage by part (s): " + ", ".join(f"{k} {v}" for k, v in parts.items()))
            if "logged steps" in p["stage_parts"]:
                first, last = p["stage_parts"]["logged steps"]
                lines.append(f"logged steps {first} to {last} (the loop's part counts the steps after {first})")
            lines.append(f"outside the loop (stage total less the steps after the first): "
                         f"{outside_loop(p['stage_parts'])} s; less the trainer's whole loop (on_train_begin on): "
                         f"{outside_trainer_loop(p['stage_parts'])} s")
        if p.get("packing_check"):
            c = p["packing_check"]
            lines.append(f"packing check: {c['examples']} examples, max per-example loss difference "
                         f"{c['max_abs_diff']:.2e} (tolerance {c['tolerance']}), passed: {c['passed']}, "
                         f"{c.get('seconds', '?')} s")
    plot_losses(rows, out / "loss.png", meta)
    text = "\n".join(lines)
    (out / "table.md").write_text(text + "\n")
    return text


def plot_losses(rows: dict, path: Path, meta: dict) -> None:
    """Loss against useful tokens trained: packed and unpacked runs take different numbers of steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.6))
    for s, r in rows.items():
        if not r["losses"]:
            continue
        per_step = r["useful_tokens"] / r["steps"]  # tokens per optimizer step, on average
        ax.plot([st * per_step for st, _ in r["losses"]], [v for _, v in r["losses"]], lw=1.2 if "project" in s
                else 0.8, ls="-" if "project" in s else "--", label=f"{s} ({r['steps']} steps)")
    ax.set_xlabel("useful tokens trained")
    ax.set_ylabel("training loss")
    ax.set_title(f"{meta['shape']} shape, same data and seed")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
