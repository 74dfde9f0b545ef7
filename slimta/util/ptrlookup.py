"""Reverse DNS of a client, looked up while the SMTP session goes on.

A PTR lookup should not hold up a client's greeting, so :class:`PtrLookup`
runs it in its own greenlet: start it when the client connects and collect
the answer later, waiting at most a chosen time since the start::

    lookup, port = PtrLookup.from_getpeername(sock)
    lookup.start()
    ...                                   # banner, EHLO, MAIL...
    name = lookup.finish(runtime=5.0)     # the PTR name, or None

A PTR record is chosen by whoever owns the address block, so a name it gives
proves nothing on its own. *Forward-confirmed* reverse DNS (FCrDNS) also
looks up the addresses of that name and keeps it only if the client's
address is among them: ``PtrLookup(ip, verify=True)``, or :func:`fcrdns` from
a validator that wants the answer right away.

IPv4-mapped IPv6 addresses (``::ffff:192.0.2.1``, as a dual-stack listener
reports IPv4 clients) are looked up as the IPv4 address they carry. All
lookups go through :class:`slimta.util.dns.DNSResolver` and never block the
gevent hub.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import gevent

from slimta import logging as slimta_logging
from slimta.util.dns import DNSError, DNSResolver

__all__ = ["PtrLookup", "fcrdns"]

_log = logging.getLogger(__name__)

#: At most this many PTR names are checked by forward confirmation.
_MAX_NAMES: Final = 10

if TYPE_CHECKING:
    _GreenletBase = gevent.Greenlet[[], str | None]
else:
    _GreenletBase = gevent.Greenlet


def _parse(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    addr = ipaddress.ip_address(ip.partition("%")[0].strip("[]"))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _confirmed(
    names: list[str], addr: ipaddress.IPv4Address | ipaddress.IPv6Address, timeout: float | None
) -> str | None:
    """The first of ``names`` whose A (or AAAA) records include ``addr``."""
    rtype = "A" if addr.version == 4 else "AAAA"
    # Ask for every name at once; keep the PTR order when reading the answers.
    pending = [(name, DNSResolver.query(name, rtype, timeout)) for name in names[:_MAX_NAMES]]
    for name, result in pending:
        try:
            answers = result.get()
        except DNSError:
            continue
        for rec in answers or ():
            try:
                if ipaddress.ip_address(rec.host) == addr:
                    return name
            except ValueError:
                continue
    return None


def _reverse_lookup(ip: str, verify: bool, timeout: float | None) -> str | None:
    try:
        addr = _parse(ip)
    except ValueError:
        return None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        records = DNSResolver.query(addr.reverse_pointer, "PTR", timeout).get()
    except DNSError as exc:
        if not exc.permanent:
            slimta_logging.logline(_log.debug, "ptr", "lookup", "error", ip=ip, error=str(exc))
        return None
    names = [rec.name for rec in records or () if rec.name]
    if not names:
        return None
    if not verify:
        return str(names[0])
    remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
    return _confirmed(names, addr, remaining)


def fcrdns(ip: str, timeout: float | None = None) -> str | None:
    """Look up the forward-confirmed reverse DNS name of ``ip``, waiting for it.

    The PTR names of ``ip`` are looked up, then their A (IPv4) or AAAA
    (IPv6) records; the first name, in PTR order, that resolves back to
    ``ip`` is returned. At most 10 PTR names are tried.

    Args:
        ip: The client's IP address.
        timeout: Seconds for the whole check; None leaves it to the
            resolver's own timeouts.

    Returns:
        The confirmed host name (no trailing dot), or None when there is
        none, the address is invalid, or DNS failed.

    .. versionadded:: 0.1.0
    """
    return _reverse_lookup(ip, True, timeout)


class PtrLookup(_GreenletBase):
    """Look up the PTR name of an IP address in a greenlet of its own.

    Args:
        ip: The IP address to look up (IPv4, IPv6 or IPv4-mapped IPv6).
        verify: Only give a name that is forward-confirmed (see
            :func:`fcrdns`); keyword-only, added in 5.0.

    Attributes:
        ip: The address given.
        start_time: When :meth:`start` was called (a :func:`time.monotonic`
            value), or None.
    """

    def __init__(self, ip: str, *, verify: bool = False) -> None:
        super().__init__(self._lookup)
        self.ip = ip
        self.verify = verify
        self.start_time: float | None = None
        self._result: str | None = None
        self._finished = False

    @classmethod
    def from_getpeername(cls, socket: Any) -> tuple[PtrLookup, int]:
        """Build a lookup of a socket's remote address.

        Args:
            socket: A connected socket (IPv4 or IPv6).

        Returns:
            ``(lookup, port)``: the unstarted :class:`PtrLookup` and the
            remote port.
        """
        address = socket.getpeername()
        return cls(address[0]), address[1]

    @classmethod
    def from_getsockname(cls, socket: Any) -> tuple[PtrLookup, int]:
        """Build a lookup of a socket's local address.

        Args:
            socket: A bound socket (IPv4 or IPv6).

        Returns:
            ``(lookup, port)``: the unstarted :class:`PtrLookup` and the
            local port.
        """
        address = socket.getsockname()
        return cls(address[0]), address[1]

    def start(self) -> None:
        """Start the lookup in the background and note the time."""
        self.start_time = time.monotonic()
        super().start()

    def _lookup(self) -> str | None:
        try:
            return _reverse_lookup(self.ip, self.verify, None)
        except Exception:  # noqa: BLE001 - a lookup bug must not surface in the session
            slimta_logging.log_exception(__name__, query=self.ip)
            return None

    def finish(self, runtime: float | None = None) -> str | None:
        """Collect the answer, waiting only for what is left of ``runtime``.

        The greenlet is stopped on return. Calling again returns the same
        answer.

        Args:
            runtime: Seconds since :meth:`start` the lookup may take in all:
                if 3.5 s have passed and ``runtime`` is 5.0, this waits at
                most 1.5 s. None does not wait at all.

        Returns:
            The host name (no trailing dot), or None when there is none, it
            did not come in time, or the lookup was never started.
        """
        if self._finished:
            return self._result
        result: Any = None
        if self.start_time is not None:
            elapsed = time.monotonic() - self.start_time
            wait = 0.0 if runtime is None else max(runtime - elapsed, 0.0)
            try:
                result = self.get(block=wait > 0, timeout=wait)
            except gevent.Timeout:
                result = None
        self.kill(block=False)
        self._result = result if isinstance(result, str) else None
        self._finished = True
        return self._result
