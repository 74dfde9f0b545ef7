"""Two slimta node processes on one redis-server: shared queue, one node killed.

Each node is ``SmtpEdge -> Queue(RedisStorage) -> relay`` in its own
process (``redis_server.NodeProcess``); the relay logs the start and end of
every attempt, and fails every fifth message's first attempt so retries
move between nodes.  The test sends over SMTP to both nodes and checks that
every acknowledged message is delivered and that no message is ever
attempted by two nodes at the same moment (overlapping attempt intervals
for one message fail the test).
"""

from __future__ import annotations

import contextlib
import itertools
import random
import smtplib
import time
import uuid
from collections import defaultdict
from pathlib import Path

import gevent
import pytest

from .redis_server import NodeProcess, RedisServer, redis_server  # noqa: F401

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]

LEASE = 1.0
CLIENTS = 10


def _read_log(
    path: Path, killed: dict[str, float]
) -> tuple[dict[str, list[tuple[float, float, str]]], set[str]]:
    """Return every attempt interval per message, and the messages delivered.

    An attempt that started on a killed node and never ended lasts until
    the kill.
    """
    intervals: dict[str, list[tuple[float, float, str]]] = defaultdict(list)
    open_starts: dict[tuple[str, str, str], float] = {}
    delivered: set[str] = set()
    for line in path.read_text().splitlines():
        kind, node, seq, start, *rest = line.split()
        if kind == "start":
            open_starts[(node, seq, start)] = float(start)
            continue
        open_starts.pop((node, seq, start), None)
        intervals[seq].append((float(start), float(rest[0]), node))
        if kind == "done":
            delivered.add(seq)
    for (node, seq, _), start in open_starts.items():
        intervals[seq].append((start, killed.get(node, float("inf")), node))
    return intervals, delivered


def _overlaps(intervals: dict[str, list[tuple[float, float, str]]]) -> list[str]:
    bad = []
    for seq, spans in intervals.items():
        spans.sort()
        for before, after in itertools.pairwise(spans):
            if after[0] < before[1]:
                bad.append(f"{seq}: {before} overlaps {after}")
    return bad


def _send(nodes: list[NodeProcess], count: int, acked: list[str], sent: list[str]) -> None:
    """CLIENTS parallel SMTP clients; a client whose node fails moves to another node."""

    def client(n: int) -> None:
        order = [nodes[n % len(nodes)], *[x for x in nodes if x is not nodes[n % len(nodes)]]]
        conn: smtplib.SMTP | None = None
        for i in range(n, count, CLIENTS):
            seq = f"m-{i}"
            for node in order:
                try:
                    if conn is None:
                        conn = smtplib.SMTP("127.0.0.1", node.port, timeout=10)
                    sent.append(seq)
                    conn.sendmail("a@src.test", ["b@dst.test"], f"X-Seq: {seq}\r\n\r\nmessage {seq}\r\n")
                    acked.append(seq)
                    break
                except (OSError, smtplib.SMTPException):
                    conn = None
                    order = order[1:] + order[:1]  # try the next node
            gevent.sleep(0.005)
        if conn is not None:
            # The node may have been killed after this client's last message.
            with contextlib.suppress(OSError, smtplib.SMTPException):
                conn.quit()

    gevent.joinall([gevent.spawn(client, n) for n in range(CLIENTS)], timeout=25, raise_error=True)


def _wait_delivered(log: Path, killed: dict[str, float], acked: list[str], timeout: float) -> set[str]:
    deadline = time.monotonic() + timeout
    while True:
        _, delivered = _read_log(log, killed)
        if set(acked) <= delivered or time.monotonic() > deadline:
            return delivered
        gevent.sleep(0.1)


def _start_nodes(server: RedisServer, tmp_path: Path, names: list[str]) -> tuple[list[NodeProcess], Path]:
    prefix = f"nodes{uuid.uuid4().hex[:8]}:"
    log = tmp_path / "attempts.log"
    log.touch()
    nodes = [
        gevent.spawn(NodeProcess, name, server.port, prefix, log, LEASE, 0.15) for name in names
    ]  # start both at once
    gevent.joinall(nodes, raise_error=True)
    return [g.value for g in nodes], log


def test_two_nodes_share_the_queue_without_overlapping_attempts(redis_server: RedisServer, tmp_path: Path):  # noqa: F811
    nodes, log = _start_nodes(redis_server, tmp_path, ["a", "b"])
    acked: list[str] = []
    try:
        _send(nodes, 150, acked, [])
        delivered = _wait_delivered(log, {}, acked, 15)
    finally:
        for node in nodes:
            node.kill()
    intervals, delivered = _read_log(log, {})
    assert len(acked) == 150
    assert set(acked) <= delivered
    assert _overlaps(intervals) == []
    nodes_used = {node for spans in intervals.values() for _, _, node in spans}
    assert nodes_used == {"a", "b"}
    # Retries (every fifth message) may run on either node: both did some.
    retried = {seq: {n for _, _, n in spans} for seq, spans in intervals.items() if len(spans) > 1}
    assert retried


def test_killing_a_node_mid_attempt_loses_nothing(redis_server: RedisServer, tmp_path: Path):  # noqa: F811
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    nodes, log = _start_nodes(redis_server, tmp_path, ["a", "b"])
    acked: list[str] = []
    sent: list[str] = []
    killed: dict[str, float] = {}

    def killer() -> None:
        while len(acked) < 60:
            gevent.sleep(0.01)
        gevent.sleep(rng.uniform(0.0, 0.3))
        killed["a"] = time.time()
        nodes[0].kill()  # SIGKILL: no clean-up, its claims stay until their lease ends

    try:
        kill_job = gevent.spawn(killer)
        _send(nodes, 200, acked, sent)
        kill_job.get(timeout=10)
        delivered = _wait_delivered(log, killed, acked, 15)
    finally:
        for node in nodes:
            node.kill()
    intervals, delivered = _read_log(log, killed)
    done_counts: dict[str, int] = defaultdict(int)
    for line in log.read_text().splitlines():
        if line.startswith("done "):
            done_counts[line.split()[2]] += 1
    taken_over = [
        seq for seq, spans in intervals.items() if any(n == "a" and end == killed["a"] for _, end, n in spans)
    ]
    print(
        f"seed={seed} sent={len(sent)} acked={len(acked)} delivered={len(delivered & set(acked))} "
        f"duplicated={sum(1 for c in done_counts.values() if c > 1)} in-flight-at-kill={len(taken_over)}"
    )
    assert len(acked) >= 190  # clients moved to node b after the kill
    assert set(acked) <= delivered, sorted(set(acked) - delivered)[:10]
    assert _overlaps(intervals) == []
    # Whatever node a was attempting when it died was finished by node b,
    # after a's lease ran out.
    assert taken_over
    for seq in taken_over:
        later = [(start, n) for start, _, n in intervals[seq] if start > killed["a"]]
        assert later
        assert all(n == "b" for _, n in later)
        assert seq in delivered
