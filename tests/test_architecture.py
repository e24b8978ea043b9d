"""The house: imports run one way (no circle, no arrow from a lower layer up), no module past 350 lines.
docs/architecture.md names the layers; this test keeps it true."""
import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "medqlora"
# Bottom to top: a module may import only from its own layer or those before it. reinforce runs between the train and
# export stages but sits above evaluation: its rewards read answers with the evaluate stage's own parser
# (evaluation.scoring), and export and evaluation only read its outputs from the run folder.
LAYERS = ["config", "core", "data", "training", "export", "evaluation", "reinforce", "run", "testing"]
MAX_LINES = 350


def modules() -> dict[str, Path]:
    found = {}
    for p in PKG.rglob("*.py"):
        name = ".".join(p.relative_to(PKG.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = p
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every medqlora module this one imports, at the top or inside a function."""
    base = name.split(".")
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            root = base[: len(base) - node.level + (path.name == "__init__.py")] if node.level else []
            mod = ".".join(root + ([node.module] if node.module else []))
            targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
        else:
            continue
        out |= {t for t in targets if t in known and t != name}
    return out


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports(m, p, set(mods)) for m, p in mods.items()}


def layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else ""
    return LAYERS.index(part) if part in LAYERS else -1


def test_every_subpackage_has_a_layer():
    assert {m.split(".")[1] for m in modules() if m.count(".") >= 1} <= set(LAYERS) | {"__main__"}


def test_no_import_circle():
    edges = graph()
    circles = []

    def reach(a, goal, path):
        for b in edges[a]:
            if b == goal:
                return path + [b]
            if b not in path:
                found = reach(b, goal, path + [b])
                if found:
                    return found
        return None

    for m in sorted(edges):
        c = reach(m, m, [m])
        if c:
            circles.append(" -> ".join(c))
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_imports_run_down_the_layers():
    up = [f"{a} ({LAYERS[layer(a)]}) imports {b} ({LAYERS[layer(b)]})"
          for a, targets in graph().items() for b in targets
          if layer(b) > layer(a) and not b.startswith(a + ".")]
    assert not up, "imports that run back up:\n" + "\n".join(sorted(up))


@pytest.mark.parametrize("path", sorted(modules().values()), ids=lambda p: str(p.relative_to(PKG.parent)))
def test_module_is_at_most_350_lines(path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.name} has {n} lines: split it by responsibility"
