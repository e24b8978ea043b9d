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
import json
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETUPS = ["project", "project-as-written", "project-unpacked", "project-packed", "unsloth-default", "unsloth-packing",
          "unsloth-packing-mb8", "hf", "unsloth-fixed"]
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# Dense bf16 (fp16 for the T4) tensor-core peaks, TFLOPS, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L4": 121.0, "T4": 65.0, "A10": 125.0}


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


class Clock:
    """on_train_begin to on_train_end, and the loss at every step, for any trainer."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class CB(TrainerCallback):
            def on_train_begin(self, args, state, control, **kw):
                clock.t0 = time.time()

            def on_step_end(self, args, state, control, **kw):
                clock.step_ends.append(time.time())

            def on_train_end(self, args, state, control, **kw):
                clock.seconds = time.time() - clock.t0

        self.callback = CB()
        self.t0 = self.seconds = None
        self.step_ends: list[float] = []

    def figures(self) -> dict:
        """The whole loop, its first optimizer step (compilation, warm-up) and the steps after it (the steady rate)."""
        e = self.step_ends
        return {"seconds": self.seconds, "first_step_seconds": e[0] - self.t0 if e else None,
                "steady_seconds": e[-1] - e[0] if len(e) > 1 else None}


def useful_tokens(run_dir: Path) -> int:
    import datasets

    return int(sum(len(x) for x in datasets.load_from_disk(str(run_dir / "data" / "train"))["input_ids"]))


def bare(setup: str, run_dir: Path, model_dir: str, out: Path, max_steps: int = -1) -> dict:
    import datasets
    import torch

    from medqlora.core.system import peak_memory_gb  # GPU reserved, or the process's peak RSS on a CPU

    if setup.startswith("unsloth"):
        from unsloth import FastLanguageModel

        model, tok = FastLanguageModel.from_pretrained(model_dir, max_seq_length=2048, load_in_4bit=True, dtype=None)
        model = FastLanguageModel.get_peft_model(model, r=16, lora_alpha=16, lora_dropout=0, bias="none",
                                                 target_modules=TARGETS, use_gradient_checkpointing="unsloth",
                                                 random_state=3407)
        kw = dict(r=16, alpha=16, mb=2, acc=4, lr=2e-4, optim="adamw_8bit", gc=False, seq=2048)
        if setup == "unsloth-packing-mb8":  # the micro-batch the project's memory plan picks on the 1B shape
            kw.update(mb=8, acc=1)
    else:
        import yaml
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        # the settings the project's setups train with (bench.yaml), so that only the stack differs
        p = yaml.safe_load((out / "bench.yaml").read_text())
        lora, t = p.get("lora", {}), p.get("train", {})
        kw = dict(r=lora.get("r", 16), alpha=lora.get("alpha", 16), mb=t.get("micro_batch_size", 2),
                  acc=t.get("gradient_accumulation", 4), lr=t.get("learning_rate", 2e-4),
                  optim=t.get("optimizer", "adamw_torch"), gc=t.get("gradient_checkpointing", True),
                  seq=p["model"].get("max_seq_length", 2048))
        gpu = torch.cuda.is_available()
        dtype = torch.bfloat16 if gpu else torch.float32
        tok = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(
            model_dir, dtype=dtype, attn_implementation="sdpa", device_map={"": 0} if gpu else None,
            quantization_config=BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                                   bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype))
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=kw["gc"])
        model = get_peft_model(model, LoraConfig(r=kw["r"], lora_alpha=kw["alpha"], lora_dropout=0.0,
                                                 target_modules=TARGETS, task_type="CAUSAL_LM"))
    from trl import SFTConfig, SFTTrainer

    ds = datasets.load_from_disk(str(run_dir / "data" / "train")).select_columns(["input_ids", "labels"])
    gpu = torch.cuda.is_available()
    args = SFTConfig(output_dir=str(out / f"ckpt-{setup}"), num_train_epochs=1, per_device_train_batch_size=kw["mb"],
                     gradient_accumulation_steps=kw["acc"], learning_rate=kw["lr"], lr_scheduler_type="linear",
                     warmup_steps=0.03, logging_steps=1, report_to=[], max_length=kw["seq"], bf16=gpu,
                     use_cpu=not gpu, optim=kw["optim"], save_strategy="no", seed=3407,
                     packing=setup.startswith("unsloth-packing"), max_steps=max_steps,
                     gradient_checkpointing=setup == "hf" and kw["gc"], disable_tqdm=True)
    clock = Clock()
    tr = SFTTrainer(model=model, processing_class=tok, train_dataset=ds, args=args, callbacks=[clock.callback])
    result = tr.train()  # peak memory over the whole process (load included), as the train stage reports it
    losses = [(h["step"], h["loss"]) for h in tr.state.log_history if "loss" in h]
    return {**clock.figures(), "steps": result.global_step, "losses": losses, "epoch": tr.state.epoch,
            "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if gpu else None,
            "peak_memory_gib": peak_memory_gb(), "micro_batch": kw["mb"], "accumulation": kw["acc"]}


def project(setup: str, run_dir: Path, out: Path) -> dict:
    """The train stage through runner.py, in a copy of the prepared run folder."""
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    dest = runs / setup
    shutil.rmtree(dest, ignore_errors=True)
    shutil.copytree(run_dir, dest, ignore=shutil.ignore_patterns("checkpoints", "adapter"))
    import yaml

    meta = json.loads((out / "meta.json").read_text())
    p = yaml.safe_load((out / "bench.yaml").read_text())
    rows = p["train"]["micro_batch_size"] * p["train"]["gradient_accumulation"]
    per_step = max(8, round(rows * p["model"]["max_seq_length"] / meta["mean_tokens"]))  # examples in a packed step
    extra = {"project-unpacked": ["--set", "train.packing=false", "--set", "train.micro_batch_size=8", "--set",
                                  f"train.gradient_accumulation={max(1, round(per_step / 8))}"],
             "project-as-written": ["--set", "memory.max_micro_batch_tokens=null"],
             "project-packed": ["--set", "train.packing=true"]}.get(setup, [])
    t0 = time.time()
    subprocess.run([sys.executable, str(ROOT / "runner.py"), "--reports-dir", str(runs), "--resume", setup,
                    "--stages", "train", *extra], check=True, cwd=ROOT)
    wall = time.time() - t0
    r = json.loads((dest / "results" / "train.json").read_text())
    summary = json.loads((dest / "summary.json").read_text())
    stage_s = next(s["seconds"] for s in summary["stages"] if s["name"] == "train")
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
            "micro_batch": eff["micro_batch_size"], "accumulation": eff["gradient_accumulation"],
            "packing": r.get("packing"), "packing_check": r.get("packing_check"),
            "memory_plan_steps": [s["step"] for s in (r["memory"]["plan"] or {}).get("steps", [])]}


def worker(setups: str, run_dir: Path, model_dir: str, params: Path, out: Path, slow_steps: int = -1) -> None:
    """One or more setups, '+'-joined, one after another in this process: bare Unsloth setups share one import of
    Unsloth (about 25 s each otherwise); each loads its own model, and its peak memory is its own."""
    import gc

    import torch

    from medqlora.training.attention import attention_path, describe

    for setup in setups.split("+"):
        if torch.cuda.is_available():
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        if setup.startswith("project"):
            res = project(setup, run_dir, out)
        elif setup == "unsloth-fixed":
            from speed_parts import fixed_loop

            res = fixed_loop(model_dir)
        else:
            res = bare(setup, run_dir, model_dir, out, slow_steps if setup in ("hf", "unsloth-default") else -1)
        # a run stopped at max_steps saw that share of the epoch (random order: its expected share of the tokens)
        tokens = res.get("fixed_tokens") or round(useful_tokens(run_dir) * min(res.get("epoch") or 1.0, 1.0))
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
        if p.get("stage_parts"):
            from speed_parts import outside_loop

            parts = {k: v for k, v in p["stage_parts"].items() if k != "logged steps"}
            lines.append("train stage by part (s): " + ", ".join(f"{k} {v}" for k, v in parts.items()))
            if "logged steps" in p["stage_parts"]:
                first, last = p["stage_parts"]["logged steps"]
                lines.append(f"logged steps {first} to {last} (the loop's part counts the steps after {first})")
            lines.append(f"outside the loop (stage total less the steps after the first): "
                         f"{outside_loop(p['stage_parts'])} s")
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
        worker(a.worker, out / "prepared", str(Path(a.model).resolve()), params, out, a.slow_steps)
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

    run_on_gpus([(s_, [sys.executable, __file__, a.model, str(out), "--worker", s_, "--slow-steps", str(a.slow_steps)],
                  out / f"{s_}.log") for s_ in a.setups.split(",")], a.gpus.split(","), tick)
    if (out / "meta.json").is_file():  # the fixed loop alone needs no data (copy its row in, then --report)
        print(report(out))


if __name__ == "__main__":
    main()
