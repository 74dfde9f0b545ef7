"""The sans-IO server core: byte scripts in, events and reply bytes out.

Every script that goes through :func:`check_every_split` is fed whole and
then split in two at every byte offset; the events and the output must be
the same each time.
"""

from __future__ import annotations

import functools

import pytest

from slimta.smtp.extensions import Extensions
from slimta.smtp.protocol import (
    NEED_DATA,
    TRANSITIONS,
    Auth,
    AuthResponse,
    Bdat,
    ConnectionClosed,
    Data,
    Ehlo,
    Event,
    Greeting,
    Helo,
    InputMode,
    LocalProtocolError,
    MailFrom,
    MessageReceived,
    Noop,
    Phase,
    Quit,
    RcptTo,
    Rset,
    ServerConnection,
    SmtpLimits,
    StartTls,
    UnknownCommand,
)
from slimta.smtp.reply import Reply
from tests.smuggling import MAIL_RCPT_DATA, SMUGGLED, VARIANTS

from .helpers import (
    AUTH_CONTINUE,
    BAD_SEQUENCE,
    CLOSING,
    ENCRYPTION_REQUIRED,
    EXCEEDED_STORAGE,
    MAILBOX_NAME_NOT_ALLOWED,
    OK,
    PARAM_NOT_IMPLEMENTED,
    PARAMS_NOT_RECOGNIZED,
    READY,
    REJECTED,
    SHUTTING_DOWN,
    START_INPUT,
    SYNTAX_ARGS,
    TOO_MANY_RECIPIENTS,
    TRANSACTION_FAILED,
    UNRECOGNIZED,
    Driver,
    all_extensions,
    assert_well_formed,
    check_every_split,
    make_conn,
)

EHLO = b"EHLO client.test\r\n"
MAIL = b"MAIL FROM:<a@legit.test>\r\n"
RCPT = b"RCPT TO:<b@dest.test>\r\n"
ENVELOPE = EHLO + MAIL + RCPT


def factory(
    limits: SmtpLimits | None = None,
    extensions: Extensions | None = None,
    *,
    encrypted: bool = False,
    answer: object = None,
) -> functools.partial[Driver]:
    """A zero-argument maker of fresh drivers with the given settings."""

    def make() -> Driver:
        return Driver(
            conn=make_conn(limits, extensions, encrypted=encrypted),
            answer=answer,  # type: ignore[arg-type]
        )

    return functools.partial(make)


def last_line(driver: Driver) -> bytes:
    return driver.replies()[-1]


# -- a plain session ----------------------------------------------------------------


def test_plain_session_whole_and_split() -> None:
    script = ENVELOPE + b"DATA\r\nSubject: hi\r\n\r\nbody\r\n.\r\nQUIT\r\n"
    driver = check_every_split(script)
    assert [type(e) for e in driver.events] == [
        Greeting,
        Ehlo,
        MailFrom,
        RcptTo,
        Data,
        MessageReceived,
        Quit,
        ConnectionClosed,
    ]
    assert driver.codes() == [READY, OK, OK, OK, START_INPUT, OK, CLOSING]
    assert driver.of(MessageReceived) == [MessageReceived(b"Subject: hi\r\n\r\nbody\r\n")]
    assert driver.conn.closed
    assert driver.conn.ehlo_as == "client.test"
    assert driver.conn.extended


def test_helo_session_is_not_extended() -> None:
    driver = check_every_split(b"HELO client.test\r\n" + MAIL + RCPT)
    assert driver.of(Helo) == [Helo("client.test")]
    assert not driver.conn.extended
    assert driver.conn.phase is Phase.RCPT


def test_eof_gives_connection_closed() -> None:
    driver = Driver()
    driver.drain()
    driver.feed(b"EHLO x.test\r\nNO")
    driver.eof()
    assert driver.events[-1] == ConnectionClosed()
    assert driver.conn.next_event() == ConnectionClosed()


# -- command sequence ---------------------------------------------------------------

COMMANDS: dict[type, bytes] = {
    Ehlo: b"EHLO other.test\r\n",
    Helo: b"HELO other.test\r\n",
    StartTls: b"STARTTLS\r\n",
    Auth: b"AUTH CRAM-MD5\r\n",
    MailFrom: b"MAIL FROM:<x@y.test>\r\n",
    RcptTo: b"RCPT TO:<z@y.test>\r\n",
    Data: b"DATA\r\n",
    Bdat: b"BDAT 3 LAST\r\nabc",
    Rset: b"RSET\r\n",
    Noop: b"NOOP\r\n",
    Quit: b"QUIT\r\n",
    UnknownCommand: b"VRFY someone\r\n",
}

# How to bring a fresh session to each phase: (banner code, script).
PHASES: dict[Phase, tuple[str, bytes]] = {
    Phase.REFUSED: ("554", b""),
    Phase.CONNECTED: ("220", b""),
    Phase.IDLE: ("220", EHLO),
    Phase.MAIL: ("220", EHLO + MAIL),
    Phase.RCPT: ("220", ENVELOPE),
    Phase.BDAT: ("220", ENVELOPE + b"BDAT 1\r\nx"),
}


def test_transitions_cover_every_command() -> None:
    assert set(TRANSITIONS) == set(COMMANDS)


def run_in_phase(phase: Phase, command: type) -> tuple[Driver, list[Event]]:
    """Bring a session to ``phase``, send ``command``; return the new events."""
    banner, prefix = PHASES[phase]

    def answer(event: Event) -> Reply | None:
        if isinstance(event, Greeting):
            return Reply(banner, "mx.test")
        if isinstance(event, Auth):
            return Reply("334", "PDEyMzQ+")
        return None

    make = factory(answer=answer)
    before = make()
    before.drain()
    before.feed(prefix)
    assert before.conn.phase is phase
    driver = check_every_split(prefix + COMMANDS[command], make)
    return driver, driver.events[len(before.events) :]


@pytest.mark.parametrize("phase", list(PHASES), ids=lambda p: p.value)
@pytest.mark.parametrize("command", list(COMMANDS), ids=lambda c: c.__name__)
def test_phase_command_matrix(phase: Phase, command: type) -> None:
    driver, new_events = run_in_phase(phase, command)
    allowed_phases, _ = TRANSITIONS[command]
    allowed = phase in allowed_phases and (phase is not Phase.REFUSED or command is Quit)
    if allowed:
        assert [type(e) for e in new_events] == [command] + ([ConnectionClosed] if command is Quit else [])
        assert driver.codes()[-1] != BAD_SEQUENCE
    else:
        assert new_events == []
        assert driver.codes()[-1] == BAD_SEQUENCE
        assert b"5.5.1" in last_line(driver)


