"""summary.json and summary.md: each stage's status and the run's figures, rewritten after every stage."""
from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

from medqlora.config import RunConfig
from medqlora.core.rundir import OPTIONAL, STAGES, RunDir, portable, read_json, run_stages, write_json


class Summary:
    """summary.json, rewritten after every stage so that a crashed run still says how far it got."""

    def __init__(self, run: RunDir, run_id: str, cfg: RunConfig, params_file: str):
        self.run, self.path = run, run / "summary.json"
        self.stages = run_stages(cfg)  # this run's stages: reinforce only where the params have rl:
        old = read_json(self.path) if self.path.is_file() else {}
        self.data = {"run_id": run_id, "status": "running", "params_file": params_file,
                     "model": cfg.model.name_or_path + (f" ({cfg.model.gguf_file})" if cfg.model.gguf_file else ""),
                     "started": old.get("started") or datetime.now().isoformat(timespec="seconds"),
                     "stages": old.get("stages", []), "data": None, "train": None, "metrics": None,
                     "artifacts": {"adapter_dir": None}, "error": None,
                     "rerun_of": old.get("rerun_of"), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES")}

    def stage(self, name: str) -> dict | None:
        return next((s for s in self.data["stages"] if s["name"] == name), None)

    def stage_status(self, name: str) -> str | None:
        return (self.stage(name) or {}).get("status")

    def record(self, name: str, status: str, seconds: float, notebook: Path, error: str | None = None,
               inputs: dict | None = None, ahead_s: float | None = None):
        """`ahead_s`: seconds of the stage's imports its kernel did before the stage began (warm.py), not in
        `seconds`."""
        self.data["stages"] = [s for s in self.data["stages"] if s["name"] != name]
        self.data["stages"].append({"name": name, "status": status, "seconds": round(seconds, 1),
                                    "notebook": str(notebook), "error": error, "inputs": inputs,
                                    **({"imports_done_ahead_s": ahead_s} if ahead_s is not None else {})})
        self.data["stages"].sort(key=lambda s: STAGES.index(s["name"]))
        self.collect()
        self.save()

    def collect(self):
        run = self.run
        self.data["train"] = self.data["metrics"] = None
        self.data["artifacts"] = {"adapter_dir": None}
        self.data["data"] = None
        if run.result_path("preprocess").is_file():
            p = read_json(run.result_path("preprocess"))
            self.data["data"] = {k: p.get(k) for k in ("format", "rows_read", "kept", "dropped", "max_seq_length")}
        if run.result_path("train").is_file():
            t = read_json(run.result_path("train"))
            self.data["train"] = {k: t.get(k) for k in ("backend", "steps", "epochs", "first_loss", "final_loss",
                                                         "loss_start", "loss_end", "train_loss", "val_first",
                                                         "val_last", "val_best", "val_best_step", "val_examples",
                                                         "seconds", "seconds_per_step",
                                                         "warmup_steps", "peak_memory_gb")}
            self.data["train"]["effective_settings"] = t.get("effective_settings")
            self.data["train"]["memory_plan_steps"] = ((t.get("memory") or {}).get("plan") or {}).get("steps")
            self.data["train"]["oom_retries"] = (t.get("memory") or {}).get("oom_retries")
        from medqlora.core.memory_log import peaks_by_stage

        self.data["memory_peaks_gb"] = peaks_by_stage(run)
        self.data.pop("reinforce", None)
        if run.result_path("reinforce").is_file():  # the key exists only where the stage ran
            r = read_json(run.result_path("reinforce"))
            self.data["reinforce"] = {k: r.get(k) for k in ("backend", "steps", "started_from", "reward_start",
                                                             "reward_end", "answers", "thought_closed", "seconds",
                                                             "peak_memory_gb")}
        if run.result_path("export").is_file():
            e = read_json(run.result_path("export"))
            self.data["artifacts"] = {"adapter_dir": e["adapter_dir"], "export_dir": e["export_dir"]}
        if run.result_path("evaluate").is_file():
            self.data["metrics"] = read_json(run.result_path("evaluate"))["metrics"]

    def status(self) -> str:
        """The run's status as its stages say: failed if a stage failed, ok when all of this run's stages are ok (the
        five, and reinforce where the params have rl:), else partial (stages left out). Never set by hand: a resume
        with nothing to do does not make a failed run ok."""
        states = [self.stage_status(s) for s in self.stages]
        return "failed" if "failed" in states else "ok" if all(x == "ok" for x in states) else "partial"

    def finish(self, error: str | None = None) -> str:
        failed = next((s for s in self.data["stages"] if s["status"] == "failed"), None)
        if error is None and failed:
            error = f"stage {failed['name']} failed: {failed.get('error')}"
        self.data.update(status=self.status(), error=error, finished=datetime.now().isoformat(timespec="seconds"))
        self.save()
        return self.data["status"]

    def save(self):
        # paths inside the run folder are recorded relative to it: the folder may be restored elsewhere
        self.data.pop("run_dir", None)
        write_json(self.path, portable(self.data, self.run.path))
        (self.run / "summary.md").write_text(readable(self.data, self.run))


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)


