"""The ``slimta`` command: a mail server from one configuration file.

.. versionadded:: 0.1.0

Subcommands (``slimta COMMAND --help`` for each one's options):

* ``run``: start the node (foreground, or ``--daemon``);
* ``check-config``: check the configuration and print it, defaults filled in;
* ``queue list|show ID|retry ID|delete ID|flush|stats``: manage the queue;
* ``passwd``: make a hash for the credentials file;
* ``send``: submit a test message.

Without ``-c`` (or ``SLIMTA_CONFIG``) every subcommand uses the embedded
default, :data:`slimta.app.config.DEFAULT_CONFIG`.  Exit status 2 means the
configuration (or the command line) is wrong; 1 another failure.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="slimta", description="A mail transfer agent on gevent.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_config(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument(
            "-c",
            "--config",
            default=os.environ.get("SLIMTA_CONFIG"),
            metavar="FILE",
            help="TOML configuration (default: $SLIMTA_CONFIG, else the embedded default)",
        )
        return p

    run = with_config(sub.add_parser("run", help="start the mail server"))
    run.add_argument("--daemon", action="store_true", help="detach from the terminal")
    check = with_config(sub.add_parser("check-config", help="check and print the configuration"))
    check.add_argument("-q", "--quiet", action="store_true", help="print nothing when it is valid")
    queue = with_config(sub.add_parser("queue", help="inspect and manage the queue"))
    queue.add_argument("action", choices=["list", "show", "retry", "delete", "flush", "stats"])
    queue.add_argument("id", nargs="?", help="message id (show, retry, delete)")
    queue.add_argument("--queue", dest="queue_name", metavar="NAME", help="only this queue")
    queue.add_argument("--json", action="store_true", help="machine-readable output")
    passwd = sub.add_parser("passwd", help="make a hash for the credentials file")
    passwd.add_argument("user", help="the user name")
    passwd.add_argument("-f", "--file", metavar="FILE", help="add the line to this credentials file")
    passwd.add_argument("--stdin", action="store_true", help="read the password from standard input")
    send = with_config(sub.add_parser("send", help="submit a test message"))
    send.add_argument("--server", metavar="HOST:PORT", help="default: the first SMTP edge")
    send.add_argument("--from", dest="sender", default="", metavar="ADDRESS")
    send.add_argument("--to", action="append", required=True, metavar="ADDRESS")
    send.add_argument("--subject", default="test message from slimta send")
    send.add_argument("--body", default="This is a test message.\n")
    send.add_argument("--file", metavar="FILE", help="send this message file as it is ('-': stdin)")
    tls = send.add_mutually_exclusive_group()
    tls.add_argument("--starttls", action="store_true")
    tls.add_argument("--tls", action="store_true", help="implicit TLS")
    send.add_argument("--user", metavar="NAME", help="AUTH as NAME (password: $SLIMTA_PASSWORD)")
    send.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    send.add_argument("--cafile", metavar="FILE", help="trust this CA bundle")
    send.add_argument("--timeout", type=float, default=30.0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``slimta`` command; return its exit status."""
    args = _parser().parse_args(argv)
    if args.command == "passwd":
        from slimta.app import passwd

        return passwd.main(args.user, args.file, args.stdin)
    from slimta.app.config import ConfigError, dump_config
    from slimta.app.run import read_config, run

    if args.command == "run":
        return run(args.config, args.daemon)
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        sys.stderr.write(f"slimta: {exc}\n")
        return 2
    if args.command == "check-config":
        if not args.quiet:
            sys.stdout.write(dump_config(config))
        return 0
    if args.command == "queue":
        from slimta.app import queuecmd

        if args.action in ("show", "retry", "delete") and not args.id:
            sys.stderr.write(f"slimta queue {args.action}: needs a message id\n")
            return 2
        return queuecmd.main(config, args.action, args.id, args.queue_name, args.json)
    from slimta.app import send

    smtp = [edge for edge in config.edges if edge["type"] == "smtp"]
    return send.main(args, smtp[0]["listen"][0] if smtp else "127.0.0.1:2525")