@pytest.mark.parametrize(
    ("phase", "command"),
    [
        (Phase.CONNECTED, MailFrom),
        (Phase.CONNECTED, StartTls),
        (Phase.IDLE, RcptTo),
        (Phase.IDLE, Data),
        (Phase.MAIL, Data),
        (Phase.MAIL, Bdat),
        (Phase.MAIL, MailFrom),
        (Phase.BDAT, Data),
        (Phase.REFUSED, Ehlo),
        (Phase.REFUSED, Noop),
    ],
)
def test_known_bad_sequences_are_refused(phase: Phase, command: type) -> None:
    # Independent of TRANSITIONS, so a wrong table cannot pass the matrix alone.
    driver, new_events = run_in_phase(phase, command)
    assert new_events == []
    assert driver.codes()[-1] == BAD_SEQUENCE


@pytest.mark.parametrize(
    ("phase", "command"),
    [
        (Phase.CONNECTED, Ehlo),
        (Phase.IDLE, MailFrom),
        (Phase.MAIL, RcptTo),
        (Phase.RCPT, Data),
        (Phase.RCPT, Bdat),
        (Phase.BDAT, Bdat),
        (Phase.REFUSED, Quit),
    ],
)
def test_known_good_sequences_are_served(phase: Phase, command: type) -> None:
    _, new_events = run_in_phase(phase, command)
    assert type(new_events[0]) is command


@pytest.mark.parametrize("verb", [b"EHLO", b"HELO", b"ehlo"])
@pytest.mark.parametrize("arg", [b"", b" ", b"   "])
def test_empty_ehlo_helo_is_501(verb: bytes, arg: bytes) -> None:
    driver = check_every_split(verb + arg + b"\r\n")
    assert driver.codes()[-1] == SYNTAX_ARGS
    assert driver.of(Ehlo) == driver.of(Helo) == []
    assert driver.conn.phase is Phase.CONNECTED


@pytest.mark.parametrize("line", [b"QUIT now", b"RSET all", b"DATA x", b"STARTTLS please"])
def test_no_argument_commands_with_arguments_are_501(line: bytes) -> None:
    driver = check_every_split(ENVELOPE + line + b"\r\n")
    assert driver.codes()[-1] == SYNTAX_ARGS
    assert driver.of(Quit) == driver.of(Rset) == driver.of(Data) == []
    assert not driver.conn.closed


def test_starttls_not_offered_is_500() -> None:
    ext = all_extensions()
    ext.drop("STARTTLS")
    driver = check_every_split(EHLO + b"STARTTLS\r\n", factory(extensions=ext))
    assert driver.codes()[-1] == UNRECOGNIZED
    assert not driver.of(StartTls)


def test_starttls_when_already_encrypted_is_500() -> None:
    driver = check_every_split(EHLO + b"STARTTLS\r\n", factory(encrypted=True))
    assert driver.codes()[-1] == UNRECOGNIZED


def test_banner_refusal_serves_only_quit() -> None:
    def refuse(event: Event) -> Reply | None:
        return Reply("554", "5.7.1 Go away") if isinstance(event, Greeting) else None

    script = EHLO + b"NOOP\r\n" + MAIL + b"QUIT\r\n"
    driver = check_every_split(script, factory(answer=refuse))
    assert driver.codes() == [TRANSACTION_FAILED, BAD_SEQUENCE, BAD_SEQUENCE, BAD_SEQUENCE, CLOSING]
    assert [type(e) for e in driver.events] == [Greeting, Quit, ConnectionClosed]
    assert driver.conn.closed


@pytest.mark.parametrize("code", ["221", "421"])
def test_221_and_421_close_the_session(code: str) -> None:
    def close_on_noop(event: Event) -> Reply | None:
        return Reply(code, "bye") if isinstance(event, Noop) else None

    driver = check_every_split(EHLO + b"NOOP\r\nNOOP\r\n" + MAIL, factory(answer=close_on_noop))
    assert driver.conn.closed
    assert driver.codes() == [READY, OK, code]
    assert [type(e) for e in driver.events] == [Greeting, Ehlo, Noop, ConnectionClosed]


def test_pipelined_group_replies_in_one_write() -> None:
    driver = Driver()
    driver.drain()
    driver.feed(EHLO)
    driver.feed(MAIL + RCPT + b"RCPT TO:<c@dest.test>\r\nDATA\r\n")
    assert driver.writes[-1] == (
        b"250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n"
    )


def test_unknown_command_reaches_driver() -> None:
    driver = check_every_split(EHLO + b"VRFY postmaster\r\nXCLIENT  a=b \r\n")
    assert driver.of(UnknownCommand) == [
        UnknownCommand("VRFY", "postmaster"),
        UnknownCommand("XCLIENT", "a=b"),
    ]


@pytest.mark.parametrize(
    "line",
    [b" NOOP", b"NO\x00OP", b"1NOOP", b"NOOP\tx", b"N" * 21, b"", b"\xff\xfe"],
    ids=["leading-space", "nul-verb", "digit", "tab", "long-verb", "empty", "binary"],
)
def test_malformed_verbs_are_500(line: bytes) -> None:
    driver = check_every_split(EHLO + line + b"\r\n")
    assert driver.codes()[-1] == UNRECOGNIZED
    assert len(driver.events) == 2  # Greeting, Ehlo


def test_bare_lf_in_a_command_line_never_splits_it() -> None:
    driver = check_every_split(EHLO + b"NOOP\nMAIL FROM:<x@y.test>\r\n")
    assert not driver.of(MailFrom)
    assert driver.codes()[-1] == UNRECOGNIZED


