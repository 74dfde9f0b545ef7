"""Delivery to a local program: a mail delivery agent or any command.

:class:`PipeRelay` starts a program for each delivery, writes the message to
its standard input and decides the outcome from its exit status and output,
much like Postfix's ``pipe(8)``.  :class:`MaildropRelay` and
:class:`DovecotLdaRelay` are ready-made variants for courier-maildrop and
Dovecot's LDA.

Theory of operation
-------------------

The command is a list of arguments, never a shell string: no shell ever sees
it, so nothing in an address or in the client's ``EHLO`` name can run a
command.  Each argument may hold macros (``{sender}``, ``{recipient}``...),
replaced by envelope values just before the program starts.  The arguments
are checked once, when the relay is built, so a misspelt macro fails at
start-up rather than on the first message.

A macro value could still change the meaning of an argument: a recipient
``-oQ/tmp@x`` alone in an argument looks like an option to most programs,
and a NUL byte cannot be passed to a program at all.  Delivery is refused
(:class:`~slimta.relay.PermanentRelayError`) when an argument would start
with ``-`` only because of a macro value, or when a value holds a NUL byte:
``5.1.3`` for a recipient, ``5.1.7`` for the sender, ``5.5.4`` for the other
values.  With ``per_recipient`` delivery only that recipient fails.

The program runs under gevent's :mod:`gevent.subprocess`, so it never blocks
the hub.  Three greenlets move data at the same time: one writes the message
to standard input, two read standard output and standard error.  Reading
both at once is what keeps a chatty program from filling a pipe and waiting
on us while we wait on it.  Only the first :data:`OUTPUT_LIMIT` bytes of each
stream are kept (for error messages); the rest is read and thrown away, so a
program writing gigabytes costs no memory.  A program that does not read its
input (it exits first, or ignores it) is not an error.

The program runs in a process group of its own (unless ``popen_kwargs``
say otherwise).  When ``timeout`` passes, the whole group is killed
(``SIGKILL``), so no grandchild survives holding the pipes open, and the
attempt fails with ``450 4.4.2``: the queue retries it later.  A program that
cannot be started at all (``ENOENT``, ``EACCES``...) fails with ``450
4.3.0`` and a message that names it: the administrator can install or fix it
and the queued mail goes out on the next attempt.

This module builds the arguments and maps the outcome; running the program
(spawning, the pipes, the timeout and the kill) is the private
``slimta.relay._process``.

Exit status and output
----------------------

=========================================  ==================================
program result                             outcome
=========================================  ==================================
exit 0                                     delivered (output ignored)
output starts with ``4.X.X`` / ``5.X.X``   ``450`` / ``550`` with that code
exit 75 (``EX_TEMPFAIL``)                  ``450 4.3.0`` (retried)
killed by a signal                         ``450 4.3.0`` (retried)
exit 67 (``EX_NOUSER``)                    ``550 5.1.1``
exit 68 (``EX_NOHOST``)                    ``550 5.1.2``
any other non-zero exit                    ``550 5.3.0`` (bounced)
=========================================  ==================================

"Output" is standard output, or standard error when standard output is
empty; its text (whitespace collapsed, cut at :data:`MESSAGE_LIMIT`
characters) becomes the reply message.  Subclasses change all of this by
overriding :meth:`PipeRelay.raise_error`.

Line endings
------------

The message is written with LF line endings by default, as local delivery
agents (maildrop, dovecot-lda, procmail) and Unix mailbox formats expect.
Pass ``crlf=True`` to write it with the CRLF line endings of SMTP instead.

.. versionadded:: 0.1.0
   ``{message_id}``, ``per_recipient``, ``crlf`` and the ``EX_NOUSER`` and
   output-code mappings are additions to python-slimta 4.0, whose
   ``{recipient}`` macro only ever delivered to the first recipient.
"""

from __future__ import annotations

import os
import re
import shutil
import string
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NoReturn

from slimta.envelope import EnvelopeError
from slimta.logging import getSubprocessLogger
from slimta.relay import PermanentRelayError, Relay, RelayError, TransientRelayError
from slimta.relay._process import FORBIDDEN_POPEN_KWARGS, run
from slimta.smtp.reply import Reply

if TYPE_CHECKING:
    from slimta.envelope import Envelope

