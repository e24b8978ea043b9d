"""What is wrong with a local model folder's config.json, said before anyone is sent to the hub for a token: a
broken local file used to read as 'A gated hub model needs HF_TOKEN'."""
from __future__ import annotations

import json
from pathlib import Path


def local_config_problem(ref: str) -> str | None:
    """Why transformers cannot read the config of `ref` when it is a local folder (None: not a local folder, or no
    fault found in config.json). Called after a load failed: transformers also finds a model type in the folder's
    name when config.json has none, so a missing model_type alone is not refused up front."""
    folder = Path(ref).expanduser()
    if not folder.is_dir():
        return None
    path = folder / "config.json"
    if not path.is_file():
        return (f"{folder} has no config.json: model.name_or_path must name a model folder as save_pretrained writes "
                "it (config.json beside the weights and tokenizer files)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        return (f"{path} is not valid JSON ({e.msg} at line {e.lineno}, column {e.colno}): fix the file or copy the "
                "model folder again")
    except (OSError, UnicodeDecodeError) as e:
        return f"{path} cannot be read ({type(e).__name__}: {e}): check its permissions and encoding (UTF-8)"
    if not isinstance(raw, dict):
        return (f"{path} holds a JSON {type(raw).__name__}, not an object of model settings: copy the model folder "
                "again")
    if not raw.get("model_type"):
        return (f"{path} has no \"model_type\" (e.g. \"llama\"), which transformers needs to pick the model class: "
                "add it, or save the model again with save_pretrained")
    return None
