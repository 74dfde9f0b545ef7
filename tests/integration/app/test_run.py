"""``slimta run`` end to end: delivery to Maildir, TLS and AUTH, relaying, swaks, metrics."""

from __future__ import annotations

import smtplib
import urllib.request
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import subprocess

from tests.conftest import require_tool

from .conftest import config_text, free_port, slimta_cmd, wait_maildir, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

MESSAGE = b"From: a@example.test\r\nTo: bob@localhost\r\nSubject: hi\r\n\r\nHello.\r\n"


def _passwd(tmp_path: Path, user: str, password: str) -> Path:
    creds = tmp_path / "credentials"
    status, _, err = slimta_cmd(
        "passwd", user, "-f", str(creds), "--stdin", cwd=tmp_path, stdin=password.encode()
    )
    assert status == 0, err
    return creds


def test_plain_delivery_to_maildir(tmp_path: Path, slimta_node: Any) -> None:
    port = free_port()
    node = slimta_node(config_text(port)).start(port)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        code, _ = client.ehlo()
        assert code == 250
        refused = client.sendmail("a@example.test", ["bob@localhost", "Carol@Example.Test"], MESSAGE)
        assert refused == {}
    bob = wait_maildir(tmp_path / "var" / "mail", "bob", 1)
    carol = wait_maildir(tmp_path / "var" / "mail", "carol", 1)
    assert len(bob) == len(carol) == 1
    data = bob[0].read_bytes()
    assert data.startswith(b"Return-Path: <a@example.test>\nDelivered-To: <bob@localhost>\nReceived: from ")
    assert data.endswith(b"\n\nHello.\n")
    assert node.stop() == 0
    assert "process:" in node.log()
    assert ":exit" in node.log()


def test_other_domains_refused_never_an_open_relay(tmp_path: Path, slimta_node: Any, sink: Any) -> None:
    port = free_port()
    relays = f'[[relay]]\nname = "out"\ntype = "static"\nhost = "127.0.0.1"\nport = {sink.port}\n'
    slimta_node(config_text(port, queue_extra='relay = "out"', relays=relays)).start(port)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.ehlo()
        client.mail("a@example.test")
        assert client.rcpt("someone@elsewhere.test") == (550, b"5.7.1 Relaying denied")
        assert client.rcpt("postmaster")[0] == 250


def test_no_relay_configured_refuses_even_authenticated(
    tmp_path: Path, slimta_node: Any, tls_files: Any
) -> None:
    port = free_port()
    creds = _passwd(tmp_path, "alice", "s3cret")
    extra = (
        f'tls_cert = "{tls_files.cert}"\ntls_key = "{tls_files.key}"\nauth = true\ncredentials = "{creds}"'
    )
    slimta_node(config_text(port, edge_extra=extra)).start(port)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        client.starttls(context=tls_files.client_context)
        client.login("alice", "s3cret")
        client.mail("alice@example.test")
        assert client.rcpt("x@elsewhere.test") == (550, b"5.7.1 Relaying denied")


def test_starttls_and_implicit_tls_with_auth_then_relay(
    tmp_path: Path, slimta_node: Any, tls_files: Any, sink: Any
) -> None:
    port, sub_port, tls_port = free_port(), free_port(), free_port()
    creds = _passwd(tmp_path, "alice", "s3cret")
    tls = f'tls_cert = "{tls_files.cert}"\ntls_key = "{tls_files.key}"\ncredentials = "{creds}"\nauth = true'
    more = (
        f'[[edge]]\nname = "submission"\nlisten = "127.0.0.1:{sub_port}"\nrequire_auth = true\n{tls}\n'
        f'[[edge]]\nname = "smtps"\nlisten = "127.0.0.1:{tls_port}"\nimplicit_tls = true\n{tls}\n'
    )
    relays = f'[[relay]]\nname = "out"\ntype = "static"\nhost = "127.0.0.1"\nport = {sink.port}\ntls_verify = false\n'
    slimta_node(config_text(port, more_edges=more, queue_extra='relay = "out"', relays=relays)).start(
        port, sub_port, tls_port
    )
    # Submission: AUTH required, refused before TLS (538), accepted after.
    with smtplib.SMTP("127.0.0.1", sub_port, timeout=10) as client:
        client.ehlo()
        assert client.mail("alice@example.test")[0] == 530
        client.rset()
        code, _ = client.docmd("AUTH", "PLAIN AGFsaWNlAHMzY3JldA==")
        assert code == 538
        client.starttls(context=tls_files.client_context)
        with pytest.raises(smtplib.SMTPAuthenticationError):
            client.login("alice", "wrong")
        client.login("alice", "s3cret")
        assert client.sendmail("alice@example.test", ["far@remote.test"], MESSAGE) == {}
    # Implicit TLS, AUTH, local delivery.
    with smtplib.SMTP_SSL("127.0.0.1", tls_port, timeout=10, context=tls_files.client_context) as client:
        client.login("alice", "s3cret")
        assert client.sendmail("alice@example.test", ["bob@localhost"], MESSAGE) == {}
    envelopes = sink.wait(1)
    assert [e.recipients for e in envelopes] == [["far@remote.test"]]
    assert envelopes[0].sender == "alice@example.test"
    assert b"with ESMTPSA" in envelopes[0].flatten()[0]
    assert len(wait_maildir(tmp_path / "var" / "mail", "bob", 1)) == 1


