"""Unit tests for slimta.smtp.auth: SASL mechanisms, credentials, client choice."""

from __future__ import annotations

import base64
import dataclasses
import logging
import re

import pytest
from passlib import hash as passlib_hash

from slimta.smtp import SmtpError
from slimta.smtp.auth import (
    HASH_SCHEMES,
    INSECURE_MECHANISMS,
    MAX_RESPONSE_OCTETS,
    SERVER_MECHANISMS,
    AuthCredentials,
    AuthError,
    AuthStep,
    Challenge,
    ClientMechanism,
    Failure,
    ServerMechanism,
    Success,
    UnknownMechanism,
    choose_client_mechanism,
    client_mechanism,
    server_mechanism,
)

MECHANISMS = ["PLAIN", "LOGIN", "CRAM-MD5"]


def b64(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode("utf-8")
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def run_exchange(client: ClientMechanism, server: ServerMechanism, max_rounds: int = 5) -> AuthStep:
    """Drive one exchange in memory, the way the SMTP client and server would."""
    step = server.start(client.initial_response())
    for _ in range(max_rounds):
        if not isinstance(step, Challenge):
            return step
        step = server.respond(client.respond(step.text))
    raise AssertionError("exchange did not finish")


def creds_for(mechanism: str, user: str = "alice", password: str = "s3cret pw", authzid: str | None = None):
    step = run_exchange(client_mechanism(mechanism, user, password, authzid), server_mechanism(mechanism))
    assert isinstance(step, Success), step
    return step.credentials


def failure(step: AuthStep) -> tuple[str, str]:
    assert isinstance(step, Failure), step
    return step.code, step.message


# --- constants ------------------------------------------------------------------------------


def test_default_offer_and_insecure_set() -> None:
    assert SERVER_MECHANISMS == ("CRAM-MD5", "PLAIN", "LOGIN")
    assert frozenset({"PLAIN", "LOGIN"}) == INSECURE_MECHANISMS


def test_hash_schemes_never_include_bare_digest_formats() -> None:
    # A 32-hex-digit string may be somebody's plain password; it must not be taken for a hash.
    assert "hex_md5" not in HASH_SCHEMES
    assert "plaintext" not in HASH_SCHEMES
    assert {"sha512_crypt", "pbkdf2_sha256", "bcrypt"} <= set(HASH_SCHEMES)


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_round_trip(mechanism: str) -> None:
    creds = creds_for(mechanism, "alice", "s3cret pw")
    assert creds.mechanism == mechanism
    assert creds.authcid == "alice"
    assert creds.authzid is None
    assert creds.identity == "alice"
    assert creds.check_secret("s3cret pw")
    assert not creds.check_secret("s3cret pX")
    assert not creds.check_secret("s3cret pw ")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_round_trip_non_ascii(mechanism: str) -> None:
    creds = creds_for(mechanism, "jürgen@exämple.org", "pässwörd✓")
    assert creds.authcid == "jürgen@exämple.org"
    assert creds.check_secret("pässwörd✓")
    assert creds.check_secret("pässwörd✓".encode())
    assert not creds.check_secret("passwörd✓")


def test_plain_with_authzid() -> None:
    creds = creds_for("PLAIN", "alice", "pw", authzid="postmaster")
    assert (creds.authcid, creds.authzid, creds.identity) == ("alice", "postmaster", "postmaster")
    assert creds.check_secret("pw")


def test_plain_wire_format_and_empty_authzid() -> None:
    client = client_mechanism("PLAIN", "alice", "pw", "boss")
    assert unb64(client.initial_response() or "") == b"boss\0alice\0pw"
    step = server_mechanism("PLAIN").start(b64(b"\0bob\0secret"))
    assert isinstance(step, Success)
    assert (step.credentials.authcid, step.credentials.authzid) == ("bob", None)


def test_plain_without_initial_response_gets_empty_challenge() -> None:
    server = server_mechanism("PLAIN")
    step = server.start(None)
    assert step == Challenge("")
    client = client_mechanism("PLAIN", "alice", "pw")
    step = server.respond(client.respond(step.text))
    assert isinstance(step, Success)
    assert step.credentials.check_secret("pw")


def test_login_prompts() -> None:
    server = server_mechanism("login")
    step = server.start(None)
    assert isinstance(step, Challenge)
    assert unb64(step.text) == b"Username:"
    step = server.respond(b64("alice"))
    assert isinstance(step, Challenge)
    assert unb64(step.text) == b"Password:"
    step = server.respond(b64("pw"))
    assert isinstance(step, Success)
    assert step.credentials.authcid == "alice"
    assert step.credentials.check_secret("pw")


def test_login_initial_response_is_the_user_name() -> None:
    server = server_mechanism("LOGIN")
    step = server.start(b64("alice"))
    assert isinstance(step, Challenge)
    assert unb64(step.text) == b"Password:"
    step = server.respond(b64("pw"))
    assert isinstance(step, Success)
    assert step.credentials.authcid == "alice"


def test_cram_md5_challenge_shape_and_uniqueness() -> None:
    texts = []
    for _ in range(2):
        step = server_mechanism("CRAM-MD5", "mail.example.com").start(None)
        assert isinstance(step, Challenge)
        texts.append(unb64(step.text).decode("ascii"))
    for text in texts:
        assert re.fullmatch(r"<\d+\.\d+@mail\.example\.com>", text), text
    assert texts[0] != texts[1]


def test_cram_md5_challenge_sanitises_hostname() -> None:
    step = server_mechanism("CRAM-MD5", "bad host<>").start(None)
    assert isinstance(step, Challenge)
    assert re.fullmatch(r"<\d+\.\d+@badhost>", unb64(step.text).decode("ascii"))


def test_cram_md5_rfc2195_example() -> None:
    challenge = "<1896.697170952@postoffice.reston.mci.net>"
    client = client_mechanism("CRAM-MD5", "tim", "tanstaaftanstaaf")
    assert client.initial_response() is None
    answer = unb64(client.respond(b64(challenge)))
    assert answer == b"tim b913a602c7eda7a495b4e6e7334d3890"
    creds = AuthCredentials("CRAM-MD5", "tim", challenge=challenge, digest="B913A602C7EDA7A495B4E6E7334D3890")
    assert creds.check_secret("tanstaaftanstaaf")
    assert not creds.check_secret("tanstaaftanstaaF")


def test_cram_md5_answer_to_another_challenge_fails() -> None:
    server_a = server_mechanism("CRAM-MD5")
    server_b = server_mechanism("CRAM-MD5")
    step_a = server_a.start(None)
    server_b.start(None)
    assert isinstance(step_a, Challenge)
    replayed = client_mechanism("CRAM-MD5", "alice", "pw").respond(step_a.text)
    step = server_b.respond(replayed)
    assert isinstance(step, Success)
    assert not step.credentials.check_secret("pw")


# --- secrets ---------------------------------------------------------------------------------


def _bcrypt_available() -> bool:
    try:
        return bool(passlib_hash.bcrypt.has_backend())
    except Exception:
        return False


HASHERS = [
    pytest.param(lambda pw: passlib_hash.sha512_crypt.using(rounds=1000).hash(pw), id="sha512_crypt"),
    pytest.param(lambda pw: passlib_hash.sha256_crypt.using(rounds=1000).hash(pw), id="sha256_crypt"),
    pytest.param(lambda pw: passlib_hash.pbkdf2_sha256.using(rounds=1000).hash(pw), id="pbkdf2_sha256"),
    pytest.param(lambda pw: passlib_hash.md5_crypt.hash(pw), id="md5_crypt"),
    pytest.param(lambda pw: passlib_hash.ldap_salted_sha1.hash(pw), id="ldap_salted_sha1"),
    pytest.param(
        lambda pw: passlib_hash.bcrypt.using(rounds=4).hash(pw),
        id="bcrypt",
        marks=pytest.mark.skipif(not _bcrypt_available(), reason="no bcrypt backend installed"),
    ),
]


@pytest.mark.parametrize("hasher", HASHERS)
@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_hashed_secret(mechanism: str, hasher) -> None:
    stored = hasher("correct horse")
    creds = creds_for(mechanism, "alice", "correct horse")
    assert creds.check_secret(stored)
    assert not creds_for(mechanism, "alice", "correct horsE").check_secret(stored)
    # Knowing the hash is not knowing the password.
    assert not creds_for(mechanism, "alice", stored).check_secret(stored)


def test_plain_secret_compare() -> None:
    creds = creds_for("PLAIN", "alice", "hunter2")
    assert creds.check_secret("hunter2")
    assert creds.check_secret(b"hunter2")
    assert not creds.check_secret("hunter3")
    assert not creds.check_secret("hunter")
    assert not creds.check_secret("")
    assert not creds.check_secret(None)
    assert not creds.check_secret(b"\xff\xfe")


def test_hex_digest_secret_is_compared_literally() -> None:
    digest = "5f4dcc3b5aa765d61d8327deb882cf99"  # hex MD5 of "password"
    assert not creds_for("PLAIN", "alice", "password").check_secret(digest)
    assert creds_for("PLAIN", "alice", digest).check_secret(digest)


def test_cram_md5_with_hashed_secret_is_false() -> None:
    creds = creds_for("CRAM-MD5", "alice", "pw")
    assert creds.check_secret("pw")
    assert not creds.check_secret(passlib_hash.sha512_crypt.using(rounds=1000).hash("pw"))
    assert not creds.check_secret(passlib_hash.pbkdf2_sha256.using(rounds=1000).hash("pw"))


def test_cram_md5_knowing_the_hash_is_not_enough() -> None:
    stored = passlib_hash.sha512_crypt.using(rounds=1000).hash("pw")
    assert not creds_for("CRAM-MD5", "alice", stored).check_secret(stored)


def test_empty_secret_never_matches() -> None:
    # A CRAM-MD5 client can compute the HMAC of an empty key: an unset
    # password must still not let it in.
    assert creds_for("CRAM-MD5", "alice", "").check_secret("x") is False
    assert not creds_for("CRAM-MD5", "alice", "").check_secret("")
    assert not creds_for("CRAM-MD5", "alice", "").check_secret(b"")


def test_malformed_hash_is_false() -> None:
    creds = creds_for("PLAIN", "alice", "pw")
    assert not creds.check_secret("$6$rounds=1000$salt$not-a-real-checksum!")


def test_hash_without_backend_fails_closed(caplog: pytest.LogCaptureFixture) -> None:
    try:
        have_argon2 = bool(passlib_hash.argon2.has_backend())
    except Exception:
        have_argon2 = False
    if have_argon2:
        pytest.skip("argon2 backend installed")
    stored = "$argon2id$v=19$m=65536,t=3,p=4$c29tZXNhbHQ$RdescudvJCsgt3ub+b+dWRWJTmaaJObGg"
    creds = creds_for("PLAIN", "alice", stored)
    with caplog.at_level(logging.WARNING, logger="slimta.smtp.auth"):
        assert not creds.check_secret(stored)
    assert "argon2" in caplog.text


def test_credentials_need_password_or_digest() -> None:
    with pytest.raises(ValueError, match="either"):
        AuthCredentials("PLAIN", "alice")
    with pytest.raises(ValueError, match="either"):
        AuthCredentials("X", "alice", password="pw", challenge="<1@x>", digest="00" * 16)
    with pytest.raises(ValueError, match="either"):
        AuthCredentials("CRAM-MD5", "alice", challenge="<1@x>")


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_repr_hides_secrets(mechanism: str) -> None:
    password = "Sup3rSecretValue"
    creds = creds_for(mechanism, "alice", password, "boss" if mechanism == "PLAIN" else None)
    for text in (repr(creds), str(creds), f"{creds!r}"):
        assert password not in text
        assert "alice" in text
        assert not re.search(r"[0-9a-f]{32}", text)
    client = client_mechanism(mechanism, "alice", password)
    assert password not in repr(client)
    assert "alice" in repr(client)


# --- malformed client input -------------------------------------------------------------------


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_invalid_base64(mechanism: str) -> None:
    server = server_mechanism(mechanism)
    step = server.start(None)
    assert isinstance(step, Challenge)
    assert failure(server.respond("not base64!")) == ("501", "5.5.2 Invalid base64 data")


@pytest.mark.parametrize("bad", ["Q", "QUJ", "QU JD", "QUJD\x00", "QUJD=\r\nQUJD"])
def test_invalid_base64_variants_in_initial_response(bad: str) -> None:
    assert failure(server_mechanism("PLAIN").start(bad)) == ("501", "5.5.2 Invalid base64 data")


@pytest.mark.parametrize(
    ("message", "code"),
    [
        (b"alice\0pw", "501"),  # one NUL missing
        (b"alicepw", "501"),
        (b"a\0alice\0pw\0", "501"),  # one NUL too many
        (b"", "501"),
        (b"\0alice\0pw\xff", "501"),  # not UTF-8
        (b"\0ali\rce\0pw", "501"),
        (b"\0\0pw", "535"),  # empty authcid
        (b"\0alice\0", "535"),  # empty password
    ],
)
def test_plain_malformed(message: bytes, code: str) -> None:
    step = server_mechanism("PLAIN").start(b64(message))
    assert failure(step)[0] == code
    assert failure(step)[1].startswith("5.5.2" if code == "501" else "5.7.8")


def test_plain_equals_sign_is_an_empty_message() -> None:
    assert failure(server_mechanism("PLAIN").start("=")) == ("501", "5.5.2 Malformed PLAIN message")


def test_plain_255_octet_fields_accepted() -> None:
    user, pw, authz = "u" * 255, "p" * 255, "z" * 255
    step = server_mechanism("PLAIN").start(b64(f"{authz}\0{user}\0{pw}"))
    assert isinstance(step, Success)
    assert step.credentials.check_secret(pw)


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_overlong_response(mechanism: str) -> None:
    server = server_mechanism(mechanism)
    server.start(None)
    step = server.respond(b64(b"\0alice\0" + b"x" * MAX_RESPONSE_OCTETS))
    assert failure(step) == ("500", "5.5.6 Authentication Exchange line is too long")


def test_longest_accepted_response() -> None:
    message = b"\0alice\0" + b"x" * (MAX_RESPONSE_OCTETS - 7)
    assert isinstance(server_mechanism("PLAIN").start(b64(message)), Success)


@pytest.mark.parametrize(
    ("username", "password", "code"),
    [
        (b"", b"pw", "535"),
        (b"alice", b"", "535"),
        (b"al\0ice", b"pw", "501"),
        (b"alice", b"p\0w", "501"),
        (b"\xc3", b"pw", "501"),
    ],
)
def test_login_malformed(username: bytes, password: bytes, code: str) -> None:
    server = server_mechanism("LOGIN")
    server.start(None)
    step = server.respond(b64(username))
    if isinstance(step, Challenge):
        step = server.respond(b64(password))
    assert failure(step)[0] == code


@pytest.mark.parametrize(
    ("answer", "code"),
    [
        (b"alice", "501"),  # no digest
        (b"alice 0123", "501"),  # short digest
        (b"alice " + b"g" * 32, "501"),  # not hex
        (b"alice " + b"0 " * 16, "501"),
        (b" " + b"0" * 32, "535"),  # empty user
        (b"ali\xffce " + b"0" * 32, "501"),
    ],
)
def test_cram_md5_malformed(answer: bytes, code: str) -> None:
    server = server_mechanism("CRAM-MD5")
    server.start(None)
    assert failure(server.respond(b64(answer)))[0] == code


def test_cram_md5_user_with_space() -> None:
    server = server_mechanism("CRAM-MD5")
    step = server.start(None)
    assert isinstance(step, Challenge)
    step = server.respond(client_mechanism("CRAM-MD5", "Alice Smith", "pw").respond(step.text))
    assert isinstance(step, Success)
    assert step.credentials.authcid == "Alice Smith"
    assert step.credentials.check_secret("pw")


@pytest.mark.parametrize("initial", ["", "=", b64("alice")])
def test_cram_md5_refuses_initial_response(initial: str) -> None:
    assert failure(server_mechanism("CRAM-MD5").start(initial)) == (
        "501",
        "5.5.2 CRAM-MD5 takes no initial response",
    )


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_cancel(mechanism: str) -> None:
    server = server_mechanism(mechanism)
    server.start(None)
    assert failure(server.respond("*")) == ("501", "5.7.0 Authentication cancelled")


# --- mechanism lifecycle and factories -------------------------------------------------------


def test_finished_mechanism_cannot_be_reused() -> None:
    server = server_mechanism("PLAIN")
    assert isinstance(server.start(b64(b"\0a\0b")), Success)
    with pytest.raises(AuthError):
        server.respond(b64(b"\0a\0b"))
    with pytest.raises(AuthError):
        server.start(None)


def test_respond_before_start_and_after_failure() -> None:
    server = server_mechanism("LOGIN")
    with pytest.raises(AuthError):
        server.respond(b64("alice"))
    server.start(None)
    assert isinstance(server.respond("!!"), Failure)
    with pytest.raises(AuthError):
        server.respond(b64("alice"))


def test_unknown_mechanisms() -> None:
    for factory in (lambda: server_mechanism("GSSAPI"), lambda: client_mechanism("XOAUTH2", "a", "b")):
        with pytest.raises(ValueError, match="Unknown SASL mechanism") as info:
            factory()
        assert isinstance(info.value, UnknownMechanism)
        assert isinstance(info.value, SmtpError)


def test_factories_ignore_case() -> None:
    assert server_mechanism("cram-md5").name == "CRAM-MD5"
    assert client_mechanism("Login", "a", "b").name == "LOGIN"


def test_steps_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Challenge("x").text = "y"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        Failure("535", "x").code = "235"  # type: ignore[misc]


# --- client side -------------------------------------------------------------------------------


def test_client_plain_rejects_nul() -> None:
    with pytest.raises(ValueError, match="NUL"):
        client_mechanism("PLAIN", "al\0ice", "pw")
    with pytest.raises(ValueError, match="NUL"):
        client_mechanism("PLAIN", "alice", "pw", "bo\0ss")


def test_client_login_answers_in_order_then_stops() -> None:
    client = client_mechanism("LOGIN", "alice", "pw")
    assert client.initial_response() is None
    assert unb64(client.respond(b64("User Name"))) == b"alice"
    assert unb64(client.respond(b64("Password"))) == b"pw"
    with pytest.raises(AuthError):
        client.respond(b64("Again?"))


def test_client_rejects_bad_challenges() -> None:
    with pytest.raises(AuthError, match="base64"):
        client_mechanism("CRAM-MD5", "a", "b").respond("%%%")
    with pytest.raises(AuthError, match="base64"):
        client_mechanism("LOGIN", "a", "b").respond("%%%")
    cram = client_mechanism("CRAM-MD5", "a", "b")
    cram.respond(b64("<1.2@x>"))
    with pytest.raises(AuthError):
        cram.respond(b64("<1.2@x>"))


@pytest.mark.parametrize(
    ("offered", "allowed", "encrypted", "expected"),
    [
        (["CRAM-MD5", "PLAIN", "LOGIN"], None, True, "PLAIN"),
        (["CRAM-MD5", "PLAIN", "LOGIN"], None, False, "CRAM-MD5"),
        (["PLAIN", "LOGIN"], None, False, None),
        (["LOGIN"], None, True, "LOGIN"),
        (["GSSAPI", "XOAUTH2", "NTLM"], None, True, None),
        (["GSSAPI", "login"], None, True, "LOGIN"),
        (["GSSAPI", "cram-md5"], None, False, "CRAM-MD5"),
        ("GSSAPI PLAIN CRAM-MD5", None, True, "PLAIN"),
        ([], None, True, None),
        (["CRAM-MD5", "PLAIN"], ["cram-md5", "plain"], True, "CRAM-MD5"),
        (["CRAM-MD5", "PLAIN"], ["LOGIN", "PLAIN"], True, "PLAIN"),
        (["CRAM-MD5"], ["PLAIN", "LOGIN"], True, None),
        (["PLAIN", "LOGIN"], ["PLAIN", "LOGIN"], False, None),
        (["PLAIN"], "plain", True, "PLAIN"),
    ],
)
def test_choose_client_mechanism(offered, allowed, encrypted: bool, expected: str | None) -> None:
    assert choose_client_mechanism(offered, allowed, encrypted) == expected


def test_choose_client_mechanism_default_is_encrypted() -> None:
    assert choose_client_mechanism(["LOGIN"]) == "LOGIN"


def test_choose_client_mechanism_unknown_allowed() -> None:
    with pytest.raises(UnknownMechanism):
        choose_client_mechanism(["PLAIN"], ["XOAUTH2", "PLAIN"])
