"""DNS block lists (DNSBLs): is the connecting client's address listed?

A DNSBL publishes its listings in DNS (RFC 5782): to ask whether
``192.0.2.99`` is listed on ``zen.example.net``, look up the A record of
``99.2.0.192.zen.example.net``. An answer means "listed" (its address is a
code, e.g. ``127.0.0.2``, and the TXT record of the same name usually says
why); NXDOMAIN means "not listed". IPv6 addresses are written as 32
reversed nibbles (``...8.b.d.0.1.0.0.2.zen.example.net``); IPv4-mapped IPv6
addresses (``::ffff:192.0.2.99``) are checked as the IPv4 address they carry.

A check costs one A query, made through :class:`slimta.util.dns.DNSResolver`
(pycares on the gevent hub, never blocking it). The reason (TXT) is only
fetched when asked for. ::

    from slimta.util.dnsbl import DnsBlocklistGroup, check_dnsbl

    class Validators(SmtpValidators):
        @check_dnsbl("zen.example.net")
        def handle_banner(self, reply, address):
            ...

What counts as listed
---------------------

- An A answer whose address is in ``127.0.0.0/8`` and not in one of the
  ``ignore`` networks. Lists use codes outside the listing range to say
  something else (one well-known list answers ``127.255.255.254`` when it
  refuses queries from public resolvers): pass those as ``ignore``. An
  answer outside ``127.0.0.0/8`` is never a listing; RFC 5782 keeps codes in
  that range, and a list whose domain expired and now resolves every name to
  a parking page would otherwise list the whole Internet.
- NXDOMAIN, or a name with no A record: not listed.
- A failure (SERVFAIL, timeout, no answer in ``timeout`` seconds): counted
  as listed with ``strict=True`` (fail closed) and as not listed with
  ``strict=False``, the default (fail open). python-slimta documented the
  same meaning but implemented the opposite, so that a list that went down
  blocked every client by default (python-slimta issue #132); here
  ``strict`` does what its name says.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any, Concatenate, Final, ParamSpec, TypeAlias, TypeVar

import gevent
from gevent.pool import Pool

from slimta.logging import logline
from slimta.util.dns import DNSError, DNSNoDataError, DNSNotFoundError, DNSResolver

__all__ = ["DnsBlocklist", "DnsBlocklistGroup", "check_dnsbl"]

_log = logging.getLogger(__name__)

#: An IP address or network given as ``ignore``: ``"127.0.0.10"``,
#: ``"127.255.255.0/24"`` or an :mod:`ipaddress` object.
IgnoreSpec: TypeAlias = "str | ipaddress.IPv4Address | ipaddress.IPv4Network"

_LISTING_RANGE: Final = ipaddress.IPv4Network("127.0.0.0/8")
_DEFAULT_TIMEOUT: Final = 10.0

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _client_ip(ip: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Parse ``ip``; an IPv4-mapped IPv6 address becomes its IPv4 address."""
    addr = ipaddress.ip_address(ip.partition("%")[0].strip("[]"))
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def _reversed_name(ip: str) -> str:
    """``192.0.2.99`` -> ``99.2.0.192``; IPv6 -> 32 reversed nibbles (RFC 5782 2.4)."""
    addr = _client_ip(ip)
    if isinstance(addr, ipaddress.IPv4Address):
        return ".".join(reversed(str(addr).split(".")))
    return ".".join(reversed(addr.exploded.replace(":", "")))


