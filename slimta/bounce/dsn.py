"""Delivery Status Notification requests (RFC 3461) kept with an envelope.

A client that sees ``DSN`` in the ``EHLO`` reply may add parameters to its
``MAIL FROM`` and ``RCPT TO`` commands saying which notifications it wants:

* ``RET=FULL`` or ``RET=HDRS`` (``MAIL``): return the whole message, or only
  its header section, in a failure notice.
* ``ENVID=<xtext>`` (``MAIL``): an identifier of the sender's choosing that
  every notice repeats as ``Original-Envelope-Id``.
* ``NOTIFY=NEVER`` or ``NOTIFY=SUCCESS,FAILURE,DELAY`` in any combination
  (``RCPT``): which events produce a notice for that recipient.  Without
  ``NOTIFY`` only failures do.
* ``ORCPT=<addr-type>;<xtext>`` (``RCPT``): the recipient address as the
  original sender wrote it, repeated as ``Original-Recipient``.

This module turns those parameters into small dataclasses, keeps them on the
envelope and answers "should this event produce a notice?".  It does no I/O.

How the pieces fit
------------------

* The SMTP edge calls :func:`parse_mail_params` with the ``MAIL FROM``
  parameters (a mapping of upper- or lower-case keyword to value, ``None``
  for a keyword without value) and :func:`set_dsn` to store the result on
  the new envelope; then, for each accepted recipient,
  :func:`parse_rcpt_params` and :func:`set_recipient_dsn`.  A
  :class:`DsnError` from either parser should become ``501 5.5.4``.
* The data lives in the attribute ``envelope.dsn`` (an :class:`EnvelopeDsn`,
  or absent).  :meth:`Envelope.copy` copies it deeply, so split envelopes
  keep it.  A storage backend that serialises envelopes field by field
  should save :meth:`EnvelopeDsn.to_dict` and restore it with
  :meth:`EnvelopeDsn.from_dict` (JSON-safe; no pickle needed).
* The queue, before creating a notice, asks :func:`should_bounce` (or
  :func:`recipients_to_notify` for a group of recipients)::

      rcpts = recipients_to_notify(envelope, failed_rcpts, "failed")
      if rcpts:
          notice = Bounce(envelope.copy(rcpts), reply)  # RET/ENVID/ORCPT read from envelope.dsn
          enqueue(notice)

  and likewise with ``"delayed"`` when a temporary failure is rescheduled
  (``Bounce(..., action="delayed")``, at most once per recipient) and with
  ``"delivered"`` after a successful delivery.  The null sender is never
  notified, so a notice is never answered with another one.
* The SMTP relay, when the next hop offers ``DSN``, adds
  :func:`mail_params` to ``MAIL FROM`` and :func:`rcpt_params` to each
  ``RCPT TO``.  When it does not, and a recipient asked for
  ``NOTIFY=SUCCESS``, RFC 3461 section 4.2 says to send a ``"relayed"``
  notice; :func:`should_bounce` answers that question too.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping
from typing import Any

from slimta.core import SlimtaError

__all__ = [
    "ACTIONS",
    "DsnError",
    "EnvelopeDsn",
    "RecipientDsn",
    "get_dsn",
    "get_recipient_dsn",
    "mail_params",
    "parse_mail_params",
    "parse_rcpt_params",
    "rcpt_params",
    "recipients_to_notify",
    "return_headers_only",
    "set_dsn",
    "set_recipient_dsn",
    "should_bounce",
    "xtext_decode",
    "xtext_encode",
]

#: The ``Action`` values of RFC 3464 section 2.3.3 that a notice may carry.
ACTIONS = ("failed", "delayed", "delivered", "relayed", "expanded")

# Which NOTIFY keyword asks for a notice about each action.
_ACTION_KEYWORD = {
    "failed": "FAILURE",
    "delayed": "DELAY",
    "delivered": "SUCCESS",
    "relayed": "SUCCESS",
    "expanded": "SUCCESS",
}
_NOTIFY_WORDS = frozenset({"SUCCESS", "FAILURE", "DELAY"})
# xtext (RFC 3461 section 4): printable ASCII except "+" and "=", or "+XX".
_XTEXT = re.compile(r"(?:[\x21-\x2a\x2c-\x3c\x3e-\x7e]|\+[0-9A-F]{2})*\Z")
_XTEXT_HEX = re.compile(r"\+([0-9A-F]{2})")
_ADDR_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_ENVID_MAX = 100  # RFC 3461 section 4.4
_ORCPT_MAX = 500  # RFC 3461 section 4.2


class DsnError(SlimtaError, ValueError):
    """A DSN parameter of ``MAIL FROM`` or ``RCPT TO`` is malformed.

    The message names the parameter and the problem; an SMTP server answers
    it with ``501 5.5.4``.
    """


@dataclasses.dataclass
class RecipientDsn:
    """What one recipient's sender asked to be told (``RCPT TO`` parameters).

    Attributes:
        notify: The ``NOTIFY`` keywords, upper case: ``{'NEVER'}`` or a
            subset of ``{'SUCCESS', 'FAILURE', 'DELAY'}``; ``None`` when the
            parameter was not given (RFC 3461: failures only).
        orcpt: The ``ORCPT`` value as ``(addr_type, address)`` with the
            address already xtext-decoded, e.g. ``('rfc822', 'a@b.example')``;
            ``None`` when not given.
    """

    notify: frozenset[str] | None = None
    orcpt: tuple[str, str] | None = None

    def wants(self, action: str) -> bool:
        """Tell whether a notice with this ``Action`` was asked for.

        Args:
            action: One of :data:`ACTIONS`.

        Returns:
            ``True`` when a notice should be sent for this recipient.

        Raises:
            DsnError: ``action`` is not one of :data:`ACTIONS`.
        """
        keyword = _ACTION_KEYWORD.get(action)
        if keyword is None:
            raise DsnError(f"unknown DSN action {action!r}; expected one of {', '.join(ACTIONS)}")
        if self.notify is None:
            return keyword == "FAILURE"
        return keyword in self.notify


@dataclasses.dataclass
class EnvelopeDsn:
    """The DSN request of one envelope (``MAIL FROM`` parameters and recipients).

    Attributes:
        ret: ``'FULL'``, ``'HDRS'``, or ``None`` when not given.
        envid: The decoded ``ENVID``, or ``None``.
        recipients: :class:`RecipientDsn` per recipient address, keyed by the
            address as it appears in :attr:`Envelope.recipients`.
    """

    ret: str | None = None
    envid: str | None = None
    recipients: dict[str, RecipientDsn] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the request as plain JSON-compatible data, for storage."""
        rcpts: dict[str, Any] = {}
        for addr, rdsn in self.recipients.items():
            rcpts[addr] = {
                "notify": None if rdsn.notify is None else sorted(rdsn.notify),
                "orcpt": None if rdsn.orcpt is None else list(rdsn.orcpt),
            }
        return {"ret": self.ret, "envid": self.envid, "recipients": rcpts}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnvelopeDsn:
        """Rebuild a request saved with :meth:`to_dict`.

        Args:
            data: The mapping :meth:`to_dict` returned.

        Returns:
            A new :class:`EnvelopeDsn`.

        Raises:
            DsnError: ``data`` does not have the expected shape.
        """
        try:
            rcpts = {}
            for addr, item in dict(data.get("recipients") or {}).items():
                notify = item.get("notify")
                orcpt = item.get("orcpt")
                rcpts[str(addr)] = RecipientDsn(
                    notify=None if notify is None else frozenset(str(word) for word in notify),
                    orcpt=None if orcpt is None else (str(orcpt[0]), str(orcpt[1])),
                )
            ret = data.get("ret")
            envid = data.get("envid")
        except (AttributeError, TypeError, IndexError, ValueError) as exc:
            raise DsnError(f"stored DSN data is malformed: {exc}") from exc
        return cls(
            ret=None if ret is None else str(ret),
            envid=None if envid is None else str(envid),
            recipients=rcpts,
        )


