"""Keep ``docs/api/`` in step with the package: one page per public module.

A small local Sphinx extension.  When the build starts it walks ``slimta``
for public modules (no path part starting with ``_``), writes
``docs/api/<module>.rst`` for each (an ``automodule`` directive; autodoc
documents what the module's ``__all__`` lists) and ``docs/api/index.rst``
grouping them by area.  Files are rewritten only when their text changes,
so an unchanged tree leaves them untouched, and a module added to
``slimta/`` appears in the reference at the next build.  Pages for modules
that no longer exist are deleted.

``python3 docs/_ext/slimta_apidoc.py`` does the same without building.
"""

from __future__ import annotations

import pkgutil
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parents[1]
API = DOCS / "api"

#: Modules left out of the reference, with the reason (shown in the index).
SKIPPED: dict[str, str] = {}

#: Packages whose API is documented in a chapter of the manual instead
#: (autodoc there; documenting them twice would be duplicate objects).
ELSEWHERE: dict[str, str] = {"slimta.testing": "testing"}

#: (title, module prefixes) in index order; the first match wins.
SECTIONS: list[tuple[str, tuple[str, ...]]] = [
    ("Envelopes, errors and bounces", ("slimta", "slimta.core", "slimta.envelope", "slimta.bounce")),
    ("Edges: receiving mail", ("slimta.edge",)),
    ("Queue and storage", ("slimta.queue", "slimta.diskstorage", "slimta.redisstorage")),
    ("Relays: delivering mail", ("slimta.relay",)),
    ("Policies and lookups", ("slimta.policy", "slimta.lookup")),
    ("The SMTP protocol", ("slimta.smtp",)),
    ("HTTP", ("slimta.http",)),
    ("Utilities: DNS, DNSBL, SPF, PROXY, system", ("slimta.util",)),
    ("Logging", ("slimta.logging",)),
    ("The slimta command", ("slimta.app",)),
]

INTRO = """\
API reference
=============

Generated from the docstrings: one page per public module of ``slimta``
(``docs/_ext/slimta_apidoc.py`` writes these pages at every build).  Each
module documents the names in its ``__all__``.  Notes marked *New in
version 0.1.0* or *Changed in version 0.1.0* mark where slimta goes beyond
or differs from python-slimta 4.0; *5.0* marks what python-slimta 5.x
added.
"""


def public_modules() -> list[str]:
    """Every importable public module of the ``slimta`` package, sorted."""
    root = DOCS.parent
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    import slimta

    names = ["slimta"]
    for info in pkgutil.walk_packages(slimta.__path__, "slimta."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue
        names.append(info.name)
    return sorted(n for n in names if n not in SKIPPED and _elsewhere(n) is None)


def _elsewhere(module: str) -> str | None:
    for package, doc in ELSEWHERE.items():
        if module == package or module.startswith(package + "."):
            return doc
    return None


def section_of(module: str) -> str:
    """The index section a module is listed under."""
    for title, prefixes in SECTIONS:
        if (
            any(module == p or module.startswith(p + ".") for p in prefixes if p != "slimta")
            or module in prefixes
        ):
            return title
    return "Other modules"


def page(module: str) -> str:
    """The text of one module's page."""
    return f"{module}\n{'=' * len(module)}\n\n.. automodule:: {module}\n"


def index(modules: list[str]) -> str:
    """The text of ``docs/api/index.rst``."""
    parts = [INTRO]
    titles = [t for t, _ in SECTIONS] + ["Other modules"]
    for title in titles:
        members = [m for m in modules if section_of(m) == title]
        if not members:
            continue
        parts.append(f"{title}\n{'-' * len(title)}\n\n.. toctree::\n   :maxdepth: 1\n\n")
        parts[-1] += "".join(f"   {m}\n" for m in members)
    for package, doc in sorted(ELSEWHERE.items()):
        title = f"``{package}``"
        parts.append(
            f"{title}\n{'-' * len(title)}\n\n:doc:`/{doc}` documents ``{package}`` and its modules.\n"
        )
    if SKIPPED:
        parts.append("Not documented here\n-------------------\n\n")
        parts[-1] += "".join(f"* ``{m}``: {why}\n" for m, why in sorted(SKIPPED.items()))
    return "\n".join(parts)


def _write(path: Path, text: str) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    path.write_text(text, encoding="utf-8")
    return True


def generate() -> list[str]:
    """Write the pages; return the names of the files changed."""
    API.mkdir(exist_ok=True)
    modules = public_modules()
    changed = [f"{m}.rst" for m in modules if _write(API / f"{m}.rst", page(m))]
    if _write(API / "index.rst", index(modules)):
        changed.append("index.rst")
    wanted = {f"{m}.rst" for m in modules} | {"index.rst"}
    for stale in API.glob("*.rst"):
        if stale.name not in wanted:
            stale.unlink()
            changed.append(f"-{stale.name}")
    return changed


def _on_builder_inited(app: Any) -> None:
    generate()


def setup(app: Any) -> dict[str, Any]:
    """Register with Sphinx: regenerate the pages when the build starts."""
    app.connect("builder-inited", _on_builder_inited)
    return {"parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    for name in generate():
        sys.stdout.write(name + "\n")
