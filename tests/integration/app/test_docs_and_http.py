"""The sample config and the docs stay in step with the schema; the HTTP edge is wired."""

from __future__ import annotations

import base64
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from slimta.app.config import SCHEMA

from .conftest import ROOT, config_text, free_port, slimta_cmd, wait_maildir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


def test_sample_config_is_valid(tmp_path: Path) -> None:
    status, out, err = slimta_cmd("check-config", "-c", str(ROOT / "examples" / "slimta.toml"), cwd=tmp_path)
    assert status == 0, err
    assert 'forward = {"^(postmaster|abuse)@example\\\\.com$" = "admin@example.com"}' in out


def test_every_key_is_documented() -> None:
    doc = (ROOT / "docs" / "command.rst").read_text()
    for section, (common, types) in SCHEMA.items():
        for keys in (common, *types.values()):
            for key in keys:
                assert f"``{key}``" in doc, f"{section}.{key} is not in docs/command.rst"


def _post(port: int, sender: str, rcpt: str) -> tuple[int, str]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/",
        data=b"Subject: over http\r\n\r\nhello\r\n",
        headers={
            "Content-Type": "message/rfc822",
            "X-Ehlo": "client.test",
            "X-Envelope-Sender": base64.b64encode(sender.encode()).decode(),
            "X-Envelope-Recipient": base64.b64encode(rcpt.encode()).decode(),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("X-Smtp-Reply", "")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("X-Smtp-Reply", "")


def test_http_edge_delivers_locally_and_refuses_relaying(tmp_path: Path, slimta_node: Any) -> None:
    port, http_port = free_port(), free_port()
    more = f'[[edge]]\nname = "web"\ntype = "http"\nlisten = "127.0.0.1:{http_port}"\n'
    slimta_node(config_text(port, more_edges=more)).start(port, http_port)
    assert _post(http_port, "a@example.test", "ivy@localhost")[0] == 204
    assert len(wait_maildir(tmp_path / "var" / "mail", "ivy", 1)) == 1
    status, reply = _post(http_port, "a@example.test", "x@remote.test")
    assert status == 403
    assert "5.7.1 Relaying denied" in reply
