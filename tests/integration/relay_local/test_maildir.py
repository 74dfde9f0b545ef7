"""MaildirRelay against real Maildir folders, read back with :mod:`mailbox`."""

from __future__ import annotations

import errno
import mailbox
import os
import stat
from pathlib import Path
from typing import Any

import gevent
import gevent.pool
import pytest

from slimta.relay import PermanentRelayError, TransientRelayError
from slimta.relay import maildir as maildir_module
from slimta.relay.maildir import MaildirRelay
from slimta.smtp.reply import Reply

from ._helpers import make_envelope

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

BODY = b"First line\r\nSecond \xe9\xff line\r\n\r\n.leading dot\r\nbare\rcr\r\n"
# As stored: LF line endings, everything else byte for byte.
STORED_BODY = b"First line\nSecond \xe9\xff line\n\n.leading dot\nbare\rcr\n"


def delivered(value: object) -> bool:
    return isinstance(value, Reply) and value.code == "250"


def read_folder(path: Path) -> list[bytes]:
    box = mailbox.Maildir(str(path), factory=None, create=False)
    return [box.get_bytes(key) for key in sorted(box.keys())]


def test_delivery_read_back(tmp_path: Path) -> None:
    relay = MaildirRelay(tmp_path)
    env = make_envelope(recipients=["alice@example.com", "Bob@example.org"], body=BODY)
    headers_before = list(env.headers.items()) if env.headers else []
    result = relay._attempt(env, 0)
    assert set(result) == {"alice@example.com", "Bob@example.org"}
    for rcpt, folder in (("alice@example.com", "alice"), ("Bob@example.org", "bob")):
        reply = result[rcpt]
        assert isinstance(reply, Reply)
        assert reply.code == "250"
        (data,) = read_folder(tmp_path / folder)
        head, _, body = data.partition(b"\n\n")
        assert body == STORED_BODY
        assert head.split(b"\n") == [
            b"Return-Path: <sender@example.com>",
            b"Delivered-To: <" + rcpt.encode() + b">",
            b"From: sender@example.com",
            b"Subject: test",
            b"Message-Id: <id.1@example.com>",
        ]
        (name,) = os.listdir(tmp_path / folder / "new")
        assert (reply.message or "").endswith(name)
        assert os.listdir(tmp_path / folder / "tmp") == []
        assert os.path.isdir(tmp_path / folder / "cur")
        assert stat.S_IMODE(os.stat(tmp_path / folder / "new" / name).st_mode) == 0o600
        message = mailbox.Maildir(str(tmp_path / folder), create=False).get_message(name.partition(":")[0])
        assert message["Delivered-To"] == f"<{rcpt}>"
    # The envelope is unchanged: the new headers went into each copy only.
    assert (list(env.headers.items()) if env.headers else []) == headers_before
    assert env.recipients == ["alice@example.com", "Bob@example.org"]


def test_null_sender(tmp_path: Path) -> None:
    MaildirRelay(tmp_path).attempt(make_envelope(sender="", recipients=["u@x.test"]), 0)
    (data,) = read_folder(tmp_path / "u")
    assert data.startswith(b"Return-Path: <>\nDelivered-To: <u@x.test>\n")


def test_unique_names_across_100_concurrent_deliveries(tmp_path: Path) -> None:
    relay = MaildirRelay(tmp_path)
    pool = gevent.pool.Pool(100)
    envelopes = [make_envelope(recipients=["same@x.test"], body=b"n=%d\r\n" % i) for i in range(100)]
    results = pool.map(lambda env: relay.attempt(env, 0), envelopes)
    assert all(delivered(r["same@x.test"]) for r in results)
    names = os.listdir(tmp_path / "same" / "new")
    assert len(set(names)) == 100
    bodies = {data.partition(b"\n\n")[2] for data in read_folder(tmp_path / "same")}
    assert bodies == {b"n=%d\n" % i for i in range(100)}
    assert os.listdir(tmp_path / "same" / "tmp") == []


