"""The documentation: every command in a ```bash block of README.md, BENCHMARKS.md and docs/ is run here in a cheap
form (`make -n`, `runner.py ... --check`, `verify` on a fixture export, `pytest --collect-only`), or its block is
marked right above with `<!-- needs: gpu -->` (or cloud, long, run, network: what it needs that a CPU test does
not have). An unmarked command this file does not know how to run fails. Marked or not, the scripts, params files
and Makefile targets a command names must exist.

And the params reference, generated from the schema (medqlora/config/reference.py, built into the docs site by
docs/hooks.py): every field has a description, and every field of the schema (read from pydantic's JSON schema, not
from the walk that makes the page) is on the page."""
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import ROOT

NEEDS = {
    "gpu": "a CUDA GPU (and, for the GPU params files, the model hub)",
    "cloud": "a cloud account: gcloud, a bucket, credentials",
    "long": "more than a few minutes on a CPU (a full run, a build from source)",
    "run": "an earlier run's folder in reports/ (<run_id>)",
    "network": "a package registry or the model hub",
}
FENCE = re.compile(r"^```bash\n(.*?)^```", re.S | re.M)
MARKER = re.compile(r"<!-- needs: ([a-z, ]+) -->")
# Files a documented command names as an example of the user's own, and what the test puts there instead
PLACEHOLDER_FILES = {"my_data.jsonl": "data/medqa_train.jsonl"}


def doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "docs").rglob("*.md"))]


@dataclass
class Block:
    where: str               # file:line
    needs: list[str]         # from the marker above the block; [] when unmarked
    commands: list[list[str]]


def split_commands(body: str) -> list[list[str]]:
    """One argv per command: continuation lines joined, comments and blank lines left out."""
    text = re.sub(r"\\\n\s*", " ", body)
    out = []
    for line in text.splitlines():
        for part in re.split(r"\s(?:&&|;)\s", line):  # `a && b` and `a; b` are two commands
            argv = shlex.split(part, comments=True)
            if argv:
                out.append(argv)
    return out


