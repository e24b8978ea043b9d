"""The formats besides the adapter (export.formats): the merged 16-bit model and a GGUF file with its Ollama
Modelfile, each made into the export folder being assembled and checked; which checks failed and by how much;
the table the export notebook shows."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from medqlora.config import RunConfig
from medqlora.core import memory_log
from medqlora.core.rundir import RunDir
from medqlora.core.system import human_size

# Where each format lies inside the export folder.
FOLDER = {"merged_16bit": "merged", "gguf": "gguf"}


def check_prompts(run: RunDir, n: int = 3) -> list[str]:
    """A few held-out prompts, exactly as evaluation sends them, for the merged and GGUF equality checks."""
    lines = [line for line in run.eval_items.read_text().splitlines() if line.strip()] if run.eval_items.is_file() else []
    return [json.loads(line)["prompt"] for line in lines[:n]] or ["What is the first-line treatment of anaphylaxis?"]


def sampling_for_ollama(cfg: RunConfig) -> dict:
    """The evaluation's generation settings, as Ollama PARAMETER lines (greedy unless eval.temperature says so)."""
    e = cfg.eval
    return {"temperature": e.temperature, "top_p": e.top_p, "repeat_penalty": e.repetition_penalty,
            "num_predict": e.max_new_tokens}


def extra_formats(cfg: RunConfig, run: RunDir, tmp: Path) -> dict:
    """merged_16bit and gguf (export.formats) into the export folder being assembled, each with its check.

    The merged model is the GGUF's source, so asking for gguf alone merges into a scratch folder, and checks that
    merge too (a GGUF read back equal to a wrong merge is still wrong). A GGUF that cannot be made here (a K-quant
    without llama-cpp-python, another architecture) is reported and the other formats still exported."""
    from medqlora.export import gguf as gguf_export
    from medqlora.export import gguf_meta
    from medqlora.export import merge as MG
    from medqlora.training import model as M

    wanted = cfg.export.formats
    out: dict = {}
    if "merged_16bit" not in wanted and "gguf" not in wanted:
        return out
    backend = M.resolve_backend(cfg.model)
    ref, _ = M.resolve_model(cfg.model)
    prompts = check_prompts(run)
    merged_dir = tmp / "merged" if "merged_16bit" in wanted else run / "merged.scratch"
    shutil.rmtree(merged_dir, ignore_errors=True)
    try:
        merged = MG.merge_to(cfg, ref, str(tmp / "adapter"), merged_dir, backend)
        memory_log.record(run, "export", "merged")
        merged["check"] = MG.check_merged(cfg, ref, str(tmp / "adapter"), str(merged_dir), prompts, backend)
        memory_log.record(run, "export", "merged checked")
        if "merged_16bit" in wanted:
            out["merged_16bit"] = {**merged, "dir": str(run.export_dir / "merged")}  # where it lands after the rename
        if "gguf" in wanted:
            q = cfg.export.gguf_quant
            target = tmp / "gguf" / f"{cfg.run_name}-{q}.gguf"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                pre = gguf_export.tokenizer_pre(cfg.model)
                g = gguf_export.write_gguf(merged_dir, target, q, cfg.run_name, pre,
                                           gguf_meta.general_metadata(cfg.model, cfg.run_name))
            except gguf_export.GGUFUnsupported as e:
                shutil.rmtree(target.parent, ignore_errors=True)
                out["gguf"] = {"error": str(e)}
            else:
                try:
                    # a GGUF base names its own pre-tokenizer: the export must say the same (source_pre)
                    g["check"] = gguf_export.check_gguf(target, merged_dir, prompts, q,
                                                        source_pre=pre if cfg.model.gguf_file else None)
                except Exception as e:  # noqa: BLE001  (the file is written; a read-back that cannot run is a failed check)
                    g["check"] = {"passed": False, "error": f"could not read it back: {type(e).__name__}: {e}"}
                if "merged_16bit" not in wanted:
                    g["merge_check"] = merged["check"]
                (target.parent / "Modelfile").write_text(gguf_meta.modelfile(
                    target.name, merged_dir, cfg.data.template, cfg.data.system_prompt, sampling_for_ollama(cfg)))
                memory_log.record(run, "export", "gguf checked")
                out["gguf"] = {**g, "file": str(run.export_dir / "gguf" / target.name),
                               "modelfile": str(run.export_dir / "gguf" / "Modelfile")}
    finally:
        if merged_dir.parent != tmp:
            shutil.rmtree(merged_dir, ignore_errors=True)
    return out


def _merged_problems(c: dict) -> list[str]:
    if c.get("passed"):
        return []
    return [f"logits rel. RMSE against the adapter model {c['logits_rel_rmse']:.2e} > tolerance {c['tolerance']:.2e} "
            f"(top-1 agreement {c['top1_agreement']:.1%}, greedy answers identical on {c['identical']}/{c['prompts']})"]


