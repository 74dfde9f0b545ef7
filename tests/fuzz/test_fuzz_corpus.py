"""Replay the fuzz corpus through both targets, and fuzz a little with hypothesis.

No coverage guidance here (that is ``fuzz_smtp.py`` with atheris): this
keeps every input the fuzzer ever found interesting -- and every crash,
once added to the corpus -- as a regression test of the normal suite.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.targets import fuzz_client, fuzz_server

CORPUS = Path(__file__).parent / "corpus"
SERVER = sorted((CORPUS / "server").iterdir())
CLIENT = sorted((CORPUS / "client").iterdir())

pytestmark = pytest.mark.timeout(60)


def test_corpus_is_there():
    assert len(SERVER) >= 30
    assert len(CLIENT) >= 10


def test_server_corpus():
    for path in SERVER:
        fuzz_server(path.read_bytes())


def test_client_corpus():
    for path in CLIENT:
        fuzz_client(path.read_bytes())


_TOKENS = st.sampled_from(
    [
        b"EHLO c\r\n",
        b"HELO c\r\n",
        b"MAIL FROM:<a@b>\r\n",
        b"RCPT TO:<c@d>\r\n",
        b"DATA\r\n",
        b"BDAT 5\r\n",
        b"BDAT 3 LAST\r\n",
        b"STARTTLS\r\n",
        b"AUTH LOGIN\r\n",
        b"AUTH PLAIN dGVzdAB0ZXN0AHRlc3Q=\r\n",
        b"QUIT\r\n",
        b"RSET\r\n",
        b"\r\n.\r\n",
        b".\r\n",
        b"\n.\n",
        b"\r",
        b"\n",
        b"\x00",
        b"x" * 600,
        b"hello ",
    ]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=2, max_size=2), st.lists(_TOKENS | st.binary(max_size=20), max_size=30))
def test_server_random_sessions(head, parts):
    fuzz_server(head + b"".join(parts))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_client_random_replies(data):
    fuzz_client(data)