# -- MAIL and RCPT grammar ---------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "address", "params"),
    [
        (b"MAIL FROM:<>", "", {}),
        (b"MAIL FROM:<a@b.test>", "a@b.test", {}),
        (b"mail from:<a@b.test>", "a@b.test", {}),
        (b"MAIL FROM: <a@b.test>", "a@b.test", {}),
        (b'MAIL FROM:<"a>b c"@b.test>', '"a>b c"@b.test', {}),
        (b'MAIL FROM:<"a\\"b"@b.test>', '"a\\"b"@b.test', {}),
        (b"MAIL FROM:<@r1.test,@r2.test:a@b.test>", "a@b.test", {}),
        (b"MAIL FROM:<a@[192.0.2.1]>", "a@[192.0.2.1]", {}),
        (b"MAIL FROM:<a@b.test> SIZE=100 BODY=8BITMIME", "a@b.test", {"SIZE": "100", "BODY": "8BITMIME"}),
        (b"MAIL FROM:<a@b.test> body=7bit", "a@b.test", {"BODY": "7bit"}),
        (b"MAIL FROM:<a@b.test> AUTH=<>", "a@b.test", {"AUTH": "<>"}),
    ],
)
def test_mail_from_accepted(line: bytes, address: str, params: dict[str, str]) -> None:
    driver = check_every_split(EHLO + line + b"\r\n")
    assert driver.of(MailFrom) == [MailFrom(address, params)]


@pytest.mark.parametrize(
    ("line", "address"),
    [
        (b"RCPT TO:<postmaster>", "postmaster"),
        (b"RCPT TO:<PostMaster>", "PostMaster"),
        (b"RCPT TO:<@hop.test:c@d.test>", "c@d.test"),
        (b'RCPT TO:<"x>y"@d.test>', '"x>y"@d.test'),
    ],
)
def test_rcpt_to_accepted(line: bytes, address: str) -> None:
    driver = check_every_split(EHLO + MAIL + line + b"\r\n")
    assert driver.of(RcptTo) == [RcptTo(address, {})]


def test_null_recipient_refused() -> None:
    driver = check_every_split(EHLO + MAIL + b"RCPT TO:<>\r\n")
    assert driver.codes()[-1] == SYNTAX_ARGS
    assert not driver.of(RcptTo)


@pytest.mark.parametrize(
    "inner",
    [
        b"a\rb@c.test",
        b"a\nb@c.test",
        b"a\x00b@c.test",
        b"a\x01b@c.test",
        b"a@c\x7f.test",
        b"a\tb@c.test",
        b"a@c.test\x1b",
    ],
    ids=["cr", "lf", "nul", "soh", "del", "tab", "esc"],
)
@pytest.mark.parametrize("verb", [b"MAIL FROM:", b"RCPT TO:"])
def test_control_characters_in_address_are_501_and_not_echoed(verb: bytes, inner: bytes) -> None:
    prefix = EHLO + (MAIL if verb.startswith(b"RCPT") else b"")
    driver = check_every_split(prefix + verb + b"<" + inner + b">\r\n")
    assert driver.codes()[-1] == SYNTAX_ARGS
    assert not driver.of(RcptTo)
    assert len(driver.of(MailFrom)) == prefix.count(b"MAIL")
    assert_well_formed(bytes(driver.output))


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:a@b.test",
        b"MAIL FROM:<a@b.test",
        b"MAIL FROM:<a@b.test>x",
        b"MAIL FROM:<a b@c.test>",
        b"MAIL FROM:<a..b@c.test>",
        b"MAIL FROM:<a@-b.test>",
        b"MAIL FROM:<a@>",
        b"MAIL FROM:<@b.test>",
        b"MAIL TO:<a@b.test>",
        b"MAIL <a@b.test>",
        b"MAIL FROM:<a@b.test> SIZE=1 SIZE=2",
        b"MAIL FROM:<a@b.test> =x",
        b"MAIL FROM:<postmaster>",
    ],
)
def test_mail_from_syntax_errors_are_501(line: bytes) -> None:
    driver = check_every_split(EHLO + line + b"\r\n")
    assert driver.codes()[-1] == SYNTAX_ARGS
    assert not driver.of(MailFrom)


def _path_line(local: int, domain_len: int) -> bytes:
    labels = []
    remaining = domain_len
    while remaining > 0:
        take = min(63, remaining)
        if remaining - take == 1:  # never leave a 1-char tail needing a dot
            take -= 1
        labels.append(b"d" * take)
        remaining -= take + 1
    domain = b".".join(labels)
    assert len(domain) == domain_len
    return b"MAIL FROM:<" + b"l" * local + b"@" + domain + b">\r\n"


def test_path_length_limit() -> None:
    # 256 octets including the angle brackets: 254 inside.
    ok = _path_line(64, 254 - 65)
    driver = check_every_split(EHLO + ok)
    assert len(driver.of(MailFrom)) == 1
    too_long = _path_line(64, 255 - 65)
    driver = check_every_split(EHLO + too_long)
    assert driver.codes()[-1] == SYNTAX_ARGS
    assert not driver.of(MailFrom)


def test_local_part_length_limit() -> None:
    driver = check_every_split(EHLO + _path_line(64, 10))
    assert len(driver.of(MailFrom)) == 1
    driver = check_every_split(EHLO + _path_line(65, 10))
    assert driver.codes()[-1] == SYNTAX_ARGS
    assert b"local part too long" in last_line(driver)


@pytest.mark.parametrize(
    "line",
    [
        b"MAIL FROM:<a@b.test> FOO=bar",
        b"MAIL FROM:<a@b.test> RET=HDRS",
        b"MAIL FROM:<a@b.test> XYZ",
    ],
)
def test_unknown_mail_params_are_555(line: bytes) -> None:
    driver = check_every_split(EHLO + line + b"\r\n")
    assert driver.codes()[-1] == PARAMS_NOT_RECOGNIZED
    assert not driver.of(MailFrom)


def test_unknown_rcpt_params_are_555() -> None:
    driver = check_every_split(EHLO + MAIL + b"RCPT TO:<b@dest.test> NOTIFY=NEVER\r\n")
    assert driver.codes()[-1] == PARAMS_NOT_RECOGNIZED
    assert not driver.of(RcptTo)


def test_size_at_limit_ok_and_one_past_is_552() -> None:
    limits = SmtpLimits(max_message_size=1000)
    driver = check_every_split(EHLO + b"MAIL FROM:<a@b.test> SIZE=1000\r\n", factory(limits))
    assert driver.of(MailFrom) == [MailFrom("a@b.test", {"SIZE": "1000"})]
    driver = check_every_split(EHLO + b"MAIL FROM:<a@b.test> SIZE=1001\r\n", factory(limits))
    assert driver.codes()[-1] == EXCEEDED_STORAGE
    assert b"5.3.4" in last_line(driver)
    assert not driver.of(MailFrom)


