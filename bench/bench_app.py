"""The ``slimta`` command: start-up time and default-config throughput.

Run::

    .venv/bin/python bench/bench_app.py            # 5 start-ups, 5 x 3,000 messages
    .venv/bin/python bench/bench_app.py --quick    # 3 start-ups, 1 x 1,000 messages
    .venv/bin/python bench/bench_app.py --compare  # then also direct_local = false
    .venv/bin/python bench/bench_app.py --peer     # then also python-slimta's DiskStorage

* **--peer**: python-slimta 5.0.5's DiskStorage (no fsync) behind its
  SmtpEdge with a blackhole relay (``bench_storage_disk.py serve
  pyslimta-disk``), unpinned like the node, under the same load: the
  second half of the DiskStorage target (issue 6) that issue 7 asks the
  default config to sustain end to end.
* **Start-up**: ``python -m slimta run`` with the embedded default (its port
  moved to a free one), timed from the process start to the first ``220``
  banner read on a new connection (issue 7: under 1 s).
* **Throughput**: the same node (disk queue with fsync, Maildir delivery
  with fsync: the embedded default) loaded by Postfix's ``smtp-source``
  (1 KiB, 50 sessions, one message per connection, every message to
  ``rcpt@localhost``).  Reported: messages/s accepted (``smtp-source``'s
  wall time) and end to end (until the last Maildir file exists), the
  median of several runs (a fresh node and spool each).  Local mail is
  delivered into the Maildir before the ``250`` (``direct_local``, the
  default); ``--compare`` also runs the node with ``direct_local = false``
  (queue file first, then the Maildir), after the default's runs.  Files
  are deleted only at the end (see ``main`` for why).
"""

from __future__ import annotations

import argparse
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slimta.app.config import DEFAULT_CONFIG  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
POSTFIX_RATE = 590.0  # msg/s, Postfix smtpd with fsync (issue 6, 1 KiB)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start(directory: Path, port: int, queue_extra: str = "") -> tuple[subprocess.Popen[bytes], float]:
    config = directory / "slimta.toml"
    config.write_text(
        DEFAULT_CONFIG.replace("127.0.0.1:2525", f"127.0.0.1:{port}")
        .replace('log_level = "info"', 'log_level = "warning"')
        .replace('local_relay = "local"', 'local_relay = "local"\n' + queue_extra)
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-m", "slimta", "run", "-c", str(config)],
        cwd=directory,
        env=env,
        stderr=subprocess.DEVNULL,
    )
    while True:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(100).startswith(b"220"):
                    return proc, time.perf_counter() - t0
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"slimta exited with {proc.returncode}") from None
            time.sleep(0.002)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)


