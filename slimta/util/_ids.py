"""Random ids for queued messages, without a system call each.

``uuid.uuid4().hex`` reads the kernel's random source (a ``getrandom``
system call) and builds a UUID object for every id: a measurable share of
an in-memory queue's cost per message.  Ids only have to be unique, not
secret, so a Mersenne Twister seeded from the kernel once per process does;
a forked child reseeds, or parent and child would hand out the same ids.
"""

from __future__ import annotations

import os
import random

__all__ = ["random_id"]

# RFC 9562 UUID version 4 layout: version nibble 4, variant bits 10.
_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_SET = (0x4000 << 64) | (0x8000 << 48)

_source = random.Random(os.urandom(32))


def _reseed() -> None:
    _source.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def random_id() -> str:
    """Return a random UUID4 in hex (as ``uuid.uuid4().hex``, about 5x cheaper)."""
    return f"{(_source.getrandbits(128) & _CLEAR) | _SET:032x}"
