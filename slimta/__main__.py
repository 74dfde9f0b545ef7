"""``python -m slimta``: the ``slimta`` command (see :mod:`slimta.app`)."""

from __future__ import annotations

import sys

from slimta.app import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
