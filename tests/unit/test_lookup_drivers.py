"""LookupBase templates, DictLookup and RegexLookup (no backends needed)."""

from __future__ import annotations

import logging
import re

import pytest

from slimta.logging import parseline
from slimta.lookup import LookupBase
from slimta.lookup.drivers import fill_template, template_fields
from slimta.lookup.drivers.dict import DictLookup
from slimta.lookup.drivers.regex import RegexLookup


class Recording(LookupBase):
    def __init__(self):
        self.calls = []

    def lookup(self, **kwargs):
        self.calls.append(kwargs)
        return None


def test_lookup_base_is_abstract():
    with pytest.raises(NotImplementedError):
        LookupBase().lookup(address="a@b")


def test_lookup_address_splits_at_last_at():
    rec = Recording()
    rec.lookup_address('"odd@local"@example.com', extra=1)
    rec.lookup_address("example.com")
    assert rec.calls == [
        {
            "address": '"odd@local"@example.com',
            "localpart": '"odd@local"',
            "domain": "example.com",
            "extra": 1,
        },
        {"address": "example.com"},
    ]


@pytest.mark.parametrize(
    ("template", "fields", "expected"),
    [
        ("{address}", {"address": "a@b"}, "a@b"),
        ("alias:{domain}", {}, "alias:{domain}"),  # missing: kept as written
        ("{{literal}} {x}", {"x": 1}, "{literal} 1"),
        ("{x.__class__}", {"x": "s"}, "{x.__class__}"),  # no attribute access
        ("{a}{b}", {"a": "{b}", "b": "B"}, "{b}B"),  # values are not re-scanned
    ],
)
def test_fill_template(template, fields, expected):
    assert fill_template(template, fields) == expected


def test_template_fields():
    assert template_fields("{{x}} {a}:{b}{a}") == {"a", "b"}


def test_dict_lookup_found_missing_and_partial():
    backend = {"alice@example.com": {"alias": "bob"}, "{address}": {"oops": True}}
    lookup = DictLookup(backend, "{address}")
    assert lookup.lookup_address("alice@example.com") == {"alias": "bob"}
    assert lookup.lookup(address="nobody@example.com") is None
    by_domain = DictLookup({"example.com": {"relay": "mx1"}}, "{domain}")
    assert by_domain.lookup_address("x@example.com") == {"relay": "mx1"}
    assert by_domain.lookup_address("example.com") is None  # no domain argument


def test_dict_lookup_sees_backend_changes():
    backend: dict[str, dict[str, str]] = {}
    lookup = DictLookup(backend, "{address}")
    assert lookup.lookup(address="a") is None
    backend["a"] = {}
    assert lookup.lookup(address="a") == {}


def test_regex_lookup_first_match_wins():
    lookup = RegexLookup("{localpart}@{domain}")
    lookup.add_regex(r"postmaster@", {"role": "postmaster"})
    lookup.add_regex(re.compile(r".*@(.+\.)?example\.com$"), {"local": True})
    lookup.add_regex(r".*", {"catchall": True})
    assert lookup.lookup_address("postmaster@example.com") == {"role": "postmaster"}
    assert lookup.lookup_address("a@mail.example.com") == {"local": True}
    assert lookup.lookup_address("a@other.test") == {"catchall": True}


def test_regex_lookup_missing_field_matches_nothing():
    lookup = RegexLookup("{domain}")
    lookup.add_regex(r".*", {"catchall": True})
    assert lookup.lookup(address="x") is None
    assert lookup.lookup(domain="") == {"catchall": True}


def test_lookups_are_logged(caplog):
    lookup = DictLookup({"k": {"v": 1}}, "{key}")
    with caplog.at_level(logging.DEBUG, logger="slimta.lookup.drivers.dict"):
        lookup.lookup(key="k")
        lookup.lookup(key="z")
    lines = [parseline(r.getMessage()) for r in caplog.records]
    assert [(t, op, data) for t, _, op, data in lines] == [
        ("lookup", "found", {"key": "k"}),
        ("lookup", "notfound", {"key": "z"}),
    ]
