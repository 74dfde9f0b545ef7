"""HTTP benchmark: HttpRelay -> WsgiEdge, slimta against python-slimta 5.0.5.

Run ``bench/peers_setup.sh`` once (it builds ``bench/peers/python-slimta``),
then::

    .venv/bin/python bench/bench_http.py            # 5 interleaved rounds
    .venv/bin/python bench/bench_http.py --quick    # 1 round, fewer messages

Each contender is the same pair of user scripts run on its own library (the
4.0 API is common to both): a server process with
``WsgiEdge(queue).build_server(...) -> Queue(DictStorage) -> BlackholeRelay`` and
a client process that delivers 1 KiB messages with
``HttpRelay(url, pool_size=50, ...)`` from 50 greenlets calling
``relay.attempt()`` in a loop.  slimta keeps its 50 connections alive
(``idle_timeout=30``); python-slimta 5.0.5 cannot (see ``CONTENDERS``) and
opens one connection per message, its default.
Both use their library's defaults otherwise and run without monkey-patching.

The server runs pinned to CPU 0 and the client to CPU 1 (``taskset``, when
there are two CPUs).  Every round starts each server afresh, warms it up,
then times one run of ``--count`` messages; contenders alternate, and their
order rotates from round to round.  The report gives medians over rounds of
messages/s and of server and client CPU milliseconds per message, and the
ratio slimta / python-slimta.  Everything stays on 127.0.0.1 and every run is
bounded in messages and in time.  Raw results go to ``bench/out/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
OUT = BENCH / "out"
PEER_PYTHON = BENCH / "peers" / "python-slimta" / "bin" / "python"
OUR_PYTHON = ROOT / ".venv" / "bin" / "python"
TASKSET = shutil.which("taskset")
CLIENTS = 50
MESSAGE_SIZE = 1024
RUN_TIMEOUT = 180.0

# python-slimta 5.0.5's HttpRelay cannot keep connections alive: its client
# never reads the response, so the second request on a connection raises
# ResponseNotReady inside the pool greenlet and that attempt waits for ever.
# It therefore runs with its default (and only working) idle_timeout=None:
# one connection per message.
CONTENDERS: dict[str, dict[str, Any]] = {
    "slimta": {"python": OUR_PYTHON, "env": {"PYTHONPATH": str(ROOT)}, "idle_timeout": "30"},
    "python-slimta": {"python": PEER_PYTHON, "env": {}, "idle_timeout": "none"},
}


# -- the user scripts (run in the contender's venv) ---------------------------


def _strip_repo_from_path() -> None:
    # The peer must import its own slimta; ours comes in through PYTHONPATH.
    if "PYTHONPATH" not in os.environ:
        sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() not in (ROOT, BENCH)]


def serve(port: int) -> None:
    """The server script: WsgiEdge -> Queue(DictStorage) -> BlackholeRelay."""
    _strip_repo_from_path()
    import signal
    import warnings

    warnings.simplefilter("ignore")
    import gevent
    import gevent.event

    from slimta.edge.wsgi import WsgiEdge
    from slimta.queue import Queue
    from slimta.queue.dict import DictStorage
    from slimta.relay.blackhole import BlackholeRelay

    queue = Queue(DictStorage(), BlackholeRelay())
    queue.start()
    # WsgiEdge(queue, listener=...) without a context crashes in python-slimta
    # 5.0.5 (it passes ssl_context=None to gevent), so both contenders build
    # their server the other documented way.
    edge = WsgiEdge(queue, hostname="bench.test")
    server = edge.build_server(("127.0.0.1", port))
    server.start()
    stop = gevent.event.Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    sys.stderr.write(f"READY pid={os.getpid()}\n")
    sys.stderr.flush()
    stop.wait()
    server.stop(timeout=1)


def load(port: int, count: int, warmup: int, idle_timeout: float | None) -> None:
    """The client script: HttpRelay with 50 greenlets; prints one JSON line."""
    _strip_repo_from_path()
    import resource
    import warnings

    warnings.simplefilter("ignore")
    import gevent

    from slimta.envelope import Envelope
    from slimta.relay.http import HttpRelay

    relay = HttpRelay(
        f"http://127.0.0.1:{port}/",
        pool_size=CLIENTS,
        ehlo_as="client.bench.test",
        timeout=30,
        idle_timeout=idle_timeout,
    )
    head = b"From: a@example.com\r\nTo: b@example.com\r\nSubject: bench\r\n\r\n"
    line = b"x" * 70 + b"\r\n"
    body = (line * (MESSAGE_SIZE // len(line) + 1))[: MESSAGE_SIZE - len(head) - 2] + b"\r\n"
    errors: list[str] = []

    def worker(n: int) -> None:
        for _ in range(n):
            envelope = Envelope("a@example.com", ["b@example.com"])
            envelope.parse(head + body)
            try:
                relay.attempt(envelope, 0)
            except Exception as exc:
                errors.append(repr(exc))

    def run(total: int) -> float:
        share = [total // CLIENTS + (1 if i < total % CLIENTS else 0) for i in range(CLIENTS)]
        start = time.perf_counter()
        gevent.joinall([gevent.spawn(worker, n) for n in share], timeout=RUN_TIMEOUT)
        return time.perf_counter() - start

    run(warmup)
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    errors.clear()
    seconds = run(count)
    usage1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (usage1.ru_utime + usage1.ru_stime) - (usage0.ru_utime + usage0.ru_stime)
    relay.kill()
    result = {
        "messages": count,
        "seconds": seconds,
        "client_cpu": cpu,
        "errors": len(errors),
        "first_error": errors[:1],
    }
    sys.stdout.write(json.dumps(result) + "\n")


# -- the harness ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _pinned(cpu: int, argv: list[str]) -> list[str]:
    if TASKSET and (os.cpu_count() or 1) >= 2:
        return [TASKSET, "-c", str(cpu), *argv]
    return argv


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _env(name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEVENT_", "PYTHONPATH"))}
    env.update(CONTENDERS[name]["env"])
    return env


def _start_server(name: str, port: int, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    python = str(CONTENDERS[name]["python"])
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            _pinned(0, [python, str(Path(__file__).resolve()), "serve", str(port)]),
            stdout=subprocess.DEVNULL,  # python-slimta writes an access log line per request there
            stderr=sink,
            env=_env(name),
            cwd="/tmp",
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        if "READY pid=" in text:
            pid = int(text.split("READY pid=", 1)[1].split()[0])
            return proc, pid
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{name} server did not start; see {log}")


def _stop_server(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def measure(name: str, count: int, warmup: int) -> dict[str, Any]:
    """Start a fresh server for ``name``, run its client once, return the numbers."""
    port = _free_port()
    OUT.mkdir(exist_ok=True)
    proc, pid = _start_server(name, port, OUT / f"http-server-{name}.log")
    try:
        python = str(CONTENDERS[name]["python"])
        idle = CONTENDERS[name]["idle_timeout"]
        argv = [python, str(Path(__file__).resolve()), "load", str(port), str(count), str(warmup), idle]
        # Server CPU is counted over the warm-up and the timed run together
        # and divided by both message counts below.
        cpu_before = _cpu_seconds(pid)
        done = subprocess.run(
            _pinned(1, argv),
            capture_output=True,
            text=True,
            env=_env(name),
            cwd="/tmp",
            timeout=RUN_TIMEOUT + 60,
        )
        server_cpu = _cpu_seconds(pid) - cpu_before
    finally:
        _stop_server(proc)
    if done.returncode != 0:
        raise RuntimeError(f"{name} client failed:\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    total = count + warmup
    result["rate"] = count / result["seconds"]
    result["server_ms_per_msg"] = 1000 * server_cpu / total
    result["client_ms_per_msg"] = 1000 * result["client_cpu"] / count
    return result


def _median(rows: list[dict[str, Any]], key: str) -> float:
    return statistics.median(row[key] for row in rows)


def report(results: dict[str, list[dict[str, Any]]]) -> str:
    ours, peer = results["slimta"], results["python-slimta"]
    lines = [
        f"HttpRelay -> WsgiEdge, {MESSAGE_SIZE} B messages, {CLIENTS} concurrent clients;"
        f" slimta keep-alive, python-slimta one connection per message (its keep-alive hangs);"
        f" medians of {len(ours)} round(s)",
        "",
        "| measure | slimta | python-slimta 5.0.5 | ratio |",
        "|---|---:|---:|---:|",
    ]
    for key, label, better_high in [
        ("rate", "messages/s", True),
        ("server_ms_per_msg", "server CPU ms/message", False),
        ("client_ms_per_msg", "client CPU ms/message", False),
    ]:
        a, b = _median(ours, key), _median(peer, key)
        ratio = a / b if better_high else b / a
        lines.append(f"| {label} | {a:,.2f} | {b:,.2f} | {ratio:.2f}x |")
    errors = {name: sum(r["errors"] for r in rows) for name, rows in results.items()}
    lines += ["", f"errors: {errors}; ratio > 1 means slimta is better (faster, or less CPU)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command")
    serve_cmd = sub.add_parser("serve")
    serve_cmd.add_argument("port", type=int)
    load_cmd = sub.add_parser("load")
    load_cmd.add_argument("port", type=int)
    load_cmd.add_argument("count", type=int)
    load_cmd.add_argument("warmup", type=int)
    load_cmd.add_argument("idle_timeout", help="seconds, or 'none'")
    parser.add_argument("--quick", action="store_true", help="1 round of 1,000 messages")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=5000, help="messages per timed run (at most 50,000)")
    args = parser.parse_args()
    if args.command == "serve":
        serve(args.port)
        return
    if args.command == "load":
        load(
            args.port,
            args.count,
            args.warmup,
            None if args.idle_timeout == "none" else float(args.idle_timeout),
        )
        return
    if not PEER_PYTHON.exists():
        sys.exit(f"{PEER_PYTHON} is missing: run bench/peers_setup.sh first")
    rounds = 1 if args.quick else max(1, min(args.rounds, 15))
    count = 1000 if args.quick else max(100, min(args.count, 50000))
    warmup = max(200, count // 10)
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in CONTENDERS}
    names = list(CONTENDERS)
    for i in range(rounds):
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            row = measure(name, count, warmup)
            results[name].append(row)
            print(
                f"round {i + 1}/{rounds} {name}: {row['rate']:,.0f} msg/s, server {row['server_ms_per_msg']:.3f} ms/msg,"
                f" client {row['client_ms_per_msg']:.3f} ms/msg, errors {row['errors']}",
                flush=True,
            )
    text = report(results)
    print()
    print(text)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    meta = {"python": platform.python_version(), "cpus": os.cpu_count(), "rounds": rounds, "count": count}
    (OUT / f"http-{stamp}.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))


if __name__ == "__main__":
    main()
