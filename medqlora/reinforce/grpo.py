"""Stage 3b: GRPO with TRL's GRPOTrainer on the closed-form items, continuing the train stage's LoRA (or a fresh one
on the 4-bit base when that stage did not run).

On a GPU with Unsloth it loads as Unsloth's GRPO notebooks do (FastLanguageModel, 4-bit, get_peft_model with its
gradient checkpointing; fast_inference, i.e. colocated vLLM generation, only where vllm is installed: rl.use_vllm);
elsewhere transformers + PEFT + bitsandbytes, real QLoRA on the CPU too. Checkpoints every rl.save_steps resume as the
train stage's do; an out-of-memory error lowers the completions per pass (never the group) and goes on from the newest.
"""
from __future__ import annotations

import hashlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from medqlora.core import memory_log
from medqlora.training import model as M

M.preload_unsloth()  # before transformers and trl: Unsloth patches them on import
from transformers.trainer_callback import PrinterCallback  # noqa: E402

from medqlora.config import RunConfig, stage_inputs  # noqa: E402
from medqlora.core.rundir import RunDir  # noqa: E402
from medqlora.core.system import free_memory, peak_memory_gb  # noqa: E402
from medqlora.reinforce import data as RD  # noqa: E402
from medqlora.reinforce.progress import GrpoMemory, GrpoProgress, summarize  # noqa: E402
from medqlora.reinforce.rewards import AnswerRecorder, reward_functions  # noqa: E402
from medqlora.training.memory_plan import MemoryFitError, smaller_micro_batch  # noqa: E402
from medqlora.training.train import _is_oom, resumable_in  # noqa: E402


def starting_point(run: RunDir) -> dict:
    """Where GRPO starts: the train stage's adapter when that stage ran (its LoRA is continued), else the base."""
    if run.result_path("train").is_file() and (run.adapter_dir / "adapter_config.json").is_file():
        steps = run.result("train").get("steps")
        return {"from": "train", "adapter": str(run.adapter_dir), "fingerprint": _fingerprint(run.adapter_dir),
                "line": f"the train stage's adapter ({steps} steps), its LoRA continued"}
    return {"from": "base", "adapter": None, "fingerprint": None, "line": "the base model with a fresh LoRA (no train "
            "stage ran)"}


def _fingerprint(folder: Path) -> str:
    h = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin"):
        if (folder / name).is_file():
            h.update((folder / name).read_bytes())
    return h.hexdigest()[:16]


def use_vllm(cfg: RunConfig, backend: str) -> tuple[bool, str]:
    """rl.use_vllm resolved: vLLM generation only with Unsloth on a GPU and vllm installed; never required."""
    from medqlora.reinforce.checks import vllm_ready

    ok, missing = vllm_ready()
    if cfg.rl.use_vllm is False:
        return False, "rl.use_vllm: false: transformers generation"
    if ok and backend == "unsloth":
        return True, "vLLM generation (Unsloth fast_inference, colocated)"
    if cfg.rl.use_vllm is True:
        raise RuntimeError(f"rl.use_vllm: true but vLLM cannot run here (missing: {missing or 'the Unsloth backend'})")
    return False, f"transformers generation (vLLM needs {missing or 'the Unsloth backend'})"


def plan(cfg: RunConfig, items: RD.Items, print_fn=print):
    """The memory plan of this run's GRPO steps (reinforce/memory.py) at the items' longest prompt."""
    from medqlora.reinforce.memory import plan_grpo

    return plan_grpo(cfg, items.longest_prompt, use_vllm(cfg, M.resolve_backend(cfg.model))[0], print_fn)


@dataclass
class Loaded:
    model: object
    tokenizer: object
    backend: str
    ref: str
    start: dict
    vllm: bool
    generation: str
    params: dict
    load_seconds: float
    notes: list[str] = field(default_factory=list)


