"""Imports run one way (docs/DESIGN.md): the method packages never import the run machinery,
and data never imports models or evaluation. Read from the source with ``ast``, so an import
inside a function counts too."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "crackseg"
#: The run machinery and the entry points above it.
MACHINERY = (
    "crackseg.runs",
    "crackseg.cli",
    "crackseg.train",
    "crackseg.eval",
    "crackseg.predict",
    "crackseg.export",
)
#: Method package (or module) -> the modules it must not import.
FORBIDDEN = {
    "data": (*MACHINERY, "crackseg.models", "crackseg.evaluation", "crackseg.deploy"),
    "models": MACHINERY,
    "evaluation": MACHINERY,
    "deploy": MACHINERY,
    "paper_settings": MACHINERY,
    "error_lines": MACHINERY,  # the machinery words its errors with it, not the reverse
    # the sweep summaries read what the run machinery wrote; the machinery never needs them
    "runs": ("crackseg.sweep",),
}


def imported_modules(source: str, module: str) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, relative imports resolved."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def breaks_the_rule(imported: str, forbidden: tuple[str, ...]) -> bool:
    return any(imported == name or imported.startswith(name + ".") for name in forbidden)


def test_the_parser_sees_every_form_of_import():
    source = (
        "import crackseg.runs.folder\n"
        "def f():\n"
        "    from crackseg.runs import hardware\n"
        "from ..models import segdecnet\n"
    )
    found = imported_modules(source, "crackseg.data.datamodule")
    assert {"crackseg.runs.folder", "crackseg.runs.hardware", "crackseg.models.segdecnet"} <= found
    assert breaks_the_rule("crackseg.runs.hardware", FORBIDDEN["data"])
    assert breaks_the_rule("crackseg.models", FORBIDDEN["data"])
    assert not breaks_the_rule("crackseg.runsheet", FORBIDDEN["data"])
    assert not breaks_the_rule("crackseg.data.io", FORBIDDEN["data"])


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_a_method_package_imports_no_run_machinery(package):
    wrong = []
    paths = sorted((PACKAGE / package).rglob("*.py")) or [PACKAGE / f"{package}.py"]
    for path in paths:
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for imported in imported_modules(path.read_text(encoding="utf-8"), module):
            if breaks_the_rule(imported, FORBIDDEN[package]):
                wrong.append(f"{path.relative_to(PACKAGE.parent)} imports {imported}")
    assert not wrong, "\n".join(wrong)


def test_no_two_modules_share_a_name():
    names: dict[str, list[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        if path.name != "__init__.py":
            names.setdefault(path.stem, []).append(str(path.relative_to(PACKAGE.parent)))
    shared = {name: paths for name, paths in names.items() if len(paths) > 1}
    assert not shared, shared
