"""The storage conformance suite, now public as :mod:`slimta.testing.storage`.

Kept so existing imports (``from tests.storage_conformance import
StorageConformance, _envelope``) keep working.
"""

from __future__ import annotations

from slimta.testing.storage import StorageConformance, _envelope

__all__ = ["StorageConformance", "_envelope"]
