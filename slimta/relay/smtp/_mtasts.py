"""MTA-STS (RFC 8461) for :mod:`slimta.relay.smtp.tlspolicy`: lookup, fetch, parse, cache.

Strategy: :class:`~slimta.relay.smtp.tlspolicy.TlsPolicy` decides what a
connection must achieve; this module only answers "what is the MTA-STS
policy of this domain now?".  It holds the steps behind that answer, each
with its own failure rules:

* the ``_mta-sts.<domain>`` TXT record, whose ``id`` says whether a cached
  policy is still current (:func:`_parse_txt`);
* the policy file, fetched over verified HTTPS from
  ``mta-sts.<domain>`` with a size and time limit
  (:func:`fetch_mta_sts_policy`);
* the parser for its ``key: value`` lines (:func:`parse_mta_sts_policy`);
* :class:`MtaStsCache`, which keeps policies for their ``max_age`` and TXT
  ids for ``TlsPolicy.min_cache`` seconds.

Turning a policy into per-host requirements (which MX hosts may be used,
``enforce`` versus ``testing``) stays in ``tlspolicy``, next to the other
levels.  The public names here (:class:`MtaStsPolicy`, :class:`MtaStsError`,
:func:`fetch_mta_sts_policy`, :func:`parse_mta_sts_policy`) are re-exported
by ``tlspolicy`` and documented there; import them from there.  Log
records keep the ``slimta.relay.smtp.tlspolicy`` logger name.
"""

from __future__ import annotations

import logging
import re
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import gevent
from gevent import socket as gsocket

from slimta.core import SlimtaError
from slimta.http import HTTPSConnection
from slimta.util.dns import DNSError, DNSResolver, resolve_addresses

if TYPE_CHECKING:
    from slimta.relay.smtp.tlspolicy import TlsPolicy

__all__ = [
    "MTA_STS_MAX_AGE",
    "MTA_STS_MAX_BYTES",
    "Cache",
    "MtaStsCache",
    "MtaStsError",
    "MtaStsPolicy",
    "default_verify_context",
    "fetch_mta_sts_policy",
    "parse_mta_sts_policy",
]

# The public module's logger: moving the code here changed no logger name.
_log = logging.getLogger("slimta.relay.smtp.tlspolicy")

#: The largest policy file accepted (RFC 8461 section 3.2).
MTA_STS_MAX_BYTES: Final = 64 * 1024
#: The longest ``max_age`` honoured (RFC 8461 section 3.2: about a year).
MTA_STS_MAX_AGE: Final = 31557600


class MtaStsError(SlimtaError):
    """An MTA-STS policy could not be fetched or parsed; ``str()`` says why."""


_VERIFY_CONTEXT: list[ssl.SSLContext] = []


def default_verify_context() -> ssl.SSLContext:
    """The context for ``verify`` and the policy fetch when none is given: the system's."""
    if not _VERIFY_CONTEXT:
        _VERIFY_CONTEXT.append(ssl.create_default_context())
    return _VERIFY_CONTEXT[0]


@dataclass(frozen=True)
class MtaStsPolicy:
    """A parsed MTA-STS policy file.

    Attributes:
        mode: ``enforce``, ``testing`` or ``none``.
        mx: The MX patterns (``mail.example.com`` or ``*.example.net``).
        max_age: Seconds the policy may be cached.
        id: The ``id=`` of the TXT record it was fetched for.
        text: The policy file as received, for reports.
    """

    mode: str
    mx: tuple[str, ...]
    max_age: int
    id: str = ""
    text: str = ""

    def matches(self, host: str) -> bool:
        """Whether MX host ``host`` is allowed by the policy (RFC 8461 section 4.1)."""
        name = host.lower().rstrip(".")
        for pattern in self.mx:
            if pattern.startswith("*."):
                first, dot, rest = name.partition(".")
                if dot and first and rest == pattern[2:]:
                    return True
            elif name == pattern:
                return True
        return False


def parse_mta_sts_policy(text: str, policy_id: str = "") -> MtaStsPolicy:
    """Parse a policy file (``key: value`` lines, RFC 8461 section 3.2).

    Raises:
        MtaStsError: A required field is missing or invalid.
    """
    fields: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, colon, value = line.partition(":")
        if colon:
            fields.setdefault(key.strip().lower(), []).append(value.strip())
    if fields.get("version") != ["STSv1"]:
        raise MtaStsError("policy has no 'version: STSv1'")
    mode = (fields.get("mode") or [""])[0]
    if mode not in ("enforce", "testing", "none"):
        raise MtaStsError(f"policy mode {mode!r} is not enforce, testing or none")
    try:
        max_age = int((fields.get("max_age") or [""])[0])
    except ValueError:
        raise MtaStsError("policy max_age is not a number") from None
    if not 0 <= max_age <= MTA_STS_MAX_AGE:
        raise MtaStsError(f"policy max_age {max_age} out of range")
    mx = tuple(p.lower().rstrip(".") for p in fields.get("mx", ()))
    if mode != "none" and not mx:
        raise MtaStsError("policy lists no mx")
    return MtaStsPolicy(mode, mx, max_age, policy_id, text)


_TXT_ID = re.compile(r"^[A-Za-z0-9]{1,32}$")


def _parse_txt(records: list[str]) -> str:
    """Return the ``id`` of the one STSv1 TXT record; MtaStsError otherwise."""
    found = [r for r in records if r.startswith("v=STSv1")]
    if len(found) != 1:
        raise MtaStsError(f"{len(found)} STSv1 TXT records")
    tags = dict(part.strip().partition("=")[::2] for part in found[0].split(";") if part.strip())
    policy_id = tags.get("id", "")
    if not _TXT_ID.match(policy_id):
        raise MtaStsError(f"TXT record has a bad id {policy_id!r}")
    return policy_id


