"""``slimta queue``: on a running node (control socket) and on a stopped node's spool."""

from __future__ import annotations

import json
import smtplib
from pathlib import Path
from typing import Any

import gevent
import pytest

from .conftest import config_text, free_port, slimta_cmd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(40)]


def _relay_to(port: int) -> str:
    return (
        f'[[relay]]\nname = "out"\ntype = "static"\nhost = "127.0.0.1"\nport = {port}\nconnect_timeout = 2\n'
    )


def _config(port: int, next_hop: int) -> str:
    return config_text(
        port,
        edge_extra='relay_networks = ["127.0.0.1/32"]',
        queue_extra='relay = "out"',
        relays=_relay_to(next_hop),
    )


def _queue(tmp_path: Path, *args: str) -> tuple[int, Any, str]:
    status, out, err = slimta_cmd("queue", "-c", "slimta.toml", *args, cwd=tmp_path)
    if status == 0 and "--json" in args:
        return status, json.loads(out), err
    return status, out, err


def _wait_deferred(tmp_path: Path, count: int) -> list[dict[str, Any]]:
    rows: Any = None
    for _ in range(100):
        _, rows, _ = _queue(tmp_path, "list", "--json")
        if len(rows) == count and all(r["state"] == "deferred" for r in rows):
            return list(rows)
        gevent.sleep(0.1)
    raise AssertionError(f"queue never held {count} deferred messages: {rows}")


def test_queue_commands_running_then_stopped(tmp_path: Path, slimta_node: Any, sink: Any) -> None:
    port, dead = free_port(), free_port()
    node = slimta_node(_config(port, dead)).start(port)
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
        for n in range(3):
            client.sendmail(
                f"s{n}@example.test", [f"r{n}@remote.test"], f"Subject: q{n}\r\n\r\nbody\r\n".encode()
            )
    rows = _wait_deferred(tmp_path, 3)
    assert sorted(r["sender"] for r in rows) == ["s0@example.test", "s1@example.test", "s2@example.test"]
    assert all(r["attempts"] == 1 and r["queue"] == "main" for r in rows)
    assert all("Connection refused" in (r["last_error"] or "") or r["last_error"] for r in rows)
    first, second, third = (r["id"] for r in rows)

    status, shown, _ = _queue(tmp_path, "show", first, "--json")
    assert status == 0
    assert shown["id"] == first
    assert shown["client"]["ip"] == "127.0.0.1"
    assert "Subject: q" in shown["headers"]
    status, text, _ = _queue(tmp_path, "show", first)
    assert f"id: {first}" in text
    assert "Received: from" in text

    assert _queue(tmp_path, "delete", first)[0] == 0
    status, _, err = _queue(tmp_path, "show", first)
    assert status == 1
    assert f"no queued message has the id '{first}'" in err
    assert _queue(tmp_path, "retry", second)[0] == 0
    status, out, _ = _queue(tmp_path, "flush")
    assert status == 0
    assert "2 message(s) due now" in out
    status, stats, _ = _queue(tmp_path, "stats", "--json")
    assert stats["main"]["total"] == 2
    status, text, _ = _queue(tmp_path, "list")
    assert "-- 2 message(s)" in text

    # Stopped node: the same spool, read directly.
    assert node.stop() == 0
    _, rows, _ = _queue(tmp_path, "list", "--json")
    assert sorted(r["id"] for r in rows) == sorted([second, third])
    assert _queue(tmp_path, "delete", third)[0] == 0
    _, stats, _ = _queue(tmp_path, "stats", "--json")
    assert stats["main"]["total"] == 1
    assert _queue(tmp_path, "retry", second)[0] == 0

    # Restarted with a working next hop: the one message left is delivered at once.
    node.write_config(_config(port, sink.port))
    node.start(port)
    envelopes = sink.wait(1)
    assert [e.sender for e in envelopes] == [next(r["sender"] for r in rows if r["id"] == second)]
    for _ in range(50):
        _, rows, _ = _queue(tmp_path, "list", "--json")
        if not rows:
            break
        gevent.sleep(0.1)
    assert rows == []
    status, text, _ = _queue(tmp_path, "list")
    assert text == "queue is empty\n"


def test_missing_spool_is_explained(tmp_path: Path) -> None:
    (tmp_path / "slimta.toml").write_text(_config(free_port(), free_port()))
    status, _, err = _queue(tmp_path, "list")
    assert status == 2
    assert f"queue 'main': no spool at {tmp_path}/var/queue" in err


def test_damaged_spool_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "slimta.toml").write_text(_config(free_port(), free_port()))
    spool = tmp_path / "var" / "queue"
    spool.mkdir(parents=True)
    (spool / ("0" * 32 + ".env")).write_bytes(b"not a record\n")
    status, out, err = _queue(tmp_path, "list")
    assert status == 0
    assert "queue is empty" in out
    assert f"1 damaged file(s) in {spool} were moved to {spool}/quarantine" in err
    assert (spool / "quarantine").exists()


def test_memory_queue_needs_a_running_node(tmp_path: Path) -> None:
    (tmp_path / "slimta.toml").write_text(config_text(free_port(), queue_type="memory"))
    status, _, err = _queue(tmp_path, "stats")
    assert status == 1
    assert "kept in memory" in err


def test_second_node_on_same_spool_refused(tmp_path: Path, slimta_node: Any) -> None:
    port = free_port()
    slimta_node(config_text(port)).start(port)
    (tmp_path / "other.toml").write_text(config_text(free_port()))
    status, _, err = slimta_cmd("run", "-c", "other.toml", cwd=tmp_path)
    assert status == 2
    assert "another slimta node answers on the control socket" in err
