"""Operations: list the messages waiting in a stopped node's disk queue.

A disk spool belongs to one process at a time, so run this while the server
that owns the spool is stopped (for a running ``slimta`` node, ``slimta
queue list`` asks the node itself)::

    python3 examples/tutorials/queue_report.py --spool /var/spool/slimta
"""

from __future__ import annotations

import argparse
import time

from slimta.diskstorage import DiskStorage


def main() -> None:
    """Print one block per queued message, oldest due first, and a count."""
    parser = argparse.ArgumentParser(description="List a disk queue.")
    parser.add_argument("--spool", default="/var/spool/slimta", help="directory of the disk queue")
    args = parser.parse_args()
    storage = DiskStorage(f"{args.spool}/envelopes", f"{args.spool}/meta")
    entries = sorted(storage.inspect(), key=lambda entry: entry.next_attempt or 0.0)
    for entry in entries:
        due = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.next_attempt or time.time()))
        print(f"{entry.id}  {entry.state}  attempts={entry.attempts}  next={due}")
        print(f"    from: {entry.sender or '<>'}")
        print(f"    to:   {', '.join(entry.recipients)}")
        if entry.last_error:
            print(f"    last error: {entry.last_error}")
    print(f"-- {len(entries)} message(s)")


if __name__ == "__main__":
    main()
