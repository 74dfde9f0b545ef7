"""The smuggling and injection byte matrix against SmtpEdge in every configuration.

Configurations: plain, STARTTLS, implicit TLS and BDAT.  Vectors: the
RELIABILITY R2 end-of-data corpus (each sent in one write and split at every
offset of the vector), CRLF/NUL in addresses, overlong lines, oversized
DATA and (STARTTLS) commands pipelined behind STARTTLS.  No vector may get a
smuggled or injected envelope accepted; the count is printed.
"""

from __future__ import annotations

import pytest

from tests.integration.edge.conftest import RawClient
from tests.smuggling import CONTROL, MAIL_RCPT_DATA, SMUGGLED, VARIANTS

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

PREFIX = MAIL_RCPT_DATA
ADDRESS_VECTORS = [
    b"MAIL FROM:<a\x00b@legit.test>\r\n",
    b"MAIL FROM:<a@legit.test>\rRCPT TO:<x@y.test>\r\n",
    b"MAIL FROM:<a@legit.test>\nRCPT TO:<x@y.test>\r\n",
    b"MAIL FROM:<a@legit.test\r\n>\r\n",
    b"MAIL FROM:<ceo@legit.test\x00>\r\n",
    b"MAIL FROM:<" + b"a" * 3000 + b"@legit.test>\r\n",
    b"EHLO " + b"x" * 100000 + b"\r\n",
]
CONFIGS = ["plain", "starttls", "implicit", "bdat"]
MAX_SIZE = 2000


@pytest.fixture
def make_session(edge_factory, raw_client, stdlib_server_context, client_context):
    edges = {}

    def edge_for(config):
        if config not in edges:
            kwargs = {"max_size": MAX_SIZE}
            if config == "starttls":
                kwargs["context"] = stdlib_server_context
            elif config == "implicit":
                kwargs.update(context=stdlib_server_context, tls_immediately=True)
            edges[config] = edge_factory(**kwargs)
        return edges[config]

    def session(config):
        edge = edge_for(config)
        client = raw_client(edge.address, banner=config != "implicit")
        if config == "implicit":
            client.starttls(client_context)
            client.expect(220)
        client.ehlo()
        if config == "starttls":
            client.send(b"STARTTLS\r\n")
            client.expect(220)
            client.starttls(client_context)
            client.ehlo()
        return edge, client

    return session


def _drain(client: RawClient) -> list[int]:
    """Read until the server closes (after QUIT or an error), then parse every reply."""
    client.closed_by_server(3.0)
    codes = []
    while True:
        try:
            client.sock.settimeout(0.05)
            codes.append(client.reply()[0])
        except (ConnectionError, OSError):
            return codes


def _send_split(client: RawClient, data: bytes, split: int | None) -> None:
    if split is None:
        client.send(data)
        return
    client.send(data[:split])
    client.send(data[split:])


def _assert_clean(edge) -> None:
    senders = [env.sender for env in edge.queue.envelopes]
    assert "ceo@legit.test" not in senders
    assert "inject@evil.test" not in senders


@pytest.mark.parametrize("config", CONFIGS)
def test_matrix(make_session, config, capsys):
    tried = 0
    for variant in [*VARIANTS, CONTROL]:
        body = b"Subject: outer\r\n\r\nbody" + variant + SMUGGLED
        start = body.index(variant)
        for split in [None, *range(start, start + len(variant) + 1)]:
            edge, client = make_session(config)
            before = len(edge.queue.envelopes)
            if config == "bdat":
                chunk = b"Subject: outer\r\n\r\nbody" + variant + SMUGGLED
                client.send(b"MAIL FROM:<a@legit.test>\r\nRCPT TO:<b@dest.test>\r\n")
                assert client.codes(2) == [250, 250]
                _send_split(client, b"BDAT %d LAST\r\n" % len(chunk) + chunk, split)
                assert client.reply()[0] == 250
                client.send(b"QUIT\r\n")
                _drain(client)
                new = edge.queue.envelopes[before:]
                assert [e.sender for e in new] == ["a@legit.test"]
            else:
                client.send(PREFIX)
                assert client.codes(3) == [250, 250, 354]
                _send_split(client, body, split)
                _drain(client)
                new = edge.queue.envelopes[before:]
                if variant == CONTROL:
                    # Legitimate end of data: the "smuggled" text is a second,
                    # properly pipelined message the client itself sent.
                    assert len(new) <= 2
                    del edge.queue.envelopes[before:]
                else:
                    assert new == [], (variant, split)
            tried += 1
            _assert_clean(edge)
    for vector in ADDRESS_VECTORS:
        edge, client = make_session(config)
        before = len(edge.queue.envelopes)
        client.send(vector + b"RCPT TO:<b@dest.test>\r\nDATA\r\nSubject: x\r\n\r\nx\r\n.\r\nQUIT\r\n")
        codes = _drain(client)
        assert codes, vector[:60]
        assert codes[0] >= 500, (vector[:60], codes)
        assert edge.queue.envelopes[before:] == []
        tried += 1
    # Oversized DATA: refused with 552, nothing queued.
    edge, client = make_session(config)
    before = len(edge.queue.envelopes)
    big = b"Subject: big\r\n\r\n" + b"0123456789abcdef\r\n" * (MAX_SIZE // 8)
    if config == "bdat":
        client.send(b"MAIL FROM:<a@legit.test>\r\nRCPT TO:<b@dest.test>\r\nBDAT %d LAST\r\n" % len(big) + big)
        assert client.codes(3) == [250, 250, 552]
    else:
        client.send(PREFIX + big + b".\r\n")
        assert client.codes(4) == [250, 250, 354, 552]
    assert edge.queue.envelopes[before:] == []
    tried += 1
    if config == "starttls":
        tried += _pipelined_starttls(make_session)
    with capsys.disabled():
        print(f"\n{config}: {tried} vectors tried, 0 accepted")


def _pipelined_starttls(make_session) -> int:
    edge, client = make_session("plain")  # a session before TLS ...
    client.close()
    edge, client = make_session("starttls")
    # make_session("starttls") already did STARTTLS; open a fresh plaintext one.
    client.close()
    from tests.integration.edge.conftest import RawClient as Raw

    raw = Raw(edge.address)
    try:
        raw.expect(220)
        raw.ehlo()
        raw.send(b"STARTTLS\r\nMAIL FROM:<inject@evil.test>\r\nRCPT TO:<v@x.test>\r\n")
        raw.expect(220)
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw.starttls(ctx)
        raw.send(b"EHLO c\r\nMAIL FROM:<real@x.test>\r\n")
        first, text = raw.reply()
        # The EHLO list, not a reply to the injected commands.
        assert first == 250
        assert b"250-" in text
        assert raw.reply()[0] == 250
        assert not any("inject@evil.test" in str(call) for call in edge.calls)
    finally:
        raw.close()
    return 1
