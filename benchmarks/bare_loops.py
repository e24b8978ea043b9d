"""The bare setups of benchmarks/train_speed.py (Unsloth or transformers + PEFT + bitsandbytes with TRL's
SFTTrainer, no project code in the loop), and the clock all setups are timed with."""
from __future__ import annotations

import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


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
