"""Our DKIM signer (slimta.policy._dkimsign) against dkimpy, sans-IO.

dkimpy is an independent implementation: every signature we make must pass
its ``verify`` (the public key is handed over by ``dnsfunc``, no DNS), and
our canonicalisation must give the bytes of ``dkim.canonicalization``.
OpenDKIM checks the same signatures in
``tests/integration/trust/test_dkim_opendkim.py``.
"""

from __future__ import annotations

import base64
import pickle
import re
from collections.abc import Callable
from email.utils import getaddresses

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from dkim.canonicalization import ALGORITHMS
from hypothesis import given, settings
from hypothesis import strategies as st

from slimta.envelope import Envelope
from slimta.policy import _dkimsign
from slimta.policy.dkim import DkimError, DkimKey, DkimSigner, _author_domain, _domain_of
from slimta.smtp._clientcore import dot_stuff

pytestmark = pytest.mark.timeout(60)

CANONS = [("relaxed", "relaxed"), ("simple", "simple"), ("relaxed", "simple"), ("simple", "relaxed")]

HEAD = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@dest.test\r\n"
    b"Subject: figures\r\n"
    b"Date: Mon, 05 Jan 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
)

#: name -> whole message; each a case RFC 6376 section 3.4 treats specially.
CORPUS: dict[str, bytes] = {
    "plain": HEAD + b"\r\nHello Bob,\r\nline two\r\n",
    "trailing-wsp": HEAD + b"\r\nHello \t \r\n  indented\tand\t\ttabs  \r\nend\t\r\n",
    "empty-lines-at-end": HEAD + b"\r\nbody\r\n\r\n\r\n \r\n\t\r\n\r\n",
    "empty-body": HEAD + b"\r\n",
    "only-empty-lines": HEAD + b"\r\n\r\n\r\n\r\n",
    "no-final-crlf": HEAD + b"\r\nlast line without CRLF",
    "no-final-crlf-wsp": HEAD + b"\r\nlast line with WSP  \t",
    "bare-cr": HEAD + b"\r\nbare\rcarriage return\r\n",
    "leading-dots": HEAD + b"\r\n.one dot\r\n..two dots\r\n.\r\n",
    "folded-headers": (
        b"From: Alice <alice@example.test>\r\n"
        b"To: bob@dest.test,\r\n\tcarol@dest.test,  \r\n    dave@dest.test\r\n"
        b"Subject: a very long subject that goes on and on and on and on and on and on\r\n"
        b"  and is folded\t twice\r\n\tin odd   ways  \r\n"
        b"\r\nbody\r\n"
    ),
    "8bit-headers": (
        "From: Jörg <jorg@example.test>\r\nTo: bob@dest.test\r\nSubject: Grüße aus Köln\r\n\r\nbody\r\n"
    ).encode(),
    "repeated-headers": (
        b"From: Alice <alice@example.test>\r\n"
        b"To: first@dest.test\r\n"
        b"Subject: one\r\n"
        b"To: second@dest.test\r\n"
        b"Cc: a@dest.test\r\n"
        b"Cc: b@dest.test\r\n"
        b"\r\nbody\r\n"
    ),
    "upper-case-names": b"FROM: alice@example.test\r\nSUBJECT:no space\r\nTO:bob@dest.test\r\n\r\nx\r\n",
    "big": HEAD + b"\r\n" + b"The quick brown fox  jumps\tover the lazy dog. \r\n" * 400,
}


@pytest.fixture(scope="module")
def keys() -> dict[str, tuple[DkimKey, bytes]]:
    """Per algorithm: a signing key and its DNS record."""
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = rsa_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    spki = rsa_key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed_key = ed25519.Ed25519PrivateKey.generate()
    seed = base64.b64encode(ed_key.private_bytes_raw()).decode()
    return {
        "rsa-sha256": (DkimKey("rsa1", pem), b"v=DKIM1; k=rsa; p=" + base64.b64encode(spki)),
        "ed25519-sha256": (
            DkimKey("ed1", seed, "ed25519-sha256"),
            b"v=DKIM1; k=ed25519; p=" + base64.b64encode(ed_key.public_key().public_bytes_raw()),
        ),
    }


