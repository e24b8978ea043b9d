"""Several runs side by side (a batch, or any run folders): one row per run with its base model, data, effective
settings, training cost, and every eval set's metrics base against fine-tuned with 95% intervals.

A change counts as a win (or a loss) only when its paired-bootstrap interval excludes zero; the best run per
metric is marked among the runs whose change is a win. Runs that scored an eval set on different items, or with other
prompts, scoring or generation settings (each run's evaluation manifest), are said to be so and get no best run there.
    python runner.py compare reports/<run_a> reports/<run_b> ...
"""
from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime
from pathlib import Path

from medqlora.core.rundir import default_reports, kernel_cwd, notebook_dir
from medqlora.evaluation.manifest import differences
from medqlora.run.stages import EXIT_INVALID, EXIT_OK, kernel_stderr_to, notebook_kernel

# In this order; any other paired metric the evaluate stage records (a key of a set's `changes`) follows them.
METRICS = ("rougeL", "rouge1", "rouge2", "rougeLsum", "accuracy", "loglik_acc", "loglik_acc_norm", "parse_rate",
           "looping", "hit_token_limit")
LOWER_IS_BETTER = {"looping", "hit_token_limit"}
# What batch.md says per run and eval set: the headline metrics of free text and of closed-form items both ways.
BATCH_METRICS = ("rougeL", "accuracy", "loglik_acc", "loglik_acc_norm")


