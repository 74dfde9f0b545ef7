"""The set of SMTP service extensions a session offers or a server announced.

:class:`Extensions` is a plain mapping from extension keyword (upper case)
to an optional parameter string.  The server builds its EHLO reply from one
with :meth:`Extensions.build_string`; the client reads a server's EHLO reply
into one with :meth:`Extensions.parse_string`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Extensions"]

T = TypeVar("T")


class Extensions:
    """SMTP extensions with their parameters, keyed case-insensitively."""

    def __init__(self) -> None:
        self.extensions: dict[str, Any] = {}

    def reset(self) -> None:
        """Forget every extension."""
        self.extensions.clear()

    def __contains__(self, ext: object) -> bool:
        return isinstance(ext, str) and ext.upper() in self.extensions

    def __iter__(self) -> Any:
        return iter(self.extensions)

    def __len__(self) -> int:
        return len(self.extensions)

    def getparam(self, ext: str, filter: Callable[[Any], T] | None = None) -> Any:  # noqa: A002
        """Return the parameter of ``ext``, or ``None`` if absent or without one.

        Args:
            ext: the extension keyword.
            filter: optional converter applied to the parameter (e.g. ``int``);
                if it raises ``ValueError`` the result is ``None``.
        """
        param = self.extensions.get(ext.upper())
        if param is None or filter is None:
            return param
        try:
            return filter(param)
        except ValueError:
            return None

    def add(self, ext: str, param: Any = None) -> None:
        """Offer ``ext``, with an optional parameter (e.g. ``add('SIZE', 1024)``)."""
        self.extensions[ext.upper()] = param

    def drop(self, ext: str) -> bool:
        """Stop offering ``ext``; returns whether it was offered."""
        return self.extensions.pop(ext.upper(), _MISSING) is not _MISSING

    def parse_string(self, string: str) -> str:
        """Read the extensions from the text of an EHLO reply.

        The first line is the greeting; each other line is ``KEYWORD [PARAM]``.
        Existing entries are replaced.

        Returns:
            The greeting line.
        """
        self.reset()
        header, *lines = string.split("\r\n")
        for line in lines:
            keyword, _, param = line.strip().partition(" ")
            if keyword:
                self.extensions[keyword.upper()] = param.strip() or None
        return header

    def build_string(self, header: str) -> str:
        """Render the EHLO reply text: ``header`` then one line per extension."""
        lines = [header]
        for ext, param in self.extensions.items():
            if param is None or param is True:
                lines.append(ext)
            elif isinstance(param, str | int):
                lines.append(f"{ext} {param}")
            else:
                # e.g. an auth object: it renders its own parameter text.
                lines.append(f"{ext} {param}".rstrip())
        return "\r\n".join(lines)


_MISSING = object()
