"""One self-contained HTML file per run: its executed stage notebooks, in order, under one table of contents, so
a reviewer opens a single file (figures are embedded; no server, no Jupyter)."""
from __future__ import annotations

from pathlib import Path

from medqlora.core.rundir import NOTEBOOKS, RunDir, read_json
from medqlora.run.colab import BOOTSTRAP, CHECK


def combined_notebook(run: RunDir, title: str):
    """The executed notebooks of a run joined into one, each under its stage heading; a missing or failed stage
    is said, not skipped silently."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    toc = []
    cells = []
    for stage in run.stages():  # reinforce only where the run has it
        path = run / NOTEBOOKS[stage]
        if not path.is_file():
            toc.append(f"- {stage}: not run")
            continue
        part = nbformat.read(str(path), as_version=4)
        failed = any(o.get("output_type") == "error" for c in part.cells for o in c.get("outputs", []))
        toc.append(f"- [{stage}](#stage-{stage})" + (" (failed: see its error below)" if failed else ""))
        cells.append(nbformat.v4.new_markdown_cell(f'<a id="stage-{stage}"></a>\n\n# Stage: {stage}'))
        cells += [c for c in part.cells if not {"parameters", "injected-parameters"} & set(c.get("metadata", {}).get(
                  "tags", [])) and c.source not in (BOOTSTRAP, CHECK)]
    from medqlora.run import headline

    summary = read_json(run / "summary.json") if (run / "summary.json").is_file() else {}
    top = headline.markdown(headline.build(run, summary.get("stages")))  # what happened, before any stage
    status = f"**{summary['status']}**" + (f" · model {summary['model']}" if summary.get("model") else "") + "\n\n" \
        if summary.get("status") else ""
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\n{status}{top}\n<details><summary>Contents</summary>\n\n"
                                              + "\n".join(toc) + "\n\n</details>")] + cells
    nb.metadata = {"language_info": {"name": "python"}}
    return nb


def write_html(nb, out: Path) -> Path:
    from nbconvert import HTMLExporter

    html, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


def run_report(run: RunDir, title: str | None = None) -> Path:
    """reports/<run_id>/report.html from the run's executed notebooks."""
    return write_html(combined_notebook(run, title or f"Run {run.path.name}"), run / "report.html")


def notebook_html(ipynb: Path) -> Path:
    """An executed notebook's HTML export beside it (the comparison report)."""
    import nbformat

    return write_html(nbformat.read(str(ipynb), as_version=4), ipynb.with_suffix(".html"))
