"""Asynchronous DNS lookups with :mod:`pycares`, driven by the gevent hub.

Every lookup is handed to a c-ares channel and answered through a
:class:`gevent.event.AsyncResult`, so a greenlet waiting for DNS never holds
up the others. The channel's sockets are watched by the hub's own event loop
(one io watcher per socket, added and removed as c-ares asks) and a single
timer wakes c-ares for its retransmissions and timeouts: there is no
``select()``, hence no limit on file descriptor numbers, and no thread.

The python-slimta 4.0 interface is kept::

    from slimta.util.dns import DNSResolver, DNSError

    try:
        answers = DNSResolver.query("example.com", "MX").get()
    except DNSError as exc:
        ...
    for rec in answers:
        print(rec.priority, rec.host)

Configuration
-------------

By default the resolver reads the system configuration (``/etc/resolv.conf``:
nameservers, timeout, attempts). To name the nameservers in code, for example
a local validating resolver or a test server on loopback, replace the default
resolver once at start-up::

    DNSResolver.configure(servers=["127.0.0.1:5353"], timeout=2.0, tries=2)

or build a separate instance and query it directly::

    resolver = DNSResolver(servers=[("192.0.2.53", 53), "[2001:db8::53]:5353"])
    answers = resolver.query("example.com", "A", timeout=5.0).get()

A nameserver is ``"ip"``, ``"ip:port"``, ``"[ipv6]:port"`` or an
``(ip, port)`` tuple. ``timeout`` and ``tries`` are c-ares' per-attempt
settings; the ``timeout`` argument of :meth:`DNSResolver.query` is an overall
deadline for one lookup.

Answers
-------

:meth:`DNSResolver.query` gives a list of records of the type asked (CNAME
records met on the way are left out, except for CNAME queries):

========= ==================================================
Type      Record
========= ==================================================
A, AAAA   :class:`AddressRecord` (``host``, ``ttl``)
MX        :class:`MXRecord` (``host``, ``priority``, ``ttl``)
TXT       :class:`TXTRecord` (``text``, ``data``, ``ttl``)
PTR       :class:`PTRRecord` (``name``, ``ttl``)
CNAME     :class:`CNAMERecord` (``cname``, ``ttl``)
NS        :class:`NSRecord` (``host``, ``ttl``)
SRV       :class:`SRVRecord` (``host``, ``port``, ``priority``, ``weight``, ``ttl``)
SOA       :class:`SOARecord` (``nsname``, ``hostmaster``, ``serial``, ...)
TLSA      :class:`TLSARecord` (``usage``, ``selector``, ``matching_type``, ``data``)
========= ==================================================

An empty answer is never returned: it raises :class:`DNSNoDataError`.
Host names have no trailing dot. The field names match those of pycares 4,
which python-slimta's code was written against.

Errors
------

Failures raise :class:`DNSError`, whose ``errno`` is the c-ares status code
(see :mod:`pycares.errno`). Its subclasses tell apart what a mail server must
treat differently: :class:`DNSNotFoundError` (NXDOMAIN) and
:class:`DNSNoDataError` (the name exists without such records) are
``permanent``; :class:`DNSServerError` (SERVFAIL, REFUSED, unreachable
server...) and :class:`DNSTimeoutError` are not.

The helpers :func:`resolve_mx` and :func:`resolve_addresses` implement the
mail routing rules of RFC 5321 section 5.1 and RFC 7505 (null MX) on top.

DNSSEC status (DANE)
--------------------

c-ares does not tell whether an answer was DNSSEC-validated: pycares gives
no access to the header flags. :meth:`DNSResolver.lookup_secure` therefore
asks the same nameservers itself, with dnspython building and parsing the
messages and gevent sockets carrying them (UDP, then TCP when the reply is
truncated). The query sets the DO bit (EDNS0) and the AD bit (RFC 6840
section 5.7), and the answer's AD bit is reported as
:attr:`SecureAnswer.authenticated`. The AD bit is only worth as much as the
path to the resolver: point the resolver at a validating resolver on the
same host (or reached over a trusted network), as RFC 7672 section 1.3
requires for DANE.

:func:`dkim_txt` adapts the resolver to dkimpy's ``dnsfunc`` argument, so
DKIM key lookups do not block the hub either.
"""

from __future__ import annotations

import ipaddress
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Protocol, Self, TypeAlias, cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import gevent
import gevent.socket
import pycares
import pycares.errno
from gevent.event import AsyncResult

from slimta.core import SlimtaError

__all__ = [
    "AddressRecord",
    "CNAMERecord",
    "DNSError",
    "DNSNoDataError",
    "DNSNotFoundError",
    "DNSResolver",
    "DNSServerError",
    "DNSTimeoutError",
    "MXRecord",
    "NSRecord",
    "NullMXError",
    "PTRRecord",
    "SOARecord",
    "SRVRecord",
    "SecureAnswer",
    "TLSARecord",
    "TXTRecord",
    "dkim_txt",
    "query_secure",
    "resolve_addresses",
    "resolve_mx",
]

