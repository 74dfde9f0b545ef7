#!/usr/bin/env python3
"""The two commands a new user needs: ``python3 dev.py run`` and ``python3 dev.py test``.

Only the standard library is used here, so this works on a fresh machine
with nothing but Python 3.11+ and pip.  Each command first makes sure a
virtual environment in ``.venv`` holds slimta (installed editable) and what
the command needs, re-installing only when ``setup.py`` has changed.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PY = BIN / "python"


def _ensure_venv(extras: str) -> None:
    if sys.version_info < (3, 11):  # noqa: UP036 - dev.py may be run by an older python3
        sys.exit(f"slimta needs Python 3.11 or newer, this is {sys.version.split()[0]}")
    if not PY.exists():
        print(f"creating {VENV} ...", flush=True)
        venv.EnvBuilder(with_pip=True).create(VENV)
    digest = hashlib.sha256((ROOT / "setup.py").read_bytes() + extras.encode()).hexdigest()
    stamp = VENV / f".installed-{extras or 'base'}"
    if stamp.exists() and stamp.read_text() == digest:
        return
    target = f".[{extras}]" if extras else "."
    print(f"installing slimta{f'[{extras}]' if extras else ''} into {VENV} ...", flush=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([PY, "-m", "pip", "install", "-q", "-e", target], cwd=ROOT, check=True)
    stamp.write_text(digest)


def _run(*cmd: str | Path) -> int:
    print("+", " ".join(str(c) for c in cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=False).returncode


def cmd_run(args: list[str]) -> int:
    """Start ``slimta run``: SMTP on 127.0.0.1:2525, disk queue, local Maildir delivery."""
    _ensure_venv("")
    return _run(PY, "-m", "slimta", "run", *args)


def cmd_test(args: list[str]) -> int:
    """Run the whole suite: pytest (under gevent), ruff, mypy and the docs build."""
    _ensure_venv("dev")
    env_note = {"GEVENT_MONITOR_THREAD_ENABLE": "1", "GEVENT_MAX_BLOCKING_TIME": "0.5"}
    os.environ.update(env_note)
    failures = []
    steps: list[tuple[str, list[str | Path]]] = [
        ("pytest", [PY, "-m", "gevent.monkey", "--module", "pytest", *args]),
        ("ruff", [BIN / "ruff", "check", "slimta", "tests", "bench", "examples", "setup.py", "dev.py"]),
        ("ruff format", [BIN / "ruff", "format", "--check", "slimta"]),
        ("mypy", [BIN / "mypy"]),
        ("docs", [BIN / "sphinx-build", "-q", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html"]),
    ]
    for name, cmd in steps:
        if _run(*cmd) != 0:
            failures.append(name)
    if failures:
        print(f"FAILED: {', '.join(failures)}", flush=True)
        return 1
    print("all checks passed", flush=True)
    return 0


COMMANDS = {"run": cmd_run, "test": cmd_test}


def main() -> int:
    """Dispatch ``python3 dev.py COMMAND [ARGS...]``."""
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__)
        print("commands:", ", ".join(COMMANDS))
        return 2
    return COMMANDS[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
