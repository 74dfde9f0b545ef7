"""STARTTLS and implicit TLS with trustme certificates, stdlib and gevent contexts."""

from __future__ import annotations

import json
import logging
import smtplib
import sys
import textwrap
import time

import gevent
import gevent.monkey
import gevent.subprocess
import pytest

from .conftest import HOSTNAME

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

MESSAGE = b"Subject: tls\r\n\r\nsecret body\r\n"


@pytest.fixture(params=["stdlib", "gevent"])
def server_context(request, stdlib_server_context, gevent_server_context):
    return stdlib_server_context if request.param == "stdlib" else gevent_server_context


def test_starttls_smtplib(edge_factory, server_context, client_context):
    versions = []
    edge = edge_factory(
        context=server_context, overrides={"tls2": lambda self, sock: versions.append(sock.version())}
    )
    with smtplib.SMTP("127.0.0.1", edge.port, timeout=5) as client:
        client.ehlo("client.test")
        assert client.has_extn("starttls")
        code, _ = client.starttls(context=client_context)
        assert code == 220
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        assert client.sock.version() is not None
        client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
    (env,) = edge.queue.envelopes
    assert env.client["protocol"] == "ESMTPS"
    hooks = edge.hooks()
    assert hooks[:4] == ["banner", "ehlo", "tls", "tls2"]
    assert versions[0].startswith("TLS")
    assert "queued" in hooks


def test_implicit_tls(edge_factory, server_context, client_context):
    edge = edge_factory(context=server_context, tls_immediately=True)
    with smtplib.SMTP_SSL("127.0.0.1", edge.port, timeout=5, context=client_context) as client:
        client._host = HOSTNAME
        client.ehlo("client.test")
        assert not client.has_extn("starttls")
        client.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
    (env,) = edge.queue.envelopes
    assert env.client["protocol"] == "ESMTPS"
    assert edge.hooks()[:3] == ["tls", "tls2", "banner"]


def test_starttls_injection_discarded(
    edge_factory, raw_client, stdlib_server_context, client_context, caplog
):
    caplog.set_level(logging.INFO)
    edge = edge_factory(context=stdlib_server_context)
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"STARTTLS\r\nMAIL FROM:<inject@evil.test>\r\nRCPT TO:<v@x.test>\r\n")
    client.expect(220)
    # Nothing answers the injected commands in cleartext.
    assert client.buf == b""
    client.starttls(client_context)
    client.send(b"EHLO c.test\r\nMAIL FROM:<real@x.test>\r\n")
    first = client.expect(250)
    assert first.startswith(b"250-")  # the multi-line EHLO reply, not a reply to MAIL
    assert b"PIPELINING" in first
    assert b"<real@x.test>" in client.expect(250)
    client.send(b"RCPT TO:<r@x.test>\r\nDATA\r\n")
    assert client.codes(2) == [250, 354]
    client.send(MESSAGE + b".\r\nQUIT\r\n")
    assert client.codes(2) == [250, 221]
    (env,) = edge.queue.envelopes
    assert env.sender == "real@x.test"
    assert env.recipients == ["r@x.test"]
    assert "inject@evil.test" not in repr(edge.calls)
    assert "v@x.test" not in repr(edge.calls)
    assert all("inject@evil.test" not in r.getMessage() for r in caplog.records)
    assert any("discarded" in r.getMessage() for r in caplog.records)


def test_garbage_handshake_closes_and_server_survives(
    edge_factory, raw_client, server_context, client_context
):
    edge = edge_factory(context=server_context)
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"STARTTLS\r\n")
    client.expect(220)
    client.send(b"this is not a ClientHello\r\nMAIL FROM:<a@b.test>\r\n" * 4)
    assert client.closed_by_server()
    assert edge.queue.envelopes == []
    with smtplib.SMTP("127.0.0.1", edge.port, timeout=5) as good:
        good.starttls(context=client_context)
        good.sendmail("a@src.test", ["b@dst.test"], MESSAGE)
    assert len(edge.queue.envelopes) == 1


def test_stalled_starttls_is_closed(edge_factory, raw_client, stdlib_server_context):
    edge = edge_factory(context=stdlib_server_context, command_timeout=0.5)
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"STARTTLS\r\n")
    client.expect(220)
    start = time.monotonic()
    assert client.closed_by_server(timeout=3)
    assert time.monotonic() - start < 0.5 + 1


def test_starttls_after_tls_refused(edge_factory, raw_client, stdlib_server_context, client_context):
    edge = edge_factory(context=stdlib_server_context)
    client = raw_client(edge.address)
    client.ehlo()
    client.send(b"STARTTLS\r\n")
    client.expect(220)
    client.starttls(client_context)
    client.send(b"EHLO c.test\r\nSTARTTLS\r\n")
    assert client.codes(2) == [250, 500]


# -- TLS stays cooperative without monkey-patching ------------------------------

