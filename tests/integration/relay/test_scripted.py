"""SmtpRelayClient against scripted, misbehaving servers on loopback."""

from __future__ import annotations

import ssl
from typing import Any

import gevent
import pytest

from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay.smtp.static import StaticSmtpRelay
from slimta.util import build_ipv4_socket_creator

from .conftest import EHLO_DEFAULT, STOP, Conn, ScriptedServer, make_envelope, smtp_dialogue

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

EHLO_TLS = b"250-scripted.test\r\n250-PIPELINING\r\n250 STARTTLS\r\n"


def relay_to(server: ScriptedServer, **kwargs: Any) -> StaticSmtpRelay:
    kwargs.setdefault("command_timeout", 2.0)
    return StaticSmtpRelay(*server.address, **kwargs)


def deliver(server: ScriptedServer, envelope: Any = None, **kwargs: Any) -> Any:
    relay = relay_to(server, **kwargs)
    try:
        return relay.attempt(envelope or make_envelope(), 0)
    finally:
        relay.kill()


def verbs(server: ScriptedServer) -> list[bytes]:
    # QUIT may or may not be sent before the test kills the relay.
    return [line.split(b" ", 1)[0].upper() for line in server.lines if line.upper() != b"QUIT"]


# -- greeting ---------------------------------------------------------------------


@pytest.mark.parametrize("ehlo_reply", [b"502 5.5.1 EHLO not implemented\r\n", b"550 5.7.1 go away\r\n"])
def test_ehlo_5xx_falls_back_to_helo(scripted: Any, ehlo_reply: bytes) -> None:
    server = scripted(ehlo=ehlo_reply)
    assert deliver(server).code == "250"
    assert verbs(server)[:3] == [b"EHLO", b"HELO", b"MAIL"]
    assert len(server.messages) == 1


def test_421_banner_is_transient(scripted: Any) -> None:
    server = scripted(banner=b"421 4.3.2 busy\r\n")
    with pytest.raises(TransientRelayError) as info:
        deliver(server)
    assert info.value.reply.code == "421"
    assert info.value.reply.command == "[BANNER]"
    assert info.value.reply.address == server.address


def test_connection_refused_is_441(scripted: Any) -> None:
    server = scripted()
    address = server.address
    server.stop()
    relay = StaticSmtpRelay(*address)
    try:
        with pytest.raises(TransientRelayError) as info:
            relay.attempt(make_envelope(), 0)
    finally:
        relay.kill()
    assert info.value.reply.code == "451"
    assert str(info.value.reply.message).startswith("4.4.1")
    assert info.value.reply.command == "[CONNECT]"


def test_socket_creator_used_for_every_connection(scripted: Any) -> None:
    server = scripted()
    used: list[Any] = []
    ipv4 = build_ipv4_socket_creator()

    def creator(address: Any, *args: Any) -> Any:
        used.append(address)
        return ipv4(address, *args)

    relay = relay_to(server, socket_creator=creator)
    try:
        for _ in range(3):
            relay.attempt(make_envelope(), 0)
    finally:
        relay.kill()
    assert used == [server.address] * 3
    assert server.connections == 3


# -- timeouts and drops -------------------------------------------------------------


def silent_after_dot(conn: Conn, line: bytes) -> Any:
    conn.send(b"354 go on\r\n")
    conn.read_data()
    gevent.sleep(5)
    return STOP


def test_silence_after_final_dot_times_out(scripted: Any) -> None:
    server = scripted(replies={b"DATA": silent_after_dot})
    with pytest.raises(TransientRelayError) as info, gevent.Timeout(4):
        deliver(server, data_timeout=0.5)
    assert str(info.value.reply.message).startswith("4.4.2")
    assert info.value.reply.command == "[SEND_DATA]"


