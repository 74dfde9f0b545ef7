"""Reading ``strace -f`` output in tests: one record per completed system call.

The durability tests check the order of fsync, rename/link and the ``250``
reply in a trace.  ``strace -f`` splits a call that another thread
interrupts into ``<unfinished ...>`` and ``<... resumed>`` lines; this joins
them, and remembers which path each ``openat`` descriptor belongs to, so
an fsync can be told apart by the file or directory it made durable.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

_LINE = re.compile(r"^(\d+)\s+(.*)$")
_UNFINISHED = "<unfinished ...>"


@dataclass(frozen=True)
class Syscall:
    """A completed call: its place in the trace, name, result and text."""

    index: int
    name: str
    result: str
    text: str
    #: For fsync/fdatasync: the path its descriptor was opened with ("" if unknown).
    path: str = ""

    def arg(self, n: int) -> str:
        """The ``n``-th quoted string argument (0-based)."""
        return self.text.split('"')[2 * n + 1]


def syscalls(trace: str) -> Iterator[Syscall]:
    """Every completed system call of a ``strace -f`` trace, in order."""
    fds: dict[str, str] = {}
    pending: dict[str, str] = {}  # pid -> unfinished call text
    for index, raw in enumerate(trace.splitlines()):
        match = _LINE.match(raw)
        if not match:
            continue
        pid, text = match.groups()
        if text.endswith(_UNFINISHED):
            pending[pid] = text[: -len(_UNFINISHED)]
            continue
        if text.startswith("<... "):
            text = pending.pop(pid, "") + text.split("resumed>", 1)[-1]
        name = text.split("(", 1)[0]
        result = text.rsplit("=", 1)[-1].strip().split(" ")[0]
        path = ""
        if name == "openat" and result.isdigit():
            fds[result] = text.split('"')[1]
        elif name in ("fsync", "fdatasync"):
            path = fds.get(text[len(name) + 1 :].split(")")[0].strip(), "")
        yield Syscall(index, name, result, text, path)
