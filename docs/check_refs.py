"""Check the manual's internal cross-references (a link check without network).

``sphinx-build -W`` already fails on unknown documents, labels and
``literalinclude`` files.  Python cross-references (``:class:``, ``:meth:``,
``:mod:``...) only warn when ``nitpicky`` is on, and with it every reference
to the standard library or gevent warns too (intersphinx would need the
network).  This script builds once with ``-n`` into a temporary directory
and sorts the warnings:

* a reference to a module outside ``slimta`` (``ssl.SSLContext``,
  ``gevent.pool.Pool``) is external: ignored;
* an unresolved reference written in a page of the manual (``docs/*.rst``
  and ``docs/tutorials/``, not the generated ``docs/api/``) is an error:
  the exit status is 1;
* unresolved references inside docstrings are listed per module as a
  report (exit status unchanged unless ``--strict``): napoleon reads some
  ``Attributes:`` entries as types, and type aliases and private names
  have no page.

Usage: ``.venv/bin/python docs/check_refs.py [--strict]``
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

DOCS = Path(__file__).resolve().parent
WARNING = re.compile(
    r"^(?P<where>.*?): WARNING: py:(?P<role>\w+) reference target not found: (?P<target>.+?)(?: \[ref\.\w+\])?$"
)

#: Unresolved references in pages owned elsewhere, known and reported.
KNOWN: set[tuple[str, str]] = {("testing.rst", "Outcome")}


def external(target: str) -> bool:
    """True for a dotted name whose top-level module is not ``slimta``."""
    name = target.lstrip("~.")
    head = name.split(".", 1)[0]
    return ("." in name and head != "slimta") or name in sys.stdlib_module_names


def main() -> int:
    """Build with ``-n``, sort the warnings, print the findings; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--strict", action="store_true", help="fail on docstring references too")
    args = parser.parse_args()
    sphinx = Path(sys.executable).with_name("sphinx-build")
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run(  # noqa: S603 - our own sphinx-build, fixed arguments
            [str(sphinx), "-q", "-E", "-n", "-b", "html", str(DOCS), out],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        return proc.returncode
    manual: list[str] = []
    docstrings: Counter[str] = Counter()
    for line in proc.stderr.splitlines():
        match = WARNING.match(line)
        if match is None:
            continue
        where, target = match["where"], match["target"]
        if external(target):
            continue
        page = Path(where.split(":", 1)[0])
        in_manual = (
            page.suffix == ".rst" and DOCS in page.parents and "api" not in page.relative_to(DOCS).parts
        )
        if in_manual and (str(page.relative_to(DOCS)), target) not in KNOWN:
            manual.append(f"{where}: {match['role']} {target}")
        elif not in_manual:
            module = where.partition("docstring of ")[2].split(":")[0] or page.stem
            docstrings[module.rsplit(".", 1)[0] if "docstring of" in where else module] += 1
    for entry in manual:
        sys.stdout.write(f"unresolved: {entry}\n")
    if docstrings:
        total = sum(docstrings.values())
        sys.stdout.write(f"{total} unresolved reference(s) in docstrings (report; --strict fails on them):\n")
        for module, count in sorted(docstrings.items()):
            sys.stdout.write(f"  {count:3d}  {module}" + "\n")
    sys.stdout.write(f"manual pages: {len(manual)} unresolved internal reference(s)" + "\n")
    return 1 if manual or (args.strict and docstrings) else 0


if __name__ == "__main__":
    sys.exit(main())
