"""Lookups in a Python mapping (a ``dict``, a :mod:`shelve`, anything with ``[]``).

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from slimta.lookup.drivers import LookupBase

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["DictLookup"]


class DictLookup(LookupBase):
    """Look records up in a mapping by a templated key.

    Args:
        backend: The mapping; its values are the records (normally mappings
            themselves).  It is read, never written, and may change between
            lookups.
        key_template: Builds the key from the lookup arguments, e.g.
            ``"{address}"`` or ``"domain:{domain}"`` (see
            :mod:`slimta.lookup.drivers`).
    """

    def __init__(self, backend: Mapping[str, Any], key_template: str) -> None:
        self.backend = backend
        self.key_template = key_template

    def lookup(self, **kwargs: Any) -> Any:
        """Return ``backend[key]``, or ``None`` when the key is absent."""
        key = self._format_key(self.key_template, kwargs)
        try:
            ret = self.backend[key]
        except KeyError:
            ret = None
        self.log(__name__, kwargs, ret)
        return ret
