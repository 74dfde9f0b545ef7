"""TLS fixtures shared by the integration tests (trustme certificates, contexts).

A conftest imports the fixtures it needs from here and defines
``tls_hostname`` (session scope) for the name the server certificate is
issued to.  ``stdlib_server_context`` is the plain stdlib class even under
monkey-patching (what an unpatched user script passes); the gevent one is
``gevent_server_context``.
"""

from __future__ import annotations

import ssl

import gevent.monkey
import pytest
import trustme


def original_ssl_context_class() -> type:
    """The stdlib :class:`ssl.SSLContext`, even when the suite runs monkey-patched."""
    cls: type = gevent.monkey.get_original("ssl", "SSLContext")
    return cls


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def server_cert(ca: trustme.CA, tls_hostname: str) -> trustme.LeafCert:
    return ca.issue_cert(tls_hostname, "127.0.0.1", "localhost")


@pytest.fixture
def stdlib_server_context(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = original_ssl_context_class()(ssl.PROTOCOL_TLS_SERVER)
    # trustme's configure_cert() checks isinstance against the patched class.
    with server_cert.private_key_and_cert_chain_pem.tempfile() as path:
        ctx.load_cert_chain(path)
    assert type(ctx).__module__ == "ssl"
    return ctx


@pytest.fixture
def gevent_server_context(server_cert: trustme.LeafCert) -> ssl.SSLContext:
    import gevent.ssl

    ctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_cert.configure_cert(ctx)
    return ctx


@pytest.fixture
def client_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx
