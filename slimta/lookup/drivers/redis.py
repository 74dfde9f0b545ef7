"""Lookups in Redis: a JSON string per key, or a hash per key.

The connection is redis-py's, with the socket replaced by a gevent socket
(the same connection class :mod:`slimta.redisstorage` uses), so a lookup
waits on the hub and never blocks other greenlets, whether or not the
process is monkey-patched.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
from typing import Any

import redis

from slimta.lookup.drivers import LookupBackendError, LookupBase
from slimta.redisstorage._connection import GeventConnection

__all__ = ["RedisLookup"]


class RedisLookup(LookupBase):
    """Look records up in Redis by a templated key.

    By default each record is a string key holding a JSON object (``GET``),
    which allows any JSON value in a field.  With ``use_hash`` each record
    is a Redis hash (``HGETALL``): flat string fields only, and an empty
    hash cannot be told from a missing key (both give ``None``).  Strings
    are decoded as UTF-8.

    Args:
        key_template: Builds the key from the lookup arguments, e.g.
            ``"slimta:alias:{address}"``.
        host: The Redis server's host name or address.
        port: Its TCP port.
        db: The database number.
        password: The password for ``AUTH``, if the server requires one.
        socket_timeout: Seconds to wait for each connect, send or reply;
            ``None`` waits as long as it takes.
        use_hash: Read hashes instead of JSON strings.

    Attributes:
        redis: The :class:`redis.Redis` client (with its connection pool).
    """

    def __init__(
        self,
        key_template: str,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        socket_timeout: float | None = None,
        use_hash: bool = False,
    ) -> None:
        self.key_template = key_template
        self.use_hash = use_hash
        pool = redis.ConnectionPool(
            connection_class=GeventConnection,
            host=host,
            port=port,
            db=db,
            password=password,
            socket_timeout=socket_timeout,
            socket_connect_timeout=socket_timeout,
            decode_responses=True,
        )
        self.redis: redis.Redis = redis.Redis(connection_pool=pool)

    def _json_lookup(self, key: str) -> Any:
        raw = self.redis.get(key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise LookupBackendError(f"Redis key {key!r} does not hold JSON") from exc

    def _hash_lookup(self, key: str) -> dict[str, str] | None:
        fields: dict[str, str] = self.redis.hgetall(key)  # type: ignore[assignment]
        return fields or None

    def lookup(self, **kwargs: Any) -> Any:
        """Return the record for the key built from ``kwargs``, or ``None``.

        Raises:
            LookupBackendError: Redis could not be reached or answered with
                an error (a timeout included), or a JSON record is invalid.
        """
        key = self._format_key(self.key_template, kwargs)
        try:
            ret = self._hash_lookup(key) if self.use_hash else self._json_lookup(key)
        except redis.RedisError as exc:
            raise LookupBackendError(f"Redis lookup of {key!r} failed: {exc}") from exc
        self.log(__name__, kwargs, ret)
        return ret

    def close(self) -> None:
        """Close the pooled connections.

        .. versionadded:: 0.1.0
        """
        self.redis.close()
