"""Messages/s accepted over SMTP with RedisStorage: slimta against python-slimta 5.0.5.

Run ``bench/peers_setup.sh`` once (and ``bench/peers/python-slimta/bin/pip
install redis``: python-slimta's ``redis`` extra), then::

    .venv/bin/python bench/bench_storage_redis.py            # 5 interleaved rounds
    .venv/bin/python bench/bench_storage_redis.py --quick    # 1 round, fewer messages

Both contenders run ``SmtpEdge -> Queue(RedisStorage) -> BlackholeRelay``
against the same ``redis-server`` (started here on a free loopback port,
no persistence, a temporary directory), each with its own key prefix; the
database is flushed before every run.  The load is Postfix's
``smtp-source`` (1 KiB payload, 50 sessions, persistent sessions) when
``/usr/sbin/smtp-source`` exists, else a gevent smtplib client with the same
shape.  Rounds alternate the order of the contenders; the report gives the
median messages/s and the ratio slimta / python-slimta.  Server processes
are pinned to CPU 0, redis-server and the load generator to the other CPUs
(``taskset``, when available).

``bench_storage_redis.py serve IMPL PORT REDIS_PORT PREFIX`` is the server
each contender's interpreter runs (IMPL is ``slimta`` or ``python-slimta``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
PYTHONS = {
    "slimta": ROOT / ".venv" / "bin" / "python",
    "python-slimta": BENCH / "peers" / "python-slimta" / "bin" / "python",
}
REFERENCE = "slimta+DictStorage"  # same pipeline, in-memory storage: the edge's ceiling
SMTP_SOURCE = "/usr/sbin/smtp-source"
TASKSET = shutil.which("taskset")
SESSIONS = 50
SIZE = 1024
RUN_TIMEOUT = 120.0


# -- the server side (runs in each contender's venv) ---------------------------


def serve(impl: str, port: int, redis_port: int, prefix: str) -> None:
    """SmtpEdge -> Queue(RedisStorage) -> BlackholeRelay until SIGTERM."""
    import warnings

    warnings.simplefilter("ignore")
    if impl == "slimta":
        sys.path.insert(0, str(ROOT))
    else:  # the peer's own slimta, never this repository's
        sys.path = [p for p in sys.path if Path(p or ".").resolve() != ROOT]
    import gevent
    import gevent.event

    from slimta.edge.smtp import SmtpEdge
    from slimta.queue import Queue
    from slimta.redisstorage import RedisStorage
    from slimta.relay.blackhole import BlackholeRelay

    storage: Any = RedisStorage(port=redis_port, prefix=prefix)
    if os.environ.get("BENCH_DICT_STORAGE"):  # the ceiling: same pipeline, no storage I/O
        from slimta.queue.dict import DictStorage

        storage = DictStorage()
    queue = Queue(storage, BlackholeRelay())
    queue.start()
    edge = SmtpEdge(("127.0.0.1", port), queue)
    edge.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    sys.stdout.write(f"READY {os.getpid()}\n")
    sys.stdout.flush()
    stop.wait()
    edge.kill()
    queue.kill()


# -- the harness ---------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pin(cpus: str, cmd: list[str]) -> list[str]:
    return [TASKSET, "-c", cpus, *cmd] if TASKSET and (os.cpu_count() or 1) > 1 else cmd


def _redis_command(port: int, *args: str) -> bytes:
    payload = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(payload.encode())
        return sock.recv(4096)


class RedisServer:
    def __init__(self) -> None:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        self.dir = tempfile.mkdtemp(prefix="bench-redis-")
        self.port = free_port()
        other = "1" if (os.cpu_count() or 1) < 3 else "2"
        self.proc = subprocess.Popen(
            _pin(other, [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", self.dir,
                         "--save", "", "--appendonly", "no"]),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if _redis_command(self.port, "PING").startswith(b"+PONG"):
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


class Server:
    def __init__(self, impl: str, redis_port: int) -> None:
        self.port = free_port()
        env = dict(os.environ)
        if impl == REFERENCE:
            impl = "slimta"
            env["BENCH_DICT_STORAGE"] = "1"
        cmd = [
            str(PYTHONS[impl]),
            str(Path(__file__).resolve()),
            "serve",
            impl,
            str(self.port),
            str(redis_port),
        ]
        cmd.append(f"bench-{impl}:")
        self.proc = subprocess.Popen(
            _pin("0", cmd),
            cwd="/tmp",
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().decode()
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError(f"{impl}: server did not start ({line!r})")
        self.pid = int(line.split()[1])

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _load_smtp_source(port: int, count: int) -> None:
    cmd = [SMTP_SOURCE, "-M", "bench.example", "-f", "sender@bench.example", "-t", "rcpt@bench.example"]
    cmd += ["-C", "3", "-s", str(SESSIONS), "-m", str(count), "-l", str(SIZE), "-d", f"127.0.0.1:{port}"]
    proc = subprocess.run(_pin("1", cmd), capture_output=True, timeout=RUN_TIMEOUT, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.decode(errors="replace")[-300:])


def _load_smtplib(port: int, count: int) -> None:
    code = f"""