def startup(rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out") as tmp:
            proc, seconds = start(Path(tmp), free_port())
            stop(proc)
            times.append(seconds)
    return times


def throughput(
    directory: Path, count: int, sessions: int, size: int, queue_extra: str = ""
) -> dict[str, float]:
    port = free_port()
    proc, _ = start(directory, port, queue_extra)
    new = directory / "var" / "mail" / "rcpt" / "new"
    try:
        load = [SMTP_SOURCE, "-M", "bench.example", "-f", "s@bench.example", "-t", "rcpt@localhost"]
        subprocess.run([*load, "-s", "10", "-m", "100", "-l", str(size), f"127.0.0.1:{port}"], check=True)
        while len(os.listdir(new)) < 100:
            time.sleep(0.01)
        t0 = time.perf_counter()
        subprocess.run(
            [*load, "-s", str(sessions), "-m", str(count), "-l", str(size), f"127.0.0.1:{port}"],
            check=True,
        )
        accepted = time.perf_counter() - t0
        while len(os.listdir(new)) < count + 100:
            time.sleep(0.01)
        delivered = time.perf_counter() - t0
    finally:
        stop(proc)
    return {"accepted": count / accepted, "end_to_end": count / delivered}


PEER_PYTHON = ROOT / "bench" / "peers" / "python-slimta" / "bin" / "python"


def peer_throughput(directory: Path, count: int, sessions: int, size: int) -> dict[str, float]:
    """python-slimta 5.0.5's DiskStorage (no fsync) + BlackholeRelay, same load, unpinned like the node.

    The server is ``bench_storage_disk.py serve pyslimta-disk``; it only
    receives (its relay discards), so its rate is messages accepted.
    """
    port = free_port()
    cmd = [str(PEER_PYTHON), str(ROOT / "bench" / "bench_storage_disk.py"), "serve", "pyslimta-disk"]
    proc = subprocess.Popen([*cmd, str(port), str(directory)], cwd="/tmp", stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if not proc.stdout.readline().startswith(b"READY"):
            raise SystemExit("python-slimta's server did not start")
        load = [SMTP_SOURCE, "-M", "bench.example", "-f", "s@bench.example", "-t", "rcpt@bench.example"]
        subprocess.run([*load, "-s", "10", "-m", "100", "-l", str(size), f"127.0.0.1:{port}"], check=True)
        t0 = time.perf_counter()
        subprocess.run(
            [*load, "-s", str(sessions), "-m", str(count), "-l", str(size), f"127.0.0.1:{port}"],
            check=True,
        )
        accepted = time.perf_counter() - t0
    finally:
        stop(proc)
    return {"accepted": count / accepted, "end_to_end": count / accepted}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--compare", action="store_true", help="also run with direct_local = false")
    parser.add_argument(
        "--peer",
        action="store_true",
        help="also run python-slimta's DiskStorage (no fsync, receive only) under the same load",
    )
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=5, help="throughput runs (median reported)")
    args = parser.parse_args()
    (ROOT / "bench" / "out").mkdir(exist_ok=True)
    rounds = 3 if args.quick else 5
    if args.quick:
        args.messages = 1000
        args.rounds = 1
    times = startup(rounds)
    print(
        f"start-up to first 220 banner: median {statistics.median(times):.3f} s, max {max(times):.3f} s ({rounds} runs)"
    )
    if not shutil.which(SMTP_SOURCE):
        sys.exit(f"{SMTP_SOURCE} missing: apt-get install postfix")
    variants: dict[str, str | None] = {"default (direct_local)": ""}
    if args.compare:
        variants["direct_local = false"] = "direct_local = false"
    if args.peer:
        if not PEER_PYTHON.exists():
            sys.exit("python-slimta 5.0.5 missing: run bench/peers_setup.sh")
        variants["python-slimta DiskStorage (no fsync, blackhole)"] = None
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    # Every run's files are deleted only at the end, and the variants run
    # one after the other, not alternately: on this machine's ext4 (no
    # journal) the inode allocator skips inodes freed in the last 60 s,
    # checking each one, so a run right after thousands of deletions (the
    # previous run's clean-up, or the queue files direct_local = false
    # removes) spends ~15% more CPU per message on creating files.
    scratch = []
    try:
        for name, extra in variants.items():
            for _ in range(args.rounds):
                tmp = tempfile.TemporaryDirectory(dir=ROOT / "bench" / "out")
                scratch.append(tmp)
                if extra is None:
                    rates = peer_throughput(Path(tmp.name), args.messages, args.sessions, args.size)
                else:
                    rates = throughput(Path(tmp.name), args.messages, args.sessions, args.size, extra)
                runs[name].append(rates)
                print(
                    f"  {name}: {rates['accepted']:.0f} msg/s accepted, {rates['end_to_end']:.0f} end to end",
                    flush=True,
                )
    finally:
        for tmp in scratch:
            tmp.cleanup()
    medians = {name: statistics.median(r["end_to_end"] for r in results) for name, results in runs.items()}
    for name, results in runs.items():
        accepted = statistics.median(r["accepted"] for r in results)
        end_to_end = statistics.median(r["end_to_end"] for r in results)
        what = "receive only" if variants[name] is None else "disk queue + Maildir"
        print(
            f"{name}, {what}, {args.size} B, {args.sessions} sessions, {args.messages} messages, "
            f"median of {len(results)}: {accepted:.0f} msg/s accepted, {end_to_end:.0f} msg/s delivered end to end "
            f"({end_to_end / POSTFIX_RATE:.2f}x Postfix smtpd's ~{POSTFIX_RATE:.0f})"
        )

    peer = medians.get("python-slimta DiskStorage (no fsync, blackhole)")
    if peer:
        ours = medians["default (direct_local)"]
        print(f"ratio default end to end / python-slimta DiskStorage accepted: {ours / peer:.2f}x")


if __name__ == "__main__":
    main()
