"""PipeRelay, MaildropRelay and DovecotLdaRelay against real child processes.

Each test writes a small Python script to ``tmp_path`` and runs it with this
interpreter; what the child saw (its arguments, its standard input) comes
back as JSON in a file.  Debian's ``maildrop`` is used when it is installed.
"""

from __future__ import annotations

import json
import mailbox
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gevent
import pytest

from slimta.relay import PermanentRelayError, RelayError, TransientRelayError
from slimta.relay.pipe import (
    EX_NOUSER,
    EX_TEMPFAIL,
    MESSAGE_LIMIT,
    OUTPUT_LIMIT,
    DovecotLdaRelay,
    MaildropRelay,
    PipeRelay,
)
from tests.conftest import require_tool

from ._helpers import HEADERS, make_envelope

pytestmark = [pytest.mark.integration, pytest.mark.timeout(10)]

MakeScript = Callable[[str, str], str]

# Records its arguments and standard input in the JSON file named by its
# first argument (appending one line per run), then exits 0.
RECORDER = """
import json, sys
data = sys.stdin.buffer.read()
with open(sys.argv[1], "a") as out:
    out.write(json.dumps({"argv": sys.argv[2:], "stdin": data.decode("latin-1")}) + "\\n")
"""

# Exits with argv[1], writing argv[2] to stdout and argv[3] to stderr.
EXITER = """
import sys
sys.stdin.buffer.read()
sys.stdout.write(sys.argv[2])
sys.stderr.write(sys.argv[3])
sys.exit(int(sys.argv[1]))
"""


def runs(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def attempt(relay: PipeRelay, **kwargs: Any) -> Any:
    return relay._attempt(make_envelope(**kwargs), 0)


# -- macros and input ---------------------------------------------------------


def test_every_macro_is_substituted(make_script: MakeScript, tmp_path: Path) -> None:
    log = tmp_path / "runs.json"
    relay = PipeRelay(
        [
            make_script("rec", RECORDER),
            str(log),
            "{sender}",
            "{recipient}",
            "{message_id}",
            "{client_ip}",
            "{client_host}",
            "{client_ehlo}",
            "{client_protocol}",
            "--auth={client_auth}",
            "{{literal}}",
        ]
    )
    env = make_envelope(recipients=["rcpt@example.com"])
    env.client.update(ip="192.0.2.1", host="mail.example.net", name="ehlo.example.net", protocol="ESMTPSA")
    env.client["auth"] = "alice"
    assert relay._attempt(env, 0) == {"rcpt@example.com": None}
    (run,) = runs(log)
    assert run["argv"] == [
        "sender@example.com",
        "rcpt@example.com",
        "<id.1@example.com>",
        "192.0.2.1",
        "mail.example.net",
        "ehlo.example.net",
        "ESMTPSA",
        "--auth=alice",
        "{literal}",
    ]


def test_unknown_values_are_empty_and_input_uses_lf(make_script: MakeScript, tmp_path: Path) -> None:
    log = tmp_path / "runs.json"
    relay = PipeRelay([make_script("rec", RECORDER), str(log), "s={sender}", "ip={client_ip}"])
    body = b"line one\r\nline two \xe9\r\nbare\rcr\n"
    assert attempt(relay, sender="", body=body) is None
    (run,) = runs(log)
    assert run["argv"] == ["s=", "ip="]
    expected = (HEADERS + b"line one\r\nline two \xe9\r\nbare\rcr\r\n").replace(b"\r\n", b"\n")
    assert run["stdin"].encode("latin-1") == expected


def test_crlf_keyword_keeps_crlf(make_script: MakeScript, tmp_path: Path) -> None:
    log = tmp_path / "runs.json"
    relay = PipeRelay([make_script("rec", RECORDER), str(log)], crlf=True)
    assert attempt(relay, body=b"a\nb\r\n") is None
    (run,) = runs(log)
    assert run["stdin"].encode("latin-1") == HEADERS + b"a\r\nb\r\n"


# -- per-recipient delivery -------------------------------------------------------

PER_RCPT = """
import sys
sys.stdin.buffer.read()
with open(sys.argv[1], "a") as out:
    out.write(sys.argv[2] + "\\n")
user = sys.argv[2].partition("@")[0]
if user == "later":
    sys.exit(75)
if user == "nouser":
    print("no such user")
    sys.exit(67)
if user == "full":
    print("5.2.2 Mailbox full")
    sys.exit(1)
"""


def test_one_process_per_recipient(make_script: MakeScript, tmp_path: Path) -> None:
    log = tmp_path / "rcpts.txt"
    relay = PipeRelay([make_script("per", PER_RCPT), str(log), "{recipient}"])
    assert relay.per_recipient
    rcpts = ["ok@x.test", "later@x.test", "nouser@x.test", "full@x.test", "ok@x.test"]
    result = attempt(relay, recipients=rcpts)
    assert log.read_text().split() == rcpts[:4]  # the duplicate is delivered once
    assert result["ok@x.test"] is None
    assert isinstance(result["later@x.test"], TransientRelayError)
    assert str(result["later@x.test"].reply).startswith("450 4.3.0")
    assert isinstance(result["nouser@x.test"], PermanentRelayError)
    assert str(result["nouser@x.test"].reply) == "550 5.1.1 no such user"
    assert isinstance(result["full@x.test"], PermanentRelayError)
    assert str(result["full@x.test"].reply) == "550 5.2.2 Mailbox full"


def test_without_recipient_macro_one_process(make_script: MakeScript, tmp_path: Path) -> None:
    log = tmp_path / "runs.json"
    relay = PipeRelay([make_script("rec", RECORDER), str(log), "{sender}"])
    assert not relay.per_recipient
    assert attempt(relay, recipients=["a@x.test", "b@x.test"]) is None
    assert len(runs(log)) == 1


def test_per_recipient_can_be_turned_off(make_script: MakeScript, tmp_path: Path) -> None:
    log = tmp_path / "runs.json"
    relay = PipeRelay([make_script("rec", RECORDER), str(log), "{recipient}"], per_recipient=False)
    assert attempt(relay, recipients=["a@x.test", "b@x.test"]) is None
    assert [run["argv"] for run in runs(log)] == [["a@x.test"]]


# -- exit status and output ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "stdout", "stderr", "error", "reply"),
    [
        (0, "5.1.1 ignored on success", "", None, None),
        (EX_TEMPFAIL, "", "try later", TransientRelayError, "450 4.3.0 try later"),
        (1, "", "", PermanentRelayError, "550 5.3.0 Delivery failed"),
        (1, "", "  cannot\n  write  ", PermanentRelayError, "550 5.3.0 cannot write"),
        (EX_NOUSER, "no such user", "ignored", PermanentRelayError, "550 5.1.1 no such user"),
        (1, "5.2.2 Mailbox full\n", "", PermanentRelayError, "550 5.2.2 Mailbox full"),
        (1, "4.2.1 Try again", "", TransientRelayError, "450 4.2.1 Try again"),
        (EX_TEMPFAIL, "5.7.1 Refused", "", PermanentRelayError, "550 5.7.1 Refused"),
        (0, "", "", None, None),
    ],
)
def test_exit_status_and_output(
    make_script: MakeScript,
    status: int,
    stdout: str,
    stderr: str,
    error: type[RelayError] | None,
    reply: str | None,
) -> None:
    relay = PipeRelay([make_script("exit", EXITER), str(status), stdout, stderr])
    if error is None:
        assert attempt(relay) is None
        return
    with pytest.raises(error) as info:
        attempt(relay)
    assert type(info.value) is error
    assert str(info.value.reply) == reply