def dnsfunc(records: dict[str, bytes]) -> Callable[..., bytes]:
    def lookup(name: bytes, timeout: float = 5) -> bytes:
        return records.get(name.decode().rstrip("."), b"")

    return lookup


def signed(data: bytes, signer: DkimSigner) -> bytes:
    """The message as the receiver gets it after DATA (dot-stuffing undone)."""
    env = Envelope("alice@example.test", ["bob@dest.test"])
    env.parse(data)
    signer.apply(env)
    header, body = env.flatten()
    sent = dot_stuff(header, body)[: -len(b".\r\n")]
    return re.sub(rb"(?m)^\.\.", b".", sent)


def verify(message: bytes, records: dict[str, bytes], index: int = 0) -> bool:
    try:
        return bool(dkim.DKIM(message).verify(idx=index, dnsfunc=dnsfunc(records)))
    except dkim.ValidationError:  # e.g. "body hash mismatch"
        return False


@pytest.mark.parametrize("canon", CANONS, ids="/".join)
@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_dkimpy_verifies_every_case(
    keys: dict[str, tuple[DkimKey, bytes]], algorithm: str, canon: tuple[str, str]
) -> None:
    key, record = keys[algorithm]
    records = {f"{key.selector}._domainkey.example.test": record}
    signer = DkimSigner({"example.test": key}, canonicalize=canon)
    for name, data in CORPUS.items():
        message = signed(data, signer)
        assert message.startswith(b"DKIM-Signature: "), name
        assert f"c={canon[0]}/{canon[1]};".encode() in message, name
        assert verify(message, records), name
        # And the signature covers what it should: a changed body fails.
        head, _, body = message.partition(b"\r\n\r\n")
        assert not verify(head + b"\r\n\r\n" + body + b"tampered\r\n", records), name


def test_rsa_and_ed25519_side_by_side(keys: dict[str, tuple[DkimKey, bytes]]) -> None:
    (rsa_key, rsa_rec), (ed_key, ed_rec) = keys["rsa-sha256"], keys["ed25519-sha256"]
    records = {"rsa1._domainkey.example.test": rsa_rec, "ed1._domainkey.example.test": ed_rec}
    message = signed(CORPUS["big"], DkimSigner({"example.test": [rsa_key, ed_key]}))
    assert message.count(b"DKIM-Signature:") == 2
    assert verify(message, records, 0)
    assert verify(message, records, 1)
    sigs = [
        _dkimsign.field_value(f) for f in _dkimsign.split_fields(message.partition(b"\r\n\r\n")[0] + b"\r\n")
    ]
    # One body hash for both keys.
    assert re.search(r"bh=(\S+);", sigs[0]).group(1) == re.search(r"bh=(\S+);", sigs[1]).group(1)  # type: ignore[union-attr]


def test_signature_field_is_folded_and_canonicalisation_safe(keys: dict[str, tuple[DkimKey, bytes]]) -> None:
    key, record = keys["rsa-sha256"]
    records = {"rsa1._domainkey.example.test": record}
    message = signed(CORPUS["plain"], DkimSigner({"example.test": key}, canonicalize=("simple", "simple")))
    field = _dkimsign.split_fields(message.partition(b"\r\n\r\n")[0] + b"\r\n")[0]
    lines = field.split(b"\r\n")[:-1]
    assert len(lines) > 3
    assert all(len(line) <= 78 for line in lines)
    assert all(line[:1] == b" " for line in lines[1:])
    assert any(line.startswith(b" b=") for line in lines)
    # Relaxed header canonicalisation of the folded field equals that of the unfolded one.
    unfolded = field.replace(b"\r\n ", b" ")
    assert _dkimsign.canon_header(field, "relaxed") == _dkimsign.canon_header(unfolded, "relaxed")
    assert verify(message, records)


