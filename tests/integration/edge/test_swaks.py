"""SmtpEdge against swaks, a real-world SMTP test client, in a subprocess."""

from __future__ import annotations

import gevent.subprocess
import pytest

from tests.conftest import require_tool

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]


def _swaks(port: int, *args: str) -> gevent.subprocess.CompletedProcess:
    swaks = require_tool("swaks")
    cmd = [swaks, "--server", f"127.0.0.1:{port}", "--to", "a@b.test", "--from", "c@d.test"]
    cmd += ["--helo", "swaks.test", "--timeout", "5", *args]
    return gevent.subprocess.run(cmd, capture_output=True, timeout=15)


def _check(proc, edge) -> None:
    out = proc.stdout.decode(errors="replace")
    assert proc.returncode == 0, out + proc.stderr.decode(errors="replace")
    (env,) = edge.queue.envelopes
    assert env.sender == "c@d.test"
    assert env.recipients == ["a@b.test"]
    assert env.flatten()[1].rstrip(b"\r\n").endswith(b"hello from swaks")


def test_swaks_plain(edge):
    proc = _swaks(edge.port, "--body", "hello from swaks")
    _check(proc, edge)
    assert edge.queue.envelopes[0].client["name"] == "swaks.test"


def test_swaks_pipeline(edge):
    proc = _swaks(edge.port, "--pipeline", "--body", "hello from swaks")
    _check(proc, edge)
    # swaks sent MAIL, RCPT and DATA as one group, then read the three replies.
    lines = [line.strip() for line in proc.stdout.decode().splitlines()]
    mail = lines.index("-> MAIL FROM:<c@d.test>")
    assert lines[mail + 1 : mail + 3] == ["-> RCPT TO:<a@b.test>", "-> DATA"]
    assert lines[mail + 3].startswith("<-  250 2.1.0") or lines[mail + 3].startswith("<- 250 2.1.0")


@pytest.mark.parametrize("kind", ["stdlib", "gevent"])
def test_swaks_starttls(edge_factory, stdlib_server_context, gevent_server_context, kind):
    context = stdlib_server_context if kind == "stdlib" else gevent_server_context
    edge = edge_factory(context=context)
    proc = _swaks(edge.port, "--tls", "--body", "hello from swaks")
    _check(proc, edge)
    assert edge.queue.envelopes[0].client["protocol"] == "ESMTPS"


def test_swaks_implicit_tls_with_auth(edge_factory, stdlib_server_context):
    def check(self, reply, creds):
        if not creds.check_secret("sekrit"):
            reply.code = "535"

    edge = edge_factory(
        context=stdlib_server_context, tls_immediately=True, auth=True, overrides={"auth": check}
    )
    proc = _swaks(
        edge.port,
        "--tlsc",
        "--auth",
        "PLAIN",
        "--auth-user",
        "u",
        "--auth-password",
        "sekrit",
        "--body",
        "hello from swaks",
    )
    _check(proc, edge)
    assert edge.queue.envelopes[0].client["protocol"] == "ESMTPSA"
