"""examples/tutorials/http_gateway.py: WsgiEdge -> disk queue -> MxSmtpRelay."""

from __future__ import annotations

import http.client
from base64 import b64encode
from pathlib import Path

import pytest

from .conftest import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

MESSAGE = b"From: app@example.com\r\nTo: bob@example.net\r\nSubject: your order\r\n\r\nIt has shipped.\r\n"


def post(port: int, token: str | None) -> tuple[int, str]:
    headers = {
        "Content-Type": "message/rfc822",
        "X-Envelope-Sender": b64encode(b"app@example.com").decode(),
        "X-Envelope-Recipient": b64encode(b"bob@example.net").decode(),
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/", body=MESSAGE, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, response.getheader("X-Smtp-Reply") or ""
    finally:
        conn.close()


def test_post_is_delivered_by_smtp(tutorial, sink_factory, tmp_path: Path) -> None:
    sink = sink_factory()
    port = free_port()
    tutorial(
        "http_gateway.py",
        "--listen", f"127.0.0.1:{port}", "--hostname", "gateway.example.com",
        "--spool", str(tmp_path / "spool"), "--force-mx", f"example.net=127.0.0.1:{sink.port}",
        ports=(port,),
        env={"GATEWAY_TOKEN": "t0ken"},
    )  # fmt: skip
    assert post(port, None)[0] == 401
    assert post(port, "guess")[0] == 401
    status, reply = post(port, "t0ken")
    assert status == 204, reply
    assert reply.startswith("250")
    [envelope] = sink.wait(1)
    assert (envelope.sender, envelope.recipients) == ("app@example.com", ["bob@example.net"])
    header, body = envelope.flatten()
    assert b"It has shipped." in body
    assert b"by gateway.example.com" in header