#: A nameserver: ``"ip"``, ``"ip:port"``, ``"[ipv6]:port"`` or ``(ip, port)``.
ServerSpec: TypeAlias = "str | tuple[str, int]"

#: What :meth:`DNSResolver.query` gives: a list of the record classes below.
Answer: TypeAlias = "list[Any]"

_READ: Final = 1
_WRITE: Final = 2
#: Upper bound, in seconds, between two wake-ups of c-ares while queries are
#: pending; c-ares usually asks for less.
_MAX_WAIT: Final = 1.0


# -- errors -------------------------------------------------------------------


class DNSError(SlimtaError):
    """A DNS lookup failed.

    ``DNSError(errno)`` builds the subclass that matches ``errno``, so
    ``except DNSNotFoundError`` and ``exc.errno == pycares.errno.ARES_ENOTFOUND``
    both work.

    Args:
        errno: The c-ares status code, from :mod:`pycares.errno`.
        query_name: The name that was looked up, if known.
        query_type: The record type that was asked, e.g. ``"MX"``.

    Attributes:
        errno: The c-ares status code.
        errname: Its symbolic name, e.g. ``"ARES_ESERVFAIL"``.
        query_name: The name looked up (or None).
        query_type: The record type asked (or None).
        kind: ``"NXDOMAIN"``, ``"NODATA"``, ``"NULLMX"``, ``"SERVFAIL"``,
            ``"TIMEOUT"`` or ``"ERROR"``.
        permanent: True when asking again later cannot give another answer
            (the name or the records do not exist); a mail server rejects
            or bounces on those and retries on the others.
    """

    kind: ClassVar[str] = "ERROR"
    permanent: ClassVar[bool] = False

    def __new__(cls, *args: Any, **kwargs: Any) -> Self:
        """Pick the subclass matching ``errno`` when built as plain ``DNSError``."""
        target: type[DNSError] = cls
        if cls is DNSError:
            errno = args[0] if args else kwargs.get("errno")
            target = _ERROR_CLASSES.get(errno, DNSError) if isinstance(errno, int) else DNSError
        return cast("Self", Exception.__new__(target, *args, **kwargs))

    def __init__(self, errno: int, query_name: str | None = None, query_type: str | None = None) -> None:
        super().__init__(errno, query_name, query_type)
        self.errno = errno
        self.errname = pycares.errno.errorcode.get(errno, f"ARES_{errno}")
        self.query_name = query_name
        self.query_type = query_type

    def __str__(self) -> str:
        """Describe the failure: what went wrong, for which query."""
        text = _strerror(self.errno)
        if self.query_name is not None:
            what = f"{self.query_name} {self.query_type}" if self.query_type else self.query_name
            return f"{text}: {what} [{self.errname}]"
        return f"{text} [{self.errname}]"


class DNSNotFoundError(DNSError):
    """The name does not exist (NXDOMAIN), or is not a valid domain name."""

    kind: ClassVar[str] = "NXDOMAIN"
    permanent: ClassVar[bool] = True


class DNSNoDataError(DNSError):
    """The name exists but has no record of the type asked (NODATA)."""

    kind: ClassVar[str] = "NODATA"
    permanent: ClassVar[bool] = True


class DNSServerError(DNSError):
    """No usable answer: SERVFAIL, REFUSED, a malformed reply, no server reachable."""

    kind: ClassVar[str] = "SERVFAIL"


class DNSTimeoutError(DNSError):
    """No nameserver answered in time."""

    kind: ClassVar[str] = "TIMEOUT"


class NullMXError(DNSError):
    """The domain publishes a null MX (RFC 7505): it accepts no mail at all.

    Raised by :func:`resolve_mx`. A mail server fails such deliveries
    permanently with ``556 5.1.10``.

    Args:
        domain: The domain that has the null MX.
    """

    kind: ClassVar[str] = "NULLMX"
    permanent: ClassVar[bool] = True

    def __init__(self, domain: str) -> None:
        super().__init__(pycares.errno.ARES_ENODATA, domain, "MX")
        self.args = (domain,)
        self.domain = domain

    def __str__(self) -> str:
        """Describe the null MX."""
        return f"Domain does not accept mail (null MX): {self.domain}"


_ERROR_CLASSES: dict[int, type[DNSError]] = {
    pycares.errno.ARES_ENOTFOUND: DNSNotFoundError,
    pycares.errno.ARES_EBADNAME: DNSNotFoundError,
    pycares.errno.ARES_ENODATA: DNSNoDataError,
    pycares.errno.ARES_ESERVFAIL: DNSServerError,
    pycares.errno.ARES_EREFUSED: DNSServerError,
    pycares.errno.ARES_ENOTIMP: DNSServerError,
    pycares.errno.ARES_EFORMERR: DNSServerError,
    pycares.errno.ARES_EBADRESP: DNSServerError,
    pycares.errno.ARES_ECONNREFUSED: DNSServerError,
    pycares.errno.ARES_EOF: DNSServerError,
    pycares.errno.ARES_ETIMEOUT: DNSTimeoutError,
}