@pytest.mark.parametrize("value", [b"", b"x", b"-1", b"1" * 19, b"\xc2\xb2", b"\xd9\xa1"])
def test_invalid_size_values_are_501(value: bytes) -> None:
    # \xc2\xb2 is a superscript two and \xd9\xa1 an Arabic-Indic one: both
    # are str.isdigit() but not SMTP digits (the first used to crash int()).
    driver = check_every_split(EHLO + b"MAIL FROM:<a@b.test> SIZE=" + value + b"\r\n")
    assert driver.codes()[-1] == SYNTAX_ARGS
    assert not driver.of(MailFrom)


def test_body_8bitmime_requires_the_extension() -> None:
    ext = all_extensions()
    ext.drop("8BITMIME")
    driver = check_every_split(EHLO + b"MAIL FROM:<a@b.test> BODY=8BITMIME\r\n", factory(extensions=ext))
    assert driver.codes()[-1] == SYNTAX_ARGS
    driver = check_every_split(EHLO + b"MAIL FROM:<a@b.test> BODY=BINARYMIME\r\n")
    assert driver.codes()[-1] == SYNTAX_ARGS


UTF8_SENDER = "j\u00f6rg@b\u00fccher.test".encode()
UTF8_RCPT = "\u7528\u6237@\u4f8b\u5b50.test".encode()


def test_utf8_sender_without_smtputf8_is_553() -> None:
    driver = check_every_split(EHLO + b"MAIL FROM:<" + UTF8_SENDER + b">\r\n")
    assert driver.codes()[-1] == MAILBOX_NAME_NOT_ALLOWED
    assert b"5.6.7" in last_line(driver)
    assert not driver.of(MailFrom)


def test_utf8_addresses_with_smtputf8() -> None:
    script = EHLO + b"MAIL FROM:<" + UTF8_SENDER + b"> SMTPUTF8\r\nRCPT TO:<" + UTF8_RCPT + b">\r\n"
    driver = check_every_split(script)
    assert driver.of(MailFrom) == [MailFrom(UTF8_SENDER.decode(), {"SMTPUTF8": True})]
    assert driver.of(RcptTo) == [RcptTo(UTF8_RCPT.decode(), {})]


def test_utf8_rcpt_in_a_non_smtputf8_transaction_is_553() -> None:
    driver = check_every_split(EHLO + MAIL + b"RCPT TO:<" + UTF8_RCPT + b">\r\n")
    assert driver.codes()[-1] == MAILBOX_NAME_NOT_ALLOWED
    assert not driver.of(RcptTo)


def test_smtputf8_forgotten_after_the_transaction() -> None:
    script = EHLO + b"MAIL FROM:<a@b.test> SMTPUTF8\r\nRSET\r\n" + MAIL + b"RCPT TO:<" + UTF8_RCPT + b">\r\n"
    driver = check_every_split(script)
    assert driver.codes()[-1] == MAILBOX_NAME_NOT_ALLOWED


def test_smtputf8_not_offered_or_with_value_is_555() -> None:
    ext = all_extensions()
    ext.drop("SMTPUTF8")
    driver = check_every_split(EHLO + b"MAIL FROM:<a@b.test> SMTPUTF8\r\n", factory(extensions=ext))
    assert driver.codes()[-1] == PARAMS_NOT_RECOGNIZED
    driver = check_every_split(EHLO + b"MAIL FROM:<a@b.test> SMTPUTF8=yes\r\n")
    assert driver.codes()[-1] == PARAMS_NOT_RECOGNIZED


def test_params_on_a_helo_session_are_555() -> None:
    driver = check_every_split(b"HELO client.test\r\nMAIL FROM:<a@b.test> SIZE=10\r\n")
    assert driver.codes()[-1] == PARAMS_NOT_RECOGNIZED
    assert not driver.of(MailFrom)


def test_invalid_utf8_in_a_command() -> None:
    driver = check_every_split(EHLO + b"MAIL FROM:<a\xff@b.test>\r\n")
    assert driver.codes()[-1] == UNRECOGNIZED
    assert b"UTF-8" in last_line(driver)
    assert not driver.of(MailFrom)
    assert_well_formed(bytes(driver.output))


# -- DATA ---------------------------------------------------------------------------

DATA = ENVELOPE + b"DATA\r\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b".\r\n", b""),
        (b"x\r\n.\r\n", b"x\r\n"),
        (b"..\r\n.\r\n", b".\r\n"),
        (b"...\r\n.\r\n", b"..\r\n"),
        (b"a\r\n..\r\n..b\r\n.\r\n", b"a\r\n.\r\n.b\r\n"),
        (b"a\r\n.b\r\n.\r\n", b"a\r\nb\r\n"),  # RFC 5321 4.5.2: the dot goes
        (b"a\r\n\r\n.\r\n", b"a\r\n\r\n"),
        (b"a.\r\n.\r\n", b"a.\r\n"),
        (b"\r\n.\r\n", b"\r\n"),
    ],
)
def test_data_framing_and_dot_unstuffing(body: bytes, message: bytes) -> None:
    limits = SmtpLimits(bare_line_endings="normalize")
    driver = check_every_split(DATA + body + b"NOOP\r\n", factory(limits))
    assert driver.of(MessageReceived) == [MessageReceived(message)]
    assert driver.of(Noop) == [Noop("")]
    assert driver.conn.phase is Phase.IDLE


def test_two_messages_in_one_session() -> None:
    script = DATA + b"one\r\n.\r\n" + MAIL + RCPT + b"DATA\r\ntwo\r\n.\r\n"
    driver = check_every_split(script)
    assert driver.of(MessageReceived) == [MessageReceived(b"one\r\n"), MessageReceived(b"two\r\n")]


def test_data_refused_by_driver_keeps_command_mode() -> None:
    def refuse_data(event: Event) -> Reply | None:
        return Reply("554", "5.7.1 No") if isinstance(event, Data) else None

    driver = check_every_split(DATA + b"MAIL FROM:<x@y.test>\r\n", factory(answer=refuse_data))
    assert driver.conn.mode is InputMode.COMMAND
    assert driver.codes()[-1] == BAD_SEQUENCE  # still in a transaction


