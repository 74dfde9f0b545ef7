"""DiskStorage under crashes: kill -9 under load (R1), crash points (R1b), fsync order (R1c).

A real MTA runs in a child process -- this module run as a script:
``SmtpEdge -> Queue(DiskStorage) -> a small SMTP relay`` -- and delivers to
a counting sink (our SmtpEdge) in the test process.  Parallel smtplib
clients send numbered messages (``X-Seq``); a message counts as *acked*
only when its DATA got 250.  The invariant is RFC 5321 s6.1: every acked
message reaches the sink at least once, whatever moment the MTA dies at.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import smtplib
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import gevent
import gevent.event
import gevent.socket
import pytest
from gevent import subprocess

from slimta.diskstorage import DiskStorage
from slimta.edge.smtp import SmtpEdge
from slimta.envelope import Envelope
from slimta.relay import Relay, TransientRelayError
from tests.strace import syscalls

ROOT = Path(__file__).resolve().parents[3]

pytestmark = [pytest.mark.integration]


# -- the child MTA -------------------------------------------------------------


class CrashingDisk(DiskStorage):
    """Calls os._exit(137) at its CRASH_AT-th I/O step (R1b)."""

    def __init__(self, *args: Any, crash_at: int = 0) -> None:
        super().__init__(*args)
        self.crash_at = crash_at
        self.count = 0

    def checkpoint(self, step: str, path: str) -> None:
        self.count += 1  # worker threads: the GIL makes this good enough for a test
        if self.count == self.crash_at:
            os._exit(137)


class SinkRelay(Relay):
    """Deliver over SMTP with slimta.smtp.client.Client to one host."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def attempt(self, envelope: Envelope, attempts: int) -> None:
        from slimta.smtp.client import Client

        with gevent.Timeout(5):
            sock = gevent.socket.create_connection(("127.0.0.1", self.port))
            try:
                client = Client(sock)
                client.get_banner()
                client.ehlo("mta.test")
                client.mailfrom(envelope.sender or "")
                for rcpt in envelope.recipients:
                    client.rcptto(rcpt)
                client.data()
                reply = client.send_data(*envelope.flatten())
                client.quit()
            finally:
                sock.close()
        if reply.code != "250":
            raise TransientRelayError("sink refused", reply)


def child_main(spool: str, sink_port: int) -> None:
    from slimta.queue import Queue

    storage = CrashingDisk(f"{spool}/env", f"{spool}/meta", crash_at=int(os.environ.get("CRASH_AT", "0")))
    queue = Queue(storage, SinkRelay(sink_port), backoff=lambda env, n: 0.3, relay_timeout=10)
    queue.start()
    edge = SmtpEdge(("127.0.0.1", 0), queue, hostname="mta.test")
    edge.start()
    sys.stdout.write(f"READY {edge.server.address[1]}\n")
    sys.stdout.flush()
    gevent.wait([queue])


# -- the test side --------------------------------------------------------------------


class Sink:
    """A queue stand-in behind our SmtpEdge: counts each X-Seq delivered."""

    def __init__(self) -> None:
        self.seen: Counter[str] = Counter()
        self.edge = SmtpEdge(("127.0.0.1", 0), self, hostname="sink.test")
        self.edge.start()
        self.port: int = self.edge.server.address[1]

    def enqueue(self, envelope: Envelope) -> list[tuple[Envelope, str]]:
        assert envelope.headers is not None
        self.seen[str(envelope.headers["X-Seq"])] += 1
        return [(envelope, "sink")]


@pytest.fixture
def sink():
    sink = Sink()
    yield sink
    sink.edge.kill()


class Mta:
    def __init__(self, spool: Path, sink_port: int, crash_at: int = 0, strace: Path | None = None) -> None:
        env = dict(os.environ, CRASH_AT=str(crash_at))
        env.pop("GEVENT_MONITOR_THREAD_ENABLE", None)
        cmd = [
            sys.executable,
            "-m",
            "tests.integration.storage.test_diskstorage_crash",
            str(spool),
            str(sink_port),
        ]
        if strace is not None:
            cmd = [shutil.which("strace") or "strace", "-f", "-s", "200", "-o", str(strace),
                   "-e", "trace=openat,close,fsync,fdatasync,rename,renameat,renameat2,sendto,write",
                   *cmd]  # fmt: skip
        self.stderr = open(spool / "mta.stderr", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=self.stderr)
        with gevent.Timeout(15):
            line = self.proc.stdout.readline().decode()
        assert line.startswith("READY "), f"MTA did not start: {line!r}; see {spool / 'mta.stderr'}"
        self.port = int(line.split()[1])

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.stderr.close()

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
        self.stderr.close()