def test_silence_after_bdat_times_out(scripted: Any) -> None:
    def silent_bdat(conn: Conn, line: bytes) -> Any:
        conn.read_exact(int(line.split()[1]))
        gevent.sleep(5)
        return STOP

    ehlo = b"250-scripted.test\r\n250-PIPELINING\r\n250 CHUNKING\r\n"
    server = scripted(ehlo=ehlo, replies={b"BDAT": silent_bdat})
    with pytest.raises(TransientRelayError) as info, gevent.Timeout(4):
        deliver(server, data_timeout=0.5)
    assert str(info.value.reply.message).startswith("4.4.2")
    assert info.value.reply.command == "BDAT"


def test_silent_banner_times_out(scripted: Any) -> None:
    server = scripted(lambda conn: gevent.sleep(5))
    with pytest.raises(TransientRelayError) as info, gevent.Timeout(4):
        deliver(server, command_timeout=0.5)
    assert info.value.reply.command == "[BANNER]"
    assert str(info.value.reply.message).startswith("4.4.2")


def test_connection_drop_mid_data(scripted: Any) -> None:
    def drop(conn: Conn, line: bytes) -> Any:
        conn.send(b"354 go on\r\n")
        conn.read_exact(10)
        return STOP

    server = scripted(replies={b"DATA": drop})
    with pytest.raises(TransientRelayError) as info:
        deliver(server, make_envelope(body=b"x" * 200_000))
    assert str(info.value.reply.message).startswith("4.4.2")
    assert info.value.reply.command == "[SEND_DATA]"


def test_bad_reply_is_transient(scripted: Any) -> None:
    server = scripted(replies={b"MAIL": b"2x0 what\r\n"})
    with pytest.raises(TransientRelayError) as info:
        deliver(server)
    assert str(info.value.reply.message).startswith("4.5.0")
    assert server.messages == []


# -- pooled connections ------------------------------------------------------------


def test_pooled_connection_closed_by_server_is_replaced(scripted: Any) -> None:
    # The server closes every session right after one message.
    def one_message(conn: Conn) -> None:
        smtp_dialogue(conn, final=b"250 2.0.0 Ok\r\n", replies={b"RSET": STOP_FN, b"NOOP": STOP_FN})

    def close_after_message(conn: Conn) -> None:
        conn.send(b"220 scripted\r\n")
        while (line := conn.readline()) is not None:
            verb = line.split(b" ", 1)[0].upper()
            if verb == b"EHLO":
                conn.send(EHLO_DEFAULT)
            elif verb == b"DATA":
                conn.send(b"354 go\r\n")
                conn.server.messages.append(conn.read_data() or b"")
                conn.send(b"250 2.0.0 Ok\r\n")
                gevent.sleep(0.1)
                return  # close, as an idle timeout on the server would
            else:
                conn.send(b"250 2.0.0 Ok\r\n")

    server = scripted(close_after_message)
    relay = relay_to(server, idle_timeout=5.0, pool_size=1)
    try:
        for _ in range(3):
            relay.attempt(make_envelope(), 0)
            gevent.sleep(0.3)
    finally:
        relay.kill()
    assert len(server.messages) == 3
    assert server.connections == 3


def STOP_FN(conn: Conn, line: bytes) -> Any:
    return STOP


def test_pooled_connection_dying_under_mail_is_retried_once(scripted: Any) -> None:
    # Second transaction on a session: the server vanishes without a word
    # (the race the pre-reuse check cannot see).
    def vanish_on_second_mail(conn: Conn) -> None:
        mails = 0

        def mail(conn: Conn, line: bytes) -> Any:
            nonlocal mails
            mails += 1
            if mails == 2:
                return STOP
            conn.send(b"250 2.1.0 Ok\r\n")
            return None

        smtp_dialogue(conn, replies={b"MAIL": mail})

    server = scripted(vanish_on_second_mail)
    relay = relay_to(server, idle_timeout=5.0, pool_size=1)
    try:
        relay.attempt(make_envelope(), 0)
        assert relay.attempt(make_envelope(), 0).code == "250"
    finally:
        relay.kill()
    assert len(server.messages) == 2
    assert server.connections == 2


