"""DKIM signing (RFC 6376, RFC 8463) on bytes: canonicalisation, hashes, ``b=``.

Strategy: the relay signs every message it sends, so this is on the hot
path, and a signature must come out exactly as an independent verifier
recomputes it.  Everything works on the ``bytes`` the relay sends, with
operations that run in C: ``bytes.split``/``join``/``replace`` and a few
regular expressions compiled once.  The body (the large part) is
canonicalised with two or three whole-buffer passes, never line by line.
RSA and Ed25519 come from ``cryptography`` (OpenSSL); keys are parsed once
by :class:`~slimta.policy.dkim.DkimKey` and reused.

dkimpy stays the reference: the tests compare these canonicalisation
functions with ``dkim.canonicalization`` and verify every signature with
dkimpy and OpenDKIM.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from typing import Final, TypeAlias

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa, utils

from slimta.smtp._clientcore import message_lines

__all__ = [
    "CANONICALIZATIONS",
    "PrivateKey",
    "canon_body",
    "canon_header",
    "field_name",
    "field_value",
    "hash_body",
    "load_private_key",
    "select_fields",
    "sent_body",
    "sign",
    "split_fields",
]

PrivateKey: TypeAlias = rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey

#: The names of ``c=``, header and body alike.
CANONICALIZATIONS: Final = ("relaxed", "simple")

# ASCII whitespace that is not WSP (RFC 5234): bytes.split() splits on it.
_NOT_WSP_SPACE: Final = re.compile(rb"[\r\n\x0b\x0c]")
# Patterns that start with a literal: the regex engine scans ahead for it
# at memchr speed, faster than bytes.count() or ``in`` on text.
_TWO_WSP: Final = re.compile(rb"  ")
_WSP_EOL: Final = re.compile(rb" \r\n")
# Folded lines start with WSP; a field starts with anything else.
_FIELD_SPLIT: Final = re.compile(rb"\r\n(?![ \t])")
_LINE: Final = 76  # fold the signature field's lines at this many characters

# hashlib.sha256() looks the digest up in OpenSSL on every call, which costs
# more than hashing 10 KiB when the process has been idle (cold caches);
# copying a ready context skips the lookup.
_SHA256: Final = hashlib.sha256()
_PKCS1V15: Final = padding.PKCS1v15()
_PREHASHED_SHA256: Final = utils.Prehashed(hashes.SHA256())


def _sha256(data: bytes) -> bytes:
    digest = _SHA256.copy()
    digest.update(data)
    return digest.digest()


# -- canonicalisation (RFC 6376 section 3.4) ---------------------------------


def sent_body(body: bytes) -> bytes:
    """The body as the SMTP client sends it, over DATA or BDAT.

    ``body`` comes from :meth:`~slimta.envelope.Envelope.flatten`; the
    client passes it through :func:`slimta.smtp._clientcore.message_lines`
    (bare CR as CRLF, a final CRLF if missing), so the signature covers
    exactly what the receiver gets and verifies.
    """
    return message_lines(body)


def _compress_wsp(data: bytes) -> bytes:
    """Make every run of SP and HT one SP.

    ``bytes.replace`` runs at memory speed where a regular expression
    tries a match at every space; each pass halves the runs, so a run of
    ``n`` WSP takes ``log2(n)`` passes, and text with single spaces only
    costs two searches.
    """
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    while _TWO_WSP.search(data):
        data = data.replace(b"  ", b" ")
    return data


def canon_body(body: bytes, method: str) -> bytes:
    r"""Canonicalise a CRLF body (RFC 6376 sections 3.4.3 and 3.4.4).

    ``simple``: empty lines at the end are removed and the body ends in one
    CRLF (an empty body becomes ``\r\n``).  ``relaxed``: WSP at the ends of
    lines is removed and other WSP runs become one space; empty lines at the
    end are removed; an empty body stays empty.  A last line without CRLF
    gets one, as dkimpy does.
    """
    if method == "relaxed":
        body = _compress_wsp(body)
        if _WSP_EOL.search(body):
            body = body.replace(b" \r\n", b"\r\n")
    # Empty lines at the end go; the last line keeps (or gets) its CRLF.
    core = body.rstrip(b"\r\n")
    tail = len(body) - len(core)
    if tail and body.count(b"\r\n", len(core)) * 2 == tail:
        body = core + b"\r\n"
    else:
        # No CRLF at the end, or a bare CR or LF among the last bytes.
        if not body.endswith(b"\r\n"):
            body += b"\r\n"
        end = len(body)
        while end >= 4 and body[end - 4 : end] == b"\r\n\r\n":
            end -= 2
        body = body[:end]
    if method == "relaxed" and body == b"\r\n":
        return b""
    return body


def canon_header(field: bytes, method: str) -> bytes:
    r"""Canonicalise one whole field (``Name: value\r\n``, folds included).

    ``simple`` returns it unchanged.  ``relaxed`` (RFC 6376 section 3.4.2)
    gives ``name:value\r\n``: the name lower-cased, the value unfolded, WSP
    runs made one space, WSP at both ends removed.
    """
    if method == "simple":
        return field
    name, _, value = field.partition(b":")
    if b"\r\n" in value:
        value = value.replace(b"\r\n", b"")
    # bytes.split() takes CR, LF, VT and FF for WSP too: only without them
    # is it the same as compressing WSP (dkimpy strips them at the ends).
    value = _compress_wsp(value).strip() if _NOT_WSP_SPACE.search(value) else b" ".join(value.split())
    return name.rstrip(b" \t").lower() + b":" + value + b"\r\n"


def split_fields(header: bytes) -> list[bytes]:
    r"""The fields of a header section, each with its folds and final CRLF.

    ``header`` is what :meth:`~slimta.envelope.Envelope.flatten` returns:
    CRLF lines, ending with the empty line.
    """
    if header.endswith(b"\r\n\r\n"):
        header = header[:-4]
    elif header.endswith(b"\r\n"):
        header = header[:-2]
    return [field + b"\r\n" for field in _FIELD_SPLIT.split(header) if field]


def hash_body(body: bytes, method: str) -> bytes:
    """The ``bh=`` value: base64 of the SHA-256 of the canonical body."""
    return base64.b64encode(_sha256(canon_body(body, method)))


def field_name(field: bytes) -> bytes:
    """A field's name, lower case."""
    return field.partition(b":")[0].rstrip(b" \t").lower()


