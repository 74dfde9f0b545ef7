"""Per-client connection and rate limits for the SMTP edge.

Theory of operation: an internet-facing SMTP server must not let one client
(or one network) take every connection slot, try passwords for ever, or pump
messages at any rate.  :class:`ClientLimits` names every limit; each one is
switched off with ``None``.  A :class:`Limiter` enforces them for one
:class:`~slimta.edge.smtp.SmtpEdge`:

* **concurrency** -- open connections in total, per client IP and per
  network (``/24`` for IPv4, ``/64`` for IPv6).  These are counted by the
  node that holds the sockets, in memory: a shared counter would leak for
  ever when a node dies with connections open.
* **rates** -- new connections per minute per IP, messages and recipients
  per minute per IP (or per authenticated user), and failed AUTH attempts
  per hour per IP.  Each is a sliding-window estimate built from two fixed
  windows (the previous window's count weighted by how much of it still
  overlaps the sliding window, plus the current one): constant memory per
  key, and the same two counters work in Redis, so several nodes share them
  when :attr:`ClientLimits.redis` is set.

Clients in :attr:`ClientLimits.exempt` (loopback by default, as Postfix
exempts ``$mynetworks`` from anvil) skip every per-client limit but still
count towards the total.  A Redis failure never refuses mail: the limiter
logs it and lets the client through (fail open), since a rate limit is a
defence against abuse, not a guard of correctness.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, cast

from slimta.smtp.reply import Reply

__all__ = ["ClientLimits", "Limiter", "MemoryCounters", "RedisCounters"]

_log = logging.getLogger(__name__)

MINUTE: Final = 60.0
HOUR: Final = 3600.0


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Every per-client limit of an SMTP edge; ``None`` switches one off.

    Attributes:
        max_connections: open connections in total; more are answered
            ``421 4.7.0 Too many connections`` and closed at once.  Bounds
            idle (parked) sessions too; the edge's pool, if any, bounds only
            sessions that are busy processing a command.
        max_connections_per_ip: open connections from one IP (Postfix's
            ``smtpd_client_connection_count_limit`` is 50).
        max_connections_per_network: open connections from one ``/24``
            (IPv4) or ``/64`` (IPv6) network.
        ipv4_prefix: prefix length of an IPv4 "network".
        ipv6_prefix: prefix length of an IPv6 "network".
        connections_per_minute: new connections per minute from one IP.
        messages_per_minute: messages per minute from one IP, or from one
            authenticated user when the client authenticated.
        recipients_per_minute: accepted recipients per minute, same keys.
        auth_failures_per_hour: failed AUTH attempts per hour from one IP;
            past it AUTH is answered ``454 4.7.0`` until the count decays.
        exempt: networks (CIDR strings) that no per-client limit applies to.
        redis: a Redis URL (``redis://host:port/db``) or a ready
            ``redis.Redis`` client: rates and AUTH failures are then shared
            by every node using the same server and :attr:`redis_prefix`.
        redis_prefix: prefix of the keys the limiter writes in Redis.
    """

    max_connections: int | None = 20000
    max_connections_per_ip: int | None = 50
    max_connections_per_network: int | None = 200
    ipv4_prefix: int = 24
    ipv6_prefix: int = 64
    connections_per_minute: int | None = 600
    messages_per_minute: int | None = 1200
    recipients_per_minute: int | None = 12000
    auth_failures_per_hour: int | None = 10
    exempt: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    redis: Any = None
    redis_prefix: str = "slimta:limits:"

    @classmethod
    def off(cls) -> ClientLimits:
        """Limits with every limit switched off (and nothing exempt)."""
        return cls(
            max_connections=None,
            max_connections_per_ip=None,
            max_connections_per_network=None,
            connections_per_minute=None,
            messages_per_minute=None,
            recipients_per_minute=None,
            auth_failures_per_hour=None,
            exempt=(),
        )