def test_killed_by_signal_is_retried(make_script: MakeScript) -> None:
    script = make_script("sig", "import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n")
    with pytest.raises(TransientRelayError) as info:
        attempt(PipeRelay([script]))
    assert "killed by signal 15" in str(info.value.reply)


def test_raise_error_gets_text(make_script: MakeScript) -> None:
    seen: list[tuple[int, object, object]] = []

    class Custom(PipeRelay):
        def raise_error(self, status: int, stdout: str, stderr: str) -> Any:
            seen.append((status, stdout, stderr))
            raise TransientRelayError("custom")

    with pytest.raises(TransientRelayError, match="custom"):
        attempt(Custom([make_script("exit", EXITER), "3", "out \xe9", "err"]))
    assert seen == [(3, "out \xe9", "err")]


# -- hanging, chatty and missing programs -------------------------------------------

HANGER = """
import os, sys, time
with open(sys.argv[1], "w") as out:
    out.write(str(os.getpid()))
time.sleep(60)
"""


@pytest.mark.parametrize("body_size", [10, 5_000_000])
def test_hanging_child_is_killed_at_timeout(make_script: MakeScript, tmp_path: Path, body_size: int) -> None:
    # With a 5 MB message the child never reads its input either, so the
    # writer is stuck on a full pipe when the timeout fires.
    pid_file = tmp_path / "pid"
    relay = PipeRelay([make_script("hang", HANGER), str(pid_file)], timeout=0.5)
    start = time.monotonic()
    with pytest.raises(TransientRelayError) as info:
        attempt(relay, body=b"x" * (body_size - 2) + b"\r\n")
    elapsed = time.monotonic() - start
    assert 0.4 < elapsed < 5
    assert str(info.value.reply).startswith("450 4.4.2 ")
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped


FORKER = """
import os, subprocess, sys, time
# A grandchild that keeps stdout open and outlives its parent.
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
with open(sys.argv[1], "w") as out:
    out.write(str(child.pid))
"""