def _strerror(errno: int) -> str:
    try:
        text = pycares.errno.strerror(errno)
    except Exception:  # noqa: BLE001 - an unknown code must not hide the error
        return f"DNS error {errno}"
    return text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)


# -- records ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AddressRecord:
    """An A or AAAA record.

    Attributes:
        host: The address, e.g. ``"192.0.2.1"`` or ``"2001:db8::1"``.
        ttl: Time to live, in seconds.
        type: ``"A"`` or ``"AAAA"``.
    """

    host: str
    ttl: int
    type: str = "A"


@dataclass(frozen=True, slots=True)
class MXRecord:
    """An MX record.

    Attributes:
        host: The exchange host name (``""`` for a null MX's ``"."``).
        priority: The preference; lower is tried first.
        ttl: Time to live, in seconds.
    """

    host: str
    priority: int
    ttl: int
    type: ClassVar[str] = "MX"


@dataclass(frozen=True, slots=True)
class TXTRecord:
    """A TXT record; its character-strings are joined without separator.

    Attributes:
        text: The joined strings, decoded as UTF-8 (invalid bytes replaced).
        ttl: Time to live, in seconds.
        data: The joined strings, undecoded.
    """

    text: str
    ttl: int
    data: bytes = b""
    type: ClassVar[str] = "TXT"


@dataclass(frozen=True, slots=True)
class PTRRecord:
    """A PTR record.

    Attributes:
        name: The host name the address points to.
        ttl: Time to live, in seconds.
    """

    name: str
    ttl: int
    type: ClassVar[str] = "PTR"


@dataclass(frozen=True, slots=True)
class CNAMERecord:
    """A CNAME record.

    Attributes:
        cname: The canonical name.
        ttl: Time to live, in seconds.
    """

    cname: str
    ttl: int
    type: ClassVar[str] = "CNAME"


@dataclass(frozen=True, slots=True)
class NSRecord:
    """An NS record.

    Attributes:
        host: The nameserver's host name.
        ttl: Time to live, in seconds.
    """

    host: str
    ttl: int
    type: ClassVar[str] = "NS"


@dataclass(frozen=True, slots=True)
class SRVRecord:
    """An SRV record.

    Attributes:
        host: The target host name.
        port: The target port.
        priority: Lower is tried first.
        weight: Relative weight among equal priorities.
        ttl: Time to live, in seconds.
    """

    host: str
    port: int
    priority: int
    weight: int
    ttl: int
    type: ClassVar[str] = "SRV"


@dataclass(frozen=True, slots=True)
class SOARecord:
    """An SOA record.

    Attributes:
        nsname: The primary nameserver.
        hostmaster: The responsible mailbox, in domain name form.
        serial: Zone serial number.
        refresh: Refresh interval, in seconds.
        retry: Retry interval, in seconds.
        expires: Expiry, in seconds.
        minttl: Negative-caching TTL, in seconds.
        ttl: Time to live of the record itself, in seconds.
    """

    nsname: str
    hostmaster: str
    serial: int
    refresh: int
    retry: int
    expires: int
    minttl: int
    ttl: int
    type: ClassVar[str] = "SOA"


@dataclass(frozen=True, slots=True)
class TLSARecord:
    """A TLSA record (RFC 6698), as used by DANE for SMTP (RFC 7672).

    Attributes:
        usage: The certificate usage: 0 PKIX-TA, 1 PKIX-EE, 2 DANE-TA,
            3 DANE-EE.
        selector: 0 for the whole certificate, 1 for its public key
            (SubjectPublicKeyInfo).
        matching_type: 0 exact bytes, 1 SHA-256, 2 SHA-512.
        data: The certificate association data, as bytes.
        ttl: Time to live, in seconds.

    .. versionadded:: 0.1.0
    """

    usage: int
    selector: int
    matching_type: int
    data: bytes
    ttl: int
    type: ClassVar[str] = "TLSA"


def _host(name: str) -> str:
    return name[:-1] if name.endswith(".") else name


