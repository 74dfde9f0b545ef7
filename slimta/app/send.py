"""``slimta send``: submit a test message to a running node.

.. versionadded:: 0.1.0

A small SMTP client on :mod:`smtplib` (a separate implementation from
slimta's own, which makes it a fair test of the node): plain, STARTTLS or
implicit TLS, with AUTH when ``--user`` is given (the password comes from
the ``SLIMTA_PASSWORD`` environment variable or the terminal).
"""

from __future__ import annotations

import argparse
import email.policy
import email.utils
import getpass
import os
import re
import smtplib
import ssl
import sys
from email.message import EmailMessage

__all__ = ["build_message", "main"]


def build_message(args: argparse.Namespace) -> bytes:
    """The message to send: ``--file`` as it is, or one built from the options."""
    if args.file:
        if args.file == "-":
            raw = sys.stdin.buffer.read()
        else:
            with open(args.file, "rb") as fh:
                raw = fh.read()
        # smtplib sends bytes as they are; SMTP wants CRLF line endings.
        return re.sub(rb"\r?\n", b"\r\n", raw)
    msg = EmailMessage()
    msg["From"] = args.sender or "slimta-send@localhost"
    msg["To"] = ", ".join(args.to)
    msg["Subject"] = args.subject
    msg["Date"] = email.utils.formatdate(localtime=True)
    msg["Message-ID"] = email.utils.make_msgid(domain="slimta-send.invalid")
    msg.set_content(args.body)
    return msg.as_bytes(policy=email.policy.SMTP)


def _context(args: argparse.Namespace) -> ssl.SSLContext:
    if args.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=args.cafile)


def main(args: argparse.Namespace, default_server: str) -> int:
    """Run ``slimta send``; return 0 when the node accepted the message."""
    from slimta.app.config import parse_address

    try:
        host, port = parse_address(args.server or default_server)
    except ValueError as exc:
        sys.stderr.write(f"slimta send: {exc}\n")
        return 2
    data = build_message(args)
    try:
        client = (
            smtplib.SMTP_SSL(host, port, timeout=args.timeout, context=_context(args))
            if args.tls
            else smtplib.SMTP(host, port, timeout=args.timeout)
        )
        with client:
            client.ehlo()
            if args.starttls:
                client.starttls(context=_context(args))
                client.ehlo()
            if args.user:
                password = os.environ.get("SLIMTA_PASSWORD") or getpass.getpass(f"password for {args.user}: ")
                client.login(args.user, password)
            refused = client.sendmail(args.sender or "slimta-send@localhost", args.to, data)
    except smtplib.SMTPResponseException as exc:
        text = (
            exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else exc.smtp_error
        )
        sys.stderr.write(f"slimta send: {exc.smtp_code} {text}\n")
        return 1
    except smtplib.SMTPRecipientsRefused as exc:
        for rcpt, (code, reason) in exc.recipients.items():
            sys.stderr.write(f"slimta send: {rcpt}: {code} {reason.decode(errors='replace')}\n")
        return 1
    except (smtplib.SMTPException, OSError) as exc:
        sys.stderr.write(f"slimta send: {exc}\n")
        return 1
    for rcpt, (code, reason) in refused.items():
        sys.stderr.write(f"slimta send: {rcpt}: {code} {reason.decode(errors='replace')}\n")
    sys.stdout.write(f"sent to {len(args.to) - len(refused)} recipient(s) via {host}:{port}\n")
    return 0
