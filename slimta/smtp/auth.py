"""SASL for SMTP AUTH (RFC 4954): PLAIN, LOGIN and CRAM-MD5, both sides.

This module is sans-IO.  It never reads or writes a socket; it only turns
the base64 text of one AUTH exchange into the next step.

Server side
-----------
:func:`server_mechanism` builds a :class:`ServerMechanism` for one exchange.
The driver calls :meth:`~ServerMechanism.start` with the initial response of
the ``AUTH`` command (``None`` when there was none, ``""`` for ``=``) and then
:meth:`~ServerMechanism.respond` with each client line, and acts on the
:data:`AuthStep` it gets back:

* :class:`Challenge`: send ``334 <text>`` and wait for the next line;
* :class:`Success`: hand :attr:`Success.credentials` to the user's
  ``handle_auth`` hook, which decides (this module never says "235");
* :class:`Failure`: send the reply; the exchange is over.

A mechanism only checks that the client's messages are well formed.  Whether
the password is right is asked later, through
:meth:`AuthCredentials.check_secret`, with the secret the user's code looked
up for :attr:`AuthCredentials.authcid`.  That secret is either the password
itself or a hash in one of the formats of :data:`HASH_SCHEMES`, verified with
passlib.  CRAM-MD5 needs the password itself on the server, so a CRAM-MD5
login never matches a hashed secret: servers that store hashes should offer
only PLAIN and LOGIN (over TLS).

Client side
-----------
:func:`choose_client_mechanism` picks a mechanism among those a server
announced, and :func:`client_mechanism` builds the :class:`ClientMechanism`
that produces the client's base64 lines.

Where things live
-----------------
:class:`AuthCredentials`, the passlib set-up behind :data:`HASH_SCHEMES`
and the exchange results (:class:`Challenge`, :class:`Success`,
:class:`Failure`) live in :mod:`slimta.smtp._credentials`, so that password
storage reads apart from the SASL message parsing here; every name is
re-exported, and importable, from this module.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import TypeAlias

from slimta.smtp import SmtpError, _credentials
from slimta.smtp._credentials import AuthCredentials, Challenge, Failure, Success

__all__ = [
    "CLIENT_PREFERENCE",
    "HASH_SCHEMES",
    "INSECURE_MECHANISMS",
    "MAX_RESPONSE_OCTETS",
    "SERVER_MECHANISMS",
    "AuthCredentials",
    "AuthError",
    "AuthStep",
    "Challenge",
    "ClientMechanism",
    "Failure",
    "ServerMechanism",
    "Success",
    "UnknownMechanism",
    "choose_client_mechanism",
    "client_mechanism",
    "server_mechanism",
]

log = logging.getLogger(__name__)

#: The mechanisms a server offers by default, strongest first.
SERVER_MECHANISMS: tuple[str, ...] = ("CRAM-MD5", "PLAIN", "LOGIN")

#: Mechanisms that send the password itself: refused without TLS (RFC 4954 4).
INSECURE_MECHANISMS: frozenset[str] = frozenset({"PLAIN", "LOGIN"})

#: The client's order of preference when the connection is encrypted.  Over
#: TLS, PLAIN leaks nothing and works against servers that store hashes,
#: where CRAM-MD5 cannot; on a cleartext connection only CRAM-MD5 is left.
CLIENT_PREFERENCE: tuple[str, ...] = ("PLAIN", "LOGIN", "CRAM-MD5")

#: Longest decoded client message accepted.  RFC 4616 asks for at least 255
#: octets in each of the three PLAIN fields; this leaves ample room.
MAX_RESPONSE_OCTETS = 4096

# A base64 text longer than this cannot decode to MAX_RESPONSE_OCTETS or less,
# so it is refused before any decoding work is done.
_MAX_RESPONSE_CHARS = (MAX_RESPONSE_OCTETS + 2) // 3 * 4

#: The passlib schemes :meth:`AuthCredentials.check_secret` recognises, in the
#: order passlib tries them.  A scheme whose backend library is missing (argon2
#: without argon2-cffi, bcrypt without bcrypt) is still *recognised*, so such a
#: hash fails closed instead of being compared as a plain password.
HASH_SCHEMES: tuple[str, ...] = _credentials.HASH_SCHEMES


# Replies shared by the mechanisms (RFC 4954 6 and RFC 3463).
_BAD_BASE64 = ("501", "5.5.2 Invalid base64 data")
_TOO_LONG = ("500", "5.5.6 Authentication Exchange line is too long")
_CANCELLED = ("501", "5.7.0 Authentication cancelled")
_INVALID = ("535", "5.7.8 Authentication credentials invalid")


class AuthError(SmtpError):
    """A SASL exchange cannot go on: misuse of a mechanism, or a bad challenge."""


class UnknownMechanism(AuthError, ValueError):
    """A SASL mechanism name this module does not implement.

    Also a :class:`ValueError`, as the factories document.
    """

    def __init__(self, name: str) -> None:
        super().__init__(f"Unknown SASL mechanism: {name!r}")
        self.name = name


#: What a server mechanism returns after each client message.
AuthStep: TypeAlias = Challenge | Success | Failure


def _b64(data: str) -> str:
    return base64.b64encode(data.encode("utf-8")).decode("ascii")


def _decode_response(line: str) -> bytes | Failure:
    """Decode one client message, or say why it cannot be."""
    line = line.strip()
    if line == "*":
        return Failure(*_CANCELLED)
    if len(line) > _MAX_RESPONSE_CHARS:
        return Failure(*_TOO_LONG)
    try:
        return base64.b64decode(line, validate=True)
    except (binascii.Error, ValueError):
        return Failure(*_BAD_BASE64)


def _text_field(raw: bytes) -> str | None:
    """``raw`` as UTF-8 text without NUL, CR or LF, else ``None``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if "\0" in text or "\r" in text or "\n" in text:
        return None
    return text


