"""The params reference, generated from the schema: every key of RunConfig with its type, default and description.

The docs site builds its "Params reference" page from `markdown_reference()` at build time (docs/hooks.py), so the
page cannot disagree with the code; tests/test_docs.py checks that every field has a description and appears there.
"""
from __future__ import annotations

import enum
import html
import types
import typing
from dataclasses import dataclass

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from medqlora.config.run import RunConfig

# One line per section of a params file: what the section is for (the section classes carry no docstring).
SECTION_HELP = {
    "": "Top-level keys.",
    "model": "The base model and how it is loaded (4-bit, backend, sequence length).",
    "data": "Where the training data comes from, how it is read, split, checked and templated.",
    "lora": "The LoRA adapter trained on the 4-bit base.",
    "train": "The train stage: schedule, batches, checkpoints, packing, validation and early stopping.",
    "export": "The export stage: the formats written beside the adapter, their checks, and where the export is copied.",
    "eval": "The evaluate stage: held-out items, eval sets, generation and log-likelihood scoring.",
    "eval.sets[]": "One entry of `eval.sets`: a benchmark set scored apart from the held-out split.",
    "memory": "The memory budget, the plan made before loading, and out-of-memory recovery.",
    "rl": "The reinforce stage (GRPO after SFT). Absent: the run has no such stage.",
    "rl.rewards": "The weights of GRPO's rewards.",
}


@dataclass
class Key:
    key: str           # dotted key as written with --set (list items as `name[]`)
    section: str       # the section it belongs to ("" for top-level keys)
    type: str
    default: str
    description: str


def _type_name(ann) -> str:
    origin, args = typing.get_origin(ann), typing.get_args(ann)
    if origin is typing.Literal:
        return " | ".join(repr(a).replace("'", '"') for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin in (list, tuple, set):
        return f"list[{', '.join(_type_name(a) for a in args)}]"
    if origin is dict:
        return f"dict[{', '.join(_type_name(a) for a in args)}]"
    if ann is type(None):
        return "null"
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return "section"
    return getattr(ann, "__name__", str(ann))


def _default(field) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is PydanticUndefined:
        return "required"
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return repr(value).replace("'", '"') if isinstance(value, (str, list, dict)) else str(value)


def _submodels(ann) -> list[tuple[type[BaseModel], bool]]:
    """The schema sections inside an annotation: (class, is a list item)."""
    found = []
    if isinstance(ann, type) and issubclass(ann, BaseModel):
        return [(ann, False)]
    origin = typing.get_origin(ann)
    for arg in typing.get_args(ann):
        if isinstance(arg, type) and issubclass(arg, BaseModel):
            found.append((arg, origin in (list, tuple, set)))
    return found


def schema_keys(model: type[BaseModel] = RunConfig, prefix: str = "", section: str = "") -> list[Key]:
    """Every leaf key of the schema, in the schema's order; sections are walked, never listed as keys."""
    keys = []
    for name, field in model.model_fields.items():
        subs = _submodels(field.annotation)
        if subs:
            sub, is_list = subs[0]
            path = f"{prefix}{name}" + ("[]" if is_list else "")
            keys += schema_keys(sub, path + ".", path)
            continue
        keys.append(Key(prefix + name, section, _type_name(field.annotation), _default(field),
                        " ".join((field.description or "").split())))
    return keys


def schema_sections(model: type[BaseModel] = RunConfig, prefix: str = "") -> list[str]:
    """Every section of the schema as written in a params file (list items as `name[]`), top level as ""."""
    found = [""] if not prefix else []
    for name, field in model.model_fields.items():
        for sub, is_list in _submodels(field.annotation)[:1]:
            path = f"{prefix}{name}" + ("[]" if is_list else "")
            found += [path] + schema_sections(sub, path + ".")
    return found


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "&#124;") or " "


def _code(text: str) -> str:
    """Inline code in a table cell: raw HTML, since a | inside a markdown code span would split the cell."""
    return f"<code>{_cell(text)}</code>"


def markdown_reference() -> str:
    """The params reference page: one table per section, every key with its type, default and description."""
    keys = schema_keys()
    out = ["# Params reference", "",
           "Generated from the pydantic schema (`medqlora/config/`, one module per section) when the docs are built, "
           "so it lists every key the code accepts. Unknown keys are rejected; `python runner.py --check` prints the "
           "resolved values of a params file, and `--set key.sub=value` overrides any key below.", ""]
    for section in schema_sections():
        rows = [k for k in keys if k.section == section]
        if not rows:
            continue
        out += [f"## {section or 'top level'}", "", SECTION_HELP.get(section, ""), "",
                "| key | type | default | description |", "|---|---|---|---|"]
        out += [f"| `{k.key}` | {_code(k.type)} | {_code(k.default)} | {_cell(k.description)} |" for k in rows]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":  # python -m medqlora.config.reference > params-reference.md
    print(markdown_reference())
