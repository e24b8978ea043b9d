"""Ask a finished run's model new questions, without rerunning the chain: base and fine-tuned side by side.

    python -m medqlora.evaluation.ask reports/<run_id> "What is the first-line treatment of uncomplicated hypertension?" ...

It loads the run's config.yaml and exported adapter, builds each prompt with the run's template and system prompt,
and answers with the run's generation settings (eval.max_new_tokens, temperature, top_p, repetition_penalty).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path


@contextlib.contextmanager
def quiet_libraries():
    """Library progress bars, info lines and warnings kept off the terminal (transformers' 'Loading weights' bars,
    peft and bitsandbytes warnings, whatever C code writes to stderr); shown after all if the block fails."""
    import logging
    import warnings

    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+") as caught, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.disable(logging.WARNING)
        os.dup2(caught.fileno(), 2)
        try:
            yield
        except BaseException:
            sys.stderr.flush()
            os.dup2(saved, 2)
            caught.seek(0)
            sys.stderr.write(caught.read()[-5000:])
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            logging.disable(logging.NOTSET)
            hf_logging.set_verbosity(verbosity)
            hf_logging.enable_progress_bar()


def ask(run_dir: str | Path, questions: list[str], max_new_tokens: int | None = None, print_fn=print) -> list[dict]:
    from medqlora.config import load_config
    from medqlora.core.rundir import RunDir

    run = RunDir(run_dir)
    cfg = load_config(run.config_path)
    if max_new_tokens:
        cfg.eval.max_new_tokens = max_new_tokens
    run.result("export")  # fails clearly when the export stage has not run
    adapter = run.export_dir / "adapter"
    t0 = time.time()

    def step(what: str) -> None:  # progress, at once: loading alone takes a minute on a CPU
        print_fn(f"[{time.time() - t0:5.1f} s] {what}")
        sys.stdout.flush()

    step(f"loading {cfg.model.name_or_path} in {'4-bit' if cfg.model.load_in_4bit else 'full precision'} with the "
         f"adapter {adapter} ...")
    with quiet_libraries():
        from medqlora.evaluation.generate import answer_queries, sampling
        from medqlora.training import model as M

        backend = M.resolve_backend(cfg.model)
        model, tok = M.load_with_adapter(M.resolve_model(cfg.model)[0], str(adapter), cfg.model, backend)
    n = f"{len(questions)} question{'s' if len(questions) > 1 else ''}"
    step(f"loaded ({backend}); the base model answers {n} (up to {cfg.eval.max_new_tokens} new tokens) ...")
    kw = {"oom_retries": cfg.memory.oom_retries, "template": cfg.data.template, "sampling_kw": sampling(cfg)}
    with quiet_libraries(), model.disable_adapter():
        base = answer_queries(cfg, model, tok, questions, kw)
    step(f"the fine-tuned model answers {n} ...")
    with quiet_libraries():
        tuned = answer_queries(cfg, model, tok, questions, kw)
    step("done\n")
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
