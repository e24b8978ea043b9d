"""What `pip install medqlora` brings: the declared dependencies (ranges; constraints.txt pins what is tested), the GPU
extra that Colab installs, every subpackage and the stage notebooks in the wheel."""
import importlib.metadata
import re
import tomllib

from conftest import ROOT

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_subpackage_and_the_notebooks_are_in_the_package_list():
    listed = set(PROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "medqlora").rglob("*.py")
             if "__pycache__" not in p.parts}
    assert listed == found | {"medqlora.notebooks"}, "pyproject.toml's packages must name every folder of modules"
    assert PROJECT["tool"]["setuptools"]["package-dir"]["medqlora.notebooks"] == "notebooks"


def test_declared_ranges_hold_the_installed_versions_and_constraints_pin_them():
    """pyproject.toml declares ranges (floors and tested upper bounds); constraints.txt pins the exact versions the
    suite runs on (make setup and CI install with it): each declared dependency's installed version is inside its
    range and is the one constraints.txt pins (a local build label such as +cpu aside)."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
    from packaging.version import Version

    lines = [ln.split("#")[0].strip() for ln in (ROOT / "constraints.txt").read_text().splitlines()]
    pins = {canonicalize_name(n): v for n, v in (ln.split("==") for ln in lines if ln)}
    assert "medqlora" not in pins and all("+" not in v for v in pins.values())
    wrong = []
    for req in PROJECT["project"]["dependencies"] + PROJECT["project"]["optional-dependencies"]["test"]:
        r = Requirement(req)
        installed = Version(importlib.metadata.version(r.name))
        if not r.specifier.contains(installed, prereleases=True):
            wrong.append(f"{req}: installed {installed}")
        if pins.get(canonicalize_name(r.name)) != installed.public:
            wrong.append(f"{req}: constraints.txt pins {pins.get(canonicalize_name(r.name))}, installed {installed}")
    assert not wrong, wrong


def test_colab_installs_the_pinned_gpu_extra():
    from medqlora.core.system import colab_install_commands, gpu_requirements

    gpu = gpu_requirements()
    assert {"unsloth==2026.10.9", "unsloth_zoo==2026.10.9", "xformers==0.0.35"} <= set(gpu)
    assert all("==" in r for r in gpu), "every GPU package pinned"
    assert "trl>=1.14.2,<1.15" in PROJECT["project"]["dependencies"]  # what Unsloth 2026.10.9 accepts (<=1.15.0)
    (cmd,) = colab_install_commands(["unsloth"])
    assert cmd[1:5] == ["-m", "pip", "install", "-q"] and cmd[5:] == gpu and "--no-deps" not in cmd
    assert colab_install_commands([]) == []