def send_one(port: int, seq: str) -> str:
    """Send one message; return its queue id if DATA got 250, else ''."""
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
            code, text = client.ehlo("load.test")
            client.mail("a@src.test")
            client.rcpt("b@dst.test")
            code, text = client.data(f"X-Seq: {seq}\r\nSubject: load\r\n\r\nmessage {seq}\r\n".encode())
    except (OSError, smtplib.SMTPException):
        return ""
    if code != 250:
        return ""
    match = re.search(rb"queued as ([0-9a-f]+)", text)
    return match.group(1).decode() if match else "?"


class Load:
    """Parallel clients sending numbered messages until stopped."""

    def __init__(self, port: int, clients: int, limit: int, prefix: str) -> None:
        self.port = port
        self.sent: list[str] = []
        self.acked: dict[str, str] = {}
        self.limit = limit
        self.prefix = prefix
        self.stopped = False
        self.greenlets = [gevent.spawn(self._client) for _ in range(clients)]

    def _client(self) -> None:
        while not self.stopped and len(self.sent) < self.limit:
            seq = f"{self.prefix}-{len(self.sent)}"
            self.sent.append(seq)
            id_ = send_one(self.port, seq)
            if id_:
                self.acked[seq] = id_

    def finish(self, timeout: float = 10, *, stop: bool = True) -> None:
        self.stopped = stop
        gevent.joinall(self.greenlets, timeout=timeout, raise_error=True)