def _convert(rtype: str, ttl: int, data: Any) -> Any:
    if rtype in ("A", "AAAA"):
        return AddressRecord(data.addr, ttl, rtype)
    if rtype == "MX":
        return MXRecord(_host(data.exchange), data.priority, ttl)
    if rtype == "TXT":
        raw = bytes(data.data)
        return TXTRecord(raw.decode("utf-8", "replace"), ttl, raw)
    if rtype == "PTR":
        return PTRRecord(_host(data.dname), ttl)
    if rtype == "CNAME":
        return CNAMERecord(_host(data.cname), ttl)
    if rtype == "NS":
        return NSRecord(_host(data.nsdname), ttl)
    if rtype == "SRV":
        return SRVRecord(_host(data.target), data.port, data.priority, data.weight, ttl)
    if rtype == "TLSA":
        return TLSARecord(
            data.cert_usage, data.selector, data.matching_type, bytes(data.cert_association_data), ttl
        )
    return SOARecord(
        _host(data.mname),
        _host(data.rname),
        data.serial,
        data.refresh,
        data.retry,
        data.expire,
        data.minimum,
        ttl,
    )


_QUERY_TYPES: Final[dict[str, int]] = {
    name: getattr(pycares, f"QUERY_TYPE_{name}")
    for name in ("A", "AAAA", "MX", "TXT", "PTR", "CNAME", "NS", "SRV", "SOA", "TLSA")
}
_QUERY_TYPE_NAMES: Final[dict[int, str]] = {num: name for name, num in _QUERY_TYPES.items()}


def _query_type(query_type: str | int) -> tuple[str, int]:
    if isinstance(query_type, str):
        name = query_type.upper()
        if name in _QUERY_TYPES:
            return name, _QUERY_TYPES[name]
    elif query_type in _QUERY_TYPE_NAMES:
        return _QUERY_TYPE_NAMES[query_type], query_type
    supported = ", ".join(_QUERY_TYPES)
    raise ValueError(f"unsupported DNS query type {query_type!r} (supported: {supported})")


def _server_string(server: ServerSpec) -> str:
    """Turn one nameserver spec into c-ares' ``ip``/``ip:port``/``[ip6]:port`` form."""
    if isinstance(server, tuple):
        host, port = server
    else:
        text = server.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise ValueError(f"invalid nameserver {server!r}")
            port = int(rest[1:]) if rest else 53
        elif text.count(":") == 1:
            host, _, port_text = text.partition(":")
            port = int(port_text)
        else:
            host, port = text, 53
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver must be an IP address, not {host!r}") from None
    if not 0 < port < 65536:
        raise ValueError(f"invalid nameserver port {port!r}")
    return f"[{addr}]:{port}" if addr.version == 6 else f"{addr}:{port}"


def _prepare_pycares_shutdown_thread() -> None:
    """Keep pycares' channel-destroying thread from freezing the hub.

    pycares 5 frees channels on a helper thread that waits on a
    :class:`queue.SimpleQueue` it imported. If pycares was imported before
    ``gevent.monkey.patch_all()``, that queue is the blocking stdlib one while
    ``threading.Thread`` now makes greenlets: the helper would then block the
    whole hub forever. In that case start the helper on a real OS thread
    first. (Fully patched or not patched at all, pycares' own start is fine.)
    """
    manager = getattr(pycares, "_shutdown_manager", None)
    if manager is None or getattr(manager, "_thread", True) is not None:
        return
    import gevent.monkey

    if not gevent.monkey.is_module_patched("threading"):
        return
    if getattr(pycares, "SimpleQueue", None) is not gevent.monkey.get_original("queue", "SimpleQueue"):
        return
    start_new_thread = gevent.monkey.get_original("_thread", "start_new_thread")
    manager._thread = start_new_thread(manager._run_safe_shutdown_loop, ())


# -- the resolver ---------------------------------------------------------------


class _QueryFunc(Protocol):
    def __call__(
        self, name: str, query_type: str | int, timeout: float | None = None
    ) -> AsyncResult[Answer]: ...


class _DefaultOrInstance:
    """Make ``query`` work on the class (default resolver) and on an instance."""

    def __get__(self, obj: DNSResolver | None, owner: type[DNSResolver]) -> _QueryFunc:
        resolver = obj if obj is not None else owner.get_default()
        return resolver.lookup


class _Lookup:
    """One lookup in flight: where its answer goes, and its deadline timer."""

    __slots__ = ("name", "result", "timer", "type_name")

    def __init__(self, name: str, type_name: str) -> None:
        self.name = name
        self.type_name = type_name
        self.result: AsyncResult[Answer] = AsyncResult()
        self.timer: Any = None

    def fail(self, errno: int) -> None:
        if not self.result.ready():
            self.result.set_exception(DNSError(errno, self.name, self.type_name))

    def stop_timer(self) -> None:
        if self.timer is not None:
            self.timer.stop()
            self.timer.close()
            self.timer = None


class _SockStateCallback:
    """The channel's socket-state callback; holds the resolver weakly (no cycle)."""

    __slots__ = ("_ref",)

    def __init__(self, resolver: DNSResolver) -> None:
        self._ref = weakref.ref(resolver)

    def __call__(self, fd: int, readable: bool, writable: bool) -> None:
        resolver = self._ref()
        if resolver is not None:
            resolver._sock_state(fd, readable, writable)