class ServerMechanism(ABC):
    """The server's half of one SASL exchange.

    One instance serves one ``AUTH`` command; after it returns
    :class:`Success` or :class:`Failure` it must not be used again.

    Attributes:
        name: the mechanism name, upper case.
    """

    name: str = ""

    def __init__(self) -> None:
        self._started = False
        self._done = False

    def start(self, initial_response: str | None) -> AuthStep:
        """Begin the exchange.

        Args:
            initial_response: the base64 text after the mechanism name in the
                ``AUTH`` command; ``None`` if there was none, ``""`` (or
                ``"="``) for an empty one.

        Raises:
            AuthError: the exchange was already started.
        """
        if self._started:
            raise AuthError(f"{self.name} exchange already started")
        self._started = True
        if initial_response is not None and initial_response.strip() == "=":
            initial_response = ""
        return self._finish(self._start(initial_response))

    def respond(self, line: str) -> AuthStep:
        """Take the client's answer to the last :class:`Challenge`.

        Args:
            line: the client's line, base64 (``"*"`` cancels the exchange).

        Raises:
            AuthError: no challenge is pending.
        """
        if not self._started or self._done:
            raise AuthError(f"no {self.name} challenge is pending")
        return self._finish(self._respond(line))

    def _finish(self, step: AuthStep) -> AuthStep:
        if not isinstance(step, Challenge):
            self._done = True
        return step

    @abstractmethod
    def _start(self, initial_response: str | None) -> AuthStep: ...

    @abstractmethod
    def _respond(self, line: str) -> AuthStep: ...

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class _PlainServer(ServerMechanism):
    """RFC 4616: one message, ``[authzid] NUL authcid NUL passwd``."""

    name = "PLAIN"

    def _start(self, initial_response: str | None) -> AuthStep:
        if initial_response is None:
            return Challenge("")
        return self._respond(initial_response)

    def _respond(self, line: str) -> AuthStep:
        data = _decode_response(line)
        if isinstance(data, Failure):
            return data
        parts = data.split(b"\0")
        if len(parts) != 3:
            return Failure("501", "5.5.2 Malformed PLAIN message")
        fields = [_text_field(p) for p in parts]
        authzid, authcid, password = fields
        if authzid is None or authcid is None or password is None:
            return Failure("501", "5.5.2 Malformed PLAIN message")
        if not authcid or not password:
            return Failure(*_INVALID)
        return Success(AuthCredentials(self.name, authcid, authzid or None, password=password))


_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")
_USERNAME_PROMPT = _b64("Username:")
_PASSWORD_PROMPT = _b64("Password:")


