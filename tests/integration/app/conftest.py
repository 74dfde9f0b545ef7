"""Fixtures for end-to-end tests of the ``slimta`` command (real processes).

* ``free_port()``: a loopback port nobody listens on (bound once, closed).
* :class:`SlimtaProcess`: ``python -m slimta run -c <tmp>/slimta.toml`` as a
  child process in a temporary directory; :meth:`start` waits until every
  listed port accepts connections, logs go to ``<tmp>/slimta.log``.
* ``slimta_cmd(*args)``: run another subcommand, return (status, stdout, stderr).
* ``tls_files``: trustme CA, a server certificate for localhost/127.0.0.1
  written as PEM files, and a client context trusting the CA.
* :class:`Sink`: an :class:`SmtpEdge` in the test process that records what
  it receives (the next hop of a relay).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import pytest
import trustme
from gevent import subprocess

from slimta.edge.smtp import SmtpEdge

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, proc: Any = None, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"slimta exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            gevent.sleep(0.02)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # The child is an ordinary process: no hub-blocking monitor of its own.
    env.pop("GEVENT_MONITOR_THREAD_ENABLE", None)
    env["PYTHONPATH"] = str(ROOT)
    return env


class SlimtaProcess:
    """One ``slimta run`` child process in ``directory``."""

    def __init__(self, directory: Path, config: str) -> None:
        self.directory = directory
        self.config_path = directory / "slimta.toml"
        self.log_path = directory / "slimta.log"
        self.write_config(config)
        self.proc: Any = None

    def write_config(self, config: str) -> None:
        self.config_path.write_text(config)

    def start(self, *ports: int, extra: tuple[str, ...] = ()) -> SlimtaProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "slimta", "run", "-c", str(self.config_path), *extra],
                cwd=self.directory,
                stdout=log,
                stderr=log,
                env=_env(),
            )
        for port in ports:
            wait_port(port, self.proc)
        return self

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return int(self.proc.returncode) if self.proc is not None else 0
        self.proc.send_signal(signal.SIGTERM)
        status = int(self.proc.wait(timeout=timeout))
        return status

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, text: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log():
                return
            gevent.sleep(0.05)
        raise AssertionError(f"{text!r} not logged; log:\n{self.log()}")


@pytest.fixture
def slimta_node(tmp_path: Path) -> Iterator[Any]:
    nodes: list[SlimtaProcess] = []

    def make(config: str, directory: Path | None = None) -> SlimtaProcess:
        node = SlimtaProcess(directory or tmp_path, config)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.kill()


def slimta_cmd(
    *args: str, cwd: Path, stdin: bytes | None = None, timeout: float = 20.0
) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "slimta", *args],
        cwd=cwd,
        input=stdin,
        capture_output=True,
        env=_env(),
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")


@dataclass
class TlsFiles:
    cert: Path
    key: Path
    client_context: ssl.SSLContext


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    server.private_key_pem.write_to_path(str(key))
    cert.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return TlsFiles(cert, key, context)


class _SinkQueue:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    def enqueue(self, envelope: Any) -> list[tuple[Any, Any]]:
        self.envelopes.append(envelope)
        return [(envelope, f"sink{len(self.envelopes)}")]


class Sink:
    """A next hop in the test process: an SmtpEdge recording envelopes."""

    def __init__(self, port: int = 0) -> None:
        self.queue = _SinkQueue()
        self.edge = SmtpEdge(("127.0.0.1", port), self.queue, hostname="sink.test")
        self.port = int(self.edge.server.address[1])
        self.edge.start()

    @property
    def envelopes(self) -> list[Any]:
        return self.queue.envelopes

    def wait(self, count: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.envelopes) < count and time.monotonic() < deadline:
            gevent.sleep(0.05)
        return self.envelopes

    def close(self) -> None:
        self.edge.kill()


@pytest.fixture
def sink() -> Iterator[Sink]:
    s = Sink()
    yield s
    s.close()


def maildir_files(base: Path, user: str) -> list[Path]:
    new = base / user / "new"
    return sorted(new.iterdir()) if new.exists() else []


def wait_maildir(base: Path, user: str, count: int, timeout: float = 10.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        files = maildir_files(base, user)
        if len(files) >= count:
            return files
        gevent.sleep(0.05)
    return maildir_files(base, user)


def config_text(
    smtp_port: int,
    *,
    edge_extra: str = "",
    queue_extra: str = "",
    relays: str = "",
    process_extra: str = "",
    more_edges: str = "",
    queue_type: str = "disk",
) -> str:
    """A small node: one SMTP edge, a queue, local Maildir delivery."""
    path_line = 'path = "./var/queue"' if queue_type == "disk" else ""
    return f"""
[process]
log_file = "./slimta.log"
log_level = "debug"
control_socket = "./var/control.sock"
grace_period = 2.0
{process_extra}

[[edge]]
name = "smtp"
listen = "127.0.0.1:{smtp_port}"
{edge_extra}
{more_edges}

[[queue]]
name = "main"
type = "{queue_type}"
{path_line}
local_relay = "local"
local_domains = ["localhost", "example.test"]
retry_initial = 60
{queue_extra}

[[relay]]
name = "local"
type = "maildir"
path = "./var/mail"
{relays}
"""