def field_value(field: bytes) -> str:
    """A field's value as ``str`` (8-bit bytes as surrogate escapes), unfolded, stripped."""
    value = field.partition(b":")[2].replace(b"\r\n", b"")
    return value.strip(b" \t").decode("ascii", "surrogateescape")


def select_fields(
    fields: Sequence[bytes], names: Sequence[str], lowered: Sequence[bytes] | None = None
) -> list[bytes]:
    """The fields that ``h=`` ``names`` sign, in ``h=`` order.

    Each occurrence of a name takes the lowest field of that name not yet
    taken (RFC 6376 section 5.4.2); a name with none left (over-signing)
    takes nothing.  ``lowered`` may give the fields' :func:`field_name`.
    """
    if lowered is None:
        lowered = [field_name(field) for field in fields]
    taken: dict[bytes, int] = {}
    chosen: list[bytes] = []
    for name in names:
        key = name.encode("ascii")
        i = taken.get(key, len(fields))
        while i > 0:
            i -= 1
            if lowered[i] == key:
                chosen.append(fields[i])
                break
        taken[key] = i
    return chosen


# -- keys and signatures ------------------------------------------------------


def load_private_key(algorithm: str, data: bytes) -> PrivateKey:
    """Parse a key: PEM (PKCS#1 or PKCS#8) for RSA, the base64 seed for Ed25519.

    Raises:
        ValueError: The key cannot be used for ``algorithm``.
    """
    try:
        if algorithm == "ed25519-sha256":
            seed = base64.b64decode(b"".join(data.split()), validate=True)
            if len(seed) != 32:
                raise ValueError(f"an ed25519 seed has 32 bytes, not {len(seed)}")
            return ed25519.Ed25519PrivateKey.from_private_bytes(seed)
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ValueError(f"unusable {algorithm} private key ({exc})") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"an rsa-sha256 key must be an RSA key, not {type(key).__name__}")
    return key