def fetch_mta_sts_policy(
    domain: str,
    context: ssl.SSLContext | None = None,
    timeout: float = 10.0,
    port: int = 443,
    resolver: DNSResolver | None = None,
) -> MtaStsPolicy:
    """Fetch and parse ``https://mta-sts.<domain>/.well-known/mta-sts.txt``.

    The host name is resolved with our resolver; the certificate must be
    valid for ``mta-sts.<domain>``; redirects are not followed; the body
    may not exceed 64 KiB; everything ends within ``timeout``.

    Args:
        domain: The policy domain.
        context: Trust store for the HTTPS certificate; None: the system's.
        timeout: Seconds for the whole fetch.
        port: The HTTPS port (443).
        resolver: The resolver for the policy host; None: the default one.

    Raises:
        MtaStsError: Why no policy could be had.
    """
    host = f"mta-sts.{domain}"
    timer = gevent.Timeout(timeout)
    timer.start()
    try:
        return _fetch(host, port, context, timeout, resolver)
    except gevent.Timeout as exc:
        if exc is not timer:
            raise
        raise MtaStsError(f"fetching the policy from {host} took over {timeout:g} s") from None
    except (OSError, DNSError, ValueError) as exc:
        raise MtaStsError(f"fetching the policy from {host} failed: {exc}") from None
    finally:
        timer.cancel()


def _fetch(
    host: str, port: int, context: ssl.SSLContext | None, timeout: float, resolver: DNSResolver | None
) -> MtaStsPolicy:
    def connect(address: tuple[str, int], *args: Any, **kwargs: Any) -> Any:
        ip = resolve_addresses(host, timeout, resolver)[0]
        return gsocket.create_connection((ip, address[1]), timeout)

    conn = HTTPSConnection(host, port, timeout=timeout, context=context or default_verify_context())
    conn._create_connection = connect
    try:
        conn.request("GET", "/.well-known/mta-sts.txt", headers={"User-Agent": "slimta"})
        response = conn.getresponse()
        if response.status != 200:
            raise MtaStsError(f"{host} answered HTTP {response.status} (redirects are not followed)")
        media = (response.getheader("Content-Type") or "").partition(";")[0].strip().lower()
        if media != "text/plain":
            raise MtaStsError(f"{host} sent {media or 'no media type'}, not text/plain")
        body = response.read(MTA_STS_MAX_BYTES + 1)
        if len(body) > MTA_STS_MAX_BYTES:
            raise MtaStsError(f"the policy from {host} is over {MTA_STS_MAX_BYTES} bytes")
    finally:
        conn.close()
    return parse_mta_sts_policy(body.decode("utf-8", "replace"))


class Cache:
    """Values with an expiry time, by key."""

    def __init__(self) -> None:
        self._items: dict[Any, tuple[float, Any]] = {}

    def get(self, key: Any, default: Any = None, *, stale: bool = False) -> Any:
        item = self._items.get(key)
        if item is None or (not stale and item[0] <= time.monotonic()):
            return default
        return item[1]

    def put(self, key: Any, value: Any, seconds: float) -> None:
        self._items[key] = (time.monotonic() + seconds, value)


class MtaStsCache:
    """The MTA-STS policies one :class:`~slimta.relay.smtp.tlspolicy.TlsPolicy` knows, by domain."""

    def __init__(self) -> None:
        self._policies = Cache()
        self._ids = Cache()

    def policy(self, owner: TlsPolicy, domain: str) -> MtaStsPolicy | None:
        """The policy of ``domain``: cached, or fetched when the TXT id changed.

        ``owner``'s settings (resolver, timeouts, trust stores, port,
        ``min_cache``, report) are read at each call, so changing them on a
        live policy takes effect at once.
        """
        name = domain.lower().rstrip(".")
        cached: MtaStsPolicy | None = self._policies.get(name)
        policy_id = self._ids.get(name, default=False)
        if policy_id is False:
            policy_id = self._txt_id(owner, name)
            self._ids.put(name, policy_id, owner.min_cache)
        if policy_id is None or (cached is not None and cached.id == policy_id):
            return cached
        try:
            policy = fetch_mta_sts_policy(
                name,
                owner.https_context or owner.context,
                owner.fetch_timeout,
                owner.mta_sts_port,
                owner.resolver,
            )
        except MtaStsError as exc:
            _log.warning("MTA-STS policy of %s: %s", name, exc)
            if owner.report is not None:
                owner.report.record(name, "sts", None, None, "sts-policy-fetch-error")
            return cached
        policy = MtaStsPolicy(policy.mode, policy.mx, policy.max_age, policy_id, policy.text)
        self._policies.put(name, policy, policy.max_age)
        return policy

    @staticmethod
    def _txt_id(owner: TlsPolicy, name: str) -> str | None:
        use = owner.resolver if owner.resolver is not None else DNSResolver.get_default()
        try:
            records = use.lookup(f"_mta-sts.{name}", "TXT", owner.dns_timeout).get() or []
            return _parse_txt([r.text for r in records])
        except DNSError as exc:
            if not exc.permanent:
                _log.warning("MTA-STS TXT lookup for %s failed: %s", name, exc)
            return None
        except MtaStsError as exc:
            _log.warning("MTA-STS TXT record of %s: %s", name, exc)
            return None
