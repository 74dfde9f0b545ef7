"""DKIM signing through a real relay and sink, verified independently; Authentication-Results."""

from __future__ import annotations

import base64
import logging
import re
import shutil
import subprocess
from typing import Any

import dkim
import gevent
import nacl.signing
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from slimta.envelope import Envelope
from slimta.policy.dkim import AuthResults, DkimError, DkimKey, DkimSigner
from slimta.relay import TransientRelayError
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.util.dns import dkim_txt
from tests.integration.dns.server import SERVFAIL
from tests.integration.relay.conftest import EHLO_DEFAULT, ScriptedServer, smtp_dialogue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(20)]

MESSAGE = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@dest.test\r\n"
    b"Subject: quarterly figures\r\n"
    b"Date: Mon, 05 Jan 2026 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob,\r\n"
    b".leading dot survives dot-stuffing\r\n"
    b"   spaces  and\ttabs \r\n"
) + b"line of text\r\n" * 500


@pytest.fixture(scope="module")
def rsa_key() -> tuple[bytes, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return pem, "v=DKIM1; k=rsa; p=" + base64.b64encode(spki).decode()


@pytest.fixture(scope="module")
def ed_key() -> tuple[str, str]:
    key = nacl.signing.SigningKey.generate()
    seed = base64.b64encode(bytes(key)).decode()
    return seed, "v=DKIM1; k=ed25519; p=" + base64.b64encode(bytes(key.verify_key)).decode()


def publish(dns: Any, selector: str, record: str, domain: str = "example.test") -> None:
    chunks = tuple(record[i : i + 250] for i in range(0, len(record), 250))
    dns.zone[(f"{selector}._domainkey.{domain}", "TXT")] = [chunks]


def envelope(data: bytes = MESSAGE) -> Envelope:
    env = Envelope("alice@example.test", ["bob@dest.test"])
    env.parse(data)
    return env


def relay_through_sink(signer: DkimSigner, env: Envelope, sink: Any = None) -> bytes:
    """Relay ``env`` with ``signer`` to ``sink`` (aiosmtpd) or a scripted server; the bytes received."""
    scripted = ScriptedServer(lambda conn: smtp_dialogue(conn)) if sink is None else None
    address = sink.address if sink is not None else scripted.address  # type: ignore[union-attr]
    relay = StaticSmtpRelay(*address, connect_timeout=3, command_timeout=3, ehlo_as="client.test")
    relay.add_policy(signer)
    try:
        with gevent.Timeout(10):
            relay._attempt(env, 0)
    finally:
        relay.kill()
        if scripted is not None:
            scripted.stop()
    if sink is not None:
        return sink.wait_for(1)[0].split(b"\n", 1)[1]
    assert len(scripted.messages) == 1  # type: ignore[union-attr]
    # The scripted server keeps the data as sent: undo the dot-stuffing.
    return re.sub(rb"(?m)^\.\.", b".", scripted.messages[0])  # type: ignore[union-attr]


def test_rsa_and_ed25519_signatures_verify_after_delivery(
    secure_dns: Any, rsa_key: tuple[bytes, str], ed_key: tuple[str, str], aiosmtpd_server: Any
) -> None:
    publish(secure_dns, "rsa1", rsa_key[1])
    publish(secure_dns, "ed1", ed_key[1])
    signer = DkimSigner(
        {"example.test": [DkimKey("rsa1", rsa_key[0]), DkimKey("ed1", ed_key[0], "ed25519-sha256")]}
    )
    received = relay_through_sink(signer, envelope(), aiosmtpd_server)
    assert received.count(b"DKIM-Signature:") == 2
    assert received.endswith(MESSAGE.split(b"\r\n\r\n", 1)[1])  # body unchanged
    # dkimpy, independently of our code, checks both signatures.
    assert dkim.verify(received, dnsfunc=dkim_txt)
    checker = dkim.DKIM(received)
    assert checker.verify(idx=0, dnsfunc=dkim_txt)
    assert checker.verify(idx=1, dnsfunc=dkim_txt)
    first = envelope(received).headers.get_all("DKIM-Signature")[0]  # type: ignore[union-attr]
    assert "a=rsa-sha256" in first
    assert "c=relaxed/relaxed" in first
    assert "h=from : to : subject : date : message-id : from : to : subject" in " ".join(first.split())


def test_over_signing_stops_added_headers(secure_dns: Any, rsa_key: tuple[bytes, str]) -> None:
    publish(secure_dns, "rsa1", rsa_key[1])
    received = relay_through_sink(DkimSigner({"example.test": DkimKey("rsa1", rsa_key[0])}), envelope())
    assert dkim.verify(received, dnsfunc=dkim_txt)
    head, body = received.split(b"\r\n\r\n", 1)
    for added in (b"Subject: cheap pills", b"From: ceo@example.test", b"To: victim@dest.test"):
        assert not dkim.verify(head + b"\r\n" + added + b"\r\n\r\n" + body, dnsfunc=dkim_txt)


def test_retry_replaces_its_own_signature(secure_dns: Any, rsa_key: tuple[bytes, str]) -> None:
    publish(secure_dns, "rsa1", rsa_key[1])
    signer = DkimSigner({"example.test": DkimKey("rsa1", rsa_key[0])})
    env = envelope()
    signer.apply(env)
    signer.apply(env)  # a second attempt with the same envelope object
    assert len(env.headers.get_all("DKIM-Signature") or []) == 1  # type: ignore[union-attr]


def test_no_key_for_the_domain_leaves_the_message_alone(rsa_key: tuple[bytes, str]) -> None:
    env = envelope(MESSAGE.replace(b"alice@example.test", b"alice@other.test"))
    env.sender = "alice@other.test"
    before = env.flatten()
    DkimSigner({"example.test": DkimKey("rsa1", rsa_key[0])}).apply(env)
    assert env.flatten() == before


def test_subdomain_author_uses_the_parent_key(rsa_key: tuple[bytes, str]) -> None:
    signer = DkimSigner({"example.test": DkimKey("rsa1", rsa_key[0])})
    env = envelope(MESSAGE.replace(b"alice@example.test", b"alice@eu.example.test"))
    assert signer.signing_domain(env) == "example.test"


def test_signing_error_unsigned_or_deferred(caplog: pytest.LogCaptureFixture) -> None:
    bad = {
        "example.test": DkimKey(
            "rsa1", b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n"
        )
    }
    env = envelope()
    before = env.flatten()
    with caplog.at_level(logging.ERROR, logger="slimta.policy.dkim"):
        DkimSigner(bad).apply(env)
    assert env.flatten() == before
    assert "DKIM signing for example.test failed" in caplog.text
    with pytest.raises(TransientRelayError) as info:
        DkimSigner(bad, on_error="defer").apply(env)
    assert info.value.reply.code == "451"
    assert info.value.reply.message.startswith("4.7.0 DKIM signing")
    assert env.flatten() == before
    bad_ed = {"example.test": DkimKey("ed1", "c2hvcnQ=", "ed25519-sha256")}
    with pytest.raises(TransientRelayError):
        DkimSigner(bad_ed, on_error="defer").apply(env)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        ({"keys": {"a.test": DkimKey.__new__(DkimKey)}, "on_error": "drop"}, "on_error"),
        ({"keys": {}, "headers": ("to",)}, "From header"),
    ],
)
def test_bad_signer_settings(args: dict[str, Any], error: str) -> None:
    with pytest.raises(DkimError, match=error):
        DkimSigner(**args)


