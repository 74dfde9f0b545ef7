"""Benchmark of the edge hardening (issue 10): cost of the limits, idle memory.

Usage::

    .venv/bin/python bench/bench_hardening.py            # 3 rounds, prints a Markdown table
    .venv/bin/python bench/bench_hardening.py --rounds 1

Measures, with medians over rounds:

- messages/s of ``smtp-source`` (1 KiB, 100 persistent sessions) against one
  SmtpEdge with every limit off (``ClientLimits.off()``) and with every
  limit on and counting (nothing exempt, limits set too high to refuse);
  the ratio is the cost of the limits;
- KiB of server RSS per idle session after EHLO, at 1,000 and 10,000
  sessions, for slimta (limits on, idle sessions parked), python-slimta
  5.0.5 and aiosmtpd (peers' venvs from ``bench/peers_setup.sh``), and the
  time a normal client needs for a whole message while the 10,000 are open.

The slimta server is ``tests/integration/hardening/_edge_child.py``; the
peers are ``bench/_servers/*``.  Servers run on CPU 0, the load on CPU 1.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(ROOT))

from bench_smtp import SMTP_SOURCE, TASKSET, Scenario, Server, run_load  # noqa: E402

from tests.integration.hardening._idle_load import normal_message, open_idle, rss_kib  # noqa: E402


class SlimtaChild:
    """The hardening test child (SmtpEdge), in a given limits mode."""

    def __init__(self, mode: str) -> None:
        cmd = [str(ROOT / ".venv" / "bin" / "python"), "-m", "tests.integration.hardening._edge_child"]
        if mode != "default":
            cmd.append(f"--limits-{mode}")
        if TASKSET:
            cmd = [TASKSET, "-c", "0", *cmd]
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        self.port = int(self.proc.stdout.readline().split()[1])
        self.pid = self.proc.pid if not TASKSET else _child_pid(self.proc.pid)

    def cpu(self) -> float:
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


def _child_pid(pid: int) -> int:
    # taskset execs the program: same pid.
    return pid


def idle(server: Any, n: int) -> dict[str, float]:
    time.sleep(0.3)
    before = rss_kib(server.pid)
    socks, done = open_idle(server.port, n, 60.0)
    time.sleep(0.5)
    after = rss_kib(server.pid)
    try:
        normal = normal_message(server.port)
    except (OSError, AssertionError):
        normal = float("nan")
    for sock in socks:
        sock.close()
    time.sleep(0.5)
    return {
        "sessions": done,
        "kib": (after - before) / max(done, 1),
        "rss_mib": after / 1024,
        "normal_s": normal,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--messages", type=int, default=4000)
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if not Path(SMTP_SOURCE).exists():
        sys.exit(f"{SMTP_SOURCE} is missing (apt-get install postfix)")
    scenario = Scenario("1 KiB", 1024, 100, True)
    rates: dict[str, list[float]] = {"off": [], "counted": []}
    cpu: dict[str, list[float]] = {"off": [], "counted": []}
    idles: dict[tuple[str, int], list[dict[str, float]]] = {}
    for r in range(args.rounds):
        order = ["off", "counted"] if r % 2 == 0 else ["counted", "off"]
        for mode in order:
            server = SlimtaChild(mode)
            try:
                run_load(server, scenario, 500)  # warm-up
                res = run_load(server, scenario, args.messages)
            finally:
                server.stop()
            if "rate" in res:
                rates[mode].append(res["rate"])
                cpu[mode].append(res["cpu_per_1k"])
            print(f"round {r + 1} limits {mode:8} {res}", flush=True)
        for n in (1000, 10000):
            for name in ("slimta", "python-slimta", "aiosmtpd"):
                server = SlimtaChild("counted") if name == "slimta" else Server(name)
                try:
                    res = idle(server, n)
                finally:
                    server.stop()
                idles.setdefault((name, n), []).append(res)
                print(f"round {r + 1} idle {name:14} {n:6} {res}", flush=True)
    med = statistics.median
    summary = {
        "rate": {m: med(v) for m, v in rates.items() if v},
        "cpu_per_1k": {m: med(v) for m, v in cpu.items() if v},
        "idle": {f"{name}@{n}": {k: med([x[k] for x in v]) for k in v[0]} for (name, n), v in idles.items()},
    }
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
