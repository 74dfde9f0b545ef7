"""Log lines for child processes (the pipe relays), as ``pid:<pid>:<operation>``.

Everything is logged at ``DEBUG``; with that level disabled the methods
return before formatting anything.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from slimta.logging._format import format_line

__all__ = ["SubprocessLogger"]


class _Process(Protocol):
    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...


class SubprocessLogger:
    """Log the life of a child process.

    Obtain one with :func:`slimta.logging.getSubprocessLogger`.

    Args:
        log: The :class:`logging.Logger` to write to.
    """

    #: ``str``/``bytes`` values given to :meth:`stdio` longer than this are
    #: cut short in the log (a message body need not be logged whole).
    #:
    #: .. versionadded:: 0.1.0
    data_limit = 1024

    def __init__(self, log: logging.Logger) -> None:
        self.logger = log

    def _log(self, process: _Process, operation: str, **data: Any) -> None:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug(format_line("pid", process.pid, operation, data))

    def popen(self, process: _Process, args: object) -> None:
        """Log a child process being started.

        Args:
            process: The new process (anything with a ``pid``).
            args: The command it runs.
        """
        self._log(process, "popen", args=args)

    def stdio(self, process: _Process, stdin: object, stdout: object, stderr: object) -> None:
        """Log what was written to and read from a child's standard streams.

        Args:
            process: The process.
            stdin: What was written to its standard input.
            stdout: What it wrote to standard output.
            stderr: What it wrote to standard error.
        """
        if self.logger.isEnabledFor(logging.DEBUG):
            limit = self.data_limit
            self._log(
                process,
                "stdio",
                stdin=_clip(stdin, limit),
                stdout=_clip(stdout, limit),
                stderr=_clip(stderr, limit),
            )

    def exit(self, process: _Process) -> None:
        """Log a child process having exited, with its return code.

        Args:
            process: The process (anything with ``pid`` and ``returncode``).
        """
        self._log(process, "exit", returncode=process.returncode)


def _clip(value: object, limit: int) -> object:
    if isinstance(value, str | bytes) and len(value) > limit:
        return value[:limit]
    return value
