"""Fixtures for the local delivery tests."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest


@pytest.fixture
def make_script(tmp_path: Path) -> Callable[[str, str], str]:
    """Write ``body`` as an executable script run by this interpreter; return its path."""

    def make(name: str, body: str) -> str:
        path = tmp_path / name
        path.write_text(f"#!{sys.executable}\n" + textwrap.dedent(body))
        path.chmod(0o755)
        return str(path)

    return make
