"""Lists in docstrings stay true: a package's module list names exactly its modules, relative
module references point at modules that exist, the dead-letter reasons documented are the ones
used."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import lasp_streams
from lasp_streams.metrics import DLQ_REASONS
from lasp_streams.runtime.kafka import dlq

ROOT = Path(lasp_streams.__file__).parent
PACKAGES = sorted(p.parent for p in ROOT.rglob("__init__.py"))
# :mod:`.name`, :mod:`~.name` (a reference relative to the package; first component only)
RELATIVE_REF = re.compile(r":mod:`~?\.(\w+)")


def _docstring(path: Path) -> str:
    return ast.get_docstring(ast.parse(path.read_text())) or ""


def _modules(package: Path) -> set[str]:
    return {
        p.stem if p.is_file() else p.name
        for p in package.iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }


def _name(package: Path) -> str:
    return ".".join(package.relative_to(ROOT.parent).parts)


@pytest.mark.parametrize("package", PACKAGES, ids=_name)
def test_relative_module_references_exist(package: Path) -> None:
    doc = _docstring(package / "__init__.py")
    missing = set(RELATIVE_REF.findall(doc)) - _modules(package)
    assert not missing, f"{_name(package)}'s docstring names modules that do not exist: {missing}"


@pytest.mark.parametrize(
    "package", [p for p in PACKAGES if "\nModules:" in _docstring(p / "__init__.py")], ids=_name
)
def test_module_lists_name_every_module(package: Path) -> None:
    doc = _docstring(package / "__init__.py")
    listed = set(RELATIVE_REF.findall(doc.split("\nModules:", 1)[1]))
    present = _modules(package)
    assert listed == present, (
        f"{_name(package)}'s 'Modules:' list is stale: not listed {sorted(present - listed)}, "
        f"listed but absent {sorted(listed - present)}"
    )


def test_the_packages_with_module_lists() -> None:
    """The lists the test above keeps true (a package dropping its list is a choice)."""
    with_lists = {_name(p) for p in PACKAGES if "\nModules:" in _docstring(p / "__init__.py")}
    assert with_lists >= {
        "lasp_streams.dataflow",
        "lasp_streams.lattices",
        "lasp_streams.runtime.kafka",
        "lasp_streams.server",
        "lasp_streams.testing",
    }


def test_dead_letter_reasons_documented_are_the_reasons() -> None:
    doc = dlq.__doc__ or ""
    codes = doc.split("Reason codes", 1)[1]
    documented = set(re.findall(r"``(\w+)`` —", codes))
    assert documented == set(DLQ_REASONS)