import gevent.monkey; gevent.monkey.patch_all()
import gevent, smtplib
body = "Subject: bench\\r\\n\\r\\n" + "x" * {SIZE}
def session(n):
    with smtplib.SMTP("127.0.0.1", {port}, timeout=60) as c:
        for _ in range(n):
            c.sendmail("sender@bench.example", ["rcpt@bench.example"], body)
per, extra = divmod({count}, {SESSIONS})
gevent.joinall([gevent.spawn(session, per + (i < extra)) for i in range({SESSIONS})], raise_error=True)
"""
    subprocess.run(_pin("1", [str(PYTHONS["slimta"]), "-c", code]), check=True, timeout=RUN_TIMEOUT)


def run_once(impl: str, redis: RedisServer, count: int) -> float:
    _redis_command(redis.port, "FLUSHALL")
    server = Server(impl, redis.port)
    try:
        load = _load_smtp_source if os.path.exists(SMTP_SOURCE) else _load_smtplib
        load(server.port, max(50, count // 20))  # warm-up: connections, scripts, caches
        t0 = time.perf_counter()
        load(server.port, count)
        return count / (time.perf_counter() - t0)
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1 round, fewer messages")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    count = args.messages // 3 if args.quick else args.messages
    for impl, python in PYTHONS.items():
        if not python.exists():
            sys.exit(f"{impl}: {python} is missing; run bench/peers_setup.sh")
    check = subprocess.run(
        [str(PYTHONS["python-slimta"]), "-c", "import redis"], capture_output=True, cwd="/tmp", check=False
    )
    if check.returncode != 0:
        sys.exit("python-slimta's venv lacks redis: bench/peers/python-slimta/bin/pip install redis")
    load_name = "smtp-source" if os.path.exists(SMTP_SOURCE) else "gevent smtplib"
    print(f"{count} x {SIZE} B messages, {SESSIONS} persistent sessions ({load_name}), {rounds} round(s)")
    names = [*PYTHONS, REFERENCE]
    rates: dict[str, list[float]] = {name: [] for name in names}
    redis = RedisServer()
    try:
        for index in range(rounds):
            order = names if index % 2 == 0 else names[::-1]
            for name in order:
                rate = run_once(name, redis, count)
                rates[name].append(rate)
                print(f"round {index + 1}: {name:14} {rate:8.0f} msg/s", flush=True)
    finally:
        redis.stop()
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratio = medians["slimta"] / medians["python-slimta"]
    print()
    print("| contender | median msg/s | runs |")
    print("|---|---:|---|")
    for name in names:
        print(
            f"| {name}{' (reference)' if name == REFERENCE else ''} | {medians[name]:.0f} | {', '.join(f'{r:.0f}' for r in rates[name])} |"
        )
    print(f"\nslimta / python-slimta: {ratio:.2f}x (target: at least 2x)")
    if args.json:
        result: dict[str, Any] = {"messages": count, "rounds": rounds, "rates": rates, "medians": medians}
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
