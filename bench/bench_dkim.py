"""DKIM signing overhead: relay CPU per 10 KiB message, signed vs unsigned.

Relays N messages of 10 KiB through a StaticSmtpRelay (one pooled
connection) to a minimal SMTP sink running in a child process, so that the
CPU time measured (time.process_time of this process) is the relay path's
only.  Each round runs unsigned, then signed with a 2048-bit RSA key
(and, separately, with ed25519); the report is the median over rounds of
the per-message CPU time and the ratio signed/unsigned.

    .venv/bin/python bench/bench_dkim.py [--messages 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import base64
import statistics
import subprocess
import sys
import time

import gevent
import nacl.signing
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from slimta.envelope import Envelope
from slimta.policy.dkim import DkimKey, DkimSigner
from slimta.relay.smtp.static import StaticSmtpRelay

SINK = r"""
import sys
from gevent.server import StreamServer
def handle(sock, addr):
    f = sock.makefile("rb")
    sock.sendall(b"220 sink\r\n")
    while True:
        line = f.readline()
        if not line:
            return
        verb = line[:4].upper()
        if verb == b"EHLO":
            sock.sendall(b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
        elif verb == b"DATA":
            sock.sendall(b"354 go\r\n")
            while f.readline() not in (b".\r\n", b""):
                pass
            sock.sendall(b"250 2.0.0 ok\r\n")
        elif verb == b"QUIT":
            sock.sendall(b"221 bye\r\n")
            return
        else:
            sock.sendall(b"250 2.0.0 ok\r\n")
server = StreamServer(("127.0.0.1", 0), handle)
server.start()
print(server.server_port, flush=True)
server.serve_forever()
"""


def message() -> bytes:
    head = (
        b"From: Alice <alice@example.test>\r\nTo: bob@dest.test\r\nSubject: bench\r\n"
        b"Date: Mon, 05 Jan 2026 10:00:00 +0000\r\nMessage-ID: <b@example.test>\r\n\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog, again and again.\r\n"
    body = line * (10 * 1024 // len(line) + 1)
    return head + body[: 10 * 1024 - len(head)]


def run(port: int, count: int, signer: DkimSigner | None) -> float:
    relay = StaticSmtpRelay("127.0.0.1", port, pool_size=1, idle_timeout=5, ehlo_as="bench.test")
    if signer is not None:
        relay.add_policy(signer)
    data = message()
    start = time.process_time()
    for _ in range(count):
        env = Envelope("alice@example.test", ["bob@dest.test"])
        env.parse(data)
        relay._attempt(env, 0)
    used = time.process_time() - start
    relay.kill()
    return used / count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    seed = base64.b64encode(bytes(nacl.signing.SigningKey.generate())).decode()
    signers = {
        "rsa-sha256": DkimSigner({"example.test": DkimKey("s1", pem)}),
        "ed25519-sha256": DkimSigner({"example.test": DkimKey("s2", seed, "ed25519-sha256")}),
    }
    sink = subprocess.Popen([sys.executable, "-c", SINK], stdout=subprocess.PIPE)
    try:
        assert sink.stdout is not None
        port = int(sink.stdout.readline())
        run(port, 20, signers["rsa-sha256"])  # warm-up
        results: dict[str, list[float]] = {"unsigned": [], **{name: [] for name in signers}}
        for _ in range(args.rounds):
            results["unsigned"].append(run(port, args.messages, None))
            for name, signer in signers.items():
                results[name].append(run(port, args.messages, signer))
    finally:
        sink.kill()
        sink.wait()
    base = statistics.median(results["unsigned"])
    print(f"{args.messages} messages of 10 KiB x {args.rounds} rounds; CPU per message (median)")
    print(f"  unsigned        {base * 1e6:8.1f} us")
    for name in signers:
        med = statistics.median(results[name])
        ratios = [s / u for s, u in zip(results[name], results["unsigned"], strict=True)]
        print(
            f"  {name:<15} {med * 1e6:8.1f} us  overhead {med / base - 1:+.1%}"
            f"  (median of per-round ratios {statistics.median(ratios) - 1:+.1%})"
        )


if __name__ == "__main__":
    gevent.spawn(main).get()
