"""The embedded default (no config file): what the README's first command runs."""

from __future__ import annotations

import signal
import smtplib
import socket
import ssl
import sys
from pathlib import Path

import pytest
from gevent import subprocess

from tests.conftest import require_tool

from .conftest import _env, slimta_cmd, wait_maildir, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def _busy(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_default_serves_smtp_and_submission(tmp_path: Path) -> None:
    require_tool("openssl")
    if _busy(2525) or _busy(1587):
        pytest.skip("127.0.0.1:2525 or :1587 is taken on this machine")
    status, _, err = slimta_cmd(
        "passwd", "alice", "-f", "var/credentials", "--stdin", cwd=tmp_path, stdin=b"pw\n"
    )
    assert status == 0, err
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimta", "run"], cwd=tmp_path, env=_env(), stderr=subprocess.PIPE
    )
    try:
        wait_port(2525, proc)
        wait_port(1587, proc)
        with smtplib.SMTP("127.0.0.1", 2525, timeout=10) as client:
            assert client.sendmail("a@example.test", ["jo@localhost"], b"Subject: 1\r\n\r\n1\r\n") == {}
            client.mail("a@example.test")
            assert client.rcpt("x@remote.test") == (550, b"5.7.1 Relaying denied")
        context = ssl.create_default_context(cafile=str(tmp_path / "var" / "tls" / "cert.pem"))
        with smtplib.SMTP("127.0.0.1", 1587, timeout=10) as client:
            client.starttls(context=context)
            client.login("alice", "pw")
            assert client.sendmail("alice@localhost", ["jo@localhost"], b"Subject: 2\r\n\r\n2\r\n") == {}
        assert len(wait_maildir(tmp_path / "var" / "mail", "jo", 2)) == 2
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