class MemoryCounters:
    """Two-window rate counters held in this process.

    Memory stays bounded: keys whose windows are over are swept every
    ``sweep_every`` hits.
    """

    def __init__(self, clock: Any = time.monotonic, sweep_every: int = 4096) -> None:
        self._clock = clock
        # key -> [window index, previous window's count, current count]
        self._counts: dict[tuple[str, str, float], list[float]] = {}
        self._sweep_every = sweep_every
        self._hits = 0

    def hit(self, kind: str, key: str, period: float, amount: int = 1) -> float:
        """Add ``amount`` to ``key``'s count and return the sliding estimate."""
        now = self._clock()
        index = int(now // period)
        entry = self._counts.get((kind, key, period))
        if entry is None:
            entry = self._counts[(kind, key, period)] = [index, 0.0, 0.0]
        elif entry[0] != index:
            # Roll over: the current window becomes the previous one, unless
            # more than a whole window passed with no hit.
            entry[1] = entry[2] if entry[0] == index - 1 else 0.0
            entry[0], entry[2] = index, 0.0
        entry[2] += amount
        self._hits += 1
        if self._hits >= self._sweep_every:
            self._sweep(now)
        return _estimate(entry[1], entry[2], now, period)

    def _sweep(self, now: float) -> None:
        self._hits = 0
        stale = [k for k, v in self._counts.items() if v[0] < int(now // k[2]) - 1]
        for key in stale:
            del self._counts[key]

    def __len__(self) -> int:
        return len(self._counts)


# Add to the current window's count and read the previous window's, in one
# round trip; the key of a window expires two windows after it started.
_HIT_SCRIPT: Final = """
local cur = redis.call('INCRBY', KEYS[1], ARGV[1])
if cur == tonumber(ARGV[1]) then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
local prev = redis.call('GET', KEYS[2])
return {cur, prev or '0'}
"""


class RedisCounters:
    """The same two-window counters, kept in Redis and shared by nodes.

    Windows are numbered from wall-clock time so that every node agrees on
    them.  Any Redis error lets the client through (and is logged).

    Args:
        client: a Redis URL or a ``redis.Redis`` client.
        prefix: key prefix.
    """

    def __init__(self, client: Any, prefix: str = "slimta:limits:") -> None:
        if isinstance(client, str):
            client = _redis_from_url(client)
        self.redis = client
        self.prefix = prefix
        self._script = client.register_script(_HIT_SCRIPT)

    def hit(self, kind: str, key: str, period: float, amount: int = 1) -> float:
        """Add ``amount`` to ``key``'s count and return the sliding estimate."""
        import redis

        now = time.time()
        index = int(now // period)
        base = f"{self.prefix}{kind}:{key}:"
        try:
            cur, prev = self._script(
                keys=[f"{base}{index}", f"{base}{index - 1}"],
                args=[amount, int(period * 2000)],
            )
        except (redis.RedisError, OSError) as exc:
            _log.warning("rate limit check failed open: %s", exc)
            return 0.0
        return _estimate(float(prev), float(cur), now, period)


def _redis_from_url(url: str) -> Any:
    """A redis-py client whose sockets are gevent's (cooperative, never blocking)."""
    import redis
    from redis.connection import parse_url

    from slimta.redisstorage._connection import connection_class_for

    options: dict[str, Any] = dict(cast("Callable[[str], dict[str, Any]]", parse_url)(url))
    url_class = options.pop("connection_class", None)
    options.setdefault("socket_timeout", 2.0)
    options.setdefault("socket_connect_timeout", 2.0)
    pool = redis.ConnectionPool(connection_class=connection_class_for(url_class, False), **options)
    return redis.Redis(connection_pool=pool)


def _estimate(prev: float, cur: float, now: float, period: float) -> float:
    elapsed = (now % period) / period
    return prev * (1.0 - elapsed) + cur


_TOO_MANY: Final = "4.7.0 Too many connections"


class Limiter:
    """Enforces one :class:`ClientLimits` for an edge.

    The ``check_*`` and ``*_failed`` calls are cheap in memory mode (a dict
    update).  In Redis mode each rate check is one round trip on a gevent
    socket.

    Args:
        limits: the limits.
        counters: where rates are counted; built from ``limits.redis`` (or
            in memory) when omitted.
    """

    def __init__(self, limits: ClientLimits | None = None, counters: Any = None) -> None:
        self.limits = limits = limits if limits is not None else ClientLimits()
        if counters is None:
            counters = RedisCounters(limits.redis, limits.redis_prefix) if limits.redis else MemoryCounters()
        self.counters = counters
        self._exempt = tuple(ipaddress.ip_network(net, strict=False) for net in limits.exempt)
        #: Open connections in total, per IP and per network.
        self.total = 0
        self._per_ip: dict[str, int] = {}
        self._per_net: dict[str, int] = {}
        self._key_cache: dict[Any, tuple[str | None, str]] = {}

    # -- connections ---------------------------------------------------------

    def full(self) -> bool:
        """True when the total connection cap is reached."""
        cap = self.limits.max_connections
        return cap is not None and self.total >= cap

    def open(self) -> None:
        """Count a new connection towards the total (before its IP is known)."""
        self.total += 1

    def close(self) -> None:
        """Count a closed connection off the total."""
        self.total -= 1

    def admit(self, address: Any) -> Reply | None:
        """Check a new client; None admits it, else the 421 reply to send.

        Admitted clients must be released with :meth:`release`.
        """
        ip, net = self._keys(address)
        if ip is None:
            return None
        lim = self.limits
        if lim.max_connections_per_ip is not None and self._per_ip.get(ip, 0) >= lim.max_connections_per_ip:
            return Reply("421", f"{_TOO_MANY} from your address")
        if (
            lim.max_connections_per_network is not None
            and self._per_net.get(net, 0) >= lim.max_connections_per_network
        ):
            return Reply("421", f"{_TOO_MANY} from your network")
        if lim.connections_per_minute is not None:
            rate = self.counters.hit("conn", ip, MINUTE)
            if rate > lim.connections_per_minute:
                return Reply("421", "4.7.0 Too many connections per minute, try again later")
        self._per_ip[ip] = self._per_ip.get(ip, 0) + 1
        self._per_net[net] = self._per_net.get(net, 0) + 1
        return None

    def release(self, address: Any) -> None:
        """Forget an admitted client's connection."""
        ip, net = self._keys(address)
        if ip is None:
            return
        _decrement(self._per_ip, ip)
        _decrement(self._per_net, net)

    # -- messages, recipients, AUTH ---------------------------------------------

    def check_message(self, address: Any, user: str | None) -> Reply | None:
        """Count one message (at MAIL); None allows it, else a 450 reply."""
        return self._rate(address, user, "msg", self.limits.messages_per_minute, 1, "messages")

    def check_recipient(self, address: Any, user: str | None) -> Reply | None:
        """Count one recipient (at RCPT); None allows it, else a 450 reply."""
        return self._rate(address, user, "rcpt", self.limits.recipients_per_minute, 1, "recipients")

    def auth_blocked(self, address: Any) -> Reply | None:
        """None if the client may try AUTH, else the ``454 4.7.0`` reply."""
        limit = self.limits.auth_failures_per_hour
        ip, _ = self._keys(address)
        if ip is None or limit is None:
            return None
        if self.counters.hit("authfail", ip, HOUR, 0) >= limit:
            return Reply("454", "4.7.0 Too many failed authentication attempts, try again later")
        return None

    def auth_failed(self, address: Any) -> None:
        """Count one failed AUTH attempt."""
        ip, _ = self._keys(address)
        if ip is not None and self.limits.auth_failures_per_hour is not None:
            self.counters.hit("authfail", ip, HOUR)

    def _rate(
        self, address: Any, user: str | None, kind: str, limit: int | None, amount: int, what: str
    ) -> Reply | None:
        if limit is None:
            return None
        ip, _ = self._keys(address)
        if ip is None:
            return None
        key = f"user:{user}" if user else ip
        if self.counters.hit(kind, key, MINUTE, amount) > limit:
            return Reply("450", f"4.7.1 Too many {what} per minute, try again later")
        return None

    # -- keys ------------------------------------------------------------------------

    def _keys(self, address: Any) -> tuple[str | None, str]:
        """The client's IP and network keys; ``(None, "")`` when exempt or unknown."""
        host = address[0] if isinstance(address, tuple) and address else address
        if not isinstance(host, str):
            return None, ""
        keys = self._key_cache.get(host)
        if keys is None:
            if len(self._key_cache) >= 65536:
                self._key_cache.clear()
            keys = self._key_cache[host] = self._compute_keys(host)
        return keys

    def _compute_keys(self, host: str) -> tuple[str | None, str]:
        try:
            ip = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return None, ""
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self._exempt):
            return None, ""
        prefix = self.limits.ipv4_prefix if ip.version == 4 else self.limits.ipv6_prefix
        net = ipaddress.ip_network(f"{ip}/{prefix}", strict=False)
        return str(ip), str(net)


def _decrement(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)