def test_bad_key_settings() -> None:
    with pytest.raises(DkimError, match="algorithm"):
        DkimKey("s1", b"x", "rsa-sha1")
    with pytest.raises(DkimError, match="selector"):
        DkimKey("bad selector", b"x")


def test_8bit_body_reencoded_before_signing(secure_dns: Any, rsa_key: tuple[bytes, str]) -> None:
    publish(secure_dns, "rsa1", rsa_key[1])
    data = MESSAGE.replace(b"Hello Bob", "Grüße Bob".encode()).replace(
        b"Message-ID", b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nMessage-ID"
    )
    env = envelope(data)
    received = relay_through_sink(
        DkimSigner({"example.test": DkimKey("rsa1", rsa_key[0])}, encode_7bit=True), env
    )
    assert received.isascii()
    assert dkim.verify(received, dnsfunc=dkim_txt)


# -- verification and Authentication-Results -------------------------------------------


def received_envelope(data: bytes, ip: str = "192.0.2.7") -> Envelope:
    env = envelope(data)
    env.client.update(ip=ip, name="client.example.test")
    return env


def results(env: Envelope) -> str:
    AuthResults("mx.dest.test", timeout=2).apply(env)
    assert env.headers is not None
    return " ".join(str(env.headers.get_all("Authentication-Results")[0]).split())


def test_results_pass_fail_and_spf(secure_dns: Any, rsa_key: tuple[bytes, str]) -> None:
    publish(secure_dns, "rsa1", rsa_key[1])
    secure_dns.zone[("example.test", "TXT")] = ["v=spf1 ip4:192.0.2.0/24 -all"]
    signed = relay_through_sink(DkimSigner({"example.test": DkimKey("rsa1", rsa_key[0])}), envelope())
    text = results(received_envelope(signed))
    assert text.startswith("mx.dest.test; dkim=pass header.d=example.test header.s=rsa1 header.b=")
    assert text.endswith("spf=pass smtp.mailfrom=alice@example.test")
    tampered = signed.replace(b"Hello Bob", b"Hello Eve")
    assert "dkim=fail (body hash mismatch) header.d=example.test" in results(
        received_envelope(tampered, ip="198.51.100.1")
    )
    assert "spf=fail" in results(received_envelope(tampered, ip="198.51.100.1"))