def load(cfg: RunConfig, run: RunDir) -> Loaded:
    """The policy: the 4-bit base with the train stage's adapter made trainable, or with a fresh LoRA."""
    t0 = time.time()
    backend = M.resolve_backend(cfg.model)
    ref, _ = M.resolve_model(cfg.model)
    start = starting_point(run)
    vllm, how = use_vllm(cfg, backend)
    rl = cfg.rl
    lora_cfg = cfg.model_copy(deep=True)  # add_lora reads train.*: the seed and checkpointing of this stage
    lora_cfg.train.gradient_checkpointing = rl.gradient_checkpointing
    lora_cfg.train.seed = cfg.train.seed if rl.seed is None else rl.seed
    try:
        if backend == "unsloth":
            from unsloth import FastLanguageModel

            extra = dict(fast_inference=True, max_lora_rank=cfg.lora.r,
                         gpu_memory_utilization=rl.vllm_gpu_memory_utilization) if vllm else {}
            model, tok = FastLanguageModel.from_pretrained(
                model_name=start["adapter"] or ref, max_seq_length=cfg.model.max_seq_length,
                dtype=None if cfg.model.dtype == "auto" else M.compute_dtype(cfg.model),
                load_in_4bit=cfg.model.load_in_4bit, **extra)
            M._end_of_turn_fix(tok, getattr(model, "generation_config", None))
            if cfg.model.chat_template:
                tok.chat_template = cfg.model.chat_template
            model = M.add_lora(model, lora_cfg, "unsloth")  # Unsloth passes an adapter already there through
        else:
            model, tok = M.load_base(ref, cfg.model, "hf", for_training=True)
            if start["adapter"]:
                from peft import PeftModel, prepare_model_for_kbit_training

                if cfg.model.load_in_4bit:
                    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=rl.gradient_checkpointing)
                model = PeftModel.from_pretrained(model, start["adapter"], is_trainable=True)
            else:
                model = M.add_lora(model, lora_cfg, "hf")
    except OSError as e:
        raise RuntimeError(M.load_hint(ref, e)) from e
    memory_log.record(run, "reinforce", "policy loaded")
    return Loaded(model, tok, backend, ref, start, vllm, how, M.parameter_counts(model), time.time() - t0)


def grpo_config(cfg: RunConfig, run: RunDir, vllm: bool, weights: list[float]):
    import torch
    from trl import GRPOConfig

    rl = cfg.rl
    dtype = M.compute_dtype(cfg.model)
    return GRPOConfig(
        output_dir=str(run / "rl_checkpoints"), max_steps=rl.max_steps, learning_rate=rl.learning_rate,
        per_device_train_batch_size=rl.micro_batch,
        gradient_accumulation_steps=rl.completions_per_step // rl.micro_batch,
        num_generations=rl.num_generations, max_completion_length=rl.max_completion_length, beta=rl.beta,
        loss_type=rl.loss_type, epsilon=rl.epsilon, temperature=rl.temperature, top_p=rl.top_p,
        reward_weights=weights, lr_scheduler_type=rl.scheduler, warmup_steps=rl.warmup_ratio,
        weight_decay=rl.weight_decay, max_grad_norm=rl.max_grad_norm, optim=rl.optimizer,
        seed=cfg.train.seed if rl.seed is None else rl.seed, logging_steps=1, save_strategy="steps",
        save_steps=rl.save_steps, save_total_limit=rl.save_total_limit, bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16, use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=rl.gradient_checkpointing and not cfg.model.load_in_4bit,
        use_vllm=vllm, **({"vllm_mode": "colocate", "vllm_gpu_memory_utilization": rl.vllm_gpu_memory_utilization}
                          if vllm else {}),
        report_to=[], disable_tqdm=True, run_name=run.path.name)


def _resumable_checkpoint(cfg: RunConfig, run: RunDir, start: dict, print_fn) -> str | None:
    """The newest complete checkpoint, if made from exactly this stage's inputs, items and starting adapter; else
    the checkpoints are removed and GRPO starts over (as the train stage does)."""
    folder = run / "rl_checkpoints"
    items = hashlib.sha256(RD.items_path(run).read_bytes()).hexdigest()[:16]
    made_from = {**stage_inputs(cfg, "reinforce"), "items": items, "start": start["fingerprint"]}
    return resumable_in(folder, made_from, run, print_fn)


