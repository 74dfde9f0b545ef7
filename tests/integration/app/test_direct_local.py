"""``slimta run``'s default: local mail goes into the Maildir before the 250 (direct_local).

Real processes only.  The node runs the embedded default configuration
(disk queue, Maildir delivery) on a free port:

* every ``250`` after DATA follows, in the node's own system calls, a
  Maildir file that was fsync'd, linked into ``new/`` and whose ``new/``
  was fsync'd after the link (strace);
* kill -9 under load, restart: every acknowledged message is in the
  Maildir (at least once) and nothing is left in the queue;
* with ``direct_local = false`` the queue file comes first again.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import smtplib
import sys
import time
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import subprocess

from slimta.app.config import DEFAULT_CONFIG
from tests.strace import syscalls

from .conftest import _env, free_port, wait_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

_SEQ = re.compile(rb"^X-Seq: (\d+)$", re.M)


def _config(port: int, extra_queue: str = "") -> str:
    text = DEFAULT_CONFIG.replace("127.0.0.1:2525", f"127.0.0.1:{port}")
    return text.replace('local_relay = "local"', 'local_relay = "local"\n' + extra_queue)


def _start(directory: Path, port: int, strace: Path | None = None) -> Any:
    cmd = [sys.executable, "-m", "slimta", "run", "-c", str(directory / "slimta.toml")]
    if strace is not None:
        calls = "openat,close,fsync,fdatasync,link,linkat,rename,renameat,renameat2,sendto,write"
        cmd = [
            shutil.which("strace") or "strace",
            "-f",
            "-s",
            "200",
            "-e",
            f"trace={calls}",
            "-o",
            str(strace),
            *cmd,
        ]
    with open(directory / "node.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=directory, stdout=log, stderr=log, env=_env())
    wait_port(port, proc, timeout=30)
    return proc


def _stop(proc: Any) -> None:
    if proc.poll() is not None:
        return
    # Under strace, signal the node itself (strace's child): strace then
    # exits with it.
    children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children")
    pids = children.read_text().split() if children.exists() else []
    for pid in pids or [str(proc.pid)]:
        os.kill(int(pid), signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        for pid in pids:
            os.kill(int(pid), signal.SIGKILL)
        proc.kill()
        proc.wait(timeout=10)


def _message(n: int) -> bytes:
    return f"From: load@example.test\r\nSubject: m{n}\r\nX-Seq: {n}\r\n\r\n{'x' * 900}\r\n".encode()


def _send(port: int, n: int) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as smtp:
        smtp.sendmail("load@example.test", ["rcpt@localhost"], _message(n))


def _delivered(directory: Path) -> list[int]:
    new = directory / "var" / "mail" / "rcpt" / "new"
    seqs = []
    for name in os.listdir(new) if new.is_dir() else []:
        match = _SEQ.search((new / name).read_bytes())
        if match:
            seqs.append(int(match.group(1)))
    return seqs


def _queued(directory: Path) -> list[str]:
    spool = directory / "var" / "queue"
    return [name for name in os.listdir(spool) if name.endswith(".env")] if spool.is_dir() else []


def _maildir_order_violations(trace: str, new_dir: str) -> tuple[int, int]:
    """Count 250s after DATA not covered by as many durable Maildir files.

    A file is durable once it was fsync'd in ``tmp/``, linked into
    ``new/``, and ``new/`` was fsync'd after the link.  The k-th ``250
    2.6.0`` must come after at least k durable files.
    """
    tmp_dir = new_dir[: -len("new")] + "tmp"
    synced: set[str] = set()
    linked: list[int] = []  # event indexes of links of fsync'd files
    dir_syncs: list[int] = []
    checked = violations = 0
    for call in syscalls(trace):
        if call.name in ("fsync", "fdatasync") and call.result == "0":
            if call.path == new_dir:
                dir_syncs.append(call.index)
            elif call.path.startswith(tmp_dir + "/"):
                synced.add(call.path)
        elif call.name in ("link", "linkat", "rename", "renameat", "renameat2") and call.result == "0":
            if call.arg(0) in synced:
                linked.append(call.index)
        elif call.name in ("sendto", "write") and "250 2.6.0" in call.text:
            checked += 1
            durable = sum(1 for at in linked if any(at < d < call.index for d in dir_syncs))
            if durable < checked:
                violations += 1
    return checked, violations


def test_maildir_order_checker_flags_a_250_before_the_directory_fsync() -> None:
    new = "/m/rcpt/new"
    good = [
        '1 openat(AT_FDCWD, "/m/rcpt/tmp/a", O_WRONLY|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 5',
        "2 fsync(5) = 0",
        '2 linkat(AT_FDCWD, "/m/rcpt/tmp/a", AT_FDCWD, "/m/rcpt/new/a", 0) = 0',
        '3 openat(AT_FDCWD, "/m/rcpt/new", O_RDONLY|O_DIRECTORY) = 6',
        "3 fsync(6) = 0",
        '1 sendto(7, "250 2.6.0 Message accepted for delivery (queued as x)\\r\\n", 60, 0, NULL, 0) = 60',
    ]
    assert _maildir_order_violations("\n".join(good), new) == (1, 0)
    early = good[:3] + good[5:] + good[3:5]
    assert _maildir_order_violations("\n".join(early), new) == (1, 1)
    no_file_fsync = good[:1] + good[2:]
    assert _maildir_order_violations("\n".join(no_file_fsync), new) == (1, 1)
    # A second 250 needs a second durable file.
    assert _maildir_order_violations("\n".join([*good, good[-1]]), new) == (2, 1)


def test_every_250_follows_a_durable_maildir_file(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    port = free_port()
    (tmp_path / "slimta.toml").write_text(_config(port))
    trace = tmp_path / "strace.out"
    proc = _start(tmp_path, port, strace=trace)
    try:
        counter = iter(range(40))

        def client() -> None:
            for n in counter:
                _send(port, n)

        gevent.joinall([gevent.spawn(client) for _ in range(4)], raise_error=True)
    finally:
        _stop(proc)
    text = trace.read_text(errors="replace")
    if "PTRACE" in text[:500] or not text:
        pytest.skip("ptrace is not permitted here")
    new_dir = str(tmp_path / "var" / "mail" / "rcpt" / "new")
    checked, violations = _maildir_order_violations(text, new_dir)
    request.node.user_properties.append(("direct-order", f"checked={checked} violations={violations}"))
    assert checked == 40
    assert violations == 0
    assert sorted(_delivered(tmp_path)) == list(range(40))
    # Delivered directly: no queue file was ever renamed into the spool.
    assert not re.search(r'rename\([^)]*\.env"', text)
    assert _queued(tmp_path) == []


def test_kill_9_under_load_loses_no_acknowledged_message(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "slimta.toml").write_text(_config(port))
    acked: list[int] = []
    counter = iter(range(1_000_000))
    for _round in range(3):
        proc = _start(tmp_path, port)

        def client() -> None:
            while True:
                n = next(counter)
                try:
                    _send(port, n)
                except (smtplib.SMTPException, OSError):
                    return
                acked.append(n)

        clients = [gevent.spawn(client) for _ in range(10)]
        gevent.sleep(0.5 + _round * 0.37)
        proc.kill()  # SIGKILL, mid-transaction for most clients
        proc.wait(timeout=10)
        gevent.joinall(clients, timeout=15)
    assert len(acked) > 20
    proc = _start(tmp_path, port)
    try:
        deadline = time.monotonic() + 20
        while set(acked) - set(_delivered(tmp_path)) and time.monotonic() < deadline:
            gevent.sleep(0.1)
        missing = sorted(set(acked) - set(_delivered(tmp_path)))
        assert not missing, f"{len(missing)} of {len(acked)} acknowledged messages lost"
        deadline = time.monotonic() + 10
        while _queued(tmp_path) and time.monotonic() < deadline:
            gevent.sleep(0.1)
        assert _queued(tmp_path) == []
    finally:
        _stop(proc)


def test_direct_local_false_queues_first(tmp_path: Path) -> None:
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    port = free_port()
    (tmp_path / "slimta.toml").write_text(_config(port, "direct_local = false"))
    trace = tmp_path / "strace.out"
    proc = _start(tmp_path, port, strace=trace)
    try:
        for n in range(3):
            _send(port, n)
        deadline = time.monotonic() + 10
        while len(_delivered(tmp_path)) < 3 and time.monotonic() < deadline:
            gevent.sleep(0.05)
    finally:
        _stop(proc)
    text = trace.read_text(errors="replace")
    if "PTRACE" in text[:500] or not text:
        pytest.skip("ptrace is not permitted here")
    assert sorted(_delivered(tmp_path)) == [0, 1, 2]
    assert len(re.findall(r'rename\([^)]*\.env"', text)) == 3