class DnsBlocklist:
    """One DNS block list.

    ``ip in dnsbl`` is :meth:`get` with a 10 second timeout, and
    ``dnsbl[ip]`` is :meth:`get_reason` with the same timeout; the latter
    never raises :class:`KeyError` (it gives None), so ask it only for an
    address found listed::

        if "192.0.2.99" in dnsbl:
            reason = dnsbl["192.0.2.99"]

    Args:
        address: The list's DNS zone, e.g. ``"zen.example.net"``.
        ignore: Answer codes that do not mean "listed": addresses or
            networks, e.g. ``["127.255.255.0/24"]``.

    Raises:
        ValueError: An ``ignore`` item is not an IPv4 address or network.
    """

    def __init__(self, address: str, ignore: Iterable[IgnoreSpec] | None = None) -> None:
        self.address = address.strip().rstrip(".")
        #: The networks of answer codes that are not listings.
        self.ignore: list[ipaddress.IPv4Network] = [
            ipaddress.IPv4Network(item, strict=False) for item in (ignore or ())
        ]

    def __repr__(self) -> str:
        return f"DnsBlocklist({self.address!r})"

    def _build_query(self, ip: str) -> str:
        return f"{_reversed_name(ip)}.{self.address}"

    def __contains__(self, ip: str) -> bool:
        return self.get(ip, timeout=_DEFAULT_TIMEOUT)

    def __getitem__(self, ip: str) -> str | None:
        return self.get_reason(ip, timeout=_DEFAULT_TIMEOUT)

    def is_listing(self, code: str) -> bool:
        """Tell whether one A answer of this list means "listed".

        Args:
            code: The address in the answer, e.g. ``"127.0.0.2"``.

        Returns:
            True when ``code`` is in ``127.0.0.0/8`` and in no ``ignore`` network.

        .. versionadded:: 0.1.0
        """
        try:
            addr = ipaddress.IPv4Address(code)
        except ValueError:
            return False
        return addr in _LISTING_RANGE and not any(addr in net for net in self.ignore)

    def get(self, ip: str, timeout: float | None = None, strict: bool = False) -> bool:
        """Check whether ``ip`` is listed; one A query.

        Args:
            ip: The IPv4 or IPv6 address to check.
            timeout: Seconds to wait for the answer; None leaves it to the
                resolver's own timeout and retries.
            strict: What a failure (SERVFAIL, timeout) means: True counts
                the address as listed, False (the default) as not listed.

        Returns:
            True if the list has an entry for ``ip`` (see the module notes).

        Raises:
            ValueError: ``ip`` is not an IP address.
        """
        query = self._build_query(ip)
        return self._listed(query, DNSResolver.query(query, "A", timeout), strict)

    def _listed(self, query: str, pending: Any, strict: bool) -> bool:
        """Read the answer of an A lookup started by :meth:`get`."""
        try:
            answers = pending.get()
        except (DNSNotFoundError, DNSNoDataError):
            return False
        except DNSError as exc:
            logline(_log.warning, "dnsbl", self.address, "error", query=query, error=str(exc), strict=strict)
            return strict
        return any(self.is_listing(rec.host) for rec in answers or ())

    def get_reason(self, ip: str, timeout: float | None = None) -> str | None:
        """Fetch the list's explanation (its TXT record) for ``ip``.

        Args:
            ip: The IPv4 or IPv6 address that was found listed.
            timeout: Seconds to wait for the answer.

        Returns:
            The text of the first TXT record, or None when there is none or
            the lookup failed.

        Raises:
            ValueError: ``ip`` is not an IP address.
        """
        query = self._build_query(ip)
        try:
            answers = DNSResolver.query(query, "TXT", timeout).get()
        except DNSError:
            return None
        for rec in answers or ():
            return str(rec.text)
        return None


