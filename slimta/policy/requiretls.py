"""REQUIRETLS (RFC 8689): keep the sender's demand for TLS with the envelope.

A client that sends ``MAIL FROM:<a@b> REQUIRETLS`` over an encrypted
session asks every hop to deliver the message only over TLS whose
certificate was verified (PKIX with MTA-STS, or DANE), and only to servers
that offer REQUIRETLS themselves; a hop that cannot must return the
message as undeliverable rather than send it in the clear.

The pieces:

* The SMTP edge, for ``MAIL FROM``, calls :func:`accept_requiretls` with
  the command's parameters and whether the session is encrypted.  It
  returns None when the parameter is absent, ``True`` when it is accepted,
  or a ``(code, message)`` refusal to send instead of ``250``.  After the
  message is received, :func:`set_requiretls` marks the envelope.
* The flag lives in the attribute ``envelope.requiretls`` (a plain
  ``bool``, so :meth:`~slimta.envelope.Envelope.copy` keeps it and the
  disk storage saves it among the JSON-safe extra attributes).
* The SMTP relays read it with :func:`get_requiretls`: they then require
  verified TLS and ``REQUIRETLS`` in the next hop's ``EHLO`` reply, send
  ``REQUIRETLS`` with ``MAIL FROM``, and fail permanently with
  ``550 5.7.30`` otherwise (see :mod:`slimta.relay.smtp.tlspolicy`).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["EHLO_KEYWORD", "accept_requiretls", "get_requiretls", "set_requiretls"]

#: The EHLO keyword a server advertises, and the MAIL parameter's name.
EHLO_KEYWORD = "REQUIRETLS"


def accept_requiretls(
    params: Mapping[str, str | None] | None, encrypted: bool
) -> bool | tuple[str, str] | None:
    """Decide about the ``REQUIRETLS`` parameter of one ``MAIL FROM`` command.

    Args:
        params: The command's parameters, keyword (any case) to value
            (``None`` for a keyword without a value).
        encrypted: Whether the session is protected by TLS now.

    Returns:
        None when the parameter is absent; ``True`` when it is present and
        allowed; otherwise the reply ``(code, message)`` to refuse the
        command with: ``530 5.7.10`` without TLS (RFC 8689 section 4.1
        forbids accepting it over cleartext) and ``501 5.5.4`` when the
        keyword carries a value.
    """
    found = {key.upper(): value for key, value in (params or {}).items()}
    if EHLO_KEYWORD not in found:
        return None
    if found[EHLO_KEYWORD] not in (None, ""):
        return ("501", "5.5.4 REQUIRETLS takes no value")
    if not encrypted:
        return ("530", "5.7.10 REQUIRETLS needs a TLS session")
    return True


def set_requiretls(envelope: object, required: bool = True) -> None:
    """Mark (or unmark) ``envelope`` as requiring TLS on every hop.

    Args:
        envelope: The :class:`~slimta.envelope.Envelope`.
        required: The new value; False removes the attribute.
    """
    if required:
        envelope.requiretls = True  # type: ignore[attr-defined]
    elif hasattr(envelope, "requiretls"):
        delattr(envelope, "requiretls")


def get_requiretls(envelope: object) -> bool:
    """Return whether ``envelope`` was received with ``REQUIRETLS``."""
    return getattr(envelope, "requiretls", False) is True
