"""Sphinx configuration for the slimta manual and API reference."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))
# Local extensions: slimta_apidoc writes docs/api/ from the package.
sys.path.insert(0, os.path.abspath("_ext"))

project = "slimta"
author = "the slimta developers"
copyright = "2026, the slimta developers"  # noqa: A001

try:
    from slimta import __version__ as release
except ImportError:  # pragma: no cover
    release = "0+unknown"
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.viewcode",
    # Diagrams are .dot sources rendered by Graphviz's ``dot`` at build time.
    "sphinx.ext.graphviz",
    "slimta_apidoc",
]
graphviz_output_format = "svg"
autodoc_member_order = "bysource"
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_typehints = "description"
napoleon_google_docstring = True
napoleon_numpy_docstring = False
intersphinx_mapping: dict[str, tuple[str, None]] = {}
nitpicky = False
suppress_warnings = ["ref.python"]
html_theme = "alabaster"
exclude_patterns = ["_build", "_ext"]
html_static_path = ["_static"]


def _public_bases(app: object, name: str, obj: object, options: object, bases: list[type]) -> None:
    """Leave private mixins (``_Framing``, ``_Reading``...) out of "Bases:" lines.

    They only split big classes into modules; a reader of the API needs the
    public bases.  A class whose bases are all private shows none.
    """
    bases[:] = [base for base in bases if not base.__name__.startswith("_")]


def setup(app: object) -> None:
    """Sphinx extension hook of this configuration."""
    app.connect("autodoc-process-bases", _public_bases)  # type: ignore[attr-defined]
