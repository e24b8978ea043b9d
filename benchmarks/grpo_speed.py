"""GRPO speed and memory side by side, on the same closed-form items, the same group size and completion length:

  stage   this project's reinforce stage as the notebook runs it (medqlora.reinforce: items, memory plan, load, train)
          on a run folder the preprocess stage filled, GRPO from the base model (no train stage), the rl: settings
          below and the defaults of RLConfig otherwise (lr 5e-6, cosine, warmup 0.1, weight decay 0.1, max_grad_norm
          0.1: Unsloth's notebook values), its three rewards
  bare    TRL's GRPOTrainer + Unsloth as Unsloth's GRPO notebooks set it up: FastLanguageModel.from_pretrained
          (load_in_4bit; fast_inference=True with max_lora_rank and gpu_memory_utilization where vllm is installed),
          get_peft_model(r=16, lora_alpha=16, the 7 projections, use_gradient_checkpointing="unsloth",
          random_state=3407), GRPOConfig(learning_rate=5e-6, adam_beta1=0.9, adam_beta2=0.99, weight_decay=0.1,
          warmup 0.1, lr_scheduler_type="cosine", optim="adamw_8bit", logging_steps=1,
          per_device_train_batch_size=num_generations, gradient_accumulation_steps=1, max_grad_norm=0.1), one reward
          (correctness, by the same parser). --dry (a CPU): transformers + PEFT + bitsandbytes instead, adamw_torch.

Per setup: steps/s over the steady steps (after the first, which carries compilation and warm-up), generation's share
of the step (time in TRL's profiled generate calls, vLLM or transformers, over the step's time), peak memory (the card's
max reserved, or the process's peak RSS on a CPU) and, for the stage, its estimate (reinforce/memory.py) beside it.
A random-weight body (medqlora.testing) rarely ends a completion: every completion runs to --max-completion-length,
the worst case for generation, and its rewards are flat (the loss still runs forward and backward).

    python benchmarks/grpo_speed.py MODEL_DIR OUT_DIR [--steps 12] [--num-generations 4] [--max-completion-length 256]
        [--setups stage,bare] [--max-seq-length 1024]
    python benchmarks/grpo_speed.py --dry OUT_DIR     # a CPU check of the whole script: a tiny model, 3 steps each
Writes OUT_DIR/grpo_speed.json and OUT_DIR/grpo_speed.md.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GEN: dict[str, float] = {"seconds": 0.0}  # time in TRL's profiled generate calls, this process


def count_generation() -> None:
    """Sum the durations TRL's profiling contexts measure around generation (vLLM.generate, transformers.generate,
    transformers.generate_batch); Unsloth's GRPO trainer is built from TRL's source and keeps them."""
    from trl.extras import profiling

    real = profiling.ProfilingContext._log_metrics

    def log(self, duration: float) -> None:
        if self.name.rsplit(".", 1)[-1].startswith("generate"):
            GEN["seconds"] += duration
        real(self, duration)

    profiling.ProfilingContext._log_metrics = log


def timer_callback():
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps: list[dict] = []

        def on_step_begin(self, args, state, control, **kw):
            self.t0, self.g0 = time.perf_counter(), GEN["seconds"]

        def on_step_end(self, args, state, control, **kw):
            self.steps.append({"seconds": time.perf_counter() - self.t0, "generation_s": GEN["seconds"] - self.g0})

        def summary(self) -> dict:
            steady = self.steps[1:] or self.steps
            secs, gen = sum(s["seconds"] for s in steady), sum(s["generation_s"] for s in steady)
            return {"steps": len(self.steps), "first_step_s": round(self.steps[0]["seconds"], 2) if self.steps else None,
                    "steady_steps_per_s": round(len(steady) / secs, 4) if secs else None,
                    "steady_step_s": round(secs / max(len(steady), 1), 3),
                    "generation_share": round(gen / secs, 3) if secs else None}

    return StepTimer()


def peak_gb() -> float:
    import torch

    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_reserved() / 1024**3, 2)
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2, 2)  # KiB on Linux


def write_params(a, out: Path) -> Path:
    """One params file for both setups: the model, the closed-form items as the training source, the rl: settings."""
    import yaml

    rows = [json.loads(x) for x in (ROOT / "data" / "medqa_train.jsonl").read_text().splitlines() if '"options"' in x]
    items = out / "items.jsonl"
    items.write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = {"run_name": "grpo-bench",
         "model": {"name_or_path": a.model, "max_seq_length": a.max_seq_length, "cache_dir": str(out / "cache")},
         "data": {"source": str(items), "eval_fraction": 0.1, "val_fraction": 0, "min_train_examples": 2},
         "lora": {"r": 16, "alpha": 16},
         "rl": {"num_generations": a.num_generations, "max_completion_length": a.max_completion_length,
                "max_steps": a.steps, "save_steps": a.steps + 1, "optimizer": "adamw_torch" if a.dry else "adamw_8bit",
                "gradient_checkpointing": not a.dry, "use_vllm": "auto"}}
    path = out / "bench.yaml"
    path.write_text(yaml.safe_dump(p, sort_keys=False))
    return path


def run_stage(a, out: Path) -> dict:
    from medqlora.reinforce import grpo as G  # first: Unsloth patches transformers and trl on import

    count_generation()
    import torch

    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir
    from medqlora.data import preprocess as P
    from medqlora.reinforce import data as RD
    from medqlora.training import model as M

    cfg = load_config(out / "bench.yaml")
    shutil.rmtree(out / "stage-run", ignore_errors=True)  # no checkpoint of an earlier pass to resume from
    run = RunDir(out / "stage-run")
    tok = M.load_tokenizer(M.resolve_model(cfg.model)[0], cfg.model)
    P.save_result(P.prepare(cfg, run, tok), cfg, run)
    items = RD.prepare(cfg, run, tok)
    plan = G.plan(cfg, items)
    loaded = G.load(plan.cfg, run)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timer = timer_callback()
    result = G.train(cfg, run, loaded, items, plan=plan, callbacks=[timer])
    return {**timer.summary(), "backend": loaded.backend, "generation": loaded.generation, "peak_gb": peak_gb(),
            "estimate_gb": plan.estimate_gb, "estimate_peak_phase": plan.estimate["peak_phase"],
            "completions_per_pass": plan.settings.micro_batch, "reward_start": result["reward_start"],
            "reward_end": result["reward_end"], "items": len(items.rows)}


def run_bare(a, out: Path) -> dict:
    import importlib.util

    import torch

    gpu = torch.cuda.is_available() and importlib.util.find_spec("unsloth") is not None and not a.dry
    if gpu:
        from unsloth import FastLanguageModel
    count_generation()
    from trl import GRPOConfig, GRPOTrainer

    from medqlora.reinforce import data as RD
    from medqlora.reinforce.rewards import reward_functions

    items = RD.load(out / "stage-run")  # the same items the stage prepared (run it first)
    vllm = gpu and importlib.util.find_spec("vllm") is not None
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    if gpu:
        model, tok = FastLanguageModel.from_pretrained(
            model_name=a.model, max_seq_length=a.max_seq_length, load_in_4bit=True,
            **(dict(fast_inference=True, max_lora_rank=16, gpu_memory_utilization=0.5) if vllm else {}))
        model = FastLanguageModel.get_peft_model(model, r=16, target_modules=targets, lora_alpha=16,
                                                 use_gradient_checkpointing="unsloth", random_state=3407)
    else:
        from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
        from transformers import AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

        tok = AutoTokenizer.from_pretrained(a.model)
        model = AutoModelForCausalLM.from_pretrained(a.model, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32), dtype=torch.float32)
        model = get_peft_model(prepare_model_for_kbit_training(model, use_gradient_checkpointing=False),
                               LoraConfig(r=16, lora_alpha=16, target_modules=targets, task_type="CAUSAL_LM"))
        for m in model.modules():  # as the stage does on a CPU: generation must not repack the 4-bit weights
            if getattr(m, "support_avx512bf16_for_cpu", False):
                m.support_avx512bf16_for_cpu = False
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    from medqlora.config import RLConfig

    rl = RLConfig(num_generations=a.num_generations, max_completion_length=a.max_completion_length)
    funcs, _ = reward_functions(rl, "chat")
    args = GRPOConfig(output_dir=str(out / "bare-run"), learning_rate=5e-6, adam_beta1=0.9, adam_beta2=0.99,
                      weight_decay=0.1, warmup_steps=0.1, lr_scheduler_type="cosine",
                      optim="adamw_8bit" if gpu else "adamw_torch", logging_steps=1,
                      per_device_train_batch_size=a.num_generations, gradient_accumulation_steps=1,
                      num_generations=a.num_generations, max_completion_length=a.max_completion_length,
                      max_steps=a.steps, save_strategy="no", max_grad_norm=0.1, report_to="none", use_vllm=vllm,
                      use_cpu=not torch.cuda.is_available(), disable_tqdm=True)
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    timer = timer_callback()
    trainer = GRPOTrainer(model=model, processing_class=tok, reward_funcs=funcs[:1], args=args,
                          train_dataset=RD.to_dataset(items, "chat"), callbacks=[timer])
    trainer.train()
    rewards = [h["reward"] for h in trainer.state.log_history if "reward" in h]
    return {**timer.summary(), "backend": "unsloth" if gpu else "hf", "generation": "vLLM" if vllm else "transformers",
            "peak_gb": peak_gb(), "reward_start": rewards[0] if rewards else None,
            "reward_end": rewards[-1] if rewards else None}


def table(results: dict) -> str:
    lines = ["| setup | backend | generation | steps | steady steps/s | s/step | first step s | generation share | "
             "peak GiB | estimate GiB (phase) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error'][:200]} |||||||||")
            continue
        est = f"{r['estimate_gb']} ({r['estimate_peak_phase']})" if "estimate_gb" in r else ""
        lines.append(f"| {name} | {r['backend']} | {r['generation']} | {r['steps']} | {r['steady_steps_per_s']} | "
                     f"{r['steady_step_s']} | {r['first_step_s']} | {r['generation_share']} | {r['peak_gb']} | {est} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="model folder (a random-weight body from python -m medqlora.testing)")
    ap.add_argument("out")
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--num-generations", type=int, default=4)
    ap.add_argument("--max-completion-length", type=int, default=256)
    ap.add_argument("--max-seq-length", type=int, default=1024)
    ap.add_argument("--setups", default="stage,bare")
    ap.add_argument("--dry", action="store_true", help="CPU check: a tiny random model, 3 steps, 8-token completions")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if a.dry:
        a.steps, a.num_generations, a.max_completion_length, a.max_seq_length = 3, 2, 8, 512
        if not a.model:
            from medqlora.testing import make_tiny_llama

            a.model = make_tiny_llama(out / "tiny-model")
    if a.worker:  # one setup in this process, its result as JSON on the last line
        r = run_stage(a, out) if a.worker == "stage" else run_bare(a, out)
        print("RESULT " + json.dumps(r))
        return 0
    write_params(a, out)
    results = {}
    for setup in a.setups.split(","):  # each in its own process: Unsloth patches on import, memory starts clean
        argv = [sys.executable, __file__, a.model, str(out), "--worker", setup, "--steps", str(a.steps),
                "--num-generations", str(a.num_generations), "--max-completion-length", str(a.max_completion_length),
                "--max-seq-length", str(a.max_seq_length)] + (["--dry"] if a.dry else [])
        p = subprocess.run(argv, capture_output=True, text=True)
        (out / f"{setup}.log").write_text(p.stdout + p.stderr)
        last = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")]
        results[setup] = json.loads(last[-1][7:]) if p.returncode == 0 and last else {
            "error": (p.stderr.strip().splitlines() or ["no output"])[-1]}
        print(setup, results[setup], flush=True)
    (out / "grpo_speed.json").write_text(json.dumps(results, indent=2))
    (out / "grpo_speed.md").write_text(table(results))
    print(table(results))
    return 0 if all("error" not in r for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
