"""The package's shape: torch-free numbers side, one-way imports, no state on models."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tridim"
# The layers, lowest first: a module imports only from its own layer or those below it.
LAYERS = ("search", "training", "cost", "prune", "budget", "run", "cli")
LEAVES = ("bench",)  # may import any layer; nothing imports them
TOP_LEVEL = ("__init__.py", "__main__.py", "atomic.py")  # modules that belong to no layer
# Modules of torch layers that are torch-free too: `tridim report` renders without torch,
# and the command line starts the timing subprocess before it imports torch.
ALSO_TORCH_FREE = (
    "tridim.run.report",
    "tridim.run.compute",
    "tridim.atomic",
    "tridim.cost.timing_process",
)


def _library_modules(*, with_cli: bool = False):
    """Every module of tridim/ but the benchmarks (and but the command line unless asked for)."""
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        command_line = relative.parts[0] == "cli" or relative.name == "__main__.py"
        if relative.parts[0] == "bench" or (command_line and not with_cli):
            continue
        yield relative, ast.parse(path.read_text(), filename=str(path))


def test_numbers_side_imports_without_torch():
    search = sorted(f"tridim.search.{p.stem}" for p in (PACKAGE / "search").glob("*.py"))
    modules = ", ".join(search + list(ALSO_TORCH_FREE))
    script = textwrap.dedent(
        f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "torch_pruning"):
                    raise ImportError(f"{{name}} is not installed here")

        sys.meta_path.insert(0, NoTorch())
        import {modules}
        from tridim import LowRankPolynomialRegressor, Triple, solve, Plan
        loaded = [m for m in sys.modules if m.split(".")[0] == "torch"]
        assert not loaded, loaded
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def _imported_names(tree: ast.AST, relative: Path) -> set[str]:
    package = ["tridim", *relative.parent.parts]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = ".".join(base + ([node.module] if node.module else []))
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def test_the_library_never_imports_the_benchmarks_or_the_command_line():
    offenders = []
    for relative, tree in _library_modules():
        for name in _imported_names(tree, relative):
            if name.startswith(("tridim.bench", "tridim.cli")):
                offenders.append(f"{relative}: {name}")
    assert not offenders, offenders


def test_no_module_sets_tridim_attributes_on_models_except_the_spec_in_build():
    offenders = []
    for relative, tree in _library_modules():
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Assign):
                targets = node.targets
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
                targets = [node.target]
            elif isinstance(node, ast.Call) and getattr(node.func, "id", "") == "setattr":
                name = node.args[1] if len(node.args) > 1 else None
                if isinstance(name, ast.Constant) and str(name.value).startswith("tridim_"):
                    offenders.append(f"{relative}:{node.lineno} setattr {name.value}")
            for target in targets:
                if isinstance(target, ast.Attribute) and target.attr.startswith("tridim_"):
                    allowed = relative.name == "models.py" and target.attr == "tridim_spec"
                    if not allowed:
                        offenders.append(f"{relative}:{node.lineno} .{target.attr}")
    assert not offenders, offenders


def _code_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring (and its signature) left out."""
    body = function.body
    first = body[0]
    is_docstring = isinstance(first, ast.Expr) and isinstance(
        getattr(first, "value", None), ast.Constant
    )
    if is_docstring and isinstance(first.value.value, str):
        if len(body) == 1:
            return 0
        first = body[1]
    return function.end_lineno - first.lineno + 1


@pytest.mark.parametrize("limit", [60])
def test_no_library_function_is_longer_than_a_screen(limit):
    long = []
    for relative, tree in _library_modules(with_cli=True):
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = _code_lines(node)
                if lines > limit:
                    long.append(f"{relative}:{node.name} {lines} lines")
    assert not long, long


def _layer(module: str) -> str | None:
    """The layer (or leaf) a ``tridim....`` module name belongs to; None for top-level ones."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS + LEAVES else None


def test_every_module_lives_in_a_layer_and_imports_only_layers_below_it():
    top_level = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert top_level == sorted(TOP_LEVEL), top_level
    folders = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file())
    assert folders == sorted(LAYERS + LEAVES), folders
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        tree = ast.parse(path.read_text(), filename=str(path))
        own = relative.parts[0] if len(relative.parts) > 1 else None
        for name in _imported_names(tree, relative):
            if not name.startswith("tridim."):
                continue
            target = _layer(name)
            if own is None:  # atomic imports nothing of tridim; __init__/__main__ re-export
                if relative.name == "atomic.py":
                    offenders.append(f"{relative}: {name}")
                continue
            if target in LEAVES and own not in LEAVES + ("cli",):
                offenders.append(f"{relative}: {name} (a leaf)")
            elif target in LAYERS and own in LAYERS and LAYERS.index(target) > LAYERS.index(own):
                offenders.append(f"{relative}: {name} (layer {target} is above {own})")
    assert not offenders, offenders


def test_the_public_api_comes_from_the_layers_not_the_leaves():
    import tridim

    homes = {**tridim._EXPORTS, **tridim._SUBMODULES}
    leaves = {name: home for name, home in homes.items() if home.split(".")[0] not in LAYERS}
    assert not leaves, leaves


def test_each_layer_says_what_it_is_for_and_no_file_is_long():
    for folder in LAYERS + LEAVES:
        docstring = ast.get_docstring(ast.parse((PACKAGE / folder / "__init__.py").read_text()))
        assert docstring, f"tridim/{folder}/__init__.py has no docstring"
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > 700
    }
    assert not long, long


def test_every_file_the_readme_names_exists():
    readme = (PACKAGE.parent / "README.md").read_text()
    named = set(re.findall(r"tridim/[\w/]+\.py|tridim/\w+/(?=[`\s)])", readme))
    for row in re.findall(r"^\| `(tridim/\w+/)` \|(.*)$", readme, flags=re.M):
        named.update(row[0] + name for name in re.findall(r"`(\w+\.py)`", row[1]))
    missing = sorted(name for name in named if not (PACKAGE.parent / name).exists())
    assert not missing, missing
