"""A queue policy driven by lookup records: aliases, VERP and added headers.

:class:`LookupPolicy` looks up each recipient (and, if asked, the sender)
with :meth:`~slimta.lookup.drivers.LookupBase.lookup_address` and applies
the fields of the record it finds, in this order:

``verp``
    A domain: the address is encoded as ``localpart=domain@verp-domain``
    (variable envelope return path), so a bounce to it names the original
    address.
``alias``
    The replacement address.  ``{localpart}`` and ``{domain}`` in it are
    filled from the address being rewritten; an alias without ``@`` is a
    domain, and the local part is kept (``alice@old.example`` with alias
    ``new.example`` becomes ``alice@new.example``).
``add_headers``
    Header fields to put in front of the message: a mapping, or a string
    holding a JSON object.  Anything else (invalid JSON included) is
    ignored.  Existing fields are kept.

The null sender (``<>``, the sender of bounces) is never looked up or
rewritten, so a record cannot turn bounces into mail that can bounce.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

from slimta.lookup.drivers import fill_template
from slimta.policy import QueuePolicy

if TYPE_CHECKING:
    from slimta.envelope import Envelope
    from slimta.lookup.drivers import LookupBase

__all__ = ["LookupPolicy"]

_log = logging.getLogger(__name__)


def _split(address: str) -> tuple[str, str]:
    localpart, _, domain = address.rpartition("@")
    return localpart, domain


class LookupPolicy(QueuePolicy):
    """Rewrite envelope addresses and add headers from lookup records.

    Add it with :meth:`slimta.queue.Queue.add_policy`.

    Args:
        lookup: The lookup driver.
        on_sender: Look up the sender and apply its record.
        on_rcpts: Look up every recipient and apply its record.
    """

    def __init__(self, lookup: LookupBase, on_sender: bool = False, on_rcpts: bool = True) -> None:
        self.lookup = lookup
        self.on_sender = on_sender
        self.on_rcpts = on_rcpts

    @staticmethod
    def _verp_enc(address: str, on_domain: str) -> str:
        localpart, domain = _split(address)
        if localpart:
            return f"{localpart}={domain}@{on_domain}"
        return f"{domain}@{on_domain}"

    @staticmethod
    def _get_alias(address: str, alias: str) -> str:
        localpart, domain = _split(address)
        alias = fill_template(alias, {"localpart": localpart, "domain": domain})
        if "@" in alias or not localpart:
            return alias
        return f"{localpart}@{alias}"

    @staticmethod
    def _add_headers(envelope: Envelope, headers_raw: Any) -> None:
        headers = headers_raw
        if isinstance(headers_raw, (str, bytes)):
            try:
                headers = json.loads(headers_raw)
            except ValueError:
                _log.warning("add_headers is not valid JSON; ignored")
                return
        if not isinstance(headers, dict):
            _log.warning("add_headers is not a JSON object; ignored")
            return
        for name, value in headers.items():
            envelope.prepend_header(str(name), str(value))

    def _rewrite(self, envelope: Envelope, address: str) -> str:
        """Apply the record for ``address``; return the (new) address."""
        record = self.lookup.lookup_address(address) or {}
        if not hasattr(record, "get"):
            return address
        verp = record.get("verp")
        if verp:
            address = self._verp_enc(address, str(verp))
        alias = record.get("alias")
        if alias:
            address = self._get_alias(address, str(alias))
        if record.get("add_headers") is not None:
            self._add_headers(envelope, record["add_headers"])
        return address

    def apply(self, envelope: Envelope) -> None:
        """Apply the records of the envelope's addresses to it, in place."""
        if self.on_sender and envelope.sender:
            envelope.sender = self._rewrite(envelope, envelope.sender)
        if self.on_rcpts:
            envelope.recipients = [self._rewrite(envelope, rcpt) for rcpt in envelope.recipients]