def test_grandchild_holding_the_pipes_is_killed(make_script: MakeScript, tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    relay = PipeRelay([make_script("forker", FORKER), str(pid_file)], timeout=0.5)
    with pytest.raises(TransientRelayError) as info:
        attempt(relay)
    assert str(info.value.reply).startswith("450 4.4.2 ")
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break  # killed and reaped by init (the test process is not its parent)
        gevent.sleep(0.05)
    else:
        pytest.fail("the grandchild survived the timeout")


def test_other_greenlets_run_while_child_runs(make_script: MakeScript) -> None:
    ticks: list[int] = []

    def ticker() -> None:
        for i in range(5):
            ticks.append(i)
            gevent.sleep(0.05)

    relay = PipeRelay([make_script("slow", "import time, sys\nsys.stdin.read()\ntime.sleep(0.4)\n")])
    tick = gevent.spawn(ticker)
    assert attempt(relay) is None
    tick.join()
    assert ticks == [0, 1, 2, 3, 4]


CHATTY = """
import sys
chunk = b"o" * 65536
for _ in range(80):  # 5 MiB to each stream, interleaved, without reading stdin
    sys.stdout.buffer.write(chunk)
    sys.stderr.buffer.write(chunk.replace(b"o", b"e"))
sys.stdout.flush()
sys.exit(int(sys.argv[1]))
"""


@pytest.mark.parametrize("status", [0, 1])
def test_megabytes_of_output_do_not_deadlock(make_script: MakeScript, status: int) -> None:
    seen: list[tuple[int, int]] = []

    class Recording(PipeRelay):
        def raise_error(self, status: int, stdout: str, stderr: str) -> Any:
            seen.append((len(stdout), len(stderr)))
            super().raise_error(status, stdout, stderr)

    relay = Recording([make_script("chatty", CHATTY), str(status)], timeout=8)
    big_body = b"y" * 5_000_000 + b"\r\n"
    if status == 0:
        assert attempt(relay, body=big_body) is None
        return
    with pytest.raises(PermanentRelayError) as info:
        attempt(relay, body=big_body)
    assert seen == [(OUTPUT_LIMIT, OUTPUT_LIMIT)]
    message = info.value.reply.message or ""
    assert message.startswith("5.3.0 ooo")
    assert len(message) <= MESSAGE_LIMIT + 10


def test_missing_program_is_retried(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-program")
    with pytest.raises(TransientRelayError) as info:
        attempt(PipeRelay([missing, "{sender}"]))
    reply = str(info.value.reply)
    assert reply.startswith("450 4.3.0 Cannot run the delivery program")
    assert missing in reply
    assert "No such file or directory" in reply


# -- values that must not reach the program ------------------------------------------


def test_recipient_that_looks_like_an_option_is_refused(make_script: MakeScript, tmp_path: Path) -> None:
    log = tmp_path / "runs.json"
    relay = PipeRelay([make_script("rec", RECORDER), str(log), "{recipient}", "--to={recipient}"])
    result = attempt(relay, recipients=["-oQ/tmp@x.test", "ok@x.test", "nul\x00@x.test"])
    bad = result["-oQ/tmp@x.test"]
    assert isinstance(bad, PermanentRelayError)
    assert str(bad.reply).startswith("550 5.1.3 ")
    nul = result["nul\x00@x.test"]
    assert isinstance(nul, PermanentRelayError)
    assert "NUL" in str(nul.reply)
    assert result["ok@x.test"] is None
    assert [run["argv"] for run in runs(log)] == [["ok@x.test", "--to=ok@x.test"]]


def test_sender_that_looks_like_an_option_is_refused(make_script: MakeScript, tmp_path: Path) -> None:
    log = tmp_path / "runs.json"
    relay = PipeRelay([make_script("rec", RECORDER), str(log), "{sender}"])
    with pytest.raises(PermanentRelayError) as info:
        attempt(relay, sender="-x@y.test")
    assert str(info.value.reply).startswith("550 5.1.7 ")
    assert runs(log) == []
    # Inside an argument that does not start with it, a dash is harmless.
    assert (
        PipeRelay([make_script("rec2", RECORDER), str(log), "-f{sender}"])._attempt(
            make_envelope(sender="-x@y.test"), 0
        )
        is None
    )
    assert runs(log)[0]["argv"] == ["-f-x@y.test"]


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ("maildrop -f {sender}", {}, TypeError),
        ([], {}, ValueError),
        (["prog", "{nope}"], {}, ValueError),
        (["prog", "{sender.__class__}"], {}, ValueError),
        (["prog", "{sender!r}"], {}, ValueError),
        (["prog", "{sender"], {}, ValueError),
        (["prog"], {"shell": True}, TypeError),
        (["prog"], {"stdout": None}, TypeError),
        (["prog"], {"text": True}, TypeError),
    ],
)
def test_bad_construction(args: Any, kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        PipeRelay(args, **kwargs)


# -- maildrop and dovecot-lda ---------------------------------------------------------

FAKE_MDA = """
import json, os, sys
sys.stdin.buffer.read()
with open(os.path.join(os.path.dirname(sys.argv[0]), "mda.json"), "a") as out:
    out.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
user = args[args.index("-d") + 1].partition("@")[0] if "-d" in args else ""
codes = {"later": 75, "nouser": 67, "nohost": 68, "broken": 1}
if user in codes:
    sys.stderr.write("%s: failure for %s\\n" % (os.path.basename(sys.argv[0]), user))
sys.exit(codes.get(user, 0))
"""


def test_maildrop_relay_with_a_fake_maildrop(make_script: MakeScript, tmp_path: Path) -> None:
    fake = make_script("maildrop", FAKE_MDA)
    relay = MaildropRelay(fake, timeout=5, extra_args=["-d", "{recipient}"])
    result = attempt(relay, recipients=["ok@x.test", "later@x.test", "nouser@x.test", "broken@x.test"])
    assert result["ok@x.test"] is None
    # The "maildrop: " prefix is dropped, and str output is handled (4.0 hit
    # a bytes/str TypeError here on Python 3).
    assert str(result["later@x.test"].reply) == "450 4.3.0 failure for later"
    assert isinstance(result["later@x.test"], TransientRelayError)
    assert str(result["nouser@x.test"].reply) == "550 5.1.1 failure for nouser"
    assert str(result["broken@x.test"].reply) == "550 5.3.0 failure for broken"
    first = json.loads((tmp_path / "mda.json").read_text().splitlines()[0])
    assert first == ["-f", "sender@example.com", "-d", "ok@x.test"]


def test_maildrop_relay_once_without_recipient_macro(make_script: MakeScript, tmp_path: Path) -> None:
    relay = MaildropRelay(make_script("maildrop", FAKE_MDA))
    assert attempt(relay, recipients=["a@x.test", "b@x.test"]) is None
    assert (tmp_path / "mda.json").read_text().splitlines() == ['["-f", "sender@example.com"]']


def test_dovecot_lda_relay_with_a_fake_lda(make_script: MakeScript, tmp_path: Path) -> None:
    relay = DovecotLdaRelay(make_script("dovecot-lda", FAKE_MDA), timeout=5, extra_args=["-e"])
    rcpts = ["ok@x.test", "later@x.test", "nouser@x.test", "nohost@x.test"]
    result = attempt(relay, recipients=rcpts)
    assert result["ok@x.test"] is None
    assert isinstance(result["later@x.test"], TransientRelayError)
    assert str(result["nouser@x.test"].reply) == "550 5.1.1 dovecot-lda: failure for nouser"
    assert str(result["nohost@x.test"].reply) == "550 5.1.1 dovecot-lda: failure for nohost"
    argvs = [json.loads(line) for line in (tmp_path / "mda.json").read_text().splitlines()]
    assert argvs[0] == ["-f", "sender@example.com", "-d", "ok@x.test", "-e"]
    assert len(argvs) == 4


def test_default_paths() -> None:
    assert os.path.basename(MaildropRelay().args[0]) == "maildrop"
    assert os.path.basename(DovecotLdaRelay().args[0]) in {"dovecot-lda", "deliver"}
    assert DovecotLdaRelay().per_recipient


def _real_maildrop() -> str:
    # Skips on a developer machine without it; fails in CI, where .ci/run installs it.
    return require_tool("maildrop")


def test_real_maildrop_delivers_into_a_maildir(tmp_path: Path) -> None:
    folder = tmp_path / "Maildir"
    mailbox.Maildir(str(folder), create=True)
    filter_file = tmp_path / "mailfilter"
    filter_file.write_text(f'to "{folder}/"\n')
    filter_file.chmod(0o600)
    relay = MaildropRelay(_real_maildrop(), timeout=5, extra_args=[str(filter_file)])
    body = b"First line\r\nSecond line \xc3\xa9\r\n"
    assert attempt(relay, body=body) is None
    (stored,) = mailbox.Maildir(str(folder), factory=None, create=False)
    data = stored.as_bytes()
    assert data.endswith(b"\n\nFirst line\nSecond line \xc3\xa9\n")
    assert stored["Subject"] == "test"


def test_real_maildrop_failure_is_text(tmp_path: Path) -> None:
    relay = MaildropRelay(_real_maildrop(), timeout=5, extra_args=[str(tmp_path / "no-filter")])
    with pytest.raises(TransientRelayError) as info:
        attempt(relay)
    assert "Unable to open filter file" in str(info.value.reply)
    assert "maildrop:" not in str(info.value.reply)