def _gguf_problems(c: dict) -> list[str]:
    if c.get("passed"):
        return []
    if "error" in c:
        return [c["error"]]
    out = []
    if c["logits_rel_rmse"] > c["tolerance"]:
        out.append(f"logits rel. RMSE against the merged model {c['logits_rel_rmse']:.2e} > tolerance "
                   f"{c['tolerance']:.0e} (top-1 agreement {c['top1_agreement']:.1%})")
    if c["tokenizer_same_ids"].split("/")[0] != c["tokenizer_same_ids"].split("/")[1]:
        out.append(f"tokenizer gives the same ids on only {c['tokenizer_same_ids']} prompts")
    if c["metadata_differs"]:
        out.append(f"architecture metadata differs (GGUF, merged): {c['metadata_differs']}")
    if not c.get("vocab_ok", True):
        v = c["vocab"]
        out.append(f"{v['tokens']} tokens but {v['embedding_rows']} embedding rows (output {v['output_rows']}): "
                   "llama.cpp refuses such a file")
    return out


def failed_checks(formats: dict) -> dict[str, str]:
    """{format: which check failed and by how much} for every written format whose check did not pass. A GGUF
    made from a merge whose check failed fails with it."""
    out = {}
    merged = formats.get("merged_16bit")
    if merged and _merged_problems(merged["check"]):
        out["merged_16bit"] = "merged_16bit check FAILED: " + "; ".join(_merged_problems(merged["check"]))
    g = formats.get("gguf")
    if g and "error" not in g:
        problems = _gguf_problems(g["check"])
        source = merged["check"] if merged else g.get("merge_check")
        if source is not None and _merged_problems(source):
            problems.append("made from a merged model whose check failed: " + "; ".join(_merged_problems(source)))
        if problems:
            out["gguf"] = f"gguf ({g['quant']}) check FAILED: " + "; ".join(problems)
    return out


def formats_table(result: dict):
    """One row per exported format: where, how big, how it was made and how its check came out."""
    import pandas as pd

    f = result.get("formats", {})
    rejected = result.get("rejected", {})
    rows = [("lora", result["adapter_dir"], None, "PEFT adapter", f"read back: rank {result['adapter']['rank']}, "
             f"finite, LoRA B trained {result['adapter']['lora_B_trained']}")]
    if "merged_16bit" in f:
        m, c = f["merged_16bit"], f["merged_16bit"]["check"]
        grid = f", its own 16-bit rounding {c['rounding_rel_rmse']:.2e}" if c.get("rounding_rel_rmse") else ""
        rows.append(("merged_16bit", rejected.get("merged_16bit", m["dir"]), m["bytes"], f"{m['method']}, {m['dtype']}",
                     f"{'PASSED' if c['passed'] else 'FAILED'}: logits rel. RMSE {c['logits_rel_rmse']:.2e} against "
                     f"the adapter model (tolerance {c['tolerance']:.2e}"
                     + (f"; LoRA effect {c['base_vs_adapter_rel_rmse']:.2e}{grid}" if "base_vs_adapter_rel_rmse"
                        in c else "") + f"), top-1 agreement {c['top1_agreement']:.1%}; greedy answers identical on "
                     f"{c['identical']}/{c['prompts']} prompts"))
    if "gguf" in f:
        g = f["gguf"]
        c = g.get("check", {})
        where = rejected.get("gguf", g.get("file"))
        if "error" in g:
            rows.append(("gguf", "not written", None, "", g["error"]))
        elif "error" in c:  # written, but the read-back could not run
            rows.append(("gguf", where, g["bytes"], g["quant"], f"FAILED: {c['error']}"))
        else:
            v = c.get("vocab", {})
            rows.append(("gguf", where, g["bytes"], f"{g['quant']}, tokenizer pre {g['tokenizer_pre']}, "
                         f"{g.get('made_by', 'gguf package writer')}",
                         f"{'PASSED' if c['passed'] else 'FAILED'}: logits rel. RMSE {c['logits_rel_rmse']:.2e} "
                         f"(tolerance {c['tolerance']:.0e}), top-1 agreement {c['top1_agreement']:.1%}, tokenizer "
                         f"same ids {c['tokenizer_same_ids']}, {v.get('tokens')} tokens = embedding rows "
                         f"{v.get('embedding_rows')}: {c.get('vocab_ok')}, metadata "
                         f"{'same' if not c['metadata_differs'] else c['metadata_differs']}"))
        if "modelfile" in g:
            rows.append(("ollama", g["modelfile"] if "gguf" not in rejected else "not published", None,
                         "Modelfile beside the GGUF", "chat template and stop tokens as trained"))
    df = pd.DataFrame(rows, columns=["format", "where", "size", "made by", "check"])
    df["size"] = df["size"].map(human_size)
    return df.style.hide(axis="index").set_properties(**{"text-align": "left", "white-space": "pre-wrap"})
