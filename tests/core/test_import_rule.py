"""The layout's import rule, read from the source: core/ knows no family and no tool; a family knows core/ and
itself, never the tools (node-report, node-bench, node-run) that ask it for its parts."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "node_cli"
TOOLS = ("node_cli.report", "node_cli.bench", "node_cli.cli", "node_cli.experiment")
MODULE_STRING = re.compile(r"^node_cli(\.\w+)+(:\w+)?$")   # "node_cli.x.y" or "node_cli.x.y:attr" (lazy imports)


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(source: str, name: str, is_package: bool) -> set[str]:
    """Every module `source` (the module `name`) imports, relative imports resolved; `from a import b` counts as
    both a and a.b; string constants naming a node_cli module (importlib, lazy 'module:attr') count too."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            out.add(module)
            out |= {f"{module}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.match(node.value):
            out.add(node.value.split(":")[0])
        elif isinstance(node, ast.JoinedStr) and node.values:   # f"{__name__}.sub:attr"
            first, rest = node.values[0], node.values[1:]
            if (isinstance(first, ast.FormattedValue) and isinstance(first.value, ast.Name)
                    and first.value.id == "__name__" and rest and isinstance(rest[0], ast.Constant)):
                out.add((name + str(rest[0].value)).split(":")[0])
    return out


def offenders(folder: str, forbidden) -> list[str]:
    bad = []
    files = sorted((PACKAGE / folder).rglob("*.py"))
    assert files, folder
    for path in files:
        targets = imported(path.read_text(), module_name(path), path.name == "__init__.py")
        bad += [f"{path.relative_to(PACKAGE.parent)} imports {t}" for t in sorted(targets)
                if any(t == f or t.startswith(f + ".") for f in forbidden)]
    return bad


def test_core_imports_no_family_and_no_tool():
    assert offenders("core", ("node_cli.families",) + TOOLS) == []


def test_families_import_no_tool():
    assert offenders("families", TOOLS) == []


def test_core_does_not_even_name_the_families():
    named = [f"{p.relative_to(PACKAGE.parent)}:{i}" for p in sorted((PACKAGE / "core").rglob("*"))
             if p.is_file() and p.suffix == ".py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if "families" in line]
    assert named == []


@pytest.mark.parametrize("source, name, package, target", [
    ("from ..families import get", "node_cli.core.page", False, "node_cli.families"),
    ("from .. import families", "node_cli.core.page", False, "node_cli.families"),
    ("from . import page", "node_cli.core", True, "node_cli.core.page"),
    ("from ...report.build import build", "node_cli.families.mnist.report", False, "node_cli.report.build"),
    ("import node_cli.bench.cli as b", "node_cli.families.x", False, "node_cli.bench.cli"),
    ("from node_cli import experiment", "node_cli.core.x", False, "node_cli.experiment"),
    ("lazy('node_cli.cli:main')", "node_cli.families.x", False, "node_cli.cli"),
    ("lazy(f'{__name__}.task:MnistTask')", "node_cli.families.mnist", True, "node_cli.families.mnist.task"),
])
def test_the_rule_sees_every_form_of_import(source, name, package, target):
    assert target in imported(source, name, package)