def _fold(tags: Sequence[bytes], first: int) -> bytes:
    r"""Join tags with ``"; "``, folding at spaces so lines stay short.

    A fold replaces a space with CRLF SP: relaxed canonicalisation turns it
    back into the space, and simple canonicalisation hashes exactly these
    bytes, so the folds are safe under both.
    """
    words = b" ".join(tags).split(b" ")
    lines: list[bytes] = []
    line = words[0]
    width = first + len(line)
    for word in words[1:]:
        if width + 1 + len(word) > _LINE:
            lines.append(line)
            line, width = word, 1 + len(word)
        else:
            line += b" " + word
            width += 1 + len(word)
    lines.append(line)
    return b"\r\n ".join(lines)


def sign(
    fields: Sequence[bytes],
    body: bytes,
    *,
    key: PrivateKey,
    algorithm: str,
    domain: str,
    selector: str,
    names: Sequence[str],
    canonicalize: tuple[str, str] = ("relaxed", "relaxed"),
    timestamp: int | None = None,
    lowered: Sequence[bytes] | None = None,
    body_hash: bytes | None = None,
) -> str:
    """One ``DKIM-Signature`` value (without the field name) for a message.

    Args:
        fields: The header fields as sent (see :func:`split_fields`).
        body: The body as sent (see :func:`sent_body`).
        key: From :func:`load_private_key` for ``algorithm``.
        algorithm: ``rsa-sha256`` or ``ed25519-sha256``.
        domain: ``d=``.
        selector: ``s=``.
        names: ``h=``, lower case, over-signed names repeated.
        canonicalize: ``(header, body)`` methods.
        timestamp: ``t=`` (default: now).
        lowered: The fields' :func:`field_name`, if already known.
        body_hash: :func:`hash_body` of ``body``, if already known (one
            message, several keys).
    """
    hmethod, bmethod = canonicalize
    if body_hash is None:
        body_hash = hash_body(body, bmethod)
    t = int(time.time()) if timestamp is None else timestamp
    tags = [
        b"v=1;",
        b"a=" + algorithm.encode("ascii") + b";",
        b"c=" + f"{hmethod}/{bmethod}".encode("ascii") + b";",
        b"d=" + domain.encode("ascii") + b";",
        b"s=" + selector.encode("ascii") + b";",
        b"t=" + str(t).encode("ascii") + b";",
        b"h=" + " : ".join(names).encode("ascii") + b";",
        b"bh=" + body_hash + b";",
    ]
    # b= starts a line of its own; the verifier hashes everything before
    # its (empty) value.
    unsigned = _fold(tags, len("DKIM-Signature: ")) + b"\r\n b="
    chosen = select_fields(fields, names, lowered)
    data = b"".join([canon_header(field, hmethod) for field in chosen])
    # The signature field itself, without its final CRLF.
    data += canon_header(b"DKIM-Signature: " + unsigned + b"\r\n", hmethod)[:-2]
    digest = _sha256(data)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        signature = key.sign(digest)  # RFC 8463 section 3: Ed25519 over the SHA-256 digest
    else:
        signature = key.sign(digest, _PKCS1V15, _PREHASHED_SHA256)
    b64 = base64.b64encode(signature)
    width = _LINE - 3  # after " b="
    chunks = [b64[:width]] + [b64[i : i + _LINE - 1] for i in range(width, len(b64), _LINE - 1)]
    return (unsigned + b"\r\n ".join(chunks)).decode("ascii")
