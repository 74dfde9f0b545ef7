"""10,000 idle connections held by one SmtpEdge process (RELIABILITY R6)."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ROOT = Path(__file__).resolve().parents[3]
SESSIONS = 10000


def test_ten_thousand_idle_sessions():
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < SESSIONS + 200:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {SESSIONS + 200}")
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.hardening._idle_load", str(SESSIONS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=45,
        check=True,
    )
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print(
        f"\n{result['sessions']} idle sessions: {result['kib_per_session']:.2f} KiB each, "
        f"RSS {result['rss_after_kib'] / 1024:.1f} MiB, normal client {result['normal_client_s'] * 1000:.1f} ms"
    )
    assert result["sessions"] == SESSIONS
    assert result["kib_per_session"] <= 8.0
    assert result["rss_after_kib"] < 150 * 1024
    assert result["normal_client_s"] < 1.0
