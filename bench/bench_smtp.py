"""SMTP server benchmark: slimta against python-slimta 5.0.5, aiosmtpd 1.4.6 and smtp-sink.

Run ``bench/peers_setup.sh`` once, then::

    .venv/bin/python bench/bench_smtp.py            # 5 interleaved rounds, writes bench/RESULTS.md
    .venv/bin/python bench/bench_smtp.py --quick    # 1 round, fewer messages, no RESULTS.md
    .venv/bin/python bench/bench_smtp.py --profile  # also profile slimta under 1 KiB / 10 sessions

Contenders (one server script each in ``bench/_servers/``): this repository's
``SmtpEdge -> Queue(DictStorage) -> BlackholeRelay``, python-slimta 5.0.5 with
the same pipeline, aiosmtpd 1.4.6 (Controller + a handler storing into a dict)
and Postfix's C ``smtp-sink`` (accepts and discards: the practical limit).

Servers run pinned to CPU 0 (``taskset -c 0``), this harness and the load
generator, Postfix's ``smtp-source``, on CPU 1.  Every round starts all four
servers afresh, measures idle memory and the connect burst on each, then runs
every load scenario on each contender in a rotated order; the report gives
medians over rounds and ratios slimta/peer.  Measures:

- messages/s: messages / wall time of one ``smtp-source`` run, for 1 KiB and
  100 KiB payloads, 1, 10 and 100 concurrent sessions, persistent sessions
  (``-d``: many messages per connection) or one message per connection;
- server CPU seconds per 1,000 messages (utime + stime of the server process
  from ``/proc/PID/stat`` around the run, after a short settle);
- KiB of server RSS per idle session: VmRSS delta / 1,000 after opening 1,000
  connections and sending EHLO on each;
- of 1,000 connects made at once, how many got the banner within 1 s (and 5 s).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import platform
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
SERVERS = BENCH / "_servers"
PEERS = BENCH / "peers"
OUT = BENCH / "out"
RESULTS = BENCH / "RESULTS.md"
SMTP_SOURCE = "/usr/sbin/smtp-source"
TASKSET = shutil.which("taskset")
CLK_TCK = os.sysconf("SC_CLK_TCK")

CONTENDERS: dict[str, tuple[Path | str, str]] = {
    "slimta": (ROOT / ".venv" / "bin" / "python", "slimta_server.py"),
    "python-slimta": (PEERS / "python-slimta" / "bin" / "python", "pyslimta_server.py"),
    "aiosmtpd": (PEERS / "aiosmtpd" / "bin" / "python", "aiosmtpd_server.py"),
    "smtp-sink": (sys.executable, "smtpsink_server.py"),
}
PEER_NAMES = ["python-slimta", "aiosmtpd", "smtp-sink"]

SIZES = [("1 KiB", 1024), ("100 KiB", 100 * 1024)]
SESSIONS = [1, 10, 100]
# Messages per smtp-source run: (size, persistent) -> count at 10+ sessions.
MESSAGES = {
    (1024, True): 4000,
    (1024, False): 1500,
    (100 * 1024, True): 600,
    (100 * 1024, False): 400,
}
RUN_TIMEOUT = 120.0  # seconds, one smtp-source run
IDLE_SESSIONS = 1000
BURST = 1000
BURST_WINDOW = 1.0
BURST_LONG = 5.0


@dataclass(frozen=True)
class Scenario:
    size_label: str
    size: int
    sessions: int
    persistent: bool

    @property
    def key(self) -> str:
        mode = "persistent" if self.persistent else "1 msg/conn"
        return f"{self.size_label}, {self.sessions} sess, {mode}"

    def messages(self, quick: bool) -> int:
        count = MESSAGES[(self.size, self.persistent)]
        if self.sessions == 1:
            count //= 3
        if quick:
            count //= 4
        return max(count, 50)


def scenarios() -> list[Scenario]:
    return [
        Scenario(label, size, sessions, persistent)
        for label, size in SIZES
        for persistent in (True, False)
        for sessions in SESSIONS
    ]


# -- servers -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """One contender's server process, pinned to CPU 0."""

    def __init__(self, name: str, env: dict[str, str] | None = None, wrap: list[str] | None = None) -> None:
        self.name = name
        self.wrapped = bool(wrap)
        self.port = free_port()
        python, script = CONTENDERS[name]
        cmd = [str(python), str(SERVERS / script), str(self.port)]
        if wrap:
            cmd = wrap + cmd
        if TASKSET:
            cmd = [TASKSET, "-c", "0", *cmd]
        OUT.mkdir(exist_ok=True)
        self.log = open(OUT / f"server-{name}.log", "ab")  # noqa: SIM115 (closed in stop())
        # cwd=/tmp: the peers must import their own slimta, not this repository's.
        self.proc = subprocess.Popen(
            cmd,
            cwd="/tmp",
            stdout=subprocess.PIPE,
            stderr=self.log,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        self.pid, self.note = self._wait_ready(30.0)

    def _wait_ready(self, timeout: float) -> tuple[int, str]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        buf = b""
        try:
            while time.monotonic() < deadline:
                if not sel.select(max(0.0, deadline - time.monotonic())):
                    break
                chunk = os.read(self.proc.stdout.fileno(), 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode(errors="replace").splitlines():
                    if line.startswith("READY"):
                        match = re.search(r"pid=(\d+)", line)
                        pid = int(match.group(1)) if match else self.proc.pid
                        note = re.sub(r"READY( pid=\d+)?\s*", "", line)
                        return pid, note
        finally:
            sel.close()
        self.stop()
        raise RuntimeError(f"{self.name}: server did not print READY within {timeout} s")

    def cpu(self) -> float:
        """utime + stime of the server process (all threads), in seconds."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def rss_kib(self) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def stop(self) -> None:
        if self.proc.poll() is None:
            # A wrapper (py-spy) ends, writing its output, when the server does.
            target = self.pid if self.wrapped and getattr(self, "pid", None) else self.proc.pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(target, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.log.close()


# -- load ----------------------------------------------------------------------


def run_load(server: Server, sc: Scenario, count: int) -> dict[str, Any]:
    """One smtp-source run; returns msg/s and server CPU s per 1,000 messages."""
    cmd = [SMTP_SOURCE, "-M", "bench.example", "-f", "sender@bench.example", "-t", "rcpt@bench.example"]
    cmd += ["-C", "3", "-s", str(sc.sessions), "-m", str(count), "-l", str(sc.size)]
    if sc.persistent:
        cmd.append("-d")
    cmd.append(f"127.0.0.1:{server.port}")
    if TASKSET:
        cmd = [TASKSET, "-c", "1", *cmd]
    cpu0 = server.cpu()
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, timeout=RUN_TIMEOUT, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {RUN_TIMEOUT} s"}
    wall = time.perf_counter() - t0
    time.sleep(0.3)  # let work that follows the last 250 (relay, cleanup) finish
    cpu1 = server.cpu()
    if proc.returncode != 0:
        return {"error": proc.stderr.decode(errors="replace").strip()[-300:]}
    return {"msgs": count, "wall": wall, "rate": count / wall, "cpu_per_1k": (cpu1 - cpu0) / count * 1000}


def _open_many(
    port: int, n: int, ehlo: bool, window: float, long_window: float
) -> tuple[list[socket.socket], dict]:
    """Open n connections at once; wait for the banner (and the EHLO reply).

    Returns the sockets (still open) and counts: ``done`` (finished within
    long_window), ``in_window`` (finished within window) and ``failed``.
    """
    sel = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    state: dict[int, list[Any]] = {}
    t0 = time.monotonic()
    for _ in range(n):
        sock = socket.socket()
        sock.setblocking(False)
        err = sock.connect_ex(("127.0.0.1", port))
        socks.append(sock)
        if err not in (0, errno.EINPROGRESS):
            continue
        state[sock.fileno()] = [sock, b"", "banner"]
        sel.register(sock, selectors.EVENT_READ)
    counts = {"done": 0, "in_window": 0, "failed": n - len(state)}
    deadline = t0 + long_window
    while state and time.monotonic() < deadline:
        for key, _ in sel.select(max(0.0, min(0.2, deadline - time.monotonic()))):
            entry = state[key.fd]
            sock = entry[0]
            try:
                chunk = sock.recv(4096)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                counts["failed"] += 1
                sel.unregister(sock)
                del state[key.fd]
                continue
            entry[1] += chunk
            want = b"220 " if entry[2] == "banner" else b"250 "
            lines = entry[1].split(b"\r\n")
            if not any(line.startswith(want) for line in lines[:-1]):
                continue
            if entry[2] == "banner" and ehlo:
                entry[1], entry[2] = b"", "ehlo"
                sock.send(b"EHLO bench.example\r\n")
                continue
            counts["done"] += 1
            if time.monotonic() - t0 <= window:
                counts["in_window"] += 1
            sel.unregister(sock)
            del state[key.fd]
    sel.close()
    return socks, counts


def idle_rss(server: Server) -> dict[str, Any]:
    """KiB of server RSS per idle session after EHLO."""
    time.sleep(0.3)
    before = server.rss_kib()
    socks, counts = _open_many(server.port, IDLE_SESSIONS, ehlo=True, window=30.0, long_window=30.0)
    try:
        time.sleep(0.5)
        after = server.rss_kib()
    finally:
        for sock in socks:
            sock.close()
    done = counts["done"]
    if done == 0:
        return {"error": "no session completed EHLO"}
    return {"sessions": done, "kib_per_session": (after - before) / done, "rss_before_kib": before}


def connect_burst(server: Server) -> dict[str, Any]:
    """Of BURST connects made at once, how many got the banner in time."""
    socks, counts = _open_many(server.port, BURST, ehlo=False, window=BURST_WINDOW, long_window=BURST_LONG)
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.send(b"QUIT\r\n")
        sock.close()
    time.sleep(0.5)
    return {"within_1s": counts["in_window"], "within_5s": counts["done"]}


# -- the run -------------------------------------------------------------------


def rotate(names: list[str], k: int) -> list[str]:
    k %= len(names)
    return names[k:] + names[:k]


def run_round(index: int, names: list[str], quick: bool, results: dict) -> None:
    servers: dict[str, Server] = {}
    try:
        for name in names:
            servers[name] = Server(name)
            results["notes"][name] = servers[name].note
        order = rotate(names, index)
        for name in order:
            results["idle"][name].append(idle_rss(servers[name]))
        for name in rotate(order, 1):
            results["burst"][name].append(connect_burst(servers[name]))
        for j, sc in enumerate(scenarios()):
            for name in rotate(order, j):
                res = run_load(servers[name], sc, sc.messages(quick))
                results["load"][sc.key][name].append(res)
                shown = (
                    f"{res['rate']:8.0f} msg/s {res['cpu_per_1k']:6.3f} cpu-s/1k"
                    if "rate" in res
                    else res["error"]
                )
                print(f"  round {index + 1} {sc.key:32} {name:14} {shown}", flush=True)
    finally:
        for server in servers.values():
            server.stop()


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def summarize(results: dict, names: list[str]) -> dict:
    summary: dict[str, Any] = {"load": {}, "idle": {}, "burst": {}}
    for key, per in results["load"].items():
        summary["load"][key] = {
            name: {
                "rate": median([r["rate"] for r in per[name] if "rate" in r]),
                "cpu_per_1k": median([r["cpu_per_1k"] for r in per[name] if "rate" in r]),
                "runs": sum(1 for r in per[name] if "rate" in r),
                "errors": [r["error"] for r in per[name] if "error" in r],
            }
            for name in names
        }
    for name in names:
        idle = [r["kib_per_session"] for r in results["idle"][name] if "kib_per_session" in r]
        summary["idle"][name] = median(idle)
        summary["burst"][name] = {
            "within_1s": median([r["within_1s"] for r in results["burst"][name]]),
            "within_5s": median([r["within_5s"] for r in results["burst"][name]]),
        }
    return summary


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def tables(summary: dict, names: list[str]) -> str:
    peers = [n for n in PEER_NAMES if n in names]
    out = ["### Messages/s (median; ratio = slimta / peer, higher is better)", ""]
    head = ["scenario", *names, *[f"x {p}" for p in peers]]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, per in summary["load"].items():
        row = [key, *[fmt(per[n]["rate"], ".0f") for n in names]]
        row += [fmt(ratio(per.get("slimta", {}).get("rate"), per[p]["rate"]), ".2f") for p in peers]
        out.append("| " + " | ".join(row) + " |")
    out += [
        "",
        "### Server CPU seconds per 1,000 messages (median; ratio = slimta / peer, lower is better)",
        "",
    ]
    out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, per in summary["load"].items():
        row = [key, *[fmt(per[n]["cpu_per_1k"], ".3f") for n in names]]
        row += [
            fmt(ratio(per.get("slimta", {}).get("cpu_per_1k"), per[p]["cpu_per_1k"]), ".2f") for p in peers
        ]
        out.append("| " + " | ".join(row) + " |")
    out += ["", "### Idle sessions and connect burst (median)", ""]
    out += ["| measure | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
    out.append(
        f"| KiB RSS per idle session after EHLO ({IDLE_SESSIONS}) | "
        + " | ".join(fmt(summary["idle"][n], ".1f") for n in names)
        + " |"
    )
    out.append(
        f"| of {BURST} simultaneous connects, banner within 1 s | "
        + " | ".join(fmt(summary["burst"][n]["within_1s"], ".0f") for n in names)
        + " |"
    )
    out.append(
        "| ... banner within 5 s | "
        + " | ".join(fmt(summary["burst"][n]["within_5s"], ".0f") for n in names)
        + " |"
    )
    errors = [
        f"- {key} / {n}: {len(per[n]['errors'])} failed run(s): {per[n]['errors'][0]}"
        for key, per in summary["load"].items()
        for n in names
        if per[n]["errors"]
    ]
    if errors:
        out += ["", "Failed runs (excluded from medians):", "", *errors]
    return "\n".join(out)


def targets(summary: dict) -> str:
    load = summary["load"]

    def get(key: str, name: str, field: str) -> float | None:
        return load.get(key, {}).get(name, {}).get(field)

    rows = []

    def check(label: str, value: float | None, goal: str, ok: bool | None) -> None:
        verdict = "—" if ok is None else ("met" if ok else "NOT met")
        rows.append(f"| {label} | {fmt(value, '.2f')} | {goal} | {verdict} |")

    for sessions in (10, 100):
        key = f"1 KiB, {sessions} sess, persistent"
        r = ratio(get(key, "slimta", "rate"), get(key, "python-slimta", "rate"))
        check(f"msg/s vs python-slimta, {key}", r, ">= 3", None if r is None else r >= 3)
        c = ratio(get(key, "slimta", "cpu_per_1k"), get(key, "python-slimta", "cpu_per_1k"))
        check(f"CPU/msg vs python-slimta, {key}", c, "<= 0.33", None if c is None else c <= 1 / 3)
    for sessions in (10, 100):
        key = f"1 KiB, {sessions} sess, 1 msg/conn"
        r = ratio(get(key, "slimta", "rate"), get(key, "python-slimta", "rate"))
        check(f"msg/s vs python-slimta, {key}", r, ">= 2", None if r is None else r >= 2)
    for sessions in (10, 100):
        key = f"100 KiB, {sessions} sess, persistent"
        r = ratio(get(key, "slimta", "rate"), get(key, "python-slimta", "rate"))
        check(f"msg/s vs python-slimta, {key}", r, ">= 2", None if r is None else r >= 2)
        rate = get(key, "slimta", "rate")
        check(
            f"msg/s (absolute) {key}, vs Postfix smtpd ~590 (issue 3, not run here)",
            rate,
            ">= 590",
            None if rate is None else rate >= 590,
        )
    idle = summary["idle"].get("slimta")
    check("KiB per idle session", idle, "<= 8", None if idle is None else idle <= 8)
    burst = summary["burst"].get("slimta", {}).get("within_1s")
    check(
        f"of {BURST} simultaneous connects, banner within 1 s",
        burst,
        f"= {BURST}",
        None if burst is None else burst >= BURST,
    )
    head = ["| target (issue 3) | slimta | goal | verdict |", "|---|---|---|---|"]
    return "\n".join(head + rows)


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg()
    return (
        f"{model}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
        f"Python {platform.python_version()}, load average at start {load[0]:.2f}"
    )


def versions() -> str:
    out = []
    for name in CONTENDERS:
        python = CONTENDERS[name][0]
        mod = {"slimta": "gevent", "python-slimta": "gevent", "aiosmtpd": "aiosmtpd"}.get(name)
        if not mod:
            continue
        code = f"import importlib.metadata as m; print(m.version({mod!r}))"
        with contextlib.suppress(Exception):
            v = subprocess.run(
                [str(python), "-c", code], capture_output=True, text=True, timeout=30, cwd="/tmp"
            )
            out.append(f"{name}: {mod} {v.stdout.strip()}")
    return "; ".join(out)


METHOD = """\
## Method

`bench/bench_smtp.py` starts one server per contender (`bench/_servers/`):

- **slimta**: this repository's `SmtpEdge -> Queue(DictStorage) -> BlackholeRelay` ({slimta_note});
- **python-slimta**: python-slimta 5.0.5, same pipeline, its defaults (listen backlog 128);
- **aiosmtpd**: aiosmtpd 1.4.6 `Controller` + `SMTP`, a handler that stores each message in a dict;
- **smtp-sink**: Postfix's C `smtp-sink` (accepts and discards) — the practical limit of this
  machine with this load generator.

Servers run on CPU 0 (`taskset -c 0`); the harness and Postfix's `smtp-source` on CPU 1.
{rounds} round(s); every round starts all servers afresh, measures idle memory and the connect
burst on each, then runs each load scenario on each contender, the contender order rotated per
scenario and per round. Medians over rounds; ratios are slimta / peer of the medians.

- **msg/s**: messages / wall time of one `smtp-source -s SESSIONS -m COUNT -l SIZE [-d]` run
  (`-d`: persistent sessions, many messages per connection; without it one message per
  connection). SIZE is the payload after smtp-source's few header lines. Counts: {counts}.
- **CPU**: server utime + stime (`/proc/PID/stat`, all threads, 10 ms ticks) across the run plus
  0.3 s settle, per 1,000 messages.
- **idle RSS**: VmRSS delta after opening {idle} connections and completing EHLO on each, / {idle}.
- **burst**: {burst} non-blocking connects issued at once; counted when the 220 banner arrives.

Machine: {machine}. Versions: {versions}. Date: {date}.
"""

PROFILE_HEADING = "## Where the time goes"


def write_results(summary: dict, names: list[str], rounds: int, quick: bool, notes: dict) -> None:
    kept = ""
    if RESULTS.exists():
        text = RESULTS.read_text()
        if PROFILE_HEADING in text:
            kept = text[text.index(PROFILE_HEADING) :].rstrip() + "\n"
    counts = (
        ", ".join(
            f"{label} {'persistent' if p else '1/conn'} {MESSAGES[(size, p)]}"
            for label, size in SIZES
            for p in (True, False)
        )
        + " (a third at 1 session"
        + (", a quarter in --quick" if quick else "")
        + ")"
    )
    slimta_note = notes.get("slimta", "")
    if "fallback" in slimta_note:
        slimta_note = (
            "**slimta.queue was not importable yet: a minimal in-process queue whose "
            "`enqueue` stores into a dict stood in for Queue + DictStorage + BlackholeRelay**"
        )
    else:
        slimta_note = "the real `slimta.queue.Queue`"
    parts = [
        "# SMTP server benchmark",
        "",
        "Generated by `.venv/bin/python bench/bench_smtp.py` (after `bench/peers_setup.sh`); "
        "`--quick` for one short round, `--profile` to profile slimta. Raw numbers: `bench/out/`.",
        "",
        METHOD.format(
            slimta_note=slimta_note,
            rounds=rounds,
            counts=counts,
            idle=IDLE_SESSIONS,
            burst=BURST,
            machine=machine(),
            versions=versions(),
            date=time.strftime("%Y-%m-%d"),
        ),
        "## Results",
        "",
        tables(summary, names),
        "",
        "## Targets",
        "",
        targets(summary),
        "",
    ]
    if kept:
        parts.append(kept)
    RESULTS.write_text("\n".join(parts))


# -- profiling -----------------------------------------------------------------


def profile(quick: bool, size: int = 1024) -> None:
    """Profile slimta under 10 persistent sessions (1 KiB): py-spy, then cProfile."""
    sc = Scenario(f"{size} B", size, 10, True)
    count = max(2000, (20000 if not quick else 5000) * 1024 // size)
    OUT.mkdir(exist_ok=True)
    tag = "" if size == 1024 else f"-{size}"
    pyspy = ROOT / ".venv" / "bin" / "py-spy"
    if pyspy.exists():
        raw = OUT / f"profile-pyspy{tag}.txt"
        server = Server("slimta", wrap=[str(pyspy), "record", "-r", "250", "-f", "raw", "-o", str(raw), "--"])
        try:
            res = run_load(server, sc, count)
            print(f"py-spy run: {res}")
        finally:
            server.stop()
        if raw.exists():
            summarize_pyspy(raw, tag)
    prof = OUT / f"profile-cprofile{tag}.pstats"
    server = Server("slimta", env={"SLIMTA_BENCH_CPROFILE": str(prof)})
    try:
        res = run_load(server, sc, count)
        print(f"cProfile run: {res}")
    finally:
        server.stop()
    if prof.exists():
        import pstats

        with open(OUT / f"profile-cprofile{tag}.txt", "w") as f:
            stats = pstats.Stats(str(prof), stream=f)
            stats.sort_stats("tottime").print_stats(40)
            stats.sort_stats("cumulative").print_stats(40)
        print(f"cProfile: {OUT / f'profile-cprofile{tag}.txt'}")


def summarize_pyspy(raw: Path, tag: str = "") -> None:
    """Self and inclusive sample shares per function from py-spy's collapsed stacks."""
    own: dict[str, int] = defaultdict(int)
    incl: dict[str, int] = defaultdict(int)
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not n.isdigit():
            continue
        count = int(n)
        total += count
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += count
        for frame in set(frames):
            incl[frame] += count
    lines = [f"total samples: {total}", "", "self %  function"]
    lines += [f"{100 * v / total:6.1f}  {k}" for k, v in sorted(own.items(), key=lambda kv: -kv[1])[:40]]
    lines += ["", "incl %  function"]
    lines += [f"{100 * v / total:6.1f}  {k}" for k, v in sorted(incl.items(), key=lambda kv: -kv[1])[:60]]
    summary = OUT / f"profile-pyspy{tag}-summary.txt"
    summary.write_text("\n".join(lines) + "\n")
    print(f"py-spy: {summary}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--quick", action="store_true", help="1 round, a quarter of the messages, no RESULTS.md"
    )
    parser.add_argument(
        "--profile", action="store_true", help="profile slimta (1 KiB, 10 sessions) afterwards"
    )
    parser.add_argument("--profile-only", action="store_true", help="only profile")
    parser.add_argument("--profile-size", type=int, default=1024, help="message size to profile (bytes)")
    parser.add_argument("--only", help="comma-separated contenders (default: all available)")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args()

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if TASKSET and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})
    if not os.access(SMTP_SOURCE, os.X_OK):
        sys.exit(f"{SMTP_SOURCE} missing: apt-get install postfix")
    if args.profile_only:
        profile(args.quick, args.profile_size)
        return
    names = [n for n in CONTENDERS if Path(CONTENDERS[n][0]).exists()]
    if args.only:
        names = [n for n in names if n in args.only.split(",")]
    missing = set(CONTENDERS) - set(names)
    if missing:
        print(f"skipping {sorted(missing)} (run bench/peers_setup.sh)")
    rounds = 1 if args.quick else args.rounds
    results: dict[str, Any] = {
        "load": defaultdict(lambda: defaultdict(list)),
        "idle": defaultdict(list),
        "burst": defaultdict(list),
        "notes": {},
    }
    started = time.monotonic()
    for i in range(rounds):
        print(f"round {i + 1}/{rounds}", flush=True)
        run_round(i, names, args.quick, results)
    print(f"took {time.monotonic() - started:.0f} s")
    summary = summarize(results, names)
    OUT.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (OUT / f"smtp-{stamp}.json").write_text(json.dumps({"raw": results, "summary": summary}, indent=1))
    print()
    print(tables(summary, names))
    print()
    print(targets(summary))
    if not args.quick and not args.no_write:
        write_results(summary, names, rounds, args.quick, results["notes"])
        print(f"\nwrote {RESULTS}")
    if args.profile:
        profile(args.quick, args.profile_size)


if __name__ == "__main__":
    main()
