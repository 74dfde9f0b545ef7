"""A real ``redis-server`` for tests, and a slimta node process to run on it.

:class:`RedisServer` starts ``redis-server`` on a free loopback port with a
temporary directory (no persistence, nothing outside the directory), waits
until it answers ``PING`` and stops it.  Options: ``requirepass`` and TLS
(a self-signed certificate made with the ``openssl`` command).

The fixtures ``redis_server`` (module-scoped, plain) and
``redis_server_factory`` (build servers with options) are imported by the
test modules.

``python -m tests.integration.storage.redis_server node ...`` runs one
slimta node (SmtpEdge -> Queue(RedisStorage) -> a relay that records every
attempt to a log file) for the multi-node fault tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool

__all__ = ["RedisServer", "free_port", "redis_server", "redis_server_factory"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _ping(port: int, password: str | None, timeout: float) -> bool:
    """Send PING (after AUTH) over plain TCP; True on +PONG."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            if password is not None:
                secret = password.encode()
                sock.sendall(b"*2\r\n$4\r\nAUTH\r\n$%d\r\n%s\r\n" % (len(secret), secret))
                if not sock.recv(64).startswith(b"+OK"):
                    return False
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process on 127.0.0.1.

    Args:
        password: Set ``requirepass``.
        tls: Listen with TLS only (a fresh self-signed certificate for
            ``localhost`` and ``127.0.0.1``; see :attr:`ca_file`).

    Attributes:
        port: The port it listens on (TLS port when ``tls``).
        dir: Its temporary working directory.
        ca_file: The certificate file to trust, when ``tls``.
    """

    def __init__(self, password: str | None = None, tls: bool = False) -> None:
        self.binary = require_tool("redis-server")
        self.password = password
        self.tls = tls
        self.dir = Path(tempfile.mkdtemp(prefix="slimta-redis-"))
        self.ca_file: str | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.port = 0
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _config(self, port: int) -> list[str]:
        lines = [
            "bind 127.0.0.1",
            "protected-mode yes",
            f"dir {self.dir}",
            'save ""',
            "appendonly no",
            "daemonize no",
            "databases 4",
            f"logfile {self.dir / 'redis.log'}",
        ]
        if self.password is not None:
            lines.append(f'requirepass "{self.password}"')
        if self.tls:
            lines += [
                "port 0",
                f"tls-port {port}",
                f"tls-cert-file {self.dir / 'cert.pem'}",
                f"tls-key-file {self.dir / 'key.pem'}",
                f"tls-ca-cert-file {self.dir / 'cert.pem'}",
                "tls-auth-clients no",
            ]
        else:
            lines.append(f"port {port}")
        return lines

    def _make_certificate(self) -> None:
        openssl = require_tool("openssl")
        subprocess.run(
            [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-keyout", str(self.dir / "key.pem"), "-out", str(self.dir / "cert.pem"),
             "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
            check=True, capture_output=True, timeout=30,
        )  # fmt: skip
        self.ca_file = str(self.dir / "cert.pem")

    def _start(self) -> None:
        if self.tls:
            self._make_certificate()
        for _ in range(3):
            port = free_port()
            conf = self.dir / "redis.conf"
            conf.write_text("\n".join(self._config(port)) + "\n")
            self.proc = subprocess.Popen(
                [self.binary, str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=self.dir
            )
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and self.proc.poll() is None:
                if self._ready(port):
                    self.port = port
                    return
                time.sleep(0.02)
            self._kill()
        log = (
            (self.dir / "redis.log").read_text(errors="replace")[-800:]
            if (self.dir / "redis.log").exists()
            else ""
        )
        raise RuntimeError(f"redis-server did not start: {log}")

    def _ready(self, port: int) -> bool:
        if not self.tls:
            return _ping(port, self.password, 0.5)
        log = self.dir / "redis.log"
        return log.exists() and "Ready to accept connections" in log.read_text(errors="replace")

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stderr is not None:
            proc.stderr.close()

    def stop(self) -> None:
        """Stop the server and delete its directory."""
        self._kill()
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: int = 0) -> str:
        scheme = "rediss" if self.tls else "redis"
        auth = f":{self.password}@" if self.password is not None else ""
        return f"{scheme}://{auth}localhost:{self.port}/{db}"


def tls_unsupported_reason() -> str | None:
    """Why TLS cannot be tested here, or ``None`` if it can."""
    binary = require_tool("redis-server")
    if shutil.which("openssl") is None:
        return "the openssl command is not installed (needed to make a test certificate)"
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.run(
            [binary, "--port", "0", "--tls-port", str(free_port()), "--dir", tmp, "--tls-cert-file", "/nonexistent"],
            capture_output=True, timeout=10, check=False, text=True,
        )  # fmt: skip
        out = proc.stdout + proc.stderr
    if "Failed to configure TLS" in out or "Failed to load certificate" in out:
        return None  # it tried: TLS is compiled in
    return f"redis-server was built without TLS support: {out.strip()[-200:]}"


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    """A plain redis-server shared by the tests of one module."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_server_factory() -> Iterator[Any]:
    """``factory(password=None, tls=False)`` -> a new :class:`RedisServer`, stopped after the test."""
    servers: list[RedisServer] = []

    def factory(password: str | None = None, tls: bool = False) -> RedisServer:
        server = RedisServer(password=password, tls=tls)
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()