def _body(size: int) -> bytes:
    line = b"x" * 98 + b"\r\n"
    body = line * (size // 100) + b"y" * (size % 100)
    assert len(body) == size
    return body


def test_message_at_max_size_ok_and_one_past_is_552() -> None:
    limits = SmtpLimits(max_message_size=300)
    driver = check_every_split(DATA + _body(298) + b"\r\n.\r\n", factory(limits))
    assert driver.of(MessageReceived) == [MessageReceived(_body(298) + b"\r\n")]
    driver = check_every_split(DATA + _body(299) + b"\r\n.\r\n" + b"NOOP\r\n", factory(limits))
    (received,) = driver.of(MessageReceived)
    assert received.data is None
    assert received.error is not None
    assert received.error.code == EXCEEDED_STORAGE
    assert "5.3.4" in (received.error.message or "")
    assert driver.codes()[-2:] == [EXCEEDED_STORAGE, OK]
    assert driver.conn.phase is Phase.IDLE


def test_oversized_message_is_drained_not_parsed() -> None:
    limits = SmtpLimits(max_message_size=1000)
    smuggled = b"MAIL FROM:<x@y.test>\r\nRCPT TO:<z@y.test>\r\nDATA\r\n"
    body = (b"filler line of text\r\n" + smuggled) * 200
    driver = Driver(conn=make_conn(limits))
    driver.drain()
    driver.feed(DATA)
    for i in range(0, len(body), 700):
        driver.feed(body[i : i + 700])
        assert len(driver.conn._buf) <= 1000 + 1000 // 8 + 1024 + 700
    driver.feed(b"\r\n.\r\nQUIT\r\n")
    assert [type(e) for e in driver.events][-3:] == [MessageReceived, Quit, ConnectionClosed]
    assert len(driver.of(MailFrom)) == 1
    assert driver.codes()[-2:] == [EXCEEDED_STORAGE, CLOSING]


def test_oversized_message_split_at_every_offset() -> None:
    limits = SmtpLimits(max_message_size=50)
    body = b"MAIL FROM:<x@y.test>\r\n" * 80
    driver = check_every_split(DATA + body + b".\r\nNOOP\r\n", factory(limits))
    assert len(driver.of(MailFrom)) == 1
    assert driver.codes()[-2:] == [EXCEEDED_STORAGE, OK]


# R2 of RELIABILITY.md: a smuggled second transaction after a fake end of data.
SMUGGLE_PREFIX = b"EHLO t\r\n" + MAIL_RCPT_DATA
SMUGGLE_SUFFIX = SMUGGLED
SMUGGLE_VARIANTS = VARIANTS


def smuggle_script(variant: bytes) -> bytes:
    return SMUGGLE_PREFIX + b"Subject: outer\r\n\r\nbody" + variant + SMUGGLE_SUFFIX


@pytest.mark.parametrize("variant", SMUGGLE_VARIANTS, ids=repr)
def test_smuggling_strict_mode_refuses_the_message(variant: bytes) -> None:
    driver = check_every_split(smuggle_script(variant), factory(SmtpLimits(bare_line_endings="reject")))
    (received,) = driver.of(MessageReceived)
    assert received.data is None
    assert received.error is not None
    assert received.error.code == REJECTED
    assert (received.error.message or "").startswith("5.5.2 ")
    assert [e.address for e in driver.of(MailFrom)] == ["a@legit.test"]
    assert driver.codes() == [READY, OK, OK, OK, START_INPUT, REJECTED, CLOSING]


@pytest.mark.parametrize("variant", SMUGGLE_VARIANTS, ids=repr)
def test_smuggling_normalize_mode_keeps_one_message(variant: bytes) -> None:
    driver = check_every_split(smuggle_script(variant), factory(SmtpLimits(bare_line_endings="normalize")))
    (received,) = driver.of(MessageReceived)
    assert received.data is not None
    assert b"MAIL FROM:<ceo@legit.test>\r\n" in received.data
    assert b"Subject: smuggled" in received.data
    assert b"\r" not in received.data.replace(b"\r\n", b"")
    assert b"\n" not in received.data.replace(b"\r\n", b"")
    assert [e.address for e in driver.of(MailFrom)] == ["a@legit.test"]


@pytest.mark.parametrize("mode", ["reject", "normalize"])
def test_smuggling_control_is_two_transactions(mode: str) -> None:
    driver = check_every_split(smuggle_script(b"\r\n.\r\n"), factory(SmtpLimits(bare_line_endings=mode)))
    assert driver.of(MessageReceived) == [
        MessageReceived(b"Subject: outer\r\n\r\nbody\r\n"),
        MessageReceived(b"Subject: smuggled\r\n\r\nevil\r\n"),
    ]
    assert [e.address for e in driver.of(MailFrom)] == ["a@legit.test", "ceo@legit.test"]


# -- BDAT ---------------------------------------------------------------------------


def test_bdat_chunks() -> None:
    script = ENVELOPE + b"BDAT 5\r\nhello" + b"BDAT 0\r\nBDAT 7 LAST\r\n world\n" + b"NOOP\r\n"
    driver = check_every_split(script)
    assert driver.of(Bdat) == [
        Bdat(5, False, True),
        Bdat(0, False, False),
        Bdat(7, True, False, b"hello world\n"),
    ]
    assert driver.of(Noop) == [Noop("")]
    assert driver.conn.phase is Phase.IDLE


def test_bdat_last_alone_and_lowercase() -> None:
    driver = check_every_split(ENVELOPE + b"bdat 3 last\r\nabc")
    assert driver.of(Bdat) == [Bdat(3, True, True, b"abc")]


def test_bdat_body_with_end_of_data_is_literal() -> None:
    chunk = b"x\r\n.\r\nMAIL FROM:<ceo@legit.test>\r\n.\r\n"
    script = ENVELOPE + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"QUIT\r\n"
    driver = check_every_split(script)
    assert driver.of(Bdat) == [Bdat(len(chunk), True, True, chunk)]
    assert [e.address for e in driver.of(MailFrom)] == ["a@legit.test"]


def test_bdat_without_chunking_is_500() -> None:
    ext = all_extensions()
    ext.drop("CHUNKING")
    driver = check_every_split(ENVELOPE + b"BDAT 3 LAST\r\n", factory(extensions=ext))
    assert driver.codes()[-1] == UNRECOGNIZED
    assert not driver.of(Bdat)


@pytest.mark.parametrize("prefix", [EHLO, EHLO + MAIL, b""], ids=["idle", "mail", "connected"])
def test_bdat_out_of_sequence_consumes_its_chunk(prefix: bytes) -> None:
    chunk = b"MAIL FROM:<x@y.test>\r\n"
    script = prefix + b"BDAT %d LAST\r\n" % len(chunk) + chunk + b"NOOP\r\n"
    driver = check_every_split(script)
    assert driver.codes()[-2:] == [BAD_SEQUENCE, OK]
    assert not driver.of(Bdat)
    assert len(driver.of(MailFrom)) == prefix.count(b"MAIL")
    assert driver.of(Noop) == [Noop("")]


@pytest.mark.parametrize("arg", [b"", b"x", b"-1", b"3 MORE", b"1" * 19])
def test_bdat_bad_arguments_are_501(arg: bytes) -> None:
    driver = check_every_split(ENVELOPE + b"BDAT " + arg + b"\r\n")
    assert driver.codes()[-1] == SYNTAX_ARGS


def test_bdat_over_size_limit() -> None:
    limits = SmtpLimits(max_message_size=10)
    ok = check_every_split(ENVELOPE + b"BDAT 6\r\n123456BDAT 4 LAST\r\n7890", factory(limits))
    assert ok.of(Bdat)[-1] == Bdat(4, True, False, b"1234567890")
    script = ENVELOPE + b"BDAT 6\r\n123456BDAT 5 LAST\r\n7890aNOOP\r\n"
    driver = check_every_split(script, factory(limits))
    last = driver.of(Bdat)[-1]
    assert last.data is None
    assert last.error is not None
    assert last.error.code == EXCEEDED_STORAGE
    assert driver.codes()[-2:] == [EXCEEDED_STORAGE, OK]
    assert driver.conn.phase is Phase.IDLE


def test_data_after_bdat_is_503() -> None:
    driver = check_every_split(ENVELOPE + b"BDAT 2\r\nabDATA\r\n")
    assert driver.codes()[-1] == BAD_SEQUENCE
    assert not driver.of(Data)
    assert driver.conn.phase is Phase.BDAT


# -- STARTTLS ------------------------------------------------------------------------


def test_starttls_discards_pipelined_plaintext() -> None:
    injected = b"MAIL FROM:<inject@evil.test>\r\n"
    driver = Driver()
    driver.drain()
    driver.feed(EHLO + b"STARTTLS\r\n" + injected)
    assert driver.codes() == [READY, OK, READY]
    assert driver.conn.discarded_plaintext == len(injected)
    assert not driver.of(MailFrom)
    assert driver.conn.encrypted
    # After the handshake the session starts again: EHLO first.
    driver.feed(MAIL)
    assert driver.codes()[-1] == BAD_SEQUENCE
    driver.feed(EHLO + MAIL + b"STARTTLS\r\n")
    assert driver.of(MailFrom) == [MailFrom("a@legit.test", {})]
    assert driver.codes()[-1] == UNRECOGNIZED  # no STARTTLS inside TLS


def test_receive_data_during_tls_handshake_raises() -> None:
    driver = Driver(tls=False)
    driver.drain()
    driver.feed(EHLO + b"STARTTLS\r\n")
    assert driver.conn.mode is InputMode.TLS
    assert driver.conn.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        driver.conn.receive_data(b"MAIL FROM:<a@b.test>\r\n")
    driver.conn.tls_established()
    assert driver.conn.phase is Phase.CONNECTED
    assert driver.conn.ehlo_as is None


def test_starttls_refused_by_driver_keeps_buffer() -> None:
    def refuse(event: Event) -> Reply | None:
        return Reply("454", "4.7.0 TLS not available") if isinstance(event, StartTls) else None

    driver = check_every_split(EHLO + b"STARTTLS\r\n" + MAIL, factory(answer=refuse))
    assert driver.conn.discarded_plaintext == 0
    assert len(driver.of(MailFrom)) == 1


# -- AUTH ----------------------------------------------------------------------------


def test_auth_not_offered_is_500() -> None:
    ext = all_extensions()
    ext.drop("AUTH")
    driver = check_every_split(EHLO + b"AUTH CRAM-MD5\r\n", factory(extensions=ext))
    assert driver.codes()[-1] == UNRECOGNIZED


def test_auth_before_ehlo_is_503() -> None:
    driver = check_every_split(b"AUTH CRAM-MD5\r\n")
    assert driver.codes()[-1] == BAD_SEQUENCE


@pytest.mark.parametrize("mechanism", [b"PLAIN", b"LOGIN", b"plain"])
def test_insecure_auth_without_encryption_is_538(mechanism: bytes) -> None:
    driver = check_every_split(EHLO + b"AUTH " + mechanism + b" dGVzdA==\r\n")
    assert driver.codes()[-1] == ENCRYPTION_REQUIRED
    assert b"538 5.7.11 " in last_line(driver)
    assert not driver.of(Auth)


@pytest.mark.parametrize(
    ("line", "event"),
    [
        (b"AUTH PLAIN dGVzdA==", Auth("PLAIN", "dGVzdA==")),
        (b"AUTH login", Auth("LOGIN", None)),
        (b"AUTH PLAIN =", Auth("PLAIN", "")),
    ],
)
def test_auth_with_encryption(line: bytes, event: Auth) -> None:
    driver = check_every_split(EHLO + line + b"\r\n", factory(encrypted=True))
    assert driver.of(Auth) == [event]
    assert driver.conn.authenticated


def test_cram_md5_allowed_without_encryption() -> None:
    driver = check_every_split(EHLO + b"AUTH CRAM-MD5\r\n")
    assert driver.of(Auth) == [Auth("CRAM-MD5", None)]


def test_auth_unknown_mechanism_is_504() -> None:
    driver = check_every_split(EHLO + b"AUTH XOAUTH2 abc\r\n", factory(encrypted=True))
    assert driver.codes()[-1] == PARAM_NOT_IMPLEMENTED


def test_auth_twice_is_503() -> None:
    driver = check_every_split(EHLO + b"AUTH CRAM-MD5\r\nAUTH CRAM-MD5\r\n")
    assert driver.codes()[-1] == BAD_SEQUENCE


def _login_answer(event: Event) -> Reply | None:
    if isinstance(event, Auth):
        return Reply("334", "VXNlcm5hbWU6")
    if isinstance(event, AuthResponse) and event.data == "dXNlcg==":
        return Reply("334", "UGFzc3dvcmQ6")
    return None


def test_auth_continuation_gives_auth_responses() -> None:
    script = EHLO + b"AUTH LOGIN\r\ndXNlcg==\r\ncGFzcw==\r\nNOOP\r\n"
    driver = check_every_split(script, factory(encrypted=True, answer=_login_answer))
    assert driver.of(AuthResponse) == [AuthResponse("dXNlcg=="), AuthResponse("cGFzcw==")]
    assert driver.codes()[2:] == [AUTH_CONTINUE, AUTH_CONTINUE, "235", OK]
    assert driver.conn.authenticated


def test_auth_star_cancels_with_501() -> None:
    script = EHLO + b"AUTH LOGIN\r\n*\r\nNOOP\r\n"
    driver = check_every_split(script, factory(encrypted=True, answer=_login_answer))
    assert driver.codes()[2:] == [AUTH_CONTINUE, SYNTAX_ARGS, OK]
    assert not driver.of(AuthResponse)
    assert not driver.conn.authenticated


def test_auth_response_line_too_long_ends_the_exchange() -> None:
    # The 500 is final: the next line is a command, not a SASL response.
    limits = SmtpLimits(max_auth_line_length=100)
    script = EHLO + b"AUTH LOGIN\r\n" + b"x" * 99 + b"\r\nNOOP\r\n"
    driver = check_every_split(script, factory(limits, encrypted=True, answer=_login_answer))
    assert driver.codes()[2:] == [AUTH_CONTINUE, UNRECOGNIZED, OK]
    assert driver.of(Noop) == [Noop("")]
    assert not driver.of(AuthResponse)


def test_auth_response_at_line_limit_ok() -> None:
    limits = SmtpLimits(max_auth_line_length=100)
    script = EHLO + b"AUTH LOGIN\r\n" + b"x" * 98 + b"\r\n"
    driver = check_every_split(script, factory(limits, encrypted=True, answer=_login_answer))
    assert driver.of(AuthResponse) == [AuthResponse("x" * 98)]


def _fail_auth(event: Event) -> Reply | None:
    if isinstance(event, Auth):
        return Reply("535", "5.7.8 Authentication credentials invalid")
    return None


@pytest.mark.parametrize("failures", [1, 2, 3])
def test_auth_failures_limit(failures: int) -> None:
    limits = SmtpLimits(max_auth_failures=3)
    script = EHLO + b"AUTH CRAM-MD5\r\n" * failures + b"NOOP\r\n"
    driver = check_every_split(script, factory(limits, answer=_fail_auth))
    assert driver.conn.auth_failures == failures
    if failures < 3:
        assert not driver.conn.closed
        assert driver.codes()[-1] == OK
    else:
        assert driver.conn.closed
        assert driver.codes()[-2:] == ["535", SHUTTING_DOWN]
        assert not driver.of(Noop)


def test_auth_after_helo_is_503() -> None:
    driver = check_every_split(b"HELO client.test\r\nAUTH CRAM-MD5\r\n")
    assert driver.codes()[-1] == BAD_SEQUENCE
    assert not driver.of(Auth)


@pytest.mark.parametrize("cancels", [2, 3])
def test_auth_cancel_counts_as_failure(cancels: int) -> None:
    limits = SmtpLimits(max_auth_failures=3)
    script = EHLO + b"AUTH LOGIN\r\n*\r\n" * cancels + b"NOOP\r\n"
    driver = check_every_split(script, factory(limits, encrypted=True, answer=_login_answer))
    assert driver.conn.auth_failures == cancels
    if cancels < 3:
        assert driver.codes()[-1] == OK
    else:
        assert driver.conn.closed
        assert driver.codes()[-2:] == [SYNTAX_ARGS, SHUTTING_DOWN]


def test_authentication_forgotten_after_starttls() -> None:
    # RFC 3207 4.2: what the client proved before TLS no longer counts.
    driver = factory()()
    driver.drain()
    driver.feed(EHLO + b"AUTH CRAM-MD5\r\n")
    assert driver.conn.authenticated
    driver.feed(b"STARTTLS\r\n")
    assert not driver.conn.authenticated
    driver.feed(EHLO + b"AUTH CRAM-MD5\r\n")
    assert driver.of(Auth) == [Auth("CRAM-MD5", None), Auth("CRAM-MD5", None)]


def _refuse_data(event: Event) -> Reply | None:
    if isinstance(event, Data):
        return Reply("554", "5.7.1 No thanks")
    return None


def test_driver_refusals_reach_the_error_limit() -> None:
    limits = SmtpLimits(max_errors=3)
    one = b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\nRSET\r\n"
    driver = check_every_split(EHLO + one * 3, factory(limits, answer=_refuse_data))
    assert driver.conn.closed
    assert driver.codes()[-2:] == ["554", SHUTTING_DOWN]


# -- limits --------------------------------------------------------------------------


def test_line_of_512_octets_ok_513_is_500() -> None:
    ok = b"NOOP " + b"x" * (512 - 7) + b"\r\n"
    assert len(ok) == 512
    driver = check_every_split(EHLO + ok)
    assert driver.of(Noop) == [Noop("x" * 505)]
    long = b"NOOP " + b"x" * (513 - 7) + b"\r\n"
    driver = check_every_split(EHLO + long + b"NOOP\r\n")
    assert driver.of(Noop) == [Noop("")]
    assert driver.codes()[-2:] == [UNRECOGNIZED, OK]
    assert b"5.5.6" in driver.replies()[-2]


def test_overlong_line_buffer_is_bounded() -> None:
    limits = SmtpLimits()
    piece = 64 * 1024
    driver = Driver()
    driver.drain()
    driver.feed(EHLO)
    line = b"MAIL FROM:<" + b"a" * (2 * 1024 * 1024) + b"@b.test>"
    for i in range(0, len(line), piece):
        driver.feed(line[i : i + piece])
        assert len(driver.conn._buf) <= limits.max_line_length
        assert driver.buf_excess <= 0
    assert driver.codes() == [READY, OK]
    driver.feed(b"\r\nNOOP\r\n")
    assert driver.codes() == [READY, OK, UNRECOGNIZED, OK]
    assert b"500 5.5.6 " in driver.replies()[2]
    assert not driver.of(MailFrom)


def test_overlong_line_with_cr_at_the_cut() -> None:
    # The CR of the line's CRLF arrives alone right at the limit.
    driver = Driver()
    driver.drain()
    driver.feed(b"NOOP " + b"x" * 600 + b"\r")
    driver.feed(b"\nNOOP\r\n")
    assert driver.codes() == [READY, UNRECOGNIZED, OK]


@pytest.mark.parametrize("count", [3, 4])
def test_recipient_limit(count: int) -> None:
    limits = SmtpLimits(max_recipients=3)
    rcpts = b"".join(b"RCPT TO:<r%d@dest.test>\r\n" % i for i in range(count))
    driver = check_every_split(EHLO + MAIL + rcpts, factory(limits))
    assert len(driver.of(RcptTo)) == 3
    if count == 4:
        assert driver.codes()[-1] == TOO_MANY_RECIPIENTS
        assert b"4.5.3" in last_line(driver)
    else:
        assert driver.codes()[-1] == OK


def test_recipient_count_resets_per_transaction() -> None:
    limits = SmtpLimits(max_recipients=1)
    script = EHLO + MAIL + RCPT + b"RSET\r\n" + MAIL + RCPT
    driver = check_every_split(script, factory(limits))
    assert len(driver.of(RcptTo)) == 2


BAD = b"RCPT TO:<x@y.test>\r\n"  # out of sequence in IDLE: 503, not junk


@pytest.mark.parametrize("errors", [4, 5])
def test_error_limit(errors: int) -> None:
    limits = SmtpLimits(max_errors=5)
    driver = check_every_split(EHLO + BAD * errors + b"NOOP\r\n", factory(limits))
    if errors < 5:
        assert not driver.conn.closed
        assert driver.codes()[-1] == OK
    else:
        assert driver.conn.closed
        assert driver.codes()[-2:] == [BAD_SEQUENCE, SHUTTING_DOWN]
        assert not driver.of(Noop)


def test_driver_error_replies_count_towards_the_error_limit() -> None:
    def refuse_rcpt(event: Event) -> Reply | None:
        return Reply("550", "5.1.1 No such user") if isinstance(event, RcptTo) else None

    limits = SmtpLimits(max_errors=3)
    driver = check_every_split(EHLO + MAIL + RCPT * 3 + b"NOOP\r\n", factory(limits, answer=refuse_rcpt))
    assert driver.conn.closed
    assert driver.codes()[-2:] == [REJECTED, SHUTTING_DOWN]


@pytest.mark.parametrize("junk", [3, 4])
def test_junk_command_limit(junk: int) -> None:
    limits = SmtpLimits(max_junk_commands=3)
    script = EHLO + b"".join([b"NOOP\r\n", b"RSET\r\n", b"VRFY x\r\n", b"NOOP\r\n"][:junk]) + MAIL
    driver = check_every_split(script, factory(limits))
    if junk == 3:
        assert len(driver.of(MailFrom)) == 1
    else:
        assert driver.conn.closed
        assert driver.codes()[-1] == SHUTTING_DOWN
        assert len(driver.events) - 2 == 3 + 1  # three junk events, then ConnectionClosed


@pytest.mark.parametrize("commands", [5, 6])
def test_command_limit(commands: int) -> None:
    limits = SmtpLimits(max_commands=5)
    script = EHLO + MAIL + RCPT + b"RSET\r\n" * (commands - 3)
    driver = check_every_split(script, factory(limits))
    if commands == 5:
        assert not driver.conn.closed
        assert driver.codes()[-1] == OK
    else:
        assert driver.conn.closed
        assert driver.codes()[-1] == SHUTTING_DOWN
        assert len(driver.of(Rset)) == 2


@pytest.mark.parametrize("deliver", [False, True])
def test_counters_reset_after_an_accepted_message(deliver: bool) -> None:
    limits = SmtpLimits(max_errors=3, max_junk_commands=2)
    first = BAD * 2 + b"NOOP\r\nNOOP\r\n"
    message = MAIL + RCPT + b"DATA\r\nx\r\n.\r\n" if deliver else b""
    script = EHLO + first + message + BAD * 2 + b"NOOP\r\nNOOP\r\n"
    driver = check_every_split(script, factory(limits))
    if deliver:
        assert not driver.conn.closed
        assert driver.conn.errors == 2
        assert driver.conn.junk_commands == 2
    else:
        assert driver.conn.closed


def test_refused_message_does_not_reset_counters() -> None:
    limits = SmtpLimits(max_errors=3)
    script = EHLO + BAD + MAIL + RCPT + b"DATA\r\nbare\nlf\r\n.\r\n" + BAD
    driver = check_every_split(script, factory(limits))
    assert driver.conn.closed


def test_limits_validation() -> None:
    with pytest.raises(ValueError, match="bare_line_endings"):
        SmtpLimits(bare_line_endings="ignore")
    with pytest.raises(ValueError, match="max_line_length"):
        SmtpLimits(max_line_length=15)
    assert SmtpLimits(max_line_length=16).max_line_length == 16


def test_nothing_is_buffered_after_close() -> None:
    driver = Driver()
    driver.drain()
    driver.feed(b"QUIT\r\n")
    assert driver.conn.closed
    driver.conn.receive_data(b"x" * 100000)
    assert len(driver.conn._buf) == 0
    assert driver.conn.next_event() == ConnectionClosed()


# -- misuse ---------------------------------------------------------------------------


def test_next_event_with_an_unanswered_event_raises() -> None:
    conn = ServerConnection()
    assert conn.next_event() == Greeting()
    with pytest.raises(LocalProtocolError):
        conn.next_event()
    conn.send_reply(Reply("220", "hi"))
    conn.receive_data(b"NOOP\r\n")
    assert conn.next_event() == Noop("")
    with pytest.raises(LocalProtocolError):
        conn.next_event()


def test_send_reply_with_nothing_pending_raises() -> None:
    conn = ServerConnection()
    with pytest.raises(LocalProtocolError):
        conn.send_reply(Reply("250", "Ok"))
    conn.next_event()
    conn.send_reply(Reply("220", "hi"))
    with pytest.raises(LocalProtocolError):
        conn.send_reply(Reply("250", "Ok"))
    assert conn.next_event() is NEED_DATA
    with pytest.raises(LocalProtocolError):
        conn.send_reply(Reply("250", "Ok"))
    assert conn.data_to_send() == b"220 2.0.0 hi\r\n"
    assert conn.data_to_send() == b""
