"""slimta.util._ids: cheap UUID4-format ids that stay unique across fork()."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

from slimta.util._ids import random_id


def test_ids_are_uuid4_hex() -> None:
    for _ in range(2000):
        id_ = random_id()
        parsed = uuid.UUID(hex=id_)
        assert parsed.hex == id_
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_ids_do_not_repeat() -> None:
    ids = {random_id() for _ in range(20000)}
    assert len(ids) == 20000


FORK_SCRIPT = """
import os
from slimta.util._ids import random_id
random_id()
read_fd, write_fd = os.pipe()
pid = os.fork()
if pid == 0:
    os.write(write_fd, random_id().encode())
    os._exit(0)
os.close(write_fd)
parent_id = random_id()
child_id = os.read(read_fd, 64).decode()
os.waitpid(pid, 0)
print(parent_id, child_id)
"""


def test_forked_child_does_not_repeat_the_parents_ids() -> None:
    # Without a reseed after fork, parent and child would continue the same
    # pseudo-random sequence and hand out identical queue ids.  The fork
    # runs in a plain child interpreter: forking the test process itself
    # (gevent hub, monitor thread) is not what a daemonising node does.
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=30, cwd=root, check=True
    )
    parent_id, child_id = proc.stdout.split()
    assert len(child_id) == 32
    assert child_id != parent_id