class _LoginServer(ServerMechanism):
    """The de-facto LOGIN mechanism: user name, then password, each prompted.

    An initial response, which some clients send, is taken as the user name.
    """

    name = "LOGIN"

    def __init__(self) -> None:
        super().__init__()
        self._authcid: str | None = None

    def _start(self, initial_response: str | None) -> AuthStep:
        if initial_response is None:
            return Challenge(_USERNAME_PROMPT)
        return self._respond(initial_response)

    def _respond(self, line: str) -> AuthStep:
        data = _decode_response(line)
        if isinstance(data, Failure):
            return data
        text = _text_field(data)
        if text is None:
            return Failure("501", "5.5.2 Malformed LOGIN message")
        if not text:
            return Failure(*_INVALID)
        if self._authcid is None:
            self._authcid = text
            return Challenge(_PASSWORD_PROMPT)
        return Success(AuthCredentials(self.name, self._authcid, password=text))


class _CramMd5Server(ServerMechanism):
    """RFC 2195: a unique challenge, answered by ``user SP hex-hmac-md5``."""

    name = "CRAM-MD5"

    def __init__(self, hostname: str) -> None:
        super().__init__()
        # A host name with spaces or angle brackets would break the msg-id
        # shape of the challenge; those characters are simply left out.
        host = "".join(c for c in hostname if c not in " <>\r\n\0") or "localhost"
        self.challenge = f"<{secrets.randbits(64)}.{int(time.time())}@{host}>"

    def _start(self, initial_response: str | None) -> AuthStep:
        if initial_response is not None:
            return Failure("501", "5.5.2 CRAM-MD5 takes no initial response")
        return Challenge(_b64(self.challenge))

    def _respond(self, line: str) -> AuthStep:
        data = _decode_response(line)
        if isinstance(data, Failure):
            return data
        text = _text_field(data)
        user, sep, digest = (text or "").rpartition(" ")
        if text is None or not sep or len(digest) != 32 or not set(digest) <= _HEX_DIGITS:
            return Failure("501", "5.5.2 Malformed CRAM-MD5 response")
        if not user:
            return Failure(*_INVALID)
        return Success(AuthCredentials(self.name, user, challenge=self.challenge, digest=digest))


def server_mechanism(name: str, hostname: str = "localhost") -> ServerMechanism:
    """Build the server side of one exchange of mechanism ``name``.

    Args:
        name: ``"PLAIN"``, ``"LOGIN"`` or ``"CRAM-MD5"`` (any case).
        hostname: the server's name, used in CRAM-MD5 challenges.

    Raises:
        UnknownMechanism: (a :class:`ValueError`) for any other name.
    """
    key = name.upper()
    if key == "PLAIN":
        return _PlainServer()
    if key == "LOGIN":
        return _LoginServer()
    if key == "CRAM-MD5":
        return _CramMd5Server(hostname)
    raise UnknownMechanism(name)


# --- client side -------------------------------------------------------------


def _decode_challenge(challenge_b64: str) -> bytes:
    try:
        return base64.b64decode(challenge_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuthError(f"Invalid base64 in server challenge: {challenge_b64[:64]!r}") from None


class ClientMechanism(ABC):
    """The client's half of one SASL exchange.

    Send ``AUTH <name>`` followed by :meth:`initial_response` when it is not
    ``None``; answer each ``334`` with :meth:`respond`.  The secret is never
    shown by :func:`repr`.

    Attributes:
        name: the mechanism name, upper case.
        authcid: the user name.
        authzid: the identity to act as, or ``None``.
    """

    name: str = ""

    def __init__(self, authcid: str, secret: str, authzid: str | None = None) -> None:
        self.authcid = authcid
        self.authzid = authzid
        self._secret = secret

    def initial_response(self) -> str | None:
        """The base64 text to send with the ``AUTH`` command, or ``None``."""
        return None

    @abstractmethod
    def respond(self, challenge_b64: str) -> str:
        """Answer the server's challenge (the text after ``334``), in base64.

        Raises:
            AuthError: the challenge is not valid base64, or the server asked
                more than the mechanism has to say.
        """

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} authcid={self.authcid!r}>"