def xtext_decode(value: str) -> str:
    """Decode an RFC 3461 ``xtext`` value (``+2B`` stands for ``+``).

    Args:
        value: The encoded text.

    Returns:
        The decoded text.

    Raises:
        DsnError: ``value`` is not valid xtext.
    """
    if not _XTEXT.match(value):
        raise DsnError(f"not valid xtext: {value!r}")
    return _XTEXT_HEX.sub(lambda m: chr(int(m.group(1), 16)), value)


def xtext_encode(value: str) -> str:
    """Encode text as RFC 3461 ``xtext``.

    Printable ASCII other than ``+`` and ``=`` is kept; every other
    character is written as ``+XX`` per UTF-8 byte.

    Args:
        value: The text to encode.

    Returns:
        The xtext form.
    """
    out = []
    for byte in value.encode("utf-8"):
        if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D):
            out.append(chr(byte))
        else:
            out.append(f"+{byte:02X}")
    return "".join(out)


def _params(params: Mapping[str, str | None] | None) -> dict[str, str | None]:
    """Upper-case the keywords of an SMTP parameter mapping."""
    return {key.upper(): value for key, value in (params or {}).items()}


def parse_mail_params(params: Mapping[str, str | None] | None) -> EnvelopeDsn:
    """Read the DSN parameters of a ``MAIL FROM`` command.

    Keywords other than ``RET`` and ``ENVID`` are ignored.

    Args:
        params: The command's parameters, keyword to value (``None`` for a
            keyword given without ``=value``); keywords in any case.

    Returns:
        A new :class:`EnvelopeDsn` with no recipients yet.

    Raises:
        DsnError: ``RET`` is not ``FULL`` or ``HDRS``, or ``ENVID`` is not
            valid xtext of at most 100 characters.
    """
    found = _params(params)
    ret = found.get("RET")
    if "RET" in found:
        if ret is None or ret.upper() not in ("FULL", "HDRS"):
            raise DsnError(f"RET must be FULL or HDRS, not {ret!r}")
        ret = ret.upper()
    envid = found.get("ENVID")
    if "ENVID" in found:
        if not envid or len(envid) > _ENVID_MAX:
            raise DsnError(f"ENVID must be 1 to {_ENVID_MAX} characters of xtext")
        envid = xtext_decode(envid)
        if _CONTROL.search(envid):
            raise DsnError("ENVID must not hold control characters")
    return EnvelopeDsn(ret=ret, envid=envid)