class DnsBlocklistGroup:
    """Several DNS block lists, queried in parallel.

    Every list's lookup is started at once and they all share one deadline,
    so a group check takes one round trip, however many lists it holds.

    Args:
        pool: A :class:`gevent.pool.Pool`, or the size of a new one, that
            bounds how many lookups run at a time (for example when many
            clients are checked at once); None does not bound them.
    """

    def __init__(self, pool: Pool | int | None = None) -> None:
        self.dnsbls: list[DnsBlocklist] = []
        if isinstance(pool, Pool) or pool is None:
            self.pool = pool
        else:
            self.pool = Pool(pool)

    def add_dnsbl(self, address: str | DnsBlocklist, ignore: Iterable[IgnoreSpec] | None = None) -> None:
        """Add a list to the group.

        Args:
            address: The list's DNS zone, or a ready :class:`DnsBlocklist`.
            ignore: Answer codes that do not mean "listed" (see
                :class:`DnsBlocklist`); only used with a zone name.
        """
        dnsbl = address if isinstance(address, DnsBlocklist) else DnsBlocklist(address, ignore)
        self.dnsbls.append(dnsbl)

    def __contains__(self, ip: str) -> bool:
        return bool(self.get(ip, timeout=_DEFAULT_TIMEOUT))

    def _each(
        self,
        dnsbls: list[DnsBlocklist],
        timeout: float | None,
        task: Callable[[DnsBlocklist, float | None], _T],
    ) -> dict[str, _T | None]:
        """Run ``task(dnsbl, remaining_time)`` for every list; None for those unfinished at the deadline."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def run(dnsbl: DnsBlocklist) -> _T:
            remaining = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            return task(dnsbl, remaining)

        spawn = self.pool.spawn if self.pool is not None else gevent.spawn
        jobs = [(dnsbl, spawn(run, dnsbl)) for dnsbl in dnsbls]
        # The lookups carry the deadline themselves; this wait only matters
        # when a bounded pool kept some from starting in time.
        wait = None if deadline is None else max(deadline - time.monotonic(), 0.0) + 0.5
        gevent.joinall([job for _, job in jobs], timeout=wait)
        results: dict[str, _T | None] = {}
        for dnsbl, job in jobs:
            if job.successful():
                results[dnsbl.address] = job.value
            else:
                job.kill(block=False)
                results[dnsbl.address] = None
        return results

    def get(self, ip: str, timeout: float | None = None, strict: bool = False) -> set[str]:
        """Check ``ip`` against every list of the group.

        Args:
            ip: The IPv4 or IPv6 address to check.
            timeout: Seconds to wait for all the answers.
            strict: What a failure of one list means: True counts it as a
                match, False (the default) as no match.

        Returns:
            The zones (``address``) of the lists that have ``ip`` listed.

        Raises:
            ValueError: ``ip`` is not an IP address.
        """
        _reversed_name(ip)  # raise ValueError here rather than in every greenlet
        outcome = self._each(self.dnsbls, timeout, lambda dnsbl, left: dnsbl.get(ip, left, strict))
        return {address for address, listed in outcome.items() if listed or (listed is None and strict)}

    def get_reasons(
        self, matches: Iterable[str], ip: str, timeout: float | None = None
    ) -> dict[str, str | None]:
        """Fetch the explanations of the lists that matched, in parallel.

        Args:
            matches: Zones as returned by :meth:`get`.
            ip: The address that was checked.
            timeout: Seconds to wait for all the answers.

        Returns:
            ``{zone: reason}`` for every zone of ``matches``; the reason is
            None when the list gave none (or in time).

        Raises:
            ValueError: ``ip`` is not an IP address.
        """
        wanted = set(matches)
        _reversed_name(ip)
        reasons: dict[str, str | None] = dict.fromkeys(wanted)
        chosen = [dnsbl for dnsbl in self.dnsbls if dnsbl.address in wanted]
        reasons.update(self._each(chosen, timeout, lambda dnsbl, left: dnsbl.get_reason(ip, left)))
        return reasons


def _session_ip(validators: Any) -> str | None:
    """The client's IP address from ``validators.session.address``, if any."""
    session = getattr(validators, "session", None)
    address = getattr(session, "address", None)
    if isinstance(address, tuple | list) and address and isinstance(address[0], str):
        return address[0]
    return None


def check_dnsbl(
    address: str | DnsBlocklist | DnsBlocklistGroup,
    match_code: str = "550",
    match_message: str = "5.7.1 Access denied",
    timeout: float = 10.0,
    *,
    strict: bool = False,
) -> Callable[[Callable[Concatenate[Any, Any, _P], _T]], Callable[Concatenate[Any, Any, _P], _T | None]]:
    """Decorate a :class:`~slimta.edge.smtp.SmtpValidators` hook to refuse listed clients.

    The hook must take the reply as its first argument (``handle_banner``,
    ``handle_ehlo``, ``handle_mail``, ``handle_rcpt``...). The client's
    address is read from ``self.session.address``. When it is listed, the
    reply becomes ``match_code`` / ``match_message`` and the hook is not
    called; otherwise the hook runs as usual. A client without a usable IP
    address (a UNIX socket, a PROXY ``UNKNOWN`` header) is not checked.
    Nothing is raised out of the hook on DNS trouble: ``strict`` decides.

    Args:
        address: A :class:`DnsBlocklist`, a :class:`DnsBlocklistGroup` or
            the DNS zone of one list.
        match_code: The reply code for a listed client.
        match_message: The reply message for a listed client.
        timeout: Seconds to wait for the answer(s).
        strict: Refuse the client when the list cannot be asked (fail
            closed); by default such a client is let through.

    Returns:
        The decorator.

    .. versionchanged:: 0.1.0
       IPv6 clients are checked; ``strict`` was added.
    """
    dnsbl = address if isinstance(address, DnsBlocklist | DnsBlocklistGroup) else DnsBlocklist(address)

    def decorator(
        hook: Callable[Concatenate[Any, Any, _P], _T],
    ) -> Callable[Concatenate[Any, Any, _P], _T | None]:
        @functools.wraps(hook)
        def wrapper(self: Any, reply: Any, /, *args: _P.args, **kwargs: _P.kwargs) -> _T | None:
            ip = _session_ip(self)
            listed = False
            if ip is not None:
                try:
                    listed = bool(dnsbl.get(ip, timeout=timeout, strict=strict))
                except ValueError:
                    listed = False  # not an IP address: nothing to look up
            if listed:
                reply.code = match_code
                reply.message = match_message
                return None
            return hook(self, reply, *args, **kwargs)

        return wrapper

    return decorator