def test_relay_networks_may_relay_to_smtp_sink(tmp_path: Path, slimta_node: Any) -> None:
    sink_path = require_tool("smtp-sink")
    sink_port = free_port()
    dump = tmp_path / "sink-dump"
    dump.mkdir()
    sink = subprocess.Popen([sink_path, "-u", "root", "-d", f"{dump}/%M%S.", f"127.0.0.1:{sink_port}", "10"])
    try:
        wait_port(sink_port, sink)
        port = free_port()
        relays = f'[[relay]]\nname = "out"\ntype = "static"\nhost = "127.0.0.1"\nport = {sink_port}\n'
        config = config_text(
            port, edge_extra='relay_networks = ["127.0.0.0/8"]', queue_extra='relay = "out"', relays=relays
        )
        slimta_node(config).start(port)
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert client.sendmail("a@example.test", ["x@remote.test"], MESSAGE) == {}
        files: list[Path] = []
        for _ in range(200):
            files = list(dump.iterdir())
            if files:
                break
            gevent.sleep(0.05)
        assert files
        assert b"Hello." in files[0].read_bytes()
    finally:
        sink.kill()
        sink.wait()


def test_swaks_as_an_independent_client(tmp_path: Path, slimta_node: Any, tls_files: Any) -> None:
    swaks = require_tool("swaks")
    port = free_port()
    creds = _passwd(tmp_path, "alice", "s3cret")
    extra = (
        f'tls_cert = "{tls_files.cert}"\ntls_key = "{tls_files.key}"\nauth = true\ncredentials = "{creds}"'
    )
    slimta_node(config_text(port, edge_extra=extra)).start(port)
    args = [swaks, "--server", f"127.0.0.1:{port}", "--from", "s@example.test", "--to", "dave@localhost"]
    plain = subprocess.run(
        [*args, "--header", "Subject: swaks plain"], capture_output=True, timeout=20, check=False
    )
    assert plain.returncode == 0, plain.stdout.decode()
    tls = subprocess.run(
        [*args, "--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "s3cret"],
        capture_output=True,
        timeout=20,
        check=False,
    )
    assert tls.returncode == 0, tls.stdout.decode()
    assert b"235 2.7.0" in tls.stdout
    files = wait_maildir(tmp_path / "var" / "mail", "dave", 2)
    assert len(files) == 2
    assert any(b"with ESMTPSA" in f.read_bytes() for f in files)


def test_slimta_send_and_metrics(tmp_path: Path, slimta_node: Any) -> None:
    port, metrics_port = free_port(), free_port()
    config = config_text(port, process_extra=f'metrics = "127.0.0.1:{metrics_port}"')
    slimta_node(config).start(port, metrics_port)
    (tmp_path / "slimta.toml").write_text(config)
    status, out, err = slimta_cmd(
        "send", "-c", "slimta.toml", "--from", "me@example.test", "--to", "erin@localhost", cwd=tmp_path
    )
    assert status == 0, err
    assert "sent to 1 recipient(s)" in out
    status, _, err = slimta_cmd("send", "-c", "slimta.toml", "--to", "x@remote.test", cwd=tmp_path)
    assert status == 1
    assert "550 5.7.1 Relaying denied" in err
    assert len(wait_maildir(tmp_path / "var" / "mail", "erin", 1)) == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10) as response:
        text = response.read().decode()
    assert 'slimta_messages_total{edge="smtp",reason="",result="accepted"} 1.0' in text
    assert 'slimta_messages_total{edge="smtp",reason="relay_denied",result="rejected"} 1.0' in text
    assert 'slimta_deliveries_total{reason="250",relay="local",result="delivered"} 1.0' in text
    assert 'slimta_sessions_total{edge="smtp"} 3.0' in text  # wait_port's probe too
    assert 'slimta_queue_size{queue="main",state="queued"} 0.0' in text
    assert "slimta_delivery_seconds_bucket" in text
