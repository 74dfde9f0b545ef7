"""The ``X-Smtp-Reply`` header shared by the HTTP edge and relay.

Its value is an SMTP reply code followed by quoted parameters, as in
``550; message="5.1.1 No such user"; command="RCPT"``.  Writing keeps the
value printable ASCII (anything else becomes a space, so no reply text can
end the header early); reading undoes the backslash escapes.
"""

from __future__ import annotations

import re

from slimta.smtp.reply import Reply

#: The header's name.
HEADER = "X-Smtp-Reply"

_NOT_PRINTABLE_ASCII = re.compile(r"[^\x20-\x7e]")
_CODE = re.compile(r"\s*([2-5][0-9][0-9])\s*(?:;|\Z)")
_PARAM = re.compile(r';\s*([A-Za-z][A-Za-z0-9_-]*)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s;"]*))')
_UNESCAPE = re.compile(r"\\(.)")


def _quote(text: str) -> str:
    text = _NOT_PRINTABLE_ASCII.sub(" ", text)
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def format_reply(reply: Reply) -> str:
    """Return the header value for ``reply``."""
    value = f"{reply.code}; message={_quote(reply.message or '')}"
    if reply.command:
        value += f"; command={_quote(reply.command)}"
    return value


def parse_reply(value: str | None) -> Reply | None:
    """Read a header value back into a :class:`~slimta.smtp.reply.Reply`.

    Returns ``None`` when there is no value or it has no valid code.
    """
    if not value:
        return None
    match = _CODE.match(value)
    if match is None:
        return None
    params: dict[str, str] = {}
    for param in _PARAM.finditer(value, match.end(1)):
        quoted, token = param.group(2), param.group(3)
        text = _UNESCAPE.sub(r"\1", quoted) if quoted is not None else token
        params.setdefault(param.group(1).lower(), text)
    return Reply(match.group(1), params.get("message", ""), params.get("command"))