@pytest.mark.parametrize(
    "rcpt",
    [
        "../evil@x.test",
        "../../etc@x.test",
        "a/b@x.test",
        "/abs@x.test",
        "a\\b@x.test",
        "nul\x00byte@x.test",
        "line\nbreak@x.test",
        ".hidden@x.test",
        "..@x.test",
        "@x.test",
        "x" * 300 + "@x.test",
    ],
)
def test_traversal_and_bad_names_refused(tmp_path: Path, rcpt: str) -> None:
    base = tmp_path / "mail"
    base.mkdir()
    result = MaildirRelay(base).attempt(make_envelope(recipients=[rcpt, "good@x.test"]), 0)
    error = result[rcpt]
    assert isinstance(error, PermanentRelayError)
    assert str(error.reply).startswith("550 5.1.3 ")
    assert delivered(result["good@x.test"])
    assert os.listdir(base) == ["good"]
    assert sorted(os.listdir(tmp_path)) == ["mail"]


def test_create_false(tmp_path: Path) -> None:
    mailbox.Maildir(str(tmp_path / "exists"), create=True)
    (tmp_path / "halfmade").mkdir()
    relay = MaildirRelay(tmp_path, create=False)
    result = relay.attempt(
        make_envelope(recipients=["exists@x.test", "missing@x.test", "halfmade@x.test"]), 0
    )
    assert delivered(result["exists@x.test"])
    for rcpt in ("missing@x.test", "halfmade@x.test"):
        error = result[rcpt]
        assert isinstance(error, PermanentRelayError)
        assert str(error.reply).startswith("550 5.1.1 ")
    assert sorted(os.listdir(tmp_path)) == ["exists", "halfmade"]
    assert os.listdir(tmp_path / "halfmade") == []


def test_custom_folder_for(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"

    def folder_for(rcpt: str) -> str | None:
        if rcpt.startswith("shared"):
            return "shared"  # relative to base_dir
        if rcpt.startswith("abs"):
            return str(elsewhere)
        if rcpt.startswith("busy"):
            raise TransientRelayError("try later")
        return None

    base = tmp_path / "base"
    relay = MaildirRelay(base, folder_for=folder_for)
    rcpts = ["shared1@x.test", "shared2@x.test", "abs@x.test", "busy@x.test", "nobody@x.test"]
    result = relay.attempt(make_envelope(recipients=rcpts), 0)
    assert len(read_folder(base / "shared")) == 2
    assert len(read_folder(elsewhere)) == 1
    assert isinstance(result["busy@x.test"], TransientRelayError)
    assert isinstance(result["nobody@x.test"], PermanentRelayError)
    assert str(result["nobody@x.test"].reply).startswith("550 5.1.1 ")


@pytest.mark.parametrize(
    ("code", "esc"),
    [(errno.ENOSPC, "4.3.1"), (errno.EDQUOT, "4.2.2"), (errno.EIO, "4.3.0")],
)
def test_write_errors_are_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int, esc: str
) -> None:
    def failing_write(fd: int, data: bytes) -> None:
        os.write(fd, data[:10])
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(maildir_module, "_write_all", failing_write)
    result = MaildirRelay(tmp_path).attempt(make_envelope(recipients=["u@x.test"]), 0)
    error = result["u@x.test"]
    assert isinstance(error, TransientRelayError)
    assert str(error.reply).startswith(f"450 {esc} ")
    assert os.strerror(code) in str(error.reply)
    assert os.listdir(tmp_path / "u" / "tmp") == []
    assert os.listdir(tmp_path / "u" / "new") == []


def test_unwritable_base_is_retried(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_bytes(b"")
    result = MaildirRelay(blocker).attempt(make_envelope(recipients=["u@x.test"]), 0)
    error = result["u@x.test"]
    assert isinstance(error, TransientRelayError)
    assert str(error.reply).startswith("450 4.3.0 ")


def test_sender_with_line_break_refused(tmp_path: Path) -> None:
    with pytest.raises(PermanentRelayError) as info:
        MaildirRelay(tmp_path).attempt(make_envelope(sender="a@b\r\nX-Evil: 1", recipients=["u@x.test"]), 0)
    assert str(info.value.reply).startswith("550 5.1.7 ")
    assert os.listdir(tmp_path) == []


def test_hub_keeps_running_during_delivery(tmp_path: Path) -> None:
    ticks: list[int] = []

    def ticker() -> None:
        while True:
            ticks.append(1)
            gevent.sleep(0.001)

    tick = gevent.spawn(ticker)
    gevent.sleep(0)
    relay = MaildirRelay(tmp_path)
    big = make_envelope(recipients=[f"u{i}@x.test" for i in range(10)], body=b"z" * 2_000_000 + b"\r\n")
    results: Any = relay.attempt(big, 0)
    tick.kill()
    assert all(reply.code == "250" for reply in results.values())
    assert len(ticks) > 1