def _read(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def load_run(folder: str | Path) -> dict:
    """What a comparison needs from one run folder; a run that failed or never evaluated still gets its row."""
    folder = Path(folder)
    s = _read(folder / "summary.json") or {}
    train = _read(folder / "results" / "train.json") or {}
    ev = _read(folder / "results" / "evaluate.json") or {}
    prep = _read(folder / "results" / "preprocess.json") or {}
    cfg = {}
    if (folder / "config.yaml").is_file():
        import yaml

        cfg = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    failed = next((x for x in s.get("stages", []) if x.get("status") != "ok"), None)
    return {"run": s.get("run_id") or folder.name, "path": str(folder.resolve()), "status": s.get("status", "missing"),
            "rerun_of": Path(s["rerun_of"]).name if s.get("rerun_of") else None,
            "failed_stage": failed and f"{failed['name']}: {failed.get('error')}",
            "model": s.get("model") or (cfg.get("model") or {}).get("name_or_path"),
            "data": (cfg.get("data") or {}).get("source"), "train_examples": (prep.get("kept") or {}).get("train"),
            "settings": train.get("effective_settings") or {}, "lora_r": (cfg.get("lora") or {}).get("r"),
            "train_seconds": train.get("seconds"),
            "tokens_per_s": round(prep["train_tokens"] * train["epochs"] / train["seconds"])  # tokens trained / s
            if prep.get("train_tokens") and train.get("epochs") and train.get("seconds") else None,
            "peak_gb": max(peaks.values()) if (peaks := s.get("memory_peaks_gb")) else train.get("peak_memory_gb"),
            "final_loss": train.get("loss_end", train.get("final_loss")), "val_loss": train.get("val_last"),
            # each lm-eval task group's size-weighted average is compared like a set
            "sets": {**ev.get("sets", {}), **{f"{g} (size-weighted)": v for g, v in (ev.get("groups") or {}).items()}},
            "manifest": ev.get("manifest"),
            "notebooks": sorted(str(p) for p in folder.glob("0*.ipynb")),
            "report": str(folder / "report.html") if (folder / "report.html").is_file() else None,
            "tensorboard": str(folder / "tensorboard") if (folder / "tensorboard").is_dir() else None}


def unique_folders(folders) -> tuple[list[str], list[str]]:
    """The folders once each (by resolved path), and a warning for each one given more than once."""
    seen, out, warnings = set(), [], []
    for f in folders:
        key = str(Path(f).resolve())
        if key in seen:
            warnings.append(f"warning: {f} was given more than once; it is compared once (a run against itself "
                            "shows no difference and no best run)")
            continue
        seen.add(key)
        out.append(f)
    return out, warnings


def load_runs(folders, print_fn=print) -> list[dict]:
    """One record per distinct run folder, labelled by run id (made unique where two runs share one)."""
    folders, warnings = unique_folders(folders)
    for w in warnings:
        print_fn(w)
    runs = [load_run(f) for f in folders]
    labels = [r["run"] for r in runs]
    for r in runs:
        if labels.count(r["run"]) > 1:  # two folders with one run id (copies): tell them apart by their parent
            r["run"] = f"{r['run']} ({Path(r['path']).parent.name})"
    for lines in not_comparable(runs).values():
        for line in lines:
            print_fn(f"warning: {line}")
    return runs


def not_comparable(runs: list[dict]) -> dict[str, list[str]]:
    """Per eval set, why the runs' numbers for it are not comparable as they stand (their manifests differ, or one
    has none); a task group's average is not where any of its tasks is not."""
    notes = differences([(r["run"], r.get("manifest"), [n for n, st in r["sets"].items() if "tasks" not in st])
                         for r in runs])
    for name in dict.fromkeys(n for r in runs for n, st in r["sets"].items() if "tasks" in st):
        members = {m for r in runs if name in r["sets"] for m in r["sets"][name].get("sets", [])}
        if members & set(notes):
            notes[name] = [f"{name}: its tasks {', '.join(sorted(members & set(notes)))} are not comparable (above)"]
    return notes


def runs_table(runs: list[dict]):
    """One row per run: what it was and what it cost."""
    import pandas as pd

    rows = []
    for r in runs:
        st = r["settings"]
        rows.append({"run": r["run"], "status": r["status"] + (f" ({r['failed_stage']})" if r["failed_stage"] else ""),
                     "rerun of": r["rerun_of"] or "",
                     "base model": r["model"], "data": r["data"], "train examples": r["train_examples"],
                     "LoRA r": r["lora_r"],
                     "micro-batch x accumulation": f"{st.get('micro_batch_size')} x {st.get('gradient_accumulation')}"
                     if st else "", "max_seq_length": st.get("max_seq_length"),
                     "train s": r["train_seconds"], "tokens/s": r["tokens_per_s"], "peak GiB": r["peak_gb"],
                     "final loss": r["final_loss"], "val loss": r.get("val_loss")})
    return pd.DataFrame(rows)


def metric_rows(runs: list[dict]) -> list[dict]:
    """Every (run, eval set, metric): base, fine-tuned, the change with its interval, and a verdict."""
    rows, notes = [], not_comparable(runs)
    for r in runs:
        for name, st in r["sets"].items():
            m, ch = st["metrics"], st.get("changes") or {}
            for k in [*METRICS, *sorted(k for k in ch if k not in METRICS)]:
                b, f = m["base"].get(k), m["finetuned"].get(k)
                if b is None or f is None or (k == "accuracy" and not m["base"].get("n_choice")) or (
                        k.startswith("rouge") and not m["base"].get("n_freetext")):
                    continue
                c = (ch.get(k) or {}).get("change") or {}
                lo, hi = (c.get("ci95") or [None, None])
                if lo is None:
                    verdict = "no interval"
                elif lo > 0 or hi < 0:
                    better = (hi < 0) if k in LOWER_IS_BETTER else (lo > 0)
                    verdict = "better" if better else "worse"
                else:
                    verdict = "no clear difference"
                rows.append({"run": r["run"], "eval set": name, "metric": k, "items": c.get("n") or st.get("n_items"),
                             "base": b,
                             "fine-tuned": f, "change": f - b, "ci95": (lo, hi), "verdict": verdict,
                             "comparable": name not in notes})
    # The best run per (set, metric): among the real improvements, the fine-tuned value that beats every other
    # one. With one run, or a tie (identical runs), there is no best run and no star.
    by_key: dict[tuple, list[dict]] = {}
    for row in rows:
        by_key.setdefault((row["eval set"], row["metric"]), []).append(row)
    for key, group in by_key.items():
        sign = -1 if key[1] in LOWER_IS_BETTER else 1
        better = [r for r in group if r["verdict"] == "better"]
        comparable = all(r["comparable"] for r in group)  # a best run only among runs that scored alike
        top = max(better, key=lambda r: sign * r["fine-tuned"]) if better and len(group) > 1 and comparable else None
        if top is not None and any(sign * r["fine-tuned"] >= sign * top["fine-tuned"] for r in better if r is not top):
            top = None  # a tie
        for row in group:
            row["best"] = row is top
    return rows


def metrics_table(runs: list[dict]):
    """Runs x metrics per eval set, 'base -> fine-tuned (change [interval])', the best real improvement in bold."""
    import pandas as pd

    rows = metric_rows(runs)
    if not rows:
        return pd.DataFrame({"metrics": ["no run has evaluation results"]})

    def cell(r):
        lo, hi = r["ci95"]
        ci = f" [{lo:+.3f}, {hi:+.3f}]" if lo is not None else ""
        mark = " ★ best" if r["best"] else "" if r["comparable"] else " ⚠ not comparable"
        return f"{r['base']:.3f} → {r['fine-tuned']:.3f} ({r['change']:+.3f}{ci}) {r['verdict']}{mark}"

    df = pd.DataFrame([{"eval set": r["eval set"], "metric": r["metric"], "run": r["run"], "cell": cell(r)}
                       for r in rows])
    table = df.pivot_table(index=["eval set", "metric"], columns="run", values="cell", aggfunc="first").fillna("")
    notes = [line for lines in not_comparable(runs).values() for line in lines]
    styled = table.style.set_caption("⚠ Not comparable as they stand: " + " ".join(notes)) if notes else table.style
    return styled.set_properties(**{"text-align": "left", "white-space": "pre-wrap"}).map(
        lambda v: "font-weight: bold" if "★" in str(v) else "")


def links_table(runs: list[dict], from_dir: str | Path | None = None):
    """Each run's report.html, notebooks and training logs, as links relative to the comparison's folder (so
    they work in its HTML export and when the folders move together)."""
    import os

    import pandas as pd

    def link(path: str | None, text: str | None = None) -> str:
        if not path:
            return ""
        href = os.path.relpath(path, from_dir) if from_dir else path
        return f'<a href="{href}">{text or Path(path).name}</a>'

    return pd.DataFrame([{"run": r["run"], "report": link(r["report"]) or "(none yet)",
                          "notebooks": " · ".join(link(n) for n in r["notebooks"]),
                          "tensorboard logs": link(r["tensorboard"], "tensorboard/")}
                         for r in runs]).style.hide(axis="index").set_properties(**{"text-align": "left"})


def plot(runs: list[dict], path: Path, metric: str = "rougeL"):
    """The change in one metric per run and eval set, with its 95% interval (zero marked)."""
    import matplotlib.pyplot as plt

    rows = [r for r in metric_rows(runs) if r["metric"] == metric and r["ci95"][0] is not None]
    fig, ax = plt.subplots(figsize=(8, 0.5 + 0.45 * max(len(rows), 1)))
    for i, r in enumerate(rows):
        lo, hi = r["ci95"]
        ax.errorbar(r["change"], i, xerr=[[r["change"] - lo], [hi - r["change"]]], fmt="o", capsize=4,
                    color={"better": "tab:green", "worse": "tab:red"}.get(r["verdict"], "tab:gray"))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_yticks(range(len(rows)), [f"{r['run']} / {r['eval set']}" for r in rows])
    ax.set_xlabel(f"{metric}: fine-tuned − base (95% paired bootstrap interval)")
    ax.set_title(f"{metric} change per run" if rows else f"no {metric} results")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return fig


def summary_md(runs: list[dict]) -> str:
    """The batch summary: each run with its status and, per eval set, the change in each headline metric (free-text
    ROUGE-L, closed-form accuracy generated and by log-likelihood)."""
    lines = ["| run | status | model | train s | change per eval set (verdict) |", "|---|---|---|---|---|"]
    by_run: dict[str, dict[str, list[str]]] = {}
    for r in metric_rows(runs):
        if r["metric"] in BATCH_METRICS:
            by_run.setdefault(r["run"], {}).setdefault(r["eval set"], []).append(
                f"{r['metric']} {r['change']:+.3f} ({r['verdict']})")
    for r in runs:
        status = r["status"] + (f": {r['failed_stage']}" if r["failed_stage"] else "")
        sets = "; ".join(f"{name}: {', '.join(cells)}" for name, cells in by_run.get(r["run"], {}).items())
        lines.append(f"| {r['run']} | {status} | {r['model'] or ''} | {r['train_seconds'] or ''} | {sets or 'n/a'} |")
    notes = [line for ls in not_comparable(runs).values() for line in ls]
    if notes:  # numbers of runs that scored different items or scored them differently: side by side, but not alike
        lines += ["", "**Not comparable as they stand** (the eval sets' manifests differ):"] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def compare_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="runner.py compare", description="Comparison report (notebook + HTML) for "
                                "run folders: one row per run, every metric with intervals.")
    p.add_argument("runs", nargs="+", help="run folders (reports/<run_id>)")
    p.add_argument("--out", help="folder for compare.ipynb / compare.html (default: reports/compare-<time>)")
    a = p.parse_args(argv)
    missing = [r for r in a.runs if not (Path(r) / "config.yaml").is_file()]
    if missing:
        print(f"error: not run folders (no config.yaml): {missing}", file=sys.stderr)
        return EXIT_INVALID
    folders, warnings = unique_folders(a.runs)
    for w in warnings:
        print(w, file=sys.stderr)
    a.runs = folders
    out = Path(a.out or default_reports() / f"compare-{datetime.now():%Y%m%d-%H%M%S}")
    print(f"comparison report: {compare_report([str(Path(r).resolve()) for r in a.runs], out)}")
    return EXIT_OK


def compare_report(run_dirs: list[str], out: Path) -> Path:
    """Execute notebooks/compare.ipynb for these runs into out/, with its HTML export beside it."""
    import papermill as pm

    from medqlora.run.report import notebook_html

    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    nb = out / "compare.ipynb"
    with kernel_stderr_to(out / "compare.log"):
        pm.execute_notebook(str(notebook_dir() / "compare.ipynb"), str(nb), cwd=str(kernel_cwd(out)),
                            progress_bar=False,
                            parameters={"run_dirs": run_dirs, "out_dir": str(out)},
                            kernel_name=notebook_kernel())
    return notebook_html(nb)
