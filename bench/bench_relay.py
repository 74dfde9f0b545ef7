"""End-to-end relay benchmark: slimta against python-slimta 5.0.5.

Pipeline, the same for both contenders::

    smtp-source --SMTP--> SmtpEdge -> Queue(DictStorage) -> StaticSmtpRelay --SMTP--> smtp-sink
                          (pool_size=10, idle_timeout=10)

Run ``bench/peers_setup.sh`` once (it creates ``bench/peers/python-slimta``), then::

    .venv/bin/python bench/bench_relay.py            # 5 interleaved rounds
    .venv/bin/python bench/bench_relay.py --quick    # 1 round, fewer messages

Each round starts a fresh Postfix ``smtp-sink -c`` (it counts every message it
receives) and, in rotated order, each contender's server.  Postfix's
``smtp-source`` sends 1 KiB messages over 100 sessions.  The clock runs from
the start of ``smtp-source`` until the sink has counted every message, so a
message counts only once it has crossed the whole pipeline; then the harness
waits a little longer and checks that the sink saw exactly as many messages
as were sent: none lost, none twice.  Measures (medians over rounds):

- messages/s end to end;
- server CPU per message, in µs (utime + stime of the server process from
  ``/proc/PID/stat``: SMTP reception, queueing and relaying together).

Servers run on CPU 0 (``taskset -c 0``), smtp-source and smtp-sink on CPU 1.
Loopback only; every wait is bounded.

The same file is the server script: ``bench_relay.py --serve ours|peer PORT SINK_PORT``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PEER_PYTHON = BENCH / "peers" / "python-slimta" / "bin" / "python"
SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
TASKSET = shutil.which("taskset")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SESSIONS = 100
SIZE = 1024
RUN_TIMEOUT = 120.0


# -- server side (runs in the contender's interpreter) -------------------------------


def serve(which: str, port: int, sink_port: int) -> None:
    """Run SmtpEdge -> Queue(DictStorage) -> StaticSmtpRelay until SIGTERM."""
    import warnings

    warnings.simplefilter("ignore")
    if which == "probe":
        serve_probe(port, sink_port)
        return
    if which == "ours":
        sys.path.insert(0, str(ROOT))
    else:
        sys.path = [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, BENCH)]
    import gevent
    import gevent.event

    from slimta.edge.smtp import SmtpEdge
    from slimta.queue import Queue
    from slimta.queue.dict import DictStorage
    from slimta.relay.smtp.static import StaticSmtpRelay

    relay = StaticSmtpRelay("127.0.0.1", sink_port, pool_size=10, idle_timeout=10.0, ehlo_as="bench.test")
    queue = Queue(DictStorage(), relay)
    queue.start()
    edge = SmtpEdge(("127.0.0.1", port), queue, hostname="bench.test")
    edge.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write(f"READY pid={os.getpid()}\n")
    sys.stdout.flush()
    stop.wait()
    edge.kill()
    relay.kill()


def serve_probe(port: int, sink_port: int) -> None:
    """The lean probe of bench_floor.py in front of the real queue and relay.

    Its edge does only the least work of a server (see
    ``_servers/lean_probe_server.py``), so its CPU per message bounds from
    below what any server built on this queue and relay can reach.
    """
    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(BENCH / "_servers"))
    import gevent.event
    from gevent.server import StreamServer
    from lean_probe_server import make_handler

    from slimta.queue import Queue
    from slimta.queue.dict import DictStorage
    from slimta.relay.smtp.static import StaticSmtpRelay

    relay = StaticSmtpRelay("127.0.0.1", sink_port, pool_size=10, idle_timeout=10.0, ehlo_as="bench.test")
    queue = Queue(DictStorage(), relay)
    queue.start()
    server = StreamServer(("127.0.0.1", port), make_handler(queue), backlog=4096)
    server.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write(f"READY pid={os.getpid()}\n")
    sys.stdout.flush()
    stop.wait()
    server.stop()
    relay.kill()


# -- harness ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pinned(cpu: int, cmd: list[str]) -> list[str]:
    return [TASKSET, "-c", str(cpu), *cmd] if TASKSET else cmd


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listening on {port}")


class Sink:
    """Postfix smtp-sink with -c; a reader thread keeps its message counter."""

    def __init__(self) -> None:
        self.port = free_port()
        cmd = pinned(1, [SMTP_SINK, "-u", "nobody", "-c", f"127.0.0.1:{self.port}", "1024"])
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.count = 0
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        wait_listening(self.port)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        buf = b""
        while chunk := os.read(self.proc.stdout.fileno(), 4096):
            buf = (buf + chunk)[-256:]
            found = re.findall(rb"mesg=(\d+)", buf)
            if found:
                self.count = int(found[-1])

    def wait_for(self, total: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.count >= total:
                return True
            time.sleep(0.002)
        return self.count >= total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


class Server:
    def __init__(self, which: str, sink_port: int) -> None:
        self.which = which
        self.port = free_port()
        python = str(PEER_PYTHON) if which == "peer" else sys.executable
        cmd = pinned(
            0, [python, str(Path(__file__).resolve()), "--serve", which, str(self.port), str(sink_port)]
        )
        # Run from / so the peer cannot pick our slimta/ up from the cwd.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd="/")
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        match = re.search(r"READY pid=(\d+)", line)
        if not match:
            self.stop()
            raise RuntimeError(f"{which}: no READY line ({line!r})")
        self.pid = int(match.group(1))
        wait_listening(self.port)

    def cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def run_one(which: str, count: int) -> dict[str, Any]:
    sink = Sink()
    server = Server(which, sink.port)
    try:
        # Warm-up: open the relay's pool and let both processes settle.
        warm = 200
        load(server.port, warm)
        if not sink.wait_for(warm, 30):
            return {"error": f"warm-up: sink saw {sink.count} of {warm}"}
        time.sleep(0.5)
        base = sink.count
        cpu0 = server.cpu()
        t0 = time.perf_counter()
        proc = load(server.port, count)
        if proc.returncode != 0:
            return {"error": proc.stderr.decode(errors="replace")[-300:]}
        if not sink.wait_for(base + count, RUN_TIMEOUT):
            return {"error": f"sink saw {sink.count - base} of {count}"}
        wall = time.perf_counter() - t0
        cpu1 = server.cpu()
        time.sleep(1.0)  # a duplicate delivery would show up now
        delivered = sink.count - base
        return {
            "rate": count / wall,
            "cpu_us": (cpu1 - cpu0) / count * 1e6,
            "exact": delivered == count,
            "delivered": delivered,
        }
    finally:
        server.stop()
        sink.stop()


def load(port: int, count: int) -> subprocess.CompletedProcess[bytes]:
    cmd = [SMTP_SOURCE, "-M", "bench.example", "-f", "sender@bench.example", "-t", "rcpt@bench.example"]
    cmd += ["-C", "3", "-s", str(SESSIONS), "-m", str(count), "-l", str(SIZE), "-d", f"127.0.0.1:{port}"]
    return subprocess.run(pinned(1, cmd), capture_output=True, timeout=RUN_TIMEOUT, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", nargs=3, metavar=("WHICH", "PORT", "SINK_PORT"))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument(
        "--with-probe",
        action="store_true",
        help="also run the lean probe edge (bench_floor.py) in front of the same queue and relay",
    )
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), int(args.serve[2]))
        return
    for tool in (SMTP_SOURCE, SMTP_SINK):
        if not os.access(tool, os.X_OK):
            sys.exit(f"{tool} missing: apt-get install postfix")
    if not PEER_PYTHON.exists():
        sys.exit("python-slimta 5.0.5 missing: run bench/peers_setup.sh")
    rounds, count = (1, 3_000) if args.quick else (args.rounds, args.count)
    contenders = ["ours", "peer", "probe"] if args.with_probe else ["ours", "peer"]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in contenders}
    for rnd in range(rounds):
        k = rnd % len(contenders)
        order = contenders[k:] + contenders[:k]
        for which in order:
            res = run_one(which, count)
            results[which].append(res)
            print(f"round {rnd + 1} {which}: {res}", flush=True)
    report(results, count)


def report(results: dict[str, list[dict[str, Any]]], count: int) -> None:
    names = {
        "ours": "slimta (this repo)",
        "peer": "python-slimta 5.0.5",
        "probe": "lean probe edge + our queue and relay (a bound, not a server)",
    }
    med: dict[str, tuple[float, float]] = {}
    print(
        f"\n{count} messages of {SIZE} B over {SESSIONS} sessions, medians of {len(results['ours'])} rounds"
    )
    print("| contender | msg/s end to end | server CPU µs/msg | counted once at the sink |")
    print("|---|---:|---:|---|")
    for key, runs in results.items():
        good = [r for r in runs if "rate" in r]
        if not good:
            print(f"| {names[key]} | error | error | {runs[0].get('error')} |")
            continue
        rate = statistics.median(r["rate"] for r in good)
        cpu = statistics.median(r["cpu_us"] for r in good)
        exact = all(r.get("exact") for r in runs)
        med[key] = (rate, cpu)
        print(
            f"| {names[key]} | {rate:,.0f} | {cpu:,.0f} | {'yes' if exact else 'NO'} ({len(good)}/{len(runs)} runs) |"
        )
    if "ours" in med and "peer" in med:
        print(
            f"\nratio slimta/python-slimta: msg/s {med['ours'][0] / med['peer'][0]:.2f}x, "
            f"CPU per message {med['ours'][1] / med['peer'][1]:.2f}x"
        )
    if "probe" in med and "peer" in med:
        print(
            f"ratio probe/python-slimta: msg/s {med['probe'][0] / med['peer'][0]:.2f}x, "
            f"CPU per message {med['probe'][1] / med['peer'][1]:.2f}x"
        )


if __name__ == "__main__":
    main()