class _PlainClient(ClientMechanism):
    name = "PLAIN"

    def __init__(self, authcid: str, secret: str, authzid: str | None = None) -> None:
        super().__init__(authcid, secret, authzid)
        if any("\0" in f for f in (authcid, secret, authzid or "")):
            raise ValueError("PLAIN fields cannot contain NUL")

    def initial_response(self) -> str | None:
        return _b64(f"{self.authzid or ''}\0{self.authcid}\0{self._secret}")

    def respond(self, challenge_b64: str) -> str:
        # A server that did not take the initial response sends an empty
        # challenge; the answer is the same message.
        _decode_challenge(challenge_b64)
        return self.initial_response() or ""


class _LoginClient(ClientMechanism):
    name = "LOGIN"

    def __init__(self, authcid: str, secret: str, authzid: str | None = None) -> None:
        super().__init__(authcid, secret, authzid)
        self._answers = 0

    def respond(self, challenge_b64: str) -> str:
        # Servers word the prompts differently ("Username:", "User Name"...),
        # so the answers go by position, not by prompt text.
        _decode_challenge(challenge_b64)
        self._answers += 1
        if self._answers == 1:
            return _b64(self.authcid)
        if self._answers == 2:
            return _b64(self._secret)
        raise AuthError("LOGIN: unexpected third challenge")


class _CramMd5Client(ClientMechanism):
    name = "CRAM-MD5"

    def __init__(self, authcid: str, secret: str, authzid: str | None = None) -> None:
        super().__init__(authcid, secret, authzid)
        self._answered = False

    def respond(self, challenge_b64: str) -> str:
        if self._answered:
            raise AuthError("CRAM-MD5: unexpected second challenge")
        challenge = _decode_challenge(challenge_b64)
        self._answered = True
        digest = hmac.new(self._secret.encode("utf-8"), challenge, "md5").hexdigest()
        return _b64(f"{self.authcid} {digest}")


_CLIENTS: dict[str, type[ClientMechanism]] = {
    "PLAIN": _PlainClient,
    "LOGIN": _LoginClient,
    "CRAM-MD5": _CramMd5Client,
}


def client_mechanism(name: str, authcid: str, secret: str, authzid: str | None = None) -> ClientMechanism:
    """Build the client side of one exchange of mechanism ``name``.

    Args:
        name: ``"PLAIN"``, ``"LOGIN"`` or ``"CRAM-MD5"`` (any case).
        authcid: the user name.
        secret: the password.
        authzid: the identity to act as (only PLAIN can send it; the other
            mechanisms ignore it).

    Raises:
        UnknownMechanism: (a :class:`ValueError`) for any other name.
        ValueError: a PLAIN field contains NUL.
    """
    cls = _CLIENTS.get(name.upper())
    if cls is None:
        raise UnknownMechanism(name)
    return cls(authcid, secret, authzid)


def choose_client_mechanism(
    offered: Iterable[str],
    allowed: Iterable[str] | None = None,
    encrypted: bool = True,
) -> str | None:
    """Pick the mechanism to use with a server, or ``None`` if there is none.

    Names the server offers that this module does not implement (GSSAPI,
    XOAUTH2...) are ignored.  PLAIN and LOGIN are never chosen when the
    connection is not encrypted.

    Args:
        offered: the server's mechanisms (the words of its ``AUTH`` EHLO line;
            a single space-separated string is accepted too), any case.
        allowed: the mechanisms the user permits, in the user's order of
            preference; ``None`` means :data:`CLIENT_PREFERENCE`.
        encrypted: whether the connection is protected by TLS.

    Returns:
        The upper-case name of the first allowed mechanism the server offers.

    Raises:
        UnknownMechanism: ``allowed`` names a mechanism this module lacks.
    """
    if isinstance(offered, str):
        offered = offered.split()
    on_offer = {name.upper() for name in offered}
    if allowed is None:
        preference: Iterable[str] = CLIENT_PREFERENCE
    else:
        preference = [name.upper() for name in (allowed.split() if isinstance(allowed, str) else allowed)]
        for name in preference:
            if name not in _CLIENTS:
                raise UnknownMechanism(name)
    for name in preference:
        if name in on_offer and (encrypted or name not in INSECURE_MECHANISMS):
            return name
    return None