# -- TLS ----------------------------------------------------------------------------


def test_opportunistic_starttls_with_self_signed_cert(scripted: Any, gevent_server_context: Any) -> None:
    server = scripted(ehlo=EHLO_TLS, tls_context=gevent_server_context)
    assert deliver(server).code == "250"
    assert server.tls_sessions == 1
    assert verbs(server)[:3] == [b"EHLO", b"STARTTLS", b"EHLO"]
    assert len(server.messages) == 1


def test_verifying_context_passes_with_trusted_cert(
    scripted: Any, gevent_server_context: Any, client_context: ssl.SSLContext
) -> None:
    server = scripted(ehlo=EHLO_TLS, tls_context=gevent_server_context)
    assert deliver(server, context=client_context).code == "250"
    assert server.tls_sessions == 1


def test_verifying_context_refuses_untrusted_cert(scripted: Any, gevent_server_context: Any) -> None:
    server = scripted(ehlo=EHLO_TLS, tls_context=gevent_server_context)
    with pytest.raises(TransientRelayError) as info:
        deliver(server, context=ssl.create_default_context())
    assert str(info.value.reply.message).startswith("4.7.5")
    assert server.messages == []


def test_starttls_response_injection_discarded(scripted: Any, gevent_server_context: Any) -> None:
    def injecting(conn: Conn, line: bytes) -> Any:
        conn.send(b"220 2.0.0 go ahead\r\n250-injected\r\n250 AUTH PLAIN\r\n")
        if not conn.starttls(gevent_server_context):
            return STOP
        conn.server.tls_sessions += 1
        return None

    server = scripted(ehlo=EHLO_TLS, replies={b"STARTTLS": injecting})
    assert deliver(server).code == "250"
    assert server.tls_sessions == 1
    assert verbs(server) == [b"EHLO", b"STARTTLS", b"EHLO", b"MAIL", b"RCPT", b"DATA"]
    assert len(server.messages) == 1


def broken_tls(conn: Conn, line: bytes) -> Any:
    conn.send(b"220 2.0.0 go ahead\r\n")
    conn.readline(timeout=1)  # the ClientHello, never answered properly
    conn.send(b"this is not TLS\r\n")
    return STOP


def test_handshake_failure_falls_back_to_cleartext(scripted: Any) -> None:
    server = scripted(ehlo=EHLO_TLS, replies={b"STARTTLS": broken_tls})
    assert deliver(server).code == "250"
    assert server.connections == 2
    assert len(server.messages) == 1
    # The second session went straight to MAIL after EHLO.
    assert verbs(server)[-4:] == [b"EHLO", b"MAIL", b"RCPT", b"DATA"]


def test_handshake_failure_with_tls_required(scripted: Any) -> None:
    server = scripted(ehlo=EHLO_TLS, replies={b"STARTTLS": broken_tls})
    with pytest.raises(TransientRelayError) as info:
        deliver(server, tls_required=True)
    assert str(info.value.reply.message).startswith("4.7.5")
    assert server.messages == []


def test_tls_required_but_not_offered(scripted: Any) -> None:
    server = scripted()
    with pytest.raises(TransientRelayError) as info:
        deliver(server, tls_required=True)
    assert str(info.value.reply.message).startswith("4.7.")
    assert server.messages == []


def test_tls_immediately(scripted: Any, gevent_server_context: Any) -> None:
    def implicit(conn: Conn) -> None:
        if conn.starttls(gevent_server_context):
            smtp_dialogue(conn)

    server = scripted(implicit)
    assert deliver(server, tls_immediately=True).code == "250"
    assert len(server.messages) == 1


# -- AUTH -----------------------------------------------------------------------------


def auth_ok(conn: Conn, line: bytes) -> Any:
    conn.send(b"235 2.7.0 ok\r\n")
    return None