class DNSResolver:
    """A c-ares channel whose sockets and timers are run by the gevent hub.

    ``DNSResolver.query(name, type)`` on the class uses the process-wide
    default resolver (created on first use from the system configuration,
    or set with :meth:`configure`); ``resolver.query(...)`` on an instance
    uses that instance. Use a resolver from one thread (one hub) only.

    Args:
        servers: Nameservers to ask, each ``"ip"``, ``"ip:port"``,
            ``"[ipv6]:port"`` or ``(ip, port)``; None reads them from the
            system configuration (``/etc/resolv.conf``).
        timeout: Seconds c-ares waits for each attempt; None keeps the
            system or c-ares default.
        tries: Attempts per nameserver; None keeps the system or c-ares
            default.
        rotate: Spread queries over the nameservers instead of always
            starting with the first.

    Raises:
        ValueError: A nameserver is not an IP address with a valid port.
    """

    _default: ClassVar[DNSResolver | None] = None

    query: ClassVar[_DefaultOrInstance] = _DefaultOrInstance()
    """``query(name, query_type, timeout=None) -> AsyncResult``: start a lookup.

    Called on the class it uses the default resolver, on an instance that
    instance. See :meth:`lookup`.
    """

    def __init__(
        self,
        servers: Iterable[ServerSpec] | None = None,
        timeout: float | None = None,
        tries: int | None = None,
        *,
        rotate: bool = False,
    ) -> None:
        self.servers: list[str] | None = None if servers is None else [_server_string(s) for s in servers]
        if self.servers is not None and not self.servers:
            raise ValueError("servers must name at least one nameserver")
        if timeout is not None and timeout <= 0:
            raise ValueError("timeout must be positive")
        if tries is not None and tries < 1:
            raise ValueError("tries must be at least 1")
        self.timeout = timeout
        self.tries = tries
        self._rotate = rotate
        self._channel: Any = None
        self._loop: Any = None
        self._watchers: dict[int, Any] = {}
        self._timer: Any = None
        self._pending = 0
        self._closed = False

    # -- the default resolver ------------------------------------------------

    @classmethod
    def get_default(cls) -> DNSResolver:
        """Return the default resolver, creating it from the system configuration if needed."""
        resolver = DNSResolver._default
        if resolver is None:
            resolver = DNSResolver._default = cls()
        return resolver

    @classmethod
    def set_default(cls, resolver: DNSResolver | None) -> DNSResolver | None:
        """Make ``resolver`` the default; None goes back to the system configuration.

        The previous default is returned and left open: it keeps answering
        the lookups already started on it.

        Args:
            resolver: The new default resolver, or None.

        Returns:
            The previous default (None if there was none yet).
        """
        previous = DNSResolver._default
        DNSResolver._default = resolver
        return previous

    @classmethod
    def configure(
        cls,
        servers: Iterable[ServerSpec] | None = None,
        timeout: float | None = None,
        tries: int | None = None,
        *,
        rotate: bool = False,
    ) -> DNSResolver:
        """Replace the default resolver by one built with these settings.

        Arguments are those of :class:`DNSResolver`. Code that calls
        ``DNSResolver.query(...)`` (the MX relay, DNSBL and SPF checks)
        uses it from then on.

        Returns:
            The new default resolver.
        """
        resolver = cls(servers, timeout, tries, rotate=rotate)
        cls.set_default(resolver)
        return resolver

    @property
    def nameservers(self) -> list[str]:
        """The nameservers in use, as ``"ip:port"`` / ``"[ipv6]:port"`` strings.

        With ``servers=None`` these are the ones read from the system
        configuration.
        """
        if self._closed:
            return []
        return list(self._ensure_channel().servers)

    # -- lookups ---------------------------------------------------------------

    def lookup(self, name: str, query_type: str | int, timeout: float | None = None) -> AsyncResult[Answer]:
        """Start a lookup; ``DNSResolver.query`` and ``resolver.query`` call this.

        Args:
            name: The domain name to look up.
            query_type: ``"A"``, ``"AAAA"``, ``"MX"``, ``"TXT"``, ``"PTR"``,
                ``"CNAME"``, ``"NS"``, ``"SRV"`` or ``"SOA"`` (any case), or
                the matching ``pycares.QUERY_TYPE_*`` number.
            timeout: Seconds after which the lookup fails with
                :class:`DNSTimeoutError`, whatever c-ares is still trying;
                None leaves it to c-ares' timeout and tries.

        Returns:
            An :class:`~gevent.event.AsyncResult`: its ``get()`` returns the
            list of records (never empty) or raises :class:`DNSError`.

        Raises:
            ValueError: ``query_type`` is not supported.
        """
        type_name, type_code = _query_type(query_type)
        pending = _Lookup(name, type_name)
        if self._closed:
            pending.fail(pycares.errno.ARES_EDESTRUCTION)
            return pending.result
        channel = self._ensure_channel()
        self._pending += 1
        try:
            channel.query(name, type_code, callback=lambda answer, errno: self._done(pending, answer, errno))
        except pycares.AresError as exc:
            self._pending -= 1
            pending.fail(int(exc.args[0]) if exc.args else pycares.errno.ARES_EBADQUERY)
            return pending.result
        except (UnicodeError, ValueError):
            self._pending -= 1
            pending.fail(pycares.errno.ARES_EBADNAME)
            return pending.result
        if timeout is not None and not pending.result.ready():
            pending.timer = self._loop.timer(max(timeout, 0.0))
            pending.timer.start(self._expire, pending)
        self._schedule()
        return pending.result

    def lookup_secure(self, name: str, query_type: str, timeout: float | None = None) -> SecureAnswer:
        """Look up records and whether the resolver validated them (DNSSEC).

        Unlike :meth:`lookup` this waits for the answer (from the calling
        greenlet; other greenlets run meanwhile). See "DNSSEC status" in the
        module description for how the question is sent.

        Args:
            name: The domain name to look up.
            query_type: A record type name that dnspython knows (``"TLSA"``,
                ``"MX"``, ``"A"``, ``"TXT"``...).
            timeout: Overall deadline in seconds; None uses the resolver's
                ``timeout`` times ``tries`` times the number of servers
                (5 seconds when those are unset).

        Returns:
            A :class:`SecureAnswer` (records never empty).

        Raises:
            DNSError: As :meth:`lookup`: :class:`DNSNotFoundError`,
                :class:`DNSNoDataError`, :class:`DNSServerError` or
                :class:`DNSTimeoutError`.
            ValueError: ``query_type`` is not a record type.

        .. versionadded:: 0.1.0
        """
        rdtype = dns.rdatatype.from_text(query_type.upper())
        type_name = dns.rdatatype.to_text(rdtype)
        servers = [] if self._closed else self.nameservers
        per_try = self.timeout or 2.0
        if timeout is None:
            timeout = per_try * (self.tries or 1) * max(len(servers), 1) if self.timeout else 5.0
        try:
            query = dns.message.make_query(name, rdtype, want_dnssec=True)
        except (dns.exception.DNSException, UnicodeError, ValueError):
            raise DNSError(pycares.errno.ARES_EBADNAME, name, type_name) from None
        query.flags |= dns.flags.AD
        response = _exchange(query, servers, timeout, per_try)
        if response is None:
            raise DNSError(pycares.errno.ARES_ETIMEOUT, name, type_name)
        return _secure_answer(response, rdtype, name, type_name)

    def close(self) -> None:
        """Cancel the lookups in flight (they fail with ``ARES_ECANCELLED``) and free the channel.

        Later lookups on this resolver fail with ``ARES_EDESTRUCTION``.
        """
        if self._closed:
            return
        channel = self._channel
        if channel is not None:
            channel.cancel()
        self._closed = True
        for watcher in self._watchers.values():
            watcher.stop()
            watcher.close()
        self._watchers.clear()
        self._stop_timer()
        if channel is not None:
            self._channel = None
            channel.close()

    # -- plumbing between c-ares and the hub -------------------------------------

    def _ensure_channel(self) -> Any:
        if self._channel is None:
            _prepare_pycares_shutdown_thread()
            self._loop = gevent.get_hub().loop
            options: dict[str, Any] = {"sock_state_cb": _SockStateCallback(self)}
            if self.timeout is not None:
                options["timeout"] = self.timeout
            if self.tries is not None:
                options["tries"] = self.tries
            if self._rotate:
                options["rotate"] = True
            channel = pycares.Channel(**options)
            if self.servers is not None:
                channel.servers = self.servers
            self._channel = channel
        return self._channel

    def _done(self, pending: _Lookup, answer: Any, errno: int | None) -> None:
        self._pending -= 1
        pending.stop_timer()
        if pending.result.ready():
            return  # the deadline passed first
        if errno:
            pending.fail(errno)
            return
        wanted = _QUERY_TYPES[pending.type_name]
        records = [
            _convert(pending.type_name, rec.ttl, rec.data)
            for rec in (answer.answer if answer is not None else ())
            if rec.type == wanted
        ]
        if records:
            pending.result.set(records)
        else:
            pending.fail(pycares.errno.ARES_ENODATA)

    def _expire(self, pending: _Lookup) -> None:
        pending.stop_timer()
        pending.fail(pycares.errno.ARES_ETIMEOUT)

    def _sock_state(self, fd: int, readable: bool, writable: bool) -> None:
        if self._closed:
            return
        old = self._watchers.pop(fd, None)
        if old is not None:
            old.stop()
            old.close()
        events = (_READ if readable else 0) | (_WRITE if writable else 0)
        if events:
            # Not referenced: an idle socket must not keep the loop alive. The
            # timer below holds the reference while lookups are pending.
            watcher = self._loop.io(fd, events, ref=False)
            watcher.start(self._on_io, fd, pass_events=True)
            self._watchers[fd] = watcher

    def _on_io(self, events: int, fd: int) -> None:
        if self._channel is None:
            return
        bad = pycares.ARES_SOCKET_BAD
        self._channel.process_fd(fd if events & _READ else bad, fd if events & _WRITE else bad)
        self._schedule()

    def _on_timer(self) -> None:
        if self._channel is None:
            return
        self._channel.process_fd(pycares.ARES_SOCKET_BAD, pycares.ARES_SOCKET_BAD)
        self._schedule()

    def _schedule(self) -> None:
        """Arm the timer for c-ares' next timeout, or stop it when nothing is pending."""
        self._stop_timer()
        if self._pending <= 0 or self._channel is None:
            return
        delay = self._channel.timeout(_MAX_WAIT)
        self._timer = self._loop.timer(max(delay, 0.0))
        self._timer.start(self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None


# -- mail routing helpers -------------------------------------------------------


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def resolve_addresses(
    host: str, timeout: float | None = None, resolver: DNSResolver | None = None
) -> list[str]:
    """Look up the IPv4 then IPv6 addresses of ``host``.

    The A and AAAA lookups run at the same time. An IP address literal is
    returned as is, without a lookup.

    Args:
        host: The host name.
        timeout: Deadline in seconds for each lookup (see :meth:`DNSResolver.lookup`).
        resolver: The resolver to use; None uses the default one.

    Returns:
        The A addresses, then the AAAA addresses; never empty.

    Raises:
        DNSError: Neither lookup gave an address. When both failed, a
            temporary failure (timeout, SERVFAIL) wins over a permanent
            one, and NXDOMAIN over NODATA.
    """
    if _is_ip(host):
        return [host]
    use = resolver if resolver is not None else DNSResolver.get_default()
    pending = [use.lookup(host, "A", timeout), use.lookup(host, "AAAA", timeout)]
    addresses: list[str] = []
    errors: list[DNSError] = []
    for result in pending:
        try:
            addresses.extend(rec.host for rec in result.get() or ())
        except DNSError as exc:
            errors.append(exc)
    if addresses:
        return addresses
    errors.sort(key=lambda e: (e.permanent, not isinstance(e, DNSNotFoundError)))
    raise errors[0]


def resolve_mx(
    domain: str, timeout: float | None = None, resolver: DNSResolver | None = None
) -> list[tuple[int, str]]:
    """Find where mail for ``domain`` goes, following RFC 5321 section 5.1.

    Args:
        domain: The domain of a recipient address.
        timeout: Deadline in seconds for each lookup (see :meth:`DNSResolver.lookup`).
        resolver: The resolver to use; None uses the default one.

    Returns:
        ``(preference, host)`` pairs sorted by preference (ties keep the
        server's order). When the domain has no MX record but has an
        address, the implicit MX ``[(0, domain)]``.

    Raises:
        NullMXError: The domain publishes a null MX (RFC 7505).
        DNSNotFoundError: The domain does not exist (NXDOMAIN); no fallback.
        DNSNoDataError: Neither MX nor address records exist.
        DNSError: Any other failure; ``exc.permanent`` is False for
            SERVFAIL, timeouts and unreachable servers.
    """
    use = resolver if resolver is not None else DNSResolver.get_default()
    name = domain.rstrip(".")
    try:
        answers = use.lookup(name, "MX", timeout).get() or []
    except DNSNoDataError:
        resolve_addresses(name, timeout, use)
        return [(0, name)]
    records = [(rec.priority, rec.host) for rec in answers if rec.host not in ("", ".")]
    if not records:
        raise NullMXError(name)
    records.sort(key=lambda pair: pair[0])
    return records


# -- DNSSEC-aware lookups (dnspython messages over gevent sockets) -----------------


@dataclass(frozen=True, slots=True)
class SecureAnswer:
    """The answer of :meth:`DNSResolver.lookup_secure`.

    Attributes:
        records: The records of the type asked (the classes of the table in
            the module description; CNAMEs on the way are left out).
        authenticated: The resolver set the AD bit: it validated every
            record of the answer with DNSSEC.
        ttl: The smallest TTL of the records, in seconds.

    .. versionadded:: 0.1.0
    """

    records: list[Any]
    authenticated: bool
    ttl: int


def _server_address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def _exchange(query: dns.message.Message, servers: list[str], timeout: float, per_try: float) -> Any:
    """Ask each server in turn until one gives a matching reply, within ``timeout``."""
    wire = query.to_wire()
    deadline = time.monotonic() + timeout
    while servers:
        for server in servers:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            address = _server_address(server)
            wait = min(per_try, remaining)
            response = _udp_exchange(query, wire, address, wait)
            if response is not None and response.flags & dns.flags.TC:
                response = _tcp_exchange(query, wire, address, wait)
            if response is not None:
                return response
    return None


def _udp_exchange(query: dns.message.Message, wire: bytes, address: tuple[str, int], wait: float) -> Any:
    family = gevent.socket.AF_INET6 if ":" in address[0] else gevent.socket.AF_INET
    with gevent.socket.socket(family, gevent.socket.SOCK_DGRAM) as sock:
        sock.settimeout(wait)
        try:
            sock.sendto(wire, address)
            while True:
                data, peer = sock.recvfrom(65535)
                response = _parse_reply(query, data)
                if peer[:2] == address and response is not None:
                    return response
        except OSError:
            return None


def _tcp_exchange(query: dns.message.Message, wire: bytes, address: tuple[str, int], wait: float) -> Any:
    try:
        with gevent.socket.create_connection(address, timeout=wait) as sock:
            sock.sendall(len(wire).to_bytes(2, "big") + wire)
            data = b""
            while len(data) < 2 or len(data) < 2 + int.from_bytes(data[:2], "big"):
                chunk = sock.recv(65535)
                if not chunk:
                    return None
                data += chunk
    except OSError:
        return None
    return _parse_reply(query, data[2 : 2 + int.from_bytes(data[:2], "big")])


def _parse_reply(query: dns.message.Message, data: bytes) -> Any:
    try:
        response = dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError):
        return None
    return response if query.is_response(response) else None


