"""Enqueue-and-deliver throughput and memory of Queue(DictStorage) -> BlackholeRelay.

Run with ``.venv/bin/python bench/bench_queue.py [N] [--runs R]`` (N envelopes
of 1 KiB, default 20000; R runs, default 3).  Each measurement runs in a
fresh child process:

* ``speed``: enqueue N parsed envelopes (yielding to the hub every 100, as
  concurrent sessions would) into a started ``Queue(DictStorage(),
  BlackholeRelay())`` and wait until storage is empty; reports envelopes/s.
  Parsing the messages happens before the clock starts.
* ``rss`` and ``trace``: enqueue N envelopes into a queue without a relay,
  so they all stay queued, and report the growth of resident memory
  (``/proc/self/statm``) and of :mod:`tracemalloc`'s traced memory per
  queued envelope, next to the message size.

When ``bench/peers/python-slimta/bin/python`` exists (a virtualenv with
python-slimta 5.0.5), the same children run there too, and the medians and
ratios are printed side by side.  A run is abandoned after ``--deadline``
seconds.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PEER = HERE / "peers" / "python-slimta" / "bin" / "python"
MAX_N = 1_000_000


def make_message(size: int = 1024) -> bytes:
    head = (
        b"From: Sender <sender@example.com>\r\nTo: Recipient <rcpt@example.net>\r\n"
        b"Subject: benchmark message\r\nMessage-Id: <bench@example.com>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n"
    body = line * ((size - len(head)) // len(line))
    return (head + body + b"x" * size)[:size]


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def child(mode: str, n: int) -> dict[str, Any]:
    import gevent

    from slimta.envelope import Envelope
    from slimta.queue import Queue
    from slimta.queue.dict import DictStorage
    from slimta.relay.blackhole import BlackholeRelay

    data = make_message()

    def envelope(i: int) -> Any:
        env = Envelope("sender@example.com", [f"rcpt{i}@example.net"])
        env.parse(data)
        return env

    if mode == "speed":
        store = DictStorage()
        queue = Queue(store, BlackholeRelay())
        queue.start()
        envelopes = [envelope(i) for i in range(n)]  # parsing is not the queue's work
        gc.collect()
        gevent.sleep(0)
        began = time.perf_counter()
        for i, env in enumerate(envelopes):
            queue.enqueue(env)
            if i % 100 == 99:
                gevent.sleep(0)
        while store.env_db:
            gevent.sleep(0.001)
        elapsed = time.perf_counter() - began
        queue.kill()
        return {"envelopes_per_s": n / elapsed, "seconds": elapsed}

    store = DictStorage()
    queue = Queue(store)  # no relay: everything stays queued
    gc.collect()
    if mode == "trace":
        import tracemalloc

        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
    else:
        before = rss_bytes()
    for i in range(n):
        queue.enqueue(envelope(i))
    gc.collect()
    after = tracemalloc.get_traced_memory()[0] if mode == "trace" else rss_bytes()
    assert len(store.env_db) == n
    return {"bytes_per_envelope": (after - before) / n, "message_size": len(data)}


def run_child(python: Path | str, mode: str, n: int, deadline: float, ours: bool) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    if ours:
        env["PYTHONPATH"] = str(ROOT)
    cmd = [str(python), str(Path(__file__).resolve()), str(n), "--child", mode]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=deadline, env=env, cwd="/", check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{python} {mode} failed:\n{out.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("n", nargs="?", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--deadline", type=float, default=300.0, help="seconds allowed per child run")
    parser.add_argument("--child", choices=["speed", "rss", "trace"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = max(1, min(args.n, MAX_N))
    if args.child:
        print(json.dumps(child(args.child, n)))
        return

    impls: list[tuple[str, Path | str, bool]] = [("slimta", sys.executable, True)]
    if PEER.exists():
        impls.append(("python-slimta 5.0.5", PEER, False))
    else:
        print(f"(no peer at {PEER}; measuring slimta only)")
    runs = max(1, min(args.runs, 9))
    medians: dict[tuple[str, str], float] = {}
    print(f"Queue(DictStorage) -> BlackholeRelay, {n} envelopes of 1 KiB, median of {runs} runs")
    for mode, key, unit in (
        ("speed", "envelopes_per_s", "envelopes/s"),
        ("rss", "bytes_per_envelope", "RSS bytes per queued envelope"),
        ("trace", "bytes_per_envelope", "traced bytes per queued envelope"),
    ):
        for name, python, ours in impls:
            values = [run_child(python, mode, n, args.deadline, ours)[key] for _ in range(runs)]
            medians[(name, mode)] = statistics.median(values)
            shown = ", ".join(f"{v:,.0f}" for v in values)
            print(f"  {name:<22} {unit:<34} {medians[(name, mode)]:>12,.0f}   (runs: {shown})")
        if len(impls) == 2:
            ratio = medians[(impls[0][0], mode)] / medians[(impls[1][0], mode)]
            print(f"  {'ratio slimta/peer':<22} {'':<34} {ratio:>12.2f}x")


if __name__ == "__main__":
    main()
