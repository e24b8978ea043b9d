"""Ask a finished run's model new questions, without rerunning the chain: base and fine-tuned side by side.

    python -m medqlora.evaluation.ask reports/<run_id> "What is the first-line treatment of uncomplicated hypertension?" ...

It loads the run's config.yaml and exported adapter, builds each prompt with the run's template and system prompt,
and answers with the run's generation settings (eval.max_new_tokens, temperature, top_p, repetition_penalty).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def ask(run_dir: str | Path, questions: list[str], max_new_tokens: int | None = None, print_fn=print) -> list[dict]:
    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir
    from medqlora.evaluation.generate import answer_queries, sampling
    from medqlora.training import model as M

    run = RunDir(run_dir)
    cfg = load_config(run.config_path)
    if max_new_tokens:
        cfg.eval.max_new_tokens = max_new_tokens
    export = run.result("export")
    backend = M.resolve_backend(cfg.model)
    model, tok = M.load_with_adapter(M.resolve_model(cfg.model)[0], export["adapter_dir"], cfg.model, backend)
    kw = {"oom_retries": cfg.memory.oom_retries, "template": cfg.data.template, "sampling_kw": sampling(cfg)}
    with model.disable_adapter():
        base = answer_queries(cfg, model, tok, questions, kw)
    tuned = answer_queries(cfg, model, tok, questions, kw)
    answers = [{"question": q, "base": b, "finetuned": f} for q, b, f in zip(questions, base, tuned)]
    for a in answers:
        print_fn(f"Q: {a['question']}\n  base:       {a['base']}\n  fine-tuned: {a['finetuned']}\n")
    return answers


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m medqlora.evaluation.ask", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a run folder whose export stage finished (reports/<run_id>)")
    p.add_argument("questions", nargs="+", help="one or more questions")
    p.add_argument("--max-new-tokens", type=int, help="answer length (default: the run's eval.max_new_tokens)")
    a = p.parse_args(argv)
    if not (Path(a.run_dir) / "config.yaml").is_file():
        print(f"error: {a.run_dir} is not a run folder (no config.yaml)", file=sys.stderr)
        return 2
    ask(a.run_dir, a.questions, a.max_new_tokens)
    return 0


if __name__ == "__main__":
    sys.exit(main())
