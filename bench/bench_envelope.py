"""Measure ``Envelope.parse`` + ``Envelope.flatten`` on 1 KiB, 100 KiB and 10 MiB messages.

Run with ``.venv/bin/python bench/bench_envelope.py``.  For each size, and for
CRLF and bare-LF line endings, it prints the median time of several runs and
the peak memory traced by :mod:`tracemalloc` during one parse + flatten, as a
multiple of the message size.

When a python-slimta virtualenv exists at ``bench/peers/python-slimta`` the
same measurement runs there in a child process (this script with
``--json``), and the ratios ours/theirs are printed too.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

SIZES = [("1 KiB", 1024), ("100 KiB", 100 * 1024), ("10 MiB", 10 * 1024 * 1024)]
NEWLINES = [("CRLF", b"\r\n"), ("LF", b"\n")]
RUNS = 7
PEER = Path(__file__).resolve().parent / "peers" / "python-slimta" / "bin" / "python"


def make_message(size: int, newline: bytes) -> bytes:
    """A plain-text message of about ``size`` bytes with typical headers."""
    headers = [
        b"Received: from client.example.com (client.example.com [192.0.2.1])",
        b"\tby mx.example.net with ESMTPS; Mon, 1 Jan 2024 00:00:00 +0000",
        b"From: Sender <sender@example.com>",
        b"To: Recipient <rcpt@example.net>",
        b"Subject: benchmark message",
        b"Message-Id: <bench@example.com>",
        b"MIME-Version: 1.0",
        b"Content-Type: text/plain; charset=us-ascii",
    ]
    head = newline.join(headers) + newline + newline
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij" + newline
    count = max(1, (size - len(head)) // len(line))
    return head + line * count


def parse_and_flatten(envelope_class: Any, data: bytes) -> int:
    env = envelope_class()
    env.parse(data)
    header_data, body = env.flatten()
    return len(header_data) + len(body)


def measure(envelope_class: Any) -> list[dict[str, Any]]:
    results = []
    for size_name, size in SIZES:
        for nl_name, newline in NEWLINES:
            data = make_message(size, newline)
            # Repeat small messages so one timing covers ~2 MiB of work.
            loops = max(1, (2 * 1024 * 1024) // len(data))
            parse_and_flatten(envelope_class, data)  # warm-up
            timings = []
            for _ in range(RUNS):
                start = time.perf_counter()
                for _ in range(loops):
                    parse_and_flatten(envelope_class, data)
                timings.append((time.perf_counter() - start) / loops)
            tracemalloc.start()
            try:
                parse_and_flatten(envelope_class, data)
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            results.append(
                {
                    "size": size_name,
                    "newline": nl_name,
                    "bytes": len(data),
                    "median_s": statistics.median(timings),
                    "peak_multiple": peak / len(data),
                }
            )
    return results


def run_peer() -> list[dict[str, Any]] | None:
    if not PEER.exists():
        return None
    # The child imports ``slimta`` from the peer virtualenv: the script's own
    # directory (bench/) is first on its sys.path and holds no slimta package.
    proc = subprocess.run(
        [str(PEER), str(Path(__file__).resolve()), "--json"],
        capture_output=True,
        text=True,
        check=False,
        cwd=str(PEER.parent),
        timeout=600,
    )
    if proc.returncode != 0:
        print(f"python-slimta run failed:\n{proc.stderr}", file=sys.stderr)
        return None
    result: list[dict[str, Any]] = json.loads(proc.stdout)
    return result


def fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:8.1f} us"
    return f"{seconds * 1e3:8.2f} ms"


def report(ours: list[dict[str, Any]], theirs: list[dict[str, Any]] | None) -> None:
    header = f"{'size':>8} {'EOL':>4} {'median':>11} {'MiB/s':>8} {'peak/size':>9}"
    if theirs is not None:
        header += f" | {'4.0 median':>11} {'4.0 peak':>9} {'time ratio':>10} {'mem ratio':>9}"
    print(header)
    for i, row in enumerate(ours):
        rate = row["bytes"] / row["median_s"] / (1024 * 1024)
        line = (
            f"{row['size']:>8} {row['newline']:>4} {fmt_time(row['median_s']):>11} "
            f"{rate:8.0f} {row['peak_multiple']:8.2f}x"
        )
        if theirs is not None:
            peer = theirs[i]
            line += (
                f" | {fmt_time(peer['median_s']):>11} {peer['peak_multiple']:8.2f}x"
                f" {row['median_s'] / peer['median_s']:10.3f} "
                f"{row['peak_multiple'] / peer['peak_multiple']:9.3f}"
            )
        print(line)
    if theirs is None:
        print(f"(no python-slimta peer at {PEER}; ours only)")
    else:
        print("(ratios are ours / python-slimta: below 1 means we are faster or smaller)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument(
        "--json", action="store_true", help="print raw results as JSON (used for the peer run)"
    )
    args = parser.parse_args()
    from slimta.envelope import Envelope

    ours = measure(Envelope)
    if args.json:
        print(json.dumps(ours))
        return
    report(ours, run_peer())


if __name__ == "__main__":
    main()
