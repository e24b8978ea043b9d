"""Params YAML -> RunConfig: --set overrides, paths made absolute, errors that name the key and the fix."""
from __future__ import annotations

import os
from pathlib import Path

import yaml
from pydantic import (
    ValidationError,
)

from medqlora.config.base import ConfigError, is_local_path
from medqlora.config.run import RunConfig


def _format_errors(err: ValidationError, origin: str) -> str:
    lines = [f"invalid params in {origin}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - {key}: unknown key; remove it or check its spelling "
                         "(README 'Params reference' lists every key)")
        elif e["type"] == "missing":
            lines.append(f"  - {key}: required; add it")
        else:
            got = e.get("input")
            got = "" if isinstance(got, dict) else f" (got {got!r})"
            lines.append(f"  - {key}: {e['msg']}{got}")
    return "\n".join(lines)


# Keys whose value is a path: taken as written (a '#', ': ' or a number in a file name is part of the name, not YAML),
# except null / none and a value in quotes.
PATH_KEYS = {"data.source", "data.eval_source", "model.name_or_path", "model.cache_dir", "export.destination",
             "rl.source"}


def parse_override(item: str) -> tuple[list[str], object]:
    """'train.epochs=2' -> (['train', 'epochs'], 2); the value is read as YAML, except for a path (PATH_KEYS)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value, e.g. --set train.epochs=2")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {item!r}: empty key")
    if ".".join(parts) in PATH_KEYS and raw.strip() and raw.strip().lower() not in ("null", "none", "~") \
            and not (len(raw.strip()) > 1 and raw.strip()[0] == raw.strip()[-1] and raw.strip()[0] in "'\""):
        return parts, raw.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"--set {item!r}: value is not valid YAML ({e})") from e
    return parts, value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    for item in overrides:
        parts, value = parse_override(item)
        node = raw
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p} is not a section")
            node = nxt
        node[parts[-1]] = value
    return raw


def read_params(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}; pass an existing YAML (see params/)")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model:, data:, ...) at the top level")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """Read a params YAML, apply --set overrides, validate. Raises ConfigError.

    Relative paths are made absolute here: those written in the params file against the file's own folder
    (so a params file and its data travel together, and the runner works from any folder), those given
    with --set against the current folder (where the user typed them)."""
    path = Path(path)
    raw = _absolute_paths(read_params(path), path.resolve().parent)
    file_eval = (raw.get("data") or {}).get("eval_source") if isinstance(raw.get("data"), dict) else None
    raw = _absolute_paths(apply_overrides(raw, overrides or []), Path.cwd())
    keys = {".".join(parse_override(o)[0]) for o in overrides or []}
    if file_eval and "data.source" in keys and "data.eval_source" not in keys:
        # The params file's eval set belongs to its own training data: a new source gets its own held-out split.
        import warnings

        raw["data"]["eval_source"] = None
        warnings.warn(f"data.source was changed with --set, so the held-out items now come from a hash split of it "
                      f"(data.eval_fraction), not from the params file's data.eval_source {file_eval}; give "
                      "--set data.eval_source=FILE to evaluate on a file of your own", UserWarning, stacklevel=2)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, str(path))) from None


PATH_HELP = ("a relative path in a params file is read from that file's folder, one given with --set from the "
             "folder you run in")


def _looks_local(section: str, key: str, v: str, base: Path) -> bool:
    if "://" in v:
        return False
    if section in ("data", "rl"):
        return is_local_path(v, base)
    if section == "model" and key == "name_or_path":  # a hub id (org/name) unless it is clearly a path
        return v.startswith((".", "/", "~")) or (base / v).exists()
    return True  # cache_dir, export.destination: always paths


def _absolute_paths(raw: dict, base: Path) -> dict:
    sets = (raw.get("eval") or {}).get("sets") if isinstance(raw.get("eval"), dict) else None
    for item in sets if isinstance(sets, list) else []:
        if isinstance(item, dict) and isinstance(item.get("source"), str) and _looks_local("data", "source",
                                                                                             item["source"], base):
            item["source"] = _absolute(base, item["source"])
    for section, key in (("data", "source"), ("data", "eval_source"), ("model", "name_or_path"),
                         ("model", "cache_dir"), ("export", "destination"), ("rl", "source")):
        node = raw.get(section)
        v = node.get(key) if isinstance(node, dict) else None
        if isinstance(v, str) and v and _looks_local(section, key, v, base):
            node[key] = _absolute(base, v)
    return raw


def _absolute(base: Path, v: str) -> str:
    """The path made absolute without following symlinks: a link keeps the name it was given (its suffix says the
    format; a Hugging Face cache blob has none), and a symlink loop is left for the data check to name."""
    return os.path.normpath(os.path.join(base, os.path.expanduser(v)))


def save_config(cfg: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
