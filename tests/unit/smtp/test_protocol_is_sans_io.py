"""The protocol core must stay free of I/O: no gevent, sockets, TLS, threads.

The check reads the imports with :mod:`ast` (nothing is imported) and
follows imports of other ``slimta`` modules, so an I/O module cannot sneak
in through a helper either.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import slimta

ROOT = Path(slimta.__file__).resolve().parent.parent
CORE = [
    "slimta/smtp/protocol.py",
    "slimta/smtp/_grammar.py",
    "slimta/smtp/reply.py",
    "slimta/smtp/extensions.py",
]
FORBIDDEN = {"gevent", "socket", "ssl", "select", "selectors", "threading", "asyncio"}


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """Every module named by an import statement in ``path`` (any depth)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    if package is None:
        package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] != "slimta":
        return None
    candidate = ROOT.joinpath(*parts)
    if candidate.with_suffix(".py").is_file():
        return candidate.with_suffix(".py")
    if (candidate / "__init__.py").is_file():
        return candidate / "__init__.py"
    return None


def closure(start: Path) -> dict[Path, set[str]]:
    """``start`` and every slimta module it imports, with their imports."""
    seen: dict[Path, set[str]] = {}
    todo = [start]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen[path] = imported_modules(path)
        for name in seen[path]:
            # Importing slimta.a.b also runs slimta/__init__ and slimta/a/__init__.
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                found = module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return seen


@pytest.mark.parametrize("relpath", CORE)
def test_core_module_imports_no_io(relpath: str) -> None:
    for path, names in closure(ROOT / relpath).items():
        bad = sorted(n for n in names if n.split(".")[0] in FORBIDDEN)
        assert not bad, f"{path.relative_to(ROOT)} imports {bad}"


def test_the_guard_sees_imports(tmp_path: Path) -> None:
    # The checker itself must catch every import form, nested ones too.
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os, socket as s\n"
        "def f():\n"
        "    from gevent import sleep\n"
        "    import ssl\n"
        "from . import sibling\n"
        "from ..up import thing\n"
    )
    names = imported_modules(probe, package="slimta.smtp")
    assert {"os", "socket", "gevent", "ssl"} <= names
    assert {"slimta.smtp.sibling", "slimta.up.thing"} <= names
    io = ROOT / "slimta" / "smtp" / "io.py"
    if io.is_file():
        assert any(n.split(".")[0] in FORBIDDEN for n in imported_modules(io))
