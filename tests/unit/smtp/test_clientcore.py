"""The sans-IO client core: reply parsing, BadReply, dot-stuffing, injection refusal."""

from __future__ import annotations

import pytest

from slimta.smtp import BadReply
from slimta.smtp._clientcore import ClientConnection, canonical_line_endings, dot_stuff, message_lines
from slimta.smtp.reply import Reply
from tests.smuggling import CONTROL, VARIANTS


def feed_all(chunks: list[bytes], expected: int) -> list[Reply]:
    core = ClientConnection()
    replies = [Reply() for _ in range(expected)]
    for reply in replies:
        core.expect(reply)
    got: list[Reply] = []
    for chunk in chunks:
        core.receive_data(chunk)
        while (filled := core.next_reply()) is not None:
            got.append(filled)
    return got


def splits(data: bytes) -> list[list[bytes]]:
    return [[data]] + [[data[:i], data[i:]] for i in range(1, len(data))]


STREAM = b"220 hello there\r\n250-mx.test\r\n250-PIPELINING\r\n250 SIZE 100\r\n354 go\r\n550 5.1.1 no\r\n"


@pytest.mark.parametrize("chunks", splits(STREAM))
def test_replies_whole_and_split_at_every_offset(chunks: list[bytes]) -> None:
    got = feed_all(chunks, 4)
    assert [r.code for r in got] == ["220", "250", "354", "550"]
    assert got[1].raw_message == "mx.test\r\nPIPELINING\r\nSIZE 100"
    assert got[3].message == "5.1.1 no"


def test_every_byte_separately() -> None:
    got = feed_all([bytes([b]) for b in STREAM], 4)
    assert [r.code for r in got] == ["220", "250", "354", "550"]


def test_bare_lf_line_end_accepted() -> None:
    assert [r.code for r in feed_all([b"250 ok\n"], 1)] == ["250"]


@pytest.mark.parametrize(
    "data",
    [
        b"2x0 bad code\r\n",
        b"600 out of range\r\n",
        b"199 too low\r\n",
        b"25 short\r\n",
        b"250/ bad separator\r\n",
        b"250-first\r\n251 second code\r\n",
        b"garbage\r\n",
    ],
)
def test_bad_replies(data: bytes) -> None:
    with pytest.raises(BadReply):
        feed_all([data], 1)


def test_overlong_line_without_end() -> None:
    core = ClientConnection(max_line_length=100)
    core.expect(Reply())
    core.receive_data(b"250 " + b"x" * 200)
    with pytest.raises(BadReply):
        core.next_reply()


def test_overlong_complete_line() -> None:
    core = ClientConnection(max_line_length=100)
    core.expect(Reply())
    core.receive_data(b"250 " + b"x" * 200 + b"\r\n")
    with pytest.raises(BadReply):
        core.next_reply()


def test_too_many_lines() -> None:
    core = ClientConnection(max_lines=5)
    core.expect(Reply())
    core.receive_data(b"250-x\r\n" * 10 + b"250 end\r\n")
    with pytest.raises(BadReply):
        core.next_reply()


def test_unsolicited_reply() -> None:
    core = ClientConnection()
    core.receive_data(b"421 4.4.2 bye\r\n")
    with pytest.raises(BadReply):
        core.next_reply()


def test_pipelined_group_in_one_write() -> None:
    core = ClientConnection()
    replies = [Reply(), Reply(), Reply()]
    core.command("MAIL", "FROM:<a@b>", replies[0])
    core.command("RCPT", "TO:<c@d>", replies[1])
    core.command("DATA", None, replies[2])
    assert core.data_to_send() == b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
    assert core.data_to_send() == b""
    assert core.pending == 3
    core.receive_data(b"250 ok\r\n250 ok\r\n354 go\r\n")
    assert [core.next_reply() for _ in range(3)] == replies
    assert [r.code for r in replies] == ["250", "250", "354"]
    assert core.pending == 0