def test_repeated_headers_bottom_up_and_over_signed(keys: dict[str, tuple[DkimKey, bytes]]) -> None:
    key, record = keys["ed25519-sha256"]
    records = {"ed1._domainkey.example.test": record}
    message = signed(CORPUS["repeated-headers"], DkimSigner({"example.test": key}))
    head, _, body = message.partition(b"\r\n\r\n")
    sig = _dkimsign.field_value(_dkimsign.split_fields(head + b"\r\n")[0])
    assert " ".join(sig.split()).count("h=from : to : subject : to : cc : cc : from : to : subject;") == 1
    assert verify(message, records)
    # Over-signing: another To, From or Subject anywhere breaks the signature.
    for added in (b"To: eve@evil.test", b"From: ceo@example.test", b"Subject: urgent"):
        assert not verify(head + b"\r\n" + added + b"\r\n\r\n" + body, records), added
    # Bottom-up selection (RFC 6376 5.4.2): swapping the two To fields breaks it.
    swapped = head.replace(b"first@dest.test", b"TMP").replace(b"second@dest.test", b"first@dest.test")
    swapped = swapped.replace(b"TMP", b"second@dest.test")
    assert not verify(swapped + b"\r\n\r\n" + body, records)


def test_select_fields_bottom_up() -> None:
    fields = [b"From: a\r\n", b"To: 1\r\n", b"Subject: s\r\n", b"to: 2\r\n"]
    names = ["from", "to", "to", "to", "subject", "cc"]
    chosen = _dkimsign.select_fields(fields, names)
    assert chosen == [b"From: a\r\n", b"to: 2\r\n", b"To: 1\r\n", b"Subject: s\r\n"]
    pairs = [tuple(f.split(b":", 1)) for f in fields]
    reference = dkim.select_headers(pairs, [n.encode() for n in names])
    assert chosen == [name + b":" + value for name, value in reference]


def test_split_fields() -> None:
    header = b"A: 1\r\nB: two\r\n  folded\r\n\tagain\r\nC:\r\n\r\n"
    assert _dkimsign.split_fields(header) == [b"A: 1\r\n", b"B: two\r\n  folded\r\n\tagain\r\n", b"C:\r\n"]
    assert _dkimsign.split_fields(b"\r\n") == []
    assert _dkimsign.split_fields(b"") == []


