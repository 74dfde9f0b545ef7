"""Tests for slimta.policy base classes, Forward and the split policies."""

from __future__ import annotations

import re

import pytest

from slimta.bounce.dsn import RecipientDsn, get_recipient_dsn, parse_mail_params, set_dsn, set_recipient_dsn
from slimta.core import SlimtaError
from slimta.envelope import Envelope
from slimta.policy import PolicyError, QueuePolicy, RelayPolicy
from slimta.policy.forward import Forward
from slimta.policy.split import RecipientDomainSplit, RecipientSplit


def make_env(rcpts: list[str]) -> Envelope:
    env = Envelope("sender@example.com", rcpts)
    env.parse(b"Subject: test\r\n\r\nbody\r\n")
    return env


def test_base_classes() -> None:
    assert issubclass(PolicyError, SlimtaError)
    env = make_env(["a@example.com"])
    with pytest.raises(NotImplementedError):
        QueuePolicy().apply(env)
    with pytest.raises(NotImplementedError):
        RelayPolicy().apply(env)


# -- Forward --------------------------------------------------------------------


def test_forward_first_matching_rule_wins() -> None:
    fwd = Forward()
    fwd.add_mapping(r"^postmaster@.*$", "admin@example.com")
    fwd.add_mapping(r"@old\.example$", "@new.example")
    fwd.add_mapping(r"^admin@", "nobody@")  # never reached for rewritten addresses
    env = make_env(["postmaster@old.example", "joe@old.example", "kim@other.example"])
    assert fwd.apply(env) is None
    assert env.recipients == ["admin@example.com", "joe@new.example", "kim@other.example"]


def test_forward_count_compiled_pattern_and_function() -> None:
    fwd = Forward()
    fwd.add_mapping(re.compile("a"), "b", count=1)
    env = make_env(["aaa@x"])
    fwd.apply(env)
    assert env.recipients == ["baa@x"]

    fwd = Forward()
    fwd.add_mapping(r"^(\w+)@", lambda m: m.group(1).upper() + "@")
    env = make_env(["joe@x"])
    fwd.apply(env)
    assert env.recipients == ["JOE@x"]


def test_forward_empty_result_keeps_recipient() -> None:
    fwd = Forward()
    fwd.add_mapping(r".*", "")
    env = make_env(["joe@x"])
    fwd.apply(env)
    assert env.recipients == ["joe@x"]


def test_forward_refuses_control_characters() -> None:
    fwd = Forward()
    fwd.add_mapping(r"@x$", "@y\r\nRCPT TO:<evil@z>")
    env = make_env(["joe@x"])
    with pytest.raises(PolicyError):
        fwd.apply(env)


def test_forward_carries_dsn_request_and_records_orcpt() -> None:
    fwd = Forward()
    fwd.add_mapping(r"@old\.example$", "@new.example")
    env = make_env(["joe@old.example", "ann@old.example"])
    set_dsn(env, parse_mail_params({}))
    set_recipient_dsn(env, "joe@old.example", RecipientDsn(notify=frozenset({"NEVER"})))
    set_recipient_dsn(env, "ann@old.example", RecipientDsn(orcpt=("rfc822", "Ann@Orig.example")))
    fwd.apply(env)
    joe = get_recipient_dsn(env, "joe@new.example")
    assert joe == RecipientDsn(notify=frozenset({"NEVER"}), orcpt=("rfc822", "joe@old.example"))
    ann = get_recipient_dsn(env, "ann@new.example")
    assert ann is not None
    assert ann.orcpt == ("rfc822", "Ann@Orig.example")


# -- splitting --------------------------------------------------------------------


def test_recipient_split() -> None:
    env = make_env(["a@x", "b@y", "c@x"])
    copies = RecipientSplit().apply(env)
    assert copies is not None
    assert [c.recipients for c in copies] == [["a@x"], ["b@y"], ["c@x"]]
    assert all(c.headers is not env.headers for c in copies)
    assert all(c.message == env.message for c in copies)
    assert RecipientSplit().apply(make_env(["only@x"])) is None
    assert RecipientSplit().apply(make_env([])) is None


def test_recipient_domain_split_groups_case_insensitively() -> None:
    env = make_env(["a@Example.com", "b@other.net", "c@EXAMPLE.COM", "local", "d@other.NET", "e@"])
    copies = RecipientDomainSplit().apply(env)
    assert copies is not None
    assert [c.recipients for c in copies] == [
        ["a@Example.com", "c@EXAMPLE.COM"],
        ["b@other.net", "d@other.NET"],
        ["local"],
        ["e@"],
    ]
    assert copies[0].headers is not None
    assert copies[0].headers["Subject"] == "test"


def test_recipient_domain_split_single_domain_is_left_alone() -> None:
    assert RecipientDomainSplit().apply(make_env(["a@x.com", "b@X.com"])) is None
    assert RecipientDomainSplit().apply(make_env(["nodomain"])) is None


def test_split_copies_keep_dsn_requests() -> None:
    env = make_env(["a@x", "b@y"])
    set_recipient_dsn(env, "b@y", RecipientDsn(notify=frozenset({"SUCCESS"})))
    copies = RecipientSplit().apply(env)
    assert copies is not None
    assert get_recipient_dsn(copies[1], "b@y") == RecipientDsn(notify=frozenset({"SUCCESS"}))
