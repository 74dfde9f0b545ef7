"""``slimta queue``: list, show, retry, delete and flush queued mail.

.. versionadded:: 0.1.0

Like Postfix's ``mailq``/``postqueue``/``postsuper``.  The command first
asks the running node through its control socket (``[process]
control_socket``); the node runs the operation on its live queue, so
its in-memory schedule and storage stay in step.  When no node answers
(stopped, or crashed and left a stale socket file), the command works on
the spool itself: disk queues are opened directly (damaged files are
quarantined and reported, as at start-up), redis queues through the
server; a memory queue only exists in a running node.

Never run a node without a control socket and ``slimta queue`` on its disk
spool at the same time: a disk spool belongs to one process.

The control protocol is one JSON object per line each way:
``{"cmd": "list", "queue": null}`` answers ``{"ok": true, "result": ...}``
or ``{"ok": false, "error": "..."}``.
"""

from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys
import time
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from slimta.app.config import Config, Section
    from slimta.queue import QueueEntry

__all__ = ["QueueCommandError", "QueueOps", "ask_node", "handle_request", "main"]


class _QueueLike(Protocol):
    store: Any

    def inspect(self) -> list[QueueEntry]: ...
    def remove(self, id: str) -> bool: ...  # noqa: A002 - Queue's argument name
    def retry(self, id: str) -> bool: ...  # noqa: A002 - Queue's argument name
    def flush(self) -> None: ...


class QueueCommandError(Exception):
    """A queue command cannot be carried out; ``status`` is the exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


class _Offline:
    """A stopped node's queue: the :class:`~slimta.queue.Queue` methods, on the storage."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def inspect(self) -> list[QueueEntry]:
        entries = list(self.store.inspect())
        entries.sort(key=lambda e: (e.next_attempt is None, e.next_attempt or 0.0))
        return entries

    def remove(self, id: str) -> bool:  # noqa: A002 - Queue's argument name
        try:
            self.store.get(id)
        except KeyError:
            return False
        self.store.remove(id)
        return True

    def retry(self, id: str) -> bool:  # noqa: A002 - Queue's argument name
        try:
            self.store.get(id)
        except KeyError:
            return False
        self.store.set_timestamp(id, time.time())
        return True

    def flush(self) -> None:
        now = time.time()
        for entry in self.store.inspect():
            self.store.set_timestamp(entry.id, now)


class QueueOps:
    """The queue operations, over named queues (live or offline)."""

    def __init__(self, queues: dict[str, _QueueLike]) -> None:
        self.queues = queues

    def _selected(self, name: str | None) -> dict[str, _QueueLike]:
        if name is None:
            return self.queues
        if name not in self.queues:
            raise QueueCommandError(f"no queue is called {name!r}")
        return {name: self.queues[name]}

    def list(self, name: str | None = None) -> list[dict[str, Any]]:
        """Every queued message, soonest first."""
        return [
            {
                "queue": qname,
                "id": entry.id,
                "state": entry.state,
                "sender": entry.sender,
                "recipients": list(entry.recipients),
                "attempts": entry.attempts,
                "next_attempt": entry.next_attempt,
                "last_error": entry.last_error,
            }
            for qname, queue in self._selected(name).items()
            for entry in queue.inspect()
        ]

    def _find(self, id_: str, name: str | None) -> tuple[str, _QueueLike]:
        for qname, queue in self._selected(name).items():
            try:
                queue.store.get(id_)
            except KeyError:
                continue
            return qname, queue
        raise QueueCommandError(f"no queued message has the id {id_!r}")

    def show(self, id_: str, name: str | None = None) -> dict[str, Any]:
        """One message: its envelope, state and header section."""
        qname, queue = self._find(id_, name)
        envelope, attempts = queue.store.get(id_)
        entry = next((e for e in queue.inspect() if e.id == id_), None)
        header, body = envelope.flatten()
        return {
            "queue": qname,
            "id": id_,
            "state": entry.state if entry else "queued",
            "sender": envelope.sender,
            "recipients": list(envelope.recipients),
            "attempts": attempts,
            "next_attempt": entry.next_attempt if entry else None,
            "last_error": entry.last_error if entry else None,
            "received": envelope.timestamp,
            "client": {k: v for k, v in envelope.client.items() if v is not None},
            "size": len(header) + len(body),
            "headers": header.decode("utf-8", "replace"),
        }

    def retry(self, id_: str, name: str | None = None) -> str:
        """Make one message due now."""
        qname, queue = self._find(id_, name)
        queue.retry(id_)
        return qname

    def delete(self, id_: str, name: str | None = None) -> str:
        """Delete one message without delivering or bouncing it."""
        qname, queue = self._find(id_, name)
        queue.remove(id_)
        return qname

    def flush(self, name: str | None = None) -> int:
        """Make every message due now; return how many are queued."""
        count = 0
        for queue in self._selected(name).values():
            count += len(queue.inspect())
            queue.flush()
        return count

    def stats(self, name: str | None = None) -> dict[str, dict[str, Any]]:
        """Per queue: counts by state and the oldest next attempt."""
        result: dict[str, dict[str, Any]] = {}
        for qname, queue in self._selected(name).items():
            entries = queue.inspect()
            counts: dict[str, Any] = {
                s: sum(1 for e in entries if e.state == s) for s in ("queued", "deferred", "active")
            }
            counts["total"] = len(entries)
            counts["recipients"] = sum(len(e.recipients) for e in entries)
            result[qname] = counts
        return result


