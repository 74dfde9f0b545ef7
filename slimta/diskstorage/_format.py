"""Encode and decode the self-checking records of the disk spool.

The format itself is described in the docstring of :mod:`slimta.diskstorage`;
this module is pure (bytes in, bytes out: no file I/O, no gevent) so it can
run in a worker thread and be tested on its own.
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from slimta.bounce.dsn import DsnError, EnvelopeDsn
from slimta.core import SlimtaError
from slimta.envelope import Envelope

if TYPE_CHECKING:
    from email.message import Message

__all__ = [
    "ENVELOPE",
    "META",
    "RecordError",
    "StoredMeta",
    "decode_envelope",
    "decode_meta",
    "encode_envelope",
    "encode_meta",
    "envelope_meta",
    "parse_record",
]

MAGIC = b"SLIMTAQ"
VERSION = 1
ENVELOPE = b"E"
META = b"M"
TRAILER = b"END\n"
# "SLIMTAQ 1 E <json> <data> <crc>\n": the header line is never longer.
_MAX_HEADER = 64

# Envelope attributes with a place of their own in the record; any other
# attribute whose value JSON can carry is kept under "extra".
_KNOWN_ATTRS = frozenset(
    {"sender", "recipients", "headers", "message", "client", "receiver", "timestamp", "dsn"}
)


class RecordError(SlimtaError, ValueError):
    """A spool file is not a complete, intact record (the message says why)."""


@dataclass(slots=True)
class StoredMeta:
    """The mutable queue metadata of one envelope.

    Attributes:
        timestamp: When the next delivery attempt is due.
        attempts: Delivery attempts so far.
        rcpt_count: How many recipients the envelope was stored with.
        delivered: Indexes into the *stored* recipient list of recipients
            that need no more attempts.
        last_error: Why the last attempt failed, if known.
        has_file: Whether a meta file exists (before the first update the
            envelope record's initial metadata is the truth).
    """

    timestamp: float
    attempts: int = 0
    rcpt_count: int = 0
    delivered: tuple[int, ...] = ()
    last_error: str | None = None
    has_file: bool = field(default=False, compare=False)


def _record(kind: bytes, doc: dict[str, Any], data: bytes) -> bytes:
    # ensure_ascii keeps lone surrogates (from surrogateescape'd 8-bit
    # input) as \udcXX escapes, which json.loads turns back into the same str.
    blob = json.dumps(doc, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode("ascii")
    crc = zlib.crc32(data, zlib.crc32(blob))
    header = b"%s %d %s %d %d %08x\n" % (MAGIC, VERSION, kind, len(blob), len(data), crc)
    return b"".join((header, blob, data, TRAILER))


def parse_record(raw: bytes, kind: bytes) -> tuple[dict[str, Any], memoryview]:
    """Check a whole record and split it into its JSON document and data.

    Args:
        raw: The file's complete content.
        kind: :data:`ENVELOPE` or :data:`META`: what the file must hold.

    Returns:
        ``(document, data)``.

    Raises:
        RecordError: Bad magic or version, wrong kind, lengths that do not
            add up (a truncated file), no END trailer, a CRC mismatch or a
            document that is not a JSON object.
    """
    end = raw.find(b"\n", 0, _MAX_HEADER)
    if end < 0:
        raise RecordError("no header line (truncated or foreign file)")
    fields = raw[:end].split(b" ")
    if len(fields) != 6 or fields[0] != MAGIC:
        raise RecordError("bad magic (not a slimta spool record)")
    if fields[1] != b"%d" % VERSION:
        raise RecordError(f"unsupported record version {fields[1]!r}")
    if fields[2] != kind:
        raise RecordError(f"record kind {fields[2]!r}, expected {kind!r}")
    try:
        blob_len, data_len, crc = int(fields[3]), int(fields[4]), int(fields[5], 16)
    except ValueError:
        raise RecordError("malformed header line") from None
    start = end + 1
    if blob_len < 0 or data_len < 0 or len(raw) != start + blob_len + data_len + len(TRAILER):
        raise RecordError(f"size {len(raw)} does not match the header (truncated?)")
    if not raw.endswith(TRAILER):
        raise RecordError("no END trailer")
    view = memoryview(raw)
    blob = view[start : start + blob_len]
    data = view[start + blob_len : start + blob_len + data_len]
    if zlib.crc32(data, zlib.crc32(blob)) != crc:
        raise RecordError("CRC32 mismatch (corrupt file)")
    try:
        doc = json.loads(bytes(blob))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RecordError(f"undecodable JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise RecordError("the JSON document is not an object")
    return doc, data


def _header_bytes(envelope: Envelope) -> tuple[bytes, str | None]:
    if envelope._headers is None and envelope._header_bytes is not None:
        # Never parsed (the usual case for a message just received): write
        # the section without building a Message; it has no mbox From line.
        unparsed = Envelope()
        unparsed._header_bytes = envelope._header_bytes
        return unparsed.flatten()[0], None
    headers: Message | None = envelope._headers
    if headers is None:
        return b"", None
    unixfrom = headers.get_unixfrom()
    header_bytes, _ = Envelope(headers=headers).flatten()
    if unixfrom:
        # flatten() writes an mbox From line first; keep it aside so that
        # Envelope.parse sees only header fields.
        header_bytes = header_bytes.split(b"\r\n", 1)[1]
    return header_bytes, unixfrom or None


def _extra(envelope: Envelope) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for name, value in vars(envelope).items():
        if name in _KNOWN_ATTRS or name.startswith("_"):
            continue
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            continue  # not representable without pickle: left out
        extra[name] = value
    return extra


def encode_envelope(id_: str, envelope: Envelope, timestamp: float) -> bytes:
    """Serialise a new envelope (with zero attempts) as an ``E`` record.

    Raises:
        slimta.envelope.EnvelopeError: A header cannot be serialised.
    """
    header_bytes, unixfrom = _header_bytes(envelope)
    message = envelope.message
    dsn = getattr(envelope, "dsn", None)
    doc = {
        "id": id_,
        "sender": envelope.sender,
        "recipients": list(envelope.recipients),
        "client": {str(k): _plain(v) for k, v in envelope.client.items()},
        "receiver": envelope.receiver,
        "received": envelope.timestamp,
        "dsn": dsn.to_dict() if isinstance(dsn, EnvelopeDsn) else None,
        "headers": None
        if envelope._headers is None and envelope._header_bytes is None
        else len(header_bytes),
        "unixfrom": unixfrom,
        "body": message is not None,
        "extra": _extra(envelope),
        "meta": {"timestamp": timestamp, "attempts": 0},
    }
    return _record(ENVELOPE, doc, header_bytes + (message or b""))


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def decode_envelope(raw: bytes, id_: str) -> tuple[Envelope, StoredMeta]:
    """Rebuild an envelope (all stored recipients) and its initial metadata.

    Raises:
        RecordError: The record is damaged or belongs to another id.
    """
    doc, data = parse_record(raw, ENVELOPE)
    try:
        if doc.get("id") != id_:
            raise RecordError(f"record holds id {doc.get('id')!r}")
        envelope = Envelope(doc["sender"], [str(r) for r in doc["recipients"]])
        header_len = doc["headers"]
        body = bytes(data[header_len or 0 :]) if doc["body"] else None
        if header_len is not None:
            envelope.parse(bytes(data[:header_len]))
            if envelope.message and body is not None:
                # Defensive: a line parse() did not take as a header is
                # body, in front of the stored body; no byte is dropped.
                body = envelope.message + body
            if doc.get("unixfrom") and envelope.headers is not None:
                envelope.headers.set_unixfrom(doc["unixfrom"])
        envelope.message = body
        envelope.client.update(doc["client"])
        envelope.receiver = doc["receiver"]
        envelope.timestamp = doc["received"]
        if doc["dsn"] is not None:
            envelope.dsn = EnvelopeDsn.from_dict(doc["dsn"])  # type: ignore[attr-defined]
        for name, value in dict(doc.get("extra") or {}).items():
            if name not in _KNOWN_ATTRS:
                setattr(envelope, name, value)
        meta = StoredMeta(
            timestamp=float(doc["meta"]["timestamp"]),
            attempts=int(doc["meta"]["attempts"]),
            rcpt_count=len(envelope.recipients),
        )
    except (KeyError, TypeError, ValueError, AttributeError, DsnError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"envelope record has a bad shape: {exc!r}") from None
    return envelope, meta


def envelope_meta(raw: bytes, id_: str) -> StoredMeta:
    """Check an ``E`` record and read only its initial metadata (for start-up).

    Raises:
        RecordError: The record is damaged or belongs to another id.
    """
    doc, _ = parse_record(raw, ENVELOPE)
    try:
        if doc.get("id") != id_:
            raise RecordError(f"record holds id {doc.get('id')!r}")
        return StoredMeta(
            timestamp=float(doc["meta"]["timestamp"]),
            attempts=int(doc["meta"]["attempts"]),
            rcpt_count=len(doc["recipients"]),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"envelope record has a bad shape: {exc!r}") from None


def encode_meta(id_: str, meta: StoredMeta) -> bytes:
    """Serialise metadata as an ``M`` record."""
    doc = {
        "id": id_,
        "timestamp": meta.timestamp,
        "attempts": meta.attempts,
        "rcpt_count": meta.rcpt_count,
        "delivered": list(meta.delivered),
        "last_error": meta.last_error,
    }
    return _record(META, doc, b"")


def decode_meta(raw: bytes, id_: str) -> StoredMeta:
    """Read an ``M`` record.

    Raises:
        RecordError: The record is damaged or belongs to another id.
    """
    doc, _ = parse_record(raw, META)
    try:
        if doc.get("id") != id_:
            raise RecordError(f"record holds id {doc.get('id')!r}")
        last_error = doc.get("last_error")
        return StoredMeta(
            timestamp=float(doc["timestamp"]),
            attempts=int(doc["attempts"]),
            rcpt_count=int(doc["rcpt_count"]),
            delivered=tuple(sorted({int(i) for i in doc["delivered"]})),
            last_error=None if last_error is None else str(last_error),
            has_file=True,
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, RecordError):
            raise
        raise RecordError(f"meta record has a bad shape: {exc!r}") from None
