"""Building relays from ``[[relay]]`` tables, for :mod:`slimta.app.build`.

:func:`build_relay` and its helpers: which relay class each ``type`` names,
and how the table's keys become its arguments (TLS contexts, timeouts, the
smarthost password).  They depend on nothing but a relay's own section and
the node's hostname, unlike the queue, edge and reload machinery of
:mod:`slimta.app.build`, so they live apart; :mod:`slimta.app.build`
re-exports :func:`build_relay` and is its public home.
"""

from __future__ import annotations

import ssl
from typing import TYPE_CHECKING, Any

from slimta.core import SlimtaError

if TYPE_CHECKING:
    from slimta.app.config import Config, Section
    from slimta.relay import Relay

__all__ = ["build_relay"]


# -- relays -------------------------------------------------------------------


def _client_context(section: Section) -> ssl.SSLContext:
    if section["tls_verify"]:
        return ssl.create_default_context(cafile=section["tls_ca_file"] or None)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _smtp_client_kwargs(section: Section, config: Config) -> dict[str, Any]:
    return {
        "ehlo_as": section["ehlo_as"] or config.hostname,
        "connect_timeout": section["connect_timeout"] or None,
        "command_timeout": section["command_timeout"] or None,
        "data_timeout": section["data_timeout"] or None,
        "idle_timeout": section["idle_timeout"] or None,
    }


def build_relay(section: Section, config: Config) -> Relay:
    """Create the relay a ``[[relay]]`` table describes."""
    kind = section["type"]
    pool_size = section.values.get("pool_size") or None
    if kind == "mx":
        from slimta.relay.smtp.mx import MxSmtpRelay

        # Between MTAs TLS is opportunistic unless required (RFC 3207 4).
        context = _client_context(section) if section["tls_required"] else None
        kwargs = _smtp_client_kwargs(section, config)
        return MxSmtpRelay(
            context=context, tls_required=section["tls_required"], pool_size=pool_size, **kwargs
        )
    if kind == "static":
        from slimta.relay.smtp.static import StaticSmtpRelay

        kwargs = _smtp_client_kwargs(section, config)
        if section["auth_user"]:
            kwargs["credentials"] = (section["auth_user"], _read_secret(section))
        return StaticSmtpRelay(
            section["host"],
            section["port"],
            pool_size,
            context=_client_context(section),
            tls_required=section["tls_required"],
            tls_immediately=section["tls_immediately"],
            **kwargs,
        )
    if kind == "lmtp":
        from slimta.relay.smtp.static import StaticLmtpRelay

        return StaticLmtpRelay(
            section["host"], section["port"], pool_size, **_smtp_client_kwargs(section, config)
        )
    if kind == "http":
        from slimta.relay.http import HttpRelay

        return HttpRelay(
            section["url"],
            pool_size,
            context=_client_context(section),
            ehlo_as=section["ehlo_as"] or config.hostname,
            timeout=section["timeout"] or None,
        )
    return _build_local_relay(section)


def _build_local_relay(section: Section) -> Relay:
    kind = section["type"]
    if kind == "pipe":
        from slimta.relay.pipe import PipeRelay

        return PipeRelay(section["args"], section["timeout"] or None, per_recipient=section["per_recipient"])
    if kind in ("maildrop", "dovecot"):
        from slimta.relay.pipe import DovecotLdaRelay, MaildropRelay

        cls = MaildropRelay if kind == "maildrop" else DovecotLdaRelay
        try:
            return cls(section["program"] or None, section["timeout"] or None, section["extra_args"])
        except (OSError, SlimtaError) as exc:
            raise section.error("program", str(exc)) from exc
    if kind == "maildir":
        from slimta.relay.maildir import MaildirRelay

        return MaildirRelay(section["path"], create=section["create"])
    from slimta.relay.blackhole import BlackholeRelay

    return BlackholeRelay()


def _read_secret(section: Section) -> str:
    path = section["auth_password_file"]
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError as exc:
        raise section.error("auth_password_file", f"cannot read {path!r}: {exc}") from exc
