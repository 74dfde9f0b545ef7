"""Queue storage in Redis, shared safely by several slimta nodes.

:class:`RedisStorage` keeps the queue in a Redis server so that several
processes (on one machine or many) can run a :class:`~slimta.queue.Queue`
over the same messages.  It has python-slimta's constructor and methods,
but unlike python-slimta's version it never unpickles (a writable Redis is
not code execution), never scans with ``KEYS``, changes every record
atomically, and lets exactly one node attempt a given envelope at a time.

Data model (``P`` is ``prefix``):

* ``P msg:<id>`` - a hash per envelope: ``meta`` (JSON: sender, recipients,
  client, receiver, timestamp, DSN request), ``headers`` (the flattened
  header section), ``body`` (the raw body bytes), ``nrcpt``, ``done``
  (original indexes of delivered recipients), ``ts`` (next attempt),
  ``attempts``, ``error`` (last failure) and ``owner`` (the node holding
  the claim).  Format version in field ``v``.
* ``P due`` - sorted set of unclaimed ids, scored by next attempt time.
* ``P claimed`` - sorted set of claimed ids, scored by when the lease ends
  (Redis server time).
* ``P wake`` - pub/sub channel: a message is published whenever an id
  becomes due at a new time, so idle nodes re-read the schedule.

Claims and leases:

* An attempt needs a claim.  :meth:`~RedisStorage.write` claims the new
  envelope for the writing node (the queue attempts it at once);
  :meth:`~RedisStorage.get` claims it (the queue calls it right before each
  scheduled attempt) and raises :class:`KeyError` when another node holds a
  live lease, which the queue takes as "not mine any more";
  :meth:`~RedisStorage.wait` claims due ids in batches for idle nodes.
* A claim is a lease of ``lease_time`` seconds, renewed every third of that
  while the node holds it (so long attempts keep it).  A node that dies
  stops renewing; when the lease ends, the id is claimed by the next node
  whose :meth:`~RedisStorage.wait` runs.
* :meth:`~RedisStorage.set_timestamp` (after a failed attempt) gives the
  claim back and puts the id in ``due``; :meth:`~RedisStorage.remove`
  deletes everything in one ``MULTI``.
* :meth:`~RedisStorage.load` claims nothing: it lists every unclaimed id
  with its due time, plus the ids this node holds or whose lease ran out
  (:meth:`Queue.load` semantics: "what may be attempted, and when").  The
  queue schedules them locally; the claim in :meth:`~RedisStorage.get`
  decides which node attempts each one.

Durability is Redis's: run it with ``appendonly yes`` and ``appendfsync
always`` if an acknowledged message must survive a power cut.  For Redis
Cluster, use a prefix with a hash tag (``'{slimta}:'``) so that every key
is in one slot.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, cast

import gevent
import redis
from gevent import Greenlet
from gevent.event import AsyncResult
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.retry import Retry

from slimta import logging as slimta_logging
from slimta.bounce.dsn import EnvelopeDsn, get_dsn, set_dsn
from slimta.envelope import Envelope
from slimta.policy.requiretls import get_requiretls, set_requiretls
from slimta.queue import QueueEntry, QueueError, QueueStorage

from . import _scripts
from ._connection import connection_class_for

__all__ = ["RedisStorage", "RedisStorageError"]

_log = slimta_logging.getQueueStorageLogger(__name__)
_plain_log = logging.getLogger(__name__)

_FORMAT = 1


class RedisStorageError(QueueError):
    """A Redis command failed, or Redis holds a record this version cannot read."""


def _text(value: bytes | str) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


def _bytes(value: bytes | str) -> bytes:
    return value.encode("utf-8", "surrogateescape") if isinstance(value, str) else value


class _Batcher:
    """Group commit: storage calls made while a round trip is in flight share the next one.

    The first call sends its commands at once; calls arriving meanwhile are
    queued and go out together in one pipeline (no ``MULTI`` around the
    batch: each entry is atomic by itself, a script or its own ``MULTI``).
    Under load this turns one round trip per message into one per batch;
    a lone call waits no longer than before.
    """

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._pending: list[tuple[Callable[[Any], int], AsyncResult[list[Any]]]] = []
        self._running = False

    def call(self, add: Callable[[Any], int]) -> list[Any]:
        """Queue ``add(pipeline) -> number of commands added``; return their replies."""
        result: AsyncResult[list[Any]] = AsyncResult()
        self._pending.append((add, result))
        if not self._running:
            self._running = True
            gevent.spawn(self._flush)
        return cast("list[Any]", result.get())

    def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                pipe = self._client.pipeline(transaction=False)
                counts = [add(pipe) for add, _ in batch]
                try:
                    replies = pipe.execute(raise_on_error=False)
                except BaseException as exc:  # noqa: BLE001 - handed to every caller
                    for _, result in batch:
                        result.set_exception(exc)
                    continue
                offset = 0
                for count, (_, result) in zip(counts, batch, strict=True):
                    result.set(replies[offset : offset + count])
                    offset += count
        finally:
            self._running = False


class RedisStorage(QueueStorage):
    """A :class:`~slimta.queue.QueueStorage` in Redis, safe for several nodes.

    Ids are random UUID4 hex strings.  See the module documentation for the
    data model and the claim protocol.

    Args:
        host: Redis server host name.
        port: Redis server port.
        db: Database number.
        password: Password for ``AUTH`` (``requirepass`` or an ACL user's).
        socket_timeout: Seconds before a command's socket read or write
            fails (:class:`RedisStorageError`); ``None`` for no limit.
        prefix: Prepended to every key and channel name.
        url: A ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL; when
            given, it replaces ``host``, ``port``, ``db`` and ``password``
            (those found in the URL).  (Beyond python-slimta.)
        username: ACL user name for ``AUTH``.  (Beyond python-slimta.)
        ssl: Connect with TLS (as a ``rediss://`` URL does).
        ssl_ca_certs: CA bundle file to verify the server with (default:
            the system's).
        ssl_certfile: Client certificate file, for servers that ask for one.
        ssl_keyfile: Private key of ``ssl_certfile``.
        ssl_cert_reqs: ``'required'`` (default), ``'optional'`` or
            ``'none'``: how the server certificate is checked.
        ssl_check_hostname: Check that the certificate names ``host``.
        lease_time: Seconds a claim lasts without renewal: how long an
            envelope held by a node that died waits before another node
            attempts it.  Renewed every ``lease_time / 3`` while held.
        claim_on_write: When true (default), :meth:`write` claims the new
            envelope for this node, whose queue attempts it at once.  Set
            it false on nodes whose queue has no relay (store-only edges):
            new envelopes are then due for whichever node claims them.
        claim_batch: The most ids one :meth:`wait` call claims.
        socket_connect_timeout: Seconds to wait for a connection; defaults
            to ``socket_timeout``.
        max_connections: Most connections in the pool (default: no limit;
            the gevent queue uses one per concurrent storage call).

    Attributes:
        redis: The :class:`redis.Redis` client (for inspection and tests).
        prefix: The key prefix.
        node_id: This object's identity in ``owner`` fields: unique per
            :class:`RedisStorage` object.
    """

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        socket_timeout: float | None = None,
        prefix: str = "slimta:",
        *,
        url: str | None = None,
        username: str | None = None,
        ssl: bool = False,
        ssl_ca_certs: str | None = None,
        ssl_certfile: str | None = None,
        ssl_keyfile: str | None = None,
        ssl_cert_reqs: str = "required",
        ssl_check_hostname: bool = True,
        lease_time: float = 60.0,
        claim_on_write: bool = True,
        claim_batch: int = 100,
        socket_connect_timeout: float | None = None,
        max_connections: int | None = None,
    ) -> None:
        super().__init__()
        if lease_time <= 0:
            raise ValueError("lease_time must be positive")
        if claim_batch < 1:
            raise ValueError("claim_batch must be at least 1")
        options: dict[str, Any] = {
            "host": host,
            "port": port,
            "db": db,
            "password": password,
            "username": username,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": socket_connect_timeout,
        }
        url_class: type[Any] | None = None
        if url is not None:
            parsed = cast("Callable[[str], dict[str, Any]]", parse_url)(url)
            url_class = parsed.pop("connection_class", None)
            options.update(parsed)
            if "path" in parsed:
                options.pop("host", None)
                options.pop("port", None)
        connection_class = connection_class_for(url_class, ssl)
        if issubclass(connection_class, redis.SSLConnection):
            options.update(
                ssl_ca_certs=ssl_ca_certs,
                ssl_certfile=ssl_certfile,
                ssl_keyfile=ssl_keyfile,
                ssl_cert_reqs=ssl_cert_reqs,
                ssl_check_hostname=ssl_check_hostname,
            )
        # No hidden retries: a command that may have run must not run twice
        # (a retried write would store a second copy).  The pool itself
        # replaces connections the server closed before handing them out.
        pool = redis.ConnectionPool(
            connection_class=connection_class,
            max_connections=max_connections,
            retry=Retry(NoBackoff(), 0),
            **options,
        )
        self.redis: redis.Redis = redis.Redis(connection_pool=pool)
        self.prefix = prefix
        self.lease_time = float(lease_time)
        self.claim_on_write = claim_on_write
        self.claim_batch = claim_batch
        self.node_id = uuid.uuid4().hex
        self._due_key = f"{prefix}due"
        self._claimed_key = f"{prefix}claimed"
        self._channel = f"{prefix}wake"
        self._msg_prefix = f"{prefix}msg:"
        register = self.redis.register_script
        self._write_script = register(_scripts.WRITE)
        self._claim_script = register(_scripts.CLAIM)
        self._claim_due_script = register(_scripts.CLAIM_DUE)
        self._reschedule_script = register(_scripts.RESCHEDULE)
        self._increment_script = register(_scripts.INCREMENT)
        self._set_error_script = register(_scripts.SET_ERROR)
        self._delivered_script = register(_scripts.DELIVERED)
        self._renew_script = register(_scripts.RENEW)
        self._release_script = register(_scripts.RELEASE)
        self._load_script = register(_scripts.LOAD)
        self._batcher = _Batcher(self.redis)
        # Ids whose write() has not returned yet, and those a load() in
        # progress must leave out (see load()).
        self._writing: set[str] = set()
        self._load_excludes: list[set[str]] = []
        self._held: set[str] = set()
        self._renewer: Greenlet[..., Any] | None = None
        self._pubsub: Any = None

    # -- helpers -------------------------------------------------------------

    def _batched_script(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script in the next group commit (loading it if Redis lost it)."""
        (reply,) = self._batcher.call(lambda pipe: pipe.evalsha(script.sha, len(keys), *keys, *args) and 1)
        if isinstance(reply, redis.exceptions.NoScriptError):
            return script(keys=keys, args=args)
        if isinstance(reply, Exception):
            raise reply
        return reply

    def _key(self, id_: str) -> str:
        return self._msg_prefix + id_

    def _hold(self, ids: Iterable[str]) -> None:
        self._held.update(ids)
        if self._held and (self._renewer is None or self._renewer.dead):
            self._renewer = gevent.spawn(self._renew_loop)

    def _renew_loop(self) -> None:
        while self._held:
            gevent.sleep(self.lease_time / 3.0)
            held = list(self._held)
            for start in range(0, len(held), 500):
                chunk = held[start : start + 500]
                try:
                    lost = self._renew_script(
                        keys=[self._claimed_key, *map(self._key, chunk)],
                        args=[self.node_id, self.lease_time, *chunk],
                    )
                except redis.RedisError:
                    slimta_logging.log_exception(__name__)
                    continue
                for raw in lost:
                    id_ = _text(raw)
                    if id_ in self._held:
                        _plain_log.warning("lost the claim on %s (lease ended)", id_)
                        self._held.discard(id_)

    @staticmethod
    def _encode(envelope: Envelope) -> tuple[str, bytes, bytes]:
        header_bytes, _ = envelope.flatten()
        dsn = get_dsn(envelope)
        meta = {
            "sender": envelope.sender,
            "recipients": list(envelope.recipients),
            "client": envelope.client,
            "receiver": envelope.receiver,
            "timestamp": envelope.timestamp,
            "dsn": None if dsn is None else dsn.to_dict(),
            "requiretls": get_requiretls(envelope),
            # Not envelope.headers, which would parse a section nobody read.
            "has_headers": envelope._headers is not None or envelope._header_bytes is not None,
            "has_body": envelope.message is not None,
        }
        body = envelope.message if envelope.message is not None else b""
        return json.dumps(meta, default=str), header_bytes, bytes(body)

    @staticmethod
    def _decode(
        meta_raw: bytes | str, headers: bytes | str, body: bytes | str, done_raw: bytes | str
    ) -> Envelope:
        try:
            meta = json.loads(meta_raw)
            done = {int(i) for i in _text(done_raw).split(",") if i}
            recipients = [r for i, r in enumerate(meta["recipients"]) if i not in done]
            envelope = Envelope(meta["sender"], recipients)
            if meta.get("has_headers", True):
                envelope.parse(_bytes(headers))
            envelope.message = _bytes(body) if meta.get("has_body", True) else None
            envelope.client.update(meta.get("client") or {})
            envelope.receiver = meta.get("receiver")
            envelope.timestamp = meta.get("timestamp")
            if meta.get("dsn") is not None:
                set_dsn(envelope, EnvelopeDsn.from_dict(meta["dsn"]))
            if meta.get("requiretls"):
                set_requiretls(envelope)
        except (ValueError, KeyError, TypeError) as exc:
            raise RedisStorageError(f"unreadable queue record: {exc}") from exc
        return envelope

    # -- QueueStorage --------------------------------------------------------

    def write(self, envelope: Envelope, timestamp: float) -> str:
        """Store ``envelope`` (claimed by this node unless ``claim_on_write`` is off).

        Returns:
            The new id, once Redis has the whole record.

        Raises:
            RedisStorageError: Redis refused or could not be reached.
        """
        meta, header_bytes, body = self._encode(envelope)
        owner = self.node_id if self.claim_on_write else ""
        id_ = ""
        try:
            while True:
                self._writing.discard(id_)
                id_ = uuid.uuid4().hex
                self._writing.add(id_)
                for excluded in self._load_excludes:
                    excluded.add(id_)
                created = self._batched_script(
                    self._write_script,
                    [self._key(id_), self._claimed_key, self._due_key],
                    [
                        meta,
                        header_bytes,
                        body,
                        len(envelope.recipients),
                        repr(float(timestamp)),
                        owner,
                        self.lease_time,
                        id_,
                        self._channel,
                    ],
                )
                if created:
                    break
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis write failed: {exc}") from exc
        finally:
            self._writing.discard(id_)
        if owner:
            self._hold((id_,))
        _log.write(id_, envelope)
        return id_

    def set_timestamp(self, id: str, timestamp: float) -> None:  # noqa: A002 - 4.0 argument name
        """Reschedule ``id`` and give its claim back (it is due at ``timestamp``).

        If another node holds a live claim on it, only the recorded time
        changes.

        Raises:
            KeyError: ``id`` is not stored.
        """
        try:
            result = self._reschedule_script(
                keys=[self._key(id), self._due_key, self._claimed_key],
                args=[id, repr(float(timestamp)), self.node_id, self._channel],
            )
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis update failed: {exc}") from exc
        if result == 0:
            raise KeyError(id)
        self._held.discard(id)
        _log.update_meta(id, timestamp=timestamp)

    def increment_attempts(self, id: str) -> int:  # noqa: A002 - 4.0 argument name
        """Count one more attempt (atomic ``HINCRBY``).

        Raises:
            KeyError: ``id`` is not stored.
        """
        try:
            attempts = self._increment_script(keys=[self._key(id)])
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis update failed: {exc}") from exc
        if attempts is None:
            raise KeyError(id)
        _log.update_meta(id, attempts=int(attempts))
        return int(attempts)

    def set_recipients_delivered(self, id: str, rcpt_indexes: Iterable[int]) -> None:  # noqa: A002 - 4.0 argument name
        """Drop delivered recipients (indexes into the current list), atomically.

        Raises:
            KeyError: ``id`` is not stored.
        """
        indexes = sorted({int(i) for i in rcpt_indexes})
        try:
            result = self._delivered_script(keys=[self._key(id)], args=indexes)
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis update failed: {exc}") from exc
        if result is None:
            raise KeyError(id)
        _log.update_meta(id, delivered_indexes=indexes)

    def set_last_error(self, id: str, error: str) -> None:  # noqa: A002 - matches the other methods
        """Remember why the last attempt failed (shown by :meth:`inspect`)."""
        try:
            self._set_error_script(keys=[self._key(id)], args=[error])
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis update failed: {exc}") from exc

    def load(self) -> list[tuple[float, str]]:
        """List what this node may schedule: ``(next attempt, id)`` pairs.

        Every unclaimed envelope, every envelope this node holds a claim on
        and every envelope whose lease ran out.  Nothing is claimed here;
        :meth:`get` claims right before the attempt.  One script call, no
        key scan.
        """
        # A write() of this node that overlaps this call is being handed to
        # its caller (the queue attempts it from enqueue): listing it too
        # would let the queue start a second attempt of it at once.
        excluded = set(self._writing)
        self._load_excludes.append(excluded)
        try:
            flat = self._load_script(
                keys=[self._due_key, self._claimed_key], args=[self.node_id, self._msg_prefix]
            )
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis load failed: {exc}") from exc
        finally:
            self._load_excludes.remove(excluded)
        pairs = ((float(flat[i + 1]), _text(flat[i])) for i in range(0, len(flat), 2))
        return [(ts, id_) for ts, id_ in pairs if id_ not in excluded]

    def get(self, id: str) -> tuple[Envelope, int]:  # noqa: A002 - 4.0 argument name
        """Claim ``id`` for an attempt by this node and return ``(envelope, attempts)``.

        The claim holds until :meth:`set_timestamp` or :meth:`remove` (or
        until this node stops renewing it).  Use :meth:`peek` to read
        without claiming.

        Raises:
            KeyError: ``id`` is not stored, or another node holds a live
                claim on it (it is attempting it now).
        """
        try:
            fields = self._claim_script(
                keys=[self._key(id), self._due_key, self._claimed_key],
                args=[id, self.node_id, self.lease_time],
            )
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis read failed: {exc}") from exc
        if not fields:
            raise KeyError(id)
        self._hold((id,))
        meta, headers, body, done, attempts = fields
        return self._decode(meta, headers, body, done), int(attempts)

    def peek(self, id: str) -> tuple[Envelope, int]:  # noqa: A002 - same as get()
        """Return ``(envelope, attempts)`` without claiming ``id``.

        .. versionadded:: 0.1.0 (not in python-slimta).

        Raises:
            KeyError: ``id`` is not stored.
        """
        try:
            fields = self.redis.hmget(self._key(id), ["meta", "headers", "body", "done", "attempts"])
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis read failed: {exc}") from exc
        meta, headers, body, done, attempts = fields
        if meta is None:
            raise KeyError(id)
        return self._decode(meta, headers or b"", body or b"", done or b""), int(attempts or 0)

    def remove(self, id: str) -> None:  # noqa: A002 - 4.0 argument name
        """Delete ``id`` and its schedule entries in one ``MULTI``; unknown ids are ignored."""

        def add(pipe: Any) -> int:
            pipe.execute_command("MULTI")
            pipe.delete(self._key(id))
            pipe.zrem(self._due_key, id)
            pipe.zrem(self._claimed_key, id)
            pipe.execute_command("EXEC")
            return 5

        try:
            replies = self._batcher.call(add)
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis delete failed: {exc}") from exc
        error = next((r for r in replies if isinstance(r, Exception)), None)
        if error is not None:
            raise RedisStorageError(f"Redis delete failed: {error}")
        self._held.discard(id)
        _log.remove(id)

    def wait(self) -> list[tuple[float, str]]:
        """Block (cooperatively) until envelopes are due here, claim and return them.

        Claims up to ``claim_batch`` ids: first those whose lease ran out
        (their node died), then those due now.  Between checks it sleeps
        on the ``wake`` channel until the earliest due time or lease end,
        or until another node reschedules something.

        Returns:
            ``(next attempt, id)`` pairs, each claimed by this node.
        """
        try:
            if self._pubsub is None:
                pubsub = cast(Any, self.redis).pubsub(ignore_subscribe_messages=True)
                pubsub.subscribe(self._channel)
                self._pubsub = pubsub
            while True:
                flat, next_due, next_lease, server_now = self._claim_due_script(
                    keys=[self._due_key, self._claimed_key],
                    args=[
                        repr(time.time()),
                        self.node_id,
                        self.lease_time,
                        self.claim_batch,
                        self._msg_prefix,
                    ],
                )
                if flat:
                    ids = [_text(flat[i]) for i in range(0, len(flat), 2)]
                    self._hold(ids)
                    return [(float(flat[i + 1]), ids[i // 2]) for i in range(0, len(flat), 2)]
                delay = self.lease_time
                if next_due:
                    delay = min(delay, float(next_due) - time.time())
                if next_lease:
                    delay = min(delay, float(next_lease) - float(server_now))
                if self._pubsub.get_message(timeout=max(0.005, delay) + 0.005) is not None:
                    while self._pubsub.get_message(timeout=0.0) is not None:
                        pass  # one re-check covers every message waiting
        except redis.RedisError as exc:
            self._close_pubsub()
            raise RedisStorageError(f"Redis wait failed: {exc}") from exc

    def get_info(self) -> dict[str, Any]:
        """Return ``size`` (stored envelopes), ``due``, ``claimed`` and ``held`` (claims of this node)."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.zcard(self._due_key)
        pipe.zcard(self._claimed_key)
        try:
            due, claimed = pipe.execute()
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis read failed: {exc}") from exc
        return {
            "size": int(due) + int(claimed),
            "due": int(due),
            "claimed": int(claimed),
            "held": len(self._held),
        }

    def inspect(self) -> Iterator[QueueEntry]:
        """List every stored envelope (claimed or not) with its metadata.

        The state is ``'queued'`` or ``'deferred'``; a claim only means some
        node may attempt it (the queue itself reports ``'active'``).
        """
        try:
            pipe = self.redis.pipeline(transaction=True)
            pipe.zrange(self._due_key, 0, -1)
            pipe.zrange(self._claimed_key, 0, -1)
            due, claimed = pipe.execute()
        except redis.RedisError as exc:
            raise RedisStorageError(f"Redis read failed: {exc}") from exc
        active = {_text(i) for i in claimed}
        ids = [_text(i) for i in due] + sorted(active)
        for start in range(0, len(ids), 500):
            chunk = ids[start : start + 500]
            pipe = self.redis.pipeline(transaction=False)
            for id_ in chunk:
                pipe.hmget(self._key(id_), ["meta", "done", "attempts", "ts", "error"])
            try:
                rows = pipe.execute()
            except redis.RedisError as exc:
                raise RedisStorageError(f"Redis read failed: {exc}") from exc
            for id_, (meta_raw, done_raw, attempts_raw, ts_raw, error) in zip(chunk, rows, strict=True):
                if meta_raw is None:
                    continue  # removed meanwhile
                meta = json.loads(meta_raw)
                done = {int(i) for i in _text(done_raw or b"").split(",") if i}
                attempts = int(attempts_raw or 0)
                state = "deferred" if attempts else "queued"
                yield QueueEntry(
                    id=id_,
                    sender=meta["sender"],
                    recipients=tuple(r for i, r in enumerate(meta["recipients"]) if i not in done),
                    attempts=attempts,
                    next_attempt=None if ts_raw is None else float(ts_raw),
                    last_error=None if error is None else _text(error),
                    state=state,
                )

    # -- lifecycle -------------------------------------------------------------

    def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(redis.RedisError, OSError):
                pubsub.close()

    def close(self) -> None:
        """Give back every claim this node holds and close the connections.

        Kill the :class:`~slimta.queue.Queue` first.  The envelopes become
        due for other nodes at once instead of after their lease.
        """
        if self._renewer is not None:
            self._renewer.kill()
            self._renewer = None
        held = sorted(self._held)
        self._held.clear()
        try:
            for start in range(0, len(held), 500):
                chunk = held[start : start + 500]
                self._release_script(
                    keys=[self._due_key, self._claimed_key, *map(self._key, chunk)],
                    args=[self.node_id, self._channel, *chunk],
                )
        except redis.RedisError:
            slimta_logging.log_exception(__name__)
        self._close_pubsub()
        self.redis.connection_pool.disconnect()