def test_signing_key_parsed_once(
    keys: dict[str, tuple[DkimKey, bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    key = DkimKey("rsa9", keys["rsa-sha256"][0].private_key)
    calls = []
    real = _dkimsign.load_private_key

    def counting(algorithm: str, data: bytes) -> _dkimsign.PrivateKey:
        calls.append(algorithm)
        return real(algorithm, data)

    monkeypatch.setattr("slimta.policy.dkim.load_private_key", counting)
    signer = DkimSigner({"example.test": key})
    for _ in range(3):
        signed(CORPUS["plain"], signer)
    assert calls == ["rsa-sha256"]


def test_used_key_still_pickles(keys: dict[str, tuple[DkimKey, bytes]]) -> None:
    key = keys["ed25519-sha256"][0]
    assert key.signing_key is key.signing_key
    copied = pickle.loads(pickle.dumps(key))
    assert copied == key
    assert "signing_key" not in vars(copied)
    assert copied.signing_key.public_key() == key.signing_key.public_key()


@pytest.mark.parametrize(
    ("algorithm", "data", "error"),
    [
        ("rsa-sha256", b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n", "unusable"),
        ("ed25519-sha256", b"c2hvcnQ=", "32 bytes"),
        ("ed25519-sha256", b"not base64!", "unusable"),
    ],
)
def test_bad_keys(algorithm: str, data: bytes, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        _dkimsign.load_private_key(algorithm, data)


def test_ed25519_key_for_rsa_is_refused() -> None:
    pem = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="must be an RSA key"):
        _dkimsign.load_private_key("rsa-sha256", pem)


def test_bad_canonicalize_setting() -> None:
    with pytest.raises(DkimError, match="canonicalize"):
        DkimSigner({}, canonicalize=("relaxed", "nofws"))
    with pytest.raises(DkimError, match="canonicalize"):
        DkimSigner({}, canonicalize=("relaxed",))  # type: ignore[arg-type]


# -- canonicalisation against dkim.canonicalization ---------------------------


BODIES = [
    b"",
    b"\r\n",
    b"\r\n\r\n\r\n",
    b"a",
    b"a  ",
    b"a\r\n",
    b"a \t \r\n",
    b" \t\r\n",
    b"a\r\n\r\n",
    b"a\r\n \r\n\r\n",
    b"\ta  b\t\tc \r\n\r\nd\r\n",
    b"x\r\n\r\n\r\ny",
    b"\r\n\r\nx",
    b"tab\tonly\r\n",
    b"bare\rcr\r\n\r\r\n",
    "8 bit: Grüße \r\n".encode(),
    b"The quick brown fox  jumps\tover the lazy dog. \r\n" * 300 + b"\r\n" * 50,
]

FIELDS = [
    b"Subject: plain\r\n",
    b"Subject:  two  spaces \t \r\n",
    b"SUBJECT \t: name with WSP\r\n",
    b"To: a,\r\n\tb,\r\n  c  \r\n",
    b"X-Empty:\r\n",
    b"X-Empty-Folded:\r\n \r\n",
    b"X-Tabs:\t\ta\t\tb\t\r\n",
    "Subject: Grüße  aus\tKöln\r\n".encode(),
    b"X-Odd: form\x0cfeed \x0b\r\n",
]


def dkimpy_header(field: bytes, method: str) -> bytes:
    name, _, value = field.partition(b":")  # as dkim.rfc822_parse splits a field
    ((cname, cvalue),) = ALGORITHMS[method.encode()].canonicalize_headers([(name, value)])
    return bytes(cname) + b":" + bytes(cvalue)


@pytest.mark.parametrize("method", ["relaxed", "simple"])
def test_body_canonicalisation_matches_dkimpy(method: str) -> None:
    for body in BODIES:
        assert _dkimsign.canon_body(body, method) == ALGORITHMS[method.encode()].canonicalize_body(body), body


@pytest.mark.parametrize("method", ["relaxed", "simple"])
def test_header_canonicalisation_matches_dkimpy(method: str) -> None:
    for field in FIELDS:
        assert _dkimsign.canon_header(field, method) == dkimpy_header(field, method), field


_TEXT = st.lists(st.sampled_from([b"a", b"b", b" ", b"\t", b"\r\n", b"  ", b"\xc3\xa9"]), max_size=40).map(
    b"".join
)


@settings(max_examples=300, deadline=None)
@given(body=_TEXT)
def test_body_canonicalisation_property(body: bytes) -> None:
    for method in ("relaxed", "simple"):
        assert _dkimsign.canon_body(body, method) == ALGORITHMS[method.encode()].canonicalize_body(body)


@settings(max_examples=300, deadline=None)
@given(
    value=_TEXT.filter(lambda v: not v.startswith(b"\r\n")).map(
        lambda v: re.sub(rb"\r\n(?![ \t])", b"\r\n ", v)
    )
)
def test_header_canonicalisation_property(value: bytes) -> None:
    field = b"X-Test:" + value + b"\r\n"
    for method in ("relaxed", "simple"):
        assert _dkimsign.canon_header(field, method) == dkimpy_header(field, method)


def test_sent_body_is_what_dot_stuff_sends() -> None:
    for body in (b"", b"a", b"a\r\n", b"a\rb\r\n", b"x  \t", b"\r\n\r\n"):
        expected = dot_stuff(body)[: -len(b".\r\n")] if body else b""
        assert _dkimsign.sent_body(body) == expected, body


@pytest.mark.parametrize(
    "value",
    [
        "alice@example.test",
        "Alice <alice@example.test>",
        "  Dr. O'Neil-Smith  <alice@Sub.Example.TEST.>  ",
        "<alice@example.test>",
        '"Smith, Alice" <alice@example.test>',
        "alice@example.test (Alice)",
        "Jörg <jorg@example.test>",
        "a@one.test, b@two.test",
        "undisclosed:;",
        "",
    ],
)
def test_author_domain_matches_the_stdlib_parser(value: str) -> None:
    authors = getaddresses([value])
    expected = _domain_of(authors[0][1]) if authors else None
    assert _author_domain([value]) == expected
