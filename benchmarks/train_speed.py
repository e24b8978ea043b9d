"""Training speed side by side, on the same prepared data, one epoch, same seed:

  project            this project's train stage as a user runs it (runner.py, the train notebook), with its defaults
                     (params/llama-3.1-8b-instruct.yaml: packing auto, the micro-batch the memory plan picks)
  project-as-written the same, the micro-batch as written (memory.max_micro_batch_tokens: null): 2 x 4, as bare
  project-unpacked   the same stage with train.packing: false and as many examples per optimizer step as a packed
                     step holds (rows x max_seq_length / mean length): the loss curve to compare with
  unsloth-default    bare Unsloth + TRL SFTTrainer with Unsloth's notebook settings (packing off; Unsloth turns
                     padding-free on by itself)
  unsloth-packing    the same bare loop with packing=True
  unsloth-packing-mb8  the same at micro-batch 8 x 1 (the project's planned micro-batch: peak memory at equal rows)
  hf                 transformers + PEFT + bitsandbytes QLoRA, SDPA attention, gradient checkpointing, padded batches
  unsloth-fixed      the fixed-shape bare loop: Unsloth, 4 x 2,048 random tokens, no data, forward + backward + AdamW
                     (the ceiling; its tokens/s are those tokens, not the mix's)

All use r=16 on the 7 projections, micro-batch 2 x accumulation 4 (unless the memory plan grows it), adamw_8bit,
lr 2e-4, max length 2048. Useful tokens = the prepared examples' own tokens (no padding), divided by the time from
the trainer's on_train_begin to its last step. With several GPUs each setup runs on its own card, at the same time.

The data is a medical length mix written once in the qa format: MedQuAD free-text answers (short to very long),
PubMedQA abstracts with their question (long prompt, short answer: the MedQA shape) and the project's own
multiple-choice items, then prepared by the project's preprocess stage (chat template, prompt masked).

    python benchmarks/train_speed.py MODEL_DIR OUT_DIR [--rows 800] [--gpus 0,1,2,3] [--setups ...]
    python benchmarks/train_speed.py --report OUT_DIR      # the table and the loss plot again
Each setup's row names the kernel its packed rows went through (medqlora/training/attention.py, as Unsloth's own
dispatch chose it); the project setups add the train stage's seconds by part. Rates: useful tokens over the whole
loop, and steady (the steps after the first: the first carries compilation and warm-up, shown apart); the ratios
use the steady rates. --setups takes '+' to run bare setups in one process (one import of Unsloth), e.g.
--setups project,unsloth-packing+unsloth-fixed+unsloth-default.
--setups "" only prepares; --skip-prepare reuses OUT_DIR's prepared data (e.g. a second pass with another site, without xformers).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

from speed_report import SETUPS, report

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- data


def write_mix(out: Path, rows: int, medquad: Path, pubmedqa: Path, mcq: Path, seed: int = 0) -> Path:
    """rows examples: 60% MedQuAD, 30% PubMedQA, 10% multiple choice (as many as there are), shuffled."""
    rng = random.Random(seed)
    read = lambda p: [json.loads(line) for line in Path(p).read_text().splitlines() if line.strip()]  # noqa: E731
    mq = [{"question": r["question"], "answer": r["answer"]} for r in read(medquad)]
    pq = [{"question": f"{r['context']}\n\nQuestion: {r['question']}",
           "answer": f"{r['long_answer']} Answer: {r['final_decision']}."} for r in read(pubmedqa)]
    mc = [{"question": r["question"] + "\n" + "\n".join(f"{k}. {v}" for k, v in r["options"].items()),
           "answer": f"{r['answer']}. {r['options'][r['answer']]}. {r.get('explanation', '')}".strip()}
          for r in read(mcq) if r.get("options")]
    for xs in (mq, pq, mc):
        rng.shuffle(xs)
    n_mc = min(len(mc), rows // 10)
    n_pq = min(len(pq), (rows * 3) // 10)
    mix = mq[:rows - n_mc - n_pq] + pq[:n_pq] + mc[:n_mc]
    rng.shuffle(mix)
    out.write_text("".join(json.dumps(r) + "\n" for r in mix))
    return out


def params_for(model_dir: str, mix: Path, out: Path, base: Path) -> Path:
    """A params file's settings (by default the 8B one, what a user runs on a GPU), on the local model and the mix."""
    import yaml

    p = yaml.safe_load(base.read_text())
    p["run_name"] = "bench"
    p["model"]["name_or_path"] = model_dir
    p["model"].pop("gguf_file", None)
    p["export"] = {"formats": ["lora"]}
    p["data"] = {**p["data"], "source": str(mix), "max_samples": None, "eval_fraction": 0.02}
    for key in ("split", "eval_source"):  # the mix is one local file; its held-out share is split off
        p["data"].pop(key, None)
    p["eval"] = {"max_samples": 8, "max_new_tokens": 32}
    p["train"]["save_steps"] = None  # one checkpoint at the end, as the bare loops save nothing on the way
    p["train"]["logging_steps"] = 1  # every step's loss, for the loss curves
    path = out / "bench.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


