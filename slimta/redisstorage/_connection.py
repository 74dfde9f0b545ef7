"""redis-py connection classes whose sockets are always gevent sockets.

redis-py does blocking socket I/O.  In a monkey-patched process its sockets
are gevent's and every call is cooperative; in a process that is *not*
monkey-patched the same code would hold the gevent hub for every round trip
(and forever in a blocking read such as a pub/sub wait).  These subclasses
replace only the method that creates the socket (``_connect``), so the
socket is a :class:`gevent.socket.socket` (or a :class:`gevent.ssl.SSLSocket`
for TLS) whether or not the process is patched; redis-py's protocol code
then reads and writes through it unchanged.  Name resolution goes through
gevent's resolver too.

This was chosen over running calls in gevent's thread pool: a thread hop
costs more than a loopback round trip to Redis, a blocking pub/sub read
would pin a pool thread, and redis-py's connection pool is then shared
between threads for no benefit.
"""

from __future__ import annotations

import ssl as _ssl
from typing import Any

import gevent.socket as gsocket
import gevent.ssl as gssl
import redis

__all__ = ["GeventConnection", "GeventSSLConnection", "GeventUnixConnection", "connection_class_for"]


def _tcp_socket(conn: Any) -> gsocket.socket:
    """Open a TCP connection for a redis-py ``Connection`` with gevent."""
    error: OSError | None = None
    infos = gsocket.getaddrinfo(conn.host, conn.port, conn.socket_type, gsocket.SOCK_STREAM)
    for family, socktype, proto, _, address in infos:
        sock = gsocket.socket(family, socktype, proto)
        try:
            sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
            if conn.socket_keepalive:
                sock.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_KEEPALIVE, 1)
                for option, value in (conn.socket_keepalive_options or {}).items():
                    sock.setsockopt(gsocket.IPPROTO_TCP, option, value)
            sock.settimeout(conn.socket_connect_timeout)
            sock.connect(address)
            sock.settimeout(conn.socket_timeout)
        except OSError as exc:
            error = exc
            sock.close()
            continue
        return sock
    raise error if error is not None else OSError(f"cannot resolve {conn.host}:{conn.port}")


class GeventConnection(redis.Connection):
    """A :class:`redis.Connection` over a gevent TCP socket."""

    def _connect(self) -> gsocket.socket:
        return _tcp_socket(self)


class GeventSSLConnection(redis.SSLConnection):
    """A :class:`redis.SSLConnection` over a gevent TLS socket.

    The TLS context is built from the same ``ssl_*`` options redis-py takes
    (CA file, path or data; client certificate and key; certificate
    requirement; host name check; minimum version; ciphers) but as a
    :class:`gevent.ssl.SSLContext`, so the handshake and every read are
    cooperative.  OCSP options are not supported.
    """

    def _context(self) -> gssl.SSLContext:
        context = gssl.SSLContext(_ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = self.cert_reqs
        context.check_hostname = bool(self.check_hostname) and self.cert_reqs != _ssl.CERT_NONE
        if self.ca_certs is not None or self.ca_path is not None or self.ca_data is not None:
            context.load_verify_locations(cafile=self.ca_certs, capath=self.ca_path, cadata=self.ca_data)
        elif self.cert_reqs != _ssl.CERT_NONE:
            context.load_default_certs()
        if self.certfile or self.keyfile:
            context.load_cert_chain(self.certfile, self.keyfile, self.certificate_password)
        if self.ssl_min_version is not None:
            context.minimum_version = self.ssl_min_version
        if self.ssl_ciphers:
            context.set_ciphers(self.ssl_ciphers)
        return context

    def _connect(self) -> gssl.SSLSocket:
        if self.ssl_validate_ocsp or self.ssl_validate_ocsp_stapled:
            raise redis.RedisError("OCSP validation is not supported by slimta's Redis connections")
        sock = _tcp_socket(self)
        try:
            return self._context().wrap_socket(sock, server_hostname=self.host)
        except (OSError, ValueError):
            sock.close()
            raise


class GeventUnixConnection(redis.UnixDomainSocketConnection):
    """A :class:`redis.UnixDomainSocketConnection` over a gevent socket."""

    def _connect(self) -> gsocket.socket:
        sock = gsocket.socket(gsocket.AF_UNIX, gsocket.SOCK_STREAM)
        try:
            sock.settimeout(self.socket_connect_timeout)
            sock.connect(self.path)
            sock.settimeout(self.socket_timeout)
        except OSError:
            sock.close()
            raise
        return sock


def connection_class_for(
    redis_class: type[Any] | None, use_ssl: bool
) -> type[redis.connection.AbstractConnection]:
    """Map the class redis-py picked for a URL (or none) to its gevent variant."""
    if redis_class is not None and issubclass(redis_class, redis.UnixDomainSocketConnection):
        return GeventUnixConnection
    if use_ssl or (redis_class is not None and issubclass(redis_class, redis.SSLConnection)):
        return GeventSSLConnection
    return GeventConnection
