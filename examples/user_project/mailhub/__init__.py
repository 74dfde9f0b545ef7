"""mailhub: a small sample mail server built on slimta, with its own tests.

It shows the pieces a slimta user writes and how to test each with
:mod:`slimta.testing`:

* :mod:`mailhub.validators`: refuse clients listed on a DNS blocklist, and
  recipients outside our domains;
* :mod:`mailhub.policy`: rewrite recipients through an alias table;
* :mod:`mailhub.relay`: deliver into mailboxes, with one result per
  recipient;
* :mod:`mailhub.storage`: a queue storage backend of our own;
* :mod:`mailhub.app`: wire them together.
"""

from __future__ import annotations

__all__: list[str] = []
