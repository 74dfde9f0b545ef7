"""What goes on the wire: 8BITMIME/SMTPUTF8/DSN parameters, 7-bit conversion,
outbound smuggling (RELIABILITY R2), LMTP per-recipient outcomes, smtp-sink faults."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import gevent
import pytest
from gevent import subprocess

from slimta.bounce.dsn import EnvelopeDsn, RecipientDsn, set_dsn
from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp.static import StaticLmtpRelay, StaticSmtpRelay
from tests.conftest import require_tool
from tests.smuggling import CONTROL, VARIANTS

from .conftest import Conn, ScriptedServer, free_port, make_envelope, smtp_dialogue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

FULL_EHLO = b"250-s.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-DSN\r\n250 SIZE 1000000\r\n"
BARE_EHLO = b"250-s.test\r\n250 PIPELINING\r\n"


def deliver(server: ScriptedServer, envelope: Any, **kwargs: Any) -> Any:
    relay = StaticSmtpRelay(*server.address, command_timeout=2.0, **kwargs)
    try:
        return relay.attempt(envelope, 0)
    finally:
        relay.kill()


def mail_line(server: ScriptedServer) -> bytes:
    return next(line for line in server.lines if line.startswith(b"MAIL"))


def test_8bit_and_utf8_parameters(scripted: Any) -> None:
    server = scripted(ehlo=FULL_EHLO)
    env = make_envelope(sender="jörg@src.test", recipients=["zoë@dst.test"], body="grüße\r\n".encode())
    assert deliver(server, env).code == "250"
    line = mail_line(server)
    assert line.startswith("MAIL FROM:<jörg@src.test>".encode())
    assert b" BODY=8BITMIME" in line
    assert b" SMTPUTF8" in line
    assert re.search(rb" SIZE=\d+", line)


def test_8bit_body_converted_for_7bit_server(scripted: Any) -> None:
    server = scripted(ehlo=BARE_EHLO)
    env = make_envelope(body="grüße\r\n".encode())
    assert deliver(server, env).code == "250"
    (data,) = server.messages
    assert data.isascii()
    assert b"Content-Transfer-Encoding: base64" in data
    assert b"BODY=" not in mail_line(server)
    # The queue's envelope is left as it was.
    assert env.message == "grüße\r\n".encode()


def test_8bit_headers_to_7bit_server_is_554(scripted: Any) -> None:
    server = scripted(ehlo=BARE_EHLO)
    env = make_envelope(body="grüße\r\n".encode(), X_Name="Jörg")
    with pytest.raises(PermanentRelayError) as info:
        deliver(server, env)
    assert (info.value.reply.code, str(info.value.reply.message)[:5]) == ("554", "5.6.3")
    assert server.messages == []


def test_utf8_address_without_smtputf8_is_553(scripted: Any) -> None:
    server = scripted(ehlo=BARE_EHLO)
    with pytest.raises(PermanentRelayError) as info:
        deliver(server, make_envelope(recipients=["zoë@dst.test"]))
    assert (info.value.reply.code, str(info.value.reply.message)[:5]) == ("553", "5.6.7")
    assert not any(line.startswith(b"MAIL") for line in server.lines)


def dsn_envelope() -> Any:
    env = make_envelope(recipients=["a@dst.test", "b@dst.test"])
    set_dsn(
        env,
        EnvelopeDsn(
            ret="HDRS",
            envid="id+1",
            recipients={
                "a@dst.test": RecipientDsn(notify=frozenset({"FAILURE", "DELAY"}), orcpt=("rfc822", "a@x"))
            },
        ),
    )
    return env


def test_dsn_parameters_passed_on(scripted: Any) -> None:
    server = scripted(ehlo=FULL_EHLO)
    assert deliver(server, dsn_envelope()).code == "250"
    assert b" RET=HDRS" in mail_line(server)
    assert b" ENVID=id+2B1" in mail_line(server)
    rcpts = [line for line in server.lines if line.startswith(b"RCPT")]
    assert rcpts[0] == b"RCPT TO:<a@dst.test> NOTIFY=FAILURE,DELAY ORCPT=rfc822;a@x"
    assert rcpts[1] == b"RCPT TO:<b@dst.test>"


def test_dsn_parameters_not_sent_without_dsn(scripted: Any) -> None:
    server = scripted(ehlo=BARE_EHLO)
    assert deliver(server, dsn_envelope()).code == "250"
    assert not any(b"NOTIFY" in line or b"RET=" in line for line in server.lines)



SMUGGLING = [*VARIANTS, CONTROL]


@pytest.mark.parametrize("variant", SMUGGLING)
def test_outbound_smuggling_neutralised(scripted: Any, variant: bytes) -> None:
    server = scripted(ehlo=BARE_EHLO)
    body = (
        b"body"
        + variant
        + b"MAIL FROM:<ceo@legit.test>\r\nRCPT TO:<b@dest.test>\r\nDATA\r\nevil\r\n.\r\nQUIT\r\n"
    )
    assert deliver(server, make_envelope(body=body)).code == "250"
    (data,) = server.messages
    assert len(server.messages) == 1
    assert b"ceo@legit.test" in data  # inside the one message
    lines = data.split(b"\r\n")
    assert not any(b"\r" in line or b"\n" in line for line in lines)
    assert all(line.startswith(b"..") for line in lines if line.startswith(b"."))
    assert [line for line in server.lines if line.startswith(b"MAIL")] == [b"MAIL FROM:<sender@src.test>"]


# -- LMTP -------------------------------------------------------------------------


def lmtp_dialogue(conn: Conn) -> None:
    accepted: list[bytes] = []

    def rcpt(conn: Conn, line: bytes) -> Any:
        if b"nobody" in line:
            conn.send(b"550 5.1.1 unknown\r\n")
        else:
            accepted.append(line)
            conn.send(b"250 2.1.5 ok\r\n")

    def data(conn: Conn, line: bytes) -> Any:
        conn.send(b"354 go\r\n")
        conn.server.messages.append(conn.read_data() or b"")
        conn.send(
            b"".join(
                b"452 4.2.2 mailbox full\r\n" if b"full" in r else b"250 2.0.0 delivered\r\n"
                for r in accepted
            )
        )
        accepted.clear()

    smtp_dialogue(conn, ehlo=b"250-lmtp.test\r\n250 PIPELINING\r\n", replies={b"RCPT": rcpt, b"DATA": data})


def test_lmtp_per_recipient_outcomes(scripted: Any) -> None:
    server = scripted(lmtp_dialogue)
    relay = StaticLmtpRelay(*server.address, command_timeout=2.0)
    try:
        rcpts = ["a@d.test", "full@d.test", "nobody@d.test", "b@d.test"]
        result = relay.attempt(make_envelope(recipients=rcpts), 0)
        single = relay.attempt(make_envelope(recipients=["a@d.test"]), 0)
        with pytest.raises(TransientRelayError):
            relay.attempt(make_envelope(recipients=["full@d.test"]), 0)
    finally:
        relay.kill()
    assert server.lines[0].startswith(b"LHLO ")
    assert result["a@d.test"].code == "250"
    assert result["b@d.test"].code == "250"
    assert isinstance(result["full@d.test"], TransientRelayError)
    assert isinstance(result["nobody@d.test"], PermanentRelayError)
    assert single.code == "250"


# -- Postfix smtp-sink fault modes ------------------------------------------------------


@pytest.fixture
def smtp_sink() -> Iterator[Any]:
    path = require_tool("smtp-sink")
    procs: list[Any] = []

    def start(*flags: str) -> tuple[str, int]:
        port = free_port()
        proc = subprocess.Popen([path, "-u", "nobody", *flags, f"127.0.0.1:{port}", "64"])
        procs.append(proc)
        for _ in range(100):
            try:
                gevent.socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                gevent.sleep(0.02)
        return "127.0.0.1", port

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def sink_attempt(address: tuple[str, int], **kwargs: Any) -> Any:
    relay = StaticSmtpRelay(*address, command_timeout=2.0, **kwargs)
    try:
        return relay.attempt(make_envelope(), 0)
    finally:
        relay.kill()


def test_sink_accepts(smtp_sink: Any) -> None:
    assert sink_attempt(smtp_sink()).code == "250"


def test_sink_hard_reject_rcpt(smtp_sink: Any) -> None:
    with pytest.raises(PermanentRelayError) as info:
        sink_attempt(smtp_sink("-f", "rcpt"))
    assert info.value.reply.command == "RCPT"


def test_sink_soft_reject_mail(smtp_sink: Any) -> None:
    with pytest.raises(TransientRelayError) as info:
        sink_attempt(smtp_sink("-r", "mail"))
    assert info.value.reply.command == "MAIL"


def test_sink_421_at_data(smtp_sink: Any) -> None:
    with pytest.raises(TransientRelayError) as info:
        sink_attempt(smtp_sink("-Q", "data"))
    assert info.value.reply.code == "421"


def test_sink_disconnect_after_dot(smtp_sink: Any) -> None:
    with pytest.raises(TransientRelayError) as info:
        sink_attempt(smtp_sink("-q", "."))
    assert str(info.value.reply.message).startswith("4.4.2")


def test_sink_slow_reply_to_dot(smtp_sink: Any) -> None:
    with pytest.raises(TransientRelayError) as info, gevent.Timeout(5):
        sink_attempt(smtp_sink("-W", ".:3"), data_timeout=0.5)
    assert str(info.value.reply.message).startswith("4.4.2")
    assert info.value.reply.command == "[SEND_DATA]"