__all__ = [
    "EX_NOHOST",
    "EX_NOUSER",
    "EX_TEMPFAIL",
    "MACROS",
    "MESSAGE_LIMIT",
    "OUTPUT_LIMIT",
    "DovecotLdaRelay",
    "MaildropRelay",
    "PipeRelay",
]

log = getSubprocessLogger(__name__)

#: ``sysexits.h``: temporary failure, try again later.
EX_TEMPFAIL = 75
#: ``sysexits.h``: the recipient's user does not exist.
EX_NOUSER = 67
#: ``sysexits.h``: the recipient's host (domain) is unknown.
EX_NOHOST = 68
#: Bytes of standard output and of standard error kept for error messages.
OUTPUT_LIMIT = 64 * 1024
#: Characters of program output put in a reply message.
MESSAGE_LIMIT = 512

#: Macros that may appear in the arguments, in braces.
MACROS = frozenset(
    {
        "sender",
        "recipient",
        "message_id",
        "client_ip",
        "client_host",
        "client_ehlo",
        "client_protocol",
        "client_auth",
    }
)

# An RFC 3463 enhanced status code at the very start of the output.
_OUTPUT_ESC = re.compile(r"([45])\.[0-9]{1,3}\.[0-9]{1,3}(?=\s|\Z)")
_WHITESPACE = re.compile(r"\s+")
# maildrop starts its messages with its name as it was run ("maildrop: " or
# "/usr/bin/maildrop: ").
_MAILDROP_PREFIX = re.compile(r"\A\S*maildrop: *")
# Which envelope value failed a check -> the enhanced status code used.
_BAD_VALUE_ESC = {"recipient": "5.1.3", "sender": "5.1.7"}
# Exit statuses that name a permanent failure more precisely than 5.3.0.
_EXIT_ESC = {EX_NOUSER: "5.1.1", EX_NOHOST: "5.1.2"}

# One argument, split into (literal text, macro name or None) pieces.
_Template = tuple[tuple[str, str | None], ...]


def _compile_arg(arg: str) -> _Template:
    """Split one argument into literal text and macro names, checking them.

    ``{{`` and ``}}`` stand for literal braces, as with :meth:`str.format`.
    Only bare macro names are allowed: no attribute or index access, no
    conversion and no format spec, so a template cannot reach into objects.
    """
    if not isinstance(arg, str):
        raise TypeError(f"PipeRelay arguments must be str, not {type(arg).__name__}")
    pieces: list[tuple[str, str | None]] = []
    try:
        parsed = list(string.Formatter().parse(arg))
    except ValueError as exc:
        raise ValueError(f"bad macro syntax in argument {arg!r}: {exc}") from exc
    for literal, field, spec, conversion in parsed:
        if field is not None and (field not in MACROS or spec or conversion):
            raise ValueError(f"unknown macro {{{field}}} in argument {arg!r}; known: {sorted(MACROS)}")
        pieces.append((literal, field))
    return tuple(pieces)


def _first_text(stdout: str, stderr: str) -> str:
    """The output to report: stdout, else stderr, on one line and cut short."""
    text = stdout.strip() or stderr.strip()
    return _WHITESPACE.sub(" ", text)[:MESSAGE_LIMIT]


def _decode(data: bytes) -> str:
    return data.decode("utf-8", "replace")


