"""slimta.util.system, exercised in real child processes.

Each test writes a small script, runs it with this interpreter and reads back
what the child observed (as JSON), so forking, setsid, dup2 and setuid never
touch the test process itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import gevent
import pytest

pytestmark = pytest.mark.integration

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to change uid/gid")

# Shared by the child scripts: report(**values) prints one JSON line, and
# attempt(fn, *args) returns the error's class names and message instead of
# raising, so one child can check several failure cases.
_PRELUDE = """
import json, os, sys
from slimta.util.system import *

def report(**values):
    sys.__stdout__.write(json.dumps(values) + "\\n")
    sys.__stdout__.flush()

def attempt(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except Exception as exc:
        return {"types": [c.__name__ for c in type(exc).__mro__], "msg": str(exc),
                "errno": getattr(exc, "errno", None)}
    return None
"""


def _write_script(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "child.py"
    script.write_text(_PRELUDE + textwrap.dedent(body))
    return script


def _run(tmp_path: Path, body: str, *args: str, stdin: bytes = b"") -> tuple[dict[str, Any], str]:
    """Run *body* in a child; return its last JSON report and its stderr."""
    script = _write_script(tmp_path, body)
    proc = subprocess.run(
        [sys.executable, str(script), *args],
        input=stdin,
        capture_output=True,
        cwd=tmp_path,
        timeout=20,
        check=False,
    )
    stderr = proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, stderr
    lines = proc.stdout.decode().splitlines()
    assert lines, f"child reported nothing; stderr:\n{stderr}"
    return json.loads(lines[-1]), stderr


def _wait_for(path: Path, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        gevent.sleep(0.02)


# --- daemonize ----------------------------------------------------------------


def test_daemonize_detaches_and_pid_file_names_the_daemon(tmp_path: Path) -> None:
    script = _write_script(
        tmp_path,
        """
        import time
        here = os.path.abspath(sys.argv[1])
        original = os.getpid()
        # Built before daemonize(): the relative name is resolved here, before
        # the daemon changes to "/".
        pid_file = PidFile("daemon.pid")
        pid = daemonize()
        with pid_file as pidfile:
            info = dict(original=original, returned=pid, pid=os.getpid(),
                        sid=os.getsid(0), cwd=os.getcwd(), pidfile=pidfile,
                        umask=os.umask(0o022))
            with open(os.path.join(here, "info.tmp"), "w") as f:
                json.dump(info, f)
            os.rename(os.path.join(here, "info.tmp"), os.path.join(here, "info.json"))
            # Stay alive until the test has seen us running on our own.
            while not os.path.exists(os.path.join(here, "go")):
                time.sleep(0.02)
        open(os.path.join(here, "done"), "w").close()
        """,
    )
    with open(tmp_path / "out.txt", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path)], cwd=tmp_path, stdout=out, stderr=out
        )
        # The process we started returns at once, while the daemon lives on.
        assert proc.wait(timeout=10) == 0
    pidfile = tmp_path / "daemon.pid"
    try:
        _wait_for(tmp_path / "info.json")
        info = json.loads((tmp_path / "info.json").read_text())
        daemon = info["pid"]
        assert info["returned"] == daemon
        assert daemon not in (info["original"], proc.pid)
        os.kill(daemon, 0)  # still running after its parent exited
        assert info["sid"] not in (os.getsid(0), proc.pid)
        assert info["cwd"] == "/"
        assert info["umask"] == 0o022
        assert info["pidfile"] == str(pidfile)
        assert pidfile.read_text() == f"{daemon}\n"
    finally:
        # Always release the daemon, even when an assertion failed.
        (tmp_path / "go").touch()
    _wait_for(tmp_path / "done")
    assert not pidfile.exists()
    assert (tmp_path / "out.txt").read_bytes() == b"", "the child wrote errors"


# --- redirect_stdio -------------------------------------------------------------


def test_redirect_stdio_into_files(tmp_path: Path) -> None:
    (tmp_path / "out.log").write_text("old line\n")
    (tmp_path / "in.txt").write_text("from a file\n")
    proc = subprocess.run(
        [
            sys.executable,
            str(
                _write_script(
                    tmp_path,
                    """
                    print("buffered before", end="")
                    redirect_stdio(stdout="out.log", stderr="err.log", stdin="in.txt")
                    print("to stdout")
                    print("to stderr", file=sys.stderr)
                    os.write(1, b"raw fd 1\\n")
                    print("read:", sys.stdin.read().strip())
                    """,
                )
            ),
        ],
        input=b"from the pipe\n",
        capture_output=True,
        cwd=tmp_path,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # Only what was printed before the redirect reached the original stdout.
    assert proc.stdout == b"buffered before"
    assert proc.stderr == b""
    out = (tmp_path / "out.log").read_text()
    assert out == "old line\nto stdout\nraw fd 1\nread: from a file\n"
    assert (tmp_path / "err.log").read_text() == "to stderr\n"


def test_redirect_stdio_defaults_to_devnull(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(
                _write_script(
                    tmp_path,
                    """
                    redirect_stdio()
                    print("lost")
                    print("lost too", file=sys.stderr)
                    data = sys.stdin.read()
                    with open("stdin-was.txt", "w") as f:
                        f.write(repr(data))
                    """,
                )
            ),
        ],
        input=b"not read\n",
        capture_output=True,
        cwd=tmp_path,
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0
    assert proc.stdout == b""
    assert proc.stderr == b""
    assert (tmp_path / "stdin-was.txt").read_text() == "''"


def test_redirect_stdio_bad_path_leaves_stdio_alone(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path,
        """
        err = attempt(redirect_stdio, stdout="/nonexistent-dir/out.log")
        print("still on the pipe")
        report(err=err)
        """,
    )
    err = result["err"]
    assert "RedirectStdioError" in err["types"]
    assert "SlimtaError" in err["types"]
    assert "OSError" in err["types"]
    assert "/nonexistent-dir/out.log" in err["msg"]
    assert err["errno"] == 2


# --- drop_privileges ------------------------------------------------------------


def test_unknown_user_and_group_are_named(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path,
        """
        report(
            user=attempt(drop_privileges, "no-such-user-slimta"),
            group=attempt(drop_privileges, group="no-such-group-slimta"),
            both=attempt(drop_privileges, "root", "no-such-group-slimta"),
            bare_uid=attempt(drop_privileges, 54321),
            negative=attempt(drop_privileges, -1),
            boolean=attempt(drop_privileges, True),
            empty=attempt(drop_privileges, ""),
            uid=os.getuid(), gid=os.getgid(),
        )
        """,
    )
    assert "UnknownUserError" in result["user"]["types"]
    assert "KeyError" in result["user"]["types"]
    assert "SlimtaError" in result["user"]["types"]
    assert result["user"]["msg"] == "unknown user 'no-such-user-slimta'"
    assert "UnknownGroupError" in result["group"]["types"]
    assert result["group"]["msg"] == "unknown group 'no-such-group-slimta'"
    # The group is checked before anything changes.
    assert "UnknownGroupError" in result["both"]["types"]
    assert "UnknownUserError" in result["bare_uid"]["types"]
    assert "give group= as well" in result["bare_uid"]["msg"]
    for case in ("negative", "boolean", "empty"):
        assert "PrivilegeError" in result[case]["types"], case
    # None of the failures changed the ids.
    assert (result["uid"], result["gid"]) == (os.getuid(), os.getgid())


def test_no_arguments_change_nothing(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path,
        """
        before = (os.getuid(), os.getgid(), sorted(os.getgroups()))
        drop_privileges()
        report(same=before == (os.getuid(), os.getgid(), sorted(os.getgroups())))
        """,
    )
    assert result["same"]


@needs_root
@pytest.mark.parametrize(
    "args",
    [
        ["nobody"],  # user only: the user's primary group, via initgroups
        ["nobody", "nogroup"],
        [65534, 65534],
        ["65534", "65534"],
    ],
)
def test_drop_to_nobody(tmp_path: Path, args: list[Any]) -> None:
    import grp
    import pwd

    nobody = pwd.getpwnam("nobody")
    result, _ = _run(
        tmp_path,
        """
        args = json.loads(sys.argv[1])
        drop_privileges(*args)
        regain = attempt(os.setuid, 0)
        report(uid=os.getuid(), euid=os.geteuid(), gid=os.getgid(), egid=os.getegid(),
               groups=sorted(os.getgroups()), regain=regain)
        """,
        json.dumps(args),
    )
    assert (result["uid"], result["euid"]) == (nobody.pw_uid, nobody.pw_uid)
    assert (result["gid"], result["egid"]) == (nobody.pw_gid, nobody.pw_gid)
    # No trace of root's groups survives.
    allowed = {nobody.pw_gid} | {g.gr_gid for g in grp.getgrall() if "nobody" in g.gr_mem}
    assert 0 not in result["groups"]
    assert set(result["groups"]) <= allowed
    assert result["regain"] is not None
    assert "PermissionError" in result["regain"]["types"]


@needs_root
def test_group_only_keeps_user_and_replaces_groups(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path,
        """
        drop_privileges(group="nogroup")
        report(uid=os.getuid(), gid=os.getgid(), groups=os.getgroups())
        """,
    )
    assert result == {"uid": 0, "gid": 65534, "groups": [65534]}


@needs_root
def test_bare_uid_with_group(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path,
        """
        drop_privileges(54321, 54322)
        report(uid=os.getuid(), gid=os.getgid(), groups=os.getgroups())
        """,
    )
    assert result == {"uid": 54321, "gid": 54322, "groups": [54322]}


@needs_root
def test_unprivileged_switch_is_refused(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path,
        """
        drop_privileges("nobody")
        report(err=attempt(drop_privileges, "root"), uid=os.getuid())
        """,
    )
    assert "PrivilegeError" in result["err"]["types"]
    assert "OSError" in result["err"]["types"]
    assert "'root'" in result["err"]["msg"]
    assert result["err"]["errno"] == 1  # EPERM
    assert result["uid"] == 65534


# --- PidFile --------------------------------------------------------------------


def test_pid_file_written_and_removed(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path,
        """
        p = PidFile("app.pid")
        with p as name:
            content = open(name).read()
            mode = os.stat(name).st_mode & 0o777
        umask = os.umask(0)
        report(attr=p.filename, name=name, content=content, pid=os.getpid(),
               mode=mode, umask=umask, after=os.path.exists(name))
        """,
    )
    assert result["attr"] == result["name"] == str(tmp_path / "app.pid")
    assert result["content"] == f"{result['pid']}\n"
    assert result["mode"] == 0o644 & ~result["umask"]
    assert result["after"] is False


def test_pid_file_removed_on_error_and_overwrites_stale(tmp_path: Path) -> None:
    (tmp_path / "app.pid").write_text("99999999\nstale junk\n")
    result, _ = _run(
        tmp_path,
        """
        seen = None
        try:
            with PidFile("app.pid") as name:
                seen = open(name).read()
                raise RuntimeError("boom")
        except RuntimeError:
            pass
        report(seen=seen, pid=os.getpid(), after=os.path.exists("app.pid"))
        """,
    )
    assert result["seen"] == f"{result['pid']}\n"
    assert result["after"] is False


def test_pid_file_not_removed_by_other_process(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path,
        """
        with PidFile("app.pid"):
            child = os.fork()
            if child != 0:
                os.waitpid(child, 0)
                still_there = os.path.exists("app.pid")
        if child == 0:
            os._exit(0)
        report(still_there=still_there, after=os.path.exists("app.pid"))
        """,
    )
    # The forked child left the block first; only the owner removed the file.
    assert result == {"still_there": True, "after": False}


def test_pid_file_none_and_errors(tmp_path: Path) -> None:
    result, _ = _run(
        tmp_path,
        """
        with PidFile() as a, PidFile("") as b:
            pass
        ran = False
        def enter_bad():
            global ran
            with PidFile("/nonexistent-dir/app.pid"):
                ran = True
        report(a=a, b=b, filename=PidFile().filename, err=attempt(enter_bad), ran=ran)
        """,
    )
    assert result["a"] is None
    assert result["b"] is None
    assert result["filename"] is None
    assert "PidFileError" in result["err"]["types"]
    assert "SlimtaError" in result["err"]["types"]
    assert "/nonexistent-dir/app.pid" in result["err"]["msg"]
    assert result["ran"] is False
