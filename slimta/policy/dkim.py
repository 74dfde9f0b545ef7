"""DKIM (RFC 6376): sign outgoing mail, verify incoming mail.

Install the extra: ``pip install slimta[dkim]``.  Signing is our own
(the private module ``slimta.policy._dkimsign``: canonicalisation on bytes,
hashes from :mod:`hashlib`, RSA and Ed25519 from ``cryptography``), cheap
enough to run on every message; verification uses dkimpy, an independent
implementation (ed25519 verification needs PyNaCl, which the extra
installs).  Key lookups go through :func:`slimta.util.dns.dkim_txt`, i.e.
our non-blocking resolver.

Signing
-------

:class:`DkimSigner` is a :class:`~slimta.policy.RelayPolicy`: add it to the
relay *last*, after every policy that changes headers, and it signs the
bytes the relay is about to send (:meth:`~slimta.envelope.Envelope.flatten`
gives them: CRLF line endings, headers byte for byte; a body without a
final CRLF is signed with the one the SMTP client adds), so the signature
survives delivery::

    signer = DkimSigner({
        "example.com": [DkimKey("rsa2026", rsa_pem),
                        DkimKey("ed2026", ed_seed_b64, "ed25519-sha256")],
    })
    relay.add_policy(signer)

The signing domain is the domain of the ``From`` header (or a parent of it
with a key; then the envelope sender's), so that the signature aligns for
DMARC.  Each key adds one ``DKIM-Signature`` (RSA and ed25519 side by side,
RFC 8463 section 3).  Canonicalisation is relaxed/relaxed unless
``canonicalize`` says otherwise; the signed header fields are those of
:attr:`DkimSigner.headers` present in the message, and ``From``, ``To`` and
``Subject`` are over-signed (listed once more than they occur) so that none
can be added later.  Each private key is parsed once, on first use.  A
message with an 8-bit body is signed as is, unless ``encode_7bit`` is set:
then it is re-encoded first, so that a next hop without 8BITMIME does not
force the SMTP client to re-encode (and break) a signed message.

A signing error (bad key, unusable message) leaves the message unsigned and
logs the error (``on_error="unsigned"``, the default), or fails the
delivery attempt with ``451 4.7.0`` so that it is retried
(``on_error="defer"``).  A failed signature never changes the message.

Verification
------------

:class:`AuthResults` is a :class:`~slimta.policy.QueuePolicy` that checks
up to ``max_signatures`` DKIM signatures and the SPF policy of the client
(:func:`slimta.util.spf.check_host`) and records the results in an
``Authentication-Results`` header (RFC 8601) at the top of the message::

    Authentication-Results: mx.example.net;
     dkim=pass header.d=example.com header.s=rsa2026 header.b=Ab12Cd34;
     spf=pass smtp.mailfrom=alice@example.com

``Authentication-Results`` fields that claim to come from our own
``authserv_id`` are removed first (RFC 8601 section 5): only we may write
them.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import binascii
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final

import dkim

from slimta.envelope import EnvelopeError
from slimta.policy import PolicyError, QueuePolicy, RelayPolicy
from slimta.policy._dkimsign import (
    CANONICALIZATIONS,
    PrivateKey,
    field_name,
    field_value,
    hash_body,
    load_private_key,
    sent_body,
    sign,
    split_fields,
)
from slimta.relay import TransientRelayError
from slimta.smtp.reply import Reply
from slimta.util.dns import DNSError, dkim_txt
from slimta.util.spf import check_host

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = ["DEFAULT_HEADERS", "OVERSIGNED", "AuthResults", "DkimError", "DkimKey", "DkimSigner"]

_log = logging.getLogger(__name__)

#: Header fields signed when present (RFC 6376 section 5.4.1's list, trimmed).
DEFAULT_HEADERS: Final = (
    "from", "sender", "reply-to", "subject", "date", "message-id", "to", "cc",
    "mime-version", "content-type", "content-transfer-encoding", "content-id",
    "content-description", "in-reply-to", "references", "list-id", "list-help",
    "list-unsubscribe", "list-subscribe", "list-post", "list-owner", "list-archive",
)  # fmt: skip

#: Header fields signed once more than they occur, so none can be added.
OVERSIGNED: Final = ("from", "to", "subject")

#: Signature fields longer than this are not verified (``permerror``).
MAX_SIGNATURE_BYTES: Final = 8192

_ALGORITHMS: Final = ("rsa-sha256", "ed25519-sha256")
_TAG = re.compile(r"\s*([a-z0-9_]+)\s*=\s*([^;]*)", re.IGNORECASE)


class DkimError(PolicyError):
    """A DKIM key or setting cannot be used."""


@dataclass(frozen=True)
class DkimKey:
    """One signing key of a domain.

    Attributes:
        selector: The selector (``s=``); the public key is published at
            ``<selector>._domainkey.<domain>``.
        private_key: For ``rsa-sha256``, the PEM private key; for
            ``ed25519-sha256``, the base64 of the 32-byte seed (RFC 8463).
        algorithm: ``"rsa-sha256"`` or ``"ed25519-sha256"``.
    """

    selector: str
    private_key: bytes | str
    algorithm: str = "rsa-sha256"

    def __post_init__(self) -> None:
        """Refuse unknown algorithms and empty selectors at once."""
        if self.algorithm not in _ALGORITHMS:
            raise DkimError(
                f"unknown DKIM algorithm {self.algorithm!r} (choose from {', '.join(_ALGORITHMS)})"
            )
        if not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", self.selector):
            raise DkimError(f"invalid DKIM selector {self.selector!r}")

    @property
    def key_bytes(self) -> bytes:
        """The private key as bytes."""
        key = self.private_key
        return key.encode("ascii") if isinstance(key, str) else key

    @cached_property
    def signing_key(self) -> PrivateKey:
        """The parsed private key (a ``cryptography`` key object).

        Parsed on first use and kept; a key that cannot be parsed raises
        again on each use.

        Raises:
            ValueError: The key is unusable for :attr:`algorithm`.

        .. versionadded:: 0.1.0
        """
        return load_private_key(self.algorithm, self.key_bytes)

    def __getstate__(self) -> dict[str, Any]:
        """Pickle without the parsed key (a copy parses it again on first use)."""
        state = dict(self.__dict__)
        state.pop("signing_key", None)
        return state


def _tags(value: str) -> dict[str, str]:
    return {m.group(1).lower(): re.sub(r"\s+", "", m.group(2)) for m in _TAG.finditer(value)}


def _domain_of(address: str | None) -> str | None:
    if not address:
        return None
    _, at, domain = address.rpartition("@")
    return domain.strip().strip(">").lower().rstrip(".") or None if at else None


def _message_parts(envelope: Envelope) -> tuple[bytes, bytes]:
    """The header and body the relay sends, without a leading mbox ``From`` line."""
    header, body = envelope.flatten()
    if header.startswith(b"From "):
        # A field name has no space, so this is the mbox line.
        header = header.split(b"\r\n", 1)[1]
    return header, body


# "Name <local@domain>" or "local@domain" with nothing unusual in them: the
# common From value, read without the stdlib's address parser.
_SIMPLE_FROM = re.compile(
    r"\s*(?:[\w .'-]*<\s*([^\s<>()\[\]\",;:\\@]+@[A-Za-z0-9.-]+)\s*>|([^\s<>()\[\]\",;:\\@]+@[A-Za-z0-9.-]+))\s*"
)


def _author_domain(values: Sequence[str]) -> str | None:
    """The domain of the first address in the ``From`` field values."""
    if len(values) == 1:
        match = _SIMPLE_FROM.fullmatch(values[0])
        if match:
            return _domain_of(match.group(1) or match.group(2))
    authors = getaddresses(values)
    return _domain_of(authors[0][1]) if authors else None


def _message_bytes(envelope: Envelope) -> bytes:
    header, body = _message_parts(envelope)
    return header + body


class DkimSigner(RelayPolicy):
    """Sign each message with the keys of its author's domain.

    Args:
        keys: ``{domain: DkimKey or [DkimKey, ...]}``.
        headers: Header field names to sign when present.
        oversign: Names signed once more than they occur.
        on_error: ``"unsigned"`` (log and deliver unsigned) or ``"defer"``
            (fail the attempt transiently).
        encode_7bit: Re-encode 8-bit bodies to 7-bit before signing.
        canonicalize: ``(header, body)`` canonicalisation, each
            ``"relaxed"`` or ``"simple"`` (``c=``).

    Raises:
        DkimError: A setting is invalid.

    .. versionchanged:: 0.1.0
       Signs with its own RFC 6376 implementation over ``cryptography``
       (dkimpy only verifies); added ``canonicalize``.
    """

    def __init__(
        self,
        keys: Mapping[str, DkimKey | Sequence[DkimKey]],
        headers: Iterable[str] = DEFAULT_HEADERS,
        oversign: Iterable[str] = OVERSIGNED,
        on_error: str = "unsigned",
        encode_7bit: bool = False,
        canonicalize: tuple[str, str] = ("relaxed", "relaxed"),
    ) -> None:
        if on_error not in ("unsigned", "defer"):
            raise DkimError(f"on_error must be 'unsigned' or 'defer', not {on_error!r}")
        canon = tuple(canonicalize)
        if len(canon) != 2 or any(c not in CANONICALIZATIONS for c in canon):
            raise DkimError(
                f"canonicalize must be two of {', '.join(CANONICALIZATIONS)}, not {canonicalize!r}"
            )
        self.canonicalize: tuple[str, str] = (canon[0], canon[1])
        self.keys: dict[str, list[DkimKey]] = {
            domain.lower().rstrip("."): [value] if isinstance(value, DkimKey) else list(value)
            for domain, value in keys.items()
        }
        self.headers = tuple(h.lower() for h in headers)
        self.oversign = tuple(h.lower() for h in oversign)
        if "from" not in self.headers:
            raise DkimError("the From header field must be signed")
        self.on_error = on_error
        self.encode_7bit = encode_7bit

    def signing_domain(self, envelope: Envelope) -> str | None:
        """The domain whose keys sign ``envelope`` (None: no key applies)."""
        values = (envelope.headers.get_all("From") or []) if envelope.headers is not None else []
        return self._key_domain(_author_domain(values), envelope.sender)

    def _key_domain(self, author: str | None, sender: str | None) -> str | None:
        for domain in (author, _domain_of(sender)):
            labels = (domain or "").split(".")
            for i in range(len(labels) - 1):
                name = ".".join(labels[i:])
                if name in self.keys:
                    return name
        return None

    def apply(self, envelope: Envelope) -> None:
        """Add one ``DKIM-Signature`` per key of the signing domain.

        Raises:
            slimta.relay.TransientRelayError: Signing failed and
                ``on_error`` is ``"defer"``.
        """
        # The signer works on the bytes flatten() gives, which costs nothing
        # while the header section is unparsed; only prepending the
        # signatures parses it.
        try:
            header, body = _message_parts(envelope)
        except EnvelopeError as exc:
            domain = self.signing_domain(envelope)
            if domain is not None:
                self._failed(domain, exc)
            return
        fields = split_fields(header)
        lowered = [field_name(f) for f in fields]
        authors = [field_value(f) for f, name in zip(fields, lowered, strict=True) if name == b"from"]
        domain = self._key_domain(_author_domain(authors), envelope.sender)
        if domain is None:
            return
        keys = self.keys[domain]
        try:
            if self.encode_7bit and envelope.has_8bit_body():
                envelope.encode_7bit()
                header, body = _message_parts(envelope)
                fields = split_fields(header)
                lowered = [field_name(f) for f in fields]
            signatures = self._sign(fields, lowered, sent_body(body), domain, keys)
        except (EnvelopeError, ValueError, TypeError, UnicodeError) as exc:
            self._failed(domain, exc)
            return
        if b"dkim-signature" in lowered:
            self._drop_own(envelope, domain, keys)
        for value in reversed(signatures):
            envelope.prepend_header("DKIM-Signature", value)

    def _failed(self, domain: str, exc: Exception) -> None:
        _log.error("DKIM signing for %s failed: %s", domain, exc)
        if self.on_error == "defer":
            text = f"4.7.0 DKIM signing for {domain} failed"
            raise TransientRelayError(text, Reply("451", text, command="[DKIM]")) from None

    def _sign(
        self, fields: list[bytes], lowered: list[bytes], body: bytes, domain: str, keys: list[DkimKey]
    ) -> list[str]:
        # The h= list: each signable field present, then the over-signed names.
        present = [name.decode("ascii") for name in lowered]
        names = [name for name in present if name in self.headers]
        names += [name for name in self.oversign if name in self.headers]
        body_hash = hash_body(body, self.canonicalize[1])
        return [
            sign(
                fields,
                body,
                key=key.signing_key,
                algorithm=key.algorithm,
                domain=domain,
                selector=key.selector,
                names=names,
                canonicalize=self.canonicalize,
                lowered=lowered,
                body_hash=body_hash,
            )
            for key in keys
        ]

    @staticmethod
    def _drop_own(envelope: Envelope, domain: str, keys: list[DkimKey]) -> None:
        """Remove signatures this signer made on an earlier attempt (same d= and s=)."""
        headers = envelope.headers
        if headers is None:
            return
        selectors = {key.selector.lower() for key in keys}
        kept = []
        for name, value in headers._headers:  # type: ignore[attr-defined]
            if name.lower() == "dkim-signature":
                tags = _tags(str(value))
                if tags.get("d", "").lower() == domain and tags.get("s", "").lower() in selectors:
                    continue
            kept.append((name, value))
        headers._headers = kept  # type: ignore[attr-defined]


class AuthResults(QueuePolicy):
    """Verify DKIM signatures and SPF; prepend ``Authentication-Results``.

    Args:
        authserv_id: Our name in the header (usually the host name).
        dkim_check: Verify DKIM signatures.
        spf_check: Evaluate SPF for the client (``envelope.client['ip']``,
            the sender, ``envelope.client['name']`` as HELO).
        timeout: Seconds for each key lookup and for the SPF check.
        minkey: Smallest RSA key accepted, in bits.
        max_signatures: Signatures verified at most; more are ignored.
    """

    def __init__(
        self,
        authserv_id: str,
        dkim_check: bool = True,
        spf_check: bool = True,
        timeout: float = 10.0,
        minkey: int = 1024,
        max_signatures: int = 5,
    ) -> None:
        self.authserv_id = authserv_id
        self.dkim_check = dkim_check
        self.spf_check = spf_check
        self.timeout = timeout
        self.minkey = minkey
        self.max_signatures = max_signatures

    def apply(self, envelope: Envelope) -> None:
        """Check the message and record the results at the top of its header."""
        results: list[str] = []
        if self.dkim_check:
            results.extend(self.verify_dkim(envelope))
        if self.spf_check:
            results.append(self.check_spf(envelope))
        self._drop_forged(envelope)
        body = ";\r\n ".join(results) if results else "none"
        envelope.prepend_header("Authentication-Results", f"{self.authserv_id};\r\n {body}")

    def verify_dkim(self, envelope: Envelope) -> list[str]:
        """One ``dkim=`` result per signature (``dkim=none`` without any)."""
        if envelope.headers is None:
            return ["dkim=none"]
        signatures = [str(v) for v in envelope.headers.get_all("DKIM-Signature") or []]
        if not signatures:
            return ["dkim=none"]
        message = _message_bytes(envelope)
        return [self._verify_one(message, i, sig) for i, sig in enumerate(signatures[: self.max_signatures])]

    def _verify_one(self, message: bytes, index: int, signature: str) -> str:
        tags = _tags(signature)
        props = f" header.d={tags.get('d', '')} header.s={tags.get('s', '')} header.b={tags.get('b', '')[:8]}"
        if len(signature) > MAX_SIGNATURE_BYTES:
            return f"dkim=permerror (signature too large){props}"
        verifier = dkim.DKIM(message, minkey=self.minkey, timeout=self.timeout)
        try:
            # The key is fetched here, not inside dkimpy, which reports a
            # missing or malformed key as a plain "fail": RFC 8601 calls
            # those permerror, and a DNS failure temperror.
            record = dkim_txt(f"{tags.get('s', '')}._domainkey.{tags.get('d', '')}", self.timeout)
            dkim.evaluate_pk(b"key", record)
            ok = verifier.verify(idx=index, dnsfunc=lambda *_args, **_kwargs: record)
        except DNSError as exc:
            return f"dkim=temperror ({_comment(str(exc))}){props}"
        except binascii.Error:
            return f"dkim=permerror (malformed key){props}"
        except dkim.DnsTimeoutError:
            return f"dkim=temperror (key lookup timed out){props}"
        except dkim.DKIMException as exc:
            text = str(exc)
            if text.startswith("body hash mismatch"):
                # The signature is well formed; the body was changed.
                return f"dkim=fail (body hash mismatch){props}"
            return f"dkim=permerror ({_comment(text)}){props}"
        except (ValueError, TypeError, IndexError) as exc:
            return f"dkim=permerror ({_comment(type(exc).__name__)}){props}"
        return f"dkim={'pass' if ok else 'fail'}{props}"

    def check_spf(self, envelope: Envelope) -> str:
        """The ``spf=`` result for the client and envelope sender."""
        ip = envelope.client.get("ip")
        helo = envelope.client.get("name")
        sender = envelope.sender or ""
        if not ip:
            return "spf=none (no client address)"
        if sender:
            domain = _domain_of(sender) or ""
            prop = f"smtp.mailfrom={_prop(sender)}"
        else:
            domain = str(helo or "")
            prop = f"smtp.helo={_prop(domain)}"
        result, _ = check_host(str(ip), domain, sender or f"postmaster@{domain}", helo, self.timeout)
        return f"spf={result} {prop}"

    def _drop_forged(self, envelope: Envelope) -> None:
        headers = envelope.headers
        if headers is None:
            return
        ours = self.authserv_id.lower()
        kept: list[Any] = []
        for name, value in headers._headers:  # type: ignore[attr-defined]
            if name.lower() == "authentication-results":
                server = str(value).split(";", 1)[0].strip().split()
                if server and server[0].lower() == ours:
                    continue
            kept.append((name, value))
        headers._headers = kept  # type: ignore[attr-defined]


def _comment(text: str) -> str:
    return re.sub(r"[()\\\r\n]", " ", text)[:100].strip()


def _prop(value: str) -> str:
    # A pvalue with characters outside RFC 8601's grammar is quoted.
    return value if re.fullmatch(r"[\w.@+=/-]+", value) else '"' + value.replace('"', "") + '"'
