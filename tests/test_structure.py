"""The code's shape: every stage declares exactly the package modules it imports, and functions stay short."""

import ast
from pathlib import Path

import pytest
import yaml

PROJECT = Path(__file__).resolve().parents[1]
PACKAGE = PROJECT / "src" / "retinaseg"
MAX_FUNCTION_LINES = 60


def module_file(name: str) -> Path:
    """The file of a dotted module below the package (``core.params``), or of a subpackage (``core``)."""
    path = PACKAGE / name.replace(".", "/")
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imported_modules(path: Path) -> set[str]:
    """Dotted names below ``retinaseg`` (``core.params``) of the modules a file imports, at top level or inside
    functions; ``from retinaseg.core import params`` names the module ``core.params``."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "retinaseg":
            parent = node.module.partition(".")[2]
            for alias in node.names:
                child = f"{parent}.{alias.name}" if parent else alias.name
                names.add(child if module_file(child).exists() else parent)
        elif isinstance(node, ast.Import):
            names.update(alias.name.partition(".")[2] for alias in node.names
                         if alias.name.startswith("retinaseg."))
    return names - {""}


def import_closure(script: Path) -> set[str]:
    """Every package module a stage script runs, following imports between modules."""
    seen: set[str] = set()
    pending = imported_modules(script)
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending |= imported_modules(module_file(name))
    return seen


def folders(modules: set[str]) -> set[str]:
    """The package's subpackages (``core``, ``training``, ...) that hold these modules."""
    return {name.split(".")[0] for name in modules}


def declared_stages():
    """(stage name, script path, declared package folders) of every stage in dvc.yaml."""
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    for name, stage in stages.items():
        body = stage.get("do", stage)
        script = PROJECT / body["cmd"].split()[1]
        declared = {dep.removeprefix("src/retinaseg/") for dep in body["deps"] if dep.startswith("src/retinaseg/")}
        yield name, script, declared


@pytest.mark.parametrize("name, script, declared", list(declared_stages()),
                         ids=[name for name, _, _ in declared_stages()])
def test_stage_deps_are_exactly_the_folders_it_imports_from(name, script, declared):
    """A folder a stage runs code from but does not declare would let DVC reuse a stale result; one it declares
    but does not run would rerun the stage for nothing. Folders, not files: a stage's code is what they hold."""
    closure = import_closure(script)
    assert closure, f"{script} imports nothing from the package"
    assert all((PACKAGE / folder).is_dir() for folder in declared), f"stage {name}: declare folders only"
    assert declared == folders(closure), (f"stage {name}: declare {sorted(folders(closure) - declared)}, "
                                          f"drop {sorted(declared - folders(closure))}")


def test_every_module_sits_in_a_subpackage_named_for_its_stage_or_role():
    """The package's top level holds only subpackages (and its own ``__init__``): a module's folder is its stage."""
    assert sorted(path.name for path in PACKAGE.glob("*.py")) == ["__init__.py"]
    subpackages = sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__")
    assert subpackages == ["augment", "compare", "core", "evaluation", "fetch", "model", "prepare", "tracking",
                           "training"]
    for folder in PACKAGE.rglob("*"):
        if folder.is_dir() and folder.name != "__pycache__":
            assert (folder / "__init__.py").exists(), f"{folder.relative_to(PROJECT)} has no __init__.py"


def test_the_closure_follows_imports_inside_functions(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("def main():\n    from retinaseg.training.fit import train_task\n")
    closure = import_closure(script)
    assert {"training.fit", "model.unet", "model.losses", "core.tasks", "core.params",
            "tracking.mlflow_runs"} <= closure
    assert "evaluation.predict" not in closure
    assert folders(closure) == {"core", "model", "training", "tracking"}


def test_a_module_imported_from_its_subpackage_counts_as_that_module(tmp_path):
    script = tmp_path / "stage.py"
    script.write_text("from retinaseg.core import params, stage\nimport retinaseg.evaluation.froc\n")
    assert imported_modules(script) == {"core.params", "core.stage", "evaluation.froc"}


def long_functions(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    found.append(f"{path.relative_to(PROJECT)}:{node.lineno} {node.name} ({lines} lines)")
    return found


@pytest.mark.parametrize("folder", ["src", "stages"])
def test_no_function_is_longer_than_the_limit(folder):
    assert long_functions(PROJECT / folder) == []


@pytest.mark.parametrize("path", ["data/downloads/diaretdb1_v_1_1.zip", "checkpoints/binary/state.json",
                                  "mlflow.db", "mlflow.db.lock", "data/raw/resources/images/x.png"])
def test_what_must_never_be_committed_is_ignored_by_git(path):
    """The dataset's licence forbids redistribution; progress, stores and data are not source either."""
    import subprocess

    if not (PROJECT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=PROJECT, check=False)
    assert ignored.returncode == 0, f"git add -A would commit {path}"


def pins(path):
    """Package name -> pinned version of a requirements file."""
    from packaging.requirements import Requirement

    pinned = [Requirement(line.split(" ")[0]) for line in path.read_text().splitlines()
              if line.strip() and not line.startswith(("#", " "))]
    return {requirement.name.lower().replace("_", "-"): next(iter(requirement.specifier)).version
            for requirement in pinned}


def test_the_package_declares_what_it_needs_and_its_commands():
    """`pip install ".[cpu]"` gives a package that runs: requirements.txt (CPU) and requirements-gpu.txt are generated
    from pyproject.toml by the command in their header and pin every declared dependency within its range; the
    GPU set has tensorflow with CUDA in place of tensorflow-cpu; each declared command is a callable of the package."""
    import importlib
    import tomllib

    from packaging.requirements import Requirement

    project = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for file, extra in (("requirements.txt", "cpu"), ("requirements-gpu.txt", "gpu")):
        header = (PROJECT / file).read_text().splitlines()[1]
        assert header.strip("# ").startswith(f"uv pip compile pyproject.toml --extra {extra} --extra test ")
        assert header.endswith(f"-o {file}")
        pinned = pins(PROJECT / file)
        for requirement in map(Requirement, project["dependencies"] + extras[extra] + extras["test"]):
            version = pinned[requirement.name.lower()]
            assert requirement.specifier.contains(version), f"{file}: {requirement} does not allow {version}"
    assert "tensorflow-cpu" in pins(PROJECT / "requirements.txt") and "tensorflow" not in pins(PROJECT / "requirements.txt")
    gpu = pins(PROJECT / "requirements-gpu.txt")
    assert "tensorflow-cpu" not in gpu and "nvidia-cudnn-cu12" in gpu
    assert gpu["tensorflow"] == pins(PROJECT / "requirements.txt")["tensorflow-cpu"]
    for command, target in project["scripts"].items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), command
