"""What every config section shares: the error type, the strict base model, and path helpers."""
from __future__ import annotations

import importlib.util
from pathlib import Path

from pydantic import (
    BaseModel,
    ConfigDict,
)


class ConfigError(ValueError):
    """Invalid params or inputs; the runner exits 2 on it."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)



# ---------------------------------------------------------------- input checks (before any notebook runs)

LOCAL_DATA_SUFFIXES = tuple(base + comp for base in (".jsonl", ".ndjson", ".json", ".csv", ".tsv", ".parquet")
                            for comp in ("", ".gz", ".bz2", ".xz", ".zst"))


def is_local_path(source: str, base: Path | None = None) -> bool:
    """A path (has a data-file suffix or a folder part) as opposed to a hub dataset/model id."""
    if "://" in source:
        return False
    return (source.startswith((".", "/", "~")) or source.lower().endswith(LOCAL_DATA_SUFFIXES)
            or (Path(base or Path.cwd()) / source).exists())





SECRET_QUERY_WORDS = ("token", "sig", "key", "credential", "password", "secret", "auth")


def url_credentials(value: str) -> str | None:
    """What in a URL carries a credential (a user:token@ part, a ?token=... or signed query), or None. Such a URL
    would be written into config.yaml, the executed notebooks, the report, run.log and summary.json."""
    from urllib.parse import parse_qsl, urlsplit

    if not isinstance(value, str) or "://" not in value:
        return None
    url = urlsplit(value[4:] if value.startswith("git+") else value)
    if url.username or url.password:
        return "a user:token@ part"
    for k, _ in parse_qsl(url.query, keep_blank_values=True):
        if any(word in k.lower() for word in SECRET_QUERY_WORDS):
            return f"the query parameter {k!r}"
    return None


def model_folder(name_or_path: str) -> Path:
    """pkg://name -> the installed package's folder; anything else unchanged."""
    if name_or_path.startswith("pkg://"):
        spec = importlib.util.find_spec(name_or_path[len("pkg://"):])
        if spec is None or spec.origin is None:
            raise ConfigError(f"model package {name_or_path} is not installed")
        return Path(spec.origin).parent
    return Path(name_or_path)