# ---------------------------------------------------------------- one setup (run in its own process)


def project(setup: str, run_dir: Path, out: Path, chain: bool = False) -> dict:
    """The train stage through runner.py, in a copy of the prepared run folder; with `chain`, as a user's run:
    setup, preprocess and train from the params file (the train kernel then starts while setup runs)."""
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    dest = runs / setup
    shutil.rmtree(dest, ignore_errors=True)
    if not chain:
        shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoints", "adapter"))
    import yaml

    extra = {"project-as-written": ["--set", "memory.max_micro_batch_tokens=null"],
             "project-packed": ["--set", "train.packing=true"]}.get(setup, [])
    if setup == "project-unpacked":
        meta = json.loads((out / "meta.json").read_text())
        p = yaml.safe_load((out / "bench.yaml").read_text())
        rows = p["train"]["micro_batch_size"] * p["train"]["gradient_accumulation"]
        per_step = max(8, round(rows * p["model"]["max_seq_length"] / meta["mean_tokens"]))  # examples a packed step
        extra = ["--set", "train.packing=false", "--set", "train.micro_batch_size=8", "--set",
                 f"train.gradient_accumulation={max(1, round(per_step / 8))}"]
    t0 = time.time()
    how = [str(out / "bench.yaml"), "--run-id", setup, "--stages", "setup,preprocess,train"] if chain else [
        "--resume", setup, "--stages", "train"]
    prof = ["-m", "cProfile", "-o", str(runs / f"{setup}.runner.prof")]  # runner.py's own seconds (not its kernels')
    subprocess.run([sys.executable, *prof, str(ROOT / "runner.py"), "--reports-dir", str(runs), *how, *extra],
                   check=True, cwd=ROOT)
    wall = time.time() - t0
    print_profile(runs / f"{setup}.runner.prof")
    r = json.loads((dest / "results" / "train.json").read_text())
    summary = json.loads((dest / "summary.json").read_text())
    stage_s = next(s["seconds"] for s in summary["stages"] if s["name"] == "train")
    before = {s["name"]: s["seconds"] for s in summary["stages"] if s["name"] != "train"} if chain else {}
    ahead = next(s.get("imports_done_ahead_s") for s in summary["stages"] if s["name"] == "train")
    eff = r["effective_settings"]
    from speed_parts import stage_parts

    try:
        parts = stage_parts(dest)
    except Exception as e:  # noqa: BLE001 (the timing breakdown must not lose the run's figures)
        parts = {"error": f"{type(e).__name__}: {e}"[:200]}
    loop = parts.get("loop after the first logged step")
    first, last = parts.get("logged steps", [None, None])
    return {"seconds": r["seconds"], "steps": r["steps"], "losses": r["losses"], "peak_reserved_gib": None,
            "steady_seconds": loop, "steady_share": (last - first) / r["steps"] if loop else None,
            "attention": r.get("attention"), "first_step_seconds": parts.get("first logged step"),
            "stage_parts": parts, "tokens_per_s_reported": r.get("useful_tokens_per_s"),
            "peak_memory_gib": r["peak_memory_gb"], "stage_seconds": stage_s, "runner_seconds": round(wall, 1),
            "stages_before_seconds": before, "imports_done_ahead_s": ahead,
            "micro_batch": eff["micro_batch_size"], "accumulation": eff["gradient_accumulation"],
            "packing": r.get("packing"), "packing_check": r.get("packing_check"),
            "memory_plan_steps": [s["step"] for s in (r["memory"]["plan"] or {}).get("steps", [])]}