_CHILD = textwrap.dedent(
    """
    import json, ssl, sys, time
    import gevent, gevent.event, gevent.monkey, gevent.socket, gevent.ssl
    from slimta.edge.smtp import SmtpEdge

    assert not gevent.monkey.is_module_patched("socket")
    assert not gevent.monkey.is_module_patched("ssl")
    kind, certfile, cafile = sys.argv[1:4]
    if kind == "stdlib":
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        assert type(ctx) is ssl.SSLContext
    else:
        ctx = gevent.ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(certfile)

    class Queue:
        envelopes = []
        def enqueue(self, env):
            self.envelopes.append(env)
            return [(env, "id")]

    queue = Queue()
    edge = SmtpEdge(("127.0.0.1", 0), queue, context=ctx, hostname="mx.edge.test",
                    command_timeout=5, data_timeout=5)
    edge.start()
    port = edge.server.address[1]
    ticks = []
    window = {}

    def ticker():
        while True:
            ticks.append(time.monotonic())
            gevent.sleep(0.005)

    def read_reply(sock):
        data = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                raise EOFError(data)
            data += chunk
            last = data.rstrip(b"\\r\\n").split(b"\\r\\n")[-1]
            if data.endswith(b"\\r\\n") and last[3:4] == b" ":
                return data

    def client():
        sock = gevent.socket.create_connection(("127.0.0.1", port), timeout=5)
        read_reply(sock)
        sock.sendall(b"EHLO c.test\\r\\n")
        read_reply(sock)
        sock.sendall(b"STARTTLS\\r\\n")
        assert read_reply(sock).startswith(b"220")
        window["start"] = time.monotonic()
        # The server now waits for our ClientHello: it must not hold the hub.
        gevent.sleep(0.3)
        # gevent.ssl.create_default_context() returns a stdlib context here;
        # gevent's own class keeps the client side cooperative.
        cctx = gevent.ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        cctx.load_verify_locations(cafile)
        tls = cctx.wrap_socket(sock, server_hostname="mx.edge.test")
        window["end"] = time.monotonic()
        tls.sendall(b"EHLO c.test\\r\\nMAIL FROM:<a@b.test>\\r\\nRCPT TO:<c@d.test>\\r\\nDATA\\r\\n")
        replies = b""
        while replies.count(b"\\r\\n354 ") == 0:
            replies += tls.recv(4096)
        tls.sendall(b"Subject: x\\r\\n\\r\\nhi\\r\\n.\\r\\nQUIT\\r\\n")
        replies = b""
        while b"221 " not in replies:
            replies += tls.recv(4096)
        tls.close()

    t = gevent.spawn(ticker)
    c = gevent.spawn(client)
    c.join(timeout=8)
    t.kill()
    ok = c.successful()
    inside = [x for x in ticks if window.get("start", 0) <= x <= window.get("end", 0)]
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    print(json.dumps({
        "ok": ok,
        "error": repr(c.exception),
        "envelopes": len(queue.envelopes),
        "protocol": queue.envelopes[0].client["protocol"] if queue.envelopes else None,
        "ticks_in_handshake": len(inside),
        "max_gap": max(gaps) if gaps else None,
    }))
    """
)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", ["stdlib", "gevent"])
def test_tls_cooperative_without_monkey_patching(tmp_path, server_cert, ca_file, kind):
    script = tmp_path / "child.py"
    script.write_text(_CHILD)
    certfile = tmp_path / "server.pem"
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    proc = gevent.subprocess.run(
        [sys.executable, str(script), kind, str(certfile), ca_file],
        capture_output=True,
        timeout=10,  # a handshake that blocks the hub hangs the child for ever
        env={"PYTHONPATH": str(_repo_root()), "PATH": "/usr/bin:/bin"},
    )
    assert proc.returncode == 0, proc.stderr.decode()
    result = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    assert result["ok"], result
    assert result["envelopes"] == 1
    assert result["protocol"] == "ESMTPS"
    # The ticker (5 ms period) kept running while the server waited for the
    # ClientHello for 0.3 s, and no gap came near a blocked hub.
    assert result["ticks_in_handshake"] >= 20, result
    assert result["max_gap"] < 0.2, result


def _repo_root():
    import pathlib

    import slimta

    return pathlib.Path(slimta.__file__).resolve().parent.parent


def test_stdlib_context_is_really_stdlib(stdlib_server_context):
    # Guard for the fixture: under monkey-patching ssl.SSLContext is gevent's.
    assert type(stdlib_server_context) is gevent.monkey.get_original("ssl", "SSLContext")
    assert type(stdlib_server_context).__module__ == "ssl"


def test_stalled_implicit_tls_is_closed(edge_factory, raw_client, stdlib_server_context):
    edge = edge_factory(context=stdlib_server_context, tls_immediately=True, command_timeout=0.5)
    client = raw_client(edge.address, banner=False)
    start = time.monotonic()
    assert client.closed_by_server(timeout=3)
    assert client.buf == b""  # no cleartext banner on an implicit-TLS port
    assert time.monotonic() - start < 0.5 + 1
    assert edge.hooks() == []


def test_requiretls_offered_only_over_tls_and_kept(edge_factory, stdlib_server_context, client_context):
    from slimta.policy.requiretls import get_requiretls

    edge = edge_factory(context=stdlib_server_context)
    with smtplib.SMTP("127.0.0.1", edge.port, timeout=5) as client:
        client.ehlo("client.test")
        assert not client.has_extn("requiretls")
        code, _ = client.mail("a@src.test", ["REQUIRETLS"])
        assert code == 555
        client.starttls(context=client_context)
        client.ehlo("client.test")
        assert client.has_extn("requiretls")
        client.sendmail("a@src.test", ["b@dst.test"], MESSAGE, mail_options=["REQUIRETLS"])
        client.sendmail("a@src.test", ["c@dst.test"], MESSAGE)
    first, second = edge.queue.envelopes
    assert get_requiretls(first)
    assert not get_requiretls(second)