def test_results_none_temperror_permerror(secure_dns: Any, rsa_key: tuple[bytes, str]) -> None:
    secure_dns.zone[("example.test", "TXT")] = ["v=spf1 -all"]
    assert "dkim=none" in results(received_envelope(MESSAGE))
    signed = relay_through_sink(DkimSigner({"example.test": DkimKey("rsa1", rsa_key[0])}), envelope())
    secure_dns.zone[("rsa1._domainkey.example.test", "TXT")] = SERVFAIL
    assert "dkim=temperror" in results(received_envelope(signed))
    secure_dns.zone[("rsa1._domainkey.example.test", "TXT")] = ["v=DKIM1; k=rsa; p=bm90IGEga2V5"]
    assert "dkim=permerror" in results(received_envelope(signed))
    del secure_dns.zone[("rsa1._domainkey.example.test", "TXT")]
    secure_dns.zone[("other._domainkey.example.test", "TXT")] = ["x"]
    assert "dkim=permerror" in results(received_envelope(signed))  # no key: RFC 6376 PERMFAIL


def test_oversized_and_malformed_signatures(secure_dns: Any) -> None:
    huge = b"DKIM-Signature: v=1; a=rsa-sha256; d=example.test; s=x; b=" + b"A" * 20000 + b"\r\n"
    text = results(received_envelope(huge + MESSAGE))
    assert "dkim=permerror (signature too large) header.d=example.test" in text
    broken = b"DKIM-Signature: this is not a signature\r\n"
    assert "dkim=permerror" in results(received_envelope(broken + MESSAGE))


def test_forged_results_for_our_name_are_removed(secure_dns: Any) -> None:
    forged = b"Authentication-Results: mx.dest.test; dkim=pass header.d=bank.test\r\n"
    other = b"Authentication-Results: elsewhere.test; spf=pass\r\n"
    env = received_envelope(forged + other + MESSAGE)
    results(env)
    values = [str(v) for v in env.headers.get_all("Authentication-Results")]  # type: ignore[union-attr]
    assert len(values) == 2
    assert "bank.test" not in values[0]
    assert values[1].startswith("elsewhere.test")


@pytest.mark.skipif(shutil.which("opendkim-testmsg") is None, reason="opendkim-tools not installed")
def test_opendkim_signature_passes_our_verifier(
    secure_dns: Any, rsa_key: tuple[bytes, str], tmp_path: Any
) -> None:
    publish(secure_dns, "odk", rsa_key[1])
    keyfile = tmp_path / "key.pem"
    keyfile.write_bytes(rsa_key[0])
    proc = subprocess.run(
        ["opendkim-testmsg", "-C", "-d", "example.test", "-s", "odk", "-k", str(keyfile)],
        input=MESSAGE.replace(b"\r\n", b"\n"),
        capture_output=True,
        timeout=10,
        check=True,
    )
    env = received_envelope(proc.stdout)
    assert "dkim=pass header.d=example.test header.s=odk" in results(env)


@pytest.mark.parametrize("chunking", [False, True], ids=["DATA", "BDAT"])
@pytest.mark.parametrize("algorithm", ["rsa-sha256", "ed25519-sha256"])
def test_body_without_final_crlf_verifies_over_data_and_bdat(
    secure_dns: Any, rsa_key: tuple[bytes, str], ed_key: tuple[str, str], chunking: bool, algorithm: str
) -> None:
    # DATA adds the final CRLF the body lacks; BDAT sends the body as it is.
    # The signer makes the message end in CRLF, so the receiver gets exactly
    # the signed bytes either way (a trailing space on the last line used to
    # break relaxed verification over BDAT).
    key, record = (rsa_key[0], rsa_key[1]) if algorithm == "rsa-sha256" else (ed_key[0], ed_key[1])
    publish(secure_dns, "k1", record)
    signer = DkimSigner({"example.test": DkimKey("k1", key, algorithm)})
    data = MESSAGE.split(b"\r\n\r\n", 1)[0] + b"\r\n\r\nfirst line\r\nlast line, trailing space  "
    ehlo = EHLO_CHUNKING if chunking else EHLO_DEFAULT
    scripted = ScriptedServer(lambda conn: smtp_dialogue(conn, ehlo=ehlo))
    relay = StaticSmtpRelay(*scripted.address, connect_timeout=3, command_timeout=3, ehlo_as="client.test")
    relay.add_policy(signer)
    try:
        with gevent.Timeout(10):
            relay._attempt(envelope(data), 0)
    finally:
        relay.kill()
        scripted.stop()
    assert len(scripted.messages) == 1
    received = scripted.messages[0]
    assert verbs_sent(scripted) == ([b"BDAT"] if chunking else [b"DATA"])
    assert received.endswith(b"last line, trailing space  \r\n")
    assert dkim.verify(received, dnsfunc=dkim_txt)


EHLO_CHUNKING = b"250-scripted.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 CHUNKING\r\n"


def verbs_sent(server: ScriptedServer) -> list[bytes]:
    verbs = (line.split(b" ", 1)[0].upper() for line in server.lines)
    return [verb for verb in verbs if verb in (b"DATA", b"BDAT")]