def train(cfg: RunConfig, run: RunDir, loaded: Loaded, items: RD.Items, plan=None, print_fn=print,
          callbacks=()) -> dict:
    """GRPO for rl.max_steps, resuming from the newest checkpoint a previous attempt left; the RL adapter is saved in
    rl_adapter/. Every figure comes from the trainer's log history (restored on resume)."""
    import torch
    from trl import GRPOTrainer

    user_cfg, cfg = cfg, (plan.cfg if plan is not None else cfg)
    ds = RD.to_dataset(items, cfg.data.template, cfg.data.system_prompt)
    labels = sorted({k for r in items.rows for k in (r["options"] or {"yes": 1, "no": 1, "maybe": 1})})
    recorder = AnswerRecorder(labels)
    funcs, weights = reward_functions(cfg.rl, cfg.data.template, recorder)
    guarded = M.keep_training_layout(loaded.model)  # generation between steps must not repack the 4-bit weights
    initial = {k: v.detach().clone() for k, v in loaded.model.named_parameters() if v.requires_grad}
    memory_log.record(run, "reinforce", "before GRPO")
    oom_log: list[dict] = []
    t0 = time.time()
    while True:
        args = grpo_config(cfg, run, loaded.vllm, weights)
        progress = GrpoProgress(print_fn, cfg.rl.logging_steps, cfg.rl.beta, recorder)
        trainer = GRPOTrainer(model=loaded.model, reward_funcs=funcs, args=args, train_dataset=ds,
                              processing_class=loaded.tokenizer,
                              callbacks=[progress, GrpoMemory(run), *callbacks])
        trainer.remove_callback(PrinterCallback)
        resume = _resumable_checkpoint(user_cfg, run, loaded.start, print_fn)
        if resume is None:  # from the start: undo whatever a failed attempt did to the LoRA weights
            with torch.no_grad():
                for k, v in loaded.model.named_parameters():
                    if k in initial:
                        v.copy_(initial[k])
        try:
            trainer.train(resume_from_checkpoint=resume)
            break
        except Exception as e:
            if not _is_oom(e):
                raise
            step, error = trainer.state.global_step, str(e).splitlines()[0][:200]
        mb, acc = cfg.rl.micro_batch, cfg.rl.completions_per_step // cfg.rl.micro_batch
        del trainer
        free_memory(reset_peak=True)
        if mb == 1 or len(oom_log) >= cfg.memory.oom_retries:
            raise MemoryFitError(f"out of memory at GRPO step {step} with {mb} completion(s) per pass after "
                                 f"{len(oom_log)} retries: lower rl.max_completion_length or rl.num_generations, "
                                 f"keep rl.gradient_checkpointing on, use rl.optimizer: adamw_8bit ({error})")
        new_mb, new_acc = smaller_micro_batch(mb, acc)
        cfg = cfg.model_copy(deep=True)
        cfg.rl.micro_batch_size = new_mb
        oom_log.append({"at_step": step, "micro_batch": [mb, new_mb], "accumulation": [acc, new_acc], "error": error})
        memory_log.record(run, "reinforce", f"out of memory at step {step}: completions per pass {mb} -> {new_mb}")
        print_fn(f"memory: out of memory at step {step}; retrying with {new_mb} completions per pass ({new_acc} "
                 f"passes a step; the group of {cfg.rl.num_generations} and the step's "
                 f"{cfg.rl.completions_per_step} completions unchanged) from the newest checkpoint")
    session = time.time() - t0
    M.release_training_layout(guarded)
    save_adapter(loaded, run.rl_adapter_dir)
    memory_log.record(run, "reinforce", "adapter saved")
    state = trainer.state
    history = summarize(state.log_history, items.reference)
    peak = round(peak_memory_gb(), 2)
    seconds = max([r["elapsed_s"] or 0 for r in history["rows"]] + [0])
    return {"backend": loaded.backend, "base_model": loaded.ref, "started_from": loaded.start["line"],
            "start": loaded.start, "generation": loaded.generation, "steps": state.global_step,
            "items": len(items.rows), "items_source": items.source, "items_dropped": items.dropped,
            "reference_answers": items.reference, **history, "decontamination": items.decontamination,
            "warnings": history["warnings"] + items.decontamination.get("warnings", []), "seconds": round(seconds, 1),
            "seconds_per_step": round(seconds / max(state.global_step, 1), 3), "peak_memory_gb": peak,
            "params": loaded.params, "resumed_from": resume,
            "sessions": {"this_session_steps": state.global_step - progress.start_step,
                         "this_session_seconds": round(session, 1)},
            "effective_settings": {"completions_per_step": cfg.rl.completions_per_step,
                                   "micro_batch_size": cfg.rl.micro_batch, "num_generations": cfg.rl.num_generations,
                                   "gradient_checkpointing": cfg.rl.gradient_checkpointing,
                                   "optimizer": cfg.rl.optimizer, "reward_weights": weights},
            "memory": {"plan": plan.to_dict() if plan is not None else None, "oom_retries": oom_log,
                       "measured_peak_gb": peak,
                       "estimate_vs_measured": (plan.estimate_gb, peak) if plan is not None else None},
            "adapter_dir": str(run.rl_adapter_dir)}


def save_adapter(loaded: Loaded, folder: Path) -> None:
    """The trained adapter alone (TRL adds a frozen 'ref' copy of the starting adapter when beta > 0: not shipped)."""
    shutil.rmtree(folder, ignore_errors=True)
    model = loaded.model
    names = ["default"] if "ref" in getattr(model, "peft_config", {}) else None
    model.save_pretrained(str(folder), **({"selected_adapters": names} if names else {}))
    loaded.tokenizer.save_pretrained(str(folder))