def parse_rcpt_params(params: Mapping[str, str | None] | None) -> RecipientDsn | None:
    """Read the DSN parameters of a ``RCPT TO`` command.

    Keywords other than ``NOTIFY`` and ``ORCPT`` are ignored.

    Args:
        params: The command's parameters, as for :func:`parse_mail_params`.

    Returns:
        A :class:`RecipientDsn`, or ``None`` when neither parameter was given.

    Raises:
        DsnError: ``NOTIFY`` is not ``NEVER`` or a list of ``SUCCESS``,
            ``FAILURE`` and ``DELAY``, or ``ORCPT`` is not
            ``addr-type;xtext`` of at most 500 characters.
    """
    found = _params(params)
    if "NOTIFY" not in found and "ORCPT" not in found:
        return None
    notify: frozenset[str] | None = None
    if "NOTIFY" in found:
        raw = found["NOTIFY"] or ""
        words = [word.strip().upper() for word in raw.split(",")]
        if words == ["NEVER"]:
            notify = frozenset(words)
        elif not words or any(word not in _NOTIFY_WORDS for word in words):
            raise DsnError(f"NOTIFY must be NEVER or a list of SUCCESS, FAILURE, DELAY; not {raw!r}")
        else:
            notify = frozenset(words)
    orcpt: tuple[str, str] | None = None
    if "ORCPT" in found:
        raw = found["ORCPT"] or ""
        addr_type, sep, encoded = raw.partition(";")
        if not sep or not _ADDR_TYPE.match(addr_type) or not encoded or len(raw) > _ORCPT_MAX:
            raise DsnError(f"ORCPT must be addr-type;xtext of at most {_ORCPT_MAX} characters")
        address = xtext_decode(encoded)
        if _CONTROL.search(address):
            raise DsnError("ORCPT must not hold control characters")
        orcpt = (addr_type.lower(), address)
    return RecipientDsn(notify=notify, orcpt=orcpt)


def get_dsn(envelope: object) -> EnvelopeDsn | None:
    """Return the DSN request stored on an envelope, or ``None``."""
    dsn = getattr(envelope, "dsn", None)
    return dsn if isinstance(dsn, EnvelopeDsn) else None


def set_dsn(envelope: object, dsn: EnvelopeDsn | None) -> None:
    """Store (or with ``None``, remove) the DSN request of an envelope.

    Args:
        envelope: The :class:`~slimta.envelope.Envelope`.
        dsn: The request, usually from :func:`parse_mail_params`.
    """
    if dsn is None:
        if hasattr(envelope, "dsn"):
            delattr(envelope, "dsn")
        return
    envelope.dsn = dsn  # type: ignore[attr-defined]