def _rdata_record(rtype: str, ttl: int, rdata: Any) -> Any:
    if rtype == "TLSA":
        return TLSARecord(rdata.usage, rdata.selector, rdata.mtype, bytes(rdata.cert), ttl)
    if rtype == "MX":
        return MXRecord(_host(rdata.exchange.to_text()), rdata.preference, ttl)
    if rtype in ("A", "AAAA"):
        return AddressRecord(rdata.address, ttl, rtype)
    if rtype == "TXT":
        raw = b"".join(rdata.strings)
        return TXTRecord(raw.decode("utf-8", "replace"), ttl, raw)
    if rtype in ("CNAME", "PTR", "NS"):
        host = _host(rdata.target.to_text())
        return {"CNAME": CNAMERecord, "PTR": PTRRecord, "NS": NSRecord}[rtype](host, ttl)
    return rdata


def _secure_answer(response: Any, rdtype: Any, name: str, type_name: str) -> SecureAnswer:
    rcode = response.rcode()
    if rcode == dns.rcode.NXDOMAIN:
        raise DNSError(pycares.errno.ARES_ENOTFOUND, name, type_name)
    if rcode != dns.rcode.NOERROR:
        raise DNSError(pycares.errno.ARES_ESERVFAIL, name, type_name)
    records = [
        _rdata_record(type_name, rrset.ttl, rdata)
        for rrset in response.answer
        if rrset.rdtype == rdtype
        for rdata in rrset
    ]
    if not records:
        raise DNSError(pycares.errno.ARES_ENODATA, name, type_name)
    ttl = min(rrset.ttl for rrset in response.answer if rrset.rdtype == rdtype)
    return SecureAnswer(records, bool(response.flags & dns.flags.AD), ttl)


