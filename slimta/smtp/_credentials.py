"""Credentials for :mod:`slimta.smtp.auth`: what an exchange yields, and checking it.

Theory of operation
-------------------
A server mechanism ends in a :class:`Success` carrying
:class:`AuthCredentials`; the user's code looks up the stored secret and asks
:meth:`AuthCredentials.check_secret`, which compares a plain password in
constant time, recomputes a CRAM-MD5 digest, or verifies a passlib hash of
one of the schemes in ``HASH_SCHEMES``.  The mechanisms themselves never see
a stored secret.

This lives apart from :mod:`slimta.smtp.auth` (which re-exports every name
here) because password storage is a concern of its own: the passlib set-up
and the hash checks read best away from the SASL message parsing, and the
mechanisms need only the result types.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass

from passlib.context import CryptContext
from passlib.exc import MissingBackendError
from passlib.registry import list_crypt_handlers

# The logger of the public module, so records keep the name they had.
log = logging.getLogger("slimta.smtp.auth")

# The stored-secret formats recognised as hashes.  Only formats with an
# unmistakable prefix ("$6$", "{SSHA}"...) are listed: a bare hex digest
# (hex_md5 and the like) could also be somebody's plain password.
_WANTED_SCHEMES = (
    "argon2",
    "bcrypt",
    "bcrypt_sha256",
    "scrypt",
    "sha512_crypt",
    "sha256_crypt",
    "pbkdf2_sha512",
    "pbkdf2_sha256",
    "pbkdf2_sha1",
    "sha1_crypt",
    "md5_crypt",
    "apr_md5_crypt",
    "ldap_salted_sha512",
    "ldap_salted_sha256",
    "ldap_salted_sha1",
    "ldap_sha1",
)


# The passlib schemes recognised as hashes (documented, and re-exported,
# as slimta.smtp.auth.HASH_SCHEMES).
HASH_SCHEMES: tuple[str, ...] = tuple(s for s in _WANTED_SCHEMES if s in set(list_crypt_handlers()))

_hashes = CryptContext(schemes=list(HASH_SCHEMES))


def _is_hash(secret: str) -> bool:
    """Whether ``secret`` is a password hash in one of :data:`HASH_SCHEMES`."""
    try:
        return _hashes.identify(secret, required=False) is not None
    except (ValueError, TypeError):
        return False


def _verify_hash(password: str, secret: str) -> bool:
    """Check ``password`` against the passlib hash ``secret``; never raises."""
    try:
        return bool(_hashes.verify(password, secret))
    except MissingBackendError as exc:
        # The operator stored a hash we cannot check: say so, then fail closed.
        log.warning("cannot verify password hash: %s", exc)
    except (ValueError, TypeError):
        # A malformed hash, or a password over passlib's size limit.
        pass
    return False


class AuthCredentials:
    """What a client proved it knows, waiting for the secret to check against.

    The server's ``handle_auth(reply, creds)`` hook receives one of these: it
    looks up the secret stored for :attr:`authcid`, decides whether
    :attr:`authzid` may be used, and calls :meth:`check_secret`.  The
    password (or CRAM-MD5 digest) the client sent is kept private and never
    shown by :func:`repr`.

    Attributes:
        mechanism: the SASL mechanism used (``"PLAIN"``, ``"LOGIN"``,
            ``"CRAM-MD5"``).
        authcid: the authentication identity (the user name).
        authzid: the authorization identity the client asked to act as, or
            ``None`` (only PLAIN can carry one).
    """

    __slots__ = ("_challenge", "_digest", "_password", "authcid", "authzid", "mechanism", "offload")

    def __init__(
        self,
        mechanism: str,
        authcid: str,
        authzid: str | None = None,
        *,
        password: str | None = None,
        challenge: str | None = None,
        digest: str | None = None,
    ) -> None:
        """Build credentials from either a password or a CRAM-MD5 answer.

        Args:
            mechanism: the mechanism name.
            authcid: the authentication identity.
            authzid: the authorization identity, or ``None``.
            password: the password the client sent (PLAIN, LOGIN).
            challenge: the challenge string the server sent (CRAM-MD5).
            digest: the client's hex HMAC-MD5 of ``challenge`` (CRAM-MD5).

        Raises:
            ValueError: neither a password nor a challenge with its digest,
                or both.
        """
        if (password is None) == (challenge is None or digest is None):
            raise ValueError("give either password, or challenge and digest")
        self.mechanism = mechanism
        self.authcid = authcid
        self.authzid = authzid
        self._password = password
        self._challenge = challenge
        self._digest = digest.lower() if digest is not None else None
        #: Runs the (slow, CPU-bound) hash verification, e.g. in a thread
        #: pool; the SMTP server sets it so a bcrypt or sha512_crypt check
        #: never stalls the other sessions.  ``None`` runs it inline.
        self.offload: Callable[..., bool] | None = None

    @property
    def identity(self) -> str:
        """The identity the client acts as: :attr:`authzid`, else :attr:`authcid`."""
        return self.authzid or self.authcid

    def check_secret(self, secret: str | bytes | None) -> bool:
        """Whether the client knew ``secret``, the one stored for :attr:`authcid`.

        Args:
            secret: the stored secret: the password itself (compared in
                constant time) or a passlib hash in one of
                :data:`HASH_SCHEMES`; bytes are read as UTF-8.  ``None``
                (no such user) and an empty secret never match.  A CRAM-MD5
                login needs the password itself: a hash never matches.

        Returns:
            ``True`` only if the client proved knowledge of the secret.
            Hashed secrets cost what their scheme costs (tens of
            milliseconds for bcrypt or pbkdf2 at their default rounds).
        """
        if isinstance(secret, bytes):
            try:
                secret = secret.decode("utf-8")
            except UnicodeDecodeError:
                return False
        if not secret:
            return False
        if self._password is not None:
            if _is_hash(secret):
                if self.offload is not None:
                    return bool(self.offload(_verify_hash, self._password, secret))
                return _verify_hash(self._password, secret)
            return hmac.compare_digest(self._password.encode("utf-8"), secret.encode("utf-8"))
        if self._challenge is None or self._digest is None or _is_hash(secret):
            return False
        expected = hmac.new(secret.encode("utf-8"), self._challenge.encode("utf-8"), "md5").hexdigest()
        return hmac.compare_digest(expected.encode("ascii"), self._digest.encode("ascii", "replace"))

    def __repr__(self) -> str:
        return f"AuthCredentials(mechanism={self.mechanism!r}, authcid={self.authcid!r}, authzid={self.authzid!r})"


@dataclass(frozen=True, slots=True)
class Challenge:
    """Send ``334`` followed by :attr:`text` (base64, possibly empty) and wait."""

    text: str


@dataclass(frozen=True, slots=True)
class Success:
    """The exchange is complete; the credentials still have to be checked."""

    credentials: AuthCredentials


@dataclass(frozen=True, slots=True)
class Failure:
    """The exchange failed; send ``code`` and ``message`` as the reply."""

    code: str
    message: str
