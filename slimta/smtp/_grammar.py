"""RFC 5321 / RFC 6531 grammar for the arguments of MAIL and RCPT.

Theory of operation: the command line has already been cut at CRLF and
decoded (ASCII, or UTF-8 for SMTPUTF8 sessions).  Here we pull the path out
of ``FROM:<...>`` / ``TO:<...>``, check it against the RFC 5321 grammar (with
RFC 6531's UTF-8 extensions when allowed), and split the ESMTP parameters.
Every check is a regular expression on a line that is at most a few hundred
characters long, so the cost per command is small and bounded.

Nothing here knows about sessions or replies: functions return values or
raise :class:`GrammarError` with a short reason that the protocol core turns
into a coded reply.
"""

from __future__ import annotations

import re

__all__ = ["GrammarError", "parse_params", "parse_path_argument"]

MAX_PATH = 256
MAX_LOCAL_PART = 64
MAX_DOMAIN = 255

# atext (RFC 5322) plus, for SMTPUTF8, any non-ASCII character (RFC 6531).
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~\u0080-\U0010ffff]"
_DOT_STRING = rf"{_ATEXT}+(?:\.{_ATEXT}+)*"
_QUOTED = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e\u0080-\U0010ffff]|\\[\x20-\x7e])*"'
_LABEL = r"[A-Za-z0-9\u0080-\U0010ffff](?:[A-Za-z0-9\-\u0080-\U0010ffff]*[A-Za-z0-9\u0080-\U0010ffff])?"
_DOMAIN = rf"{_LABEL}(?:\.{_LABEL})*"
_LITERAL = r"\[[\x21-\x5a\x5e-\x7e]+\]"
_MAILBOX = re.compile(rf"(?P<local>{_DOT_STRING}|{_QUOTED})@(?P<domain>{_DOMAIN}|{_LITERAL})\Z")
_ADL = re.compile(rf"@{_DOMAIN}(?:,@{_DOMAIN})*:")
# RFC 5321 4.5.1: every server must accept <postmaster> with no domain.
_POSTMASTER = re.compile(r"postmaster\Z", re.IGNORECASE)
# "<" path ">" where a quoted local part may itself contain ">".
_BRACKETED = re.compile(r'<((?:"(?:[^"\\]|\\.)*"|[^<>"])*)>')
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9\-]*)(?:=([\x21-\x3c\x3e-\x7e\u0080-\U0010ffff]+))?\Z")
_CTL = re.compile(r"[\x00-\x1f\x7f]")


class GrammarError(ValueError):
    """A MAIL or RCPT argument does not follow the grammar; ``args[0]`` says why."""

    def __init__(self, reason: str, *, address: bool = True) -> None:
        super().__init__(reason)
        #: True when the fault is in the address (vs. the parameters).
        self.address = address


def parse_path_argument(arg: str, keyword: str, *, allow_null: bool) -> tuple[str, str]:
    """Split ``FROM:<path> params`` into the mailbox and the parameter text.

    Args:
        arg: the command argument, e.g. ``'FROM:<a@b.example> SIZE=100'``.
        keyword: ``'FROM'`` or ``'TO'``.
        allow_null: whether ``<>`` is acceptable (the reverse-path only).

    Returns:
        ``(mailbox, rest)``: the mailbox without angle brackets or source
        route, and the remaining (parameter) text.

    Raises:
        GrammarError: the argument is malformed.
    """
    prefix_len = len(keyword) + 1
    if arg[:prefix_len].upper() != keyword + ":":
        raise GrammarError(f"expected {keyword}:<address>")
    # Be lenient about spaces after the colon, as most servers are.
    rest = arg[prefix_len:].lstrip(" ")
    match = _BRACKETED.match(rest)
    if not match:
        raise GrammarError("address must be enclosed in <>")
    path = match.group(1)
    tail = rest[match.end() :]
    if tail and not tail.startswith(" "):
        raise GrammarError("garbage after address")
    if _CTL.search(path):
        raise GrammarError("control character in address")
    if len(path) + 2 > MAX_PATH:
        raise GrammarError("address too long")
    if not path:
        if allow_null:
            return "", tail
        raise GrammarError("null address not allowed here")
    adl = _ADL.match(path)
    if adl:  # RFC 5321 4.1.1.3: source routes are accepted and ignored.
        path = path[adl.end() :]
    if not allow_null and _POSTMASTER.match(path):
        return path, tail
    mailbox = _MAILBOX.match(path)
    if not mailbox:
        raise GrammarError("malformed address")
    if len(mailbox.group("local")) > MAX_LOCAL_PART:
        raise GrammarError("local part too long")
    if len(mailbox.group("domain")) > MAX_DOMAIN:
        raise GrammarError("domain too long")
    return path, tail


def parse_params(text: str) -> dict[str, str | bool]:
    """Parse ESMTP parameters (``KEY=VALUE`` or ``KEY``), keys upper-cased.

    Raises:
        GrammarError: a parameter is malformed or given twice.
    """
    params: dict[str, str | bool] = {}
    for item in text.split():
        match = _PARAM.match(item)
        if not match:
            raise GrammarError(f"malformed parameter {item[:40]!r}", address=False)
        key = match.group(1).upper()
        if key in params:
            raise GrammarError(f"duplicate parameter {key}", address=False)
        value = match.group(2)
        params[key] = value if value is not None else True
    return params
