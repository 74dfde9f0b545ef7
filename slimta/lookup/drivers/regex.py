"""Lookups by regular expression: the first pattern that matches gives the record.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import re
from typing import Any

from slimta.lookup.drivers import LookupBase, fill_template, template_fields

__all__ = ["RegexLookup"]


class RegexLookup(LookupBase):
    """Match a templated string against patterns, in the order they were added.

    Create it empty and call :meth:`add_regex` for each rule::

        relay_for = RegexLookup("{domain}")
        relay_for.add_regex(r"(.+\\.)?example\\.com$", {"relay": "mx1"})

    Args:
        str_template: Builds the string to match from the lookup arguments.
            A lookup that lacks a field the template names matches nothing.
    """

    def __init__(self, str_template: str) -> None:
        self.str_template = str_template
        self.regexes: list[tuple[re.Pattern[str], Any]] = []

    def add_regex(self, pattern: str | re.Pattern[str], value: Any) -> None:
        """Add a rule: strings that ``pattern`` matches look up to ``value``.

        Args:
            pattern: A pattern (string or compiled), matched with
                :meth:`re.Pattern.match`, i.e. anchored at the start only.
            value: The record returned for a match.
        """
        self.regexes.append((re.compile(pattern), value))

    def lookup(self, **kwargs: Any) -> Any:
        """Return the value of the first matching rule, or ``None``."""
        ret = None
        # A field the caller did not give means "no answer", not a match
        # against the literal template text.
        if not template_fields(self.str_template) - kwargs.keys():
            subject = fill_template(self.str_template, kwargs)
            for regex, value in self.regexes:
                if regex.match(subject):
                    ret = value
                    break
        self.log(__name__, kwargs, ret)
        return ret
