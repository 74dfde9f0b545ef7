"""Disk queue storage benchmark: messages/s accepted over SMTP, fsync on.

Run ``bench/peers_setup.sh`` once, then::

    .venv/bin/python bench/bench_storage_disk.py            # 5 interleaved rounds
    .venv/bin/python bench/bench_storage_disk.py --quick    # 1 round, fewer messages

Every contender is ``SmtpEdge -> Queue(<storage>) -> BlackholeRelay`` in its
own process, pinned to CPU 0; the load, Postfix's ``smtp-source`` (1 KiB
payload, 50 concurrent sessions, one message per connection), runs on CPU 1.
Contenders:

- ``slimta-disk``: this repository's :class:`slimta.diskstorage.DiskStorage`
  (temp file, fsync, rename, directory fsync before 250, all in one trip
  to the thread pool; concurrent fsyncs are merged by the kernel's journal);
- ``slimta-disk-gc``: the same with ``group_commit = True`` (slimta
  coalesces directory fsyncs itself, at the cost of a second trip to the
  thread pool), to show what that buys;
- ``slimta-dict``: this repository's DictStorage (nothing written: the ceiling);
- ``pyslimta-disk``: python-slimta 5.0.5's ``slimta.diskstorage.DiskStorage``
  (pickle, no fsync).  It imports ``pyaio``, which does not install on
  current systems, so a stand-in module doing the same reads and writes
  with ``os.pread``/``os.pwrite`` (synchronously, which is never slower
  than real AIO for 1 KiB) is put in ``sys.modules`` first.

The spool is a fresh directory under ``bench/out/`` (the repository's
filesystem).  Rounds rotate the contender order; the report gives medians
and ratios against python-slimta and against Postfix's smtpd, which the
issue measured at about 590 msg/s (1 KiB, 100 sessions) on this machine.
The server scripts are this file run with ``serve``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
SMTP_SOURCE = "/usr/sbin/smtp-source"
TASKSET = shutil.which("taskset")
POSTFIX_RATE = 590.0  # msg/s, Postfix smtpd with fsync, from the issue (1 KiB, 100 sessions)

OURS = ROOT / ".venv" / "bin" / "python"
PEER = BENCH / "peers" / "python-slimta" / "bin" / "python"
CONTENDERS: dict[str, Path] = {
    "slimta-disk": OURS,
    "slimta-disk-gc": OURS,
    "slimta-dict": OURS,
    "pyslimta-disk": PEER,
}
RUN_TIMEOUT = 120.0


# -- server side (runs in the contender's own venv) ----------------------------------


def _install_pyaio_standin() -> None:
    import types

    def aio_write(fd: int, data: Any, offset: int, callback: Any) -> None:
        try:
            callback(os.pwrite(fd, data, offset), 0)
        except OSError as exc:
            callback(-1, exc.errno)

    def aio_read(fd: int, offset: int, size: int, callback: Any) -> None:
        try:
            buf = os.pread(fd, size, offset)
        except OSError as exc:
            callback(b"", -1, exc.errno)
            return
        callback(buf, len(buf), 0)

    module = types.ModuleType("pyaio")
    module.aio_write = aio_write  # type: ignore[attr-defined]
    module.aio_read = aio_read  # type: ignore[attr-defined]
    sys.modules["pyaio"] = module


def _storage(kind: str, spool: Path) -> Any:
    if kind == "slimta-dict":
        from slimta.queue.dict import DictStorage

        return DictStorage()
    if kind == "pyslimta-disk":
        _install_pyaio_standin()
        from slimta.diskstorage import DiskStorage as PeerDiskStorage

        for sub in ("env", "meta", "tmp"):
            (spool / sub).mkdir(parents=True, exist_ok=True)
        return PeerDiskStorage(str(spool / "env"), str(spool / "meta"), str(spool / "tmp"))
    from slimta.diskstorage import DiskStorage

    storage = DiskStorage(spool / "env", spool / "meta")
    storage.group_commit = kind == "slimta-disk-gc"
    return storage


def serve(kind: str, port: int, spool: Path) -> None:
    if kind == "pyslimta-disk":
        sys.path = [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, BENCH)]
    else:
        sys.path.insert(0, str(ROOT))
    import warnings

    warnings.simplefilter("ignore")
    import gevent
    import gevent.event

    from slimta.edge.smtp import SmtpEdge
    from slimta.queue import Queue
    from slimta.relay.blackhole import BlackholeRelay

    queue = Queue(_storage(kind, spool), BlackholeRelay())
    queue.start()
    edge = SmtpEdge(("127.0.0.1", port), queue)
    edge.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write("READY\n")
    sys.stdout.flush()
    stop.wait()


# -- harness side ------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Server:
    def __init__(self, kind: str, spool: Path) -> None:
        self.port = _free_port()
        cmd = [
            str(CONTENDERS[kind]),
            str(Path(__file__).resolve()),
            "serve",
            kind,
            str(self.port),
            str(spool),
        ]
        if TASKSET:
            cmd = [TASKSET, "-c", "0", *cmd]
        self.log = open(OUT / f"storage-disk-{kind}.log", "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, cwd="/tmp", stdout=subprocess.PIPE, stderr=self.log)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith(b"READY"):
            self.stop()
            raise RuntimeError(f"{kind} did not start; see {self.log.name}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def run_load(port: int, count: int, sessions: int, size: int) -> dict[str, Any]:
    cmd = [SMTP_SOURCE, "-M", "bench.example", "-f", "sender@bench.example", "-t", "rcpt@bench.example"]
    cmd += ["-C", "3", "-s", str(sessions), "-m", str(count), "-l", str(size), f"127.0.0.1:{port}"]
    if TASKSET:
        cmd = [TASKSET, "-c", "1", *cmd]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {RUN_TIMEOUT} s"}
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"error": proc.stderr.decode(errors="replace").strip()[-300:]}
    return {"rate": count / wall, "wall": wall}


def one_run(kind: str, count: int, sessions: int, size: int) -> dict[str, Any]:
    spool = OUT / f"storage-disk-spool-{kind}"
    shutil.rmtree(spool, ignore_errors=True)
    spool.mkdir(parents=True)
    server = Server(kind, spool)
    try:
        run_load(server.port, 100, sessions, size)  # warm-up (imports, first files)
        result = run_load(server.port, count, sessions, size)
    finally:
        server.stop()
        shutil.rmtree(spool, ignore_errors=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round, 1,000 messages")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.messages = 1, 1000
    if not os.access(SMTP_SOURCE, os.X_OK):
        sys.exit(f"{SMTP_SOURCE} missing: apt-get install postfix")
    OUT.mkdir(exist_ok=True)
    kinds = [k for k, python in CONTENDERS.items() if python.exists()]
    rates: dict[str, list[float]] = {k: [] for k in kinds}
    errors: dict[str, list[str]] = {k: [] for k in kinds}
    for round_ in range(args.rounds):
        order = kinds[round_ % len(kinds) :] + kinds[: round_ % len(kinds)]
        for kind in order:
            result = one_run(kind, args.messages, args.sessions, args.size)
            if "error" in result:
                errors[kind].append(result["error"])
                print(f"round {round_ + 1} {kind}: ERROR {result['error']}", flush=True)
            else:
                rates[kind].append(result["rate"])
                print(f"round {round_ + 1} {kind}: {result['rate']:.0f} msg/s", flush=True)
    medians = {k: statistics.median(v) for k, v in rates.items() if v}
    print()
    print(
        f"{args.messages} x {args.size} B messages, {args.sessions} sessions, {args.rounds} round(s), medians:"
    )
    print("| storage | msg/s (median) | runs | vs pyslimta-disk | vs Postfix (590) |")
    print("|---|---|---|---|---|")
    peer = medians.get("pyslimta-disk")
    for kind in kinds:
        if kind not in medians:
            print(f"| {kind} | error: {errors[kind][:1]} | 0 | | |")
            continue
        rate = medians[kind]
        vs_peer = f"{rate / peer:.2f}x" if peer else "n/a"
        print(f"| {kind} | {rate:.0f} | {len(rates[kind])} | {vs_peer} | {rate / POSTFIX_RATE:.2f}x |")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
    else:
        main()