def wait_for(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        gevent.sleep(0.05)
    return True


def spool_files(spool: Path) -> dict[str, list[str]]:
    return {
        sub: sorted(p.name for p in (spool / sub).iterdir() if p.is_file())
        for sub in ("env", "meta", "env/.tmp", "env/quarantine")
    }


def drain(spool: Path, sink: Sink, acked: set[str]) -> None:
    """Restart the MTA without faults until every acked message is delivered and the spool is empty."""
    mta = Mta(spool, sink.port)
    try:
        assert wait_for(lambda: acked <= set(sink.seen), 15), sorted(acked - set(sink.seen))[:10]
        assert wait_for(lambda: not any(spool_files(spool).values()), 10), spool_files(spool)
    finally:
        mta.stop()


@pytest.mark.timeout(60)
def test_kill_9_under_load_loses_no_acked_message(
    tmp_path: Path, sink: Sink, request: pytest.FixtureRequest
) -> None:
    rng = random.Random(os.environ.get("SLIMTA_CRASH_SEED", "6"))
    sent: list[str] = []
    acked: set[str] = set()
    kills = 4
    for round_ in range(kills):
        mta = Mta(tmp_path, sink.port)
        load = Load(mta.port, clients=8, limit=150, prefix=f"k{round_}")
        gevent.sleep(rng.uniform(0.15, 0.6))
        mta.kill()
        load.finish()
        sent += load.sent
        acked |= set(load.acked)
    drain(tmp_path, sink, acked)
    delivered = set(sink.seen)
    duplicated = sum(1 for n in sink.seen.values() if n > 1)
    report = f"kills={kills} sent={len(sent)} acked={len(acked)} delivered={len(delivered)} duplicated={duplicated}"
    request.node.user_properties.append(("r1", report))
    print(report)
    assert acked <= delivered  # lost = acked \ delivered = {}
    assert delivered <= set(sent)  # no phantom
    assert len(acked) >= 100, report  # the test did put the MTA under load


@pytest.mark.timeout(60)
def test_crash_points_saw_250_implies_stored(
    tmp_path: Path, sink: Sink, request: pytest.FixtureRequest
) -> None:
    # Steps for one message: write, fsync, rename, dirsync (then 250), and
    # after delivery unlink, dirsync.  Crash at each of the first 12 steps.
    results = []
    for crash_at in range(1, 13):
        spool = tmp_path / f"k{crash_at}"
        spool.mkdir()
        mta = Mta(spool, sink.port, crash_at=crash_at)
        load = Load(mta.port, clients=2, limit=8, prefix=f"c{crash_at}")
        assert wait_for(lambda proc=mta.proc: proc.poll() is not None, 10), "the MTA did not crash"
        assert mta.proc.returncode == 137
        load.finish()
        mta.kill()
        acked = set(load.acked)
        # Before any restart: every acked message is either delivered or
        # loads, intact, from the spool; nothing half-written is left.
        storage = DiskStorage(spool / "env", spool / "meta")
        stored = {str(storage.get(id_)[0].headers["X-Seq"]) for _, id_ in storage.load()}
        assert acked <= stored | set(sink.seen), (crash_at, sorted(acked - stored - set(sink.seen)))
        files = spool_files(spool)
        assert files["env/.tmp"] == [], files
        assert files["env/quarantine"] == [], files
        drain(spool, sink, acked)
        results.append(f"k={crash_at}:acked={len(acked)},stored={len(stored)}")
    request.node.user_properties.append(("r1b", " ".join(results)))
    print(" ".join(results))


def _fsync_order_violations(trace: str, env_dir: str) -> tuple[int, int]:
    """Check that every '250 ... queued as ID' follows fsync(tmp), rename(tmp, ID.env), fsync(env_dir)."""
    file_synced: set[str] = set()  # paths whose fsync returned
    renamed: dict[str, int] = {}  # final path -> event index, if its tmp was fsync'd first
    dir_synced: list[int] = []  # event indexes of completed env_dir fsyncs
    checked = violations = 0
    for call in syscalls(trace):
        if call.name in ("fsync", "fdatasync") and call.result == "0":
            file_synced.add(call.path)
            if call.path == env_dir:
                dir_synced.append(call.index)
        elif call.name.startswith("rename") and call.result == "0":
            if call.arg(0) in file_synced:
                renamed[call.arg(1)] = call.index
        elif call.name in ("sendto", "write") and "250 2.6.0" in call.text:
            for id_ in re.findall(r"queued as ([0-9a-f]{32})", call.text):
                checked += 1
                at = renamed.get(f"{env_dir}/{id_}.env")
                if at is None or not any(at < d < call.index for d in dir_synced):
                    violations += 1
    return checked, violations


@pytest.mark.timeout(5)
def test_fsync_order_checker_flags_a_250_before_the_directory_fsync() -> None:
    good = [
        '1 openat(AT_FDCWD, "/s/env/.tmp/x.tmp", O_WRONLY|O_CREAT) = 5',
        "2 fsync(5 <unfinished ...>",
        "2 <... fsync resumed>) = 0",
        '2 rename("/s/env/.tmp/x.tmp", "/s/env/' + "a" * 32 + '.env") = 0',
        '3 openat(AT_FDCWD, "/s/env", O_RDONLY|O_DIRECTORY) = 6',
        "3 fsync(6) = 0",
        '1 sendto(7, "250 2.6.0 Message accepted for delivery (queued as ' + "a" * 32 + ')\\r\\n", 86) = 86',
    ]
    assert _fsync_order_violations("\n".join(good), "/s/env") == (1, 0)
    early_reply = good[:4] + good[6:] + good[4:6]
    assert _fsync_order_violations("\n".join(early_reply), "/s/env") == (1, 1)
    no_file_fsync = good[:1] + good[3:]
    assert _fsync_order_violations("\n".join(no_file_fsync), "/s/env") == (1, 1)


@pytest.mark.timeout(60)
def test_fsync_order_before_every_250(tmp_path: Path, sink: Sink, request: pytest.FixtureRequest) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    trace = tmp_path / "strace.out"
    mta = Mta(tmp_path, sink.port, strace=trace)
    try:
        load = Load(mta.port, clients=4, limit=40, prefix="s")
        load.finish(timeout=30, stop=False)
        assert wait_for(lambda: set(load.acked) <= set(sink.seen), 15)
    finally:
        mta.stop()
    text = trace.read_text(errors="replace")
    if "PTRACE" in text[:500] or not text:
        pytest.skip("ptrace is not permitted here")
    checked, violations = _fsync_order_violations(text, str(tmp_path / "env"))
    request.node.user_properties.append(("r1c", f"checked={checked} violations={violations}"))
    print(f"R1c: 250 replies checked={checked} violations={violations}")
    assert checked == len(load.acked) == 40
    assert violations == 0


if __name__ == "__main__":
    child_main(sys.argv[1], int(sys.argv[2]))
