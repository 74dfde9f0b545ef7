"""Sender Policy Framework (SPF, RFC 7208) checks of the client sending mail.

A domain publishes in a TXT record which hosts may send mail with its name in
the ``MAIL FROM`` address; :class:`EnforceSpf` evaluates that policy for the
connecting client and can refuse mail by result::

    spf = EnforceSpf(timeout=10.0)
    spf.set_enforcement("fail", match_code="550", match_message="5.7.23 SPF: {reason}")
    spf.set_enforcement("temperror", match_code="451", match_message="4.7.24 SPF: {reason}")

    class Validators(SmtpValidators):
        @spf.check
        def handle_mail(self, reply, sender, params):
            ...

The evaluation is our own implementation of RFC 7208's ``check_host()``,
made through :class:`slimta.util.dns.DNSResolver` (pycares on the gevent
hub), so a check never blocks other sessions. It covers:

- the mechanisms ``all``, ``include``, ``a``, ``mx``, ``ptr``, ``ip4``,
  ``ip6`` and ``exists``, with their qualifiers (``+`` pass, ``-`` fail,
  ``~`` softfail, ``?`` neutral) and dual CIDR lengths;
- the modifiers ``redirect`` and ``exp`` (the explanation of a ``fail``
  becomes the reason); other modifiers are ignored;
- macros (section 7): ``%{s}``, ``%{l}``, ``%{o}``, ``%{d}``, ``%{i}``,
  ``%{h}``, ``%{v}`` (and ``%{c}``, ``%{r}``, ``%{t}`` in explanations),
  with digit and ``r`` transformers, delimiters and URL-escaping upper case
  letters. ``%{p}`` always expands to ``unknown``, which RFC 7208 allows;
- the limits: at most 10 mechanisms and modifiers that query DNS, 10 MX
  hosts per ``mx``, 10 names per ``ptr`` and 2 void lookups (NXDOMAIN or
  empty answers); going past one is ``permerror``, so an ``include`` loop or
  a chain of 50 includes ends as ``permerror`` after 11 lookups;
- the HELO identity: with a null sender (``MAIL FROM:<>``) the policy of the
  EHLO name is checked, as ``postmaster@<ehlo name>``;
- one deadline for the whole check (``timeout``): a DNS failure (SERVFAIL,
  a malformed answer) or running out of time gives ``temperror``.

Results are the strings of RFC 7208 section 2.6: ``pass``, ``fail``,
``softfail``, ``neutral``, ``none``, ``permerror`` and ``temperror``. No SPF
record (or no usable identity) is ``none``; two SPF records, a syntax error or
a broken limit are ``permerror``.

This module holds the public entry points (:func:`check_host`,
:class:`EnforceSpf`); the record parser, the macro expansion and the
mechanism evaluation live in the private ``slimta.util._spf``.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import time
from collections.abc import Callable
from typing import Any, Concatenate, Final, ParamSpec, TypeVar

from slimta.logging import logline
from slimta.util._spf import Context, clean, evaluate
from slimta.util.dns import DNSResolver

__all__ = ["RESULTS", "EnforceSpf", "check_host"]

_log = logging.getLogger(__name__)

#: Every result :meth:`EnforceSpf.query` can give.
RESULTS: Final = ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror")

_P = ParamSpec("_P")
_T = TypeVar("_T")


def check_host(
    ip: str,
    domain: str,
    sender: str,
    helo: str | None = None,
    timeout: float = 10.0,
    resolver: DNSResolver | None = None,
) -> tuple[str, str]:
    """Evaluate the SPF policy of ``domain`` for a client (RFC 7208 section 4).

    Args:
        ip: The client's IP address; an IPv4-mapped IPv6 address counts as IPv4.
        domain: The domain whose policy is checked.
        sender: The ``MAIL FROM`` address (``local@domain``); a missing
            local part is taken as ``postmaster``.
        helo: The EHLO/HELO name, for the ``%{h}`` macro.
        timeout: Seconds for the whole evaluation, includes and redirects
            included; past them the result is ``temperror``.
        resolver: The resolver to use; None uses the default one.

    Returns:
        ``(result, reason)``: one of :data:`RESULTS` and a short text.

    .. versionadded:: 0.1.0
    """
    try:
        addr = ipaddress.ip_address(ip.partition("%")[0].strip("[]"))
    except ValueError:
        return "none", f"{ip!r} is not an IP address"
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    local, at, sender_domain = sender.rpartition("@")
    if not at:
        local, sender_domain = "", sender
    ctx = Context(
        ip=addr,
        sender=f"{local or 'postmaster'}@{sender_domain}",
        local=local or "postmaster",
        sender_domain=sender_domain,
        helo=helo or "unknown",
        deadline=time.monotonic() + timeout,
        resolver=resolver if resolver is not None else DNSResolver.get_default(),
    )
    result, reason = evaluate(ctx, domain[:-1] if domain.endswith(".") else domain)
    return result, clean(reason)


class EnforceSpf:
    """Check the SPF policy of each sender and refuse mail by result.

    Results without an enforcement set are only logged.

    Args:
        timeout: Seconds for each check; a check that takes longer gives
            ``temperror``.
    """

    def __init__(self, timeout: float = 10.0) -> None:
        self.policies: dict[str, tuple[str, str]] = {}
        self.timeout = timeout

    def set_enforcement(
        self, result: str, match_code: str = "550", match_message: str = "5.7.1 Access denied"
    ) -> None:
        """Choose the reply given to ``MAIL FROM`` when a check has this result.

        Args:
            result: One of :data:`RESULTS` (any case).
            match_code: The reply code to set.
            match_message: The reply message to set; ``{reason}`` in it is
                replaced by the check's reason.

        Raises:
            ValueError: ``result`` is not an SPF result.
        """
        if result.lower() not in RESULTS:
            raise ValueError(f"unknown SPF result {result!r} (expected one of {', '.join(RESULTS)})")
        self.policies[result.lower()] = (match_code, match_message)

    def query(self, sender: str, ip: str, ehlo_as: str | None) -> tuple[str, str]:
        """Check whether ``ip`` may send mail from ``sender``.

        With a null sender the EHLO name's policy is checked instead (RFC
        7208 section 2.3). Never raises.

        Args:
            sender: The ``MAIL FROM`` address; ``""`` (or ``"<>"``) for a
                bounce.
            ip: The client's IP address.
            ehlo_as: The name the client gave in EHLO/HELO, or None.

        Returns:
            ``(result, reason)``: one of :data:`RESULTS` and a short text.
        """
        address = (sender or "").strip().removeprefix("<").removesuffix(">")
        if address:
            domain = address.rpartition("@")[2]
        elif ehlo_as:
            domain, address = ehlo_as, f"postmaster@{ehlo_as}"
        else:
            return "none", "null sender and no EHLO name"
        try:
            result, reason = check_host(ip or "", domain, address, ehlo_as, self.timeout)
        except Exception:  # noqa: BLE001 - a bug here must not break the SMTP session
            from slimta import logging as slimta_logging

            slimta_logging.log_exception(__name__, sender=address)
            result, reason = "temperror", "SPF check failed"
        logline(_log.info, "spf", "check", result, ip=ip, sender=address, helo=ehlo_as, reason=reason)
        return result, reason

    def _apply(self, reply: Any, result: str, reason: str) -> None:
        policy = self.policies.get(result)
        if policy is None:
            return
        code, message = policy
        # A message with other braces in it is used as written.
        with contextlib.suppress(KeyError, IndexError, ValueError):
            message = message.format(reason=reason)
        reply.code = code
        reply.message = message

    def check(self, f: Callable[Concatenate[Any, Any, _P], _T]) -> Callable[Concatenate[Any, Any, _P], _T]:
        """Decorate a :class:`~slimta.edge.smtp.SmtpValidators` hook with an SPF check.

        Use it on ``handle_mail`` (the sender is its argument), or on
        ``handle_rcpt`` / ``handle_data`` (the sender is read from the
        session's envelope). The client's address comes from
        ``self.session.address`` and the EHLO name from
        ``self.session.ehlo_as``. When an enforcement is set for the
        result, the reply is changed; the hook is then called in every case.

        Args:
            f: The hook to decorate.

        Returns:
            The decorated hook.
        """

        @functools.wraps(f)
        def wrapper(validators: Any, reply: Any, /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
            session = validators.session
            address = getattr(session, "address", None)
            ip = address[0] if isinstance(address, tuple | list) and address else None
            envelope = getattr(session, "envelope", None)
            sender = envelope.sender if envelope is not None else (args[0] if args else "")
            if isinstance(ip, str) and isinstance(sender, str | None):
                result, reason = self.query(sender or "", ip, getattr(session, "ehlo_as", None))
                self._apply(reply, result, reason)
            return f(validators, reply, *args, **kwargs)

        return wrapper