def query_secure(
    name: str, query_type: str, timeout: float | None = None, resolver: DNSResolver | None = None
) -> SecureAnswer:
    """:meth:`DNSResolver.lookup_secure` on ``resolver`` (None: the default resolver).

    .. versionadded:: 0.1.0
    """
    use = resolver if resolver is not None else DNSResolver.get_default()
    return use.lookup_secure(name, query_type, timeout)


def dkim_txt(name: bytes | str, timeout: float = 5) -> bytes | None:
    """Fetch a DKIM key record; dkimpy's ``dnsfunc`` through our resolver.

    Pass it as ``dnsfunc=dkim_txt`` to dkimpy's ``verify``: the lookup then
    runs on the default :class:`DNSResolver` and waits cooperatively.

    Args:
        name: The record name (``selector._domainkey.domain``), bytes or str.
        timeout: Seconds allowed for the lookup.

    Returns:
        The TXT record's strings joined (the first record when there are
        several), or None when the name or the record does not exist.

    Raises:
        DNSError: A temporary failure (SERVFAIL, timeout): the caller should
            report ``temperror`` rather than a bad signature.

    .. versionadded:: 0.1.0
    """
    text = name.decode("ascii", "replace") if isinstance(name, bytes) else name
    try:
        records = DNSResolver.get_default().lookup(text.rstrip("."), "TXT", timeout).get() or []
    except DNSError as exc:
        if exc.permanent:
            return None
        raise
    return bytes(records[0].data) if records else None
