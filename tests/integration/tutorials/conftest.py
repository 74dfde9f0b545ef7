"""Fixtures to run the tutorials of ``examples/tutorials/`` as child processes.

* ``tutorial(script, *args, ports=(...))`` starts ``python
  examples/tutorials/<script>`` with the arguments given, waits until every
  port in ``ports`` accepts connections, and returns a
  :class:`TutorialProcess`; at teardown each one is stopped with SIGTERM and
  must exit with status 0 (a clean shutdown is part of every tutorial).
* ``free_port()``: a loopback port nobody listens on.
* :class:`Sink`: a next hop in the test process, an :class:`SmtpEdge` that
  records what it receives, optionally with STARTTLS and AUTH.
* ``tls``: a trustme CA and a certificate for ``localhost``/``127.0.0.1``,
  as PEM files (for the children) and contexts (for the test process).
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import pytest
import trustme
from gevent import subprocess

from slimta.edge.smtp import SmtpEdge, SmtpValidators

ROOT = Path(__file__).resolve().parents[3]
TUTORIALS = ROOT / "examples" / "tutorials"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``predicate`` (cooperatively) until it returns something true."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            assert value, f"{what} not reached after {timeout} s"
            return value
        gevent.sleep(0.05)


class TutorialProcess:
    """One tutorial script running as a child process, logging to a file."""

    def __init__(self, script: str, args: tuple[str, ...], directory: Path, env: dict[str, str]) -> None:
        self.script = script
        self.log_path = directory / f"{Path(script).stem}-{id(self)}.log"
        child_env = {k: v for k, v in os.environ.items() if not k.startswith("GEVENT_MONITOR")}
        child_env.pop("GEVENT_MAX_BLOCKING_TIME", None)
        child_env["PYTHONPATH"] = str(ROOT)
        child_env.update(env)
        with open(self.log_path, "wb") as log:
            self.proc: Any = subprocess.Popen(
                [sys.executable, str(TUTORIALS / script), *args],
                cwd=directory,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=child_env,
            )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_port(self, port: int, timeout: float = 15.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.script} exited with {self.proc.returncode}:\n{self.log()}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                    return
            except OSError:
                gevent.sleep(0.05)
        raise AssertionError(f"{self.script} does not listen on {port} after {timeout} s:\n{self.log()}")

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then the exit status (SIGKILL if it does not stop)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        return int(self.proc.returncode)


@pytest.fixture
def tutorial(tmp_path: Path) -> Iterator[Callable[..., TutorialProcess]]:
    started: list[TutorialProcess] = []

    def start(
        script: str, *args: str, ports: tuple[int, ...] = (), env: dict[str, str] | None = None
    ) -> TutorialProcess:
        proc = TutorialProcess(script, args, tmp_path, env or {})
        started.append(proc)
        for port in ports:
            proc.wait_port(port)
        return proc

    yield start
    failures = []
    for proc in started:
        status = proc.stop()
        if status != 0:
            failures.append(f"{proc.script} exited with {status} on SIGTERM:\n{proc.log()[-3000:]}")
    assert not failures, "\n".join(failures)


@dataclass
class TlsFiles:
    ca_file: Path
    cert_file: Path
    key_file: Path
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext


@pytest.fixture(scope="session")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    directory = tmp_path_factory.mktemp("tls")
    ca = trustme.CA()
    issued = ca.issue_cert("localhost", "127.0.0.1")
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    issued.private_key_pem.write_to_path(str(key_file))
    cert_file.write_bytes(b"".join(blob.bytes() for blob in issued.cert_chain_pems))
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    issued.configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return TlsFiles(ca_file, cert_file, key_file, server_context, client_context)


class _SinkQueue:
    def __init__(self) -> None:
        self.envelopes: list[Any] = []

    def enqueue(self, envelope: Any) -> list[tuple[Any, Any]]:
        self.envelopes.append(envelope)
        return [(envelope, f"sink{len(self.envelopes)}")]


class Sink:
    """A loopback SMTP server in the test process that records envelopes.

    With ``users`` it offers AUTH (after STARTTLS, with ``context``) and
    refuses MAIL from clients that did not authenticate.
    """

    def __init__(self, context: ssl.SSLContext | None = None, users: dict[str, str] | None = None) -> None:
        self.queue = _SinkQueue()
        self.logins: list[str] = []
        sink = self

        class Validators(SmtpValidators):
            def handle_auth(self, reply: Any, creds: Any) -> None:
                secret = (users or {}).get(creds.authcid)
                if secret is None or not creds.check_secret(secret):
                    reply.code, reply.message = "535", "5.7.8 Authentication credentials invalid"
                else:
                    sink.logins.append(creds.authcid)

            def handle_mail(self, reply: Any, sender: str, params: Any) -> None:
                if users is not None and self.session.auth is None:
                    reply.code, reply.message = "530", "5.7.0 Authentication required"

        self.edge = SmtpEdge(
            ("127.0.0.1", 0),
            self.queue,
            validator_class=Validators,
            auth=users is not None,
            context=context,
            hostname="sink.test",
        )
        self.port = int(self.edge.server.address[1])
        self.edge.start()

    @property
    def envelopes(self) -> list[Any]:
        return self.queue.envelopes

    def wait(self, count: int, timeout: float = 10.0) -> list[Any]:
        wait_until(lambda: len(self.envelopes) >= count, timeout, f"{count} message(s) at the sink")
        return self.envelopes

    def close(self) -> None:
        self.edge.kill()


@pytest.fixture
def sink_factory() -> Iterator[Callable[..., Sink]]:
    sinks: list[Sink] = []

    def make(**kwargs: Any) -> Sink:
        sink = Sink(**kwargs)
        sinks.append(sink)
        return sink

    yield make
    for sink in sinks:
        sink.close()


def maildir_messages(base: Path, user: str) -> list[bytes]:
    new = base / user / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []


def wait_maildir(base: Path, user: str, count: int, timeout: float = 10.0) -> list[bytes]:
    wait_until(lambda: len(maildir_messages(base, user)) >= count, timeout, f"{count} message(s) for {user}")
    return maildir_messages(base, user)
