"""The third column: when both the train and the reinforce stage ran, the exported adapter is GRPO's, and the model
after SFT (the train stage's adapter, run/adapter) answers the same items too, with the same prompts and decoding.
Each change gets its paired interval: base -> after SFT, after SFT -> after RL (base -> after RL is the evaluate
stage's own 'changes'). The SFT adapter is loaded beside the exported one and switched on for its pass; with
eval.merge the exported adapter is merged into the weights, so the column is not measured (said, with the fix)."""
from __future__ import annotations

import json

from medqlora.evaluation.scoring import intervals, item_scores, prompt_opens_think, score


def sft_adapter(cfg, run) -> str | None:
    """The train stage's adapter, where the exported one is the reinforce stage's (both stages ran)."""
    if cfg.rl is None or not run.result_path("reinforce").is_file():
        return None
    if not (run.adapter_dir / "adapter_config.json").is_file() or not run.result_path("train").is_file():
        return None
    return str(run.adapter_dir)


def answer_after_sft(model, adapter: str, chosen: list, generated, answer_fn, print_fn=print) -> dict[str, list]:
    """The after-SFT answers of each set's generated items: the SFT adapter loaded as 'after_sft', switched on for the
    pass, then the exported one again. answer_fn(items, label) generates as the other passes do."""
    active = model.active_adapter if isinstance(model.active_adapter, str) else model.active_adapters[0]
    model.load_adapter(adapter, adapter_name="after_sft")
    model.set_adapter("after_sft")
    try:
        out = {}
        for name, items, _ in chosen:
            print_fn(f"== {name}: after SFT (the train stage's adapter), {len(generated(items))} items")
            out[name] = answer_fn(generated(items), "after SFT") if generated(items) else []
    finally:
        model.set_adapter(active)
        model.delete_adapter("after_sft")
    return out


def three_way(run, name: str, gen_items: list[dict], items: list[dict], answers: dict[str, list[dict]],
              sft: list[dict]) -> dict:
    """After-SFT metrics on the generated items and the two paired changes around it; its answers beside the others'
    in eval/answers_after_sft[_<name>].jsonl."""
    opened = prompt_opens_think(items)
    per = {"base": item_scores(gen_items, answers["base"], opened), "sft": item_scores(gen_items, sft, opened),
           "rl": item_scores(gen_items, answers["finetuned"], opened)}
    metrics = score(gen_items, sft, opened, per["sft"])
    metrics["n_freetext"] = sum(it["kind"] == "freetext" for it in gen_items)
    metrics["n_choice"] = len(gen_items) - metrics["n_freetext"]
    path = run / "eval" / ("answers_after_sft.jsonl" if name == "held-out" else f"answers_after_sft_{name}.jsonl")
    path.write_text("".join(json.dumps({"id": it["id"], "question": it["question"], "after_sft": a["text"]},
                                       ensure_ascii=False) + "\n" for it, a in zip(gen_items, sft)))
    return {"adapter": str(run.adapter_dir), "metrics": {"sft": metrics},
            "changes": {"sft": intervals(gen_items, answers["base"], sft, opened, (per["base"], per["sft"])),
                        "rl": intervals(gen_items, sft, answers["finetuned"], opened, (per["sft"], per["rl"]))},
            "answers": str(path)}


def rl_step(st: dict) -> dict:
    """A set's RL step as the headline reads a set: after SFT in the base column, after RL in the fine-tuned one."""
    three = st["after_sft"]
    return {"metrics": {"base": three["metrics"]["sft"], "finetuned": (st.get("metrics") or {}).get("finetuned")},
            "changes": three["changes"]["rl"]}