def bash_blocks(path: Path) -> list[Block]:
    text = path.read_text()
    blocks = []
    for m in FENCE.finditer(text):
        above = text[:m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marker = MARKER.fullmatch(above)
        needs = [n.strip() for n in marker.group(1).split(",")] if marker else []
        line = text[:m.start()].count("\n") + 1
        blocks.append(Block(f"{path.relative_to(ROOT)}:{line}", needs, split_commands(m.group(1))))
    return blocks


def all_blocks() -> list[Block]:
    return [b for f in doc_files() for b in bash_blocks(f)]


def is_python(argv: list[str]) -> bool:
    return bool(argv) and re.fullmatch(r"(\.venv/bin/)?python3?", argv[0]) is not None


def cheap_form(argv: list[str]) -> str | None:
    """How this file runs a command without a GPU, a cloud or a run folder: 'make', 'runner', 'verify', 'pytest';
    None where it does not know (the block must then be marked)."""
    if argv[0] == "make" and len(argv) == 2:
        return "make"
    if is_python(argv) and argv[1:2] == ["runner.py"]:
        args = argv[2:]
        if args[:1] == ["compare"] or any(a in ("--resume", "--rerun", "--prepare-only") for a in args):
            return None  # an earlier run's folder, or a bucket
        if any("<" in a or "BUCKET" in a for a in args):
            return None
        return "runner"
    if is_python(argv) and argv[1:4] == ["-m", "medqlora.export", "verify"]:
        return "verify"
    if argv[0] == "pytest" or (is_python(argv) and argv[1:3] == ["-m", "pytest"]):
        return "pytest"
    if is_python(argv) and argv[1:] == ["-m", "medqlora.config.reference"]:
        return "reference"
    return None


def test_docs_have_commands_and_markers_are_known():
    blocks = all_blocks()
    assert len(blocks) >= 8, [b.where for b in blocks]
    for b in blocks:
        assert set(b.needs) <= set(NEEDS), f"{b.where}: unknown needs {b.needs}; known: {sorted(NEEDS)}"
        assert b.commands, f"{b.where}: an empty bash block"


def test_every_command_is_run_here_or_marked():
    unknown = [f"{b.where}: {shlex.join(c)}" for b in all_blocks() if not b.needs for c in b.commands
               if cheap_form(c) is None]
    assert not unknown, ("commands that no test runs: run them in tests/test_docs.py or mark their block with "
                         f"<!-- needs: {'|'.join(NEEDS)} -->:\n" + "\n".join(unknown))


def named_files(argv: list[str]) -> list[str]:
    """The repository's files a command names: the script it runs and params files (placeholders left out)."""
    names = []
    if is_python(argv) and len(argv) > 1 and argv[1].endswith(".py"):
        names.append(argv[1])
    if argv[0] in ("bash", "sh") and len(argv) > 1:
        names.append(argv[1])
    names += [a for a in argv[1:] if re.fullmatch(r"(params|notebooks|tests|benchmarks)/[\w./-]+", a)]
    return [n for n in names if not n.startswith("/") and "<" not in n]


def test_files_the_commands_name_exist():
    """Marked or not: a renamed script (benchmarks/gpu/*.sh), a params file or a test file that the docs still name."""
    missing = [f"{b.where}: {n}" for b in all_blocks() for c in b.commands for n in named_files(c)
               if not (ROOT / n).exists()]
    assert not missing, missing


def commands_of(kind: str, marked: bool = False) -> list[list[str]]:
    return [c for b in all_blocks() if marked or not b.needs for c in b.commands if cheap_form(c) == kind]


def test_make_targets_exist():
    """Every documented `make X` (marked ones too: the target must exist) as a dry run: make -n."""
    targets = sorted({c[1] for c in commands_of("make", marked=True)})
    assert {"run", "test", "docs"} <= set(targets), targets
    for t in targets:
        r = subprocess.run(["make", "-n", t], cwd=ROOT, capture_output=True, text=True)
        assert r.returncode == 0 and r.stdout.strip(), f"make -n {t}: {r.stderr}"


RUN_CHECKS = """
import contextlib, io, json, sys
from medqlora.run.cli import main
out = []
for argv in json.loads(sys.argv[1]):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(argv)
    out.append({"argv": argv, "code": code, "output": buf.getvalue()})
print("RESULTS" + json.dumps(out))
"""


def test_runner_commands_validate(tmp_path):
    """Each documented runner.py command, as written plus --check (validate and print the resolved config, run
    nothing), in one process. It runs in a folder where the params files and data are where a user's checkout has
    them, and a user's own data file (my_data.jsonl) is the bundled sample."""
    cmds = commands_of("runner")
    assert cmds, "the docs show runner.py commands"
    for name in ("params", "data"):
        (tmp_path / name).symlink_to(ROOT / name)
    for name, src in PLACEHOLDER_FILES.items():
        (tmp_path / name).symlink_to(ROOT / src)
    argvs = [c[2:] + ["--check"] for c in cmds]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", RUN_CHECKS, json.dumps(argvs)], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=600)
    assert "RESULTS" in r.stdout, r.stderr[-3000:]
    for res in json.loads(r.stdout.split("RESULTS", 1)[1]):
        assert res["code"] == 0 and ": valid" in res["output"], (res["argv"], res["output"][-2000:])


def test_verify_command_on_an_export(tmp_path):
    """`python -m medqlora.export verify <export>` as documented, on a small export with its manifest: it passes,
    then fails (exit 1) once a file changed."""
    from medqlora.export.manifest import MANIFEST, build_manifest

    cmds = commands_of("verify", marked=True)
    assert cmds, "the docs show the verify command"
    export = tmp_path / "export"
    (export / "adapter").mkdir(parents=True)
    (export / "adapter" / "adapter_config.json").write_text('{"r": 16}')
    (export / "config.yaml").write_text("run_name: x\n")
    (export / MANIFEST).write_text(json.dumps(build_manifest(export)))
    for c in cmds:
        argv = [sys.executable] + c[1:-1] + [str(export)]
        ok = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        assert ok.returncode == 0 and "verified" in ok.stdout, ok.stdout + ok.stderr
    (export / "config.yaml").write_text("run_name: y\n")
    bad = subprocess.run([sys.executable] + cmds[0][1:-1] + [str(export)], cwd=ROOT, capture_output=True, text=True)
    assert bad.returncode == 1 and "config.yaml" in bad.stdout


def test_pytest_commands_collect():
    """A documented pytest command (marked long where it runs for minutes) selects tests that exist: --collect-only."""
    for c in commands_of("pytest", marked=True):
        args = c[1:] if c[0] == "pytest" else c[3:]
        r = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0 and re.search(r"\d+(/\d+)? tests? (collected|selected)", r.stdout), r.stdout[-2000:]


def test_reference_command_prints_the_reference():
    cmds = commands_of("reference", marked=True)
    assert cmds, "the docs show how to print the params reference"
    for c in cmds:
        r = subprocess.run([sys.executable, *c[1:]], cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 and r.stdout.startswith("# Params reference") and "| `lora.r` |" in r.stdout


def test_params_files_shown_in_the_docs_are_the_files():
    """A params file shown whole (after a `<!-- params-file: PATH -->` marker) is that file, verbatim."""
    shown = 0
    for f in doc_files():
        for m in re.finditer(r"<!-- params-file: (\S+) -->\n```yaml\n(.*?)^```", f.read_text(), re.S | re.M):
            assert m.group(2) == (ROOT / m.group(1)).read_text(), f"{f.name}: {m.group(1)} differs from the file"
            shown += 1
    assert shown >= 1


def test_readme_and_benchmarks_links_resolve():
    """README.md and BENCHMARKS.md sit outside the docs site (mkdocs checks the site's links): their relative links
    must name files of the checkout."""
    broken = []
    for name in ("README.md", "BENCHMARKS.md"):
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", (ROOT / name).read_text()):
            if "://" not in target and not (ROOT / target).exists():
                broken.append(f"{name}: {target}")
    assert not broken, broken


def test_readme_colab_cells_match_the_colab_page():
    """The README's Colab cells (run in a fresh venv by tests/test_colab_wheel.py) are the docs page's, verbatim."""
    def cells(text):
        return text.split("<!-- colab-cells -->", 1)[1].split("```", 2)[1]

    assert cells((ROOT / "README.md").read_text()) == cells((ROOT / "docs" / "colab.md").read_text())


# ---------------------------------------------------------------- the generated params reference


def json_schema_keys() -> set[str]:
    """Every leaf key of RunConfig from pydantic's JSON schema ($refs resolved; list items as name[])."""
    from medqlora.config import RunConfig

    schema = RunConfig.model_json_schema()
    defs = schema.get("$defs", {})

    def resolve(node):
        if "$ref" in node:
            return defs[node["$ref"].rsplit("/", 1)[1]]
        for alt in node.get("anyOf", []):
            if "$ref" in alt or alt.get("type") == "array" and "$ref" in alt.get("items", {}):
                return resolve(alt)
        if node.get("type") == "array" and "$ref" in node.get("items", {}):
            return {"_list": resolve(node["items"])}
        return None

    def walk(node, prefix):
        keys = set()
        for name, prop in node.get("properties", {}).items():
            sub = resolve(prop)
            if sub is None:
                keys.add(prefix + name)
            elif "_list" in sub:
                keys |= walk(sub["_list"], f"{prefix}{name}[].")
            else:
                keys |= walk(sub, f"{prefix}{name}.")
        return keys

    return walk(schema, "")


def test_every_schema_field_has_a_description():
    from medqlora.config.reference import SECTION_HELP, schema_keys, schema_sections

    missing = [k.key for k in schema_keys() if len(k.description) < 8]
    assert not missing, f"fields without a description (Field(description=...)): {missing}"
    assert set(schema_sections()) <= set(SECTION_HELP), set(schema_sections()) - set(SECTION_HELP)


def test_generated_reference_lists_every_field():
    from medqlora.config.reference import markdown_reference

    page = markdown_reference()
    keys = json_schema_keys()
    assert {"run_name", "model.name_or_path", "train.select_by", "eval.sets[].name", "rl.rewards.length"} <= keys
    missing = sorted(k for k in keys if f"| `{k}` |" not in page)
    assert not missing, missing
    row = next(line for line in page.splitlines() if line.startswith("| `model.backend` |"))
    assert '"auto" &#124; "unsloth" &#124; "hf"' in row and "<code>&quot;auto&quot;</code>" not in row
    assert '<code>"auto"</code>' in row and "Unsloth" in row


def test_docs_site_builds_strictly_with_the_generated_pages(tmp_path):
    """`mkdocs build --strict` (what make docs and CI run; skipped where mkdocs is not installed): no broken link,
    page or anchor; docs/hooks.py adds the params reference, with every key, and the benchmarks page."""
    pytest.importorskip("mkdocs")
    site = tmp_path / "site"
    r = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    reference = (site / "reference" / "params" / "index.html").read_text()
    assert all(f"<code>{k}</code>" in reference for k in json_schema_keys())
    bench = (site / "benchmarks" / "index.html").read_text()
    assert "Current figures" in bench
