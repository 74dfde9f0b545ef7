"""``slimta check-config`` and start-up refusals: exit 2, one clear message, nothing bound."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest

from .conftest import config_text, free_port, slimta_cmd

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_default_config_is_valid_and_printed(tmp_path: Path) -> None:
    status, out, err = slimta_cmd("check-config", cwd=tmp_path)
    assert status == 0, err
    assert 'listen = ["127.0.0.1:2525"]' in out
    assert 'type = "maildir"' in out
    assert f'path = "{tmp_path}/var/queue"' in out
    # check-config creates nothing.
    assert not (tmp_path / "var").exists()


def _check(tmp_path: Path, text: str) -> tuple[int, str]:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    status, out, err = slimta_cmd("check-config", "-c", str(path), cwd=tmp_path)
    assert out == ""
    return status, err


def test_unknown_key_names_key_and_line(tmp_path: Path) -> None:
    text = config_text(free_port()).replace('name = "smtp"', 'name = "smtp"\nlisten_backlog = 5')
    status, err = _check(tmp_path, text)
    line = text.splitlines().index("listen_backlog = 5") + 1
    assert status == 2
    assert f"bad.toml:{line}: edge 'smtp': listen_backlog: unknown key 'listen_backlog'" in err
    assert err.count("\n") == 1  # one message, no traceback


def test_unknown_key_of_another_type_says_so(tmp_path: Path) -> None:
    text = config_text(free_port(), relays='[[relay]]\nname = "out"\ntype = "mx"\nhost = "x"\n')
    status, err = _check(tmp_path, text)
    assert status == 2
    assert "relay 'out': host: unknown key 'host' (used only by type static, lmtp)" in err


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("127.0.0.1:99999", "port 99999 in '127.0.0.1:99999' is out of range"),
        ("127.0.0.1:0", "port 0 in '127.0.0.1:0' is out of range"),
        ("127.0.0.1", "'127.0.0.1' is not host:port"),
    ],
)
def test_bad_port(tmp_path: Path, listen: str, message: str) -> None:
    text = config_text(2525).replace("127.0.0.1:2525", listen)
    status, err = _check(tmp_path, text)
    line = text.splitlines().index(f'listen = "{listen}"') + 1
    assert status == 2
    assert f"bad.toml:{line}: edge 'smtp': listen: {message}" in err


def test_wrong_type(tmp_path: Path) -> None:
    status, err = _check(tmp_path, config_text(2525, edge_extra='max_size = "big"'))
    assert status == 2
    assert "edge 'smtp': max_size: must be an integer, got 'big'" in err


def test_missing_cert_file(tmp_path: Path) -> None:
    extra = f'tls_cert = "{tmp_path}/nope.pem"\ntls_key = "{tmp_path}/nope.key"'
    status, err = _check(tmp_path, config_text(2525, edge_extra=extra))
    assert status == 2
    assert f"edge 'smtp': tls_cert: file '{tmp_path}/nope.pem' does not exist" in err


def test_unreadable_credentials_file(tmp_path: Path, tls_files: Any) -> None:
    extra = (
        f'tls_cert = "{tls_files.cert}"\ntls_key = "{tls_files.key}"\nauth = true\ncredentials = "{tmp_path}"'
    )
    status, err = _check(tmp_path, config_text(2525, edge_extra=extra))
    assert status == 2
    assert "edge 'smtp': credentials:" in err
    assert "cannot read the credentials file" in err


def test_missing_credentials_file(tmp_path: Path, tls_files: Any) -> None:
    extra = (
        f'tls_cert = "{tls_files.cert}"\ntls_key = "{tls_files.key}"\n'
        f'auth = true\ncredentials = "{tmp_path}/missing"'
    )
    status, err = _check(tmp_path, config_text(2525, edge_extra=extra))
    assert status == 2
    assert "No such file or directory" in err


def test_malformed_credentials_line(tmp_path: Path, tls_files: Any) -> None:
    creds = tmp_path / "creds"
    creds.write_text("# users\nalice:$pbkdf2-sha256$x\nbob\n")
    extra = (
        f'tls_cert = "{tls_files.cert}"\ntls_key = "{tls_files.key}"\nauth = true\ncredentials = "{creds}"'
    )
    status, err = _check(tmp_path, config_text(2525, edge_extra=extra))
    assert status == 2
    assert f"{creds}:3: expected user:hash" in err


def test_auth_without_tls(tmp_path: Path) -> None:
    creds = tmp_path / "creds"
    creds.write_text("alice:secret\n")
    status, err = _check(tmp_path, config_text(2525, edge_extra=f'auth = true\ncredentials = "{creds}"'))
    assert status == 2
    assert "AUTH needs TLS" in err


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0"])
def test_relay_loop_to_itself(tmp_path: Path, host: str) -> None:
    relays = f'[[relay]]\nname = "out"\ntype = "static"\nhost = "{host}"\nport = 2525\n'
    text = config_text(2525, queue_extra='relay = "out"', relays=relays)
    status, err = _check(tmp_path, text)
    assert status == 2
    assert f"relay 'out': host: delivers to {host}:2525, this node's own edge 'smtp': mail would loop" in err


def test_open_relay_network_refused(tmp_path: Path) -> None:
    status, err = _check(tmp_path, config_text(2525, edge_extra='relay_networks = ["0.0.0.0/0"]'))
    assert status == 2
    assert "would make this node an open relay" in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[procss]\n", "unknown section 'procss'"),
        ("[[process]]\n", "'process' must be written as [process]"),
        ("[process]\nlog_level = 'loud'\n", "process: log_level: 'loud' is not one of"),
        ("[[edge]]\nlisten = ':25'\nqueue = 'x'\n[[queue]]\nname='q'\n", "no queue is called 'x'"),
        ("[[queue]]\nrelay = 'nowhere'\n", "queue 'queue0': relay: no relay is called 'nowhere'"),
        ("[[relay]]\ntype = 'carrier-pigeon'\n", "unknown type 'carrier-pigeon'"),
        ("[process\n", "not valid TOML"),
    ],
)
def test_other_mistakes(tmp_path: Path, text: str, message: str) -> None:
    status, err = _check(tmp_path, text)
    assert status == 2
    assert message in err


def test_bad_config_fails_before_binding(tmp_path: Path) -> None:
    """A config error is reported even though its port is taken: nothing was bound first."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        relays = f'[[relay]]\nname = "out"\ntype = "static"\nhost = "127.0.0.1"\nport = {port}\n'
        (tmp_path / "loop.toml").write_text(config_text(port, queue_extra='relay = "out"', relays=relays))
        status, _, err = slimta_cmd("run", "-c", "loop.toml", cwd=tmp_path)
    assert status == 2
    assert "mail would loop back to itself" in err
    assert not (tmp_path / "var").exists()


def test_port_in_use_is_reported(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        (tmp_path / "s.toml").write_text(config_text(port))
        status, _, err = slimta_cmd("run", "-c", "s.toml", cwd=tmp_path)
    assert status == 1
    assert f"edge 'smtp': 127.0.0.1:{port} is already in use" in err


@pytest.mark.parametrize("setting", ["proxy_protocol = true", 'dnsbl = ["zen.example"]', "spf = true"])
def test_reserved_keys_are_refused_not_ignored(tmp_path: Path, setting: str) -> None:
    status, err = _check(tmp_path, config_text(2525, edge_extra=setting))
    assert status == 2
    assert "not wired into the slimta command yet" in err
