"""The hub-blocking guard itself must be able to fail a test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(60)
def test_blocking_the_hub_fails_the_test(tmp_path: Path) -> None:
    # The guard applies to integration tests (and tests marked hub_guard).
    (tmp_path / "integration").mkdir()
    probe = tmp_path / "integration" / "test_probe.py"
    probe.write_text(
        textwrap.dedent(
            """
            import gevent
            from gevent import monkey

            def test_blocks():
                real_sleep = monkey.get_original("time", "sleep")
                gevent.sleep(0.1)
                real_sleep(1.5)
                gevent.sleep(0.3)

            def test_cooperates():
                gevent.sleep(0.6)
            """
        )
    )
    (tmp_path / "conftest.py").write_text((ROOT / "tests" / "conftest.py").read_text())
    env = dict(os.environ, GEVENT_MONITOR_THREAD_ENABLE="1", GEVENT_MAX_BLOCKING_TIME="0.5")
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run(
        [sys.executable, "-m", "gevent.monkey", "--module", "pytest", "-q", "-p", "no:cacheprovider", str(probe)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=50,
        check=False,
    )
    out = result.stdout + result.stderr
    assert "hub was blocked" in out, out
    assert re.search(r"2 passed.* 1 error", out), out