class PipeRelay(Relay):
    """Deliver by running a program with the message on its standard input.

    Each argument in ``args`` may contain macros in braces, replaced with
    the envelope's values (an unknown value, such as a missing client IP,
    becomes the empty string):

    * ``{sender}``: the envelope sender (empty for the null sender);
    * ``{recipient}``: one recipient (see ``per_recipient``);
    * ``{message_id}``: the ``Message-Id`` header as written, or empty;
    * ``{client_ip}``, ``{client_host}``: the client's IP address and its
      reverse DNS name;
    * ``{client_ehlo}``: the name the client gave in ``EHLO``/``HELO``;
    * ``{client_protocol}``: e.g. ``ESMTPS``;
    * ``{client_auth}``: the identity the client authenticated as.

    Write ``{{`` and ``}}`` for literal braces.  The exit status and output
    of the program decide the outcome, as the module documentation's table
    shows; override :meth:`raise_error` to change that.

    Args:
        args: The program and its arguments, as for
            :class:`subprocess.Popen`; never run through a shell.
        timeout: Seconds one run of the program may take before it is
            killed and the attempt fails with ``450 4.4.2``; ``None`` for no
            limit.
        per_recipient: Run the program once per recipient and report each
            recipient's outcome separately.  ``None`` (the default) turns it
            on exactly when an argument uses ``{recipient}``.  When it is
            off, ``{recipient}`` is the first recipient.
        crlf: Write the message with CRLF line endings instead of LF.
        **popen_kwargs: Passed on to :class:`gevent.subprocess.Popen`
            (``env``, ``cwd``, ``user``...).  ``stdin``, ``stdout``,
            ``stderr``, ``shell`` and the text-mode arguments are refused.

    Raises:
        TypeError: ``args`` is a string, or a forbidden keyword is given.
        ValueError: ``args`` is empty or uses an unknown macro.

    Attributes:
        args: The argument templates, as given.
        timeout: The time limit of one run.
        per_recipient: Whether the program runs once per recipient.
        crlf: Whether the message is written with CRLF line endings.
        popen_kwargs: The extra :class:`~gevent.subprocess.Popen` arguments.
    """

    #: Output starting with a ``5.X.X`` enhanced status code (kept from 4.0;
    #: :meth:`raise_error` also honours ``4.X.X``).
    permanent_error_pattern = re.compile(r"^5\.\d{1,3}\.\d{1,3}\s")
    #: The exit status that means "try again later".
    EX_TEMPFAIL = EX_TEMPFAIL

    def __init__(
        self,
        args: Sequence[str],
        timeout: float | None = None,
        *,
        per_recipient: bool | None = None,
        crlf: bool = False,
        **popen_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(args, str | bytes):
            raise TypeError("PipeRelay args must be a list of arguments, not a string")
        forbidden = FORBIDDEN_POPEN_KWARGS.intersection(popen_kwargs)
        if forbidden:
            raise TypeError(f"PipeRelay does not accept these Popen arguments: {sorted(forbidden)}")
        self.args: list[str] = list(args)
        if not self.args:
            raise ValueError("PipeRelay needs at least the program to run")
        self._templates = [_compile_arg(arg) for arg in self.args]
        uses_recipient = any(field == "recipient" for tmpl in self._templates for _, field in tmpl)
        self.per_recipient: bool = uses_recipient if per_recipient is None else bool(per_recipient)
        self.timeout = timeout
        self.crlf = crlf
        self.popen_kwargs: dict[str, Any] = popen_kwargs

    # -- arguments ----------------------------------------------------------

    def _macros(self, envelope: Envelope, recipient: str) -> dict[str, str]:
        client = envelope.client or {}

        def value(key: str) -> str:
            item = client.get(key)
            return "" if item is None else str(item)

        message_id = envelope.headers.get("Message-Id") if envelope.headers is not None else None
        return {
            "sender": envelope.sender or "",
            "recipient": recipient,
            "message_id": str(message_id).strip() if message_id is not None else "",
            "client_ip": value("ip"),
            "client_host": value("host"),
            "client_ehlo": value("name"),
            "client_protocol": value("protocol"),
            "client_auth": value("auth"),
        }

    def _process_args(self, envelope: Envelope, recipient: str | None = None) -> list[str]:
        """Build the argument list for one run of the program.

        Raises:
            PermanentRelayError: A macro value holds a NUL byte, or would
                make an argument start with ``-``.
        """
        if recipient is None:
            recipient = envelope.recipients[0] if envelope.recipients else ""
        macros = self._macros(envelope, recipient)
        result = []
        for template in self._templates:
            parts = []
            for literal, field in template:
                parts.append(literal)
                if field is not None:
                    parts.append(self._checked(field, macros[field], leading=not "".join(parts)))
            result.append("".join(parts))
        return result

    @staticmethod
    def _checked(field: str, value: str, *, leading: bool) -> str:
        esc = _BAD_VALUE_ESC.get(field, "5.5.4")
        if "\0" in value:
            msg = f"The {field} contains a NUL byte and cannot be passed to the delivery program"
            raise PermanentRelayError(msg, Reply("550", f"{esc} {msg}"))
        if leading and value.startswith("-"):
            msg = f"The {field} {value!r} starts with '-' and would be taken as an option"
            raise PermanentRelayError(msg, Reply("550", f"{esc} {msg}"))
        return value

    # -- running the program --------------------------------------------------

    def _message_data(self, envelope: Envelope) -> bytes:
        try:
            header_data, body_data = envelope.flatten()
        except EnvelopeError as exc:
            msg = f"The message cannot be written out: {exc}"
            raise PermanentRelayError(msg, Reply("550", f"5.6.0 {msg}")) from exc
        data = header_data + body_data
        # flatten() gives CRLF everywhere, so one replace makes it plain LF
        # (a bare CR in the body is left alone).
        return data if self.crlf else data.replace(b"\r\n", b"\n")

    def _exec_process(self, args: list[str], data: bytes) -> tuple[int, bytes, bytes]:
        """Run the program once; return its exit status and (clipped) output.

        The running itself (process group, pipes, timeout, kill) is
        ``slimta.relay._process.run``.

        Raises:
            TransientRelayError: The program could not be started, or it was
                killed at the timeout.
        """
        return run(
            args,
            data,
            timeout=self.timeout,
            popen_kwargs=self.popen_kwargs,
            output_limit=OUTPUT_LIMIT,
            log=log,
        )

    def _deliver_once(self, envelope: Envelope, args: list[str], data: bytes) -> None:
        status, stdout, stderr = self._exec_process(args, data)
        if status != 0:
            self.raise_error(status, _decode(stdout), _decode(stderr))

    # -- outcome ----------------------------------------------------------

    def raise_error(self, status: int, stdout: str, stderr: str) -> NoReturn:
        """Raise the relay error for a program that exited with ``status``.

        Called only for a non-zero exit status.  Override it to map a
        program's own conventions; the default follows the table in the
        module documentation.

        Args:
            status: The exit status; negative when the program was killed
                by a signal (``-9`` for ``SIGKILL``).
            stdout: The start of the program's standard output, decoded as
                UTF-8 (bad bytes replaced).
            stderr: The start of its standard error, decoded the same way.

        Raises:
            TransientRelayError: The delivery may work later.
            PermanentRelayError: The delivery will never work.
        """
        text = _first_text(stdout, stderr) or "Delivery failed"
        match = _OUTPUT_ESC.match(text)
        if match is not None:
            if match.group(1) == "5":
                raise PermanentRelayError(text, Reply("550", text))
            raise TransientRelayError(text, Reply("450", text))
        if status == self.EX_TEMPFAIL:
            raise TransientRelayError(text, Reply("450", f"4.3.0 {text}"))
        if status < 0:
            msg = f"{text} (killed by signal {-status})"
            raise TransientRelayError(msg, Reply("450", f"4.3.0 {msg}"))
        esc = _EXIT_ESC.get(status, "5.3.0")
        raise PermanentRelayError(text, Reply("550", f"{esc} {text}"))

    def attempt(self, envelope: Envelope, attempts: int) -> dict[str, RelayError | None] | None:
        """Run the program for ``envelope``.

        Args:
            envelope: The envelope to deliver.
            attempts: Ignored.

        Returns:
            ``None`` when the program ran once and succeeded.  With
            ``per_recipient``, a mapping from each recipient to ``None``
            (delivered) or the :class:`~slimta.relay.RelayError` of its run.

        Raises:
            TransientRelayError: The single run failed temporarily.
            PermanentRelayError: The single run failed for good.
        """
        data = self._message_data(envelope)
        if not self.per_recipient:
            self._deliver_once(envelope, self._process_args(envelope), data)
            return None
        results: dict[str, RelayError | None] = {}
        # One run per distinct recipient, one after the other: a program
        # that delivers into a mailbox rarely gains from running in
        # parallel, and this keeps one delivery to a few processes at most.
        for rcpt in dict.fromkeys(envelope.recipients):
            try:
                self._deliver_once(envelope, self._process_args(envelope, rcpt), data)
            except RelayError as exc:
                results[rcpt] = exc
            else:
                results[rcpt] = None
        return results


def _find_program(name: str, *fallbacks: str) -> str:
    """Find ``name`` on ``$PATH``, else the first fallback that exists."""
    found = shutil.which(name)
    if found:
        return found
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return path
    # Left to fail at delivery time with a clear "cannot run" error, so the
    # relay can be built on a machine where the program is installed later.
    return fallbacks[0] if fallbacks else name


class MaildropRelay(PipeRelay):
    """Deliver with courier-maildrop.

    The command is ``maildrop -f {sender}`` followed by ``extra_args`` (for
    example ``['-d', '{recipient}']``, which also makes delivery run once
    per recipient).  maildrop starts its errors with its own name
    (``maildrop: <text>``); that prefix is dropped from the reply.  Exit
    status 75 (``EX_TEMPFAIL``, used by maildrop for quota, lock and filter
    file problems) is a temporary failure, 67 an unknown user (``5.1.1``),
    anything else a permanent failure.

    Args:
        path: The ``maildrop`` program.  By default it is looked up on
            ``$PATH``, then at ``/usr/bin/maildrop``.
        timeout: Seconds one run may take; ``None`` for no limit.
        extra_args: More arguments (macros allowed) after ``-f {sender}``.
    """

    EX_TEMPFAIL = EX_TEMPFAIL

    def __init__(
        self,
        path: str | None = None,
        timeout: float | None = None,
        extra_args: Sequence[str] | None = None,
    ) -> None:
        args = [path or _find_program("maildrop", "/usr/bin/maildrop"), "-f", "{sender}"]
        args.extend(extra_args or ())
        super().__init__(args, timeout)

    def raise_error(self, status: int, stdout: str, stderr: str) -> NoReturn:
        """Raise the relay error for a failed maildrop run.

        Args:
            status: maildrop's exit status (negative: killed by a signal).
            stdout: The start of its standard output.
            stderr: The start of its standard error.

        Raises:
            TransientRelayError: Exit status 75, or killed by a signal.
            PermanentRelayError: Any other exit status.
        """
        text = _MAILDROP_PREFIX.sub("", _first_text(stdout, stderr), count=1) or "Delivery failed"
        if status == self.EX_TEMPFAIL or status < 0:
            raise TransientRelayError(text, Reply("450", f"4.3.0 {text}"))
        esc = "5.1.1" if status == EX_NOUSER else "5.3.0"
        raise PermanentRelayError(text, Reply("550", f"{esc} {text}"))


class DovecotLdaRelay(PipeRelay):
    """Deliver with Dovecot's local delivery agent, ``dovecot-lda``.

    The command is ``dovecot-lda -f {sender} -d {recipient}`` followed by
    ``extra_args``; it runs once per recipient.  Exit status 75
    (``EX_TEMPFAIL``: over quota with ``quota_full_tempfail``, a lock or
    storage problem) is a temporary failure; 67 (``EX_NOUSER``) and 68 mean
    the user does not exist (``5.1.1``); anything else is a permanent
    failure.  An enhanced status code at the start of the output (Dovecot
    writes one for Sieve rejects) is used as is.

    Args:
        path: The ``dovecot-lda`` program.  By default it is looked up on
            ``$PATH``, then as ``/usr/lib/dovecot/dovecot-lda`` and
            ``/usr/lib/dovecot/deliver``.
        timeout: Seconds one run may take; ``None`` for no limit.
        extra_args: More arguments (macros allowed) after the recipient.
    """

    EX_TEMPFAIL = EX_TEMPFAIL

    def __init__(
        self,
        path: str | None = None,
        timeout: float | None = None,
        extra_args: Sequence[str] | None = None,
    ) -> None:
        program = path or _find_program(
            "dovecot-lda", "/usr/lib/dovecot/dovecot-lda", "/usr/lib/dovecot/deliver"
        )
        args = [program, "-f", "{sender}", "-d", "{recipient}"]
        args.extend(extra_args or ())
        super().__init__(args, timeout)

    def raise_error(self, status: int, stdout: str, stderr: str) -> NoReturn:
        """Raise the relay error for a failed dovecot-lda run.

        Args:
            status: dovecot-lda's exit status (negative: killed by a signal).
            stdout: The start of its standard output.
            stderr: The start of its standard error.

        Raises:
            TransientRelayError: Exit status 75, a ``4.X.X`` output code, or
                killed by a signal.
            PermanentRelayError: Any other exit status.
        """
        text = _first_text(stdout, stderr) or "LDA delivery failed"
        match = _OUTPUT_ESC.match(text)
        if match is not None:
            super().raise_error(status, stdout, stderr)
        if status == self.EX_TEMPFAIL or status < 0:
            raise TransientRelayError(text, Reply("450", f"4.3.0 {text}"))
        esc = "5.1.1" if status in (EX_NOUSER, EX_NOHOST) else "5.3.0"
        raise PermanentRelayError(text, Reply("550", f"{esc} {text}"))