def readable(s: dict, run: RunDir | None = None) -> str:
    from medqlora.run import headline

    lines = [f"# {s['run_id']}: {s['status']}", "", f"model: {s['model']}", ""]
    run = run or (RunDir(s["run_dir"]) if s.get("run_dir") else None)
    if run is not None:
        lines += [headline.markdown(headline.build(run, s.get("stages")), links="files"), ""]
    lines += ["| stage | status | seconds | notebook |", "|---|---|---|---|"]
    lines += [f"| {x['name']} | {x['status']} | {x['seconds']}"
              + (f" (+{x['imports_done_ahead_s']} of imports done ahead)" if x.get("imports_done_ahead_s") else "")
              + f" | {Path(x['notebook']).name} |" for x in s["stages"]]
    if s.get("data"):
        d = s["data"]
        dropped = ", ".join(f"{k} {v}" for k, v in (d["dropped"] or {}).items()) or "none"
        lines += ["", f"data ({d['format']}): {d['rows_read']} rows read, kept {d['kept']}, dropped: {dropped}"]
    if s.get("train"):
        t = s["train"]
        lines += ["", f"training ({t['backend']}): {t['steps']} steps, {t['seconds']} s, peak memory "
                  f"{t['peak_memory_gb']} GiB"]
    if s.get("reinforce"):
        r = s["reinforce"]
        lines += ["", f"reinforcement (GRPO, {r['backend']}, from {r['started_from']}): {r['steps']} steps, mean "
                  f"reward {_num(r['reward_start'])} -> {_num(r['reward_end'])} (first and last fifth), answers "
                  f"{r['answers']}"]
    if s.get("metrics"):
        lines += ["", "| metric | base | fine-tuned |", "|---|---|---|"]
        for k in ("rouge1", "rouge2", "rougeL", "accuracy", "parse_rate", "looping", "hit_token_limit", "n_freetext",
                  "n_choice"):
            lines.append(f"| {k} | {_num(s['metrics']['base'].get(k))} | {_num(s['metrics']['finetuned'].get(k))} |")
    if s.get("error"):
        lines += ["", f"error: {s['error']}"]
    ran = [x["name"] for x in s["stages"]]
    planned = run.stages() if run is not None else [x for x in STAGES if x not in OPTIONAL or x in ran]
    n = {5: "five", 6: "six"}.get(len(planned), str(len(planned)))
    which = (f"All {n} notebooks" if len(ran) == len(planned) else
             f"The {len(ran)} executed notebook{'s' * (len(ran) != 1)} of {n} ({', '.join(ran) or 'none'})")
    lines += ["", f"{which} in one file: [report.html](report.html); full log: run.log"]
    return "\n".join(lines) + "\n"