@pytest.mark.parametrize("arg", ["FROM:<a@b>\r\nRSET", "TO:<a\rb>", "TO:<a\nb>", "TO:<a\x00b>"])
def test_command_injection_refused(arg: str) -> None:
    core = ClientConnection()
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        core.command("MAIL", arg, Reply())
    assert core.data_to_send() == b""
    assert core.pending == 0


def test_discard_received_after_starttls() -> None:
    core = ClientConnection()
    reply = Reply()
    core.command("STARTTLS", None, reply)
    core.receive_data(b"220 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
    assert core.next_reply() is reply
    before = core.has_buffered_data
    dropped = core.discard_received()
    after = core.has_buffered_data
    assert (before, dropped, after) == (True, len(b"250-injected\r\n250 AUTH PLAIN\r\n"), False)
    ehlo = Reply()
    core.command("EHLO", "me", ehlo)
    core.receive_data(b"250 real\r\n")
    assert core.next_reply() is ehlo
    assert ehlo.raw_message == "real"


def test_discard_drops_partial_line() -> None:
    core = ClientConnection()
    core.expect(Reply())
    core.receive_data(b"250-inj")
    assert core.next_reply() is None
    core.discard_received()
    reply = Reply()
    core.expect(reply)
    core.receive_data(b"250 clean\r\n")
    # The first (expected) reply object takes it; nothing of the partial line survives.
    got = core.next_reply()
    assert got is not None
    assert got.raw_message == "clean"


def test_eof() -> None:
    core = ClientConnection()
    core.receive_data(b"")
    assert core.eof


def check_stuffed(out: bytes) -> None:
    assert out.endswith(b"\r\n.\r\n") or out == b".\r\n"
    body = out[: -len(b".\r\n")]
    assert body == b"" or body.endswith(b"\r\n")
    lines = body.split(b"\r\n")[:-1] if body else []
    for line in lines:
        assert b"\r" not in line
        assert b"\n" not in line
        if line.startswith(b"."):
            assert line.startswith(b"..")
    # The only end-of-data marker is the last one.
    assert (b"\r\n" + out).count(b"\r\n.\r\n") == 1


SMUGGLING = [*VARIANTS, CONTROL]


@pytest.mark.parametrize("variant", SMUGGLING)
def test_dot_stuff_smuggling_variants(variant: bytes) -> None:
    body = b"body" + variant + b"MAIL FROM:<ceo@legit.test>\r\n.\r\n.QUIT\r\n"
    check_stuffed(dot_stuff(body))


@pytest.mark.parametrize("variant", SMUGGLING)
def test_dot_stuff_split_across_parts(variant: bytes) -> None:
    body = b"head" + variant + b"tail"
    for i in range(len(body) + 1):
        out = dot_stuff(body[:i], body[i:])
        check_stuffed(out)
        assert out == dot_stuff(body)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"", b".\r\n"),
        (b"a", b"a\r\n.\r\n"),
        (b".a\r\n", b"..a\r\n.\r\n"),
        (b"a\r\n.\r\n", b"a\r\n..\r\n.\r\n"),
        (b"a\n.b\n", b"a\r\n..b\r\n.\r\n"),
        (b"a\r\n", b"a\r\n.\r\n"),
    ],
)
def test_dot_stuff_examples(data: bytes, expected: bytes) -> None:
    assert dot_stuff(data) == expected


def test_canonical_line_endings() -> None:
    assert canonical_line_endings(b"a\r", b"\nb\nc\rd") == b"a\r\nb\r\nc\r\nd"


def test_message_lines_is_what_data_and_bdat_send() -> None:
    # DATA and BDAT deliver the same bytes: a final CRLF is added when
    # missing (empty data stays empty), bare CR and LF become CRLF.
    assert message_lines(b"a\r", b"\nb\nc\rd") == b"a\r\nb\r\nc\r\nd\r\n"
    assert message_lines(b"last line  ") == b"last line  \r\n"
    assert message_lines(b"done\r\n") == b"done\r\n"
    assert message_lines(b"") == b""
    assert dot_stuff(b"last line  ") == message_lines(b"last line  ") + b".\r\n"
