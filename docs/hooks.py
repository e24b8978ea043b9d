"""MkDocs hooks (mkdocs.yml: hooks): pages generated at build time, so that they cannot disagree with their source.

- reference/params.md: the params reference, from the pydantic schema (medqlora.config.reference.markdown_reference).
- benchmarks.md: BENCHMARKS.md at the repository's root, with its links into docs/ made relative to the site.
"""
from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parent.parent


def benchmarks_page() -> str:
    text = (ROOT / "BENCHMARKS.md").read_text()
    return re.sub(r"\]\(docs/", "](", text)


def _generated(path: str, content: str, config) -> File:
    return File.generated(config, path, content=content)


def on_files(files, config):
    from medqlora.config.reference import markdown_reference

    for path, content in (("reference/params.md", markdown_reference()), ("benchmarks.md", benchmarks_page())):
        if files.get_file_from_path(path) is not None:
            files.remove(files.get_file_from_path(path))
        files.append(_generated(path, content, config))
    return files