@contextlib.contextmanager
def gpu_turn(lock: str | None):
    """With --gpu-lock, one setup at a time loads and trains on the card, while other processes import (Unsloth's
    import alone is 35-40 s on an H200 host): the rates stay those of a card nothing else trains on."""
    if not lock:
        yield
        return
    import fcntl

    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def print_profile(path: Path, top: int = 30) -> None:
    """runner.py's calls by cumulative seconds, outside the notebooks (waiting on a kernel shows as the stage)."""
    import pstats

    if path.is_file():
        pstats.Stats(str(path)).sort_stats("cumulative").print_stats(r"medqlora/|runner\.py", top)


def worker(setups: str, run_dir: Path, model_dir: str, params: Path, out: Path, slow_steps: int = -1,
           lock: str | None = None, chain: bool = False) -> None:
    """One or more setups, '+'-joined, one after another in this process: bare Unsloth setups share one import of
    Unsloth (35-40 s each otherwise); each loads its own model, and its peak memory is its own."""
    import gc

    if any(s.startswith("unsloth") for s in setups.split("+")):
        from medqlora.training.model import preload_unsloth

        preload_unsloth()  # before the lock: imports need no card
    import torch

    from bare_loops import bare, useful_tokens
    from medqlora.training.attention import attention_path, describe

    for setup in setups.split("+"):
        if torch.cuda.is_available():
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        with gpu_turn(None if setup.startswith("project") else lock):  # the call holds it around a project setup
            if setup.startswith("project"):
                res = project(setup, run_dir, out, chain)
            elif setup == "unsloth-fixed":
                from speed_parts import fixed_loop

                res = fixed_loop(model_dir)
            else:
                res = bare(setup, run_dir, model_dir, out, slow_steps if setup in ("hf", "unsloth-default") else -1)
        # a run stopped at max_steps saw that share of the epoch (random order: its expected share of the tokens)
        trained_on = out / "runs" / setup if chain and setup.startswith("project") else run_dir  # a chain's own data
        tokens = res.get("fixed_tokens") or round(useful_tokens(trained_on) * min(res.get("epoch") or 1.0, 1.0))
        if res.get("fixed_tokens"):  # after its warm-up steps already
            res["steady_seconds"], res["steady_share"] = res["seconds"], 1.0
        elif res.get("steady_seconds") and not res.get("steady_share"):
            res["steady_share"] = (res["steps"] - 1) / res["steps"]  # bare loops: every step after the first
        if setup == "hf" or (setup.startswith("project") and "attention" in res and not res["attention"]):
            path = {"packed": "transformers SDPA"}  # the stage ran on transformers + PEFT
        else:  # the project's stage records its own; here, the same packages as its kernel
            path = res.get("attention") or attention_path(import_unsloth=True)
        steady = (tokens * res["steady_share"] / res["steady_seconds"]) if res.get("steady_seconds") else None
        res.update(setup=setup, useful_tokens=tokens, useful_tokens_per_s=tokens / res["seconds"],
                   steady_tokens_per_s=steady, attention=path,
                   attention_label=describe(path).removeprefix("attention for packed rows: ") if "source" in path
                   else path["packed"], card=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu")
        (out / f"{setup}.json").write_text(json.dumps(res, indent=1))
        print(f"{setup}: {res['useful_tokens_per_s']:,.0f} useful tokens/s over the loop, steady "
              f"{steady or 0:,.0f}", flush=True)


# ---------------------------------------------------------------- orchestration and report


def prepare(a, out: Path) -> None:
    """The mix, bench.yaml, the prepared run folder (setup + preprocess through runner.py) and meta.json."""
    mix = write_mix(out / "mix.jsonl", a.rows, Path(a.medquad), Path(a.pubmedqa), Path(a.mcq))
    params = params_for(str(Path(a.model).resolve()), mix, out, Path(a.base_params))
    shutil.rmtree(out / "prepared", ignore_errors=True)
    subprocess.run([sys.executable, str(ROOT / "runner.py"), str(params), "--reports-dir", str(out), "--run-id",
                    "prepared", "--stages", "setup,preprocess"], check=True, cwd=ROOT)
    import datasets
    from transformers import AutoConfig

    from medqlora.training.memory import ModelShape

    lens = sorted(len(x) for x in datasets.load_from_disk(str(out / "prepared" / "data" / "train"))["input_ids"])
    (out / "meta.json").write_text(json.dumps({
        "shape": a.shape or Path(a.model).name, "params": ModelShape.from_config(AutoConfig.from_pretrained(a.model))
        .params(), "examples": len(lens), "useful_tokens": sum(lens), "mean_tokens": sum(lens) / len(lens),
        "p90_tokens": lens[int(0.9 * len(lens))], "max_tokens": lens[-1], "date": time.strftime("%Y-%m-%d")}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?")
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=800)
    ap.add_argument("--shape", default="", help="name for the table (e.g. 'Llama-3.2-1B')")
    ap.add_argument("--gpus", default="0")
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--medquad", default=str(ROOT.parent / "shared" / "data" / "medquad_sample.jsonl"))
    ap.add_argument("--pubmedqa", default=str(ROOT.parent / "shared" / "data" / "pubmedqa_pqal.jsonl"))
    ap.add_argument("--mcq", default=str(ROOT / "data" / "medqa_train.jsonl"))
    ap.add_argument("--base-params", default=str(ROOT / "params" / "llama-3.1-8b-instruct.yaml"),
                    help="the params file whose settings the project setups (and hf) train with")
    ap.add_argument("--slow-steps", type=int, default=-1, help="stop hf and unsloth-default after this many "
                    "optimizer steps (their tokens/s from that part of the epoch): for the 8B shape")
    ap.add_argument("--gpu-lock", help="a lock file: each bare setup loads and trains holding it (several processes "
                    "share one card, their imports overlap); hold it around other work on the card")
    ap.add_argument("--chain", action="store_true", help="project setups run setup, preprocess and train from the "
                    "params file, as a user's run does (default: the train stage alone on the prepared run folder)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--report", action="store_true", help="only rebuild table.md and loss.png from OUT")
    ap.add_argument("--skip-prepare", action="store_true", help="reuse OUT's prepared data, bench.yaml and meta.json")
    a = ap.parse_args()
    out = Path(a.out).resolve()
    if a.report:
        print(report(out))
        return
    params = out / "bench.yaml"
    if a.worker:
        worker(a.worker, out / "prepared", str(Path(a.model).resolve()), params, out, a.slow_steps, a.gpu_lock,
               a.chain)
        return
    out.mkdir(parents=True, exist_ok=True)
    if not a.skip_prepare:
        prepare(a, out)
    if not a.setups:  # --setups "": only the data (e.g. while the GPU does something else)
        return
    from medqlora.run.batch import run_on_gpus

    printed = [None]

    def tick(running: dict[str, str], codes: dict[str, int]) -> None:
        now = sorted(running.items()), sorted(codes.items())
        if now != printed[0]:
            printed[0] = now
            print(f"{time.strftime('%H:%M:%S')} running: " + ", ".join(f"{n} on GPU {g}" for g, n in now[0])
                  + " | done: " + ", ".join(f"{n} (exit {c})" for n, c in now[1]), flush=True)

    flags = [*(["--gpu-lock", a.gpu_lock] if a.gpu_lock else []), *(["--chain"] if a.chain else [])]
    run_on_gpus([(s_, [sys.executable, __file__, a.model, str(out), "--worker", s_, "--slow-steps", str(a.slow_steps),
                       *flags],
                  out / f"{s_}.log") for s_ in a.setups.split(",")], a.gpus.split(","), tick)
    if (out / "meta.json").is_file():  # the fixed loop alone needs no data (copy its row in, then --report)
        print(report(out))


if __name__ == "__main__":
    main()