# -- a slimta node for the fault tests -----------------------------------------


def _node_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("--redis-port", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--lease", type=float, default=1.0)
    parser.add_argument("--attempt-time", type=float, default=0.1)
    args = parser.parse_args(argv)

    import random

    import gevent
    import gevent.event

    from slimta.edge.smtp import SmtpEdge
    from slimta.envelope import Envelope
    from slimta.queue import Queue
    from slimta.redisstorage import RedisStorage
    from slimta.relay import Relay, TransientRelayError

    log_fd = os.open(args.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)

    class RecordingRelay(Relay):
        """Record (node, seq, start, end) of every attempt; fail some first attempts."""

        def attempt(self, envelope: Envelope, attempts: int) -> None:
            assert envelope.headers is not None
            seq = str(envelope.headers["X-Seq"])
            start = time.time()
            os.write(log_fd, f"start {args.name} {seq} {start:.6f}\n".encode())
            gevent.sleep(args.attempt_time * random.uniform(0.5, 1.5))
            end = time.time()
            if attempts == 0 and int(seq.split("-")[-1]) % 5 == 0:
                os.write(log_fd, f"fail {args.name} {seq} {start:.6f} {end:.6f}\n".encode())
                raise TransientRelayError("try again", None)
            os.write(log_fd, f"done {args.name} {seq} {start:.6f} {end:.6f}\n".encode())

    storage = RedisStorage(port=args.redis_port, prefix=args.prefix, lease_time=args.lease)
    queue = Queue(storage, RecordingRelay(), backoff=lambda env, n: 0.3 if n < 5 else None, relay_timeout=30)
    queue.start()
    edge = SmtpEdge(("127.0.0.1", 0), queue, hostname=f"{args.name}.test")
    edge.start()
    sys.stdout.write(f"READY {edge.server.address[1]}\n")
    sys.stdout.flush()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    stop.wait()
    edge.kill()
    queue.kill()
    storage.close()


class NodeProcess:
    """A node started with :func:`_node_main` in a child process."""

    def __init__(
        self, name: str, redis_port: int, prefix: str, log: Path, lease: float, attempt_time: float
    ) -> None:
        root = Path(__file__).resolve().parents[3]
        cmd = [
            sys.executable, "-m", "tests.integration.storage.redis_server", "node", name,
            "--redis-port", str(redis_port), "--prefix", prefix, "--log", str(log),
            "--lease", str(lease), "--attempt-time", str(attempt_time),
        ]  # fmt: skip
        env = {k: v for k, v in os.environ.items() if not k.startswith("GEVENT_MONITOR")}
        self.name = name
        self.proc = subprocess.Popen(cmd, cwd=root, stdout=subprocess.PIPE, env=env)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY"):
            self.kill()
            raise RuntimeError(f"node {name} did not start: {line!r}")
        self.port = int(line.split()[1])

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "node":
        _node_main(sys.argv[2:])
    else:
        sys.exit(
            "usage: python -m tests.integration.storage.redis_server node NAME --redis-port P --prefix X --log F"
        )