def set_recipient_dsn(envelope: object, recipient: str, rdsn: RecipientDsn | None) -> None:
    """Store the DSN request of one recipient.

    An :class:`EnvelopeDsn` is created on the envelope if it has none.

    Args:
        envelope: The :class:`~slimta.envelope.Envelope`.
        recipient: The recipient address as in ``envelope.recipients``.
        rdsn: The request, usually from :func:`parse_rcpt_params`; ``None``
            removes any stored one.
    """
    dsn = get_dsn(envelope)
    if rdsn is None:
        if dsn is not None:
            dsn.recipients.pop(recipient, None)
        return
    if dsn is None:
        dsn = EnvelopeDsn()
        set_dsn(envelope, dsn)
    dsn.recipients[recipient] = rdsn


def get_recipient_dsn(envelope: object, recipient: str) -> RecipientDsn | None:
    """Return the DSN request of one recipient, or ``None``.

    The address is looked up exactly, then ignoring case.
    """
    dsn = get_dsn(envelope)
    if dsn is None:
        return None
    found = dsn.recipients.get(recipient)
    if found is None:
        folded = recipient.casefold()
        found = next((r for a, r in dsn.recipients.items() if a.casefold() == folded), None)
    return found


def _null_sender(envelope: object) -> bool:
    sender = getattr(envelope, "sender", None)
    return not sender or not str(sender).strip("<> ")


def should_bounce(envelope: object, recipient: str, action: str = "failed") -> bool:
    """Tell whether an event for one recipient should produce a notice.

    The rules: a message from the null sender (a notice itself) never gets
    one; ``NOTIFY=NEVER`` gets none; without ``NOTIFY`` only ``"failed"``
    does; otherwise the keyword for the action must have been listed
    (``FAILURE`` for ``"failed"``, ``DELAY`` for ``"delayed"``, ``SUCCESS``
    for ``"delivered"``, ``"relayed"`` and ``"expanded"``).

    Args:
        envelope: The original :class:`~slimta.envelope.Envelope`.
        recipient: The recipient the event is about.
        action: One of :data:`ACTIONS`.

    Returns:
        ``True`` when a notice should be generated.

    Raises:
        DsnError: ``action`` is not one of :data:`ACTIONS`.
    """
    rdsn = get_recipient_dsn(envelope, recipient) or RecipientDsn()
    wanted = rdsn.wants(action)
    return wanted and not _null_sender(envelope)


def recipients_to_notify(envelope: object, recipients: Iterable[str], action: str = "failed") -> list[str]:
    """Filter recipients down to those whose event should produce a notice.

    Args:
        envelope: The original :class:`~slimta.envelope.Envelope`.
        recipients: The recipients the event is about.
        action: One of :data:`ACTIONS`.

    Returns:
        The recipients for which :func:`should_bounce` is true, in order.
    """
    return [rcpt for rcpt in recipients if should_bounce(envelope, rcpt, action)]


def return_headers_only(envelope: object) -> bool:
    """Tell whether the sender asked for headers only (``RET=HDRS``)."""
    dsn = get_dsn(envelope)
    return dsn is not None and dsn.ret == "HDRS"


def mail_params(envelope: object) -> dict[str, str]:
    """Return the DSN parameters to pass on with ``MAIL FROM``.

    Args:
        envelope: The :class:`~slimta.envelope.Envelope` being relayed.

    Returns:
        ``{'RET': ..., 'ENVID': ...}`` with the values present, ENVID
        xtext-encoded; empty when there is no request.
    """
    dsn = get_dsn(envelope)
    out: dict[str, str] = {}
    if dsn is None:
        return out
    if dsn.ret:
        out["RET"] = dsn.ret
    if dsn.envid:
        out["ENVID"] = xtext_encode(dsn.envid)
    return out


def rcpt_params(envelope: object, recipient: str) -> dict[str, str]:
    """Return the DSN parameters to pass on with ``RCPT TO``.

    Args:
        envelope: The :class:`~slimta.envelope.Envelope` being relayed.
        recipient: The recipient.

    Returns:
        ``{'NOTIFY': ..., 'ORCPT': ...}`` with the values present (NOTIFY
        keywords in a fixed order, ORCPT xtext-encoded); empty when there
        is no request for this recipient.
    """
    rdsn = get_recipient_dsn(envelope, recipient)
    out: dict[str, str] = {}
    if rdsn is None:
        return out
    if rdsn.notify is not None:
        order = ("NEVER", "SUCCESS", "FAILURE", "DELAY")
        out["NOTIFY"] = ",".join(word for word in order if word in rdsn.notify)
    if rdsn.orcpt is not None:
        out["ORCPT"] = f"{rdsn.orcpt[0]};{xtext_encode(rdsn.orcpt[1])}"
    return out