def handle_request(ops: QueueOps, request: dict[str, Any]) -> dict[str, Any]:
    """Run one control request; never raises for a bad request."""
    cmd, name, id_ = request.get("cmd"), request.get("queue"), request.get("id")
    try:
        if cmd in ("list", "flush", "stats"):
            result: Any = getattr(ops, str(cmd))(name)
        elif cmd in ("show", "retry", "delete") and isinstance(id_, str):
            result = getattr(ops, str(cmd))(id_, name)
        else:
            return {"ok": False, "error": f"bad request {request!r}"}
    except QueueCommandError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "result": result}


def ask_node(path: str, request: dict[str, Any], timeout: float = 30.0) -> dict[str, Any] | None:
    """Send ``request`` to the node's control socket; None when no node answers."""
    if not path or not os.path.exists(path):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return None
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    answer: dict[str, Any] = json.loads(data or b"{}")
    return answer


def _offline_ops(config: Config) -> QueueOps:
    from slimta.app.build import build_storage

    queues: dict[str, _QueueLike] = {}
    for section in config.queues:
        queues[section.name] = _Offline(_open_storage(section, build_storage))
    return QueueOps(queues)


def _open_storage(section: Section, build: Any) -> Any:
    kind = section["type"]
    if kind == "memory":
        raise QueueCommandError(
            f"queue {section.name!r} is kept in memory and no node answers on the control socket: "
            "nothing to show (is the node running?)"
        )
    if kind == "disk":
        path = section["path"]
        if not os.path.exists(path):
            raise QueueCommandError(
                f"queue {section.name!r}: no spool at {path} (nothing was queued there yet, "
                "or the configuration points elsewhere; use -c)",
                2,
            )
        if not os.path.isdir(path):
            raise QueueCommandError(f"queue {section.name!r}: {path} is not a directory", 2)
        if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
            raise QueueCommandError(f"queue {section.name!r}: no permission to use {path}", 2)
    store = build(section)
    if kind == "disk":
        before = len(os.listdir(store.quarantine_dir))
        store.load()
        damaged = len(os.listdir(store.quarantine_dir)) - before
        if damaged:
            sys.stderr.write(
                f"slimta queue: {damaged} damaged file(s) in {section['path']} were moved to "
                f"{store.quarantine_dir}\n"
            )
    return store


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "-"
    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M:%S")


def _print_list(rows: list[dict[str, Any]]) -> None:
    out = sys.stdout
    if not rows:
        out.write("queue is empty\n")
        return
    for row in rows:
        out.write(
            f"{row['id']}  {row['queue']}  {row['state']:<8}  attempts={row['attempts']}  "
            f"next={_when(row['next_attempt'])}\n"
            f"    from: {row['sender'] or '<>'}\n"
        )
        for rcpt in row["recipients"]:
            out.write(f"    to:   {rcpt}\n")
        if row["last_error"]:
            out.write(f"    last error: {row['last_error']}\n")
    out.write(f"-- {len(rows)} message(s)\n")


def _print_result(cmd: str, result: Any) -> None:
    out = sys.stdout
    if cmd == "list":
        _print_list(result)
    elif cmd == "show":
        for key in (
            "id",
            "queue",
            "state",
            "sender",
            "recipients",
            "attempts",
            "last_error",
            "client",
            "size",
        ):
            out.write(f"{key}: {result[key]}\n")
        out.write(f"received: {_when(result['received'])}\nnext_attempt: {_when(result['next_attempt'])}\n\n")
        out.write(result["headers"].replace("\r\n", "\n"))
    elif cmd == "stats":
        for name, counts in result.items():
            out.write(f"{name}: " + " ".join(f"{k}={v}" for k, v in counts.items()) + "\n")
    elif cmd == "flush":
        out.write(f"{result} message(s) due now\n")
    else:
        out.write(f"{cmd}: done (queue {result})\n")


def main(config: Config, cmd: str, id_: str | None, queue: str | None, as_json: bool) -> int:
    """Run one ``slimta queue`` command; return the exit status."""
    logging.basicConfig(
        level=logging.WARNING, format="slimta queue: %(name)s: %(message)s", stream=sys.stderr
    )
    request = {"cmd": cmd, "id": id_, "queue": queue}
    try:
        answer = ask_node(config.process["control_socket"], request)
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"slimta queue: the node's control socket failed: {exc}\n")
        return 1
    if answer is None:
        try:
            answer = handle_request(_offline_ops(config), request)
        except QueueCommandError as exc:
            sys.stderr.write(f"slimta queue: {exc}\n")
            return exc.status
    if not answer.get("ok"):
        sys.stderr.write(f"slimta queue: {answer.get('error')}\n")
        return 1
    if as_json:
        sys.stdout.write(json.dumps(answer["result"], indent=2, default=str) + "\n")
    else:
        _print_result(cmd, answer["result"])
    return 0