def test_auth_gssapi_only_is_ignored(scripted: Any) -> None:
    server = scripted(ehlo=b"250-scripted.test\r\n250 AUTH GSSAPI\r\n", replies={b"AUTH": auth_ok})
    with pytest.raises(TransientRelayError) as info:
        deliver(server, credentials=("user", "secret"))
    assert info.value.reply.command == "AUTH"
    assert b"AUTH" not in verbs(server)
    assert server.messages == []


def test_no_password_over_cleartext(scripted: Any) -> None:
    server = scripted(ehlo=b"250-scripted.test\r\n250 AUTH PLAIN LOGIN\r\n", replies={b"AUTH": auth_ok})
    with pytest.raises(TransientRelayError):
        deliver(server, credentials=("user", "secret"))
    assert not any(b"AUTH" in line for line in server.lines)


def test_auth_plain_over_tls(scripted: Any, gevent_server_context: Any) -> None:
    ehlo = b"250-scripted.test\r\n250-STARTTLS\r\n250 AUTH GSSAPI PLAIN\r\n"
    server = scripted(ehlo=ehlo, tls_context=gevent_server_context, replies={b"AUTH": auth_ok})
    assert deliver(server, credentials=lambda: ("user", "secret")).code == "250"
    (auth,) = [line for line in server.lines if line.startswith(b"AUTH")]
    assert auth.startswith(b"AUTH PLAIN ")


def test_auth_cram_md5_over_cleartext(scripted: Any) -> None:
    def cram(conn: Conn, line: bytes) -> Any:
        conn.send(b"334 PDEyMzQ1QGV4YW1wbGUudGVzdD4=\r\n")
        conn.readline()
        conn.send(b"235 2.7.0 ok\r\n")
        return None

    server = scripted(ehlo=b"250-scripted.test\r\n250 AUTH PLAIN CRAM-MD5\r\n", replies={b"AUTH": cram})
    assert deliver(server, credentials=("user", "secret")).code == "250"
    assert any(line == b"AUTH CRAM-MD5" for line in server.lines)


def test_auth_rejected_is_transient(scripted: Any) -> None:
    server = scripted(
        ehlo=b"250-scripted.test\r\n250 AUTH CRAM-MD5\r\n",
        replies={b"AUTH": b"535 5.7.8 bad credentials\r\n"},
    )
    with pytest.raises(TransientRelayError) as info:
        deliver(server, credentials=("user", "secret"))
    assert not isinstance(info.value, PermanentRelayError)
    assert info.value.reply.code == "535"


def test_step_deadlines_hold_on_a_reused_session(scripted: Any) -> None:
    # The client re-arms one timer per step length across transactions: the
    # third message's silent server must still time out, within its own
    # data_timeout, and the pool must then deliver on a fresh session.
    datas = 0

    def data(conn: Conn, line: bytes) -> Any:
        nonlocal datas
        datas += 1
        conn.send(b"354 go on\r\n")
        body = conn.read_data()
        if datas == 3:
            gevent.sleep(5)
            return STOP
        conn.server.messages.append(body or b"")
        conn.send(b"250 2.0.0 Ok\r\n")
        return None

    server = scripted(replies={b"DATA": data})
    relay = relay_to(server, idle_timeout=5.0, pool_size=1, data_timeout=0.5)
    try:
        for _ in range(2):
            assert relay.attempt(make_envelope(), 0).code == "250"
        started = gevent.get_hub().loop.now()
        with pytest.raises(TransientRelayError) as info, gevent.Timeout(4):
            relay.attempt(make_envelope(), 0)
        waited = gevent.get_hub().loop.now() - started
        assert info.value.reply.command == "[SEND_DATA]"
        assert str(info.value.reply.message).startswith("4.4.2 Timed out")
        assert 0.4 <= waited < 2.0
        assert relay.attempt(make_envelope(), 0).code == "250"
    finally:
        relay.kill()
    assert len(server.messages) == 3
    assert server.connections == 2
